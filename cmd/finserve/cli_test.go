package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/models"
)

// TestModelCommands: model gen writes a valid model; quant makes its
// q8_0 copy; model inspect describes both as they are; eval of a model
// against itself keeps everything and of its quantization most; generate
// is deterministic at temperature 0; model bench measures both tests.
func TestModelCommands(t *testing.T) {
	dir := t.TempDir()
	f16, q8 := filepath.Join(dir, "f16.gguf"), filepath.Join(dir, "q8.gguf")
	mustRun := func(args ...string) string {
		t.Helper()
		out, err := runRoot(args...)
		if err != nil {
			t.Fatalf("finserve %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	mustRun("model", "gen", "--preset", "tiny", "--type", "f16", "--out", f16)
	mustRun("quant", "--in", f16, "--out", q8, "--type", "q8_0", "--threads", "2")
	for path, ftype := range map[string]string{f16: "F16", q8: "Q8_0"} {
		var s struct {
			FileType string
			Params   int64
		}
		if err := json.Unmarshal([]byte(mustRun("model", "inspect", path, "--json")), &s); err != nil {
			t.Fatal(err)
		}
		if s.FileType != ftype || s.Params != models.Presets["tiny"].Params() {
			t.Errorf("inspect %s: %+v, want %s with the preset's parameters", filepath.Base(path), s, ftype)
		}
	}
	if _, err := runRoot("quant", "--in", q8, "--out", filepath.Join(dir, "again.gguf"), "--type", "q4_0"); err == nil {
		t.Error("requantizing a q8_0 model without --allow-requantize was accepted")
	}

	eval := func(cand string) (top1, kl float64) {
		var r struct{ Top1Agreement, KLMean float64 }
		out := mustRun("eval", "--reference", f16, "--candidate", cand, "--corpus", "../../testdata/corpus/finance-zh-en.txt",
			"--ctx", "128", "--chunks", "2", "--no-speed", "--json", "--threads", "1")
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("eval: %v %s", err, out)
		}
		return r.Top1Agreement, r.KLMean
	}
	if top1, kl := eval(f16); top1 != 1 || kl != 0 {
		t.Errorf("a model against itself: top-1 %v, KL %v; want 1 and 0", top1, kl)
	}
	if top1, kl := eval(q8); top1 < 0.5 || top1 > 1 || kl <= 0 {
		t.Errorf("q8_0 against f16: top-1 %v, KL %v", top1, kl)
	}

	// The text is the line before the summary (finish=..., then timings
	// that differ run to run).
	gen := func() string {
		out := mustRun("generate", "--model", q8, "--prompt", "The branch opens at", "--max-tokens", "6", "--temperature", "0", "--threads", "1", "--ctx", "256")
		head, summary, ok := strings.Cut(out, "\nfinish=")
		if !ok || !strings.HasPrefix(summary, "length prompt=") || !strings.Contains(summary, "completion=6 ") {
			t.Fatalf("generate printed %q", out)
		}
		return head[strings.LastIndex(head, "\n")+1:]
	}
	if a, b := gen(), gen(); a != b || strings.TrimSpace(a) == "" {
		t.Errorf("greedy generate: %q then %q", a, b)
	}

	var bench []struct {
		Test string
		Mean float64
	}
	if err := json.Unmarshal([]byte(mustRun("model", "bench", q8, "--pp", "16", "--tg", "4", "--reps", "1", "--npl", "", "--threads", "1", "--json")), &bench); err != nil {
		t.Fatal(err)
	}
	if len(bench) != 2 || bench[0].Test != "pp16" || bench[1].Test != "tg4" || bench[0].Mean <= 0 || bench[1].Mean <= 0 {
		t.Errorf("model bench: %+v", bench)
	}
}

// TestAMLCommands: aml config prints the built-in configuration, which
// aml check accepts with its rule-set hash; a broken one is refused; aml
// prompts prints one prompt per coalition of the case's active features.
func TestAMLCommands(t *testing.T) {
	out, err := runRoot("aml", "config")
	if err != nil || out != string(aml.DefaultYAML()) {
		t.Fatalf("aml config: %v (%d bytes)", err, len(out))
	}
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "aml.yaml"), filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte(out), 0o600)
	os.WriteFile(bad, bytes.Replace([]byte(out), []byte("severity: high"), []byte("severity: dire"), 1), 0o600)
	if out, err := runRoot("aml", "check", good); err != nil || !strings.Contains(out, aml.DefaultConfig().RulesHash()) {
		t.Errorf("aml check of the built-in configuration: %v %s", err, out)
	}
	if _, err := runRoot("aml", "check", bad); err == nil || !strings.Contains(err.Error(), "severity") {
		t.Errorf("aml check of a bad severity: %v", err)
	}
	out, err = runRoot("aml", "prompts", "../../aml/testdata/structuring.json")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	seen := map[string]bool{}
	for _, l := range lines {
		var p struct{ Prompt string }
		if json.Unmarshal([]byte(l), &p) != nil || !strings.Contains(p.Prompt, "\nValues:") || seen[p.Prompt] {
			t.Fatalf("prompt line %q", l)
		}
		seen[p.Prompt] = true
	}
	// structuring.json has five active features: 2^5 coalitions.
	if len(lines) != 32 {
		t.Errorf("%d prompts, want 32", len(lines))
	}
}

