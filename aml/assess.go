// Package aml scores anti-money-laundering cases: deterministic features
// in exact decimal arithmetic, a versioned rule set (statutory reports
// apart from suspicion rules), a model score P(yes)/(P(yes)+P(no)) from a
// language model's next-token distribution, Shapley attributions over
// the features (exact, or sampled permutations), fusion of model and
// rules into a risk level, and a bilingual report. It has no cgo and no
// HTTP: the server gives it a Scorer over the engine.
package aml

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/finserve/finserve/pii"
)

// Scorer scores prompts with the model: for each, P(yes) / (P(yes) +
// P(no)) of the next token after it. The prompts of one call share
// their instruction prefix and differ near their ends, so an
// implementation should evaluate them together.
type Scorer interface {
	Score(ctx context.Context, prompts []string, yes, no string) (Scores, error)
}

// Scores is what a Scorer returns.
type Scores struct {
	P []float64 // in prompt order
	// Tokens the scoring computed, and what scoring each prompt on its
	// own would have computed (for the explanation).
	EvaluatedTokens, PromptTokens int
}

// Assessor assesses cases with one configuration and scorer.
type Assessor struct {
	cfg    *Config
	scorer Scorer
}

// NewAssessor returns an Assessor.
func NewAssessor(cfg *Config, s Scorer) *Assessor { return &Assessor{cfg: cfg, scorer: s} }

// Config returns the configuration in use.
func (a *Assessor) Config() *Config { return a.cfg }

// Attribution is one feature's value and its Shapley contribution.
type Attribution struct {
	Name      string  `json:"name"`
	Label     Label   `json:"label"`
	Value     string  `json:"value"`    // as the prompt reads it (English)
	Baseline  string  `json:"baseline"` // what it reads when absent
	ValueText Label   `json:"value_text"`
	Active    bool    `json:"active"` // reads differently from its baseline: a player
	Phi       float64 `json:"phi"`
	Share     float64 `json:"share"` // |phi| over the sum of |phi|
	StdErr    float64 `json:"stderr,omitempty"`
}

// Explanation describes how the attributions were computed.
type Explanation struct {
	Method     string  `json:"method"`
	Seed       uint64  `json:"seed"`
	Samples    int     `json:"samples,omitempty"` // permutations
	Players    int     `json:"players"`           // active features
	Coalitions int     `json:"coalitions"`        // prompts scored
	FX         float64 `json:"f_x"`               // score with every feature
	FBaseline  float64 `json:"f_baseline"`        // score with none
	// EvaluatedTokens is what the model computed; NaiveTokens what scoring
	// every coalition's prompt on its own would have.
	EvaluatedTokens int `json:"evaluated_tokens"`
	NaiveTokens     int `json:"naive_tokens"`
}

// Versions name everything a decision depended on.
type Versions struct {
	Config            string `json:"config"`
	Prompt            string `json:"prompt"`
	Rules             string `json:"rules"`
	RulesSHA256       string `json:"rules_sha256"`
	FX                string `json:"fx"`
	HighRiskCountries string `json:"high_risk_countries"`
	Model             string `json:"model,omitempty"`
	ModelSHA256       string `json:"model_sha256,omitempty"`
}

// What set a decision's risk level.
const (
	SetByModel = "model"
	SetByRules = "rules"
	SetByBoth  = "model and rules"
)

// Result is the assessment of one case.
type Result struct {
	CaseID              string        `json:"case_id"`
	RiskScore           float64       `json:"risk_score"`
	RiskLevel           Level         `json:"risk_level"`
	ModelLevel          Level         `json:"model_level"`
	RuleFloor           Level         `json:"rule_floor"`
	HumanReviewRequired bool          `json:"human_review_required"`
	Features            []Attribution `json:"features"`
	Explanation         Explanation   `json:"explanation"`
	// LevelSetBy says what set RiskLevel: "model", "rules" (the rule
	// floor is above the model's level) or "model and rules" (equal).
	LevelSetBy string `json:"level_set_by"`
	// FloorRules are the rules whose severity is the floor, when it is
	// above low.
	FloorRules        []string          `json:"floor_rules,omitempty"`
	Rules             []Triggered       `json:"rules"`
	RegulatoryReports []Triggered       `json:"regulatory_reports"`
	Report            map[string]string `json:"report"`
	Versions          Versions          `json:"versions"`
}

