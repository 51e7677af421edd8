package aml

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/finserve/finserve/pii"
	"github.com/shopspring/decimal"
)

// maxReported is the number of model contributions a report lists, and
// maxEvidence the transactions it lists per rule.
const (
	maxReported = 5
	maxEvidence = 10
)

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

// caseFacts is what a report says about the case itself: who, when,
// how much, and each transaction a rule names. Identifiers are masked.
type caseFacts struct {
	customer, ctype, country string
	accounts                 []string
	from, to                 string // the window's first and last day
	days                     int
	count                    int
	in, out, cashIn, cashOut map[string]decimal.Decimal // by currency
	nIn, nOut, nCashIn       int
	txns                     map[string]txnFact // by masked id
	deadline                 Deadline
}

type txnFact struct {
	date, channel, country string
	dir                    int
	amount                 Money
}

// maskRef masks a customer or account reference for a report: its first
// two and last two characters stay, enough to find it in the bank's
// systems, not enough to be one's account number.
func maskRef(s string) string {
	r := []rune(s)
	if len(r) <= 4 {
		return string(r[:1]) + "***"
	}
	return string(r[:2]) + "***" + string(r[len(r)-2:])
}

// factsOf gathers a validated case's report facts over the window.
func factsOf(c *Case, cfg *Config) *caseFacts {
	j := cfg.Jurisdictions[c.Jurisdiction]
	winStart := c.AsOf.AddDate(0, 0, -cfg.Window.Days)
	cf := &caseFacts{customer: maskRef(c.Customer.CustomerID), ctype: c.Customer.Type, country: c.Customer.Country,
		from: winStart.In(j.loc).Format(time.DateOnly), to: c.AsOf.In(j.loc).Format(time.DateOnly), days: cfg.Window.Days,
		in: map[string]decimal.Decimal{}, out: map[string]decimal.Decimal{}, cashIn: map[string]decimal.Decimal{},
		cashOut: map[string]decimal.Decimal{}, txns: map[string]txnFact{}, deadline: j.ReportDeadline}
	own := map[string]bool{}
	for _, a := range c.Accounts {
		own[a.AccountID] = true
		cf.accounts = append(cf.accounts, maskRef(a.AccountID))
	}
	slices.Sort(cf.accounts)
	add := func(m map[string]decimal.Decimal, a Money) { m[a.Currency] = m[a.Currency].Add(a.Amount) }
	for _, t := range sortedTxns(c) {
		tf := txnFact{date: t.Timestamp.In(j.loc).Format(time.DateOnly), channel: t.Channel, amount: t.Amount}
		switch fromOwn, toOwn := own[t.From.AccountID], own[t.To.AccountID]; {
		case fromOwn && toOwn:
		case toOwn:
			tf.dir, tf.country = 1, t.From.Country
		default:
			tf.dir, tf.country = -1, t.To.Country
		}
		if id := pii.Mask(t.TxnID); cf.txns[id].date == "" {
			cf.txns[id] = tf
		}
		if !t.Timestamp.After(winStart) {
			continue
		}
		cf.count++
		switch {
		case tf.dir > 0:
			add(cf.in, t.Amount)
			cf.nIn++
			if IsCash(t.Channel) {
				add(cf.cashIn, t.Amount)
				cf.nCashIn++
			}
		case tf.dir < 0:
			add(cf.out, t.Amount)
			cf.nOut++
			if IsCash(t.Channel) {
				add(cf.cashOut, t.Amount)
			}
		}
	}
	return cf
}

// money renders an amount with thousands separators: "CNY 48,000.00".
func money(ccy string, d decimal.Decimal) string {
	s := d.StringFixed(2)
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var b strings.Builder
	for i, r := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return ccy + " -" + b.String() + "." + frac
	}
	return ccy + " " + b.String() + "." + frac
}

func (w *report) sums(m map[string]decimal.Decimal) string {
	if len(m) == 0 {
		return w.pickf("无", "none")
	}
	var parts []string
	for _, ccy := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, money(ccy, m[ccy]))
	}
	return strings.Join(parts, " + ")
}

// report is a narrative in one language, written from the templates of
// its language.
type report struct {
	b  strings.Builder
	zh bool
}

func (w *report) say(zh, en string, args ...any) {
	if w.zh {
		fmt.Fprintf(&w.b, zh, args...)
	} else {
		fmt.Fprintf(&w.b, en, args...)
	}
}

func (w *report) pick(l Label) string {
	if w.zh {
		return l.ZH
	}
	return l.EN
}

