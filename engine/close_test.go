package engine_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// TestCloseUnderLoad: closing a model closes the engines still open on it
// first (llama.cpp frees a context after its model only through a
// use-after-free), ending their requests with ErrStopped, whatever they
// hold: sampler chains, grammars, score trees, waiting requests.
func TestCloseUnderLoad(t *testing.T) {
	m, err := engine.LoadModel(context.Background(), filepath.Join(modelDir, "tiny-q8_0.gguf"), engine.ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gen, err := engine.New(m, engine.Options{Parallel: 2, Context: 4096, Threads: 2})
	if err != nil {
		t.Fatal(err)
	}
	score, err := engine.New(m, engine.Options{Parallel: 2, Context: 512, Threads: 1, UnifiedKV: true})
	if err != nil {
		t.Fatal(err)
	}
	p := prompt(t, m, testPrompts[0])
	seed := uint32(3)
	var streams []*engine.Stream
	for _, s := range []engine.Sampling{
		{Temperature: 0.8, TopK: 40, Seed: &seed},
		{Temperature: 0.7, RepeatPenalty: 1.1, Seed: &seed, Grammar: `root ::= [a-z ] root`}, // never complete
		{}, // waits for a slot
	} {
		st, err := gen.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 4000, IgnoreEOS: s.Grammar == "", Sampling: s})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	for _, st := range streams[:2] {
		if _, err := st.Recv(); err != nil { // running: a token arrived
			t.Fatal(err)
		}
	}
	var variants [][]engine.Token
	for i := range 64 {
		variants = append(variants, append(append([]engine.Token{}, p...), engine.Token(100+i), engine.Token(200+i)))
	}
	var wg sync.WaitGroup
	var scoreErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, scoreErr = score.Score(context.Background(), engine.ScoreRequest{Variants: variants, Targets: []engine.Token{5}})
	}()

	m.Close()
	for i, st := range streams {
		r := collect(t, st)
		if !errors.Is(r.final.Err, engine.ErrStopped) {
			t.Errorf("stream %d ended with %v, want ErrStopped", i, r.final.Err)
		}
	}
	wg.Wait()
	if scoreErr != nil && !errors.Is(scoreErr, engine.ErrStopped) {
		t.Errorf("score: %v, want a result or ErrStopped", scoreErr)
	}
	if _, err := gen.Generate(context.Background(), engine.Request{Prompt: p}); !errors.Is(err, engine.ErrStopped) {
		t.Errorf("Generate after the model closed: %v, want ErrStopped", err)
	}
	if _, err := engine.New(m, engine.Options{}); err == nil {
		t.Error("engine.New on a closed model succeeded")
	}
	gen.Close() // idempotent after the model closed them
	score.Close()
	m.Close()
}

// TestCloseAfterFailures: failed and cancelled loads and refused engines
// leave nothing behind that a later close or load trips on.
func TestCloseAfterFailures(t *testing.T) {
	good := filepath.Join(modelDir, "tiny-q8_0.gguf")
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "cut.gguf")
	if err := os.WriteFile(bad, data[:len(data)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := engine.LoadModel(context.Background(), bad, engine.ModelOptions{}); !errors.Is(err, engine.ErrInvalidModel) {
		t.Fatalf("truncated model: %v, want ErrInvalidModel", err)
	}
	// Cancelled while llama.cpp reads the tensors.
	ctx, cancel := context.WithCancel(context.Background())
	_, err = engine.LoadModel(ctx, good, engine.ModelOptions{Progress: func(float32) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("load cancelled in progress: %v, want context.Canceled", err)
	}
	if _, err := engine.LoadModel(context.Background(), good, engine.ModelOptions{GPULayers: models.GPULayersAuto, Serving: engine.ServingShape{CacheTypeK: "q3_K"}}); err == nil || !strings.Contains(err.Error(), "q8_0") {
		t.Fatalf("a bad KV cache type at load: %v, want an error listing the types", err)
	}

	m, err := engine.LoadModel(context.Background(), good, engine.ModelOptions{GPULayers: models.GPULayersAuto})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		o    engine.Options
		want string
	}{
		{engine.Options{CacheTypeV: "q8_0", FlashAttention: engine.FlashAttentionOff}, "needs flash attention"},
		{engine.Options{CacheTypeK: "q4_K"}, "KV cache type"},
		{engine.Options{Parallel: 300}, "parallel"},
	} {
		tc.o.Threads, tc.o.Context = 1, 256
		if e, err := engine.New(m, tc.o); err == nil || !strings.Contains(err.Error(), tc.want) {
			if e != nil {
				e.Close()
			}
			t.Errorf("engine.New(%+v): %v, want an error with %q", tc.o, err, tc.want)
		}
	}
	e := newEngine(t, m, engine.Options{Parallel: 1, Context: 256})
	generate(t, e, engine.Request{Prompt: prompt(t, m, "after failures"), MaxTokens: 4})
	e.Close()
	m.Close()
}

// TestKVCacheTypes: quantized KV caches serve (with flash attention, which
// a quantized V cache needs), and greedy output from a q8_0 cache stays
// close to f16's: the first tokens agree.
func TestKVCacheTypes(t *testing.T) {
	p := prompt(t, tinyQ8, testPrompts[1])
	ref := generate(t, newEngine(t, tinyQ8, engine.Options{Parallel: 1, FlashAttention: engine.FlashAttentionOn}), engine.Request{Prompt: p, MaxTokens: 8, IgnoreEOS: true})
	for _, kv := range [][2]string{{"f16", "f16"}, {"q8_0", "q8_0"}, {"q8_0", "f16"}, {"q4_0", "q4_0"}, {"f32", "f32"}} {
		e := newEngine(t, tinyQ8, engine.Options{Parallel: 2, FlashAttention: engine.FlashAttentionOn, CacheTypeK: kv[0], CacheTypeV: kv[1]})
		o := e.Options()
		if o.CacheTypeK != kv[0] || o.CacheTypeV != kv[1] {
			t.Fatalf("options %q/%q, want %v", o.CacheTypeK, o.CacheTypeV, kv)
		}
		got := generate(t, e, engine.Request{Prompt: p, MaxTokens: 8, IgnoreEOS: true})
		if len(got.tokens) != 8 {
			t.Fatalf("KV %v: %d tokens", kv, len(got.tokens))
		}
		if kv[0] == "f16" && kv[1] == "f16" && !equalTokens(got.tokens, ref.tokens) {
			t.Errorf("f16 KV (explicit) %v differs from the default %v", got.tokens, ref.tokens)
		}
		if kv[0] == "q8_0" && got.tokens[0] != ref.tokens[0] {
			t.Errorf("KV %v: first token %d, f16 gave %d", kv, got.tokens[0], ref.tokens[0])
		}
		e.Close()
	}
}

func equalTokens(a, b []engine.Token) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