// Assess scores one validated case.
func (a *Assessor) Assess(ctx context.Context, c *Case) (*Result, error) {
	cfg := a.cfg
	feats, facts := computeFeatures(c, cfg)
	order := map[string]int{}
	for i, t := range sortedTxns(c) {
		order[t.TxnID] = i
	}
	res := &Result{
		CaseID:            pii.Mask(c.CaseID),
		Rules:             []Triggered{},
		RegulatoryReports: []Triggered{},
		Versions: Versions{Config: cfg.Version, Prompt: cfg.Prompt.Version, Rules: cfg.Rules.Version, RulesSHA256: cfg.rulesHash,
			FX: cfg.FX.Version, HighRiskCountries: cfg.HighRiskCountries.Version},
	}
	for _, t := range cfg.Rules.evaluate(c.Jurisdiction, facts, order) {
		// Identifiers leave masked: a transaction id may embed a card
		// or phone number, and the result is logged, audited and read.
		for i, id := range t.Evidence {
			t.Evidence[i] = pii.Mask(id)
		}
		if t.Kind == KindReport {
			j := cfg.Jurisdictions[c.Jurisdiction]
			for i := range t.Occurrences {
				o := &t.Occurrences[i]
				o.DueBy = j.dueBy(o.Date)
				for k, id := range o.Evidence {
					o.Evidence[k] = pii.Mask(id)
				}
			}
			res.RegulatoryReports = append(res.RegulatoryReports, t)
		} else {
			res.Rules = append(res.Rules, t)
		}
	}

	pl, err := cfg.plan(c, feats)
	if err != nil {
		return nil, err
	}
	players, masks, perms, prompts := pl.players, pl.masks, pl.perms, pl.prompts
	k := len(players)
	ex := &res.Explanation
	ex.Players, ex.Method, ex.Seed, ex.Samples = k, pl.method, pl.seed, pl.samples
	sc, err := a.scorer.Score(ctx, prompts, cfg.Prompt.Yes, cfg.Prompt.No)
	if err != nil {
		return nil, err
	}
	v := make(map[uint64]float64, len(masks))
	for i, S := range masks {
		v[S] = sc.P[i]
	}
	full := uint64(1)<<k - 1
	ex.Coalitions, ex.FX, ex.FBaseline = len(masks), v[full], v[0]
	ex.EvaluatedTokens, ex.NaiveTokens = sc.EvaluatedTokens, sc.PromptTokens

	var phi, stderr []float64
	if ex.Method == MethodExact {
		dense := make([]float64, 1<<k)
		for S, p := range v {
			dense[S] = p
		}
		phi = exactShapley(k, dense)
	} else {
		phi, stderr = permutationShapley(k, perms, v)
	}
	sumAbs := 0.0
	for _, p := range phi {
		sumAbs += math.Abs(p)
	}
	for i, f := range feats {
		at := Attribution{Name: f.def.name, Label: f.def.label, Value: f.text("en"), Baseline: f.baselineText("en"),
			ValueText: Label{ZH: f.text("zh"), EN: f.text("en")}, Active: f.active()}
		if p := slices.Index(players, i); p >= 0 {
			at.Phi = phi[p]
			if sumAbs > 0 {
				at.Share = math.Abs(phi[p]) / sumAbs
			}
			if stderr != nil {
				at.StdErr = stderr[p]
			}
		}
		res.Features = append(res.Features, at)
	}

	// Fusion: rules raise the level, never lower it.
	res.RiskScore = ex.FX
	res.ModelLevel = cfg.modelLevel(ex.FX)
	res.RuleFloor = LevelLow
	for _, t := range res.Rules {
		res.RuleFloor = maxLevel(res.RuleFloor, t.Severity)
	}
	res.RiskLevel = maxLevel(res.ModelLevel, res.RuleFloor)
	if res.RuleFloor != LevelLow {
		for _, t := range res.Rules {
			if t.Severity == res.RuleFloor {
				res.FloorRules = append(res.FloorRules, t.ID)
			}
		}
	}
	switch c := res.RuleFloor.rank() - res.ModelLevel.rank(); {
	case c > 0:
		res.LevelSetBy = SetByRules
	case c == 0 && res.FloorRules != nil:
		res.LevelSetBy = SetByBoth
	default:
		res.LevelSetBy = SetByModel
	}
	res.HumanReviewRequired = res.RiskLevel.rank() >= cfg.HumanReview.AtLevel.rank()

	langs := c.Options.Languages
	if len(langs) == 0 {
		langs = []string{"zh", "en"}
	}
	res.Report = map[string]string{}
	cf := factsOf(c, cfg)
	for _, l := range langs {
		res.Report[l] = writeReport(l, res, cf)
	}
	return res, nil
}

