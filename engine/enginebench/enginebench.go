// Package enginebench measures the engine the way llama.cpp's own tools
// measure llama.cpp, so that the numbers can be put side by side:
//
//   - Prefill (pp) and single-stream decode (tg) as llama-bench does: a
//     prompt of random tokens processed from an empty cache, and a
//     generation of n tokens from position 0, averaged over repetitions
//     after a warm-up run.
//   - Aggregate decode throughput at several concurrency levels as
//     llama-batched-bench does: npl sequences with their own npp-token
//     prompts, then ntg decode steps of npl tokens each.
//
// Unlike the peers, the engine samples every token (greedy, on the raw
// logits) and runs its scheduler; that cost is part of what is measured.
package enginebench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/finserve/finserve/engine"
)

// Result is one measurement: tokens per second over repetitions.
type Result struct {
	Test   string    // "pp512", "tg128", "npl=8 tg128"
	Tokens int       // tokens per repetition
	Rates  []float64 // tokens/s of each repetition
}

// Mean and StdDev of the rates.
func (r Result) Mean() float64 {
	s := 0.0
	for _, v := range r.Rates {
		s += v
	}
	return s / float64(len(r.Rates))
}

// StdDev is the sample standard deviation of the rates.
func (r Result) StdDev() float64 {
	if len(r.Rates) < 2 {
		return 0
	}
	m, s := r.Mean(), 0.0
	for _, v := range r.Rates {
		s += (v - m) * (v - m)
	}
	return math.Sqrt(s / float64(len(r.Rates)-1))
}

func (r Result) String() string {
	return fmt.Sprintf("%-16s %10.2f ± %.2f t/s", r.Test, r.Mean(), r.StdDev())
}

// randomPrompt returns n random tokens, as llama-bench uses.
func randomPrompt(rng *rand.Rand, vocab, n int) []engine.Token {
	p := make([]engine.Token, n)
	for i := range p {
		p[i] = engine.Token(rng.IntN(vocab))
	}
	return p
}

func greedy(prompt []engine.Token, maxTokens int) engine.Request {
	return engine.Request{Prompt: prompt, MaxTokens: maxTokens, IgnoreEOS: true}
}

// run generates req and returns its final event.
func run(ctx context.Context, e *engine.Engine, req engine.Request) (engine.Event, error) {
	st, err := e.Generate(ctx, req)
	if err != nil {
		return engine.Event{}, err
	}
	_, ev, err := st.Collect()
	if err == nil && ev.Usage.CompletionTokens != req.MaxTokens {
		err = fmt.Errorf("generated %d tokens, want %d", ev.Usage.CompletionTokens, req.MaxTokens)
	}
	return ev, err
}

// Prefill measures prompt processing of n tokens: the time from admission
// to the first sampled token, reps times after one warm-up.
func Prefill(ctx context.Context, e *engine.Engine, n, reps int) (Result, error) {
	res := Result{Test: fmt.Sprintf("pp%d", n), Tokens: n}
	rng := rand.New(rand.NewPCG(1, uint64(n)))
	for i := -1; i < reps; i++ {
		ev, err := run(ctx, e, greedy(randomPrompt(rng, e.Model().Info().VocabSize, n), 1))
		if err != nil {
			return res, fmt.Errorf("prefill: %w", err)
		}
		if i >= 0 {
			res.Rates = append(res.Rates, float64(n)/ev.Timings.Prefill.Seconds())
		}
	}
	return res, nil
}

// Decode measures single-stream generation of n tokens from position 0:
// a one-token prompt, then n decode steps timed from the first token.
func Decode(ctx context.Context, e *engine.Engine, n, reps int) (Result, error) {
	res := Result{Test: fmt.Sprintf("tg%d", n), Tokens: n}
	rng := rand.New(rand.NewPCG(2, uint64(n)))
	for i := -1; i < reps; i++ {
		ev, err := run(ctx, e, greedy(randomPrompt(rng, e.Model().Info().VocabSize, 1), n+1))
		if err != nil {
			return res, fmt.Errorf("decode: %w", err)
		}
		if i >= 0 {
			res.Rates = append(res.Rates, float64(n)/ev.Timings.Decode.Seconds())
		}
	}
	return res, nil
}

// Batched measures aggregate decode throughput of npl concurrent
// sequences, each with its own npp-token prompt, generating ntg tokens
// each: npl*ntg tokens over the time from the first token of the last
// sequence to start decoding to the end of the last sequence.
func Batched(ctx context.Context, e *engine.Engine, npl, npp, ntg, reps int) (Result, error) {
	res := Result{Test: fmt.Sprintf("npl=%d tg%d", npl, ntg), Tokens: npl * ntg}
	if npl > e.Options().Parallel {
		return res, fmt.Errorf("batched: %d sequences but the engine runs %d in parallel", npl, e.Options().Parallel)
	}
	rng := rand.New(rand.NewPCG(3, uint64(npl)))
	for i := -1; i < reps; i++ {
		var (
			wg               sync.WaitGroup
			mu               sync.Mutex
			firstTok, endTok time.Time
			errs             []error
		)
		for s := 0; s < npl; s++ {
			prompt := randomPrompt(rng, e.Model().Info().VocabSize, npp)
			wg.Add(1)
			go func() {
				defer wg.Done()
				start := time.Now()
				ev, err := run(ctx, e, greedy(prompt, ntg+1))
				end := time.Now()
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				// The engine's own clock: the first token came Decode before the end.
				first := end.Add(-ev.Timings.Decode)
				if first.Before(start) {
					first = start
				}
				if first.After(firstTok) {
					firstTok = first
				}
				if end.After(endTok) {
					endTok = end
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			return res, fmt.Errorf("batched: %w", err)
		}
		if i >= 0 {
			res.Rates = append(res.Rates, float64(npl*ntg)/endTok.Sub(firstTok).Seconds())
		}
	}
	return res, nil
}
