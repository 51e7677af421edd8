package engine_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/finserve/finserve/engine"
)

var errNotYet = errors.New("not yet")

// coalitionVariants renders one prompt per subset of features, each
// feature either present or replaced by its baseline, the way Shapley
// attribution asks: variants that differ in several places.
func coalitionVariants(t *testing.T, m *engine.Model, k int) [][]engine.Token {
	features := []string{"cash just below threshold: 3", "pass-through within 48h: 95%", "fan-in: 12 accounts",
		"dormant reactivated: yes", "round amounts: 80%", "高风险地区: 是", "velocity vs 90 days: 4.2x"}
	var vs [][]engine.Token
	for mask := 0; mask < 1<<k; mask++ {
		var b strings.Builder
		b.WriteString("Assess the case. Features:")
		for i := 0; i < k; i++ {
			if mask&(1<<i) != 0 {
				b.WriteString("\n- " + features[i])
			} else {
				b.WriteString("\n- " + features[i][:strings.Index(features[i], ":")] + ": none")
			}
		}
		b.WriteString("\nAnswer:")
		vs = append(vs, prompt(t, m, b.String()))
	}
	return vs
}

// TestScoreTree: variants scored over their prefix tree get the scores
// they get alone, whatever the slots, the cache layout and the shape
// (duplicates, a variant that is a prefix of another, variants without a
// common prefix); the tree computes each shared token once.
func TestScoreTree(t *testing.T) {
	const tolerance = 1e-4
	shapley := coalitionVariants(t, tinyQ8, 4)
	odd := [][]engine.Token{
		shapley[3], shapley[3], // duplicates
		shapley[5][:len(shapley[5])-4], shapley[5], // one a prefix of the other
		prompt(t, tinyQ8, "Another prompt entirely")[1:], // no BOS: no common prefix
		shapley[0][1:6], shapley[0][1:9],
	}
	// A unified cache is not batch-invariant (see Options.UnifiedKV): once
	// sequences free cells out of order, later ones land in those holes and
	// sum attention in another order; this random-weight model magnifies
	// that to a few hundredths. Wrong cells would cost whole nats.
	const unifiedTolerance = 0.25
	cases := []struct {
		name      string
		variants  [][]engine.Token
		opts      engine.Options
		tolerance float64
	}{
		{"coalitions, 4 slots", shapley, engine.Options{Parallel: 4}, tolerance},
		{"coalitions, 1 slot", shapley, engine.Options{Parallel: 1}, tolerance},
		{"coalitions, no prefix cache", shapley, engine.Options{Parallel: 2, PrefixCache: engine.PrefixCache{Disabled: true}}, tolerance},
		{"coalitions, 1 slot unified", shapley, engine.Options{Parallel: 1, UnifiedKV: true, KVCells: 1024}, tolerance},
		{"coalitions, 3 slots unified", shapley, engine.Options{Parallel: 3, UnifiedKV: true, KVCells: 1024}, unifiedTolerance},
		{"odd shapes, 4 slots", odd, engine.Options{Parallel: 4}, tolerance},
		{"odd shapes, 2 slots unified", odd, engine.Options{Parallel: 2, UnifiedKV: true, KVCells: 512}, unifiedTolerance},
	}
	// Flash attention off throughout: the system provider's flash-attention
	// kernel rounds differently for different numbers of query rows (see
	// TestChunkedPrefillEqualsSingleShot), which is not what this tests.
	for i := range cases {
		cases[i].opts.FlashAttention = engine.FlashAttentionOff
	}
	targets := []engine.Token{5, 400, 900}
	ref := newEngine(t, tinyQ8, engine.Options{Parallel: 1, PrefixCache: engine.PrefixCache{Disabled: true}, FlashAttention: engine.FlashAttentionOff})
	alone := func(v []engine.Token) engine.VariantScore {
		s, err := ref.Score(context.Background(), engine.ScoreRequest{Variants: [][]engine.Token{v}, Targets: targets, TopK: 3, Positions: true})
		if err != nil {
			t.Fatal(err)
		}
		return s.Variants[0]
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, tinyQ8, tc.opts)
			for _, positions := range []bool{false, true} {
				got, err := e.Score(context.Background(), engine.ScoreRequest{Variants: tc.variants, Targets: targets, TopK: 3, Positions: positions})
				if err != nil {
					t.Fatal(err)
				}
				flat := 0
				for _, v := range tc.variants {
					flat += len(v) - got.SharedPrefix
				}
				if got.EvaluatedTokens <= got.SharedPrefix || got.EvaluatedTokens-got.SharedPrefix >= flat {
					t.Errorf("evaluated %d tokens (shared prefix %d), want fewer than the %d past the prefix of all variants", got.EvaluatedTokens, got.SharedPrefix, flat)
				}
				for i, v := range tc.variants {
					want := alone(v)
					if !positions {
						want.Positions = nil
					}
					g := got.Variants[i]
					if tc.tolerance > tolerance {
						g.Top, want.Top = nil, nil // near-ties may swap places
					}
					compareScores(t, fmt.Sprintf("positions %v, variant %d", positions, i), g, want, tc.tolerance)
				}
			}
			checkIdle(t, e, "after scoring")
		})
	}
}

// TestScoreTreeCancel: cancelling a tree half-way frees every cell.
func TestScoreTreeCancel(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 3, UnifiedKV: true, KVCells: 1024})
	vs := coalitionVariants(t, tinyQ8, 6)
	// Cancelled while queued behind a generation that holds the only slot
	// and outlasts the test (16,000 tokens): the cancel is certain to
	// reach a tree that has not finished.
	q := newEngine(t, tinyQ8, engine.Options{Parallel: 1, Context: 16384})
	hog, err := q.Generate(context.Background(), engine.Request{Prompt: []engine.Token{1, 2, 3}, MaxTokens: 16000, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	waitStats(t, q, "the hog runs", func(s engine.Stats) bool { return s.Running == 1 })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := q.Score(ctx, engine.ScoreRequest{Variants: vs, Targets: []engine.Token{5}})
		done <- err
	}()
	waitStats(t, q, "the tree waits", func(s engine.Stats) bool { return s.Waiting == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("a tree cancelled before it started: %v, want context.Canceled", err)
	}
	hog.Close()
	hog.Collect()
	checkIdle(t, q, "after a tree cancelled in the queue")

	// And cancelled in the middle: some steps done, the tree unfinished.
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		_, err := e.Score(ctx, engine.ScoreRequest{Variants: vs, Targets: []engine.Token{5}})
		done <- err
	}()
	// A few steps in (or finished: whichever comes first), cancel; either
	// way nothing may be left behind.
	var result error = errNotYet
	for result == errNotYet {
		select {
		case result = <-done:
		default:
			if st, err := e.Stats(context.Background()); err != nil || st.Steps > 3 {
				cancel()
				result = <-done
			}
		}
	}
	cancel()
	checkIdle(t, e, "after a cancelled tree")
}
