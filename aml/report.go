package aml

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// maxReported is the number of model contributions a report lists.
const maxReported = 5

var levelNames = map[Level]Label{
	LevelLow: {"低", "low"}, LevelMedium: {"中", "medium"}, LevelHigh: {"高", "high"}, LevelCritical: {"极高", "critical"},
}

// tippingOff returns the first forbidden term text contains, or "".
func tippingOff(text string) string {
	lower := strings.ToLower(text)
	for _, w := range forbiddenWords {
		// Latin acronyms only as whole words ("str" is in "structuring").
		if isASCIIWord(w) {
			for _, f := range strings.FieldsFunc(lower, func(r rune) bool { return !('a' <= r && r <= 'z') }) {
				if f == w {
					return w
				}
			}
			continue
		}
		if strings.Contains(lower, w) {
			return w
		}
	}
	return ""
}

func isASCIIWord(s string) bool { return strings.Trim(s, "abcdefghijklmnopqrstuvwxyz") == "" }

// writeReport renders the decision for a compliance officer in lang:
// risk level, model contributions by size with percentages, then the
// rules that fired, marked as rule-triggered, then statutory reports due.
// It never mentions a suspicion report (no tipping off).
func writeReport(lang string, r *Result) string {
	var b strings.Builder
	zh := lang == "zh"
	lv := levelNames[r.RiskLevel]
	if zh {
		fmt.Fprintf(&b, "案件 %s 风险等级:%s(模型评分 %.2f)", r.CaseID, lv.ZH, r.RiskScore)
		if r.HumanReviewRequired {
			b.WriteString(",需人工复核")
		}
		b.WriteString("。\n主要因素:\n")
	} else {
		fmt.Fprintf(&b, "Case %s risk level: %s (model score %.2f)", r.CaseID, lv.EN, r.RiskScore)
		if r.HumanReviewRequired {
			b.WriteString("; human review required")
		}
		b.WriteString(".\nMain factors:\n")
	}
	feats := slices.Clone(r.Features)
	slices.SortStableFunc(feats, func(a, b Attribution) int {
		switch d := math.Abs(b.Phi) - math.Abs(a.Phi); {
		case d > 0:
			return 1
		case d < 0:
			return -1
		}
		return 0
	})
	n := 0
	for _, f := range feats {
		if n == maxReported || f.Phi == 0 {
			break
		}
		n++
		pct := int(math.Round(100 * f.Share))
		if f.Phi < 0 {
			pct = -pct
		}
		if zh {
			fmt.Fprintf(&b, "%d. %s为%s(模型贡献度:%d%%)\n", n, f.Label.ZH, f.ValueText.ZH, pct)
		} else {
			fmt.Fprintf(&b, "%d. %s: %s (model contribution: %d%%)\n", n, f.Label.EN, f.ValueText.EN, pct)
		}
	}
	for _, t := range r.Rules {
		n++
		if zh {
			fmt.Fprintf(&b, "%d. %s(业务规则触发)\n", n, t.Description.ZH)
		} else {
			fmt.Fprintf(&b, "%d. %s (rule-triggered)\n", n, t.Description.EN)
		}
	}
	if n == 0 {
		if zh {
			b.WriteString("无显著风险因素。\n")
		} else {
			b.WriteString("No notable risk factors.\n")
		}
	}
	for i, t := range r.RegulatoryReports {
		if i == 0 {
			if zh {
				b.WriteString("法定报告:\n")
			} else {
				b.WriteString("Statutory reports due:\n")
			}
		}
		if zh {
			fmt.Fprintf(&b, "- %s(%s)\n", t.Description.ZH, t.LegalBasis)
		} else {
			fmt.Fprintf(&b, "- %s (%s)\n", t.Description.EN, t.LegalBasis)
		}
	}
	return b.String()
}
