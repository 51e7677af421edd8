package engine_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"testing"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// loadEmbed generates the embed preset with pooling (q8_0) and loads it.
func loadEmbed(t *testing.T, pooling string) *engine.Model {
	t.Helper()
	path := filepath.Join(t.TempDir(), "embed-"+pooling+".gguf")
	if err := models.Generate(context.Background(), path, models.GenOptions{Preset: models.Presets["embed"], Type: models.TypeQ8_0, Seed: 7, Pooling: pooling}); err != nil {
		t.Fatal(err)
	}
	m, err := engine.LoadModel(context.Background(), path, engine.ModelOptions{DisableRepack: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// embedTexts are inputs of several lengths and scripts.
var embedTexts = []string{
	"hello world",
	"Wire transfer of 9,900 EUR to a newly opened account, the third this week.",
	"客户 在 一周 内 多次 存入 现金",
	"a",
	"The customer asked about the opening hours of the branch on Saturday and whether a passport is enough to open an account there.",
}

func embedAll(t *testing.T, e *engine.Engine, m *engine.Model, texts []string) [][]float32 {
	t.Helper()
	inputs := make([][]engine.Token, len(texts))
	for i, s := range texts {
		inputs[i] = prompt(t, m, s)
	}
	r, err := e.Embed(context.Background(), engine.EmbedRequest{Inputs: inputs})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, in := range inputs {
		n += len(in)
	}
	if r.Tokens != n {
		t.Errorf("%d tokens reported, %d computed", r.Tokens, n)
	}
	return r.Embeddings
}

// embedTolerance is how far (largest absolute difference of a component)
// an input's unit vector may move between a batch and alone: with the
// bundled llama.cpp not at all (1e-5 allows float printing); with a newer
// system llama.cpp (11669, measured on 2026-12-01) 1.3e-3, as its CPU
// flash attention sums an input's cells in an order that depends on what
// shares its micro-batch (cosine above 0.99999).
var embedTolerance = map[string]float64{"bundled": 1e-5, "system": 2e-3}[engine.Provider]

// TestEmbed: on a real llama.cpp embedding model, a batch of inputs gives
// the embeddings each input gets alone, every one a unit vector of the
// model's length, and the engine keeps no cells after.
func TestEmbed(t *testing.T) {
	m := loadEmbed(t, "mean")
	if p := m.Info().Pooling; p != "mean" {
		t.Fatalf("pooling %q", p)
	}
	e := newEngine(t, m, engine.Options{Parallel: 3, Context: 64, Batch: 64})
	batch := embedAll(t, e, m, embedTexts) // 5 inputs on 3 slots: two steps at least
	for i, s := range embedTexts {
		alone := embedAll(t, e, m, []string{s})[0]
		v := batch[i]
		if len(v) != m.Info().Embedding {
			t.Fatalf("input %d: %d dimensions, want %d", i, len(v), m.Info().Embedding)
		}
		var ss, diff float64
		for j := range v {
			ss += float64(v[j]) * float64(v[j])
			diff = max(diff, math.Abs(float64(v[j]-alone[j])))
		}
		if math.Abs(ss-1) > 1e-5 {
			t.Errorf("input %d: squared norm %v", i, ss)
		}
		if diff > embedTolerance {
			t.Errorf("input %d: batch and alone differ by %g", i, diff)
		}
		for k := range i {
			if cos := dot(batch[k], v); cos > 0.999 {
				t.Errorf("inputs %d and %d: cosine %v, as if the same", k, i, cos)
			}
		}
	}
	checkIdle(t, e, "after embedding")
	if _, err := e.Generate(context.Background(), engine.Request{Prompt: prompt(t, m, "hi")}); !errors.Is(err, engine.ErrEmbeddingOnly) {
		t.Errorf("Generate on an embedding model: %v", err)
	}
	long := make([]engine.Token, e.EmbedLimit()+1)
	for i := range long {
		long[i] = 300
	}
	var tooLong *engine.PromptTooLongError
	if _, err := e.Embed(context.Background(), engine.EmbedRequest{Inputs: [][]engine.Token{{300}, long}}); !errors.As(err, &tooLong) || tooLong.Input != 1 {
		t.Errorf("an input longer than the batch: %v", err)
	}
}

// TestEmbedPooling: the model's pooling type is the one llama.cpp pools
// by. The models are causal, so a token's hidden state depends on those
// before it only: CLS pooling (the first token, BOS) gives every input the
// same vector, last-token pooling gives inputs that end alike but start
// differently different vectors, and mean pooling differs from both.
func TestEmbedPooling(t *testing.T) {
	vectors := map[string][][]float32{}
	texts := []string{"alpha beta gamma", "delta beta gamma"}
	for _, p := range []string{"mean", "cls", "last"} {
		m := loadEmbed(t, p)
		if got := m.Info().Pooling; got != p {
			t.Fatalf("pooling %q, want %q", got, p)
		}
		e := newEngine(t, m, engine.Options{Parallel: 2, Context: 64, Batch: 64})
		vectors[p] = embedAll(t, e, m, texts)
	}
	if cos := dot(vectors["cls"][0], vectors["cls"][1]); cos < 0.99999 {
		t.Errorf("cls: two inputs with the same first token: cosine %v, want 1", cos)
	}
	if cos := dot(vectors["last"][0], vectors["last"][1]); cos > 0.999 {
		t.Errorf("last: cosine %v between different inputs", cos)
	}
	for i := range texts {
		for _, other := range []string{"cls", "last"} {
			if cos := dot(vectors["mean"][i], vectors[other][i]); cos > 0.999 {
				t.Errorf("input %d: mean pooling equals %s pooling (cosine %v)", i, other, cos)
			}
		}
	}
}

// TestEmbedConcurrent: requests submitted together share steps and each
// gets what it gets alone (go test -race: the loop owns the context).
func TestEmbedConcurrent(t *testing.T) {
	m := loadEmbed(t, "mean")
	e := newEngine(t, m, engine.Options{Parallel: 4, Context: 64, Batch: 128})
	want := embedAll(t, e, m, embedTexts)
	errs := make(chan error, 8)
	for c := range 8 {
		go func() {
			texts := []string{embedTexts[c%len(embedTexts)], embedTexts[(c+2)%len(embedTexts)]}
			got := embedAll(t, e, m, texts)
			for k, idx := range []int{c % len(embedTexts), (c + 2) % len(embedTexts)} {
				for j := range got[k] {
					if d := math.Abs(float64(got[k][j] - want[idx][j])); d > embedTolerance {
						errs <- fmt.Errorf("client %d input %d differs by %g", c, k, d)
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	checkIdle(t, e, "after concurrent embedding")
}

func dot(a, b []float32) float64 {
	var s float64
	for i := range a {
		s += float64(a[i]) * float64(b[i])
	}
	return s
}
