package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// TestServeSettingsPrecedence: flags beat the environment, which beats the
// config file, which beats the defaults.
func TestServeSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "finserve.yaml")
	if err := os.WriteFile(conf, []byte("model: /models/file.gguf\nmodel_id: from-file\nparallel: 3\nctx: 2048\napi-key: [a, b]\nread-timeout: 5s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want func(t *testing.T, got map[string]string)
	}{
		{"file only", nil, nil, func(t *testing.T, got map[string]string) {
			expect(t, got, "model", "[/models/file.gguf]") // --model is repeatable
			expect(t, got, "model-id", "from-file")
			expect(t, got, "parallel", "3")
			expect(t, got, "api-key", "[a,b]")
			expect(t, got, "read-timeout", "5s")
			expect(t, got, "addr", "127.0.0.1:8080") // default
		}},
		{"env beats file", nil, map[string]string{"FINSERVE_PARALLEL": "6", "FINSERVE_API_KEY": "k1,k2,k3"}, func(t *testing.T, got map[string]string) {
			expect(t, got, "parallel", "6")
			expect(t, got, "api-key", "[k1,k2,k3]")
			expect(t, got, "ctx", "2048")
		}},
		{"flag beats env", []string{"--parallel", "9", "--model-id", "cli"}, map[string]string{"FINSERVE_PARALLEL": "6", "FINSERVE_MODEL_ID": "env"}, func(t *testing.T, got map[string]string) {
			expect(t, got, "parallel", "9")
			expect(t, got, "model-id", "cli")
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cmd := newServeCmd()
			if err := cmd.ParseFlags(tc.args); err != nil {
				t.Fatal(err)
			}
			lookup := func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }
			if err := applySettings(cmd, conf, lookup); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, name := range []string{"model", "model-id", "parallel", "ctx", "api-key", "read-timeout", "addr"} {
				got[name] = cmd.Flags().Lookup(name).Value.String()
			}
			tc.want(t, got)
		})
	}
}

func expect(t *testing.T, got map[string]string, name, want string) {
	t.Helper()
	if got[name] != want {
		t.Errorf("%s = %q, want %q", name, got[name], want)
	}
}

func TestServeSettingsErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct{ name, yaml, env, want string }{
		{"unknown key", "modle: x\n", "", `unknown setting "modle"`},
		{"bad value", "parallel: many\n", "", "parallel"},
		{"not yaml", "parallel: [\n", "", "config"},
		{"nested", "limits:\n  x: 1\n", "", "unknown setting"},
		{"bad env", "", "FINSERVE_CTX=big", "FINSERVE_CTX"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conf := filepath.Join(dir, tc.name+".yaml")
			if err := os.WriteFile(conf, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			env := map[string]string{}
			if k, v, ok := strings.Cut(tc.env, "="); ok {
				env[k] = v
			}
			cmd := newServeCmd()
			lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
			err := applySettings(cmd, conf, lookup)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// TestServeCommand runs `serve` on a generated model: health turns 200,
// a chat completion works, and cancelling (as SIGTERM does) shuts it down.
func TestServeCommand(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.gguf")
	if err := models.Generate(context.Background(), model, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	cmd := newServeCmd()
	// Long enough to be worth a copy (a block of 32 tokens at least), with
	// commas that a comma-splitting flag would break.
	system := strings.Repeat("You are a bank assistant, brief and polite. ", 8)
	cmd.SetArgs([]string{"--model", model, "--addr", addr, "--threads", "1", "--ctx", "256", "--parallel", "2", "--shutdown-grace", "2s",
		"--pin-system-prompt", system, "--prefix-cache-host", "16MiB"})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	base := "http://" + addr
	waitFor(t, 30*time.Second, func() bool { return readyAt(base + "/ready") }, func() string { return "server never became ready" })
	resp, err := http.Post(base+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"tiny","messages":[{"role":"system","content":"`+system+`"},{"role":"user","content":"hi"}],"max_tokens":4}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var chat struct {
		Object string
		Usage  struct {
			PromptTokensDetails struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		}
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &chat) != nil || chat.Object != "chat.completion" {
		t.Fatalf("chat: %d %s", resp.StatusCode, body)
	}
	// The pinned system prompt serves the very first request.
	if chat.Usage.PromptTokensDetails.CachedTokens < 64 {
		t.Errorf("the first request with the pinned system prompt reused %d tokens: %s", chat.Usage.PromptTokensDetails.CachedTokens, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(2 * time.Minute): // a hang guard: the stop itself takes at most grace + 6 s
		t.Fatal("serve did not stop")
	}
}

func TestParseBytes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1073741824", 1 << 30, true},
		{"1GiB", 1 << 30, true},
		{"512MiB", 512 << 20, true},
		{"2GB", 2e9, true},
		{"1.5 gib", 3 << 29, true},
		{"64kb", 64000, true},
		{"", 0, false},
		{"-1", 0, false},
		{"1PB", 0, false},
		{"lots", 0, false},
		{"9999999TiB", 0, false},
	} {
		got, err := parseBytes(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

// TestTierSettings: --tier-NAME settings, from a flag or a YAML mapping,
// change only the keys they name; bad ones are refused with the flag's
// name.
func TestTierSettings(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "tiers.yaml")
	yaml := "tier-batch:\n  max_running: 2\n  queue-timeout: 30m\ntier_standard: {deterministic: false, max-tokens: 800}\n"
	if err := os.WriteFile(conf, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newServeCmd()
	if err := cmd.ParseFlags([]string{"--tier-realtime", "max-queued=8, ttft-target=150ms,preemptible=false"}); err != nil {
		t.Fatal(err)
	}
	if err := applySettings(cmd, conf, func(string) (string, bool) { return "", false }); err != nil {
		t.Fatal(err)
	}
	var specs [engine.NumTiers]string
	for tier := range engine.Tier(engine.NumTiers) {
		specs[tier] = cmd.Flags().Lookup("tier-" + tier.String()).Value.String()
	}
	policies, limits, err := tiers(specs)
	if err != nil {
		t.Fatal(err)
	}
	def := defaultTierSettings()
	rt, std, batch := policies[engine.TierRealtime], policies[engine.TierStandard], policies[engine.TierBatch]
	switch {
	case rt.MaxQueued != 8 || rt.TTFTTarget != 150*time.Millisecond || rt.QueueTimeout != def[engine.TierRealtime].QueueTimeout:
		t.Errorf("realtime %+v", rt)
	case batch.MaxRunning != 2 || batch.QueueTimeout != 30*time.Minute || !batch.Preemptible:
		t.Errorf("batch %+v", batch)
	case std != def[engine.TierStandard].TierPolicy:
		t.Errorf("standard policy changed: %+v", std)
	case limits[engine.TierStandard].Deterministic || limits[engine.TierStandard].MaxTokens != 800 ||
		limits[engine.TierRealtime] != def[engine.TierRealtime].TierLimits:
		t.Errorf("limits %+v", limits)
	}
	for _, bad := range []struct{ spec, want string }{
		{"max-queued=-1", "--tier-realtime: max-queued"},
		{"speed=11", `unknown key "speed"`},
		{"queue-timeout", "not key=value"},
		{"queue-timeout=soon", "queue-timeout"},
		{"preemptible=perhaps", "preemptible"},
	} {
		if _, _, err := tiers([engine.NumTiers]string{bad.spec}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: %v, want an error with %q", bad.spec, err, bad.want)
		}
	}
}
