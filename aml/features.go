package aml

import (
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/shopspring/decimal"
)

// Label is a text in Chinese and English.
type Label struct {
	ZH string `json:"zh"`
	EN string `json:"en"`
}

// unit says how a feature's value reads.
type unit int

const (
	count unit = iota
	percent
	ratio
	days
)

// featureDef documents one model feature. The set and its order are
// part of the prompt template's version.
type featureDef struct {
	name     string
	label    Label
	unit     unit
	baseline decimal.Decimal // the value of an unremarkable case: an absent feature reads so
	absent   Label           // how a value that cannot be computed reads
	// neutral: an absent value says nothing (no history to compare with),
	// so the feature is no player; else its absence is a fact (no
	// declared income) the model weighs.
	neutral bool
}

var (
	zero = decimal.Zero
	one  = decimal.NewFromInt(1)
	hund = decimal.NewFromInt(100)
)

// features are the model's features, in prompt order. Every one is
// deterministic given the case and the configuration.
var features = []featureDef{
	{"cash_near_threshold", Label{"现金交易金额(单笔或当日合计)略低于申报标准的次数", "cash transactions, or days' cash, just below the reporting threshold"}, count, zero, Label{}, false},
	{"pass_through", Label{"资金48小时内转出比例", "share of inflows moved on within 48 hours"}, percent, zero, Label{}, false},
	{"fan_in", Label{"转入对手方数量", "distinct senders"}, count, one, Label{}, false},
	{"fan_out", Label{"转出对手方数量", "distinct recipients"}, count, one, Label{}, false},
	{"dormant_days", Label{"账户启用前休眠天数", "days dormant before reactivation"}, days, zero, Label{}, false},
	{"round_amounts", Label{"整数金额交易占比", "share of round-amount transactions"}, percent, zero, Label{}, false},
	{"high_risk_geography", Label{"涉及高风险国家或地区的交易笔数", "transactions with high-risk jurisdictions"}, count, zero, Label{}, false},
	{"turnover_vs_income", Label{"入账金额与申报收入之比", "inflows against declared income"}, ratio, one, Label{"未申报", "not declared"}, false},
	{"velocity", Label{"近7天交易频率与90天基线之比", "last 7 days' transaction rate against the 90-day baseline"}, ratio, one, Label{"无基线数据", "no baseline"}, true},
	{"cross_border", Label{"跨境交易金额占比", "cross-border share of amounts"}, percent, zero, Label{}, false},
	{"cash_share", Label{"现金交易金额占比", "cash share of amounts"}, percent, zero, Label{}, false},
}

// FeatureNames lists the model features in prompt order.
func FeatureNames() []string {
	var n []string
	for _, f := range features {
		n = append(n, f.name)
	}
	return n
}

// format renders a value of unit u, the way the prompt and the report
// show it. Fractions are truncated, never rounded up past a threshold.
func (u unit) format(v decimal.Decimal, lang string) string {
	switch u {
	case percent:
		return v.Truncate(1).String() + "%"
	case ratio:
		return v.Truncate(1).String() + "x"
	case days:
		if lang == "zh" {
			return v.String() + "天"
		}
		return v.String() + " days"
	}
	return v.String()
}

// Fact is a value rules can test, with the transactions behind it. A
// per-day fact has one group per day; its value is the largest.
type Fact struct {
	Value    decimal.Decimal
	Evidence []string
	Groups   []Group
	Unit     string // of a per-day fact's values: CNY or USD
	// Missing: no data to compute the value from (no declared income,
	// no baseline). No condition holds on it, whatever its operator.
	Missing bool
}

// Group is one day of a per-day fact.
type Group struct {
	Key      string
	Value    decimal.Decimal
	Evidence []string
}

// minDormantDays is the shortest silence dormant_days counts.
const minDormantDays = 30

// featureValue is a computed model feature.
type featureValue struct {
	def     *featureDef
	value   decimal.Decimal
	missing bool // no data (no declared income, no baseline): reads def.absent
}

func (f featureValue) text(lang string) string {
	if f.missing {
		if lang == "zh" {
			return f.def.absent.ZH
		}
		return f.def.absent.EN
	}
	return f.def.unit.format(f.value, lang)
}

func (f featureValue) baselineText(lang string) string {
	return f.def.unit.format(f.def.baseline, lang)
}

// active says whether the feature reads differently from its baseline;
// only active features can move the score.
func (f featureValue) active() bool {
	if f.missing && f.def.neutral {
		return false
	}
	return f.text("en") != f.baselineText("en")
}