// TestSoakCommand: finserve soak against a child server for a few
// seconds writes a report whose behaviours were all exercised and where
// nothing unintended happened.
func TestSoakCommand(t *testing.T) {
	dir := t.TempDir()
	model := tinyModel(t, dir)
	keys := filepath.Join(dir, "keys.json")
	key, err := apikeys.Add(keys, "soak", []string{"realtime", "standard", "batch"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	rateKey, err := apikeys.Add(keys, "slow", []string{"realtime"}, 5)
	if err != nil {
		t.Fatal(err)
	}
	c := spawn(t, nil, nil, "--model", model, "--threads", "1", "--ctx", "2048", "--parallel", "4", "--api-keys", keys)
	waitFor(t, 60e9, func() bool {
		resp, _, err := try("GET", c.base+"/ready", "", key)
		return err == nil && resp.StatusCode == 200
	}, func() string { return "never ready" })
	report := filepath.Join(dir, "soak.json")
	out, err := runRoot("soak", "--url", c.base, "--clients", "8", "--duration", "4s", "--sample", "1s", "--key", key, "--rate-key", rateKey,
		"--aml-case", "../../aml/testdata/salary.json", "--json", report)
	if err != nil {
		t.Fatalf("soak: %v\n%s", err, out)
	}
	var r struct {
		Unintended int
		Status     map[string]map[string]int
	}
	data, _ := os.ReadFile(report)
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if r.Unintended != 0 || r.Status["over-rate"]["429 rate_limit_exceeded"] == 0 || r.Status["realtime-chat"]["200"] == 0 {
		t.Errorf("soak report: %s", data)
	}
	// snake_case keys, as the bench report's (encoding/json would read
	// Go's field names into r too).
	for _, k := range []string{`"unintended": 0`, `"status": {`, `"idle_kv_usage": `, `"rss_bytes": `} {
		if !strings.Contains(string(data), k) {
			t.Errorf("soak report lacks %s:\n%s", k, data)
		}
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
}

// TestBenchCommand: a run whose requests all fail (a URL without /v1:
// 404s) exits non-zero, says how many failed and why, and still writes
// its report; --allow-failures exits 0. The report's keys are snake_case,
// as vLLM's benchmark writes them, and it never holds the API key.
func TestBenchCommand(t *testing.T) {
	dir := t.TempDir()
	c := spawn(t, nil, nil, "--model", tinyModel(t, dir), "--threads", "1", "--ctx", "256", "--parallel", "1")
	c.waitReady(t)
	args := func(url, out string, extra ...string) []string {
		return append([]string{"bench", "--url", url, "--concurrency", "1", "--requests-per-client", "2", "--max-tokens", "2",
			"--api-key", "sk-test-secret-1234", "--out", out}, extra...)
	}
	bad := filepath.Join(dir, "bad")
	out, err := runCmd(args(c.base, bad)...)
	if err == nil || !strings.Contains(err.Error(), "2 of 2 requests failed (2 404)") || !strings.Contains(err.Error(), "ending in /v1") {
		t.Errorf("a run of 404s: err %v\n%s", err, out)
	}
	var rep map[string]any
	data, _ := os.ReadFile(filepath.Join(bad, "report.json"))
	if json.Unmarshal(data, &rep) != nil || !strings.Contains(string(data), `"failed": 2`) {
		t.Errorf("the failed run's report:\n%.500s", data)
	}
	if _, err := runCmd(args(c.base, filepath.Join(dir, "allowed"), "--allow-failures")...); err != nil {
		t.Errorf("--allow-failures: %v", err)
	}

	good := filepath.Join(dir, "good")
	if out, err := runCmd(args(c.base+"/v1", good)...); err != nil {
		t.Fatalf("a good run: %v\n%s", err, out)
	}
	data, err = os.ReadFile(filepath.Join(good, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "sk-test-secret") {
		t.Error("report.json holds the API key")
	}
	var r struct {
		Targets []struct {
			Levels []struct {
				Result map[string]json.RawMessage `json:"result"`
			} `json:"levels"`
		} `json:"targets"`
		Plan struct {
			Settings map[string]any `json:"settings"`
		} `json:"plan"`
	}
	if err := json.Unmarshal(data, &r); err != nil || len(r.Targets) != 1 || len(r.Targets[0].Levels) != 1 {
		t.Fatalf("report: %v\n%.500s", err, data)
	}
	res := r.Targets[0].Levels[0].Result
	for _, key := range []string{"requests", "failed", "output_throughput", "total_token_throughput", "request_throughput", "ttft", "tpot", "itl", "e2el", "request_goodput", "cached_tokens"} {
		if _, ok := res[key]; !ok {
			t.Errorf("result lacks %q: %v", key, slices.Collect(maps.Keys(res)))
		}
	}
	var ttft map[string]float64
	if json.Unmarshal(res["ttft"], &ttft) != nil || ttft["p50"] <= 0 {
		t.Errorf("ttft %s", res["ttft"])
	}
	if r.Plan.Settings["max_tokens"] != 2.0 {
		t.Errorf("settings %v", r.Plan.Settings)
	}
}
