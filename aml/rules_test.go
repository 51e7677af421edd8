package aml

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shopspring/decimal"
)

// tx is a transaction of a hand-built case, seen from the customer's
// account "A": in (from a counterparty to A) or out (from A).
type tx struct {
	id, at  string // RFC 3339
	dir     string // "in" or "out"
	cpty    string // counterparty account ("" for cash without one)
	country string // the counterparty's
	amount  string
	ccy     string
	channel string
}

// handCase builds a validated CN case for an individual (country CN,
// declared income CNY 12,000 a month, account A) as of 2025-11-28 12:00
// UTC; mod may change it before validation.
func handCase(t *testing.T, txs []tx, mod func(*Case)) *Case {
	t.Helper()
	c := &Case{CaseID: "HAND", Jurisdiction: "CN", AsOf: mustTime("2025-11-28T12:00:00Z"),
		Customer: Customer{CustomerID: "C", Type: "individual", Country: "CN",
			DeclaredMonthlyIncome: &Money{Amount: decimal.NewFromInt(12000), Currency: "CNY"}},
		Accounts: []Account{{AccountID: "A"}}}
	for _, x := range txs {
		other := Party{AccountID: x.cpty, Country: x.country}
		if x.cpty != "" {
			other.BankID = "B-" + x.cpty
		}
		own := Party{AccountID: "A", Country: "CN"}
		from, to := other, own
		if x.dir == "out" {
			from, to = own, other
		}
		ch := x.channel
		if ch == "" {
			ch = "wire"
		}
		ccy := x.ccy
		if ccy == "" {
			ccy = "CNY"
		}
		c.Transactions = append(c.Transactions, Transaction{TxnID: x.id, Timestamp: mustTime(x.at), From: from, To: to,
			Amount: Money{Amount: decimal.RequireFromString(x.amount), Currency: ccy}, Channel: ch})
	}
	if mod != nil {
		mod(c)
	}
	if err := c.Validate(DefaultConfig(), ""); err != nil {
		t.Fatal(err)
	}
	return c
}

// fired runs the default rules over a case and returns the ids that fired
// with their evidence.
func fired(c *Case) map[string][]string {
	cfg := DefaultConfig()
	_, facts := computeFeatures(c, cfg)
	order := map[string]int{}
	for i, t := range sortedTxns(c) {
		order[t.TxnID] = i
	}
	out := map[string][]string{}
	for _, r := range cfg.Rules.evaluate(c.Jurisdiction, facts, order) {
		out[r.ID] = r.Evidence
	}
	return out
}

// series makes n transactions a day apart from start, each from its own
// counterparty when distinct, else from pairs of them.
func series(prefix string, n int, start, dir, amount string, distinct int) []tx {
	t0 := mustTime(start)
	var out []tx
	for i := range n {
		out = append(out, tx{id: fmt.Sprintf("%s%d", prefix, i), at: t0.Add(time.Duration(i) * 3 * time.Hour).Format(time.RFC3339), dir: dir,
			cpty: fmt.Sprintf("%s-cp%d", prefix, i%distinct), country: "CN", amount: amount})
	}
	return out
}