// flow is a transaction as seen from the customer.
type flow struct {
	*Transaction
	base   decimal.Decimal // amount in the FX base currency
	dir    int             // +1 in, -1 out, 0 between own accounts
	cpty   Party           // the other side
	inWin  bool
	recent bool
	day    string // date in the jurisdiction's time zone
}

// computeFeatures derives the model features and the rule facts of a
// validated case. The result does not depend on the order of the
// transactions or of anything else in the request.
func computeFeatures(c *Case, cfg *Config) ([]featureValue, map[string]*Fact) {
	j := cfg.Jurisdictions[c.Jurisdiction]
	w := cfg.Window
	winStart := c.AsOf.AddDate(0, 0, -w.Days)
	baseStart := winStart.AddDate(0, 0, -w.BaselineDays)
	recentStart := c.AsOf.AddDate(0, 0, -w.RecentDays)
	own := map[string]bool{}
	for _, a := range c.Accounts {
		own[a.AccountID] = true
	}
	txns := sortedTxns(c)
	var all, win []flow
	for _, t := range txns {
		f := flow{Transaction: t, base: cfg.FX.ToBase(t.Amount), day: t.Timestamp.In(j.loc).Format(time.DateOnly)}
		switch fromOwn, toOwn := own[t.From.AccountID], own[t.To.AccountID]; {
		case fromOwn && toOwn:
		case toOwn:
			f.dir, f.cpty = 1, t.From
		default:
			f.dir, f.cpty = -1, t.To
		}
		f.inWin = t.Timestamp.After(winStart)
		f.recent = t.Timestamp.After(recentStart)
		all = append(all, f)
		if f.inWin {
			win = append(win, f)
		}
	}
	usdRate := cfg.FX.Rates["USD"] // the check requires a positive USD rate
	toUSD := func(base decimal.Decimal) decimal.Decimal { return base.Div(usdRate) }
	facts := map[string]*Fact{}
	set := func(name string, v decimal.Decimal, ev []string) { facts[name] = &Fact{Value: v, Evidence: ev} }
	val := map[string]featureValue{}
	put := func(name string, v decimal.Decimal, ev []string) {
		set(name, v, ev)
		for i := range features {
			if features[i].name == name {
				val[name] = featureValue{def: &features[i], value: v}
			}
		}
	}

	// Cash just below the threshold (90% of it up to, not including, it),
	// against the threshold of its currency: the jurisdiction's own, or
	// its foreign-currency one (CN: USD 10,000 equivalent).
	thr := cfg.FX.ToBase(j.CashThreshold)
	threshold := func(f flow) (decimal.Decimal, string) {
		if ft := j.ForeignCashThreshold; ft != nil && f.Amount.Currency != j.CashThreshold.Currency {
			return cfg.FX.ToBase(*ft), "foreign"
		}
		return thr, "domestic"
	}
	var near, small []string
	type split struct {
		sum, limit decimal.Decimal
		n          int
		ev         []string
	}
	splits := map[string]*split{}
	for _, f := range win {
		if IsCash(f.Channel) {
			limit, class := threshold(f)
			if f.base.LessThan(limit) {
				if f.base.GreaterThanOrEqual(limit.Mul(w.NearThreshold)) {
					near = append(near, f.TxnID)
				}
				// Splitting: one day's cash in one direction, each piece
				// under the threshold, together over it.
				key := fmt.Sprintf("%s %d %s", f.day, f.dir, class)
				sp := splits[key]
				if sp == nil {
					sp = &split{limit: limit}
					splits[key] = sp
				}
				sp.sum, sp.n, sp.ev = sp.sum.Add(f.base), sp.n+1, append(sp.ev, f.TxnID)
			}
		}
		if f.dir == 1 && f.base.LessThan(thr.Div(decimal.NewFromInt(5))) {
			small = append(small, f.TxnID)
		}
	}
	set("small_inbound_count", decimal.NewFromInt(int64(len(small))), small)
	// A day's cash in one direction made of several pieces and just
	// below the threshold in total is one more near-threshold unit (two
	// CNY 23,500 deposits on each of two days), unless a piece of it was
	// counted already; one that reaches the threshold is a split day.
	units := int64(len(near))
	counted := map[string]bool{}
	for _, id := range near {
		counted[id] = true
	}
	var splitDays int64
	var splitEv []string
	for _, k := range slices.Sorted(maps.Keys(splits)) {
		sp := splits[k]
		switch {
		case sp.n < 2:
		case sp.sum.GreaterThanOrEqual(sp.limit):
			splitDays++
			splitEv = append(splitEv, sp.ev...)
		case sp.sum.GreaterThanOrEqual(sp.limit.Mul(w.NearThreshold)) && !slices.ContainsFunc(sp.ev, func(id string) bool { return counted[id] }):
			units++
			near = append(near, sp.ev...)
		}
	}
	put("cash_near_threshold", decimal.NewFromInt(units), near)
	set("cash_split_days", decimal.NewFromInt(splitDays), splitEv)

	// Pass-through: each outflow is matched, oldest first, against what
	// is left of the inflows of the hold period before it; only the
	// matched amount has passed through (a CNY 35 refund followed by
	// CNY 50,000 of tuition paid from savings passes CNY 35 through, not
	// the tuition). pass_through is the share of the window's inflows
	// moved on so; pass_through_usd the amount, for the materiality test.
	hold := time.Duration(w.PassThroughHours) * time.Hour
	in, moved := decimal.Zero, decimal.Zero
	type pending struct {
		f    flow
		left decimal.Decimal
	}
	// open holds the inflows in time order; those before head are used
	// up or older than the hold for every later outflow too, so each
	// inflow is passed once (linear in the case's 20,000 transactions).
	var open []pending
	head := 0
	ptSet := map[string]bool{}
	for _, f := range win {
		switch f.dir {
		case 1:
			in = in.Add(f.base)
			open = append(open, pending{f, f.base})
		case -1:
			for head < len(open) && (!open[head].left.IsPositive() || f.Timestamp.Sub(open[head].f.Timestamp) > hold) {
				head++
			}
			need := f.base
			for i := head; i < len(open) && need.IsPositive(); i++ {
				p := &open[i]
				take := decimal.Min(need, p.left)
				if !take.IsPositive() {
					continue // a used-up inflow (head skips them; this keeps the evidence right regardless)
				}
				p.left, need, moved = p.left.Sub(take), need.Sub(take), moved.Add(take)
				ptSet[p.f.TxnID], ptSet[f.TxnID] = true, true
			}
		}
	}
	var ptEv []string
	for _, f := range win {
		if ptSet[f.TxnID] {
			ptEv = append(ptEv, f.TxnID)
		}
	}
	pt := decimal.Zero
	if in.IsPositive() {
		pt = moved.Mul(hund).DivRound(in, 4)
	}
	put("pass_through", pt, ptEv)
	set("pass_through_usd", toUSD(moved), ptEv)

	// Fan-in and fan-out: distinct counterparties. A cash deposit paid in
	// by someone other than the customer (depositor_id) counts its
	// depositor as a sender: third-party cash has no account to count.
	thirdParty := map[string]bool{}
	var tpEv []string
	for _, d := range []struct {
		name string
		dir  int
	}{{"fan_in", 1}, {"fan_out", -1}} {
		seen := map[Party]bool{}
		var ev []string
		for _, f := range win {
			if f.dir != d.dir {
				continue
			}
			var k Party
			switch dep := f.From.DepositorID; {
			case f.cpty.AccountID != "":
				k = Party{AccountID: f.cpty.AccountID, BankID: f.cpty.BankID}
			case d.dir == 1 && IsCash(f.Channel) && dep != "" && dep != c.Customer.CustomerID:
				k = Party{DepositorID: dep}
				if !thirdParty[dep] {
					thirdParty[dep] = true
					tpEv = append(tpEv, f.TxnID)
				}
			default:
				continue
			}
			if !seen[k] {
				seen[k] = true
				ev = append(ev, f.TxnID)
			}
		}
		put(d.name, decimal.NewFromInt(int64(len(seen))), ev)
	}
	set("third_party_depositors", decimal.NewFromInt(int64(len(thirdParty))), tpEv)

	// Dormancy: the longest silence of an own account before its first
	// transaction in the window; silences under a month are ordinary and
	// count as none.
	dormant, dormantEv := int64(0), []string(nil)
	for _, a := range c.Accounts {
		var prior time.Time
		if a.LastActivityAt != nil && !a.LastActivityAt.After(winStart) {
			prior = *a.LastActivityAt
		}
		for _, f := range all {
			if f.inWin || (f.From.AccountID != a.AccountID && f.To.AccountID != a.AccountID) {
				continue
			}
			if f.Timestamp.After(prior) {
				prior = f.Timestamp
			}
		}
		if prior.IsZero() {
			continue
		}
		for _, f := range win {
			if f.From.AccountID == a.AccountID || f.To.AccountID == a.AccountID {
				if d := int64(f.Timestamp.Sub(prior) / (24 * time.Hour)); d >= minDormantDays && d > dormant {
					dormant, dormantEv = d, []string{f.TxnID}
				}
				break
			}
		}
	}
	put("dormant_days", decimal.NewFromInt(dormant), dormantEv)

	// Round amounts: whole thousands of their currency, leaving out
	// recurring payments (the same amount to or from the same
	// counterparty in at least two calendar months of the case: a salary,
	// a rent), which are round by custom, not by design.
	type series struct {
		cpty   Party
		dir    int
		amount string
	}
	months := map[series]map[string]bool{}
	seriesOf := func(f flow) series {
		return series{Party{AccountID: f.cpty.AccountID, BankID: f.cpty.BankID}, f.dir, f.Amount.Amount.String() + " " + f.Amount.Currency}
	}
	for _, f := range all {
		if f.dir != 0 && f.cpty.AccountID != "" {
			k := seriesOf(f)
			if months[k] == nil {
				months[k] = map[string]bool{}
			}
			months[k][f.day[:7]] = true
		}
	}
	thousand := decimal.NewFromInt(1000)
	var round []string
	for _, f := range win {
		if f.Amount.Amount.GreaterThanOrEqual(thousand) && f.Amount.Amount.Mod(thousand).IsZero() &&
			!(f.cpty.AccountID != "" && len(months[seriesOf(f)]) >= 2) {
			round = append(round, f.TxnID)
		}
	}
	put("round_amounts", share(len(round), len(win)), round)
	set("txn_count", decimal.NewFromInt(int64(len(win))), nil)

	// High-risk geography, cross-border share, cash share. Cross-border
	// is where the counterparty's bank is against the reporting bank's
	// country (validation requires it for transfers), never the
	// customer's nationality.
	isXB := func(f flow) bool { return !IsCash(f.Channel) && f.cpty.Country != j.Country }
	var risky, xb, cash []string
	total, xbAmt, cashAmt := decimal.Zero, decimal.Zero, decimal.Zero
	for _, f := range win {
		if f.dir == 0 {
			continue
		}
		total = total.Add(f.base)
		if _, ok := cfg.highRisk[f.cpty.Country]; ok {
			risky = append(risky, f.TxnID)
		}
		if isXB(f) {
			xb = append(xb, f.TxnID)
			xbAmt = xbAmt.Add(f.base)
		}
		if IsCash(f.Channel) {
			cash = append(cash, f.TxnID)
			cashAmt = cashAmt.Add(f.base)
		}
	}
	put("high_risk_geography", decimal.NewFromInt(int64(len(risky))), risky)
	put("cross_border", amountShare(xbAmt, total), xb)
	put("cash_share", amountShare(cashAmt, total), cash)

	// Turnover against declared income, over the window.
	var inEv []string
	for _, f := range win {
		if f.dir == 1 {
			inEv = append(inEv, f.TxnID)
		}
	}
	if m := c.Customer.DeclaredMonthlyIncome; m != nil && m.Amount.IsPositive() {
		expected := cfg.FX.ToBase(*m).Mul(decimal.NewFromInt(int64(w.Days))).Div(decimal.NewFromInt(30))
		put("turnover_vs_income", in.DivRound(expected, 4), inEv)
	} else {
		put("turnover_vs_income", decimal.Zero, inEv)
		fv := val["turnover_vs_income"]
		fv.missing = true
		val["turnover_vs_income"] = fv
		facts["turnover_vs_income"].Missing = true
	}

	// Velocity: transactions in the recent days against the baseline's
	// rate. A case without transactions in the baseline period has no
	// rate to compare with: velocity is then absent (no rule fires on
	// it), since a case sent with only its last weeks would otherwise
	// look sudden every time.
	recent, before := 0, 0
	var velEv []string
	for _, f := range all {
		switch {
		case f.recent:
			recent++
			velEv = append(velEv, f.TxnID)
		case !f.inWin && f.Timestamp.After(baseStart):
			before++
		}
	}
	if before == 0 {
		put("velocity", decimal.Zero, velEv)
		fv := val["velocity"]
		fv.missing = true
		val["velocity"] = fv
		facts["velocity"].Missing = true
	} else {
		expected := decimal.NewFromInt(int64(before * w.RecentDays)).Div(decimal.NewFromInt(int64(w.BaselineDays)))
		expected = decimal.Max(expected, decimal.NewFromInt(int64(w.RecentDays)).Div(decimal.NewFromInt(7)))
		put("velocity", decimal.NewFromInt(int64(recent)).DivRound(expected, 4), velEv)
	}

	// The customer: a home country on a high-risk list, an occupation
	// with no earned income (the configuration's list) receiving money,
	// and accounts opened within the window receiving it at once.
	hrCustomer := decimal.Zero
	if _, ok := cfg.highRisk[c.Customer.Country]; ok {
		hrCustomer = one
	}
	set("customer_high_risk_country", hrCustomer, nil)
	noIncome := decimal.Zero
	if slices.Contains(cfg.occupations, normalOccupation(c.Customer.Occupation)) {
		noIncome = one
	}
	set("no_income_occupation", noIncome, nil)
	set("inflow_usd", toUSD(in), inEv)
	newIn, newEv := decimal.Zero, []string(nil)
	for _, a := range c.Accounts {
		if a.OpenedAt == nil || !a.OpenedAt.After(winStart) {
			continue
		}
		sum, ev := decimal.Zero, []string(nil)
		for _, f := range win {
			if f.dir == 1 && f.To.AccountID == a.AccountID {
				sum, ev = sum.Add(f.base), append(ev, f.TxnID)
			}
		}
		if sum.GreaterThan(newIn) {
			newIn, newEv = sum, ev
		}
	}
	set("new_account_inflow_usd", toUSD(newIn), newEv)

	// Per-day facts for the statutory reports.
	individual := decimal.Zero
	if c.Customer.Type == "individual" {
		individual = one
	}
	set("individual", individual, nil)
	// Per day and per direction: money in and money out are aggregated
	// apart (a day's deposits are not added to its withdrawals), as the
	// statutory thresholds are read.
	perDay := func(name, unit string, keep func(f flow) bool, amount func(f flow) decimal.Decimal) {
		byDay := map[string]*Group{}
		for _, f := range win {
			if f.dir == 0 || !keep(f) {
				continue
			}
			key := f.day + " in"
			if f.dir < 0 {
				key = f.day + " out"
			}
			g := byDay[key]
			if g == nil {
				g = &Group{Key: key}
				byDay[key] = g
			}
			g.Value = g.Value.Add(amount(f))
			g.Evidence = append(g.Evidence, f.TxnID)
		}
		fact := &Fact{Unit: unit}
		for _, k := range slices.Sorted(maps.Keys(byDay)) {
			g := byDay[k]
			fact.Groups = append(fact.Groups, *g)
			if g.Value.GreaterThan(fact.Value) {
				fact.Value, fact.Evidence = g.Value, g.Evidence
			}
		}
		facts[name] = fact
	}
	isCash := func(f flow) bool { return IsCash(f.Channel) }
	isTransfer := func(f flow) bool { return !IsCash(f.Channel) }
	isCNY := func(f flow) bool { return f.Amount.Currency == "CNY" }
	nominal := func(f flow) decimal.Decimal { return f.Amount.Amount }
	inUSD := func(f flow) decimal.Decimal {
		if f.Amount.Currency == "USD" {
			return f.Amount.Amount
		}
		return toUSD(f.base)
	}
	perDay("cash_cny_daily_max", "CNY", func(f flow) bool { return isCash(f) && isCNY(f) }, nominal)
	perDay("cash_foreign_daily_max_usd", "USD", func(f flow) bool { return isCash(f) && !isCNY(f) }, inUSD)
	perDay("cash_usd_daily_max", "USD", isCash, inUSD)
	perDay("transfer_cny_daily_max", "CNY", func(f flow) bool { return isTransfer(f) && isCNY(f) }, nominal)
	perDay("transfer_foreign_daily_max_usd", "USD", func(f flow) bool { return isTransfer(f) && !isCNY(f) }, inUSD)
	perDay("domestic_transfer_cny_daily_max", "CNY", func(f flow) bool { return isTransfer(f) && !isXB(f) && isCNY(f) }, nominal)
	perDay("domestic_transfer_foreign_daily_max_usd", "USD", func(f flow) bool { return isTransfer(f) && !isXB(f) && !isCNY(f) }, inUSD)
	perDay("cross_border_cny_daily_max", "CNY", func(f flow) bool { return isXB(f) && isCNY(f) }, nominal)
	perDay("cross_border_foreign_daily_max_usd", "USD", func(f flow) bool { return isXB(f) && !isCNY(f) }, inUSD)

	out := make([]featureValue, len(features))
	for i := range features {
		out[i] = val[features[i].name]
	}
	return out, facts
}

func share(n, of int) decimal.Decimal {
	if of == 0 {
		return decimal.Zero
	}
	return decimal.NewFromInt(int64(n*100)).DivRound(decimal.NewFromInt(int64(of)), 4)
}

func amountShare(part, total decimal.Decimal) decimal.Decimal {
	if !total.IsPositive() {
		return decimal.Zero
	}
	return part.Mul(hund).DivRound(total, 4)
}
