package bench_test

import (
	"context"
	"io"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/finserve/finserve/bench"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
	"github.com/finserve/finserve/server"
)

// startServer serves a generated tiny model on a loopback port for the
// test and returns its base URL.
func startServer(t *testing.T) string {
	t.Helper()
	return startServerWith(t, server.Config{}, engine.Options{Parallel: 4, Context: 256})
}

// startServerWith serves a generated tiny model with cfg and o (threads
// and logging filled in) and returns the server's root URL.
func startServerWith(t *testing.T, cfg server.Config, o engine.Options) string {
	t.Helper()
	return startModelServer(t, cfg, o, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 5})
}

// startModelServer serves the model gen describes, as "tiny".
func startModelServer(t *testing.T, cfg server.Config, o engine.Options, gen models.GenOptions) string {
	t.Helper()
	engine.SetLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	path := filepath.Join(t.TempDir(), "model.gguf")
	if err := models.Generate(context.Background(), path, gen); err != nil {
		t.Fatal(err)
	}
	m, err := engine.LoadModel(context.Background(), path, engine.ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	o.Threads = 1
	e, err := engine.New(m, o)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv.SetEngine(e, "tiny")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx, time.Second)
		e.Close()
	})
	return "http://" + ln.Addr().String() + "/v1"
}

// TestRunEmbeddings: the embeddings API against a real embedding model
// counts the inputs' tokens and times whole responses; against a text
// model every request fails with its 400.
func TestRunEmbeddings(t *testing.T) {
	base := startModelServer(t, server.Config{}, engine.Options{Parallel: 4},
		models.GenOptions{Preset: models.Presets["embed"], Type: models.TypeQ8_0, Seed: 5})
	cfg := bench.Config{BaseURL: base, Model: "tiny", Clients: 2, Requests: 6, MaxTokens: 1, API: "embeddings", Inputs: 3, QuestionWords: 10}
	r, err := bench.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// each input: BOS and at least a token a word
	if r.Failed != 0 || r.Requests != 6 || r.OutputTokens != 0 || r.PromptTokens < 6*3*11 || r.TotalTPS <= 0 {
		t.Fatalf("result %+v", r)
	}
	if r.TTFT.P50 <= 0 || r.E2E != r.TTFT {
		t.Fatalf("latencies: TTFT %+v, E2E %+v", r.TTFT, r.E2E)
	}
	cfg.BaseURL = startServer(t)
	r, err = bench.Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 6 || r.Errors["400"] != 6 {
		t.Fatalf("against a text model: %+v", r)
	}
}

// TestRunAgainstServer drives a real finserve server on a generated model
// and checks that what bench counts is what the server generated.
func TestRunAgainstServer(t *testing.T) {
	base := startServer(t)
	r, err := bench.Run(context.Background(), bench.Config{BaseURL: base, Model: "tiny", Clients: 4, Requests: 10,
		MaxTokens: 16, IgnoreEOS: true, Prompt: "hello"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 0 || r.Requests != 10 || r.OutputTokens != 160 || r.PromptTokens < 10 {
		t.Fatalf("result %+v", r)
	}
	if r.TTFT.P50 <= 0 || r.TPOT.P50 <= 0 || r.E2E.P50 < r.TTFT.P50 || r.OutputTPS <= 0 {
		t.Fatalf("latencies %+v", r)
	}

	// Conversations with a shared system prompt: every turn resends the
	// history, and finserve serves most of it from its prefix cache.
	r, err = bench.Run(context.Background(), bench.Config{BaseURL: base, Model: "tiny", Clients: 2, Requests: 2,
		MaxTokens: 8, IgnoreEOS: true, SystemWords: 40, QuestionWords: 10, Turns: 3})
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 0 || r.Requests != 6 || len(r.TurnTTFT) != 3 || r.OutputTokens != 48 {
		t.Fatalf("conversations: %+v", r)
	}
	if r.CachedTokens < r.PromptTokens/3 || r.CachedTokens >= r.PromptTokens {
		t.Fatalf("conversations: %d of %d prompt tokens cached", r.CachedTokens, r.PromptTokens)
	}

	// Realtime requests beside a batch-tier background load: both through
	// their tiers' base URLs; the background keeps running until the
	// measured requests are done, and what completed is reported.
	tiers := strings.TrimSuffix(base, "/v1") + "/tiers/"
	r, err = bench.Run(context.Background(), bench.Config{BaseURL: tiers + "realtime/v1", Model: "tiny", Clients: 1, Requests: 6,
		MaxTokens: 8, IgnoreEOS: true, QuestionWords: 12,
		Background: 4, BackgroundURL: tiers + "batch/v1", BackgroundWords: 20, BackgroundMaxTokens: 16})
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 0 || r.Requests != 6 || r.OutputTokens != 48 || r.Background == nil {
		t.Fatalf("with a background load: %+v", r)
	}
	if b := r.Background; b.Clients != 4 || b.Failed != 0 || b.Requests == 0 || b.OutputTokens != 16*b.Requests {
		t.Fatalf("background: %+v", b)
	}

	// Grammar-constrained decoding: every answer a JSON object, ended by
	// the grammar; the field is sent (an unknown format is refused).
	r, err = bench.Run(context.Background(), bench.Config{BaseURL: base, Model: "tiny", Clients: 2, Requests: 4,
		MaxTokens: 32, Prompt: "hello", ResponseFormat: "json_object"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 0 || r.Requests != 4 || r.OutputTokens == 0 {
		t.Fatalf("json_object: %+v", r)
	}
	r, err = bench.Run(context.Background(), bench.Config{BaseURL: base, Model: "tiny", Clients: 1, Requests: 2, MaxTokens: 64, Temperature: 1,
		ResponseFormat: `{"type":"json_schema","json_schema":{"name":"t","schema":{"type":"object","properties":{"t":{"type":"string","minLength":8,"maxLength":8}},"required":["t"]}}}`})
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 0 || r.OutputTokens < 2*4 {
		t.Fatalf("json_schema: %+v", r)
	}
	r, err = bench.Run(context.Background(), bench.Config{BaseURL: base, Model: "tiny", Clients: 1, Requests: 1,
		MaxTokens: 4, ResponseFormat: "xml"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 1 || r.Errors["400"] != 1 {
		t.Fatalf("an unknown response format: %+v", r)
	}

	// A server that refuses is counted as failures, with the reason.
	r, err = bench.Run(context.Background(), bench.Config{BaseURL: base, Model: "no-such-model", Clients: 2, Requests: 3, MaxTokens: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Failed != 3 || len(r.FirstErrors) == 0 || r.Errors["404"] != 3 {
		t.Fatalf("refused requests: %+v", r)
	}
}

func TestDist(t *testing.T) {
	cases := []struct {
		xs             []float64
		p50, p90, mean float64
	}{
		{[]float64{1}, 1, 1, 1},
		{[]float64{3, 1, 2}, 2, 3, 2},
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 5, 9, 5.5},
	}
	for _, c := range cases {
		d := bench.Summarize(c.xs)
		if d.P50 != c.p50 || d.P90 != c.p90 || math.Abs(d.Mean-c.mean) > 1e-12 {
			t.Errorf("%v: %+v", c.xs, d)
		}
	}
}
