package engine_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

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

// BenchmarkPrefixCache: time to first token of a ~900-token prompt cold,
// after a kept-slot hit, and after a host-tier restore with and without
// zstd (one slot: a second prompt evicts the first to the host tier each
// round). FINSERVE_BENCH_MODEL names a bigger model to measure instead of
// the tiny one. Reports ms to the first token and, for the host tier, the
// stored share of the serialized bytes.
func BenchmarkPrefixCache(b *testing.B) {
	m := benchModel(b)
	long := prompt(b, m, strings.Repeat(systemText, 3))
	other := prompt(b, m, "An unrelated question about exchange rates.")
	ttft := func(e *engine.Engine, p []engine.Token) (time.Duration, int) {
		st, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 1})
		if err != nil {
			b.Fatal(err)
		}
		_, ev, err := st.Collect()
		if err != nil || ev.Err != nil {
			b.Fatal(err, ev.Err)
		}
		return ev.Timings.FirstByte, ev.Usage.CachedTokens
	}
	for _, c := range []struct {
		name  string
		pc    engine.PrefixCache
		evict bool
	}{
		{"cold", engine.PrefixCache{Disabled: true}, false},
		{"kept", engine.PrefixCache{}, false},
		{"host", engine.PrefixCache{HostBytes: 1 << 30}, true},
		{"host-zstd", engine.PrefixCache{HostBytes: 1 << 30, Compress: true}, true},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := newEngine(b, m, engine.Options{Parallel: 1, Context: 2048, PrefixCache: c.pc})
			ttft(e, long)
			var total time.Duration
			for range b.N {
				if c.evict {
					ttft(e, other)
					waitStats(b, e, "the spill", func(s engine.Stats) bool { return s.Prefix.Host.Puts == s.Prefix.Spills && s.Prefix.Host.Entries > 0 })
				}
				d, cached := ttft(e, long)
				if (c.name == "cold") != (cached == 0) {
					b.Fatalf("%s: %d cached tokens", c.name, cached)
				}
				total += d
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/ttft")
			if s, _ := e.Stats(context.Background()); s.Prefix.Host.RawBytes > 0 {
				b.ReportMetric(float64(s.Prefix.Host.StoredBytes)/float64(s.Prefix.Host.RawBytes), "stored/raw")
			}
		})
	}
}

// benchModel is the model FINSERVE_BENCH_MODEL names, or the tiny one.
func benchModel(b *testing.B) *engine.Model {
	path := os.Getenv("FINSERVE_BENCH_MODEL")
	if path == "" {
		return tinyQ8
	}
	m, err := engine.LoadModel(context.Background(), path, engine.ModelOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}
