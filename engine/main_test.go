package engine_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// Test models, generated once per run: tiny random-weight llama models.
var (
	tinyF32  *engine.Model
	tinyQ8   *engine.Model
	modelDir string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// llama.cpp's own log lines only when asked for (-v shows failures anyway).
	level := slog.LevelWarn
	if os.Getenv("FINSERVE_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	engine.SetLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))

	dir, err := os.MkdirTemp("", "finserve-engine-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	modelDir = dir
	load := func(t models.TensorType) (*engine.Model, error) {
		path := filepath.Join(dir, "tiny-"+t.String()+".gguf")
		if err := models.Generate(context.Background(), path, models.GenOptions{Preset: models.Presets["tiny"], Type: t, Seed: 7}); err != nil {
			return nil, err
		}
		// Without repacked weights, whose kernels treat rows differently by
		// batch position (see Options.UnifiedKV), in both providers.
		return engine.LoadModel(context.Background(), path, engine.ModelOptions{DisableRepack: true})
	}
	if tinyF32, err = load(models.TypeF32); err != nil {
		fmt.Fprintln(os.Stderr, "loading test model:", err)
		return 1
	}
	defer tinyF32.Close()
	if tinyQ8, err = load(models.TypeQ8_0); err != nil {
		fmt.Fprintln(os.Stderr, "loading test model:", err)
		return 1
	}
	defer tinyQ8.Close()
	return m.Run()
}

// newEngine starts an engine on m for one test; defaults suit the tiny model.
func newEngine(t testing.TB, m *engine.Model, o engine.Options) *engine.Engine {
	t.Helper()
	if o.Threads == 0 {
		// One compute thread: ggml's threads spin at a barrier every
		// graph node, and beside other test processes on a small machine
		// a spinning thread burns the time slice its peer needs. Two race
		// runs of this package at once on 2 cores: 177 s with 2 threads,
		// 11 s with 1 (TestCloseUnderLoad keeps 2, for the thread pool).
		o.Threads = 1
	}
	if o.Context == 0 {
		o.Context = 512
	}
	e, err := engine.New(m, o)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// prompt tokenizes text as a plain completion prompt.
func prompt(t testing.TB, m *engine.Model, text string) []engine.Token {
	t.Helper()
	toks, err := m.Tokenize(text, true, false)
	if err != nil {
		t.Fatalf("Tokenize(%q): %v", text, err)
	}
	return toks
}

// result is what a finished generation produced.
type result struct {
	tokens []engine.Token
	lps    []float32               // log-probabilities of tokens, when asked for
	tops   [][]engine.TokenLogprob // alternatives per token, when asked for
	text   string
	final  engine.Event
}

// collect reads a stream to its end, keeping every token.
func collect(t testing.TB, st *engine.Stream) result {
	t.Helper()
	var r result
	for {
		ev, err := st.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		r.text += ev.Text
		if ev.Done {
			r.final = ev
			return r
		}
		r.tokens = append(r.tokens, ev.Token)
		if ev.Logprob != nil {
			r.lps = append(r.lps, ev.Logprob.Logprob)
		}
		if ev.TopLogprobs != nil {
			r.tops = append(r.tops, ev.TopLogprobs)
		}
	}
}

func generate(t testing.TB, e *engine.Engine, req engine.Request) result {
	t.Helper()
	st, err := e.Generate(context.Background(), req)
	if err != nil {
		t.Fatalf("Generate: %v", err)
	}
	r := collect(t, st)
	if r.final.Err != nil {
		t.Fatalf("generation failed: %v", r.final.Err)
	}
	return r
}

// generateAll runs reqs, concurrently when together is set, and returns
// their results in order.
func generateAll(t *testing.T, e *engine.Engine, reqs []engine.Request, together bool) []result {
	t.Helper()
	out := make([]result, len(reqs))
	if !together {
		for i, r := range reqs {
			out[i] = generate(t, e, r)
		}
		return out
	}
	streams := make([]*engine.Stream, len(reqs))
	for i, r := range reqs {
		st, err := e.Generate(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		streams[i] = st
	}
	for i, st := range streams {
		out[i] = collect(t, st)
		if out[i].final.Err != nil {
			t.Fatalf("request %d: %v", i, out[i].final.Err)
		}
	}
	return out
}

// waitStats polls the engine's loop until cond holds (the loop answers
// between steps, so each poll is a fresh snapshot).
func waitStats(t testing.TB, e *engine.Engine, what string, cond func(engine.Stats) bool) engine.Stats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := e.Stats(context.Background())
		if err != nil {
			t.Fatalf("Stats: %v", err)
		}
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last stats %+v", what, s)
		}
		time.Sleep(time.Millisecond)
	}
}

func isCancel(err error) bool { return errors.Is(err, context.Canceled) }

// checkIdle fails unless the engine runs nothing and holds no cells
// beyond what its prefix cache keeps: every slot with memory is a kept or
// pinned one, and the reserved cells are exactly theirs.
func checkIdle(t testing.TB, e *engine.Engine, what string) engine.Stats {
	t.Helper()
	s, err := e.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	p := s.Prefix
	if s.Waiting != 0 || s.Running != 0 || s.Sequences != 0 || s.SlotsWithMemory != p.Kept+p.Pinned ||
		s.KVCellsReserved != p.KeptTokens+p.PinnedTokens {
		t.Fatalf("%s: the engine is not idle or cells leaked: %+v", what, s)
	}
	return s
}
