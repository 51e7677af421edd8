package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/audit"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/pii"
)

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func amlCase(t *testing.T, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "aml", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

type amlDecision struct {
	DecisionID string   `json:"decision_id"`
	CaseID     string   `json:"case_id"`
	RiskScore  float64  `json:"risk_score"`
	RiskLevel  string   `json:"risk_level"`
	RuleFloor  string   `json:"rule_floor"`
	LevelSetBy string   `json:"level_set_by"`
	FloorRules []string `json:"floor_rules"`
	Features   []struct {
		Name   string
		Active bool
		Phi    float64
		Share  float64
	}
	Explanation struct {
		Method          string
		Seed            uint64
		Players         int
		Coalitions      int
		FX              float64 `json:"f_x"`
		FBaseline       float64 `json:"f_baseline"`
		EvaluatedTokens int     `json:"evaluated_tokens"`
		NaiveTokens     int     `json:"naive_tokens"`
	}
	Rules []struct {
		ID       string
		Evidence []string
	}
	Report   map[string]string
	Versions struct {
		ModelSHA256 string `json:"model_sha256"`
		RulesSHA256 string `json:"rules_sha256"`
	}
	Audit *audit.Receipt
}

// TestAMLScore: the endpoint on the real engine: exact attributions that
// satisfy efficiency, the prefix tree computing a fraction of the naive
// tokens, rules with evidence, an audit record per decision before the
// answer, and no personal data in the log or the audit trail.
func TestAMLScore(t *testing.T) {
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{ReplaceAttr: pii.ReplaceAttr}))
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	al, err := audit.Open(auditPath, audit.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	// Flash attention off: with the system provider's kernel, scores (and
	// so attributions) move with the batch's shape, and this test asks for
	// bit-identical repeats.
	ts := startServer(t, Config{Audit: al, Logger: logger}, engine.Options{Parallel: 4, Context: 2048, FlashAttention: engine.FlashAttentionOff})

	var first amlDecision
	for round := range 2 {
		resp, body := ts.post(t, "/aml/score", amlCase(t, "structuring.json"))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		var d amlDecision
		if err := json.Unmarshal([]byte(body), &d); err != nil {
			t.Fatal(err)
		}
		ex := d.Explanation
		sum := 0.0
		for _, f := range d.Features {
			sum += f.Phi
		}
		if math.Abs(sum-(ex.FX-ex.FBaseline)) > 1e-9 {
			t.Errorf("efficiency: sum of phi %.12f, f_x - f_baseline %.12f", sum, ex.FX-ex.FBaseline)
		}
		// Five active features; velocity has no baseline in this case (no
		// transactions before its 30 days) and is no player.
		if ex.Method != "exact_shapley" || ex.Coalitions != 1<<ex.Players || ex.Players != 5 {
			t.Errorf("explanation %+v", ex)
		}
		if ex.EvaluatedTokens*3 > ex.NaiveTokens {
			t.Errorf("the prefix tree computed %d tokens of %d: want under a third", ex.EvaluatedTokens, ex.NaiveTokens)
		}
		if d.RiskScore != ex.FX || d.RiskScore <= 0 || d.RiskScore >= 1 {
			t.Errorf("risk score %g, f_x %g", d.RiskScore, ex.FX)
		}
		i := slices.IndexFunc(d.Rules, func(r struct {
			ID       string
			Evidence []string
		}) bool {
			return r.ID == "STRUCTURING"
		})
		if i < 0 || !slices.Equal(d.Rules[i].Evidence, []string{"T1", "T2", "T3"}) {
			t.Errorf("rules %+v", d.Rules)
		}
		if d.Audit == nil || d.Audit.Seq != uint64(round+1) || len(d.Versions.ModelSHA256) != 64 {
			t.Errorf("audit receipt %+v, model hash %q", d.Audit, d.Versions.ModelSHA256)
		}
		if d.LevelSetBy == "" || (d.RuleFloor == "high") != slices.Contains(d.FloorRules, "STRUCTURING") {
			t.Errorf("level %s set by %q, floor %s from %v", d.RiskLevel, d.LevelSetBy, d.RuleFloor, d.FloorRules)
		}
		if !strings.Contains(d.Report["zh"], "(业务规则触发,严重程度:高") || !strings.Contains(d.Report["en"], "(rule-triggered, severity high") {
			t.Errorf("report %v", d.Report)
		}
		if round == 0 {
			first = d
		} else {
			for j := range d.Features {
				if d.Features[j].Phi != first.Features[j].Phi {
					t.Errorf("%s: phi %g then %g on the same case", d.Features[j].Name, first.Features[j].Phi, d.Features[j].Phi)
				}
			}
		}
	}

	// A list of cases, on the batch tier, with permutation sampling.
	body := `{"cases": [` + amlCase(t, "salary.json") + `,` +
		strings.Replace(amlCase(t, "eight.json"), `"transactions"`, `"options": {"explain": {"method": "permutation", "samples": 16, "seed": 3}}, "transactions"`, 1) + `]}`
	resp, out := sendTo(t, strings.TrimSuffix(ts.url, "/v1")+"/tiers/batch/v1", "/aml/score", body)
	if resp.StatusCode != 200 || resp.Header.Get("X-Finserve-Tier") != "batch" {
		t.Fatalf("list: status %d, tier %q: %s", resp.StatusCode, resp.Header.Get("X-Finserve-Tier"), out)
	}
	var list struct {
		Object string
		Data   []amlDecision
	}
	json.Unmarshal([]byte(out), &list)
	if list.Object != "list" || len(list.Data) != 2 || list.Data[1].Explanation.Method != "permutation" || len(list.Data[0].Rules) != 0 {
		t.Fatalf("list response: %s", out)
	}
	for _, d := range list.Data {
		sum := 0.0
		for _, f := range d.Features {
			sum += f.Phi
		}
		if ex := d.Explanation; math.Abs(sum-(ex.FX-ex.FBaseline)) > 1e-9 {
			t.Errorf("%s: efficiency off by %g", d.CaseID, sum-(ex.FX-ex.FBaseline))
		}
	}

	// Bad input names its field and records nothing.
	resp, out = ts.post(t, "/aml/score", strings.Replace(amlCase(t, "salary.json"), `"channel": "card"`, `"channel": "pigeon"`, 1))
	if resp.StatusCode != 400 || !strings.Contains(out, `"param":"transactions[4].channel"`) {
		t.Errorf("invalid channel: %d %s", resp.StatusCode, out)
	}

	al.Close()
	sum, err := audit.VerifyFile(auditPath, nil)
	if err != nil || sum.Records != 4 {
		t.Fatalf("audit log: %+v, %v; want 4 records", sum, err)
	}
	trail, _ := os.ReadFile(auditPath)
	for _, where := range []struct{ name, text string }{{"audit log", string(trail)}, {"server log", logs.String()}} {
		for _, secret := range []string{"110105199003070025", "11010519491231002X", "440524188001010014", "13812341234", "13912345678", "4111111111111111", "张三"} {
			if strings.Contains(where.text, secret) {
				t.Errorf("%s holds %s", where.name, secret)
			}
		}
	}
	// Personal fields are named, never kept (not even masked).
	if !strings.Contains(string(trail), `"pii_fields":["id_number","mobile","name"]`) || strings.Contains(string(trail), `"id_number":"`) {
		t.Errorf("audit record keeps personal fields or does not name them: %.400s", trail)
	}

	// With the audit log unavailable, no decision leaves.
	resp, out = ts.post(t, "/aml/score", amlCase(t, "salary.json"))
	if resp.StatusCode != 503 || !strings.Contains(out, "audit_unavailable") {
		t.Errorf("closed audit log: %d %s", resp.StatusCode, out)
	}
	_, metrics := ts.get(t, "/metrics")
	for _, want := range []string{`finserve_aml_decisions_total{risk_level=`, `finserve_aml_rules_fired_total{rule="STRUCTURING"} 2`,
		`finserve_aml_decision_seconds_count{tier="batch"} 1`, "finserve_aml_evaluated_tokens_total"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	checkIdleEngine(t, ts.eng)
}

func checkIdleEngine(t *testing.T, e *engine.Engine) {
	t.Helper()
	s, err := e.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Running != 0 || s.Sequences != 0 || s.Waiting != 0 {
		t.Errorf("engine not idle: %+v", s)
	}
}

// TestAMLLabelsNotInVocabulary: label words the model cannot produce as
// one token are a clear server error, not a wrong score.
func TestAMLLabelsNotInVocabulary(t *testing.T) {
	data := strings.Replace(string(aml.DefaultYAML()), `"yes": " yes"`, `"yes": " affirmative"`, 1)
	cfg, err := aml.ParseConfig([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{AML: cfg}, engine.Options{Context: 2048})
	resp, out := ts.post(t, "/aml/score", amlCase(t, "salary.json"))
	if resp.StatusCode != 500 || !strings.Contains(out, "aml_model_unsuitable") || !strings.Contains(out, `label \" affirmative\" is not a single token`) {
		t.Errorf("status %d: %s", resp.StatusCode, out)
	}
}

// TestPIICorpus: identifiers, cards, phones, passports and e-mail
// addresses in every field a case has, in the forms the review found
// unmasked (spaced, hyphenated, +86, full-width, joined to letters, a
// legacy or wrong-check ID), appear in none of the response, the server's
// JSON log (wired as the binary wires it) and the audit log.
func TestPIICorpus(t *testing.T) {
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{ReplaceAttr: pii.ReplaceAttr}))
	auditPath := filepath.Join(t.TempDir(), "audit.jsonl")
	al, err := audit.Open(auditPath, audit.Options{Logger: logger, Key: bytes.Repeat([]byte{9}, audit.KeySize)})
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{Audit: al, Logger: logger}, engine.Options{Parallel: 4, Context: 2048})
	corpus := []struct{ name, value string }{
		{"resident ID", "110105199003070025"},
		{"resident ID with X", "11010519491231002X"},
		{"ID, wrong check digit", "110105199003070023"},
		{"legacy 15-digit ID", "110105490101002"},
		{"spaced ID", "110105 19900307 0025"},
		{"ID joined to letters", "ID11010519491231002X"},
		{"card", "6222020200112233446"},
		{"card with suffix", "6228480402564890018-1"},
		{"spaced card", "4111 1111 1111 1111"},
		{"mobile", "13812345678"},
		{"spaced mobile", "138 1234 5678"},
		{"+86 hyphenated", "+86 138-1234-5678"},
		{"full-width mobile", "１３８１２３４５６７８"},
		{"mobile joined to letters", "CUST13812345678"},
		{"passport", "E12345678"},
		{"e-mail", "zhang.san@bank.example.cn"},
	}
	base := amlCase(t, "structuring.json")
	for _, c := range corpus {
		t.Run(c.name, func(t *testing.T) {
			var kase map[string]any
			if err := json.Unmarshal([]byte(base), &kase); err != nil {
				t.Fatal(err)
			}
			kase["case_id"] = c.value
			cu := kase["customer"].(map[string]any)
			cu["customer_id"] = "C" + c.value
			cu["occupation"] = "clerk " + c.value
			cu["pii"] = map[string]any{"name": c.value, "id_number": c.value, "mobile": c.value}
			txns := kase["transactions"].([]any)
			for i, tx := range txns {
				m := tx.(map[string]any)
				if i == 1 || i == 2 { // cash deposits that STRUCTURING cites as evidence
					m["txn_id"] = fmt.Sprintf("%s-%d", c.value, i)
				}
				m["memo"] = "ref " + c.value
			}
			txns[0].(map[string]any)["from"].(map[string]any)["bank_id"] = c.value
			body, _ := json.Marshal(kase)
			// The account id too: every reference to it.
			body = bytes.ReplaceAll(body, []byte(`"A-1"`), []byte(strconv.Quote("acct "+c.value)))
			resp, out := ts.post(t, "/aml/score", string(body))
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, out)
			}
			if !strings.Contains(out, "STRUCTURING") {
				t.Fatalf("the case no longer fires STRUCTURING, so its evidence is not tested: %s", out)
			}
			trail, _ := os.ReadFile(auditPath)
			digits := strings.Map(func(r rune) rune {
				switch {
				case r >= '0' && r <= '9':
					return r
				case r >= '０' && r <= '９':
					return r - '０' + '0'
				}
				return -1
			}, c.value)
			for where, text := range map[string]string{"response": out, "server log": logs.String(), "audit log": string(trail)} {
				for _, form := range []string{c.value, digits} {
					if i := strings.Index(text, form); len(form) >= 7 && i >= 0 {
						t.Errorf("%s holds %q: ...%s...", where, form, text[max(0, i-150):min(len(text), i+50)])
					}
				}
			}
			if strings.Contains(string(trail), `"pii":`) || !strings.Contains(string(trail), `"pii_fields":["id_number","mobile","name"]`) {
				t.Errorf("the audit record keeps personal fields' content, or does not name them")
			}
		})
	}
	if sum, err := audit.VerifyFile(auditPath, bytes.Repeat([]byte{9}, audit.KeySize)); err != nil || sum.Records != uint64(len(corpus)) {
		t.Errorf("audit log: %+v %v", sum, err)
	}
}
