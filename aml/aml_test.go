package aml

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// textModel is a stand-in language model for testing the attribution
// arithmetic: a fixed non-linear function of the prompt's values row (a
// logistic of per-item weights plus interactions of neighbours, from a
// hash of each item). The engine-backed scorer is tested in the server.
type textModel struct {
	ignore int // a feature number (1-based) whose value the model does not read
}

func (m *textModel) Score(_ context.Context, prompts []string, _, _ string) (Scores, error) {
	out := Scores{P: make([]float64, len(prompts))}
	for i, p := range prompts {
		_, row, ok := strings.Cut(p, "\nValues:")
		if !ok {
			return Scores{}, fmt.Errorf("no values row in %q", p)
		}
		var ws []float64
		for _, item := range strings.Split(row, ";") {
			item = strings.TrimSpace(item)
			if item == "" || strings.HasPrefix(item, "High risk") || m.ignore > 0 && strings.HasPrefix(item, featureKey(m.ignore-1)+"=") {
				continue
			}
			h := fnv.New64a()
			h.Write([]byte(item))
			ws = append(ws, float64(h.Sum64()%2001)/1000-1)
		}
		z := -0.5
		for j, w := range ws {
			z += w
			if j > 0 {
				z += 0.5 * w * ws[j-1]
			}
		}
		out.P[i] = 1 / (1 + math.Exp(-z))
		out.PromptTokens += len(p)
	}
	return out, nil
}