// TestRulesFireAndNearMiss: each suspicion rule of the default set fires
// on a case built for it, with its evidence, and not on a near miss just
// past its threshold. Thresholds and their sources are in default.yaml.
func TestRulesFireAndNearMiss(t *testing.T) {
	// CN's cash threshold is CNY 50,000; "just below" starts at 90% of it.
	cash := func(id, at, amount string) tx {
		return tx{id: id, at: at, dir: "in", amount: amount, channel: "cash"}
	}
	cases := []struct {
		name, rule string
		txs        []tx
		mod        func(*Case)
		fires      bool
		evidence   []string // nil: not checked
	}{
		{"structuring", "STRUCTURING", []tx{cash("S1", "2025-11-20T02:00:00Z", "46000"), cash("S2", "2025-11-21T02:00:00Z", "45000")}, nil, true, []string{"S1", "S2"}},
		{"structuring near miss: one below 90%", "STRUCTURING", []tx{cash("S1", "2025-11-20T02:00:00Z", "46000"), cash("S2", "2025-11-21T02:00:00Z", "44999.99")}, nil, false, nil},
		{"structuring near miss: one at the threshold", "STRUCTURING", []tx{cash("S1", "2025-11-20T02:00:00Z", "46000"), cash("S2", "2025-11-21T02:00:00Z", "50000")}, nil, false, nil},

		// Foreign cash in CN against USD 10,000: 95% twice.
		{"structuring: USD 9,500 twice in CN", "STRUCTURING", []tx{
			{id: "F1", at: "2025-11-20T02:00:00Z", dir: "in", amount: "9500", ccy: "USD", channel: "cash"},
			{id: "F2", at: "2025-11-22T02:00:00Z", dir: "in", amount: "9500", ccy: "USD", channel: "cash"}}, nil, true, []string{"F1", "F2"}},
		{"structuring near miss: USD 8,900 twice in CN", "STRUCTURING", []tx{
			{id: "F1", at: "2025-11-20T02:00:00Z", dir: "in", amount: "8900", ccy: "USD", channel: "cash"},
			{id: "F2", at: "2025-11-22T02:00:00Z", dir: "in", amount: "8900", ccy: "USD", channel: "cash"}}, nil, false, nil},
		// A day's cash just below the threshold in total, twice.
		{"structuring: CNY 23,500 twice on each of two days", "STRUCTURING", []tx{cash("H1", "2025-11-20T01:00:00Z", "23500"), cash("H2", "2025-11-20T03:00:00Z", "23500"),
			cash("H3", "2025-11-22T01:00:00Z", "23000"), cash("H4", "2025-11-22T03:00:00Z", "22000")}, nil, true, []string{"H1", "H2", "H3", "H4"}},
		{"structuring near miss: CNY 22,000 twice on each of two days (88%)", "STRUCTURING", []tx{cash("H1", "2025-11-20T01:00:00Z", "22000"), cash("H2", "2025-11-20T03:00:00Z", "22000"),
			cash("H3", "2025-11-22T01:00:00Z", "22000"), cash("H4", "2025-11-22T03:00:00Z", "22000")}, nil, false, nil},
		{"structuring near miss: a piece near and its day's total near count once", "STRUCTURING", []tx{cash("H1", "2025-11-20T01:00:00Z", "45500"), cash("H2", "2025-11-20T03:00:00Z", "10"),
			cash("H3", "2025-11-22T01:00:00Z", "100")}, nil, false, nil},
		// Split on one day: each piece under the threshold, together over it.
		{"structuring: CNY 20,000 three times in a day", "STRUCTURING", []tx{cash("D1", "2025-11-20T01:00:00Z", "20000"), cash("D2", "2025-11-20T03:00:00Z", "20000"),
			cash("D3", "2025-11-20T05:00:00Z", "20000")}, nil, true, []string{"D1", "D2", "D3"}},
		{"structuring: two pieces that reach the threshold exactly", "STRUCTURING", []tx{cash("D1", "2025-11-20T01:00:00Z", "25000"), cash("D2", "2025-11-20T03:00:00Z", "25000")},
			nil, true, []string{"D1", "D2"}},
		{"structuring near miss: two pieces a cent under the threshold", "STRUCTURING", []tx{cash("D1", "2025-11-20T01:00:00Z", "25000"), cash("D2", "2025-11-20T03:00:00Z", "24999.99")},
			nil, false, nil},
		{"structuring near miss: CNY 20,000 twice in and once out", "STRUCTURING", []tx{cash("D1", "2025-11-20T01:00:00Z", "20000"), cash("D2", "2025-11-20T03:00:00Z", "20000"),
			{id: "D3", at: "2025-11-20T05:00:00Z", dir: "out", amount: "20000", channel: "cash"}}, nil, false, nil},
		{"structuring: USD 8,500 four times in a day (US)", "STRUCTURING", []tx{
			{id: "U1", at: "2025-11-20T14:00:00Z", dir: "in", amount: "8500", ccy: "USD", channel: "cash"},
			{id: "U2", at: "2025-11-20T15:00:00Z", dir: "in", amount: "8500", ccy: "USD", channel: "cash"},
			{id: "U3", at: "2025-11-20T16:00:00Z", dir: "in", amount: "8500", ccy: "USD", channel: "cash"},
			{id: "U4", at: "2025-11-20T17:00:00Z", dir: "in", amount: "8500", ccy: "USD", channel: "cash"}},
			func(c *Case) { c.Jurisdiction, c.Customer.Country = "US", "US" }, true, []string{"U1", "U2", "U3", "U4"}},
		{"structuring near miss: USD 2,400 four times in a day (US)", "STRUCTURING", []tx{
			{id: "U1", at: "2025-11-20T14:00:00Z", dir: "in", amount: "2400", ccy: "USD", channel: "cash"},
			{id: "U2", at: "2025-11-20T15:00:00Z", dir: "in", amount: "2400", ccy: "USD", channel: "cash"},
			{id: "U3", at: "2025-11-20T16:00:00Z", dir: "in", amount: "2400", ccy: "USD", channel: "cash"},
			{id: "U4", at: "2025-11-20T17:00:00Z", dir: "in", amount: "2400", ccy: "USD", channel: "cash"}},
			func(c *Case) { c.Jurisdiction, c.Customer.Country = "US", "US" }, false, nil},

		// 10 inbound under a fifth of the threshold (CNY 10,000) from 5 senders.
		{"smurfing", "SMURFING", series("M", 10, "2025-11-20T00:00:00Z", "in", "9999.99", 5), nil, true, nil},
		{"smurfing near miss: at a fifth of the threshold", "SMURFING", series("M", 10, "2025-11-20T00:00:00Z", "in", "10000", 5), nil, false, nil},
		{"smurfing near miss: 4 senders", "SMURFING", series("M", 10, "2025-11-20T00:00:00Z", "in", "900", 4), nil, false, nil},
		{"smurfing near miss: 9 deposits", "SMURFING", series("M", 9, "2025-11-20T00:00:00Z", "in", "900", 5), nil, false, nil},

		// Amounts of CNY 100,000 (USD 13,810): material.
		{"rapid in-out: 90% within 48 h", "RAPID-IN-OUT", []tx{{id: "R1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100000"},
			{id: "R2", at: "2025-11-21T23:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "90000"}}, nil, true, []string{"R1", "R2"}},
		{"rapid in-out: two outflows at exactly 48 h", "RAPID-IN-OUT", []tx{{id: "R1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100000"},
			{id: "R2", at: "2025-11-21T00:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "50000"},
			{id: "R3", at: "2025-11-22T00:00:00Z", dir: "out", cpty: "z", country: "CN", amount: "45000"}}, nil, true, []string{"R1", "R2", "R3"}},
		{"rapid in-out near miss: 89.99%", "RAPID-IN-OUT", []tx{{id: "R1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100000"},
			{id: "R2", at: "2025-11-21T23:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "89990"}}, nil, false, nil},
		{"rapid in-out near miss: after 48 h", "RAPID-IN-OUT", []tx{{id: "R1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100000"},
			{id: "R2", at: "2025-11-22T00:00:01Z", dir: "out", cpty: "y", country: "CN", amount: "100000"}}, nil, false, nil},
		// Materiality: USD 10,000 equivalent passed through. CNY 72,500 is
		// USD 10,012.25; CNY 72,400 USD 9,998.44.
		{"rapid in-out: CNY 72,500 passed through", "RAPID-IN-OUT", []tx{{id: "R1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "72500"},
			{id: "R2", at: "2025-11-20T05:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "72500"}}, nil, true, []string{"R1", "R2"}},
		{"rapid in-out near miss: CNY 72,400 passed through", "RAPID-IN-OUT", []tx{{id: "R1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "72400"},
			{id: "R2", at: "2025-11-20T05:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "72400"}}, nil, false, nil},
		// The case: a CNY 35 refund, then tuition from savings.
		{"rapid in-out near miss: a refund, then tuition from savings", "RAPID-IN-OUT", []tx{{id: "R1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "shop", country: "CN", amount: "35"},
			{id: "R2", at: "2025-11-20T05:00:00Z", dir: "out", cpty: "univ", country: "CN", amount: "50000"}}, nil, false, nil},
		// Outflows are matched against what is left of the inflows: a
		// second outflow cannot pass the same money through again.
		{"rapid in-out near miss: one inflow, two outflows of it in full", "RAPID-IN-OUT", []tx{{id: "R1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100000"},
			{id: "R0", at: "2025-11-01T00:00:00Z", dir: "in", cpty: "w", country: "CN", amount: "100000"},
			{id: "R2", at: "2025-11-20T05:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "85000"},
			{id: "R3", at: "2025-11-20T06:00:00Z", dir: "out", cpty: "z", country: "CN", amount: "85000"}}, nil, false, nil},

		{"fan-in: 10 senders", "FAN-IN", series("I", 10, "2025-11-01T00:00:00Z", "in", "20000", 10), nil, true, nil},
		{"fan-in near miss: 9 senders", "FAN-IN", series("I", 10, "2025-11-01T00:00:00Z", "in", "20000", 9), nil, false, nil},
		{"fan-out: 10 recipients", "FAN-OUT", series("O", 10, "2025-11-01T00:00:00Z", "out", "2000", 10), nil, true, nil},
		{"fan-out near miss: 9 recipients", "FAN-OUT", series("O", 10, "2025-11-01T00:00:00Z", "out", "2000", 9), nil, false, nil},

		// Silent since 180 (179) days before the window's first transaction.
		{"dormant 180 days", "DORMANT", []tx{{id: "D1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100"}},
			func(c *Case) { c.Accounts[0].LastActivityAt = ptr(mustTime("2025-05-24T00:00:00Z")) }, true, []string{"D1"}},
		{"dormant near miss: 179 days", "DORMANT", []tx{{id: "D1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100"}},
			func(c *Case) { c.Accounts[0].LastActivityAt = ptr(mustTime("2025-05-25T00:00:00Z")) }, false, nil},

		// Half of at least four transactions in whole thousands.
		{"round amounts: 2 of 4", "ROUND-AMOUNTS", []tx{
			{id: "A1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "3000"},
			{id: "A2", at: "2025-11-20T01:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "7000"},
			{id: "A3", at: "2025-11-20T02:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "123.45"},
			{id: "A4", at: "2025-11-20T03:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "999"}}, nil, true, []string{"A1", "A2"}},
		{"round amounts near miss: 1 of 4", "ROUND-AMOUNTS", []tx{
			{id: "A1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "3000"},
			{id: "A2", at: "2025-11-20T01:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "7000.50"},
			{id: "A3", at: "2025-11-20T02:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "123.45"},
			{id: "A4", at: "2025-11-20T03:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "999"}}, nil, false, nil},
		{"round amounts near miss: 2 of 3", "ROUND-AMOUNTS", []tx{
			{id: "A1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "3000"},
			{id: "A2", at: "2025-11-20T01:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "7000"},
			{id: "A3", at: "2025-11-20T02:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "123.45"}}, nil, false, nil},

		// A salary of whole thousands, paid monthly, is custom, not design.
		{"round amounts near miss: a monthly salary and rent", "ROUND-AMOUNTS", []tx{
			{id: "W1", at: "2025-10-10T00:00:00Z", dir: "in", cpty: "emp", country: "CN", amount: "12000"},
			{id: "W2", at: "2025-11-10T00:00:00Z", dir: "in", cpty: "emp", country: "CN", amount: "12000"},
			{id: "L1", at: "2025-10-12T00:00:00Z", dir: "out", cpty: "landlord", country: "CN", amount: "5000"},
			{id: "L2", at: "2025-11-12T00:00:00Z", dir: "out", cpty: "landlord", country: "CN", amount: "5000"},
			{id: "A3", at: "2025-11-20T02:00:00Z", dir: "out", cpty: "shop", country: "CN", amount: "123.45"},
			{id: "A4", at: "2025-11-21T03:00:00Z", dir: "out", cpty: "shop", country: "CN", amount: "2000"}}, nil, false, nil},
		{"round amounts: the same amounts from changing senders", "ROUND-AMOUNTS", []tx{
			{id: "W1", at: "2025-10-10T00:00:00Z", dir: "in", cpty: "p1", country: "CN", amount: "12000"},
			{id: "W2", at: "2025-11-10T00:00:00Z", dir: "in", cpty: "p2", country: "CN", amount: "12000"},
			{id: "L1", at: "2025-10-12T00:00:00Z", dir: "out", cpty: "q1", country: "CN", amount: "5000"},
			{id: "L2", at: "2025-11-12T00:00:00Z", dir: "out", cpty: "q2", country: "CN", amount: "5000"},
			{id: "A3", at: "2025-11-20T02:00:00Z", dir: "out", cpty: "shop", country: "CN", amount: "123.45"},
			{id: "A4", at: "2025-11-21T03:00:00Z", dir: "out", cpty: "shop", country: "CN", amount: "2000"}}, nil, true, []string{"W2", "L2", "A4"}},

		// Cash paid in by people other than the customer.
		{"third-party cash: 3 depositors", "THIRD-PARTY-CASH", []tx{cash("K1", "2025-11-20T01:00:00Z", "3000"), cash("K2", "2025-11-20T02:00:00Z", "3000"), cash("K3", "2025-11-21T02:00:00Z", "3000")},
			func(c *Case) {
				for i := range c.Transactions {
					c.Transactions[i].From.DepositorID = fmt.Sprint("P", i)
				}
			}, true, []string{"K1", "K2", "K3"}},
		{"third-party cash near miss: 2 depositors and the customer", "THIRD-PARTY-CASH", []tx{cash("K1", "2025-11-20T01:00:00Z", "3000"), cash("K2", "2025-11-20T02:00:00Z", "3000"), cash("K3", "2025-11-21T02:00:00Z", "3000")},
			func(c *Case) {
				for i, id := range []string{"P1", "P2", "C"} {
					c.Transactions[i].From.DepositorID = id
				}
			}, false, nil},
		{"smurfing: ten deposits by five third parties", "SMURFING", []tx{cash("K0", "2025-11-20T01:00:00Z", "900"), cash("K1", "2025-11-20T02:00:00Z", "900"),
			cash("K2", "2025-11-20T03:00:00Z", "900"), cash("K3", "2025-11-20T04:00:00Z", "900"), cash("K4", "2025-11-20T05:00:00Z", "900"),
			cash("K5", "2025-11-21T01:00:00Z", "900"), cash("K6", "2025-11-21T02:00:00Z", "900"), cash("K7", "2025-11-21T03:00:00Z", "900"),
			cash("K8", "2025-11-21T04:00:00Z", "900"), cash("K9", "2025-11-21T05:00:00Z", "900")},
			func(c *Case) {
				for i := range c.Transactions {
					c.Transactions[i].From.DepositorID = fmt.Sprint("P", i%5)
				}
			}, true, nil},

		{"high-risk customer: Iranian national", "HIGH-RISK-CUSTOMER", []tx{{id: "G1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100"}},
			func(c *Case) { c.Customer.Country = "IR" }, true, nil},
		{"high-risk customer near miss: Mozambique, delisted in October 2025", "HIGH-RISK-CUSTOMER", []tx{{id: "G1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100"}},
			func(c *Case) { c.Customer.Country = "MZ" }, false, nil},
		{"high-risk geography near miss: Mozambique", "HIGH-RISK-GEO", []tx{{id: "G1", at: "2025-11-20T00:00:00Z", dir: "out", cpty: "x", country: "MZ", amount: "100"}}, nil, false, nil},

		// A student receiving USD 10,000 equivalent (CNY 72,500 = USD 10,012.25).
		{"occupation mismatch: a student receives CNY 72,500", "OCCUPATION-MISMATCH", []tx{{id: "O1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "72500"}},
			func(c *Case) { c.Customer.Occupation = " Student " }, true, []string{"O1"}},
		{"occupation mismatch near miss: CNY 72,400", "OCCUPATION-MISMATCH", []tx{{id: "O1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "72400"}},
			func(c *Case) { c.Customer.Occupation = "学生" }, false, nil},
		{"occupation mismatch near miss: an engineer", "OCCUPATION-MISMATCH", []tx{{id: "O1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "500000"}},
			func(c *Case) { c.Customer.Occupation = "engineer" }, false, nil},

		// An account opened in the window (after 2025-10-29 12:00 UTC).
		{"new account: opened 2025-11-15, CNY 72,500 in", "NEW-ACCOUNT", []tx{{id: "N1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "72500"}},
			func(c *Case) { c.Accounts[0].OpenedAt = ptr(mustTime("2025-11-15T00:00:00Z")) }, true, []string{"N1"}},
		{"new account near miss: CNY 72,400", "NEW-ACCOUNT", []tx{{id: "N1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "72400"}},
			func(c *Case) { c.Accounts[0].OpenedAt = ptr(mustTime("2025-11-15T00:00:00Z")) }, false, nil},
		{"new account near miss: opened before the window", "NEW-ACCOUNT", []tx{{id: "N1", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "500000"}},
			func(c *Case) { c.Accounts[0].OpenedAt = ptr(mustTime("2025-10-29T12:00:00Z")) }, false, nil},

		{"high-risk geography: Iran", "HIGH-RISK-GEO", []tx{{id: "G1", at: "2025-11-20T00:00:00Z", dir: "out", cpty: "x", country: "IR", amount: "100"}}, nil, true, []string{"G1"}},
		{"high-risk geography near miss: UAE", "HIGH-RISK-GEO", []tx{{id: "G1", at: "2025-11-20T00:00:00Z", dir: "out", cpty: "x", country: "AE", amount: "100"}}, nil, false, nil},

		// Inflows of 5 months' declared income (CNY 60,000) in 30 days.
		{"profile mismatch: 5x income", "PROFILE-MISMATCH", []tx{{id: "P1", at: "2025-11-01T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "60000"}}, nil, true, []string{"P1"}},
		{"profile mismatch near miss: 4.99x", "PROFILE-MISMATCH", []tx{{id: "P1", at: "2025-11-01T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "59900"}}, nil, false, nil},
		{"profile mismatch: no declared income", "PROFILE-MISMATCH", []tx{{id: "P1", at: "2025-11-01T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "600000"}},
			func(c *Case) { c.Customer.DeclaredMonthlyIncome = nil }, false, nil},

		// Without transactions in the baseline period there is no rate to
		// compare with: a case sent with its last weeks only is not
		// "sudden" (it was, for every such case, before).
		{"velocity without history", "VELOCITY", series("V", 20, "2025-11-25T00:00:00Z", "in", "100", 1), nil, false, nil},
		// One baseline transaction: the floor of one a week; 4 recent: 4x.
		{"velocity 4x against the weekly floor", "VELOCITY", append(series("H", 1, "2025-08-01T00:00:00Z", "in", "100", 1),
			series("V", 4, "2025-11-25T00:00:00Z", "in", "100", 1)...), nil, true, nil},
		{"velocity near miss: 3 recent", "VELOCITY", append(series("H", 1, "2025-08-01T00:00:00Z", "in", "100", 1),
			series("V", 3, "2025-11-25T00:00:00Z", "in", "100", 1)...), nil, false, nil},
		{"velocity near miss: 28 recent beside 90 in the baseline", "VELOCITY",
			append(series("H", 90, "2025-08-01T00:00:00Z", "in", "100", 1), series("V", 27, "2025-11-22T00:00:00Z", "in", "100", 1)...), nil, false, nil},
		{"velocity: 28 recent beside 90 in the baseline", "VELOCITY",
			append(series("H", 90, "2025-08-01T00:00:00Z", "in", "100", 1), series("V", 28, "2025-11-22T00:00:00Z", "in", "100", 1)...), nil, true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := fired(handCase(t, tc.txs, tc.mod))
			ev, ok := got[tc.rule]
			if ok != tc.fires {
				t.Fatalf("%s fired %v, want %v (fired: %v)", tc.rule, ok, tc.fires, got)
			}
			if tc.evidence != nil && !slices.Equal(ev, tc.evidence) {
				t.Errorf("%s evidence %v, want %v", tc.rule, ev, tc.evidence)
			}
		})
	}
}

// TestFeatureValues: the eleven model features of one hand-built case,
// computed by hand (FX: CNY 0.1381 USD; inflows T1 2,762 + T3 6,352.6 +
// T4 1,500 = 10,614.6 USD; all flows 13,100.4 USD).
func TestFeatureValues(t *testing.T) {
	c := handCase(t, []tx{
		{id: "T1", at: "2025-11-01T10:00:00Z", dir: "in", cpty: "X1", country: "CN", amount: "20000"},
		{id: "T2", at: "2025-11-02T09:00:00Z", dir: "out", cpty: "Y1", country: "HK", amount: "15000"},
		{id: "T3", at: "2025-11-10T10:00:00Z", dir: "in", amount: "46000", channel: "cash"},
		{id: "T4", at: "2025-11-22T10:00:00Z", dir: "in", cpty: "X2", country: "IR", amount: "1500", ccy: "USD"},
		{id: "T5", at: "2025-11-25T10:00:00Z", dir: "out", cpty: "Y2", country: "CN", amount: "3000"},
	}, func(c *Case) { c.Accounts[0].LastActivityAt = ptr(mustTime("2025-06-01T00:00:00Z")) })
	feats, facts := computeFeatures(c, DefaultConfig())
	want := map[string]struct {
		value string
		why   string
	}{
		"cash_near_threshold": {"1", "T3: CNY 46,000 is 92% of the CNY 50,000 threshold"},
		"pass_through":        {"19.5156", "T2 (2,071.5) within 48 h of T1, of 10,614.6 in: 19.51557%"},
		"fan_in":              {"2", "X1, X2 (the cash deposit has no sender account)"},
		"fan_out":             {"2", "Y1, Y2"},
		"dormant_days":        {"153", "2025-06-01 to 2025-11-01 10:00"},
		"round_amounts":       {"80", "T1, T2, T3, T5 of five are whole thousands"},
		"high_risk_geography": {"1", "T4 from Iran"},
		"turnover_vs_income":  {"6.4051", "10,614.6 in against 12,000 x 0.1381 = 1,657.2 for 30 days"},
		"velocity":            {"absent", "no transaction in the 90 days before the window: no baseline"},
		"cross_border":        {"27.2625", "T2 (HK) 2,071.5 + T4 (IR) 1,500 of 13,100.4"},
		"cash_share":          {"48.4916", "T3 6,352.6 of 13,100.4"},
	}
	if len(feats) != len(want) {
		t.Fatalf("%d features, want %d", len(feats), len(want))
	}
	for _, f := range feats {
		w, ok := want[f.def.name]
		if !ok {
			t.Errorf("unexpected feature %s", f.def.name)
			continue
		}
		if w.value == "absent" {
			if !f.missing || f.active() || f.text("en") != "no baseline" {
				t.Errorf("%s = %s (missing %v, active %v), want absent and no player: %s", f.def.name, f.value, f.missing, f.active(), w.why)
			}
			continue
		}
		if !f.value.Equal(decimal.RequireFromString(w.value)) || f.missing {
			t.Errorf("%s = %s (missing %v), want %s: %s", f.def.name, f.value, f.missing, w.value, w.why)
		}
		if f.def.name == "dormant_days" && (f.text("en") != "153 days" || f.text("zh") != "153天") {
			t.Errorf("dormant_days reads %q and %q", f.text("en"), f.text("zh"))
		}
	}
	// Facts in US dollars convert other currencies and take dollars as
	// they are: T3's CNY 46,000 x 0.1381, T4's USD 1,500.
	for name, want := range map[string]string{"cash_usd_daily_max": "6352.6", "transfer_foreign_daily_max_usd": "1500"} {
		if !facts[name].Value.Equal(decimal.RequireFromString(want)) {
			t.Errorf("%s = %s, want %s", name, facts[name].Value, want)
		}
	}
}

// TestStatutoryReports: the large-value reports of PBOC Order No. 3
// [2016] Art. 5 and the US CTR (31 CFR 1010.311/313) aggregate each
// direction of a day on its own, count ATM cash as cash, judge
// cross-border by the counterparty bank's country, and cover
// non-natural persons' transfers (Art. 5(2)) and individuals' domestic
// transfers (Art. 5(3)).
func TestStatutoryReports(t *testing.T) {
	in := func(id, at, amount, ch, country string) tx {
		x := tx{id: id, at: at, dir: "in", amount: amount, channel: ch, country: country}
		if ch != "cash" && ch != "atm" {
			x.cpty = "cp-" + id
		}
		return x
	}
	out := func(id, at, amount, ch, country string) tx {
		x := in(id, at, amount, ch, country)
		x.dir = "out"
		return x
	}
	usd := func(x tx) tx { x.ccy = "USD"; return x }
	entity := func(c *Case) { c.Customer.Type = "entity"; c.Customer.DeclaredMonthlyIncome = nil }
	hkNational := func(c *Case) { c.Customer.Country = "HK" }
	us := func(c *Case) { c.Jurisdiction = "US"; c.Customer.Country = "US" }
	const day = "2025-11-27T0"
	cases := []struct {
		name   string
		txs    []tx
		mod    func(*Case)
		report string
		fires  bool
	}{
		{"cash in 30,000 and out 25,000: apart", []tx{in("C1", day+"1:00:00Z", "30000", "cash", ""), out("C2", day+"2:00:00Z", "25000", "cash", "")}, nil, "CN-LVT-CASH", false},
		{"cash in 30,000 and 20,000: one direction", []tx{in("C1", day+"1:00:00Z", "30000", "cash", ""), in("C2", day+"2:00:00Z", "20000", "cash", "")}, nil, "CN-LVT-CASH", true},
		{"three ATM withdrawals of 20,000", []tx{out("A1", day+"1:00:00Z", "20000", "atm", ""), out("A2", day+"2:00:00Z", "20000", "atm", ""), out("A3", day+"3:00:00Z", "20000", "atm", "")}, nil, "CN-LVT-CASH", true},
		{"two ATM withdrawals of 20,000", []tx{out("A1", day+"1:00:00Z", "20000", "atm", ""), out("A2", day+"2:00:00Z", "20000", "atm", "")}, nil, "CN-LVT-CASH", false},
		{"US: cash in 6,000 and out 5,000: apart", []tx{usd(in("U1", day+"1:00:00Z", "6000", "cash", "")), usd(out("U2", day+"2:00:00Z", "5000", "cash", ""))}, us, "US-CTR", false},
		{"US: cash in 6,000 and 5,000", []tx{usd(in("U1", day+"1:00:00Z", "6000", "cash", "")), usd(in("U2", day+"2:00:00Z", "5000", "cash", ""))}, us, "US-CTR", true},
		{"US: ATM withdrawals of 6,000 and 5,000", []tx{usd(out("U1", day+"1:00:00Z", "6000", "atm", "")), usd(out("U2", day+"2:00:00Z", "5000", "atm", ""))}, us, "US-CTR", true},
		{"HK national pays a mainland landlord 250,000", []tx{out("H1", day+"1:00:00Z", "250000", "wire", "CN")}, hkNational, "CN-LVT-XBORDER", false},
		{"CN national pays 250,000 to Hong Kong", []tx{out("H1", day+"1:00:00Z", "250000", "wire", "HK")}, nil, "CN-LVT-XBORDER", true},
		{"individual domestic 600,000 pass-through", []tx{in("P1", day+"1:00:00Z", "600000", "wire", "CN"), out("P2", day+"3:00:00Z", "600000", "wire", "CN")}, nil, "CN-LVT-DOMESTIC", true},
		{"individual domestic 499,999.99", []tx{in("P1", day+"1:00:00Z", "499999.99", "wire", "CN")}, nil, "CN-LVT-DOMESTIC", false},
		{"individual domestic USD 100,000", []tx{usd(in("P1", day+"1:00:00Z", "100000", "wire", "CN"))}, nil, "CN-LVT-DOMESTIC", true},
		{"individual cross-border 600,000 is not domestic", []tx{in("P1", day+"1:00:00Z", "600000", "wire", "SG")}, nil, "CN-LVT-DOMESTIC", false},
		{"entity transfers 2,000,000", []tx{in("E1", day+"1:00:00Z", "1500000", "wire", "CN"), in("E2", day+"2:00:00Z", "500000", "wire", "SG")}, entity, "CN-LVT-TRANSFER-ENTITY", true},
		{"entity transfers 1,999,999.99", []tx{in("E1", day+"1:00:00Z", "1999999.99", "wire", "CN")}, entity, "CN-LVT-TRANSFER-ENTITY", false},
		{"entity in 1,500,000 and out 1,500,000: apart", []tx{in("E1", day+"1:00:00Z", "1500000", "wire", "CN"), out("E2", day+"2:00:00Z", "1500000", "wire", "CN")}, entity, "CN-LVT-TRANSFER-ENTITY", false},
		{"entity USD 200,000", []tx{usd(out("E1", day+"1:00:00Z", "200000", "wire", "US"))}, entity, "CN-LVT-TRANSFER-ENTITY", true},
		{"an individual's transfers are not Art. 5(2)", []tx{in("E1", day+"1:00:00Z", "2000000", "wire", "CN")}, nil, "CN-LVT-TRANSFER-ENTITY", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := fired(handCase(t, tc.txs, tc.mod))
			if _, ok := got[tc.report]; ok != tc.fires {
				t.Errorf("%s fired %v, want %v (fired: %v)", tc.report, ok, tc.fires, got)
			}
		})
	}
}

// TestTransferNeedsCountry: a transfer whose counterparty bank country is
// unknown is refused naming the field, rather than counted as domestic.
func TestTransferNeedsCountry(t *testing.T) {
	c := &Case{CaseID: "X", Jurisdiction: "CN", AsOf: mustTime("2025-11-28T12:00:00Z"),
		Customer: Customer{CustomerID: "C", Type: "individual", Country: "CN"}, Accounts: []Account{{AccountID: "A"}},
		Transactions: []Transaction{{TxnID: "T", Timestamp: mustTime("2025-11-27T01:00:00Z"), From: Party{AccountID: "A"}, To: Party{AccountID: "B"},
			Amount: Money{Amount: decimal.NewFromInt(250000), Currency: "CNY"}, Channel: "wire"}}}
	err := c.Validate(DefaultConfig(), "")
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "transactions[0].to.country" {
		t.Fatalf("a wire without the counterparty's country: %v", err)
	}
	c.Transactions[0].Channel, c.Transactions[0].To = "atm", Party{}
	if err := c.Validate(DefaultConfig(), ""); err != nil {
		t.Errorf("an ATM withdrawal without a counterparty: %v", err)
	}
}

// TestSharesWithoutContributions: when no feature moves the model's
// score, every contribution and share is zero (not NaN).
func TestSharesWithoutContributions(t *testing.T) {
	r, err := NewAssessor(DefaultConfig(), fixedModel(0.5)).Assess(context.Background(), loadCase(t, "structuring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Explanation.Players == 0 {
		t.Fatal("no players: the case does not test shares")
	}
	for _, f := range r.Features {
		if f.Phi != 0 || f.Share != 0 {
			t.Errorf("%s: phi %v share %v", f.Name, f.Phi, f.Share)
		}
	}
}

// TestHumanReviewAtLevel: review is required from the configured level
// (high) up, including at it, and not below.
func TestHumanReviewAtLevel(t *testing.T) {
	// fixedModel(0.5) scores 0.5: a medium model level (0.3 to 0.6).
	for _, c := range []struct {
		file   string
		level  Level
		review bool
	}{
		{"structuring.json", LevelHigh, true}, // the STRUCTURING rule's floor
		{"salary.json", LevelMedium, false},
	} {
		r, err := NewAssessor(DefaultConfig(), fixedModel(0.5)).Assess(context.Background(), loadCase(t, c.file))
		if err != nil {
			t.Fatal(err)
		}
		if r.ModelLevel != LevelMedium || r.RiskLevel != c.level || r.HumanReviewRequired != c.review {
			t.Errorf("%s: model %s, risk %s, review %v; want risk %s, review %v", c.file, r.ModelLevel, r.RiskLevel, r.HumanReviewRequired, c.level, c.review)
		}
	}
}

// keyModel scores 0.9 a prompt whose values row gives feature A
// (cash_near_threshold) the value 3, else 0.1, and checks the feature
// list names A and B.
type keyModel struct{ t *testing.T }

func (m keyModel) Score(_ context.Context, prompts []string, _, _ string) (Scores, error) {
	s := Scores{P: make([]float64, len(prompts))}
	for i, p := range prompts {
		if !strings.Contains(p, "\nA. cash transactions, or days' cash, just below the reporting threshold\nB. share of inflows moved on within 48 hours\n") {
			m.t.Fatalf("prompt without feature A's line: %q", p)
		}
		s.P[i] = 0.1
		if _, row, _ := strings.Cut(p, "\nValues:"); strings.Contains(row, " A=3;") {
			s.P[i] = 0.9
		}
	}
	return s, nil
}

// TestScoreIsOfTheCaseItself: the risk score is the model's score of the
// prompt with the case's own values (structuring.json has three cash
// deposits just below the threshold), and the baseline's is of the
// baseline values: the coalitions are not inverted.
func TestScoreIsOfTheCaseItself(t *testing.T) {
	r, err := NewAssessor(DefaultConfig(), keyModel{t}).Assess(context.Background(), loadCase(t, "structuring.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.RiskScore != 0.9 || r.Explanation.FBaseline != 0.1 {
		t.Errorf("score %v, baseline %v; want 0.9 and 0.1", r.RiskScore, r.Explanation.FBaseline)
	}
}

// TestExactUpToTenFeatures: exact Shapley values are the default up to
// MaxExactFeatures active features, permutation sampling beyond.
func TestExactUpToTenFeatures(t *testing.T) {
	c := loadCase(t, "eight.json") // 8 active features
	cash := func(id, at, amount string) Transaction {
		return Transaction{TxnID: id, Timestamp: mustTime(at), To: Party{AccountID: "E-1"},
			Amount: Money{Amount: decimal.RequireFromString(amount), Currency: "CNY"}, Channel: "cash"}
	}
	seen := map[int]bool{}
	for _, add := range []Transaction{
		{}, // as it is
		cash("C1", "2025-11-24T01:00:00Z", "300"),   // cash share
		cash("H0", "2025-08-15T01:00:00Z", "120"),   // a baseline for velocity
		cash("C2", "2025-11-25T01:00:00Z", "46000"), // cash just below the threshold
	} {
		if add.TxnID != "" {
			c.Transactions = append(c.Transactions, add)
		}
		r, err := NewAssessor(DefaultConfig(), &textModel{}).Assess(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		ex := r.Explanation
		seen[ex.Players] = true
		want := MethodExact
		if ex.Players > MaxExactFeatures {
			want = MethodPermutation
		}
		if ex.Method != want {
			t.Errorf("%d players: %s, want %s", ex.Players, ex.Method, want)
		}
	}
	if !seen[MaxExactFeatures] || !seen[MaxExactFeatures+1] {
		t.Errorf("player counts seen %v: the test needs %d and %d", seen, MaxExactFeatures, MaxExactFeatures+1)
	}
}

// TestGrades: a suspicion rule's severity grows with how far its facts
// are past the threshold (income mismatch at 60x is critical, not
// medium, and reaches human review).
func TestGrades(t *testing.T) {
	in := func(amount string) []tx { // one inflow against CNY 12,000 a month
		return []tx{{id: "P1", at: "2025-11-01T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: amount}}
	}
	near := func(n int) []tx { // n cash deposits of CNY 46,000, days apart
		var out []tx
		for i := range n {
			out = append(out, tx{id: fmt.Sprint("S", i), at: fmt.Sprintf("2025-11-%02dT02:00:00Z", 10+2*i), dir: "in", amount: "46000", channel: "cash"})
		}
		return out
	}
	cases := []struct {
		name, rule string
		txs        []tx
		want       Level
	}{
		{"income 5x", "PROFILE-MISMATCH", in("60000"), LevelMedium},
		{"income 19.99x", "PROFILE-MISMATCH", in("239880"), LevelMedium},
		{"income 20x", "PROFILE-MISMATCH", in("240000"), LevelHigh},
		{"income 49.99x", "PROFILE-MISMATCH", in("599880"), LevelHigh},
		{"income 60x", "PROFILE-MISMATCH", in("720000"), LevelCritical},
		{"4 cash deposits just below", "STRUCTURING", near(4), LevelHigh},
		{"5 cash deposits just below", "STRUCTURING", near(5), LevelCritical},
	}
	cfg := DefaultConfig()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := handCase(t, tc.txs, nil)
			_, facts := computeFeatures(c, cfg)
			var got Level
			for _, r := range cfg.Rules.evaluate(c.Jurisdiction, facts, nil) {
				if r.ID == tc.rule {
					got = r.Severity
				}
			}
			if got != tc.want {
				t.Errorf("%s severity %q, want %q", tc.rule, got, tc.want)
			}
			res := assess(t, c, fixedModel(0.01))
			if res.RiskLevel != tc.want || res.HumanReviewRequired != (tc.want.rank() >= LevelHigh.rank()) {
				t.Errorf("risk level %s (review %v), want %s", res.RiskLevel, res.HumanReviewRequired, tc.want)
			}
		})
	}
}

// TestReportDeadlines: PBOC large-value reports are due within 5 working
// days (Order No. 3 [2016] Art. 15), counted on the State Council's
// holiday calendar; a US CTR within 15 days (31 CFR 1010.306(a)(3)).
func TestReportDeadlines(t *testing.T) {
	cfg := DefaultConfig()
	cn, us := cfg.Jurisdictions["CN"], cfg.Jurisdictions["US"]
	cases := []struct {
		j         Jurisdiction
		day, want string
	}{
		{cn, "2025-11-20", "2025-11-27"}, // Thursday: Fri, Mon-Thu
		{cn, "2025-11-21", "2025-11-28"}, // Friday
		{cn, "2025-09-26", "2025-10-10"}, // Friday: Sun 28 Sep worked, Mon-Tue, then the National Day holiday to 8 Oct, Thu 9, Fri 10
		{cn, "2025-01-24", "2025-02-07"}, // Sun 26 Jan worked, Mon 27, the Spring Festival to 4 Feb, Wed 5, Thu 6, Fri 7
		{cn, "2025-12-26", ""},           // runs into 2026, which the calendar does not hold
		{us, "2025-11-20", "2025-12-05"},
		{us, "2025-12-26", "2026-01-10"},
	}
	for _, tc := range cases {
		if got := tc.j.dueBy(tc.day); got != tc.want {
			t.Errorf("%s report on %s: due %q, want %q", tc.j.Country, tc.day, got, tc.want)
		}
	}
	// The calendar is what the notice says: holidays on weekdays, worked
	// days on weekends.
	for _, d := range cn.Calendar.Holidays {
		if wd := mustTime(d + "T00:00:00Z").Weekday(); wd == time.Saturday || wd == time.Sunday {
			t.Errorf("holiday %s is a %s", d, wd)
		}
	}
	for _, d := range cn.Calendar.Workdays {
		if wd := mustTime(d + "T00:00:00Z").Weekday(); wd != time.Saturday && wd != time.Sunday {
			t.Errorf("worked weekend day %s is a %s", d, wd)
		}
	}
}

// fixedModel scores every prompt the same: the model's level is then
// its own, and the risk level shows the rules' floor above it.
type fixedModel float64

func (m fixedModel) Score(_ context.Context, prompts []string, _, _ string) (Scores, error) {
	s := Scores{P: make([]float64, len(prompts))}
	for i := range s.P {
		s.P[i] = float64(m)
	}
	return s, nil
}

// TestPassThroughMatched: outflows are matched against what is left of
// the inflows before them, so money passes through once, and the
// materiality amount is what passed, not what came in.
func TestPassThroughMatched(t *testing.T) {
	cases := []struct {
		name       string
		txs        []tx
		share, usd string
	}{
		{"two outflows of one inflow", []tx{{id: "I", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100000"},
			{id: "O1", at: "2025-11-20T01:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "80000"},
			{id: "O2", at: "2025-11-20T02:00:00Z", dir: "out", cpty: "z", country: "CN", amount: "80000"}}, "100", "13810"},
		{"a tenth moved on", []tx{{id: "I", at: "2025-11-20T00:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100000"},
			{id: "O1", at: "2025-11-20T01:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "10000"}}, "10", "1381"},
		{"an inflow after the outflow passes nothing", []tx{{id: "O1", at: "2025-11-20T00:00:00Z", dir: "out", cpty: "y", country: "CN", amount: "10000"},
			{id: "I", at: "2025-11-20T01:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100000"}}, "0", "0"},
	}
	for _, tc := range cases {
		_, facts := computeFeatures(handCase(t, tc.txs, nil), DefaultConfig())
		if pt, usd := facts["pass_through"].Value, facts["pass_through_usd"].Value; !pt.Equal(decimal.RequireFromString(tc.share)) || !usd.Equal(decimal.RequireFromString(tc.usd)) {
			t.Errorf("%s: pass_through %s%%, USD %s; want %s%%, USD %s", tc.name, pt, usd, tc.share, tc.usd)
		}
	}
}

// BenchmarkLargeCase computes the features of a case of the largest size
// (MaxTransactions), alternating inflows and outflows within the hold:
// pass-through matching is linear in the transactions.
func BenchmarkLargeCase(b *testing.B) {
	t0 := mustTime("2025-11-01T00:00:00Z")
	c := &Case{CaseID: "BIG", Jurisdiction: "CN", AsOf: mustTime("2025-11-28T12:00:00Z"),
		Customer: Customer{CustomerID: "C", Type: "individual", Country: "CN"}, Accounts: []Account{{AccountID: "A"}}}
	for i := range MaxTransactions {
		own, other := Party{AccountID: "A", Country: "CN"}, Party{AccountID: fmt.Sprint("X", i%97), BankID: "B", Country: "CN"}
		from, to := other, own
		if i%2 == 1 {
			from, to = own, other
		}
		c.Transactions = append(c.Transactions, Transaction{TxnID: fmt.Sprint("T", i), Timestamp: t0.Add(time.Duration(i) * time.Minute),
			From: from, To: to, Amount: Money{Amount: decimal.NewFromInt(int64(1000 + i%7)), Currency: "CNY"}, Channel: "wire"})
	}
	cfg := DefaultConfig()
	if err := c.Validate(cfg, ""); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		computeFeatures(c, cfg)
	}
}

// TestLevelSetBy: what set the level, and which rules, for a model
// scoring below, at and above the rules' floor (CNY 46,000 and 45,000
// in cash: structuring, high).
func TestLevelSetBy(t *testing.T) {
	near := []tx{{id: "S1", at: "2025-11-20T02:00:00Z", dir: "in", amount: "46000", channel: "cash"},
		{id: "S2", at: "2025-11-21T02:00:00Z", dir: "in", amount: "45000", channel: "cash"}}
	quiet := []tx{{id: "Q1", at: "2025-11-20T02:00:00Z", dir: "in", cpty: "x", country: "CN", amount: "100"}}
	cases := []struct {
		name   string
		txs    []tx
		score  float64
		level  Level
		by     string
		floors []string
	}{
		{"rules above the model", near, 0.05, LevelHigh, SetByRules, []string{"STRUCTURING"}},
		{"rules and model alike", near, 0.7, LevelHigh, SetByBoth, []string{"STRUCTURING"}},
		{"model above the rules", near, 0.9, LevelCritical, SetByModel, []string{"STRUCTURING"}},
		{"model alone", quiet, 0.4, LevelMedium, SetByModel, nil},
	}
	for _, tc := range cases {
		c := handCase(t, tc.txs, func(c *Case) {
			c.Customer.DeclaredMonthlyIncome = &Money{Amount: decimal.NewFromInt(100000), Currency: "CNY"}
		})
		r := assess(t, c, fixedModel(tc.score))
		if r.RiskLevel != tc.level || r.LevelSetBy != tc.by || !slices.Equal(r.FloorRules, tc.floors) {
			t.Errorf("%s: level %s set by %q from %v; want %s by %q from %v", tc.name, r.RiskLevel, r.LevelSetBy, r.FloorRules, tc.level, tc.by, tc.floors)
		}
	}
}

// TestDormantDays: the silence before an own account's first transaction
// in the window counts whichever way the last earlier payment went, is
// measured for each account on its own, and counts from 30 days
// (minDormantDays) up. Each case is as of 2025-11-28 12:00 UTC, its
// window from 2025-10-29 12:00; B is a second own account.
func TestDormantDays(t *testing.T) {
	type btx struct{ id, at, dir string } // a transaction of account B
	for _, tc := range []struct {
		name     string
		a        []tx
		b        []btx
		want     int64
		evidence string
	}{
		{"last payment out", []tx{{id: "P", at: "2025-09-01T10:00:00Z", dir: "out", cpty: "Y", country: "CN", amount: "100"},
			{id: "W", at: "2025-11-05T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"}}, nil, 65, "W"},
		{"last payment in", []tx{{id: "P", at: "2025-09-01T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"},
			{id: "W", at: "2025-11-05T10:00:00Z", dir: "out", cpty: "Y", country: "CN", amount: "100"}}, nil, 65, "W"},
		{"exactly 30 days", []tx{{id: "P", at: "2025-10-06T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"},
			{id: "W", at: "2025-11-05T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"}}, nil, 30, "W"},
		{"29 days is ordinary", []tx{{id: "P", at: "2025-10-07T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"},
			{id: "W", at: "2025-11-05T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"}}, nil, 0, ""},
		// B moves first in the window; A's silence ends with A's own
		// first transaction, not B's.
		{"each account its own first", []tx{{id: "P", at: "2025-09-01T10:00:00Z", dir: "out", cpty: "Y", country: "CN", amount: "100"},
			{id: "W", at: "2025-11-05T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"}},
			[]btx{{"BW", "2025-10-30T10:00:00Z", "in"}}, 65, "W"},
		// Another account's earlier payments do not end A's silence.
		{"others' payments are not A's", []tx{{id: "P", at: "2025-09-01T10:00:00Z", dir: "out", cpty: "Y", country: "CN", amount: "100"},
			{id: "W", at: "2025-11-05T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"}},
			[]btx{{"BP", "2025-10-20T10:00:00Z", "out"}}, 65, "W"},
		// Two equal silences: the evidence is the first account's.
		{"tie goes to the first account", []tx{{id: "P", at: "2025-09-01T10:00:00Z", dir: "out", cpty: "Y", country: "CN", amount: "100"},
			{id: "W", at: "2025-11-05T10:00:00Z", dir: "in", cpty: "X", country: "CN", amount: "100"}},
			[]btx{{"BP", "2025-09-02T10:00:00Z", "out"}, {"BW", "2025-11-06T10:00:00Z", "in"}}, 65, "W"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := handCase(t, tc.a, func(c *Case) {
				c.Accounts = append(c.Accounts, Account{AccountID: "B"})
				for _, b := range tc.b {
					own, other := Party{AccountID: "B", Country: "CN"}, Party{AccountID: "Z", BankID: "B-Z", Country: "CN"}
					from, to := other, own
					if b.dir == "out" {
						from, to = own, other
					}
					c.Transactions = append(c.Transactions, Transaction{TxnID: b.id, Timestamp: mustTime(b.at), From: from, To: to,
						Amount: Money{Amount: decimal.NewFromInt(100), Currency: "CNY"}, Channel: "wire"})
				}
			})
			_, facts := computeFeatures(c, DefaultConfig())
			f := facts["dormant_days"]
			if !f.Value.Equal(decimal.NewFromInt(tc.want)) || strings.Join(f.Evidence, ",") != tc.evidence {
				t.Errorf("dormant_days %s (evidence %v), want %d (%q)", f.Value, f.Evidence, tc.want, tc.evidence)
			}
		})
	}
}

// TestMissingFiresNoRule: a missing declared income and a missing
// velocity baseline fire no rule, even when a bank lowers the thresholds
// below 1, and satisfy no condition of any operator.
func TestMissingFiresNoRule(t *testing.T) {
	y := string(DefaultYAML())
	for _, edit := range [][2]string{
		{`{fact: turnover_vs_income, op: ">=", value: "5"}`, `{fact: turnover_vs_income, op: ">=", value: "0.5"}`},
		{`{fact: velocity, op: ">=", value: "4"}`, `{fact: velocity, op: ">=", value: "0.5"}`},
	} {
		if !strings.Contains(y, edit[0]) {
			t.Fatalf("default.yaml has no %s", edit[0])
		}
		y = strings.Replace(y, edit[0], edit[1], 1)
	}
	cfg, err := ParseConfig([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	c := handCase(t, series("N", 12, "2025-11-25T01:00:00Z", "in", "30000", 12), func(c *Case) { c.Customer.DeclaredMonthlyIncome = nil })
	_, facts := computeFeatures(c, cfg)
	for _, r := range cfg.Rules.evaluate(c.Jurisdiction, facts, map[string]int{}) {
		if r.ID == "PROFILE-MISMATCH" || r.ID == "VELOCITY" {
			t.Errorf("%s fired on missing data (turnover_vs_income %s, velocity %s)", r.ID, facts["turnover_vs_income"].Value, facts["velocity"].Value)
		}
	}
	// Nor does any other comparison: "at most" holds on no data no more
	// than "at least" does.
	for _, name := range []string{"turnover_vs_income", "velocity"} {
		for _, op := range []string{">=", ">", "<=", "<", "==", "!="} {
			for _, v := range []string{"-1", "0", "1"} {
				cd := Cond{Fact: name, Op: op, Value: decimal.RequireFromString(v)}
				if ok, _, _ := cd.evidence(facts[name]); ok {
					t.Errorf("%s %s %s holds on missing data", name, op, v)
				}
			}
		}
	}
	// The same case with an income of CNY 1,000 a month fires both.
	c.Customer.DeclaredMonthlyIncome = &Money{Amount: decimal.NewFromInt(1000), Currency: "CNY"}
	c.Transactions = append(c.Transactions, Transaction{TxnID: "OLD", Timestamp: mustTime("2025-09-01T01:00:00Z"),
		From: Party{AccountID: "X", BankID: "B-X", Country: "CN"}, To: Party{AccountID: "A", Country: "CN"},
		Amount: Money{Amount: decimal.NewFromInt(100), Currency: "CNY"}, Channel: "wire"})
	_, facts = computeFeatures(c, cfg)
	got := map[string]bool{}
	for _, r := range cfg.Rules.evaluate(c.Jurisdiction, facts, map[string]int{}) {
		got[r.ID] = true
	}
	if !got["PROFILE-MISMATCH"] || !got["VELOCITY"] {
		t.Errorf("with data, fired %v (turnover_vs_income %s, velocity %s)", got, facts["turnover_vs_income"].Value, facts["velocity"].Value)
	}
}

// TestPerDayConditions: a condition on a per-day fact holds on the days
// that satisfy it; with no day at all, "at most" holds (no activity is
// at most any amount) and "at least" does not; days that all fail it
// fail it, whatever 0 would do.
func TestPerDayConditions(t *testing.T) {
	atMost := Cond{Fact: "cash_daily_max", Op: "<=", Value: decimal.NewFromInt(100)}
	atLeast := Cond{Fact: "cash_daily_max", Op: ">=", Value: decimal.NewFromInt(100)}
	none := &Fact{Groups: []Group{}}
	days := &Fact{Groups: []Group{{Key: "2025-11-20 in", Value: decimal.NewFromInt(500), Evidence: []string{"T1"}}}}
	for _, tc := range []struct {
		name string
		cd   Cond
		f    *Fact
		want bool
	}{{"at most, no day", atMost, none, true}, {"at least, no day", atLeast, none, false},
		{"at most, a bigger day", atMost, days, false}, {"at least, a bigger day", atLeast, days, true}} {
		if ok, _, _ := tc.cd.evidence(tc.f); ok != tc.want {
			t.Errorf("%s: %v", tc.name, ok)
		}
	}
}

// TestCondOperators: each operator below, at and above its value.
func TestCondOperators(t *testing.T) {
	want := map[string][3]bool{ // below, at, above
		">=": {false, true, true}, ">": {false, false, true}, "<=": {true, true, false},
		"<": {true, false, false}, "==": {false, true, false}, "!=": {true, false, true}, "=>": {false, false, false},
	}
	for op, w := range want {
		cd := Cond{Fact: "velocity", Op: op, Value: decimal.RequireFromString("4")}
		for i, v := range []string{"3.99", "4", "4.01"} {
			if got := cd.holds(decimal.RequireFromString(v)); got != w[i] {
				t.Errorf("%s %s %s: %v", v, op, cd.Value, got)
			}
		}
	}
}

// TestModelLevelBoundaries: a score at a level's threshold has that
// level; just under it, the level below (default levels 0.3, 0.6, 0.85).
func TestModelLevelBoundaries(t *testing.T) {
	cfg := DefaultConfig()
	l := cfg.Levels
	for _, tc := range []struct {
		score float64
		want  Level
	}{{0, LevelLow}, {math.Nextafter(l.Medium, 0), LevelLow}, {l.Medium, LevelMedium}, {math.Nextafter(l.High, 0), LevelMedium},
		{l.High, LevelHigh}, {math.Nextafter(l.Critical, 0), LevelHigh}, {l.Critical, LevelCritical}, {1, LevelCritical}} {
		if got := cfg.modelLevel(tc.score); got != tc.want {
			t.Errorf("score %v: %s, want %s", tc.score, got, tc.want)
		}
	}
}
