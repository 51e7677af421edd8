package aml

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/shopspring/decimal"
)

// Case is one AML scoring request: a customer, their accounts and the
// transactions to assess. Field names follow public AML data sets (IBM
// AMLworld, SAML-D) so that their exports map onto it directly.
type Case struct {
	CaseID       string        `json:"case_id"`
	Jurisdiction string        `json:"jurisdiction"` // "CN" or "US"
	AsOf         time.Time     `json:"as_of"`
	Customer     Customer      `json:"customer"`
	Accounts     []Account     `json:"accounts"`
	Transactions []Transaction `json:"transactions"`
	Options      Options       `json:"options"`
}

// Customer is the subject of a case.
type Customer struct {
	CustomerID            string `json:"customer_id"`
	Type                  string `json:"type"` // "individual" or "entity"
	Country               string `json:"country"`
	Occupation            string `json:"occupation,omitempty"`
	DeclaredMonthlyIncome *Money `json:"declared_monthly_income,omitempty"`
	RiskRating            string `json:"risk_rating,omitempty"`
	PII                   *PII   `json:"pii,omitempty"`
}

// PII is personal data a case may carry; it never reaches the model
// prompt, and the audit log keeps it masked.
type PII struct {
	Name     string `json:"name,omitempty"`
	IDNumber string `json:"id_number,omitempty"`
	Mobile   string `json:"mobile,omitempty"`
}

// Account is one of the customer's accounts.
type Account struct {
	AccountID      string     `json:"account_id"`
	OpenedAt       *time.Time `json:"opened_at,omitempty"`
	LastActivityAt *time.Time `json:"last_activity_at,omitempty"`
}

// Party is one side of a transaction.
type Party struct {
	AccountID string `json:"account_id,omitempty"`
	BankID    string `json:"bank_id,omitempty"`
	Country   string `json:"country,omitempty"`
	// DepositorID identifies who paid cash in, when the bank recorded
	// it (its own party id for the person; never a name or an ID
	// number): a deposit by someone other than the customer is
	// third-party cash.
	DepositorID string `json:"depositor_id,omitempty"`
}

// Money is an exact decimal amount in a currency (ISO 4217).
type Money struct {
	Amount   decimal.Decimal `json:"amount"`
	Currency string          `json:"currency"`
}

// Transaction is one movement of money.
type Transaction struct {
	TxnID          string    `json:"txn_id"`
	Timestamp      time.Time `json:"timestamp"`
	From           Party     `json:"from"`
	To             Party     `json:"to"`
	Amount         Money     `json:"amount"`
	AmountReceived *Money    `json:"amount_received,omitempty"`
	Channel        string    `json:"channel"`
	Memo           string    `json:"memo,omitempty"`
}

// Options tune one assessment.
type Options struct {
	Explain   Explain  `json:"explain"`
	Languages []string `json:"languages,omitempty"` // "zh", "en" (default both)
}

// Explain chooses the attribution method.
type Explain struct {
	// Method is "exact_shapley", "permutation" or "" (exact up to
	// MaxExactFeatures active features, permutation sampling beyond).
	Method  string  `json:"method,omitempty"`
	Samples int     `json:"samples,omitempty"` // permutations (default 64)
	Seed    *uint64 `json:"seed,omitempty"`    // default 0
}

// IsCash says whether a channel moves cash: over the counter, or at an
// ATM (PBOC Order No. 3 [2016] Art. 5(1) names every form of cash
// receipt and payment; 31 CFR 1010.311 every currency transaction).
func IsCash(channel string) bool { return channel == "cash" || channel == "atm" }

// Channels are the accepted transaction channels.
var Channels = []string{"cash", "wire", "ach", "cheque", "card", "crypto", "transfer", "mobile", "atm", "other"}

// Limits on one request.
const (
	MaxCases         = 64
	MaxTransactions  = 20000
	MaxAccounts      = 1000
	MaxExactFeatures = 10
	MaxSamples       = 1024
	maxText          = 512
)

// FieldError is a validation error that names the offending field by its
// JSON path, such as "transactions[3].amount.amount".
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// DecodeCases reads a request body: one case, or {"cases": [...]}. It
// reports whether the body was a list. Unknown fields are errors.
func DecodeCases(data []byte) ([]Case, bool, error) {
	var probe struct {
		Cases json.RawMessage `json:"cases"`
	}
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, false, decodeErr(err)
	}
	if probe.Cases != nil {
		var list struct {
			Cases []Case `json:"cases"`
		}
		if err := strictUnmarshal(data, &list); err != nil {
			return nil, true, err
		}
		switch {
		case len(list.Cases) == 0:
			return nil, true, fieldErr("cases", "at least one case is needed")
		case len(list.Cases) > MaxCases:
			return nil, true, fieldErr("cases", "at most %d cases per request, got %d", MaxCases, len(list.Cases))
		}
		return list.Cases, true, nil
	}
	var c Case
	if err := strictUnmarshal(data, &c); err != nil {
		return nil, false, err
	}
	return []Case{c}, false, nil
}

