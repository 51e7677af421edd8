package aml

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // jurisdictions' time zones, also in slim images

	"github.com/shopspring/decimal"
	"gopkg.in/yaml.v3"
)

//go:embed default.yaml
var defaultYAML []byte

// Config is everything an assessment depends on besides the model: the
// prompt template, FX table, jurisdictions, high-risk country lists,
// feature windows, risk levels and the rule set. Each part is versioned
// and the audit record names the versions and the rule set's hash.
type Config struct {
	Version           string                  `yaml:"version" json:"version"`
	Prompt            PromptTemplate          `yaml:"prompt" json:"prompt"`
	FX                FXTable                 `yaml:"fx" json:"fx"`
	Jurisdictions     map[string]Jurisdiction `yaml:"jurisdictions" json:"jurisdictions"`
	HighRiskCountries CountryLists            `yaml:"high_risk_countries" json:"high_risk_countries"`
	// Occupations: customer occupations that earn no income of their own
	// (matched case-blind, whole); money reaching such a customer is
	// weighed against that profile.
	Occupations struct {
		NoIncome []string `yaml:"no_income" json:"no_income"`
	} `yaml:"occupations" json:"occupations"`
	Window      Window `yaml:"window" json:"window"`
	Levels      Levels `yaml:"levels" json:"levels"`
	HumanReview struct {
		AtLevel Level `yaml:"at_level" json:"at_level"`
	} `yaml:"human_review" json:"human_review"`
	Rules RuleSet `yaml:"rules" json:"rules"`

	rulesHash   string
	highRisk    map[string]string // country -> list name
	occupations []string          // NoIncome, normalised
}

// normalOccupation is how occupations are compared: lower case, spaces
// trimmed and single.
func normalOccupation(s string) string { return strings.Join(strings.Fields(strings.ToLower(s)), " ") }

// PromptTemplate renders a case's features into the scoring prompt:
// Instruction, then Line for each feature ({key} its letter, {label} its
// name), then Values and Value for each feature ({key}, {value}), then
// Suffix, after which the model's next token is scored.
type PromptTemplate struct {
	Version     string `yaml:"version" json:"version"`
	Instruction string `yaml:"instruction" json:"instruction"`
	Line        string `yaml:"line" json:"line"`
	Values      string `yaml:"values" json:"values"`
	Value       string `yaml:"value" json:"value"`
	Suffix      string `yaml:"suffix" json:"suffix"`
	Yes         string `yaml:"yes" json:"yes"`
	No          string `yaml:"no" json:"no"`
}

// FXTable converts amounts to its base currency by multiplication only,
// so that comparisons with thresholds are exact.
type FXTable struct {
	Version    string `yaml:"version" json:"version"`
	Provenance `yaml:",inline" json:",inline"`
	Base       string                     `yaml:"base" json:"base"`
	Rates      map[string]decimal.Decimal `yaml:"rates" json:"rates"` // base units per unit
}

// Provenance says where reference data (an FX table, a country list)
// comes from and over which days it may be used: a case whose as_of
// falls outside them is refused, naming the table, rather than assessed
// against data that was not yet, or is no longer, in force.
type Provenance struct {
	Source    string `yaml:"source" json:"source"`
	Effective string `yaml:"effective" json:"effective"` // YYYY-MM-DD, the first day it holds
	ReviewBy  string `yaml:"review_by" json:"review_by"` // YYYY-MM-DD, the last day it may be used
}

func (p Provenance) check(section string) []error {
	var errs []error
	if p.Source == "" {
		errs = append(errs, fmt.Errorf("%s.source: required: where the data comes from", section))
	}
	e, err1 := time.Parse(time.DateOnly, p.Effective)
	if err1 != nil {
		errs = append(errs, fmt.Errorf("%s.effective: a date (YYYY-MM-DD), got %q", section, p.Effective))
	}
	r, err2 := time.Parse(time.DateOnly, p.ReviewBy)
	if err2 != nil {
		errs = append(errs, fmt.Errorf("%s.review_by: a date (YYYY-MM-DD), got %q", section, p.ReviewBy))
	}
	if err1 == nil && err2 == nil && r.Before(e) {
		errs = append(errs, fmt.Errorf("%s.review_by: %s is before effective %s", section, p.ReviewBy, p.Effective))
	}
	return errs
}