// plan is what an assessment scores: the players (active features), the
// coalitions as bit masks over them, and their prompts.
type plan struct {
	method  string
	seed    uint64
	samples int
	players []int // indices into the features
	masks   []uint64
	perms   [][]int // sampled orderings (permutation method)
	prompts []string
}

func (cfg *Config) plan(c *Case, feats []featureValue) (*plan, error) {
	p := &plan{method: c.Options.Explain.Method}
	for i, f := range feats {
		if f.active() {
			p.players = append(p.players, i)
		}
	}
	k := len(p.players)
	if p.method == "" {
		p.method = MethodExact
		if k > MaxExactFeatures {
			p.method = MethodPermutation
		}
	}
	if p.method == MethodExact && k > MaxExactFeatures {
		return nil, &FieldError{Field: "options.explain.method", Msg: fmt.Sprintf("exact Shapley values need at most %d active features; this case has %d: use %q", MaxExactFeatures, k, MethodPermutation)}
	}
	if s := c.Options.Explain.Seed; s != nil {
		p.seed = *s
	}
	if p.method == MethodExact {
		for S := uint64(0); S < 1<<k; S++ {
			p.masks = append(p.masks, S)
		}
	} else {
		p.samples = cmp.Or(c.Options.Explain.Samples, DefaultSamples)
		p.perms, p.masks = permutationPlan(k, p.samples, p.seed)
	}
	p.prompts = make([]string, len(p.masks))
	for i, S := range p.masks {
		p.prompts[i] = cfg.render(feats, p.players, S)
	}
	return p, nil
}

// Prompts returns the prompts an assessment of the validated case c
// scores, one per coalition, in the order of their bit masks over the
// active features: what the model reads, for review.
func (cfg *Config) Prompts(c *Case) ([]string, error) {
	feats, _ := computeFeatures(c, cfg)
	p, err := cfg.plan(c, feats)
	if err != nil {
		return nil, err
	}
	return p.prompts, nil
}

// render builds the prompt of coalition S: players in S read their
// values, every other feature its baseline: the lines in the features'
// order, the values in valueOrder. The baseline prompt (S = 0) is
// therefore the same for every case, so f_baseline and the attributions measured from it compare
// across cases; the coalitions still share everything before the first
// player's value in valueOrder.
func (cfg *Config) render(feats []featureValue, players []int, S uint64) string {
	t := &cfg.Prompt
	var b strings.Builder
	b.WriteString(t.Instruction)
	for i, f := range feats {
		b.WriteString(strings.NewReplacer("{key}", featureKey(i), "{label}", f.def.label.EN).Replace(t.Line))
	}
	b.WriteString(t.Values)
	for _, i := range valueOrder {
		f := feats[i]
		v := f.baselineText("en")
		if p := slices.Index(players, i); p >= 0 && S&(1<<p) != 0 {
			v = f.text("en")
		}
		b.WriteString(strings.NewReplacer("{key}", featureKey(i), "{value}", v).Replace(t.Value))
	}
	b.WriteString(t.Suffix)
	return b.String()
}

// valueOrder is the fixed order of the values row (each value keyed by
// its letter, so any order reads the same): features seldom active
// first, those nearly always active (counterparty counts, turnover
// against income) last, so that the coalitions' prompts share as much of
// the row as a fixed order allows.
var valueOrder = []int{0, 4, 6, 8, 9, 1, 5, 10, 2, 3, 7}

// featureKey names feature i in the prompt: A, B, C, ... (short: the
// values row repeats it in every coalition's prompt).
func featureKey(i int) string { return string(rune('A' + i)) }

// Hash is the SHA-256 of the case's canonical JSON (accounts by id,
// transactions in time order, keys in struct order): neither the key
// order of the request nor the order of its list items changes it.
func (c *Case) Hash() string {
	cc := *c
	cc.Accounts = slices.Clone(c.Accounts)
	slices.SortFunc(cc.Accounts, func(a, b Account) int { return cmp.Compare(a.AccountID, b.AccountID) })
	cc.Transactions = make([]Transaction, 0, len(c.Transactions))
	for _, t := range sortedTxns(c) {
		cc.Transactions = append(cc.Transactions, *t)
	}
	data, err := json.Marshal(cc)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func sortedTxns(c *Case) []*Transaction {
	txns := make([]*Transaction, len(c.Transactions))
	for i := range c.Transactions {
		txns[i] = &c.Transactions[i]
	}
	slices.SortFunc(txns, func(a, b *Transaction) int {
		return cmp.Or(a.Timestamp.Compare(b.Timestamp), cmp.Compare(a.TxnID, b.TxnID))
	})
	return txns
}
