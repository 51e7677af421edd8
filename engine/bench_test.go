package engine_test

import (
	"context"
	"testing"

	"github.com/finserve/finserve/engine"
)

// BenchmarkDecode: single-stream greedy decode on the tiny model, in
// tokens per second (a regression guard for per-step overhead; use
// `finserve model bench` for numbers comparable with llama.cpp).
func BenchmarkDecode(b *testing.B) {
	e := newEngine(b, tinyQ8, engine.Options{Parallel: 1})
	p := prompt(b, tinyQ8, testPrompts[0])
	const n = 128
	b.ResetTimer()
	for range b.N {
		st, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: n, IgnoreEOS: true})
		if err != nil {
			b.Fatal(err)
		}
		if _, ev, err := st.Collect(); err != nil || ev.Usage.CompletionTokens != n {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkBatchedDecode: 8 concurrent greedy streams.
func BenchmarkBatchedDecode(b *testing.B) {
	e := newEngine(b, tinyQ8, engine.Options{Parallel: 8})
	const n, streams = 64, 8
	b.ResetTimer()
	for range b.N {
		var all []*engine.Stream
		for i := range streams {
			st, err := e.Generate(context.Background(), engine.Request{Prompt: prompt(b, tinyQ8, testPrompts[i]), MaxTokens: n, IgnoreEOS: true})
			if err != nil {
				b.Fatal(err)
			}
			all = append(all, st)
		}
		for _, st := range all {
			if _, _, err := st.Collect(); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ReportMetric(float64(n*streams*b.N)/b.Elapsed().Seconds(), "tokens/s")
}

// BenchmarkScore: scoring 16 variants that share a prefix.
func BenchmarkScore(b *testing.B) {
	e := newEngine(b, tinyQ8, engine.Options{Parallel: 8})
	base := prompt(b, tinyQ8, testPrompts[5]+" "+testPrompts[6]+" "+testPrompts[7])
	var variants [][]engine.Token
	for i := range 16 {
		v := append(append([]engine.Token(nil), base...), engine.Token(300+i), engine.Token(400+i))
		variants = append(variants, v)
	}
	b.ResetTimer()
	for range b.N {
		if _, err := e.Score(context.Background(), engine.ScoreRequest{Variants: variants, Targets: []engine.Token{5, 6}}); err != nil {
			b.Fatal(err)
		}
	}
}