// covers returns an error unless day (YYYY-MM-DD) is within the table's
// days, naming the table.
func (r reference) covers(day string) error {
	p, what, version := r.Provenance, r.what, r.version
	switch {
	case day < p.Effective:
		return fmt.Errorf("%s is before the %s %s took effect on %s (%s): assess with the one in force that day (serve --aml-config)",
			day, what, version, p.Effective, p.Source)
	case day > p.ReviewBy:
		return fmt.Errorf("%s is past the review date %s of the %s %s (%s): load a current one (serve --aml-config; finserve aml config prints the built-in file)",
			day, p.ReviewBy, what, version, p.Source)
	}
	return nil
}

// ToBase converts m to the base currency exactly.
func (fx *FXTable) ToBase(m Money) decimal.Decimal { return m.Amount.Mul(fx.Rates[m.Currency]) }

// Jurisdiction holds what differs between regulators.
type Jurisdiction struct {
	// Country is where the reporting bank is (ISO 3166-1 alpha-2): a
	// transfer is cross-border when the counterparty's bank is elsewhere,
	// whatever the customer's nationality.
	Country       string `yaml:"country" json:"country"`
	Timezone      string `yaml:"timezone" json:"timezone"`
	CashThreshold Money  `yaml:"cash_threshold" json:"cash_threshold"`
	// ForeignCashThreshold, when set, is the threshold of cash in other
	// currencies than CashThreshold's (CN: USD 10,000 equivalent).
	ForeignCashThreshold *Money `yaml:"foreign_cash_threshold,omitempty" json:"foreign_cash_threshold,omitempty"`
	// ReportDeadline is how long the bank has to file a statutory report
	// after the day of the transactions.
	ReportDeadline Deadline `yaml:"report_deadline" json:"report_deadline"`
	// Calendar holds the public holidays and the weekend days worked
	// instead, for deadlines counted in working days.
	Calendar Calendar `yaml:"calendar,omitempty" json:"calendar,omitempty"`
	loc      *time.Location
}

// Deadline is a filing period: working days (Monday to Friday, less
// holidays, plus the calendar's weekend working days) or calendar days.
type Deadline struct {
	WorkingDays  int    `yaml:"working_days,omitempty" json:"working_days,omitempty"`
	CalendarDays int    `yaml:"calendar_days,omitempty" json:"calendar_days,omitempty"`
	LegalBasis   string `yaml:"legal_basis" json:"legal_basis"`
}

// Calendar is a jurisdiction's official working-day calendar for the
// years it lists.
type Calendar struct {
	Source   string   `yaml:"source,omitempty" json:"source,omitempty"`
	Years    []int    `yaml:"years,omitempty" json:"years,omitempty"`
	Holidays []string `yaml:"holidays,omitempty" json:"holidays,omitempty"` // YYYY-MM-DD
	Workdays []string `yaml:"workdays,omitempty" json:"workdays,omitempty"` // weekend days worked, YYYY-MM-DD
}

// dueBy returns the last day to file a report on transactions of day
// (YYYY-MM-DD), or "" when the working days to count run into a year
// the calendar does not hold.
func (j *Jurisdiction) dueBy(day string) string {
	d, err := time.Parse(time.DateOnly, day)
	if err != nil {
		return ""
	}
	dl := j.ReportDeadline
	if dl.CalendarDays > 0 {
		return d.AddDate(0, 0, dl.CalendarDays).Format(time.DateOnly)
	}
	for n := 0; n < dl.WorkingDays; {
		d = d.AddDate(0, 0, 1)
		if !slices.Contains(j.Calendar.Years, d.Year()) {
			return ""
		}
		ds := d.Format(time.DateOnly)
		weekday := d.Weekday() != time.Saturday && d.Weekday() != time.Sunday
		if weekday && !slices.Contains(j.Calendar.Holidays, ds) || slices.Contains(j.Calendar.Workdays, ds) {
			n++
		}
	}
	return d.Format(time.DateOnly)
}

// CountryLists are named lists of high-risk countries (FATF's).
type CountryLists struct {
	Version    string `yaml:"version" json:"version"`
	Provenance `yaml:",inline" json:",inline"`
	Lists      map[string][]string `yaml:"lists" json:"lists"`
}

// Window sets the periods features look at.
type Window struct {
	Days             int             `yaml:"days" json:"days"`
	BaselineDays     int             `yaml:"baseline_days" json:"baseline_days"`
	RecentDays       int             `yaml:"recent_days" json:"recent_days"`
	PassThroughHours int             `yaml:"pass_through_hours" json:"pass_through_hours"`
	NearThreshold    decimal.Decimal `yaml:"near_threshold" json:"near_threshold"`
}

// Levels are the model scores from which a case is medium, high and
// critical risk.
type Levels struct {
	Medium   float64 `yaml:"medium" json:"medium"`
	High     float64 `yaml:"high" json:"high"`
	Critical float64 `yaml:"critical" json:"critical"`
}

