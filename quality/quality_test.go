package quality_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
	"github.com/finserve/finserve/quality"
)

// The test models: a tiny f32 model, its q8_0 and q4_k_m quantizations,
// and a model with another vocabulary.
var f32, q8, q4, otherVocab *engine.Model

var corpus string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	engine.SetLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	dir, err := os.MkdirTemp("", "finserve-quality-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	data, err := os.ReadFile("../testdata/corpus/finance-zh-en.txt")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	corpus = string(data)
	ctx := context.Background()
	load := func(path string) *engine.Model {
		mod, err := engine.LoadModel(ctx, path, engine.ModelOptions{DisableRepack: true})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return mod
	}
	ref := filepath.Join(dir, "f32.gguf")
	other := models.Presets["tiny"]
	other.Vocab = 3000
	for path, p := range map[string]models.Preset{ref: models.Presets["tiny"], filepath.Join(dir, "other.gguf"): other} {
		if err := models.Generate(ctx, path, models.GenOptions{Preset: p, Type: models.TypeF32, Seed: 3}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	for _, typ := range []string{"q8_0", "q4_k_m"} {
		if _, err := engine.Quantize(ctx, ref, filepath.Join(dir, typ+".gguf"), engine.QuantizeOptions{Type: typ, Threads: 2}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	f32, q8, q4, otherVocab = load(ref), load(filepath.Join(dir, "q8_0.gguf")), load(filepath.Join(dir, "q4_k_m.gguf")), load(filepath.Join(dir, "other.gguf"))
	defer func() {
		for _, m := range []*engine.Model{f32, q8, q4, otherVocab} {
			m.Close()
		}
	}()
	return m.Run()
}

var opts = quality.Options{Context: 128, Chunks: 4, Threads: 1, SkipSpeed: true}

// TestKLOrdersQuantizations: against its f32 original, q8_0 diverges less
// than q4_k_m; both divergences are positive and both keep most top-1
// choices; a model against itself diverges not at all.
func TestKLOrdersQuantizations(t *testing.T) {
	ctx := context.Background()
	self, err := quality.Evaluate(ctx, f32, f32, corpus, opts)
	if err != nil {
		t.Fatal(err)
	}
	if self.KLMean != 0 || self.KLMax != 0 || self.Top1Agreement != 1 || self.PerplexityRatio != 1 || self.Positions != 4*63 {
		t.Fatalf("f32 against itself: %+v", self)
	}
	r8, err := quality.Evaluate(ctx, f32, q8, corpus, opts)
	if err != nil {
		t.Fatal(err)
	}
	r4, err := quality.Evaluate(ctx, f32, q4, corpus, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("q8_0: KL mean %.3g p99 %.3g, top-1 %.3f, PPL %.4g/%.4g", r8.KLMean, r8.KLP99, r8.Top1Agreement, r8.Candidate.Perplexity, r8.Reference.Perplexity)
	t.Logf("q4_k_m: KL mean %.3g p99 %.3g, top-1 %.3f, PPL %.4g/%.4g", r4.KLMean, r4.KLP99, r4.Top1Agreement, r4.Candidate.Perplexity, r4.Reference.Perplexity)
	switch {
	case !(r8.KLMean > 0 && r4.KLMean > r8.KLMean):
		t.Errorf("KL: q8_0 %g, q4_k_m %g; want 0 < q8_0 < q4_k_m", r8.KLMean, r4.KLMean)
	case r8.KLP99 < r8.KLMean || r8.KLMax < r8.KLP99:
		t.Errorf("q8_0 KL statistics out of order: %+v", r8)
	case r8.Top1Agreement < r4.Top1Agreement || r8.Top1Agreement > 1 || r8.Retention != r8.Top1Agreement:
		t.Errorf("top-1 agreement: q8_0 %g, q4_k_m %g", r8.Top1Agreement, r4.Top1Agreement)
	case r8.Reference.Perplexity != self.Reference.Perplexity:
		t.Errorf("the reference's perplexity changed with the candidate: %g vs %g", r8.Reference.Perplexity, self.Reference.Perplexity)
	}
}

// TestEvaluateErrors: mismatched vocabularies, a corpus too short for two
// chunks and a context too small are clear errors.
func TestEvaluateErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		cand      *engine.Model
		text      string
		o         quality.Options
		wantError string
	}{
		{"other vocabulary", otherVocab, corpus, opts, "different vocabularies"},
		{"short corpus", q8, "a few words", opts, "two chunks"},
		{"tiny context", q8, corpus, quality.Options{Context: 8}, "too short"},
	} {
		if _, err := quality.Evaluate(ctx, f32, tc.cand, tc.text, tc.o); err == nil || !strings.Contains(err.Error(), tc.wantError) {
			t.Errorf("%s: %v, want an error about %q", tc.name, err, tc.wantError)
		}
	}
}

// TestSpeeds: the speed measurements run and give positive rates.
func TestSpeeds(t *testing.T) {
	o := opts
	o.Chunks, o.SkipSpeed = 2, false
	r, err := quality.Evaluate(context.Background(), f32, q8, corpus, o)
	if err != nil {
		t.Fatal(err)
	}
	if r.Reference.PrefillTPS <= 0 || r.Candidate.DecodeTPS <= 0 || r.Candidate.Bytes >= r.Reference.Bytes {
		t.Fatalf("%+v", r)
	}
}