// writeReport renders the decision as the narrative a compliance officer
// files from: the decision and what set it; the facts (who, when, how
// much); the typologies that fired, each with its evidence; the model's
// view; the statutory reports due and their deadlines; what to do next.
// It never mentions a suspicion report, to the customer or anyone
// reading over a shoulder (no tipping off).
func writeReport(lang string, r *Result, cf *caseFacts) string {
	w := &report{zh: lang == "zh"}
	lv := w.pick(levelNames[r.RiskLevel])
	ml := w.pick(levelNames[r.ModelLevel])
	switch r.LevelSetBy {
	case SetByRules:
		w.say("案件 %s:风险等级%s,由业务规则 %s 设定(模型单独评估为%s,评分 %.2f)", "Case %s: risk level %s, set by rule %s (the model alone: %s, score %.2f)",
			r.CaseID, lv, strings.Join(r.FloorRules, ", "), ml, r.RiskScore)
	case SetByBoth:
		w.say("案件 %s:风险等级%s,业务规则 %s 与模型评分(%.2f)一致", "Case %s: risk level %s, set by rule %s and the model score (%.2f) alike",
			r.CaseID, lv, strings.Join(r.FloorRules, ", "), r.RiskScore)
	default:
		w.say("案件 %s:风险等级%s,由模型评分 %.2f 设定", "Case %s: risk level %s, set by the model score %.2f", r.CaseID, lv, r.RiskScore)
		if len(r.Rules) > 0 {
			w.say("(业务规则下限为%s)", " (the rules' floor: %s)", w.pick(levelNames[r.RuleFloor]))
		}
	}
	if r.HumanReviewRequired {
		w.say(",需人工复核。\n", "; human review required.\n")
	} else {
		w.say("。\n", ".\n")
	}

	// Facts first.
	w.say("\n一、基本事实\n", "\n1. Facts\n")
	ctype := map[string]Label{"individual": {"个人", "individual"}, "entity": {"非自然人", "entity"}}[cf.ctype]
	w.say("客户 %s(%s,国家或地区 %s),账户 %s。\n", "Customer %s (%s, country %s), accounts %s.\n",
		cf.customer, w.pick(ctype), cf.country, strings.Join(cf.accounts, ", "))
	w.say("评估期 %s 至 %s(%d天),交易 %d 笔:转入 %d 笔 %s,转出 %d 笔 %s;其中现金存入 %d 笔 %s,现金支取 %s。\n",
		"Period %s to %s (%d days), %d transactions: %d in, %s; %d out, %s; of which cash in %d, %s, and cash out %s.\n",
		cf.from, cf.to, cf.days, cf.count, cf.nIn, w.sums(cf.in), cf.nOut, w.sums(cf.out), cf.nCashIn, w.sums(cf.cashIn), w.sums(cf.cashOut))

	// Then the typologies, each with the transactions behind it.
	w.say("\n二、触发的可疑特征及证据\n", "\n2. Typologies and evidence\n")
	if len(r.Rules) == 0 {
		w.say("无业务规则触发。\n", "No rule fired.\n")
	}
	for i, t := range r.Rules {
		w.say("%d. %s(业务规则触发,严重程度:%s;依据:%s)\n", "%d. %s (rule-triggered, severity %s; basis: %s)\n",
			i+1, w.pick(t.Description), w.pick(levelNames[t.Severity]), t.LegalBasis)
		w.evidence(t.Evidence, cf)
	}

	// The model's view, with the direction of each contribution in words.
	w.say("\n三、模型观点\n", "\n3. The model's view\n")
	w.say("模型评分 %.2f(无异常客户的基线评分 %.2f),模型等级%s。\n", "Model score %.2f (%.2f for an unremarkable customer, the baseline), model level %s.\n",
		r.RiskScore, r.Explanation.FBaseline, ml)
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
		if f.Phi > 0 {
			w.say("- %s为%s:使评分升高 %.3f(占模型解释的 %d%%)\n", "- %s: %s raises the score by %.3f (%d%% of the model's explanation)\n",
				w.pick(f.Label), w.pick(f.ValueText), f.Phi, pct)
		} else {
			w.say("- %s为%s:使评分降低 %.3f(占模型解释的 %d%%)\n", "- %s: %s lowers the score by %.3f (%d%% of the model's explanation)\n",
				w.pick(f.Label), w.pick(f.ValueText), -f.Phi, pct)
		}
	}
	if n == 0 {
		w.say("各特征均未改变模型评分。\n", "No feature moved the model's score.\n")
	}
	if n > 0 && len(r.Rules) > 0 {
		w.say("(以上仅解释模型评分;降低评分的因素不降低业务规则设定的等级。)\n",
			"(These explain the model's score only: a feature that lowers it does not lower the level the rules set.)\n")
	}

	// The statutory reports, each day with its deadline.
	w.say("\n四、应报送的法定报告\n", "\n4. Statutory reports due\n")
	if len(r.RegulatoryReports) == 0 {
		w.say("无。\n", "None.\n")
	}
	dl := cf.deadline
	for _, t := range r.RegulatoryReports {
		w.say("- %s(%s)\n", "- %s (%s)\n", w.pick(t.Description), t.LegalBasis)
		for _, o := range t.Occurrences {
			dir := Label{"转入", "in"}
			if o.Direction == "out" {
				dir = Label{"转出", "out"}
			}
			total, _ := decimal.NewFromString(o.Total)
			w.say("  %s %s 合计 %s(交易 %s)", "  %s, %s: %s in all (transactions %s)", o.Date, w.pick(dir), money(o.Unit, total), strings.Join(o.Evidence, ", "))
			switch {
			case o.DueBy != "" && dl.WorkingDays > 0:
				w.say(",应于 %s 前报送(%d个工作日内,%s)\n", "; file by %s (within %d working days, %s)\n", o.DueBy, dl.WorkingDays, dl.LegalBasis)
			case o.DueBy != "":
				w.say(",应于 %s 前报送(%d日内,%s)\n", "; file by %s (within %d days, %s)\n", o.DueBy, dl.CalendarDays, dl.LegalBasis)
			default:
				w.say(",应自交易发生之日起%d个工作日内报送(%s;节假日安排未配置,请按官方日历确认截止日期)\n",
					"; file within %d working days of the day (%s; the holiday calendar does not cover them: take the date from the official calendar)\n",
					dl.WorkingDays, dl.LegalBasis)
			}
		}
	}

	// What to do next.
	w.say("\n五、后续处理\n", "\n5. Next steps\n")
	if len(r.RegulatoryReports) > 0 {
		w.say("- 按上列日期报送法定报告。\n", "- File the statutory reports above by their dates.\n")
	}
	if r.HumanReviewRequired {
		w.say("- 复核上列证据与客户资料,核实资金来源与交易目的,记录结论及理由,并按内部程序决定后续处理。\n",
			"- Review the evidence above and the customer's file, establish the source of funds and the purpose of the transactions, record the conclusion and its reasons, and decide further steps under internal procedure.\n")
	} else {
		w.say("- 无需人工复核;继续常规监测。\n", "- No review needed; continue routine monitoring.\n")
	}
	w.say("- 不得向客户或第三方透露本次评估及其结论。\n", "- Do not disclose this assessment or its outcome to the customer or any third party.\n")
	return w.b.String()
}

