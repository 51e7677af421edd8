package server

import (
	"bufio"
	"encoding/json"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/audit"
	"github.com/finserve/finserve/engine"
)

// logLines returns the JSON log lines in b whose msg is msg.
func logLines(b *syncBuffer, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(b.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// tempKeys writes a key file with the given keys (name: tiers, rate) and
// returns the set and the keys by name.
func tempKeys(t *testing.T, entries map[string]struct {
	tiers []string
	rate  float64
}) (*apikeys.Set, map[string]string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.json")
	keys := map[string]string{}
	for name, e := range entries {
		k, err := apikeys.Add(path, name, e.tiers, e.rate)
		if err != nil {
			t.Fatal(err)
		}
		keys[name] = k
	}
	set, err := apikeys.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return set, keys
}

// TestRejectionsAndRequestIDs: every refused request (401, 403, 404, 429)
// writes a log line naming its route, status, reason, client and, when
// known, tenant, and is counted under its route rather than "unmatched";
// a gateway's X-Request-Id comes back and is logged with the W3C trace
// id of its traceparent; a rate-limited key's budget is in OpenAI's
// x-ratelimit headers.
func TestRejectionsAndRequestIDs(t *testing.T) {
	logs := &syncBuffer{}
	set, keys := tempKeys(t, map[string]struct {
		tiers []string
		rate  float64
	}{
		"teller": {[]string{"standard", "batch"}, 0},
		// one request per 1000 s: the second is refused whatever the timing
		"slow": {[]string{"standard"}, 0.001},
	})
	ts := startServer(t, Config{KeyFile: set, Logger: slog.New(slog.NewJSONHandler(logs, nil))}, engine.Options{})
	teller, slow := "Bearer "+keys["teller"], "Bearer "+keys["slow"]
	chat := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"ignore_eos":true}`

	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	resp, body := ts.post(t, "/chat/completions", chat, "Authorization", teller,
		"X-Request-Id", "gw-7f3a.91", "traceparent", "00-"+trace+"-00f067aa0ba902b7-01")
	if resp.StatusCode != 200 || resp.Header.Get("X-Request-Id") != "gw-7f3a.91" {
		t.Fatalf("with a gateway id: %d X-Request-Id %q %s", resp.StatusCode, resp.Header.Get("X-Request-Id"), body)
	}
	// An id unsafe to log is replaced, not echoed.
	resp, _ = ts.post(t, "/chat/completions", chat, "Authorization", teller, "X-Request-Id", "id with spaces")
	if id := resp.Header.Get("X-Request-Id"); !strings.HasPrefix(id, "chatcmpl-") {
		t.Errorf("an unsafe X-Request-Id came back as %q", id)
	}

	cases := []struct {
		name, path, auth string
		status           int
		route, reason    string
		tenant           string
	}{
		{"no key", "/v1/chat/completions", "", 401, "/v1/chat/completions", "invalid_api_key", ""},
		{"bad key", "/tiers/batch/v1/chat/completions", "Bearer fsk_nope", 401, "/tiers/:tier/v1/chat/completions", "invalid_api_key", ""},
		{"tier not allowed", "/tiers/realtime/v1/chat/completions", teller, 403, "/tiers/:tier/v1/chat/completions", "tier_not_allowed", "teller"},
		{"no route", "/v1/nothing-here", teller, 404, "unmatched", "not_found", "teller"},
		{"first of slow", "/v1/chat/completions", slow, 200, "/v1/chat/completions", "", "slow"},
		{"rate", "/v1/chat/completions", slow, 429, "/v1/chat/completions", "rate_limit_exceeded", "slow"},
	}
	base := strings.TrimSuffix(ts.url, "/v1")
	for _, tc := range cases {
		resp, body := sendTo(t, base, tc.path, chat, "Authorization", tc.auth, "X-Request-Id", "case-"+strings.ReplaceAll(tc.name, " ", "-"))
		if resp.StatusCode != tc.status {
			t.Fatalf("%s: %d %s, want %d", tc.name, resp.StatusCode, body, tc.status)
		}
		if tc.auth == slow {
			// OpenAI's names; a bucket of one request refilled in 1000 s.
			if got := resp.Header.Get("X-Ratelimit-Limit-Requests"); got != "1" {
				t.Errorf("%s: x-ratelimit-limit-requests %q", tc.name, got)
			}
			if got := resp.Header.Get("X-Ratelimit-Remaining-Requests"); got != "0" {
				t.Errorf("%s: x-ratelimit-remaining-requests %q", tc.name, got)
			}
			if d, err := time.ParseDuration(resp.Header.Get("X-Ratelimit-Reset-Requests")); err != nil || d < 990*time.Second || d > 1000*time.Second {
				t.Errorf("%s: x-ratelimit-reset-requests %q", tc.name, resp.Header.Get("X-Ratelimit-Reset-Requests"))
			}
		}
		if tc.status == 429 && resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s: 429 without Retry-After", tc.name)
		}
	}
	if resp, _ := ts.post(t, "/chat/completions", chat, "Authorization", teller); resp.Header.Get("X-Ratelimit-Limit-Requests") != "" {
		t.Error("rate-limit headers for a key without a rate")
	}

	refused := map[string]map[string]any{}
	for _, l := range logLines(logs, "request refused") {
		refused[l["request_id"].(string)] = l
	}
	for _, tc := range cases {
		l := refused["case-"+strings.ReplaceAll(tc.name, " ", "-")]
		if tc.status == 200 {
			if l != nil {
				t.Errorf("%s: a served request logged as refused: %v", tc.name, l)
			}
			continue
		}
		switch {
		case l == nil:
			t.Errorf("%s: no \"request refused\" log line", tc.name)
		case l["status"] != float64(tc.status) || l["route"] != tc.route || l["reason"] != tc.reason || l["client"] != "127.0.0.1":
			t.Errorf("%s: logged %v, want status %d route %s reason %s client 127.0.0.1", tc.name, l, tc.status, tc.route, tc.reason)
		case tc.tenant != "" && l["tenant"] != tc.tenant, tc.tenant == "" && l["tenant"] != nil:
			t.Errorf("%s: tenant %v, want %q", tc.name, l["tenant"], tc.tenant)
		}
	}
	var traced bool
	for _, l := range logLines(logs, "request") {
		if l["request_id"] == "gw-7f3a.91" {
			traced = l["trace_id"] == trace && l["tenant"] == "teller" && strings.HasPrefix(l["id"].(string), "chatcmpl-")
		}
	}
	if !traced {
		t.Errorf("the generation's log line lacks the gateway's request id or trace id: %v", logLines(logs, "request"))
	}

	_, metrics := sendGet(t, strings.TrimSuffix(ts.url, "/v1")+"/metrics", teller)
	for _, want := range []string{
		`finserve_http_requests_total{method="POST",route="/v1/chat/completions",status="401"} 1`,
		`finserve_http_requests_total{method="POST",route="/tiers/:tier/v1/chat/completions",status="401"} 1`,
		`finserve_http_requests_total{method="POST",route="/tiers/:tier/v1/chat/completions",status="403"} 1`,
		`finserve_http_requests_total{method="POST",route="unmatched",status="404"} 1`,
		`finserve_http_requests_total{method="POST",route="/v1/chat/completions",status="429"} 1`,
		`finserve_tenant_tokens_total{kind="generated",tenant="teller"} 6`,
		`finserve_tenant_tokens_total{kind="generated",tenant="slow"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// sendGet gets url with an Authorization header.
func sendGet(t *testing.T, url, auth string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", auth)
	return do(t, req)
}

// TestMatchRoute: the route patterns the labels use.
func TestMatchRoute(t *testing.T) {
	for _, c := range []struct {
		pattern, path string
		want          bool
	}{
		{"/v1/chat/completions", "/v1/chat/completions", true},
		{"/v1/chat/completions", "/v1/chat/completions/", true},
		{"/v1/chat/completions", "/v1/chat", false},
		{"/v1/chat/completions", "/v1/chat/completions/x", false},
		{"/tiers/:tier/v1/models", "/tiers/batch/v1/models", true},
		{"/tiers/:tier/v1/models", "/tiers//v1/models", false},
		{"/v1/models/+", "/v1/models/a/b", true},
		{"/v1/models/+", "/v1/models", false},
		{"/v1/models/+", "/v1/models/", false},
	} {
		if got := matchRoute(c.pattern, c.path); got != c.want {
			t.Errorf("matchRoute(%q, %q) = %v", c.pattern, c.path, got)
		}
	}
}

// TestSlotsUnderLoad: GET /slots shows each slot's request (id, tier,
// tenant, tokens) while two streams hold both slots, and the request
// that waits for one.
func TestSlotsUnderLoad(t *testing.T) {
	set, keys := tempKeys(t, map[string]struct {
		tiers []string
		rate  float64
	}{"desk": {[]string{"standard"}, 0}})
	ts := startServer(t, Config{KeyFile: set, Limits: Limits{MaxTokens: 16000}}, engine.Options{Parallel: 2, Context: 16384})
	auth := "Bearer " + keys["desk"]
	// Standard-tier streams (not preemptible by the standard request that
	// then waits) that cannot end before the test closes them.
	for i := range 2 {
		req, _ := http.NewRequest(http.MethodPost, ts.tierURL("standard")+"/chat/completions",
			strings.NewReader(`{"messages":[{"role":"user","content":"go"}],"max_tokens":16000,"ignore_eos":true,"stream":true}`))
		req.Header.Set("Authorization", auth)
		req.Header.Set("X-Request-Id", "hog-"+strconv.Itoa(i))
		hog, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer hog.Body.Close()
		if _, err := bufio.NewReader(hog.Body).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	waiting := make(chan int, 1)
	go func() {
		resp, _ := ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"later"}],"max_tokens":2}`,
			"Authorization", auth, "X-Request-Id", "queued-1")
		waiting <- resp.StatusCode
	}()
	ts.waitStats(t, func(st engine.Stats) bool { return st.Running == 2 && st.Waiting == 1 })

	req, _ := http.NewRequest(http.MethodGet, strings.TrimSuffix(ts.url, "/v1")+"/slots", nil)
	resp, body := do(t, req)
	if resp.StatusCode != 401 {
		t.Errorf("/slots without a key: %d", resp.StatusCode)
	}
	req.Header.Set("Authorization", auth)
	resp, body = do(t, req)
	var got SlotsResponse
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &got) != nil {
		t.Fatalf("/slots: %d %s", resp.StatusCode, body)
	}
	if len(got.Slots) != 2 {
		t.Fatalf("slots %+v", got.Slots)
	}
	ids := map[string]bool{}
	for _, s := range got.Slots {
		if s.State != "busy" || s.WorkView == nil || s.Tier != "standard" || s.Tenant != "desk" || s.Kind != "generate" || s.PromptTokens == 0 || s.AgeMS < 0 {
			t.Errorf("slot %d: %s", s.ID, body)
			continue
		}
		ids[s.RequestID] = true
	}
	if !ids["hog-0"] || !ids["hog-1"] {
		t.Errorf("slots hold %v, want hog-0 and hog-1: %s", ids, body)
	}
	if len(got.Waiting) != 1 || got.Waiting[0].RequestID != "queued-1" || got.Waiting[0].Tier != "standard" || got.Queues["standard"] != 1 {
		t.Errorf("waiting %+v queues %v: %s", got.Waiting, got.Queues, body)
	}
}

// TestDashboardSeries: every finserve series the Grafana dashboard and
// the Prometheus alert rules in deploy/ query is one that /metrics
// exposes, once the server has served chat, an AML decision with its
// audit record, and a refusal.
func TestDashboardSeries(t *testing.T) {
	var exprs []string
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct{ List []struct{ Query any } }
	}
	data, err := os.ReadFile("../deploy/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(string); ok {
			exprs = append(exprs, q)
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct{ Alert, Expr string }
		}
	}
	data, err = os.ReadFile("../deploy/prometheus-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatalf("rules: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("rule %+v lacks a name or an expression", r)
			}
			exprs = append(exprs, r.Expr)
		}
	}

	lg, err := audit.Open(filepath.Join(t.TempDir(), "audit.jsonl"), audit.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	ts := startServer(t, Config{Audit: lg, APIKeys: []string{"k"}}, engine.Options{})
	auth := []string{"Authorization", "Bearer k"}
	sys := strings.Repeat("You are a careful assistant of a bank. ", 12)
	for range 2 { // the second reuses the first's prefix
		if resp, body := ts.post(t, "/chat/completions", `{"messages":[{"role":"system","content":"`+sys+`"},{"role":"user","content":"hi"}],"max_tokens":3}`, auth...); resp.StatusCode != 200 {
			t.Fatalf("chat: %d %s", resp.StatusCode, body)
		}
	}
	if resp, body := ts.post(t, "/aml/score", amlCase(t, "structuring.json"), auth...); resp.StatusCode != 200 {
		t.Fatalf("aml: %d %s", resp.StatusCode, body)
	}
	ts.post(t, "/chat/completions", `{}`) // 401
	req, _ := http.NewRequest(http.MethodGet, strings.TrimSuffix(ts.url, "/v1")+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer k")
	_, exposition := do(t, req)

	series := map[string]bool{}
	for _, line := range strings.Split(exposition, "\n") {
		if name, _, ok := strings.Cut(line, "{"); ok && !strings.HasPrefix(line, "#") {
			series[name] = true
		} else if name, _, ok := strings.Cut(line, " "); ok && !strings.HasPrefix(line, "#") {
			series[name] = true
		}
	}
	name := regexp.MustCompile(`\bfinserve_[a-z0-9_]+\b`)
	checked := 0
	for _, e := range exprs {
		for _, n := range name.FindAllString(e, -1) {
			checked++
			if !series[n] {
				t.Errorf("%q queries %s, which /metrics does not expose", e, n)
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d series references found: is the extraction broken?", checked)
	}
}

// TestAuditHealthInReadiness: /ready reports the audit log's health, and
// /ready/aml turns 503 while the log refuses records, without taking the
// chat routes out of rotation; finserve_audit_healthy follows. The log is
// made to fail by writing its checkpoint into a directory that is gone.
func TestAuditHealthInReadiness(t *testing.T) {
	dir := t.TempDir()
	lg, err := audit.Open(filepath.Join(dir, "audit.jsonl"), audit.Options{NoSync: true, RetryEvery: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	ts := startServer(t, Config{Audit: lg}, engine.Options{})
	ready := func(path string) (int, string) {
		resp, body := ts.get(t, path)
		return resp.StatusCode, body
	}
	if code, body := ready("/ready/aml"); code != 200 || !strings.Contains(body, `"audit":"ok"`) {
		t.Fatalf("/ready/aml healthy: %d %s", code, body)
	}
	// The checkpoint's temporary file cannot be created: a directory
	// stands where it goes.
	head := audit.HeadPath(filepath.Join(dir, "audit.jsonl")) + ".tmp"
	if err := os.Mkdir(head, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(head, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	resp, body := ts.post(t, "/aml/score", amlCase(t, "structuring.json"))
	checkError(t, resp, body, 503, "", "audit_unavailable")
	if code, body := ready("/ready/aml"); code != 503 || !strings.Contains(body, `"status":"audit_unavailable"`) {
		t.Errorf("/ready/aml while the log fails: %d %s", code, body)
	}
	if code, body := ready("/ready"); code != 200 || !strings.Contains(body, `"audit":"unavailable"`) {
		t.Errorf("/ready while the log fails: %d %s", code, body)
	}
	if _, m := ts.get(t, "/metrics"); !strings.Contains(m, "finserve_audit_healthy 0") {
		t.Error("finserve_audit_healthy is not 0 while the log fails")
	}
	os.RemoveAll(head)
	deadline := time.Now().Add(10 * time.Second)
	for code, _ := ready("/ready/aml"); code != 200; code, _ = ready("/ready/aml") {
		if time.Now().After(deadline) {
			t.Fatal("the audit log did not recover once it could write")
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp, body = ts.post(t, "/aml/score", amlCase(t, "structuring.json"))
	if resp.StatusCode != 200 || !strings.Contains(body, `"seq":1`) {
		t.Fatalf("after recovery: %d %s", resp.StatusCode, body)
	}
	if _, m := ts.get(t, "/metrics"); !strings.Contains(m, "finserve_audit_healthy 1") {
		t.Error("finserve_audit_healthy is not 1 after recovery")
	}
	lg.Close()
	if _, err := audit.VerifyFile(filepath.Join(dir, "audit.jsonl"), nil); err != nil {
		t.Errorf("the log after a failed write and recovery: %v", err)
	}
}
