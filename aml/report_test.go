package aml

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/shopspring/decimal"
)

func TestMoneyAndMaskRef(t *testing.T) {
	for in, want := range map[string]string{"0": "CNY 0.00", "999.5": "CNY 999.50", "1000": "CNY 1,000.00", "48000": "CNY 48,000.00",
		"1234567.891": "CNY 1,234,567.89", "-1500": "CNY -1,500.00", "100000": "CNY 100,000.00"} {
		if got := money("CNY", decimal.RequireFromString(in)); got != want {
			t.Errorf("money(%s) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"A": "A***", "A-1": "A***", "ABCD": "A***", "ABCDE": "AB***DE", "C-1001": "C-***01", "张三丰客户": "张三***客户"} {
		if got := maskRef(in); got != want {
			t.Errorf("maskRef(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReportSections: the narrative's branches that the golden cases
// do not reach: more evidence than it lists, more contributions than it
// lists, a report whose working days run past the calendar, a level
// set by the model above the rules' floor, and the facts' counts.
func TestReportSections(t *testing.T) {
	var txs []tx
	for i := range 12 { // 12 cash deposits by 12 people: smurfing evidence of 12
		txs = append(txs, tx{id: fmt.Sprintf("K%02d", i), at: fmt.Sprintf("2025-11-20T%02d:00:00Z", i), dir: "in", amount: "900", channel: "cash"})
	}
	txs = append(txs, tx{id: "W1", at: "2025-11-21T01:00:00Z", dir: "out", amount: "60000", channel: "atm"},
		tx{id: "W2", at: "2025-11-21T02:00:00Z", dir: "out", cpty: "y", country: "HK", amount: "250000"})
	c := handCase(t, txs, func(c *Case) {
		for i := range 12 {
			c.Transactions[i].From.DepositorID = fmt.Sprint("P", i)
		}
	})
	r := assess(t, c, &textModel{})
	en := r.Report["en"]
	for _, want := range []string{
		"14 transactions: 12 in, CNY 10,800.00; 2 out, CNY 310,000.00; of which cash in 12, CNY 10,800.00, and cash out CNY 60,000.00",
		"K09 2025-11-20 cash in CNY 900.00\n   and 2 more\n",
		"2025-11-21, out: CNY 60,000.00 in all (transactions W1); file by 2025-11-28 (within 5 working days",
		"2025-11-21, out: CNY 250,000.00 in all (transactions W2); file by 2025-11-28",
	} {
		if !strings.Contains(en, want) {
			t.Errorf("report lacks %q:\n%s", want, en)
		}
	}
	if strings.Contains(en, "K10 ") || strings.Count(en, "the score by") > maxReported {
		t.Errorf("report lists past its limits:\n%s", en)
	}

	// A report on 26 December: its fifth working day is in 2026, which
	// the built-in calendar does not hold.
	late := handCase(t, []tx{{id: "L1", at: "2025-12-26T02:00:00Z", dir: "in", amount: "60000", channel: "cash"}},
		func(c *Case) { c.AsOf = mustTime("2025-12-28T12:00:00Z") })
	lr := assess(t, late, fixedModel(0.9))
	for lang, want := range map[string]string{"en": "take the date from the official calendar", "zh": "请按官方日历确认截止日期"} {
		if !strings.Contains(lr.Report[lang], want) {
			t.Errorf("%s report lacks %q:\n%s", lang, want, lr.Report[lang])
		}
	}
	// The model above the rules' floor sets the level, and says so.
	if lr.LevelSetBy != SetByModel || !strings.HasPrefix(lr.Report["en"], "Case HAND: risk level critical, set by the model score 0.90") {
		t.Errorf("model-set level reads:\n%s", lr.Report["en"])
	}
}

// TestTippingOffWholeWords: Latin acronyms count as whole words only
// (every letter a to z belongs to a word), phrases and Chinese terms
// anywhere.
func TestTippingOffWholeWords(t *testing.T) {
	for text, want := range map[string]string{
		"File a SAR today":                "sar",
		"sar.":                            "sar",
		"see STR-2025":                    "str",
		"structuring below the threshold": "",
		"a branch in Sarzana, Italy":      "",
		"the customer Strz":               "",
		"请提交可疑交易报告":                       "可疑交易报告",
		"a Suspicious Activity Report":    "suspicious activity report",
	} {
		if got := tippingOff(text); got != want {
			t.Errorf("tippingOff(%q) = %q, want %q", text, got, want)
		}
	}
}

// TestReportReadsTheResult: the narrative says what the result holds:
// the rules in order, numbered; the rules' floor beside a model-set
// level only when rules fired; "No rule fired" only when none did; the
// model's contributions largest first, each with its sign, size and
// share, up to maxReported, and the note that they do not lower a
// rule-set level only beside rules; the filing step only with reports.
func TestReportReadsTheResult(t *testing.T) {
	var txs []tx
	for i := range 12 {
		txs = append(txs, tx{id: fmt.Sprintf("K%02d", i), at: fmt.Sprintf("2025-11-20T%02d:00:00Z", i), dir: "in", amount: "900", channel: "cash"})
	}
	txs = append(txs, tx{id: "W1", at: "2025-11-21T01:00:00Z", dir: "out", amount: "60000", channel: "atm"},
		tx{id: "W2", at: "2025-11-21T02:00:00Z", dir: "out", cpty: "y", country: "HK", amount: "250000"})
	busy := handCase(t, txs, func(c *Case) {
		for i := range 12 {
			c.Transactions[i].From.DepositorID = fmt.Sprint("P", i)
		}
	})
	quiet := handCase(t, []tx{{id: "S1", at: "2025-11-10T02:00:00Z", dir: "in", cpty: "EMP", country: "CN", amount: "12000"}}, nil)
	for _, tc := range []struct {
		name  string
		c     *Case
		model Scorer
	}{{"rules, model above them", busy, fixedModel(0.99)}, {"rules, text model", busy, &textModel{}}, {"nothing fired", quiet, &textModel{}}} {
		t.Run(tc.name, func(t *testing.T) {
			r := assess(t, tc.c, tc.model)
			en := r.Report["en"]
			has := func(s string) bool { return strings.Contains(en, s) }
			if (len(r.Rules) == 0) != has("No rule fired.") {
				t.Errorf("%d rules, report says %q", len(r.Rules), "No rule fired.")
			}
			for i, rule := range r.Rules {
				if !has(fmt.Sprintf("\n%d. %s (rule-triggered, severity %s;", i+1, rule.Description.EN, levelNames[rule.Severity].EN)) {
					t.Errorf("rule %d (%s) not listed as %d:\n%s", i, rule.ID, i+1, en)
				}
			}
			floor := "(the rules' floor: " + levelNames[r.RuleFloor].EN + ")"
			if want := r.LevelSetBy == SetByModel && len(r.Rules) > 0; has(floor) != want || !want && has("the rules' floor") {
				t.Errorf("set by %s with %d rules: floor shown %v", r.LevelSetBy, len(r.Rules), has("the rules' floor"))
			}
			// The contributions, largest |phi| first.
			feats := slices.Clone(r.Features)
			slices.SortStableFunc(feats, func(a, b Attribution) int { return cmp.Compare(math.Abs(b.Phi), math.Abs(a.Phi)) })
			var want []string
			for _, f := range feats {
				if len(want) == maxReported || f.Phi == 0 {
					break
				}
				verb, size := "raises", f.Phi
				if f.Phi < 0 {
					verb, size = "lowers", -f.Phi
				}
				want = append(want, fmt.Sprintf("- %s: %s %s the score by %.3f (%d%% of the model's explanation)",
					f.Label.EN, f.ValueText.EN, verb, size, int(math.Round(100*f.Share))))
			}
			_, view, _ := strings.Cut(en, "3. The model's view\n")
			view, _, _ = strings.Cut(view, "\n4. ")
			var got []string
			for _, line := range strings.Split(view, "\n") {
				if strings.HasPrefix(line, "- ") {
					got = append(got, line)
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("contributions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if (len(want) == 0) != strings.Contains(view, "No feature moved the model's score.") {
				t.Errorf("%d contributions, view:\n%s", len(want), view)
			}
			if note := "a feature that lowers it does not lower the level the rules set"; strings.Contains(view, note) != (len(want) > 0 && len(r.Rules) > 0) {
				t.Errorf("the note beside %d contributions and %d rules:\n%s", len(want), len(r.Rules), view)
			}
			if (len(r.RegulatoryReports) > 0) != has("- File the statutory reports above by their dates.") {
				t.Errorf("%d reports, filing step shown %v", len(r.RegulatoryReports), has("File the statutory"))
			}
		})
	}
}

// TestReportDirections: the facts count money in and out without the
// transfers between the customer's own accounts, and the evidence names
// each transaction's direction (cash in, cash out, in, out, between own
// accounts); a US report's deadline is in calendar days.
func TestReportDirections(t *testing.T) {
	c := handCase(t, []tx{
		{id: "OLD", at: "2025-09-01T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"},
		{id: "CI", at: "2025-11-24T10:00:00Z", dir: "in", amount: "700", channel: "cash"},
		{id: "CO", at: "2025-11-24T11:00:00Z", dir: "out", amount: "300", channel: "atm"},
		{id: "TI", at: "2025-11-25T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "900"},
		{id: "TO", at: "2025-11-25T11:00:00Z", dir: "out", cpty: "Y", country: "HK", amount: "800"},
	}, func(c *Case) {
		c.Accounts = append(c.Accounts, Account{AccountID: "B"})
		c.Transactions = append(c.Transactions, Transaction{TxnID: "OWN", Timestamp: mustTime("2025-11-26T10:00:00Z"),
			From: Party{AccountID: "A", Country: "CN"}, To: Party{AccountID: "B", Country: "CN"},
			Amount: Money{Amount: decimal.NewFromInt(400), Currency: "CNY"}, Channel: "wire"},
			// cash carried from one own account to the other: neither in nor out
			Transaction{TxnID: "OWNC", Timestamp: mustTime("2025-11-26T11:00:00Z"),
				From: Party{AccountID: "B", Country: "CN"}, To: Party{AccountID: "A", Country: "CN"},
				Amount: Money{Amount: decimal.NewFromInt(200), Currency: "CNY"}, Channel: "cash"})
	})
	r := assess(t, c, &textModel{})
	if !slices.ContainsFunc(r.Rules, func(t Triggered) bool { return t.ID == "VELOCITY" }) {
		t.Fatalf("velocity did not fire: %+v", r.Rules)
	}
	en := r.Report["en"]
	for _, want := range []string{
		"6 transactions: 2 in, CNY 1,600.00; 2 out, CNY 1,100.00; of which cash in 1, CNY 700.00, and cash out CNY 300.00",
		"CI 2025-11-24 cash in CNY 700.00\n", "CO 2025-11-24 cash out CNY 300.00 (atm)\n",
		"TI 2025-11-25 in CNY 900.00 (wire, counterparty in CN)\n", "TO 2025-11-25 out CNY 800.00 (wire, counterparty in HK)\n",
		"OWN 2025-11-26 between own accounts CNY 400.00 (wire)\n", "OWNC 2025-11-26 between own accounts CNY 200.00\n",
	} {
		if !strings.Contains(en, want) {
			t.Errorf("report lacks %q:\n%s", want, en)
		}
	}

	us := handCase(t, []tx{{id: "D1", at: "2025-11-24T15:00:00Z", dir: "in", amount: "12000", ccy: "USD", channel: "cash"}}, func(c *Case) {
		c.Jurisdiction, c.Customer.Country = "US", "US"
		c.Customer.DeclaredMonthlyIncome = &Money{Amount: decimal.NewFromInt(9000), Currency: "USD"}
	})
	ur := assess(t, us, &textModel{})
	if len(ur.RegulatoryReports) == 0 || !strings.Contains(ur.Report["en"], "(within 15 days, 31 CFR 1010.306(a)(3))") {
		t.Errorf("US report deadline:\n%s", ur.Report["en"])
	}
}