// DefaultYAML returns the built-in configuration file.
func DefaultYAML() []byte { return slices.Clone(defaultYAML) }

// DefaultConfig returns the built-in configuration.
func DefaultConfig() *Config {
	c, err := ParseConfig(defaultYAML)
	if err != nil {
		panic("aml: built-in configuration: " + err.Error())
	}
	return c
}

// LoadConfig reads and checks a configuration file.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading AML configuration: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("AML configuration %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses and checks a YAML configuration.
func ParseConfig(data []byte) (*Config, error) {
	var c Config
	d := yaml.NewDecoder(strings.NewReader(string(data)))
	d.KnownFields(true)
	if err := d.Decode(&c); err != nil {
		return nil, fmt.Errorf("parsing: %w", err)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return &c, nil
}

// forbiddenWords may not appear in anything a customer-facing report can
// contain: telling a customer about a suspicion report is tipping off.
var forbiddenWords = []string{"sar", "suspicious activity report", "suspicious transaction report", "str", "可疑交易报告", "可疑报告"}

func (c *Config) check() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for name, v := range map[string]string{"version": c.Version, "prompt.version": c.Prompt.Version, "fx.version": c.FX.Version,
		"rules.version": c.Rules.Version, "high_risk_countries.version": c.HighRiskCountries.Version} {
		if v == "" {
			bad("%s: required", name)
		}
	}
	p := &c.Prompt
	if p.Instruction == "" || p.Suffix == "" || p.Yes == "" || p.No == "" || p.Yes == p.No {
		bad("prompt: instruction, suffix and two different label words (yes, no) are required")
	}
	if !strings.Contains(p.Line, "{label}") {
		bad("prompt.line: must contain {label}")
	}
	if !strings.Contains(p.Value, "{value}") {
		bad("prompt.value: must contain {value}")
	}
	if one, ok := c.FX.Rates[c.FX.Base]; !ok || !one.Equal(decimal.NewFromInt(1)) {
		bad("fx: the base currency %q must have rate 1", c.FX.Base)
	}
	for cur, r := range c.FX.Rates {
		if !isCurrency(cur) || !r.IsPositive() {
			bad("fx.rates.%s: need a three-letter code and a positive rate", cur)
		}
	}
	if _, ok := c.FX.Rates["USD"]; !ok {
		// Features and reports convert to USD, whatever the base.
		bad("fx.rates.USD: required: the statutory thresholds (PBOC Order No. 3 [2016] Art. 5 for foreign currency, 31 CFR 1010.311) are in US dollars")
	}
	errs = append(errs, c.FX.Provenance.check("fx")...)
	errs = append(errs, c.HighRiskCountries.Provenance.check("high_risk_countries")...)
	if len(c.Jurisdictions) == 0 {
		bad("jurisdictions: at least one is needed")
	}
	for name, j := range c.Jurisdictions {
		loc, err := time.LoadLocation(j.Timezone)
		if err != nil {
			bad("jurisdictions.%s.timezone: %v", name, err)
		}
		j.loc = loc
		if !isCountry(j.Country) {
			bad("jurisdictions.%s.country: the bank's country as an ISO 3166-1 alpha-2 code, got %q", name, j.Country)
		}
		if err := c.checkMoney(j.CashThreshold, true); err != nil {
			bad("jurisdictions.%s.cash_threshold: %v", name, err)
		}
		if dl := j.ReportDeadline; (dl.WorkingDays > 0) == (dl.CalendarDays > 0) || dl.WorkingDays < 0 || dl.CalendarDays < 0 || dl.LegalBasis == "" {
			bad("jurisdictions.%s.report_deadline: one of working_days or calendar_days, positive, and a legal_basis", name)
		}
		if j.ReportDeadline.WorkingDays > 0 && len(j.Calendar.Years) > 0 && j.Calendar.Source == "" {
			bad("jurisdictions.%s.calendar.source: required: the official notice of the holidays", name)
		}
		for _, d := range append(slices.Clone(j.Calendar.Holidays), j.Calendar.Workdays...) {
			if t, err := time.Parse(time.DateOnly, d); err != nil || !slices.Contains(j.Calendar.Years, t.Year()) {
				bad("jurisdictions.%s.calendar: %q is not a date (YYYY-MM-DD) in one of the calendar's years %v", name, d, j.Calendar.Years)
			}
		}
		if ft := j.ForeignCashThreshold; ft != nil {
			if err := c.checkMoney(*ft, true); err != nil {
				bad("jurisdictions.%s.foreign_cash_threshold: %v", name, err)
			}
		}
		c.Jurisdictions[name] = j
	}
	c.highRisk = map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(c.HighRiskCountries.Lists)) {
		for _, cc := range c.HighRiskCountries.Lists[name] {
			if !isCountry(cc) {
				bad("high_risk_countries.lists.%s: %q is not an ISO 3166-1 alpha-2 code", name, cc)
			}
			if _, ok := c.highRisk[cc]; !ok {
				c.highRisk[cc] = name
			}
		}
	}
	c.occupations = nil
	for i, o := range c.Occupations.NoIncome {
		if normalOccupation(o) == "" {
			bad("occupations.no_income[%d]: empty", i)
		}
		c.occupations = append(c.occupations, normalOccupation(o))
	}
	w := &c.Window
	// 0 < recent_days <= days makes days positive too.
	if w.BaselineDays <= 0 || w.RecentDays <= 0 || w.RecentDays > w.Days || w.PassThroughHours <= 0 {
		bad("window: days, baseline_days, recent_days (at most days) and pass_through_hours must be positive")
	}
	if !w.NearThreshold.IsPositive() || w.NearThreshold.GreaterThanOrEqual(decimal.NewFromInt(1)) {
		bad("window.near_threshold: must be between 0 and 1")
	}
	l := c.Levels
	if !(0 < l.Medium && l.Medium < l.High && l.High < l.Critical && l.Critical <= 1) {
		bad("levels: need 0 < medium < high < critical <= 1")
	}
	if c.HumanReview.AtLevel.rank() < 0 {
		bad("human_review.at_level: one of low, medium, high, critical")
	}
	errs = append(errs, c.Rules.check(c)...)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	data, err := json.Marshal(c.Rules)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	c.rulesHash = hex.EncodeToString(sum[:])
	return nil
}

