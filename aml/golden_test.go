package aml

import (
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// golden is one case of testdata/golden: a case and, written by hand
// from the rules' sources (default.yaml), what it must produce.
type golden struct {
	Why  string          `json:"why"`
	Case json.RawMessage `json:"case"`
	Want struct {
		// ErrorField: the case is refused, naming this field.
		ErrorField string `json:"error_field"`
		// RegulatoryReports: each report due, with the due date of each
		// day it covers.
		RegulatoryReports map[string][]string `json:"regulatory_reports"`
		// Rules: each suspicion rule that fires, with its severity.
		Rules      map[string]Level `json:"rules"`
		RiskLevel  Level            `json:"risk_level"`
		LevelSetBy string           `json:"level_set_by"`
	} `json:"want"`
}

// TestGolden runs the golden suite: at least 20 cases across CN and US,
// with near misses on each side of the thresholds. The model scores
// every prompt 0.05 (low), so the level is the rules' floor.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/golden/*.json")
	if err != nil || len(files) < 20 {
		t.Fatalf("%d golden cases (%v), want at least 20", len(files), err)
	}
	jurisdictions := map[string]int{}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var g golden
			if err := json.Unmarshal(data, &g); err != nil {
				t.Fatal(err)
			}
			cs, _, err := DecodeCases(g.Case)
			if err != nil {
				t.Fatal(err)
			}
			c := &cs[0]
			jurisdictions[c.Jurisdiction]++
			err = c.Validate(DefaultConfig(), "")
			var fe *FieldError
			switch {
			case g.Want.ErrorField != "" && (!errors.As(err, &fe) || fe.Field != g.Want.ErrorField):
				t.Fatalf("%s\ngot %v, want an error on %s", g.Why, err, g.Want.ErrorField)
			case g.Want.ErrorField != "":
				return
			case err != nil:
				t.Fatalf("%s\n%v", g.Why, err)
			}
			r := assess(t, c, fixedModel(0.05))
			reports := map[string][]string{}
			for _, rep := range r.RegulatoryReports {
				reports[rep.ID] = []string{}
				for _, o := range rep.Occurrences {
					reports[rep.ID] = append(reports[rep.ID], o.DueBy)
				}
			}
			rules := map[string]Level{}
			for _, ru := range r.Rules {
				rules[ru.ID] = ru.Severity
			}
			want := g.Want
			if want.RegulatoryReports == nil {
				want.RegulatoryReports = map[string][]string{}
			}
			if want.Rules == nil {
				want.Rules = map[string]Level{}
			}
			if !reflect.DeepEqual(reports, want.RegulatoryReports) || !maps.Equal(rules, want.Rules) ||
				r.RiskLevel != want.RiskLevel || r.LevelSetBy != want.LevelSetBy {
				t.Errorf("%s\ngot reports %v, rules %v, level %s set by %s\nwant reports %v, rules %v, level %s set by %s\n%s",
					g.Why, reports, rules, r.RiskLevel, r.LevelSetBy, want.RegulatoryReports, want.Rules, want.RiskLevel, want.LevelSetBy, r.Report["en"])
			}
			for lang, text := range r.Report {
				if w := tippingOff(text); w != "" {
					t.Errorf("%s report mentions %q", lang, w)
				}
			}
		})
	}
	if jurisdictions["CN"] == 0 || jurisdictions["US"] == 0 {
		t.Errorf("golden cases by jurisdiction: %v, want CN and US", jurisdictions)
	}
}
