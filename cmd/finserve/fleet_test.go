package main

import (
	"context"
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

// TestParseModelSpec: --model's forms and what each refuses.
func TestParseModelSpec(t *testing.T) {
	for _, c := range []struct {
		in   string
		want modelSpec
		err  string
	}{
		{in: "/m/llama-13b.gguf", want: modelSpec{id: "llama-13b", path: "/m/llama-13b.gguf"}},
		{in: "chat=/m/a.gguf", want: modelSpec{id: "chat", path: "/m/a.gguf"}},
		{in: "chat=/m/a.gguf,parallel=8,ctx=2048,keep-alive=10m", want: modelSpec{id: "chat", path: "/m/a.gguf", parallel: 8, ctx: 2048,
			keepAlive: 10 * time.Minute, keepAliveSet: true, hasModelOptions: true}},
		// the config file's mapping, keys sorted
		{in: "batch=256,id=embed,keep-alive=0,memory=2GiB,path=/m/e.gguf,preload=true", want: modelSpec{id: "embed", path: "/m/e.gguf", batch: 256,
			keepAliveSet: true, memory: 2 << 30, preload: true, hasModelOptions: true}},
		{in: "x=/a.gguf,keep_alive=-1", want: modelSpec{id: "x", path: "/a.gguf", keepAlive: -1, keepAliveSet: true, hasModelOptions: true}},
		{in: "x=/a.gguf,parallel=two", err: "parallel"},
		{in: "x=/a.gguf,colour=red", err: "unknown setting"},
		{in: "x=/a.gguf,oops", err: "not key=value"},
		{in: "id=x", err: "no path"},
		{in: "x=/a.gguf,ctx=-1", err: "negative"},
		{in: "x=/a.gguf,memory=lots", err: "memory"},
	} {
		got, err := parseModelSpec(c.in)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: %v, want an error about %s", c.in, err, c.err)
			}
		case err != nil:
			t.Errorf("%q: %v", c.in, err)
		case got != c.want:
			t.Errorf("%q: %+v, want %+v", c.in, got, c.want)
		}
	}
}

// TestServeSeveralModels runs `serve` with a config file of two models,
// one of them broken: the good one serves by name and by default, the
// broken one answers 503 model_unavailable, /ready lists both.
func TestServeSeveralModels(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.gguf")
	if err := models.Generate(context.Background(), model, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(dir, "broken.gguf")
	if err := os.WriteFile(broken, []byte("GGUF not really"), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	config := filepath.Join(dir, "finserve.yaml")
	yaml := "addr: " + addr + "\nthreads: 1\nprefix-cache-host: 0\nmemory-budget: 1GiB\nshutdown-grace: 2s\nmodel:\n" +
		"  - id: chat\n    path: " + model + "\n    ctx: 256\n    parallel: 2\n" +
		"  - broken=" + broken + ",keep-alive=0\n"
	if err := os.WriteFile(config, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := newServeCmd()
	cmd.SetArgs([]string{"--config", config})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	base := "http://" + addr
	waitFor(t, 30*time.Second, func() bool { return readyAt(base + "/ready") }, func() string { return "server never became ready" })
	post := func(body string) (int, string) {
		resp, err := http.Post(base+"/v1/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, m := range []string{`"chat"`, `""`} {
		if code, body := post(`{"model":` + m + `,"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`); code != 200 || !strings.Contains(body, `"model":"chat"`) {
			t.Errorf("model %s: %d %s", m, code, body)
		}
	}
	if code, body := post(`{"model":"broken","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`); code != 503 || !strings.Contains(body, "model_unavailable") {
		t.Errorf("broken: %d %s", code, body)
	}
	resp, err := http.Get(base + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `"id":"broken"`) || !strings.Contains(string(b), `"state":"failed"`) {
		t.Errorf("/ready: %s", b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("serve did not stop")
	}
}

// TestGPUBudgets: each GPU's budget is its free memory unless named.
func TestGPUBudgets(t *testing.T) {
	gpus := []engine.Device{{Name: "CUDA0", FreeBytes: 80 << 30}, {Name: "CUDA1", FreeBytes: 40 << 30}}
	got, err := gpuBudgets("CUDA1=30GiB", gpus)
	if err != nil || got["CUDA0"] != 80<<30 || got["CUDA1"] != 30<<30 {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"CUDA0", "=1GiB", "CUDA0=lots"} {
		if _, err := gpuBudgets(bad, gpus); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