func loadCase(t testing.TB, name string) *Case {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	cs, _, err := DecodeCases(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs[0].Validate(DefaultConfig(), ""); err != nil {
		t.Fatal(err)
	}
	return &cs[0]
}

func assess(t testing.TB, c *Case, m Scorer) *Result {
	t.Helper()
	r, err := NewAssessor(DefaultConfig(), m).Assess(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func sumPhi(r *Result) float64 {
	s := 0.0
	for _, f := range r.Features {
		s += f.Phi
	}
	return s
}

// TestEfficiency: attributions sum to f(x) - f(baseline), exactly for
// both methods (each sampled permutation telescopes).
func TestEfficiency(t *testing.T) {
	if r := assess(t, loadCase(t, "eight.json"), &textModel{}); r.Explanation.Players != 8 || r.Explanation.Method != MethodExact {
		t.Fatalf("eight.json: %d active features, method %s; want 8, exact", r.Explanation.Players, r.Explanation.Method)
	}
	for _, name := range []string{"structuring.json", "salary.json", "eight.json"} {
		for _, method := range []string{MethodExact, MethodPermutation} {
			c := loadCase(t, name)
			c.Options.Explain.Method = method
			r := assess(t, c, &textModel{})
			ex := r.Explanation
			if d := math.Abs(sumPhi(r) - (ex.FX - ex.FBaseline)); d > 1e-9 {
				t.Errorf("%s %s: sum of phi %.12f, f_x - f_baseline %.12f (off by %g)", name, method, sumPhi(r), ex.FX-ex.FBaseline, d)
			}
			if method == MethodExact && ex.Coalitions != 1<<ex.Players {
				t.Errorf("%s: %d coalitions for %d players", name, ex.Coalitions, ex.Players)
			}
			shares := 0.0
			for _, f := range r.Features {
				shares += f.Share
				// An inactive feature reads its baseline, or says it has no
				// value and nothing to say (velocity without history).
				if !f.Active && (f.Phi != 0 || f.Value != f.Baseline && f.Value != "no baseline") {
					t.Errorf("%s: inactive feature %s has phi %g, value %q, baseline %q", name, f.Name, f.Phi, f.Value, f.Baseline)
				}
			}
			if sumPhi(r) != 0 && math.Abs(shares-1) > 1e-9 {
				t.Errorf("%s: shares sum to %g", name, shares)
			}
		}
	}
}

// TestIgnoredFeatureGetsZero: a feature the model does not read (its
// masking leaves the prompt's score unchanged) gets phi 0.
func TestIgnoredFeatureGetsZero(t *testing.T) {
	c := loadCase(t, "eight.json")
	r := assess(t, c, &textModel{ignore: 2})
	if !r.Features[1].Active {
		t.Fatal("pass_through is not active in eight.json")
	}
	if phi := r.Features[1].Phi; math.Abs(phi) > 1e-12 {
		t.Errorf("ignored feature has phi %g", phi)
	}
}

// TestPermutationAgreesWithExact: sampled attributions lie within four
// standard errors of the exact ones, and the same seed gives the same
// output while another seed does not.
func TestPermutationAgreesWithExact(t *testing.T) {
	c := loadCase(t, "eight.json")
	exact := assess(t, c, &textModel{})
	c.Options.Explain = Explain{Method: MethodPermutation, Samples: 400, Seed: ptr(uint64(7))}
	perm := assess(t, c, &textModel{})
	for i, f := range perm.Features {
		if d := math.Abs(f.Phi - exact.Features[i].Phi); d > 4*f.StdErr+1e-12 {
			t.Errorf("%s: permutation %g, exact %g, stderr %g", f.Name, f.Phi, exact.Features[i].Phi, f.StdErr)
		}
	}
	again := assess(t, c, &textModel{})
	if !reflect.DeepEqual(perm, again) {
		t.Error("the same seed gave different results")
	}
	c.Options.Explain.Seed = ptr(uint64(8))
	other := assess(t, c, &textModel{})
	if reflect.DeepEqual(perm.Features, other.Features) {
		t.Error("another seed gave identical attributions")
	}
}

func ptr[T any](v T) *T { return &v }

// TestDecimalBoundaries: statutory thresholds are exact.
func TestDecimalBoundaries(t *testing.T) {
	cases := []struct {
		jur, typ, amount, currency, channel string
		cpty                                string // counterparty country
		report                              string
		want                                bool
	}{
		{"CN", "individual", "49999.99", "CNY", "cash", "", "CN-LVT-CASH", false},
		{"CN", "individual", "50000.00", "CNY", "cash", "", "CN-LVT-CASH", true},
		{"CN", "entity", "50000", "CNY", "cash", "", "CN-LVT-CASH", true},
		{"CN", "individual", "9999.99", "USD", "cash", "", "CN-LVT-CASH", false},
		{"CN", "individual", "10000.00", "USD", "cash", "", "CN-LVT-CASH", true},
		{"US", "individual", "10000.00", "USD", "cash", "", "US-CTR", false},
		{"US", "individual", "10000.01", "USD", "cash", "", "US-CTR", true},
		{"US", "individual", "10000.01", "USD", "wire", "US", "US-CTR", false},
		{"CN", "individual", "199999.99", "CNY", "wire", "HK", "CN-LVT-XBORDER", false},
		{"CN", "individual", "200000.00", "CNY", "wire", "HK", "CN-LVT-XBORDER", true},
		{"CN", "entity", "200000.00", "CNY", "wire", "HK", "CN-LVT-XBORDER", false},
		{"CN", "individual", "10000.00", "USD", "wire", "HK", "CN-LVT-XBORDER", true},
	}
	for _, tc := range cases {
		amt := decimal.RequireFromString(tc.amount)
		c := &Case{CaseID: "B", Jurisdiction: tc.jur, AsOf: mustTime("2025-11-28T12:00:00Z"),
			Customer: Customer{CustomerID: "C", Type: tc.typ, Country: "CN"},
			Accounts: []Account{{AccountID: "A"}}}
		if tc.jur == "US" {
			c.Customer.Country = "US"
		}
		// Split across two transactions on one day: the daily total counts.
		half := amt.Div(decimal.NewFromInt(2)).Truncate(2)
		for i, a := range []decimal.Decimal{half, amt.Sub(half)} {
			c.Transactions = append(c.Transactions, Transaction{TxnID: fmt.Sprint("T", i), Timestamp: mustTime(fmt.Sprintf("2025-11-27T0%d:00:00Z", i+1)),
				From: Party{AccountID: "X", Country: tc.cpty}, To: Party{AccountID: "A"}, Amount: Money{Amount: a, Currency: tc.currency}, Channel: tc.channel})
		}
		if err := c.Validate(DefaultConfig(), ""); err != nil {
			t.Fatal(err)
		}
		r := assess(t, c, &textModel{})
		got := slices.ContainsFunc(r.RegulatoryReports, func(x Triggered) bool { return x.ID == tc.report })
		if got != tc.want {
			t.Errorf("%s %s %s %s via %s: %s fired %v, want %v", tc.jur, tc.typ, tc.amount, tc.currency, tc.channel, tc.report, got, tc.want)
		}
		if got && !slices.Equal(r.RegulatoryReports[0].Evidence, []string{"T0", "T1"}) {
			t.Errorf("%s evidence %v", tc.report, r.RegulatoryReports[0].Evidence)
		}
		for _, x := range r.RegulatoryReports {
			if x.Severity != "" || slices.ContainsFunc(r.Rules, func(y Triggered) bool { return y.ID == x.ID }) {
				t.Errorf("report %s is mixed with suspicion rules", x.ID)
			}
		}
	}
}

func mustTime(s string) (t0 time.Time) {
	if err := t0.UnmarshalText([]byte(s)); err != nil {
		panic(err)
	}
	return t0
}

// TestOrderInvariance: shuffling transactions and accounts, and
// reordering JSON keys, change nothing.
func TestOrderInvariance(t *testing.T) {
	data, _ := os.ReadFile("testdata/eight.json")
	ref := assess(t, loadCase(t, "eight.json"), &textModel{})
	// The case's hash, which the audit record keeps, is as order-free as
	// the result, and changes with any amount.
	refHash := loadCase(t, "eight.json").Hash()
	changed := loadCase(t, "eight.json")
	changed.Transactions[0].Amount.Amount = changed.Transactions[0].Amount.Amount.Add(decimal.New(1, -2))
	if changed.Hash() == refHash {
		t.Error("a case with another amount hashes the same")
	}
	var generic map[string]any
	json.Unmarshal(data, &generic)
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 5 {
		txns := generic["transactions"].([]any)
		rng.Shuffle(len(txns), func(i, j int) { txns[i], txns[j] = txns[j], txns[i] })
		// encoding/json writes map keys sorted: a different key order from the file's.
		shuffled, _ := json.Marshal(generic)
		cs, _, err := DecodeCases(shuffled)
		if err != nil {
			t.Fatal(err)
		}
		got := assess(t, &cs[0], &textModel{})
		if h := cs[0].Hash(); h != refHash || len(h) != 64 {
			t.Errorf("trial %d: hash %s, want %s", trial, h, refHash)
		}
		if !reflect.DeepEqual(ref, got) {
			a, _ := json.Marshal(ref)
			b, _ := json.Marshal(got)
			t.Fatalf("trial %d: results differ:\n%s\n%s", trial, a, b)
		}
	}
}

// TestHandBuiltCases: structuring fires with its evidence; a salary-only
// customer fires nothing; reports are bilingual, ordered and never tip
// off.
func TestHandBuiltCases(t *testing.T) {
	r := assess(t, loadCase(t, "structuring.json"), &textModel{})
	i := slices.IndexFunc(r.Rules, func(x Triggered) bool { return x.ID == "STRUCTURING" })
	if i < 0 {
		t.Fatalf("structuring did not fire: %+v", r.Rules)
	}
	if ev := r.Rules[i].Evidence; !slices.Equal(ev, []string{"T1", "T2", "T3"}) {
		t.Errorf("structuring evidence %v, want [T1 T2 T3]", ev)
	}
	if r.RuleFloor.rank() < LevelHigh.rank() || r.RiskLevel.rank() < r.ModelLevel.rank() || !r.HumanReviewRequired {
		t.Errorf("fusion: level %s, model %s, floor %s, review %v", r.RiskLevel, r.ModelLevel, r.RuleFloor, r.HumanReviewRequired)
	}
	if len(r.RegulatoryReports) != 0 {
		t.Errorf("no day reaches CNY 50,000 in cash, yet %v", r.RegulatoryReports)
	}
	// The narrative: who (masked), when, how much, which transactions.
	for lang, wants := range map[string][]string{
		"zh": {"(业务规则触发", "多笔现金交易金额略低于申报标准", "客户 C-***01(个人,国家或地区 CN),账户 A***", "评估期 2025-10-29 至 2025-11-28(30天)",
			"T1 2025-11-20 现金存入 CNY 48,000.00", "T3 2025-11-23 现金存入 CNY 46,800.00", "三、模型观点", "四、应报送的法定报告\n无。", "不得向客户"},
		"en": {"(rule-triggered, severity high", "Customer C-***01 (individual, country CN), accounts A***", "Period 2025-10-29 to 2025-11-28 (30 days), 5 transactions",
			"cash in 3, CNY 144,300.00, and cash out none", "T2 2025-11-21 cash in CNY 49,500.00\n", "3. The model's view", "4. Statutory reports due\nNone.", "Do not disclose"},
	} {
		for _, want := range wants {
			if !strings.Contains(r.Report[lang], want) {
				t.Errorf("%s report lacks %q:\n%s", lang, want, r.Report[lang])
			}
		}
		if strings.Contains(r.Report[lang], "C-1001") {
			t.Errorf("%s report names the customer unmasked", lang)
		}
	}
	// Contributions are listed by |phi|, and say which way they push.
	var last float64 = math.Inf(1)
	for _, line := range strings.Split(r.Report["en"], "\n") {
		for _, f := range r.Features {
			if strings.HasPrefix(line, "- "+f.Label.EN+":") && strings.Contains(line, "the score by") {
				if (f.Phi > 0) != strings.Contains(line, "raises") {
					t.Errorf("phi %g reads %q", f.Phi, line)
				}
				if math.Abs(f.Phi) > last {
					t.Errorf("report out of order at %q", line)
				}
				last = math.Abs(f.Phi)
			}
		}
	}

	s := assess(t, loadCase(t, "salary.json"), &textModel{})
	if len(s.Rules) != 0 || len(s.RegulatoryReports) != 0 || s.RuleFloor != LevelLow {
		t.Errorf("salary-only case fired %+v %+v", s.Rules, s.RegulatoryReports)
	}
	for _, r := range []*Result{r, s} {
		for lang, text := range r.Report {
			if w := tippingOff(text); w != "" {
				t.Errorf("%s report mentions %q", lang, w)
			}
		}
	}
}

func TestValidationNamesField(t *testing.T) {
	base, _ := os.ReadFile("testdata/structuring.json")
	cases := []struct{ edit, field string }{
		{`"jurisdiction": "CN"=>"jurisdiction": "UK"`, "jurisdiction"},
		{`"type": "individual"=>"type": "person"`, "customer.type"},
		{`"amount": "48000.00"=>"amount": "-48000.00"`, "transactions[1].amount"},
		{`"amount": "48000.00"=>"amount": "abc"`, "body"},
		{`"currency": "CNY"}, "channel": "cash"}=>"currency": "XYZ"}, "channel": "cash"}`, "transactions[1].amount"},
		{`"channel": "wire"=>"channel": "telegraph"`, "transactions[4].channel"},
		{`"txn_id": "T2"=>"txn_id": "T1"`, "transactions[2].txn_id"},
		{`"2025-11-24T09:30:00+08:00"=>"2025-11-30T09:30:00+08:00"`, "transactions[4].timestamp"},
		{`"case_id": "CASE-CN-STRUCT-001"=>"case_id": ""`, "case_id"},
		{`"jurisdiction"=>"jurisdictio"`, "jurisdictio"},
		{`"account_id": "B-9"=>"account_id": "A-1"`, ""}, // internal transfer: fine
		{`"to": {"account_id": "B-9"=>"to": {"account_id": ""`, "transactions[4].to.account_id"},
		{`"from": {"account_id": "EMP-1"=>"from": {"account_id": "EMP-0"`, ""},
		// Reference data in force: the FX table from 2025-11-27, the FATF
		// lists from 2025-10-24, both to be reviewed by 2026-02-28 (in
		// the jurisdiction's time zone).
		{`"as_of": "2025-11-28T12:00:00+08:00"=>"as_of": "2026-02-28T23:59:00+08:00"`, ""},
		{`"as_of": "2025-11-28T12:00:00+08:00"=>"as_of": "2026-03-01T00:00:00+08:00"`, "as_of"},
		{`"as_of": "2025-11-28T12:00:00+08:00"=>"as_of": "2026-11-28T12:00:00+08:00"`, "as_of"},
		{`"as_of": "2025-11-28T12:00:00+08:00"=>"as_of": "2025-11-27T00:00:00+08:00"`, ""},
		{`"as_of": "2025-11-28T12:00:00+08:00"=>"as_of": "2025-11-26T23:59:00+08:00"`, "as_of"},
		// Currencies a Chinese bank meets.
		{`"amount": "48000.00", "currency": "CNY"=>"amount": "48000.00", "currency": "MOP"`, ""},
		{`"amount": "48000.00", "currency": "CNY"=>"amount": "48000.00", "currency": "TWD"`, ""},
		{`"amount": "48000.00", "currency": "CNY"=>"amount": "48000.00", "currency": "KRW"`, ""},
		{`"amount": "48000.00", "currency": "CNY"=>"amount": "48000.00", "currency": "AUD"`, ""},
		{`"amount": "48000.00", "currency": "CNY"=>"amount": "48000.00", "currency": "VND"`, "transactions[1].amount"},
		// Limits and codes at their edges.
		{`"country": "CN",
    "occupation"=>"country": "ZA",
    "occupation"`, ""},
		{`"country": "CN",
    "occupation"=>"country": "Za",
    "occupation"`, "customer.country"},
		{`"as_of": "2025-11-28T12:00:00+08:00",=>"as_of": "2025-11-28T12:00:00+08:00", "options": {"explain": {"samples": 1024}},`, ""},
		{`"as_of": "2025-11-28T12:00:00+08:00",=>"as_of": "2025-11-28T12:00:00+08:00", "options": {"explain": {"samples": 1025}},`, "options.explain.samples"},
		// Who paid cash in: on cash only, on the from side only.
		{`"from": {}, "to": {"account_id": "A-1", "country": "CN"}, "amount": {"amount": "48000.00"=>"from": {"depositor_id": "P-7"}, "to": {"account_id": "A-1", "country": "CN"}, "amount": {"amount": "48000.00"`, ""},
		{`"from": {}, "to": {"account_id": "A-1", "country": "CN"}, "amount": {"amount": "48000.00"=>"from": {}, "to": {"account_id": "A-1", "country": "CN", "depositor_id": "P-7"}, "amount": {"amount": "48000.00"`, "transactions[1].to.depositor_id"},
		{`"to": {"account_id": "B-9", "bank_id": "BOC", "country": "CN"}=>"to": {"account_id": "B-9", "bank_id": "BOC", "country": "CN"}, "depositor_id": "P-7"`, "depositor_id"},
		{`"from": {"account_id": "EMP-1", "bank_id": "ICBC"=>"from": {"account_id": "EMP-1", "depositor_id": "P-7", "bank_id": "ICBC"`, "transactions[0].from.depositor_id"},
		// Each field of the customer, the accounts and the transactions.
		{`"customer_id": "C-1001"=>"customer_id": " "`, "customer.customer_id"},
		{`"occupation": "retail clerk"=>"occupation": "retail\nclerk"`, "customer.occupation"},
		{`"risk_rating": "low"=>"risk_rating": "lo\rw"`, "customer.risk_rating"},
		{`"declared_monthly_income": {"amount": "12000.00"=>"declared_monthly_income": {"amount": "-1"`, "customer.declared_monthly_income"},
		{`"declared_monthly_income": {"amount": "12000.00"=>"declared_monthly_income": {"amount": "0"`, ""},
		{`"name": "张三"=>"name": "张\u0000三"`, "customer.pii.name"},
		{`{"account_id": "A-1", "opened_at": "2019-03-01T09:00:00+08:00", "last_activity_at": "2025-11-10T09:00:00+08:00"}=>`, "accounts"},
		{`{"account_id": "A-1", "opened_at"=>{"account_id": "", "opened_at"`, "accounts[0].account_id"},
		{`"last_activity_at": "2025-11-10T09:00:00+08:00"}=>"last_activity_at": "2025-11-10T09:00:00+08:00"}, {"account_id": "A-1"}`, "accounts[1].account_id"},
		{`"txn_id": "T0"=>"txn_id": ""`, "transactions[0].txn_id"},
		{`"txn_id": "T1", "timestamp": "2025-11-20T10:15:00+08:00", =>"txn_id": "T1", `, "transactions[1].timestamp"},
		{`"channel": "ach"=>"channel": "ach", "amount_received": {"amount": "0", "currency": "CNY"}`, "transactions[0].amount_received"},
		{`"channel": "ach"=>"channel": "ach", "amount_received": {"amount": "1650", "currency": "USD"}`, ""},
		{`"bank_id": "ICBC", "country": "CN"=>"bank_id": "ICBC", "country": "CHN"`, "transactions[0].from.country"},
		{`"bank_id": "BOC"=>"bank_id": "BO\nC"`, "transactions[4].to.bank_id"},
		{`"memo": "salary"=>"memo": "` + strings.Repeat("x", 512) + `"`, ""},
		{`"memo": "salary"=>"memo": "` + strings.Repeat("x", 513) + `"`, "transactions[0].memo"},
		{`"to": {"account_id": "A-1", "country": "CN"}, "amount": {"amount": "12000.00"=>"to": {"account_id": "X-2", "country": "CN"}, "amount": {"amount": "12000.00"`, "transactions[0].from.account_id"},
		{`"from": {"account_id": "EMP-1", "bank_id": "ICBC", "country": "CN"}=>"from": {"bank_id": "ICBC", "country": "CN"}`, "transactions[0].from.account_id"},
		{`"bank_id": "BOC", "country": "CN"}=>"bank_id": "BOC"}`, "transactions[4].to.country"},
		{`"bank_id": "ICBC", "country": "CN"}=>"bank_id": "ICBC"}`, "transactions[0].from.country"},
		{`"amount": "48000.00"=>"amount": "0.00000001"`, ""},
		{`"amount": "48000.00"=>"amount": "0.000000001"`, "transactions[1].amount"},
		{`"amount": "48000.00"=>"amount": "1000000000000000"`, ""},
		{`"amount": "48000.00"=>"amount": "1000000000000000.01"`, "transactions[1].amount"},
		{`"as_of": "2025-11-28T12:00:00+08:00",=>"as_of": "2025-11-28T12:00:00+08:00", "options": {"explain": {"method": "shapley"}},`, "options.explain.method"},
		{`"as_of": "2025-11-28T12:00:00+08:00",=>"as_of": "2025-11-28T12:00:00+08:00", "options": {"explain": {"samples": -1}},`, "options.explain.samples"},
		{`"as_of": "2025-11-28T12:00:00+08:00",=>"as_of": "2025-11-28T12:00:00+08:00", "options": {"languages": ["zh", "fr"]},`, "options.languages[1]"},
		{`"as_of": "2025-11-28T12:00:00+08:00",=>"as_of": "2025-11-28T12:00:00+08:00", "options": {"languages": ["en"]},`, ""},
	}
	for _, tc := range cases {
		old, repl, _ := strings.Cut(tc.edit, "=>")
		body := strings.Replace(string(base), old, repl, 1)
		if body == string(base) {
			t.Fatalf("edit %q changed nothing", tc.edit)
		}
		cs, _, err := DecodeCases([]byte(body))
		if err == nil {
			err = cs[0].Validate(DefaultConfig(), "")
		}
		var fe *FieldError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v", tc.edit, err)
		case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field || !strings.HasPrefix(err.Error(), tc.field+": ")):
			t.Errorf("%s: got %v, want an error on %s", tc.edit, err, tc.field)
		}
	}
	// The limits on accounts and transactions, at and past them.
	for _, tc := range []struct {
		accounts, txns int
		field          string
	}{{MaxAccounts, 0, ""}, {MaxAccounts + 1, 0, "accounts"}, {1, MaxTransactions, ""}, {1, MaxTransactions + 1, "transactions"}} {
		c := loadCase(t, "structuring.json")
		c.Transactions = nil
		for i := 1; i < tc.accounts; i++ {
			c.Accounts = append(c.Accounts, Account{AccountID: fmt.Sprint("X-", i)})
		}
		for i := range tc.txns {
			c.Transactions = append(c.Transactions, Transaction{TxnID: fmt.Sprint("T", i), Timestamp: mustTime("2025-11-20T01:00:00Z"),
				To: Party{AccountID: "A-1"}, Amount: Money{Amount: decimal.NewFromInt(100), Currency: "CNY"}, Channel: "cash"})
		}
		err := c.Validate(DefaultConfig(), "")
		var fe *FieldError
		if (tc.field == "") != (err == nil) || (err != nil && (!errors.As(err, &fe) || fe.Field != tc.field)) {
			t.Errorf("%d accounts, %d transactions: %v, want an error on %q", tc.accounts, tc.txns, err, tc.field)
		}
	}
	if _, _, err := DecodeCases([]byte(`{"cases": []}`)); err == nil {
		t.Error("an empty case list was accepted")
	}
	// Eleven active features: exact is refused, the default samples.
	c := loadCase(t, "eight.json")
	// A transaction in the baseline period gives velocity a rate to
	// compare with.
	c.Transactions = append(c.Transactions, Transaction{TxnID: "H0", Timestamp: mustTime("2025-08-15T01:00:00Z"),
		To: Party{AccountID: "E-1"}, Amount: Money{Amount: decimal.RequireFromString("120"), Currency: "CNY"}, Channel: "cash"})
	for i, amt := range []string{"46000", "47000", "300"} {
		c.Transactions = append(c.Transactions, Transaction{TxnID: fmt.Sprint("C", i), Timestamp: mustTime(fmt.Sprintf("2025-11-2%dT01:00:00Z", 4+i)),
			To: Party{AccountID: "E-1"}, Amount: Money{Amount: decimal.RequireFromString(amt), Currency: "CNY"}, Channel: "cash"})
	}
	c.Options.Explain.Method = MethodExact
	_, err := NewAssessor(DefaultConfig(), &textModel{}).Assess(context.Background(), c)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "options.explain.method" {
		t.Errorf("exact over 11 features: %v", err)
	}
	c.Options.Explain.Method = ""
	if r := assess(t, c, &textModel{}); r.Explanation.Players != 11 || r.Explanation.Method != MethodPermutation || r.Explanation.Samples != DefaultSamples {
		t.Errorf("11 features: %+v", r.Explanation)
	}
}

func TestConfigChecks(t *testing.T) {
	good := string(DefaultYAML())
	cases := map[string]string{
		"unknown fact":     `{fact: velocity, op: ">=", value: "4"}=>{fact: speed, op: ">=", value: "4"}`,
		"bad operator":     `{fact: velocity, op: ">=", value: "4"}=>{fact: velocity, op: "=>", value: "4"}`,
		"tipping off":      `"Sudden rise in transaction frequency"=>"File a SAR: sudden rise"`,
		"bad severity":     `severity: medium=>severity: severe`,
		"no base rate":     `USD: "1"=>USD: "1.1"`,
		"bad timezone":     `Asia/Shanghai=>Asia/Nowhere`,
		"levels order":     `high: 0.6=>high: 0.2`,
		"unknown key":      `window:=>windows:`,
		"line template":    `line: "{key}. {label}\n"=>line: "{key}.\n"`,
		"value template":   `value: " {key}={value};"=>value: " {key};"`,
		"same labels":      `"no": " no"=>"no": " yes"`,
		"duplicate rule":   `id: FAN-OUT=>id: FAN-IN`,
		"report severity":  `kind: report=>kind: report` + "\n      severity: high",
		"no fx source":     `  source: "indicative=>  sources: "indicative`,
		"fx dates":         `review_by: "2026-02-28"   # cases=>review_by: "2025-02-28"   # cases`,
		"list date":        `effective: "2025-10-24"=>effective: "24 Oct 2025"`,
		"grade too low":    `{severity: high, all: [{fact: fan_in=>{severity: medium, all: [{fact: fan_in`,
		"grade fact":       `{severity: high, all: [{fact: fan_in=>{severity: high, all: [{fact: fan_inn`,
		"no deadline":      `report_deadline: {calendar_days: 15, =>report_deadline: {`,
		"two deadlines":    `report_deadline: {calendar_days: 15, =>report_deadline: {working_days: 5, calendar_days: 15, `,
		"calendar year":    `workdays: [2025-01-26=>workdays: [2024-01-26`,
		"empty occupation": `no_income: [student,=>no_income: [" ",`,
		"calendar source":  `      source: "国务院办公厅关于2025年部分节假日安排的通知(国办发明电〔2024〕12号),2024-11-12"` + "\n=>",
		"no days":          `  days: 30 =>  days: 0 `,
		"no baseline":      `baseline_days: 90=>baseline_days: 0`,
		"no recent days":   `recent_days: 7=>recent_days: 0`,
		"recent past days": `recent_days: 7=>recent_days: 31`,
		"no pass-through":  `pass_through_hours: 48=>pass_through_hours: 0`,
		"medium at 0":      `medium: 0.3=>medium: 0`,
		"medium is high":   `medium: 0.3=>medium: 0.6`,
		"high is critical": `high: 0.6=>high: 0.85`,
		"critical past 1":  `critical: 0.85=>critical: 1.01`,
		"unknown level":    `at_level: high=>at_level: severe`,
	}
	for name, edit := range cases {
		old, repl, _ := strings.Cut(edit, "=>")
		bad := strings.Replace(good, old, repl, 1)
		if bad == good {
			t.Fatalf("%s: edit changed nothing", name)
		}
		if _, err := ParseConfig([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// The equal and open ends of the same bounds are accepted.
	for name, edit := range map[string]string{
		"recent days all the window": `recent_days: 7=>recent_days: 30`,
		"critical at 1":              `critical: 0.85=>critical: 1`,
		"review from low":            `at_level: high=>at_level: low`,
		"a rule with all and any": `        - {fact: velocity, op: ">=", value: "4"}
      grades:=>        - {fact: velocity, op: ">=", value: "4"}
      any:
        - {fact: fan_in, op: ">=", value: "1"}
      grades:`,
		// A deadline in calendar days does not read the holiday calendar,
		// so a calendar there needs no official source.
		"calendar days, sourceless calendar": `report_deadline: {calendar_days: 15, legal_basis: "31 CFR 1010.306(a)(3)"}=>` +
			`report_deadline: {calendar_days: 15, legal_basis: "31 CFR 1010.306(a)(3)"}` + "\n    calendar: {years: [2025]}",
	} {
		old, repl, _ := strings.Cut(edit, "=>")
		ok := strings.Replace(good, old, repl, 1)
		if ok == good {
			t.Fatalf("%s: edit changed nothing", name)
		}
		if _, err := ParseConfig([]byte(ok)); err != nil {
			t.Errorf("%s: refused: %v", name, err)
		}
	}

	// Working days without a holiday calendar count weekdays.
	from, to := strings.Index(good, "    calendar:\n"), strings.Index(good, "  US:\n")
	if from < 0 || to < from {
		t.Fatal("the CN calendar is not where the test cuts")
	}
	if _, err := ParseConfig([]byte(good[:from] + good[to:])); err != nil {
		t.Errorf("working days without a calendar: refused: %v", err)
	}

	// A table based on CNY with no USD rate passed the check, then took
	// the server down on the first cash case (decimal division by zero).
	cnyBase := strings.Replace(strings.Replace(good, "base: USD", "base: CNY", 1), `    USD: "1"`+"\n", "", 1)
	cnyBase = strings.Replace(cnyBase, `CNY: "0.1381"`, `CNY: "1"`, 1)
	if _, err := ParseConfig([]byte(cnyBase)); err == nil || !strings.Contains(err.Error(), "fx.rates.USD") {
		t.Errorf("a table without USD: %v", err)
	}
	// With a USD rate, a CNY base scores a foreign-currency cash case and
	// its statutory report the same as the USD base does.
	withUSD := strings.Replace(cnyBase, `CNY: "1"`, `CNY: "1"`+"\n    USD: \"7.2411\"", 1)
	cfg, err := ParseConfig([]byte(withUSD))
	if err != nil {
		t.Fatal(err)
	}
	c := &Case{CaseID: "FX", Jurisdiction: "CN", AsOf: mustTime("2025-11-28T12:00:00Z"),
		Customer: Customer{CustomerID: "C", Type: "individual", Country: "CN"}, Accounts: []Account{{AccountID: "A"}},
		Transactions: []Transaction{{TxnID: "T", Timestamp: mustTime("2025-11-27T01:00:00Z"), From: Party{AccountID: "X"}, To: Party{AccountID: "A"},
			Amount: Money{Amount: decimal.NewFromInt(10000), Currency: "USD"}, Channel: "cash"}}}
	if err := c.Validate(cfg, ""); err != nil {
		t.Fatal(err)
	}
	r, err := NewAssessor(cfg, &textModel{}).Assess(context.Background(), c)
	if err != nil || len(r.RegulatoryReports) != 1 || r.RegulatoryReports[0].ID != "CN-LVT-CASH" {
		t.Errorf("USD 10,000 in cash under a CNY base: %v %+v", err, r)
	}

	c2 := DefaultConfig()
	if c2.Rules.Rules[0].Any[0].Value.String() != "50000" || len(c2.RulesHash()) != 64 {
		t.Errorf("rule values or hash not parsed: %v %q", c2.Rules.Rules[0].Any[0].Value, c2.RulesHash())
	}
}

// FuzzDecodeCases: any body decodes and validates without panicking, and
// every rejection names a field.
func FuzzDecodeCases(f *testing.F) {
	for _, name := range []string{"structuring.json", "salary.json", "eight.json"} {
		data, _ := os.ReadFile("testdata/" + name)
		f.Add(data)
	}
	f.Add([]byte(`{"cases":[{"case_id":"x"}]}`))
	cfg := DefaultConfig()
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, _, err := DecodeCases(data)
		if err == nil {
			for i := range cs {
				if err = cs[i].Validate(cfg, ""); err != nil {
					break
				}
				feats, _ := computeFeatures(&cs[i], cfg)
				if len(feats) != len(features) {
					t.Fatal("feature count")
				}
			}
		}
		var fe *FieldError
		if err != nil && (!errors.As(err, &fe) || fe.Field == "") {
			t.Fatalf("error without a field: %v", err)
		}
	})
}

// TestSchemaMatchesTypes: the published JSON schema names exactly the
// fields the decoder accepts.
func TestSchemaMatchesTypes(t *testing.T) {
	data, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(data, &schema); err != nil {
		t.Fatal(err)
	}
	defs := schema["$defs"].(map[string]any)
	props := func(v any) []string {
		m := v.(map[string]any)
		if ref, ok := m["$ref"].(string); ok {
			m = defs[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any)
		}
		if items, ok := m["items"]; ok {
			m = items.(map[string]any)
			if ref, ok := m["$ref"].(string); ok {
				m = defs[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any)
			}
		}
		var out []string
		for k := range m["properties"].(map[string]any) {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	fields := func(v any) []string {
		var out []string
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			out = append(out, name)
		}
		slices.Sort(out)
		return out
	}
	caseProps := defs["case"].(map[string]any)["properties"].(map[string]any)
	custProps := caseProps["customer"].(map[string]any)["properties"].(map[string]any)
	optProps := caseProps["options"].(map[string]any)["properties"].(map[string]any)
	checks := []struct {
		name   string
		schema []string
		typ    any
	}{
		{"case", props(defs["case"]), Case{}},
		{"customer", props(caseProps["customer"]), Customer{}},
		{"pii", props(custProps["pii"]), PII{}},
		{"account", props(caseProps["accounts"]), Account{}},
		{"transaction", props(caseProps["transactions"]), Transaction{}},
		{"party", props(defs["party"]), Party{}},
		{"money", props(defs["money"]), Money{}},
		{"options", props(caseProps["options"]), Options{}},
		{"explain", props(optProps["explain"]), Explain{}},
	}
	for _, c := range checks {
		if want := fields(c.typ); !slices.Equal(c.schema, want) {
			t.Errorf("%s: schema has %v, the type %v", c.name, c.schema, want)
		}
	}
	channels := caseProps["transactions"].(map[string]any)["items"].(map[string]any)["properties"].(map[string]any)["channel"].(map[string]any)["enum"].([]any)
	if len(channels) != len(Channels) {
		t.Errorf("schema channels %v, code %v", channels, Channels)
	}
}

// FuzzParseConfig: any AML configuration file is refused with an error,
// or yields a configuration whose every rule names known facts and
// operators and that scores a case without panicking.
func FuzzParseConfig(f *testing.F) {
	f.Add(DefaultYAML())
	f.Add(bytes.Replace(DefaultYAML(), []byte(`value: "50000"`), []byte(`value: "-1"`), 1))
	f.Add(bytes.Replace(DefaultYAML(), []byte("base: USD"), []byte("base: CNY"), 1))
	f.Add([]byte("version: x\n"))
	f.Add([]byte("rules: [\n"))
	data, _ := os.ReadFile("testdata/structuring.json")
	f.Fuzz(func(t *testing.T, yaml []byte) {
		cfg, err := ParseConfig(yaml)
		if err != nil {
			return
		}
		for _, r := range cfg.Rules.Rules {
			for _, cd := range append(slices.Clone(r.All), r.Any...) {
				if !slices.Contains(FactNames(), cd.Fact) {
					t.Fatalf("accepted unknown fact %q", cd.Fact)
				}
			}
		}
		cs, _, err := DecodeCases(data)
		if err != nil {
			t.Fatal(err)
		}
		if cs[0].Validate(cfg, "") != nil {
			return
		}
		NewAssessor(cfg, &textModel{}).Assess(context.Background(), &cs[0])
	})
}

// TestFixedBaseline: every case is measured from the same baseline
// input, so f_baseline is one number and attributions compare between
// cases (it ranged from 0.207 to 0.273 over eight cases when the values
// row was ordered by which features were active).
func TestFixedBaseline(t *testing.T) {
	var base string
	var fb float64
	for i, name := range []string{"structuring.json", "salary.json", "eight.json"} {
		c := loadCase(t, name)
		prompts, err := DefaultConfig().Prompts(c)
		if err != nil {
			t.Fatal(err)
		}
		r := assess(t, c, &textModel{})
		if i == 0 {
			base, fb = prompts[0], r.Explanation.FBaseline
			continue
		}
		if prompts[0] != base || r.Explanation.FBaseline != fb {
			t.Errorf("%s: baseline prompt or f_baseline (%g) differs from structuring.json's (%g):\n%s\n%s", name, r.Explanation.FBaseline, fb, prompts[0], base)
		}
	}
}

// TestValueOrder: the values row's fixed order names every feature once.
func TestValueOrder(t *testing.T) {
	seen := map[int]bool{}
	for _, i := range valueOrder {
		if i < 0 || i >= len(features) || seen[i] {
			t.Fatalf("valueOrder %v: %d out of range or repeated", valueOrder, i)
		}
		seen[i] = true
	}
	if len(seen) != len(features) {
		t.Errorf("valueOrder names %d of %d features", len(seen), len(features))
	}
}

// TestLoadConfigAndExpiry: a configuration file is read and checked,
// with its path in the error; reference data expires the day after its
// review date (2026-02-28 for both built-in tables).
func TestLoadConfigAndExpiry(t *testing.T) {
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, DefaultYAML(), 0o644)
	os.WriteFile(bad, []byte("windows: {}\n"), 0o644)
	if _, err := LoadConfig(good); err != nil {
		t.Error(err)
	}
	if _, err := LoadConfig(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("a bad file: %v", err)
	}
	if _, err := LoadConfig(filepath.Join(dir, "none.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a missing file: %v", err)
	}
	cfg := DefaultConfig()
	if e := cfg.Expired("2026-02-28"); len(e) != 0 {
		t.Errorf("expired on the review day: %v", e)
	}
	e := cfg.Expired("2026-03-01")
	if len(e) != 2 || !strings.Contains(strings.Join(e, "\n"), cfg.FX.Version) || !strings.Contains(strings.Join(e, "\n"), cfg.HighRiskCountries.Version) {
		t.Errorf("the day after the review: %v", e)
	}
}

// TestDecodeCasesErrors: each way a body can be wrong names the field
// (or "body") it is wrong in; a list holds 1 to MaxCases cases.
func TestDecodeCasesErrors(t *testing.T) {
	list := func(n int) string {
		return `{"cases": [` + strings.TrimSuffix(strings.Repeat(`{"case_id": "x"},`, n), ",") + `]}`
	}
	for _, tc := range []struct {
		name, body, field string
		n                 int
	}{
		{"one case", `{"case_id": "x"}`, "", 1},
		{"a list of one", list(1), "", 1},
		{"the largest list", list(MaxCases), "", MaxCases},
		{"one too many", list(MaxCases + 1), "cases", 0},
		{"an empty list", `{"cases": []}`, "cases", 0},
		{"a number for a string", `{"cases": [{"case_id": "x"}, {"case_id": 5}]}`, "cases[1].case_id", 0},
		{"an object for a string", `{"case_id": "x", "transactions": [{"txn_id": "a"}, {"txn_id": {}}]}`, "transactions[1].txn_id", 0},
		{"a string for an object", `{"case_id": "x", "customer": "C-1"}`, "customer", 0},
		{"not an object", `[1, 2]`, "body", 0},
		{"malformed", `{"case_id": "x"`, "body", 0},
		{"trailing data", `{"case_id": "x"} {}`, "body", 0},
		{"trailing data in a list", list(1) + ` []`, "body", 0},
		{"a timestamp in words", `{"case_id": "x", "as_of": "yesterday"}`, "body", 0},
		{"an unknown field", `{"case_id": "x", "priority": 1}`, "priority", 0},
		{"an unknown field beside a list", `{"cases": [{"case_id": "x"}], "priority": 1}`, "priority", 0},
	} {
		cs, _, err := DecodeCases([]byte(tc.body))
		var fe *FieldError
		switch {
		case tc.field == "" && (err != nil || len(cs) != tc.n):
			t.Errorf("%s: %d cases, %v; want %d", tc.name, len(cs), err, tc.n)
		case tc.field != "" && (!errors.As(err, &fe) || fe.Field != tc.field):
			t.Errorf("%s: %v, want an error on %s", tc.name, err, tc.field)
		}
	}
}

// failingModel is a scorer whose model is down.
type failingModel struct{}

func (failingModel) Score(context.Context, []string, string, string) (Scores, error) {
	return Scores{}, errors.New("engine stopped")
}

// TestScorerErrorAndEmptyWindow: a scorer's failure is the assessment's
// (no score is made up), and a case with nothing in its window scores
// with zero shares rather than dividing by zero.
func TestScorerErrorAndEmptyWindow(t *testing.T) {
	c := handCase(t, []tx{{id: "OLD", at: "2025-09-01T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"}}, nil)
	if _, err := NewAssessor(DefaultConfig(), failingModel{}).Assess(context.Background(), c); err == nil || !strings.Contains(err.Error(), "engine stopped") {
		t.Errorf("a failing scorer: %v", err)
	}
	feats, _ := computeFeatures(c, DefaultConfig())
	for _, f := range feats {
		if f.def.unit == percent && !f.value.IsZero() {
			t.Errorf("%s = %s on an empty window", f.def.name, f.value)
		}
	}
	r := assess(t, c, &textModel{})
	if len(r.Rules)+len(r.RegulatoryReports) != 0 {
		t.Errorf("an empty window fired %v %v", r.Rules, r.RegulatoryReports)
	}
}

// TestPermutationStdErr: the permutation estimate's standard error is the
// sample standard deviation of a player's marginal contributions over
// the permutations, over the square root of their number; with one
// permutation there is none. Two players, v({})=0, v({0})=1, v({1})=2,
// v({0,1})=5: player 0 adds 1 first and 3 second; player 1 adds 2 and 4.
func TestPermutationStdErr(t *testing.T) {
	v := map[uint64]float64{0: 0, 1: 1, 2: 2, 3: 5}
	phi, se := permutationShapley(2, [][]int{{0, 1}, {1, 0}, {0, 1}}, v)
	// player 0: 1, 3, 1: mean 5/3, sample variance ((2/3)^2*2 + (4/3)^2)/2 = 4/3
	// player 1: 4, 2, 4: mean 10/3, sample variance 4/3 likewise
	wantSE := math.Sqrt(4.0 / 3 / 3)
	for i, want := range []float64{5.0 / 3, 10.0 / 3} {
		if math.Abs(phi[i]-want) > 1e-12 || math.Abs(se[i]-wantSE) > 1e-12 {
			t.Errorf("player %d: phi %v stderr %v, want %v and %v", i, phi[i], se[i], want, wantSE)
		}
	}
	if _, se := permutationShapley(2, [][]int{{1, 0}}, v); se[0] != 0 || se[1] != 0 {
		t.Errorf("one permutation: stderr %v", se)
	}
}