// evidence lists the transactions behind a rule: date, direction,
// amount, channel and counterparty country.
func (w *report) evidence(ids []string, cf *caseFacts) {
	for i, id := range ids {
		if i == maxEvidence {
			w.say("   另有 %d 笔\n", "   and %d more\n", len(ids)-maxEvidence)
			break
		}
		t, ok := cf.txns[id]
		if !ok {
			w.say("   %s\n", "   %s\n", id)
			continue
		}
		dir := Label{"内部划转", "between own accounts"}
		switch {
		case t.dir > 0 && IsCash(t.channel):
			dir = Label{"现金存入", "cash in"}
		case t.dir < 0 && IsCash(t.channel):
			dir = Label{"现金支取", "cash out"}
		case t.dir > 0:
			dir = Label{"转入", "in"}
		case t.dir < 0:
			dir = Label{"转出", "out"}
		}
		how := ""
		switch {
		case t.channel == "cash":
		case t.country != "" && !IsCash(t.channel):
			how = w.pickf("(%s,对方 %s)", " (%s, counterparty in %s)", t.channel, t.country)
		default:
			how = w.pickf("(%s)", " (%s)", t.channel)
		}
		w.say("   %s %s %s %s%s\n", "   %s %s %s %s%s\n", id, t.date, w.pick(dir), money(t.amount.Currency, t.amount.Amount), how)
	}
}

func (w *report) pickf(zh, en string, args ...any) string {
	if w.zh {
		return fmt.Sprintf(zh, args...)
	}
	return fmt.Sprintf(en, args...)
}
