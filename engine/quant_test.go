package engine_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// TestQuantize: an f32 model quantizes to smaller, valid, loadable files
// with progress reported per tensor; quantized inputs, corrupt inputs,
// unknown types and writing over the input are refused without leaving a
// file behind.
func TestQuantize(t *testing.T) {
	in := filepath.Join(modelDir, "tiny-f32.gguf")
	dir := t.TempDir()
	sizes := map[string]int64{}
	for _, typ := range []string{"q8_0", "q4_k_m", "f16"} {
		out := filepath.Join(dir, typ+".gguf")
		var done, total int
		res, err := engine.Quantize(context.Background(), in, out, engine.QuantizeOptions{Type: typ, Threads: 2,
			Progress: func(d, n int) { done, total = d, n }})
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		if res.InType != "F32" || !strings.EqualFold(res.OutType, typ) || res.OutBytes >= res.InBytes || res.Ratio() <= 1 {
			t.Fatalf("%s: %+v", typ, res)
		}
		if done == 0 || done != total || total != res.Tensors {
			t.Errorf("%s: progress %d/%d for %d tensors", typ, done, total, res.Tensors)
		}
		if st, err := os.Stat(out); err != nil || st.Mode().Perm() != models.FileMode {
			t.Errorf("%s: mode %v %v, want %v (readable by a server of another UID)", typ, st.Mode(), err, models.FileMode)
		}
		m, err := engine.LoadModel(context.Background(), out, engine.ModelOptions{})
		if err != nil {
			t.Fatalf("%s does not load: %v", typ, err)
		}
		m.Close()
		sizes[typ] = res.OutBytes
	}
	if !(sizes["q4_k_m"] < sizes["q8_0"] && sizes["q8_0"] < sizes["f16"]) {
		t.Errorf("sizes %v: want q4_k_m < q8_0 < f16", sizes)
	}

	corrupt := filepath.Join(dir, "corrupt.gguf")
	data, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(corrupt, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	q8 := filepath.Join(dir, "q8_0.gguf")
	for _, tc := range []struct {
		name, in, out, typ, want string
		requant                  bool
	}{
		{"quantized input", q8, filepath.Join(dir, "x.gguf"), "q4_k_m", "weights already", false},
		{"corrupt input", corrupt, filepath.Join(dir, "y.gguf"), "q8_0", "invalid", false},
		{"unknown type", in, filepath.Join(dir, "z.gguf"), "q9_9", "unknown type", false},
		{"output is the input", q8, q8, "q4_0", "is the input", true},
	} {
		_, err := engine.Quantize(context.Background(), tc.in, tc.out, engine.QuantizeOptions{Type: tc.typ, AllowRequantize: tc.requant})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error about %q", tc.name, err, tc.want)
		}
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, f := range left {
		switch filepath.Base(f) {
		case "q8_0.gguf", "q4_k_m.gguf", "f16.gguf", "corrupt.gguf":
		default:
			t.Errorf("left behind: %s", f)
		}
	}
	// Asked for, requantizing works.
	if _, err := engine.Quantize(context.Background(), q8, filepath.Join(dir, "re.gguf"), engine.QuantizeOptions{Type: "q4_0", AllowRequantize: true}); err != nil {
		t.Fatal(err)
	}
}

// TestScoreDistributions: the whole next-token distributions have a row
// per position asked for, sum to one, and agree exactly with the position
// scores of the same tokens.
func TestScoreDistributions(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 2, FlashAttention: engine.FlashAttentionOff})
	p := prompt(t, tinyQ8, testPrompts[0]+" "+testPrompts[1])
	from := len(p) / 2
	res, err := e.Score(context.Background(), engine.ScoreRequest{Variants: [][]engine.Token{p}, Distributions: true,
		DistributionsFrom: from, Positions: true})
	if err != nil {
		t.Fatal(err)
	}
	v := res.Variants[0]
	if len(v.Dists) != len(p)-1-from {
		t.Fatalf("%d rows for %d tokens from %d", len(v.Dists), len(p), from)
	}
	for k, row := range v.Dists {
		sum := 0.0
		for _, lp := range row {
			sum += math.Exp(float64(lp))
		}
		if math.Abs(sum-1) > 1e-4 || len(row) != tinyQ8.Info().VocabSize {
			t.Fatalf("row %d: %d values summing to %g", k, len(row), sum)
		}
		if got, want := row[p[from+k+1]], v.Positions[from+k]; got != want {
			t.Fatalf("row %d: log p of the next token %g, position score %g", k, got, want)
		}
	}
}