// Expired names the reference data (FX table, high-risk lists) whose
// review date is before day (YYYY-MM-DD): cases as of day are refused
// until it is replaced.
func (c *Config) Expired(day string) []string {
	var out []string
	for _, r := range c.references() {
		if day > r.ReviewBy {
			out = append(out, fmt.Sprintf("the %s %s was due for review on %s: cases as of %s are refused until it is replaced", r.what, r.version, r.ReviewBy, day))
		}
	}
	return out
}

// reference is a table of reference data, named for messages.
type reference struct {
	what, version string
	Provenance
}

// references lists the dated reference data a case is assessed with.
func (c *Config) references() []reference {
	return []reference{{"FX table", c.FX.Version, c.FX.Provenance},
		{"high-risk country list", c.HighRiskCountries.Version, c.HighRiskCountries.Provenance}}
}

// RulesHash is the SHA-256 of the rule set's canonical JSON form: the
// audit trail names it beside the version.
func (c *Config) RulesHash() string { return c.rulesHash }

func (c *Config) jurisdictionNames() []string { return slices.Sorted(maps.Keys(c.Jurisdictions)) }

func (c *Config) checkMoney(m Money, positive bool) error {
	if _, ok := c.FX.Rates[m.Currency]; !ok {
		return fmt.Errorf("currency %q is not in the FX table %s (%s)", m.Currency, c.FX.Version,
			strings.Join(slices.Sorted(maps.Keys(c.FX.Rates)), ", "))
	}
	switch {
	case m.Amount.IsNegative():
		return errors.New("amount must not be negative")
	case positive && !m.Amount.IsPositive():
		return errors.New("amount must be positive")
	case m.Amount.Exponent() < -8 || m.Amount.Abs().GreaterThan(decimal.New(1, 15)):
		return errors.New("amount needs at most 8 decimals and at most 15 integer digits")
	}
	return nil
}

func isCurrency(s string) bool {
	return len(s) == 3 && strings.ToUpper(s) == s && strings.Trim(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == ""
}

// Level is a risk level.
type Level string

// The risk levels, in order.
const (
	LevelLow      Level = "low"
	LevelMedium   Level = "medium"
	LevelHigh     Level = "high"
	LevelCritical Level = "critical"
)

var levelOrder = []Level{LevelLow, LevelMedium, LevelHigh, LevelCritical}

func (l Level) rank() int { return slices.Index(levelOrder, l) }

func maxLevel(a, b Level) Level {
	if b.rank() > a.rank() {
		return b
	}
	return a
}

// modelLevel maps a model score to a level.
func (c *Config) modelLevel(score float64) Level {
	switch {
	case score >= c.Levels.Critical:
		return LevelCritical
	case score >= c.Levels.High:
		return LevelHigh
	case score >= c.Levels.Medium:
		return LevelMedium
	}
	return LevelLow
}