func strictUnmarshal(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return decodeErr(err)
	}
	if _, err := d.Token(); err != io.EOF {
		return &FieldError{Field: "body", Msg: "trailing data after the JSON value"}
	}
	return nil
}

// jsonPath writes encoding/json's field path ("cases.0.case_id": Go
// 1.27 puts list indices in it, 1.26 did not) the way Validate names
// fields: "cases[0].case_id".
func jsonPath(p string) string { return listIndex.ReplaceAllString(p, "[$1]") }

var listIndex = regexp.MustCompile(`\.(\d+)`)

// decodeErr names the field of a JSON decoding error where it can.
func decodeErr(err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	var pe *time.ParseError
	switch {
	case errors.As(err, &te):
		field := jsonPath(te.Field)
		if field == "" {
			field = "body" // the top-level value
		}
		return fieldErr(field, "expected %s, got JSON %s", te.Type, te.Value)
	case errors.As(err, &se):
		return fieldErr("body", "malformed JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &pe):
		return fieldErr("body", "timestamps must be RFC 3339: %v", pe)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.TrimPrefix(err.Error(), "json: unknown field ")
		if unq := strings.Trim(name, `"`); unq != "" {
			return fieldErr(unq, "unknown field")
		}
		return fieldErr("body", "unknown field %s", name)
	}
	return fieldErr("body", "%v", err)
}

// Validate checks a decoded case against cfg (currencies, countries,
// limits), naming the first offending field. prefix is prepended to
// field paths (e.g. "cases[2].").
func (c *Case) Validate(cfg *Config, prefix string) error {
	f := func(field, format string, args ...any) error { return fieldErr(prefix+field, format, args...) }
	if err := checkText(c.CaseID, true); err != nil {
		return f("case_id", "%v", err)
	}
	if _, ok := cfg.Jurisdictions[c.Jurisdiction]; !ok {
		return f("jurisdiction", "must be one of %s, got %q", strings.Join(cfg.jurisdictionNames(), ", "), c.Jurisdiction)
	}
	if c.AsOf.IsZero() {
		return f("as_of", "required (RFC 3339)")
	}
	day := c.AsOf.In(cfg.Jurisdictions[c.Jurisdiction].loc).Format(time.DateOnly)
	for _, r := range cfg.references() {
		if err := r.covers(day); err != nil {
			return f("as_of", "%v", err)
		}
	}
	cu := &c.Customer
	if err := checkText(cu.CustomerID, true); err != nil {
		return f("customer.customer_id", "%v", err)
	}
	if cu.Type != "individual" && cu.Type != "entity" {
		return f("customer.type", `must be "individual" or "entity", got %q`, cu.Type)
	}
	if !isCountry(cu.Country) {
		return f("customer.country", "must be an ISO 3166-1 alpha-2 code, got %q", cu.Country)
	}
	for name, s := range map[string]string{"occupation": cu.Occupation, "risk_rating": cu.RiskRating} {
		if err := checkText(s, false); err != nil {
			return f("customer."+name, "%v", err)
		}
	}
	if m := cu.DeclaredMonthlyIncome; m != nil {
		if err := cfg.checkMoney(*m, false); err != nil {
			return f("customer.declared_monthly_income", "%v", err)
		}
	}
	if p := cu.PII; p != nil {
		for name, s := range map[string]string{"name": p.Name, "id_number": p.IDNumber, "mobile": p.Mobile} {
			if err := checkText(s, false); err != nil {
				return f("customer.pii."+name, "%v", err)
			}
		}
	}
	switch {
	case len(c.Accounts) == 0:
		return f("accounts", "at least one account of the customer is needed")
	case len(c.Accounts) > MaxAccounts:
		return f("accounts", "at most %d accounts, got %d", MaxAccounts, len(c.Accounts))
	case len(c.Transactions) > MaxTransactions:
		return f("transactions", "at most %d transactions, got %d", MaxTransactions, len(c.Transactions))
	}
	own := map[string]bool{}
	for i, a := range c.Accounts {
		if err := checkText(a.AccountID, true); err != nil {
			return f(fmt.Sprintf("accounts[%d].account_id", i), "%v", err)
		}
		if own[a.AccountID] {
			return f(fmt.Sprintf("accounts[%d].account_id", i), "duplicate account %q", a.AccountID)
		}
		own[a.AccountID] = true
	}
	ids := map[string]bool{}
	for i, t := range c.Transactions {
		p := fmt.Sprintf("transactions[%d].", i)
		if err := checkText(t.TxnID, true); err != nil {
			return f(p+"txn_id", "%v", err)
		}
		if ids[t.TxnID] {
			return f(p+"txn_id", "duplicate transaction %q", t.TxnID)
		}
		ids[t.TxnID] = true
		switch {
		case t.Timestamp.IsZero():
			return f(p+"timestamp", "required (RFC 3339)")
		case t.Timestamp.After(c.AsOf):
			return f(p+"timestamp", "%s is after as_of %s", t.Timestamp.Format(time.RFC3339), c.AsOf.Format(time.RFC3339))
		}
		if !slices.Contains(Channels, t.Channel) {
			return f(p+"channel", "must be one of %s, got %q", strings.Join(Channels, ", "), t.Channel)
		}
		if err := cfg.checkMoney(t.Amount, true); err != nil {
			return f(p+"amount", "%v", err)
		}
		if t.AmountReceived != nil {
			if err := cfg.checkMoney(*t.AmountReceived, true); err != nil {
				return f(p+"amount_received", "%v", err)
			}
		}
		for side, pt := range map[string]Party{"from": t.From, "to": t.To} {
			if pt.Country != "" && !isCountry(pt.Country) {
				return f(p+side+".country", "must be an ISO 3166-1 alpha-2 code, got %q", pt.Country)
			}
			for name, s := range map[string]string{"account_id": pt.AccountID, "bank_id": pt.BankID, "depositor_id": pt.DepositorID} {
				if err := checkText(s, false); err != nil {
					return f(p+side+"."+name, "%v", err)
				}
			}
		}
		if t.To.DepositorID != "" {
			return f(p+"to.depositor_id", "only on the from side: who paid cash in")
		}
		if t.From.DepositorID != "" && !IsCash(t.Channel) {
			return f(p+"from.depositor_id", "only for cash paid in (channel cash or atm), got channel %q", t.Channel)
		}
		if err := checkText(t.Memo, false); err != nil {
			return f(p+"memo", "%v", err)
		}
		if !own[t.From.AccountID] && !own[t.To.AccountID] {
			return f(p+"from.account_id", "neither from nor to is one of the customer's accounts")
		}
		if !IsCash(t.Channel) && (t.From.AccountID == "" || t.To.AccountID == "") {
			side := "from"
			if t.From.AccountID != "" {
				side = "to"
			}
			return f(p+side+".account_id", "required unless the channel is cash or atm")
		}
		// A transfer's counterparty bank country decides whether it is
		// cross-border; unknown, it could be either, and domestic is not
		// a safe guess.
		if !IsCash(t.Channel) && !(own[t.From.AccountID] && own[t.To.AccountID]) {
			side, pt := "to", t.To
			if own[t.To.AccountID] {
				side, pt = "from", t.From
			}
			if pt.Country == "" {
				return f(p+side+".country", "required for a transfer: the counterparty bank's country decides whether it is cross-border")
			}
		}
	}
	e := &c.Options.Explain
	switch e.Method {
	case "", MethodExact, MethodPermutation:
	default:
		return f("options.explain.method", `must be %q or %q, got %q`, MethodExact, MethodPermutation, e.Method)
	}
	if e.Samples < 0 || e.Samples > MaxSamples {
		return f("options.explain.samples", "must be between 1 and %d, got %d", MaxSamples, e.Samples)
	}
	for i, l := range c.Options.Languages {
		if l != "zh" && l != "en" {
			return f(fmt.Sprintf("options.languages[%d]", i), `must be "zh" or "en", got %q`, l)
		}
	}
	return nil
}

func checkText(s string, required bool) error {
	switch {
	case required && strings.TrimSpace(s) == "":
		return errors.New("required")
	case len(s) > maxText:
		return fmt.Errorf("at most %d bytes", maxText)
	case strings.ContainsAny(s, "\x00\r\n"):
		return errors.New("must not contain NUL or line breaks")
	}
	return nil
}

func isCountry(s string) bool {
	return len(s) == 2 && s[0] >= 'A' && s[0] <= 'Z' && s[1] >= 'A' && s[1] <= 'Z'
}
