package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/audit"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/pii"
)

// AMLResponse answers POST /v1/aml/score: one result, or a list when the
// request sent {"cases": [...]}.
type AMLResponse struct {
	ID       string    `json:"id"`
	Object   string    `json:"object"` // "aml.decision" or "list"
	Created  int64     `json:"created"`
	Model    string    `json:"model"`
	Data     []AMLCase `json:"data,omitempty"`
	*AMLCase `json:",omitempty"`
}

// AMLCase is the decision on one case.
type AMLCase struct {
	DecisionID string `json:"decision_id"`
	*aml.Result
	ReceivedAt time.Time      `json:"received_at"`
	DecidedAt  time.Time      `json:"decided_at"`
	Audit      *audit.Receipt `json:"audit"` // null without an audit log
}

// amlRecord is what the audit log keeps of a decision: no raw personal
// data, the hash of the canonical request, and every version.
type amlRecord struct {
	Kind          string            `json:"kind"`
	DecisionID    string            `json:"decision_id"`
	CaseID        string            `json:"case_id"`
	RequestSHA256 string            `json:"request_sha256"`
	ReceivedAt    time.Time         `json:"received_at"`
	DecidedAt     time.Time         `json:"decided_at"`
	Tier          string            `json:"tier"`
	Customer      amlCustomer       `json:"customer"`
	Versions      aml.Versions      `json:"versions"`
	Score         float64           `json:"score"`
	RiskLevel     aml.Level         `json:"risk_level"`
	ModelLevel    aml.Level         `json:"model_level"`
	RuleFloor     aml.Level         `json:"rule_floor"`
	LevelSetBy    string            `json:"level_set_by"`
	FloorRules    []string          `json:"floor_rules,omitempty"`
	HumanReview   bool              `json:"human_review_required"`
	Explanation   aml.Explanation   `json:"explanation"`
	Attributions  []aml.Attribution `json:"attributions"`
	Rules         []aml.Triggered   `json:"rules"`
	Reports       []aml.Triggered   `json:"regulatory_reports"`
	Report        map[string]string `json:"report"`
}

// amlCustomer is what the audit record keeps of the customer: what the
// decision depended on (type, country) and a masked identifier to find
// it by. Personal fields (customer.pii) are personal whatever they hold:
// the record names which were present and keeps none of their content;
// the request hash binds the decision to them.
type amlCustomer struct {
	CustomerID string   `json:"customer_id"` // masked
	Type       string   `json:"type"`
	Country    string   `json:"country"`
	PIIFields  []string `json:"pii_fields,omitempty"` // names only
}

