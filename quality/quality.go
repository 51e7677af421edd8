// Package quality measures how much of a reference model's behaviour a
// candidate model keeps (typically the reference quantized) on a text
// corpus, the way llama.cpp's llama-perplexity --kl-divergence does, so that
// the numbers can be put side by side:
//
//   - the corpus is tokenized once (with the model's BOS), cut into chunks
//     of Options.Context tokens whose first token is replaced by BOS, and
//     only the second half of each chunk is scored: every scored position
//     has at least half a chunk of context;
//   - at each scored position both models' whole next-token distributions
//     come from one batched engine scoring call per chunk (no token-by-token
//     loop), and give the negative log-likelihood of the actual next token
//     (perplexity), the Kullback-Leibler divergence KL(reference ||
//     candidate), and whether both rank the same token first.
//
// Retention, the figure a bank quotes ("keeps 92% of its accuracy"), is
// defined here as top-1 agreement: the share of scored positions at which
// the candidate's most likely next token is the reference's. It needs no
// labelled data and is 100% for a model against itself.
package quality

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"time"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/engine/enginebench"
)

// Options configure Evaluate.
type Options struct {
	// Context is the chunk length in tokens (default 512); the corpus must
	// hold at least two chunks.
	Context int
	// Chunks limits how many chunks are scored (0: all).
	Chunks  int
	Threads int // 0: the number of CPUs
	// SkipSpeed leaves out the prefill and decode speed measurements.
	SkipSpeed bool
	Logger    *slog.Logger // for the engines (default slog.Default())
}

// ModelReport describes one model's side of an evaluation.
type ModelReport struct {
	Path       string
	Type       string // llama.cpp's description, with the file type (e.g. "llama ?B Q4_K - Medium")
	Bytes      int64
	Perplexity float64
	// PrefillTPS and DecodeTPS are prompt and single-stream generation
	// speeds in tokens/s, as llama-bench measures them (pp, tg64).
	PrefillTPS, DecodeTPS float64
}

// Report is the result of an evaluation.
type Report struct {
	Reference, Candidate ModelReport
	// Tokens in the corpus; Chunks scored of Context tokens; Positions
	// scored in all.
	Tokens, Chunks, Context, Positions int
	// KL(reference || candidate) per position, in nats: mean, 99th
	// percentile and maximum.
	KLMean, KLP99, KLMax float64
	// Top1Agreement is the share of positions where both models rank the
	// same next token first; Retention is defined as it (see the package
	// documentation).
	Top1Agreement, Retention float64
	// PerplexityRatio is the candidate's perplexity over the reference's.
	PerplexityRatio float64
	Duration        time.Duration
}

