package aml

import (
	"fmt"
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
		"12 in, CNY 10,800.00; 2 out, CNY 310,000.00; of which cash in 12, CNY 10,800.00, and cash out CNY 60,000.00",
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
