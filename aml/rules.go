package aml

import (
	"fmt"
	"slices"

	"github.com/shopspring/decimal"
)

// RuleSet is a versioned list of rules.
type RuleSet struct {
	Version string `yaml:"version" json:"version"`
	Rules   []Rule `yaml:"rules" json:"rules"`
}

// Rule is a business rule over the facts of a case. It fires when all of
// All hold and, if Any is not empty, at least one of Any.
type Rule struct {
	ID string `yaml:"id" json:"id"`
	// Kind is "suspicion" (the default: its severity is a floor under
	// the risk level) or "report" (a statutory report is due; it says
	// nothing about suspicion and does not change the level).
	Kind          string   `yaml:"kind,omitempty" json:"kind,omitempty"`
	Jurisdictions []string `yaml:"jurisdictions,omitempty" json:"jurisdictions,omitempty"` // empty: all
	Description   Label    `yaml:"description" json:"description"`
	Severity      Level    `yaml:"severity,omitempty" json:"severity,omitempty"`
	LegalBasis    string   `yaml:"legal_basis" json:"legal_basis"`
	All           []Cond   `yaml:"all,omitempty" json:"all,omitempty"`
	Any           []Cond   `yaml:"any,omitempty" json:"any,omitempty"`
}

// Cond compares a fact with a decimal value.
type Cond struct {
	Fact  string          `yaml:"fact" json:"fact"`
	Op    string          `yaml:"op" json:"op"` // >=, >, <=, <, ==, !=
	Value decimal.Decimal `yaml:"value" json:"value"`
}

// Rule kinds.
const (
	KindSuspicion = "suspicion"
	KindReport    = "report"
)

// FactNames lists every fact rules may name: the model features and the
// rule-only facts.
func FactNames() []string {
	return append(FeatureNames(), "small_inbound_count", "cash_split_days", "txn_count", "individual", "cash_cny_daily_max",
		"cash_foreign_daily_max_usd", "cash_usd_daily_max", "transfer_cny_daily_max", "transfer_foreign_daily_max_usd",
		"domestic_transfer_cny_daily_max", "domestic_transfer_foreign_daily_max_usd",
		"cross_border_cny_daily_max", "cross_border_foreign_daily_max_usd")
}

func (rs *RuleSet) check(c *Config) []error {
	var errs []error
	facts := FactNames()
	seen := map[string]bool{}
	for i := range rs.Rules {
		r := &rs.Rules[i]
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("rules.rules[%d] (%s): %s", i, r.ID, fmt.Sprintf(format, args...)))
		}
		if r.ID == "" || seen[r.ID] {
			bad("needs a unique id")
		}
		seen[r.ID] = true
		if r.Kind == "" {
			r.Kind = KindSuspicion
		}
		switch r.Kind {
		case KindSuspicion:
			if r.Severity.rank() < 0 {
				bad("severity must be low, medium, high or critical")
			}
		case KindReport:
			if r.Severity != "" {
				bad("a report rule has no severity")
			}
		default:
			bad("kind must be %q or %q", KindSuspicion, KindReport)
		}
		for _, j := range r.Jurisdictions {
			if _, ok := c.Jurisdictions[j]; !ok {
				bad("unknown jurisdiction %q", j)
			}
		}
		if r.Description.ZH == "" || r.Description.EN == "" || r.LegalBasis == "" {
			bad("needs zh and en descriptions and a legal basis")
		}
		for _, text := range []string{r.Description.ZH, r.Description.EN} {
			if w := tippingOff(text); w != "" {
				bad("description mentions %q: reports must never reveal a suspicion report", w)
			}
		}
		if len(r.All)+len(r.Any) == 0 {
			bad("needs conditions (all, any)")
		}
		for _, cd := range append(slices.Clone(r.All), r.Any...) {
			if !slices.Contains(facts, cd.Fact) {
				bad("unknown fact %q", cd.Fact)
			}
			if !slices.Contains([]string{">=", ">", "<=", "<", "==", "!="}, cd.Op) {
				bad("unknown operator %q", cd.Op)
			}
		}
	}
	return errs
}

func (cd Cond) holds(v decimal.Decimal) bool {
	c := v.Cmp(cd.Value)
	switch cd.Op {
	case ">=":
		return c >= 0
	case ">":
		return c > 0
	case "<=":
		return c <= 0
	case "<":
		return c < 0
	case "==":
		return c == 0
	case "!=":
		return c != 0
	}
	return false
}

// evidence returns whether cd holds for f, and the transactions that make
// it hold: for a per-day fact, those of every day that satisfies it.
func (cd Cond) evidence(f *Fact) (bool, []string) {
	if f.Groups == nil {
		return cd.holds(f.Value), f.Evidence
	}
	ok := false
	var ev []string
	for _, g := range f.Groups {
		if cd.holds(g.Value) {
			ok = true
			ev = append(ev, g.Evidence...)
		}
	}
	if !ok && cd.holds(decimal.Zero) && len(f.Groups) == 0 {
		ok = true // "at most" conditions hold on no activity
	}
	return ok, ev
}

// Triggered is a rule that fired, with its evidence.
type Triggered struct {
	ID          string   `json:"id"`
	Kind        string   `json:"kind"`
	Description Label    `json:"description"`
	Severity    Level    `json:"severity,omitempty"`
	LegalBasis  string   `json:"legal_basis"`
	Evidence    []string `json:"evidence"` // transaction ids, in time order
}

// evaluate runs the rules that apply in jurisdiction over facts.
func (rs *RuleSet) evaluate(jurisdiction string, facts map[string]*Fact, order map[string]int) []Triggered {
	var out []Triggered
	for _, r := range rs.Rules {
		if len(r.Jurisdictions) > 0 && !slices.Contains(r.Jurisdictions, jurisdiction) {
			continue
		}
		fired := true
		ev := map[string]bool{}
		for _, cd := range r.All {
			ok, e := cd.evidence(facts[cd.Fact])
			if !ok {
				fired = false
				break
			}
			for _, id := range e {
				ev[id] = true
			}
		}
		if fired && len(r.Any) > 0 {
			anyOK := false
			for _, cd := range r.Any {
				if ok, e := cd.evidence(facts[cd.Fact]); ok {
					anyOK = true
					for _, id := range e {
						ev[id] = true
					}
				}
			}
			fired = anyOK
		}
		if !fired {
			continue
		}
		ids := make([]string, 0, len(ev))
		for id := range ev {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b string) int { return order[a] - order[b] })
		out = append(out, Triggered{ID: r.ID, Kind: r.Kind, Description: r.Description, Severity: r.Severity,
			LegalBasis: r.LegalBasis, Evidence: ids})
	}
	return out
}
