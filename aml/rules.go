package aml

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

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
	// Grades raise a fired suspicion rule's severity as its facts go
	// further past the threshold: the highest grade whose conditions all
	// hold sets it.
	Grades []Grade `yaml:"grades,omitempty" json:"grades,omitempty"`
}

// Grade is a higher severity of a rule and the conditions that earn it.
type Grade struct {
	Severity Level  `yaml:"severity" json:"severity"`
	All      []Cond `yaml:"all" json:"all"`
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
	return append(FeatureNames(), "small_inbound_count", "cash_split_days", "txn_count", "pass_through_usd", "third_party_depositors",
		"customer_high_risk_country", "no_income_occupation", "inflow_usd", "new_account_inflow_usd", "individual", "cash_cny_daily_max",
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
		if len(r.Grades) > 0 && r.Kind != KindSuspicion {
			bad("only a suspicion rule has grades")
		}
		conds := append(slices.Clone(r.All), r.Any...)
		for g, gr := range r.Grades {
			if gr.Severity.rank() <= r.Severity.rank() {
				bad("grades[%d]: severity must be above the rule's %q", g, r.Severity)
			}
			if len(gr.All) == 0 {
				bad("grades[%d]: needs conditions (all)", g)
			}
			conds = append(conds, gr.All...)
		}
		for _, cd := range conds {
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
// it hold: for a per-day fact, those of every day that satisfies it,
// and those days.
func (cd Cond) evidence(f *Fact) (bool, []string, []Group) {
	if f.Missing {
		return false, nil, nil
	}
	if f.Groups == nil {
		return cd.holds(f.Value), f.Evidence, nil
	}
	ok := false
	var ev []string
	var days []Group
	for _, g := range f.Groups {
		if cd.holds(g.Value) {
			ok = true
			ev = append(ev, g.Evidence...)
			days = append(days, g)
		}
	}
	if !ok && cd.holds(decimal.Zero) && len(f.Groups) == 0 {
		ok = true // "at most" conditions hold on no activity
	}
	return ok, ev, days
}

// Triggered is a rule that fired, with its evidence.
type Triggered struct {
	ID          string   `json:"id"`
	Kind        string   `json:"kind"`
	Description Label    `json:"description"`
	Severity    Level    `json:"severity,omitempty"`
	LegalBasis  string   `json:"legal_basis"`
	Evidence    []string `json:"evidence"` // transaction ids, in time order
	// Occurrences are the days a per-day fact met the rule (statutory
	// reports: one report each), with the day's total and when the
	// report is due.
	Occurrences []Occurrence `json:"occurrences,omitempty"`
}

// Occurrence is one day on which a per-day rule was met.
type Occurrence struct {
	Date      string   `json:"date"`      // in the jurisdiction's time zone
	Direction string   `json:"direction"` // "in" or "out"
	Total     string   `json:"total"`     // the day's aggregate, in Unit
	Unit      string   `json:"unit"`      // CNY, USD (a foreign currency's USD equivalent)
	Evidence  []string `json:"evidence"`
	// DueBy is the last day to file, from the jurisdiction's deadline;
	// empty when its holiday calendar does not cover the days counted.
	DueBy string `json:"due_by,omitempty"`
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
		var days []Occurrence
		take := func(cd Cond, e []string, g []Group) {
			for _, id := range e {
				ev[id] = true
			}
			for _, d := range g {
				date, dir, _ := strings.Cut(d.Key, " ")
				days = append(days, Occurrence{Date: date, Direction: dir, Total: d.Value.StringFixed(2), Unit: facts[cd.Fact].Unit,
					Evidence: slices.Clone(d.Evidence)})
			}
		}
		for _, cd := range r.All {
			ok, e, g := cd.evidence(facts[cd.Fact])
			if !ok {
				fired = false
				break
			}
			take(cd, e, g)
		}
		if fired && len(r.Any) > 0 {
			anyOK := false
			for _, cd := range r.Any {
				if ok, e, g := cd.evidence(facts[cd.Fact]); ok {
					anyOK = true
					take(cd, e, g)
				}
			}
			fired = anyOK
		}
		if !fired {
			continue
		}
		severity := r.Severity
		for _, gr := range r.Grades {
			all := true
			for _, cd := range gr.All {
				if ok, _, _ := cd.evidence(facts[cd.Fact]); !ok {
					all = false
				}
			}
			if all {
				severity = maxLevel(severity, gr.Severity)
			}
		}
		slices.SortFunc(days, func(a, b Occurrence) int {
			return cmp.Or(cmp.Compare(a.Date, b.Date), cmp.Compare(a.Direction, b.Direction))
		})
		ids := make([]string, 0, len(ev))
		for id := range ev {
			ids = append(ids, id)
		}
		slices.SortFunc(ids, func(a, b string) int { return order[a] - order[b] })
		out = append(out, Triggered{ID: r.ID, Kind: r.Kind, Description: r.Description, Severity: severity,
			LegalBasis: r.LegalBasis, Evidence: ids, Occurrences: days})
	}
	return out
}