// amlScore serves POST /v1/aml/score.
func (s *Server) amlScore(c *fiber.Ctx) error {
	received := time.Now().UTC()
	b, release, err := s.acquire(c, "", true)
	if err != nil {
		return err
	}
	defer release()
	cases, list, err := aml.DecodeCases(c.Body())
	if err != nil {
		return amlError(err)
	}
	cfg := s.amlCfg.Load()
	for i := range cases {
		prefix := ""
		if list {
			prefix = fmt.Sprintf("cases[%d].", i)
		}
		if err := cases[i].Validate(cfg, prefix); err != nil {
			return amlError(err)
		}
	}
	respID := randomID("aml")
	if requestID(c) == "" {
		c.Locals(requestIDKey{}, respID) // access sends it as X-Request-Id
	}
	scorer, err := newEngineScorer(b, cfg, s.tier(c), s.tenant(c))
	if err != nil {
		s.log.Error("AML scoring unavailable", "err", err)
		return &APIError{Status: http.StatusInternalServerError, Type: "server_error", Code: "aml_model_unsuitable", Message: err.Error()}
	}
	scorer.id = requestID(c)
	versions, err := s.modelVersions(b)
	if err != nil {
		return err
	}

	ctx, cancel, gone, end := s.hold(c)
	if ctx == nil {
		return errDraining
	}
	defer end()

	assessor := aml.NewAssessor(cfg, scorer)
	out := make([]AMLCase, len(cases))
	errs := make([]error, len(cases))
	var wg sync.WaitGroup
	for i := range cases {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = s.safely("assessing an AML case", func() error {
				r, err := assessor.Assess(ctx, &cases[i])
				if err != nil {
					return err
				}
				r.Versions.Model, r.Versions.ModelSHA256 = versions.Model, versions.ModelSHA256
				out[i] = AMLCase{DecisionID: randomID("amldec"), Result: r, ReceivedAt: received, DecidedAt: time.Now().UTC()}
				return nil
			})
			if errs[i] != nil {
				cancel()
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		if gone.Load() {
			return nil // the client left: nobody to answer, nothing decided
		}
		if s.draining.Load() && errors.Is(err, context.Canceled) {
			return errDraining // cut at the end of the shutdown grace
		}
		return amlError(err)
	}
	// The record is on disk before the answer leaves.
	for i := range out {
		if s.audit == nil {
			break
		}
		rec := amlAuditRecord(&cases[i], &out[i], s.tier(c).String())
		receipt, err := s.audit.Append(context.WithoutCancel(ctx), rec)
		if err != nil {
			s.log.Error("audit log append failed; decision withheld", "err", err)
			return &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "audit_unavailable",
				Message: "the decision could not be written to the audit log, so it is not returned; retry later (GET /ready/aml says when the log accepts records again)", RetryAfter: 5}
		}
		out[i].Audit = &receipt
	}
	m := s.metrics
	for i := range out {
		d := &out[i]
		m.amlDecisions.WithLabelValues(string(d.RiskLevel)).Inc()
		for _, r := range append(slices.Clone(d.Rules), d.RegulatoryReports...) {
			m.amlRules.WithLabelValues(r.ID).Inc()
		}
		m.amlEvaluated.Add(float64(d.Explanation.EvaluatedTokens))
		m.tenantTokens.WithLabelValues(m.tenants.label(s.tenant(c)), "scored").Add(float64(d.Explanation.EvaluatedTokens))
		m.amlPromptTk.Add(float64(d.Explanation.NaiveTokens))
	}
	m.amlSeconds.WithLabelValues(s.tier(c).String()).Observe(time.Since(received).Seconds())
	for i := range out {
		s.log.Info("aml decision", "request_id", requestID(c), "decision_id", out[i].DecisionID, "case_id", pii.Mask(out[i].CaseID), "tier", s.tier(c).String(),
			"risk_level", out[i].RiskLevel, "score", out[i].RiskScore, "players", out[i].Explanation.Players,
			"coalitions", out[i].Explanation.Coalitions, "ms", time.Since(received).Milliseconds())
	}
	resp := AMLResponse{ID: respID, Created: received.Unix(), Model: b.id}
	if list {
		resp.Object, resp.Data = "list", out
	} else {
		resp.Object, resp.AMLCase = "aml.decision", &out[0]
	}
	return c.JSON(resp)
}

// amlError turns validation and scoring errors into API errors.
func amlError(err error) error {
	var fe *aml.FieldError
	if errors.As(err, &fe) {
		// A message may quote what the client sent: masked, as logs are.
		return badRequest(fe.Field, "%s", pii.Mask(fe.Error()))
	}
	var api *APIError
	if errors.As(err, &api) {
		return api
	}
	return fromEngine(err)
}

// amlAuditRecord builds the audit record of a decision, personal data
// masked.
func amlAuditRecord(c *aml.Case, d *AMLCase, tier string) amlRecord {
	cu := amlCustomer{CustomerID: pii.Mask(c.Customer.CustomerID), Type: c.Customer.Type, Country: c.Customer.Country}
	if p := c.Customer.PII; p != nil {
		for _, f := range []struct{ name, value string }{{"id_number", p.IDNumber}, {"mobile", p.Mobile}, {"name", p.Name}} {
			if f.value != "" {
				cu.PIIFields = append(cu.PIIFields, f.name)
			}
		}
	}
	report := map[string]string{}
	for l, text := range d.Report {
		report[l] = pii.Mask(text)
	}
	r := d.Result
	return amlRecord{Kind: "aml.decision", DecisionID: d.DecisionID, CaseID: pii.Mask(c.CaseID), RequestSHA256: c.Hash(),
		ReceivedAt: d.ReceivedAt, DecidedAt: d.DecidedAt, Tier: tier, Customer: cu, Versions: r.Versions,
		Score: r.RiskScore, RiskLevel: r.RiskLevel, ModelLevel: r.ModelLevel, RuleFloor: r.RuleFloor, LevelSetBy: r.LevelSetBy, FloorRules: r.FloorRules, HumanReview: r.HumanReviewRequired,
		Explanation: r.Explanation, Attributions: r.Features, Rules: r.Rules, Reports: r.RegulatoryReports, Report: report}
}