// Evaluate compares cand with ref on text.
func Evaluate(ctx context.Context, ref, cand *engine.Model, text string, opts Options) (*Report, error) {
	start := time.Now()
	if opts.Context == 0 {
		opts.Context = 512
	}
	if opts.Context < 16 {
		return nil, fmt.Errorf("quality: context of %d tokens is too short", opts.Context)
	}
	ri, ci := ref.Info(), cand.Info()
	if ri.VocabSize != ci.VocabSize {
		return nil, fmt.Errorf("quality: the models have different vocabularies (%d and %d tokens); compare a model with its own quantizations", ri.VocabSize, ci.VocabSize)
	}
	tokens, err := ref.Tokenize(text, true, false)
	if err != nil {
		return nil, fmt.Errorf("quality: tokenizing the corpus: %w", err)
	}
	other, err := cand.Tokenize(text, true, false)
	if err != nil {
		return nil, fmt.Errorf("quality: tokenizing the corpus: %w", err)
	}
	if !slices.Equal(tokens, other) || ri.BOS != ci.BOS {
		return nil, errors.New("quality: the models tokenize the corpus differently: their vocabularies differ")
	}
	chunks := len(tokens) / opts.Context
	if chunks < 2 {
		return nil, fmt.Errorf("quality: the corpus has %d tokens; %d are needed for two chunks of %d (a longer corpus or a smaller context)",
			len(tokens), 2*opts.Context, opts.Context)
	}
	if opts.Chunks > 0 {
		chunks = min(chunks, opts.Chunks)
	}
	r := &Report{Tokens: len(tokens), Chunks: chunks, Context: opts.Context}
	engines := make([]*engine.Engine, 2)
	for i, m := range []*engine.Model{ref, cand} {
		e, err := engine.New(m, engine.Options{Parallel: 1, Context: opts.Context, Batch: opts.Context, Threads: opts.Threads,
			PrefixCache: engine.PrefixCache{Disabled: true}, Logger: opts.Logger})
		if err != nil {
			return nil, fmt.Errorf("quality: %w", err)
		}
		defer e.Close()
		engines[i] = e
	}

	first := opts.Context / 2
	var nll [2]float64
	var kls []float64
	agree := 0
	for c := range chunks {
		chunk := slices.Clone(tokens[c*opts.Context : (c+1)*opts.Context])
		if ri.AddBOS && ri.BOS >= 0 {
			chunk[0] = ri.BOS
		}
		var dists [2][][]float32
		for i, e := range engines {
			res, err := e.Score(ctx, engine.ScoreRequest{Variants: [][]engine.Token{chunk}, Distributions: true,
				DistributionsFrom: first, Tier: engine.TierBatch})
			if err != nil {
				return nil, fmt.Errorf("quality: scoring chunk %d: %w", c, err)
			}
			dists[i] = res.Variants[0].Dists
		}
		for k := range dists[0] {
			lr, lc := dists[0][k], dists[1][k]
			next := chunk[first+k+1]
			nll[0] -= float64(lr[next])
			nll[1] -= float64(lc[next])
			kls = append(kls, kl(lr, lc))
			if argmax(lr) == argmax(lc) {
				agree++
			}
		}
	}
	r.Positions = len(kls)
	n := float64(r.Positions)
	r.Reference = ModelReport{Path: ri.Path, Type: ri.Description, Bytes: fileSize(ri.Path), Perplexity: math.Exp(nll[0] / n)}
	r.Candidate = ModelReport{Path: ci.Path, Type: ci.Description, Bytes: fileSize(ci.Path), Perplexity: math.Exp(nll[1] / n)}
	r.PerplexityRatio = r.Candidate.Perplexity / r.Reference.Perplexity
	sum := 0.0
	for _, v := range kls {
		sum += v
	}
	r.KLMean = sum / n
	slices.Sort(kls)
	r.KLP99 = kls[max(0, int(math.Ceil(0.99*n))-1)]
	r.KLMax = kls[len(kls)-1]
	r.Top1Agreement = float64(agree) / n
	r.Retention = r.Top1Agreement

	if !opts.SkipSpeed {
		for i, mr := range []*ModelReport{&r.Reference, &r.Candidate} {
			pp, err := enginebench.Prefill(ctx, engines[i], first, 2)
			if err != nil {
				return nil, fmt.Errorf("quality: measuring prefill: %w", err)
			}
			tg, err := enginebench.Decode(ctx, engines[i], min(64, first), 2)
			if err != nil {
				return nil, fmt.Errorf("quality: measuring decode: %w", err)
			}
			mr.PrefillTPS, mr.DecodeTPS = pp.Mean(), tg.Mean()
		}
	}
	r.Duration = time.Since(start)
	return r, nil
}

// kl is KL(p || q) in nats for log-probabilities lp and lq.
func kl(lp, lq []float32) float64 {
	s := 0.0
	for i, a := range lp {
		if a > -80 { // exp(-80) ≈ 2e-35: no contribution at float64 precision
			s += math.Exp(float64(a)) * float64(a-lq[i])
		}
	}
	return max(s, 0) // rounding can leave -1e-17 for identical rows
}

func argmax(xs []float32) int {
	best := 0
	for i, v := range xs {
		if v > xs[best] {
			best = i
		}
	}
	return best
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}