// modelVersions names the served model file and its SHA-256, computed
// once per loaded model (in the background from SetEngine when an audit
// log is configured).
func (s *Server) modelVersions(b *backend) (aml.Versions, error) {
	sum, err := b.sha256()
	if err != nil {
		s.log.Error("hashing the model file", "err", err)
		return aml.Versions{}, &APIError{Status: http.StatusInternalServerError, Type: "server_error", Code: "model_hash_failed",
			Message: "the model file could not be hashed for the audit trail"}
	}
	return aml.Versions{Model: b.id, ModelSHA256: sum}, nil
}

func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// engineScorer scores AML prompts with the engine: every coalition's
// prompt in one Score call, evaluated over their prefix tree.
type engineScorer struct {
	b       *backend
	yes, no engine.Token
	tier    engine.Tier
	tenant  string
	id      string // the request's, for GET /slots
}

func newEngineScorer(b *backend, cfg *aml.Config, tier engine.Tier, tenant string) (*engineScorer, error) {
	s := &engineScorer{b: b, tier: tier, tenant: tenant}
	var err error
	if s.yes, err = labelToken(b.model, cfg.Prompt.Suffix, cfg.Prompt.Yes); err != nil {
		return nil, err
	}
	if s.no, err = labelToken(b.model, cfg.Prompt.Suffix, cfg.Prompt.No); err != nil {
		return nil, err
	}
	if s.yes == s.no {
		return nil, fmt.Errorf("aml: the labels %q and %q are the same token in this model", cfg.Prompt.Yes, cfg.Prompt.No)
	}
	return s, nil
}

// labelToken is the single token label adds after the prompt's suffix,
// as the model tokenizes them together.
func labelToken(m *engine.Model, suffix, label string) (engine.Token, error) {
	base, err := m.Tokenize(suffix, false, false)
	if err != nil {
		return 0, err
	}
	with, err := m.Tokenize(suffix+label, false, false)
	if err != nil {
		return 0, err
	}
	if len(with) != len(base)+1 || !slices.Equal(with[:len(base)], base) {
		return 0, fmt.Errorf("aml: the label %q is not a single token of this model's vocabulary after %q; choose label words (prompt.yes, prompt.no) that are", label, suffix)
	}
	return with[len(base)], nil
}

func (s *engineScorer) Score(ctx context.Context, prompts []string, _, _ string) (aml.Scores, error) {
	variants := make([][]engine.Token, len(prompts))
	total := 0
	for i, p := range prompts {
		toks, err := s.b.model.Tokenize(p, true, false)
		if err != nil {
			return aml.Scores{}, err
		}
		if limit := s.b.eng.PromptLimit(); len(toks) > limit {
			return aml.Scores{}, &APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "context_length_exceeded",
				Message: fmt.Sprintf("the AML prompt has %d tokens; this server's context holds at most %d", len(toks), limit)}
		}
		variants[i] = toks
		total += len(toks)
	}
	res, err := s.b.eng.Score(ctx, engine.ScoreRequest{Variants: variants, Targets: []engine.Token{s.yes, s.no},
		Tier: s.tier, Tenant: s.tenant, ID: s.id})
	if err != nil {
		return aml.Scores{}, err
	}
	out := aml.Scores{P: make([]float64, len(prompts)), EvaluatedTokens: res.EvaluatedTokens, PromptTokens: total}
	for i, v := range res.Variants {
		// P(yes)/(P(yes)+P(no)) = 1/(1+exp(log P(no) - log P(yes))).
		out.P[i] = 1 / (1 + math.Exp(float64(v.Targets[1])-float64(v.Targets[0])))
	}
	return out, nil
}

// randomID returns prefix-<24 random hex digits>: response, decision and
// request ids.
func randomID(prefix string) string { return prefix + "-" + randomHex() }

// randomHex is 24 random hex digits.
func randomHex() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
