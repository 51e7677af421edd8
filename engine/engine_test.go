package engine_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/finserve/finserve/engine"
)

var testPrompts = []string{
	"The bank account balance is",
	"请问我的信用卡账单什么时候到期?",
	"Transfer 5000 USD to account 1234 because",
	"客户身份证号码与手机号码",
	"Hello 🙂 how are you today",
	"Suspicious transaction report: cash deposits of",
	"理财产品的风险等级",
	"The interest rate on the loan was raised to",
}

// TestBatchedGreedyEqualsAlone: a request's greedy output (tokens and
// their log-probabilities, bit for bit) is the same whether it runs alone or
// in one batch with 7 other requests that start and finish at different
// times, with a KV stream per sequence (the default) and quantized weights.
func TestBatchedGreedyEqualsAlone(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 8})
	// Different lengths: sequences finish, and the rest go on, at
	// different depths.
	checkBatchedEqualsAlone(t, e, tinyQ8, func(i int) int { return 16 + 8*i })
}

// TestJoiningRequestsLeaveOutputUnchanged: requests that arrive while a
// generation runs (their prompts prefilled in the same steps as its decode
// tokens) and leave before it ends do not change its output.
func TestJoiningRequestsLeaveOutputUnchanged(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 4})
	x := engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[0]), MaxTokens: 48, IgnoreEOS: true, Logprobs: true}
	alone := generate(t, e, x)
	long := prompt(t, tinyQ8, strings.Repeat("风险 risk ", 60))
	for _, n := range []int{1, 2, 3, 40, len(long)} {
		st, err := e.Generate(context.Background(), x)
		if err != nil {
			t.Fatal(err)
		}
		var lps []float32
		for i := 0; ; i++ {
			ev, err := st.Recv()
			if err != nil || ev.Err != nil {
				t.Fatal(err, ev.Err)
			}
			if ev.Done {
				break
			}
			lps = append(lps, ev.Logprob.Logprob)
			if i == 5 || i == 20 {
				other, err := e.Generate(context.Background(), engine.Request{Prompt: long[:n], MaxTokens: 3, IgnoreEOS: true})
				if err != nil {
					t.Fatal(err)
				}
				defer other.Close()
			}
		}
		if j := firstDiff(lps, alone.lps); j >= 0 {
			t.Errorf("with %d-token requests joining: output differs from token %d on", n, j)
		}
	}
}

func firstDiff(a, b []float32) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func checkBatchedEqualsAlone(t *testing.T, e *engine.Engine, m *engine.Model, maxTokens func(int) int) {
	t.Helper()
	reqs := make([]engine.Request, len(testPrompts))
	alone := make([]result, len(testPrompts))
	for i, p := range testPrompts {
		reqs[i] = engine.Request{Prompt: prompt(t, m, p), MaxTokens: maxTokens(i), IgnoreEOS: true, Logprobs: true}
		alone[i] = generate(t, e, reqs[i])
	}
	// All eight at once: the engine admits them in one step.
	for i, got := range generateAll(t, e, reqs, true) {
		if !slices.Equal(got.tokens, alone[i].tokens) {
			t.Errorf("request %d (%q): batched tokens differ from alone\nalone:   %v\nbatched: %v", i, testPrompts[i], alone[i].tokens, got.tokens)
		}
		if j := firstDiff(got.lps, alone[i].lps); j >= 0 {
			t.Errorf("request %d: batched log-probabilities differ from alone from token %d on (%d tokens)", i, j, len(got.lps))
		}
		if got.text != alone[i].text {
			t.Errorf("request %d: text differs", i)
		}
	}
}

// TestCancelledRequestsLeaveNoTrace: 1,000 requests cancelled at every
// stage (waiting, prefilling, generating) leave the KV cache and the
// sequence table as they were, and the engine's output unchanged.
func TestCancelledRequestsLeaveNoTrace(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 8, Batch: 64})
	probe := engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[0]), MaxTokens: 32, IgnoreEOS: true}
	before := generate(t, e, probe)
	checkIdle(t, e, "before")

	const total = 1000
	long := prompt(t, tinyQ8, "长提示 "+fmt.Sprint(make([]int, 60))) // a prompt that takes several 64-token chunks
	rng := rand.New(rand.NewPCG(1, 2))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32) // at most 32 in flight: some wait in the queue
	var mu sync.Mutex
	outcomes := map[string]int{}
	for i := 0; i < total; i++ {
		p := long
		if i%2 == 0 {
			p = prompt(t, tinyQ8, testPrompts[i%len(testPrompts)])
		}
		cancelAfter := rng.IntN(6) // 0: cancel before the first token
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := e.Generate(ctx, engine.Request{Prompt: p, MaxTokens: 200, IgnoreEOS: true})
			if err != nil {
				t.Errorf("Generate: %v", err)
				return
			}
			if cancelAfter == 0 {
				cancel()
			}
			n := 0
			for {
				ev, err := st.Recv()
				if err != nil {
					t.Errorf("Recv: %v", err)
					return
				}
				if ev.Done {
					mu.Lock()
					defer mu.Unlock()
					switch {
					case isCancel(ev.Err):
						outcomes[fmt.Sprintf("cancelled after %d tokens", min(n, 1))]++
					default:
						t.Errorf("request ended with %v, finish %q, want a cancellation", ev.Err, ev.Finish)
					}
					return
				}
				n++
				if n == cancelAfter {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("outcomes: %v", outcomes)

	checkIdle(t, e, fmt.Sprintf("after %d cancellations", total))
	again := generate(t, e, probe)
	if !slices.Equal(again.tokens, before.tokens) {
		t.Fatalf("output changed after the cancellations:\nbefore %v\nafter  %v", before.tokens, again.tokens)
	}
}

// TestChunkedPrefillEqualsSingleShot: a prompt longer than the step
// budget, prefilled in chunks over several steps, gives the same first
// token and the same scores as one prefill in a single step.
//
// Without flash attention both providers agree to the bit. With it, the
// newer ggml of the system provider uses another flash-attention kernel
// for many query rows than for few, and scores move by up to about 0.12
// in log-probability on these random-weight models (measured on Debian's
// ggml 0.27); the tolerance says so.
func TestChunkedPrefillEqualsSingleShot(t *testing.T) {
	text := ""
	for i := 0; len(text) < 900; i++ {
		text += testPrompts[i%len(testPrompts)] + " "
	}
	faTolerance := 1e-4
	if engine.Provider == "system" {
		faTolerance = 0.25
	}
	for _, tc := range []struct {
		name      string
		model     *engine.Model
		fa        engine.FlashAttention
		tolerance float64 // log-probability, absolute
	}{
		{"f32/no-fa", tinyF32, engine.FlashAttentionOff, 1e-4},
		{"q8_0/no-fa", tinyQ8, engine.FlashAttentionOff, 1e-4},
		{"f32/fa", tinyF32, engine.FlashAttentionOn, faTolerance},
		{"q8_0/fa", tinyQ8, engine.FlashAttentionOn, faTolerance},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.model
			p := prompt(t, m, text)
			whole := newEngine(t, m, engine.Options{Parallel: 2, Batch: 1024, FlashAttention: tc.fa})
			chunked := newEngine(t, m, engine.Options{Parallel: 2, Batch: 48, FlashAttention: tc.fa})
			if len(p) <= 48*3 {
				t.Fatalf("prompt of %d tokens is too short for the test", len(p))
			}
			req := engine.Request{Prompt: p, MaxTokens: 8, IgnoreEOS: true}
			a, b := generate(t, whole, req), generate(t, chunked, req)
			// Within a loose tolerance a near-tie may flip; the scores below
			// bound the difference then.
			if a.tokens[0] != b.tokens[0] && tc.tolerance <= 1e-4 {
				t.Errorf("first token differs: single-shot %d, chunked %d", a.tokens[0], b.tokens[0])
			}
			sreq := engine.ScoreRequest{Variants: [][]engine.Token{p}, Targets: []engine.Token{5, 300, 1000}, TopK: 5, Positions: true}
			sa, err := whole.Score(context.Background(), sreq)
			if err != nil {
				t.Fatal(err)
			}
			sb, err := chunked.Score(context.Background(), sreq)
			if err != nil {
				t.Fatal(err)
			}
			va, vb := sa.Variants[0], sb.Variants[0]
			if tc.tolerance > 1e-4 {
				va.Top, vb.Top = nil, nil // near-ties may swap places
			}
			compareScores(t, "chunked vs single-shot", va, vb, tc.tolerance)
		})
	}
}

func compareScores(t *testing.T, what string, a, b engine.VariantScore, tol float64) {
	t.Helper()
	worst := 0.0
	check := func(x, y float32) {
		worst = max(worst, math.Abs(float64(x-y)))
	}
	if len(a.Targets) != len(b.Targets) || len(a.Positions) != len(b.Positions) || len(a.Top) != len(b.Top) {
		t.Fatalf("%s: result shapes differ", what)
	}
	for i := range a.Targets {
		check(a.Targets[i], b.Targets[i])
	}
	for i := range a.Positions {
		check(a.Positions[i], b.Positions[i])
	}
	for i := range a.Top {
		if a.Top[i].Token != b.Top[i].Token {
			t.Errorf("%s: top-%d token %d vs %d", what, i, a.Top[i].Token, b.Top[i].Token)
		}
		check(a.Top[i].Logprob, b.Top[i].Logprob)
	}
	if worst > tol {
		t.Errorf("%s: scores differ by up to %g (tolerance %g)", what, worst, tol)
	}
	t.Logf("%s: largest difference %g", what, worst)
}

// TestPromptLimits: a prompt that cannot fit the context is a clear error;
// one that just fits generates.
func TestPromptLimits(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 2, Context: 64})
	mk := func(n int) []engine.Token {
		p := make([]engine.Token, n)
		for i := range p {
			p[i] = engine.Token(300 + i)
		}
		return p
	}
	_, err := e.Generate(context.Background(), engine.Request{Prompt: mk(64)})
	var tl *engine.PromptTooLongError
	if !errors.As(err, &tl) || tl.Tokens != 64 || tl.Limit != 63 {
		t.Fatalf("64-token prompt in a 64-token context: got %v, want PromptTooLongError{64, 63}", err)
	}
	r := generate(t, e, engine.Request{Prompt: mk(63), IgnoreEOS: true})
	if r.final.Finish != engine.FinishLength || r.final.Usage.CompletionTokens != 1 {
		t.Fatalf("63-token prompt: finish %q after %d tokens, want length after 1", r.final.Finish, r.final.Usage.CompletionTokens)
	}
	r = generate(t, e, engine.Request{Prompt: mk(10), MaxTokens: 1000, IgnoreEOS: true})
	if r.final.Usage.CompletionTokens != 54 {
		t.Fatalf("max_tokens beyond the context: generated %d, want 54 (capped)", r.final.Usage.CompletionTokens)
	}
	if _, err := e.Score(context.Background(), engine.ScoreRequest{Variants: [][]engine.Token{mk(65)}}); !errors.As(err, &tl) {
		t.Fatalf("scoring 65 tokens in a 64-token context: got %v, want PromptTooLongError", err)
	}
}

// TestInvalidRequests: everything that could reach a llama.cpp assertion is
// refused with an error naming the field.
func TestInvalidRequests(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 2})
	good := prompt(t, tinyQ8, "hello")
	nan := float32(math.NaN())
	vocab := engine.Token(tinyQ8.Info().VocabSize)
	gen := []struct {
		field string
		req   engine.Request
	}{
		{"prompt", engine.Request{}},
		{"prompt", engine.Request{Prompt: []engine.Token{1, -1}}},
		{"prompt", engine.Request{Prompt: []engine.Token{vocab}}},
		{"max_tokens", engine.Request{Prompt: good, MaxTokens: -1}},
		{"temperature", engine.Request{Prompt: good, Sampling: engine.Sampling{Temperature: nan}}},
		{"temperature", engine.Request{Prompt: good, Sampling: engine.Sampling{Temperature: -1}}},
		{"top_p", engine.Request{Prompt: good, Sampling: engine.Sampling{TopP: 1.5}}},
		{"top_k", engine.Request{Prompt: good, Sampling: engine.Sampling{TopK: -3}}},
		{"min_p", engine.Request{Prompt: good, Sampling: engine.Sampling{MinP: nan}}},
		{"repeat_penalty", engine.Request{Prompt: good, Sampling: engine.Sampling{RepeatPenalty: float32(math.Inf(1))}}},
		{"frequency_penalty", engine.Request{Prompt: good, Sampling: engine.Sampling{FrequencyPenalty: 3}}},
		{"presence_penalty", engine.Request{Prompt: good, Sampling: engine.Sampling{PresencePenalty: -2.5}}},
		{"stop", engine.Request{Prompt: good, Stop: []string{""}}},
		{"stop", engine.Request{Prompt: good, Stop: make([]string, 17)}},
		{"top_logprobs", engine.Request{Prompt: good, TopLogprobs: 21}},
		{"tier", engine.Request{Prompt: good, Tier: 7}},
		{"penalty_last_n", engine.Request{Prompt: good, Sampling: engine.Sampling{PenaltyLastN: -1}}},
		{"grammar", engine.Request{Prompt: good, Sampling: engine.Sampling{Grammar: "root ::= undefined-rule"}}},
		{"grammar", engine.Request{Prompt: good, Sampling: engine.Sampling{Grammar: `root ::= "a`}}},
		{"grammar", engine.Request{Prompt: good, Sampling: engine.Sampling{Grammar: "root ::= root \"a\""}}},
		{"grammar", engine.Request{Prompt: good, Sampling: engine.Sampling{Grammar: "root ::= \"a\"\x00"}}},
		{"grammar", engine.Request{Prompt: good, Sampling: engine.Sampling{Grammar: "root ::= " + strings.Repeat("(", 100) + `"a"` + strings.Repeat(")", 100)}}},
		{"grammar", engine.Request{Prompt: good, IgnoreEOS: true, Sampling: engine.Sampling{Grammar: `root ::= "a"`}}},
	}
	for _, tc := range gen {
		_, err := e.Generate(context.Background(), tc.req)
		var ir *engine.InvalidRequestError
		if !errors.As(err, &ir) || ir.Field != tc.field {
			t.Errorf("Generate(%+v): got %v, want an invalid %s", tc.req, err, tc.field)
		}
	}
	score := []struct {
		field string
		req   engine.ScoreRequest
	}{
		{"variants", engine.ScoreRequest{}},
		{"variants", engine.ScoreRequest{Variants: [][]engine.Token{good, {}}}},
		{"variants", engine.ScoreRequest{Variants: [][]engine.Token{{vocab + 5}}}},
		{"targets", engine.ScoreRequest{Variants: [][]engine.Token{good}, Targets: []engine.Token{-2}}},
		{"top_k", engine.ScoreRequest{Variants: [][]engine.Token{good}, TopK: 101}},
		{"distributions", engine.ScoreRequest{Variants: [][]engine.Token{good, good}, Distributions: true}},
		{"distributions_from", engine.ScoreRequest{Variants: [][]engine.Token{good}, Distributions: true, DistributionsFrom: len(good) - 1}},
		{"distributions_from", engine.ScoreRequest{Variants: [][]engine.Token{good}, Distributions: true, DistributionsFrom: -1}},
	}
	for _, tc := range score {
		_, err := e.Score(context.Background(), tc.req)
		var ir *engine.InvalidRequestError
		if !errors.As(err, &ir) || ir.Field != tc.field {
			t.Errorf("Score(%+v): got %v, want an invalid %s", tc.req, err, tc.field)
		}
	}
	// The engine still serves.
	generate(t, e, engine.Request{Prompt: good, MaxTokens: 4})
}

// TestTokenizeRoundTrip: text in Chinese, English and emoji tokenizes and
// detokenizes back to itself, through byte fallback where needed.
func TestTokenizeRoundTrip(t *testing.T) {
	for _, text := range []string{
		"hello world",
		"The quick brown fox jumps over the lazy dog.",
		"银行账户余额查询",
		"反洗钱(AML)可疑交易报告: 客户张三, 金额 ¥49,999.00",
		"emoji 🙂🏦💳 and flags 🇨🇳🇺🇸",
		"mixed 中文 English 日本語 한국어 العربية",
		"tabs\tand\nnewlines\r\n",
		"combining é (e\u0301) and zero-width \u200b joiner",
		"a",
		"",
	} {
		for _, m := range []*engine.Model{tinyF32, tinyQ8} {
			toks, err := m.Tokenize(text, true, false)
			if err != nil {
				t.Fatalf("Tokenize(%q): %v", text, err)
			}
			if len(toks) == 0 || toks[0] != m.Info().BOS {
				t.Errorf("Tokenize(%q) = %v: want a leading BOS", text, toks)
			}
			got, err := m.Detokenize(toks)
			if err != nil {
				t.Fatal(err)
			}
			if got != text {
				t.Errorf("round trip of %q gave %q (tokens %v)", text, got, toks)
			}
		}
	}
	if _, err := tinyQ8.Tokenize("bad \xff utf-8", true, false); err == nil {
		t.Error("Tokenize accepted invalid UTF-8")
	}
	if _, err := tinyQ8.Detokenize([]engine.Token{1, 99999}); err == nil {
		t.Error("Detokenize accepted an id outside the vocabulary")
	}
}

// TestStreamedTextIsValidUTF8: random weights emit byte tokens that split
// characters and form invalid sequences; every streamed piece is still
// valid UTF-8, and the pieces add up to the final text.
func TestStreamedTextIsValidUTF8(t *testing.T) {
	e := newEngine(t, tinyF32, engine.Options{Parallel: 4})
	broken := 0
	for seed := uint32(0); seed < 8; seed++ {
		s := seed
		r := generate(t, e, engine.Request{
			Prompt:    prompt(t, tinyF32, "中文 🙂"),
			MaxTokens: 200, IgnoreEOS: true,
			Sampling: engine.Sampling{Temperature: 1.5, Seed: &s},
		})
		var raw []byte
		for _, tok := range r.tokens {
			if !tinyF32.IsSpecial(tok) {
				raw = append(raw, tinyF32.Piece(tok)...)
			}
		}
		if !utf8.Valid(raw) {
			broken++
		}
		if !utf8.ValidString(r.text) {
			t.Fatalf("seed %d: streamed text is not valid UTF-8: %q", seed, r.text)
		}
	}
	if broken == 0 {
		t.Fatal("no generation produced invalid raw bytes: the test does not exercise byte tokens")
	}
	t.Logf("%d of 8 generations had invalid raw bytes", broken)
}

// TestScoresBatchedEqualAlone: the scores of a variant computed in one
// batch with other variants (sharing their prefix cells) equal its scores
// computed alone, within 1e-4 in log-probability.
func TestScoresBatchedEqualAlone(t *testing.T) {
	const tolerance = 1e-4
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 4})
	base := prompt(t, tinyQ8, "Customer profile: individual, occupation teacher, monthly income 8000 CNY. Features:")
	var variants [][]engine.Token
	for _, f := range []string{" cash just below threshold", " pass-through within 48 hours", " none", " 高风险地区", " round amounts", " dormant account reactivated", " fan-in from 12 accounts"} {
		v := slices.Clone(base)
		v = append(v, prompt(t, tinyQ8, f)[1:]...) // drop the BOS
		variants = append(variants, v)
	}
	targets := []engine.Token{5, 400, 900}
	all, err := e.Score(context.Background(), engine.ScoreRequest{Variants: variants, Targets: targets, TopK: 5, Positions: true})
	if err != nil {
		t.Fatal(err)
	}
	if all.SharedPrefix < len(base)-1 {
		t.Errorf("shared prefix %d, want at least %d", all.SharedPrefix, len(base)-1)
	}
	for i, v := range variants {
		alone, err := e.Score(context.Background(), engine.ScoreRequest{Variants: [][]engine.Token{v}, Targets: targets, TopK: 5, Positions: true})
		if err != nil {
			t.Fatal(err)
		}
		compareScores(t, fmt.Sprintf("variant %d", i), all.Variants[i], alone.Variants[0], tolerance)
	}
	checkIdle(t, e, "after scoring")
}

// TestScoreAgreesWithGeneration: the most likely next token reported by
// Score is the token greedy generation picks, and generation's logprobs
// match the scores.
func TestScoreAgreesWithGeneration(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 2})
	for _, text := range testPrompts {
		p := prompt(t, tinyQ8, text)
		s, err := e.Score(context.Background(), engine.ScoreRequest{Variants: [][]engine.Token{p}, TopK: 3})
		if err != nil {
			t.Fatal(err)
		}
		r := generate(t, e, engine.Request{Prompt: p, MaxTokens: 1, IgnoreEOS: true, Logprobs: true, TopLogprobs: 3})
		top := s.Variants[0].Top
		if r.tokens[0] != top[0].Token {
			t.Errorf("%q: greedy picked %d, score's top token is %d", text, r.tokens[0], top[0].Token)
		}
		if top[0].Logprob > 0 || top[1].Logprob > top[0].Logprob {
			t.Errorf("%q: top log-probabilities are not sorted non-positive values: %+v", text, top)
		}
	}
}

// TestLogprobs: per-token log-probabilities are reported, sorted, and the
// greedy choice is the most likely token.
func TestLogprobs(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 2})
	st, err := e.Generate(context.Background(), engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[1]), MaxTokens: 16, IgnoreEOS: true, Logprobs: true, TopLogprobs: 5})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Done {
			break
		}
		if ev.Logprob == nil || len(ev.TopLogprobs) != 5 {
			t.Fatalf("event without logprobs: %+v", ev)
		}
		if ev.Logprob.Token != ev.Token || ev.TopLogprobs[0].Token != ev.Token || ev.TopLogprobs[0].Logprob != ev.Logprob.Logprob {
			t.Fatalf("greedy token %d is not the top alternative: %+v", ev.Token, ev.TopLogprobs)
		}
		sum := 0.0
		for i, a := range ev.TopLogprobs {
			sum += math.Exp(float64(a.Logprob))
			if a.Logprob > 0 || (i > 0 && a.Logprob > ev.TopLogprobs[i-1].Logprob) {
				t.Fatalf("alternatives not sorted non-positive: %+v", ev.TopLogprobs)
			}
		}
		if sum > 1.0001 {
			t.Fatalf("top-5 probabilities sum to %g", sum)
		}
	}
}

// TestStopStrings: output ends before the first stop string, which is
// never sent, even when it spans tokens.
func TestStopStrings(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 2})
	req := engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[0]), MaxTokens: 64, IgnoreEOS: true}
	ref := generate(t, e, req)
	runes := []rune(ref.text)
	if len(runes) < 30 {
		t.Fatalf("reference output too short: %q", ref.text)
	}
	stop := string(runes[20:26])
	want := ref.text[:len(string(runes[:20]))]
	if i := indexOf(ref.text, stop); i < len(want) {
		want = ref.text[:i]
	}
	req.Stop = []string{"never-appears", stop}
	got := generate(t, e, req)
	if got.text != want || got.final.Finish != engine.FinishStop {
		t.Fatalf("with stop %q: got %q (finish %q), want %q (finish stop)", stop, got.text, got.final.Finish, want)
	}
}

func indexOf(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return i
		}
	}
	return len(s)
}

// TestSeededSampling: a seed makes random sampling reproducible.
func TestSeededSampling(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 2})
	run := func(seed uint32) []engine.Token {
		return generate(t, e, engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[2]), MaxTokens: 32, IgnoreEOS: true,
			Sampling: engine.Sampling{Temperature: 0.9, TopK: 40, TopP: 0.95, MinP: 0.01, FrequencyPenalty: 0.5, PresencePenalty: 0.3, Seed: &seed}}).tokens
	}
	a, b, c := run(42), run(42), run(43)
	if !slices.Equal(a, b) {
		t.Fatalf("same seed, different output:\n%v\n%v", a, b)
	}
	if slices.Equal(a, c) {
		t.Fatalf("different seeds gave the same 32 tokens: %v", a)
	}
}

// TestFinishAndUsage: EOS ends a generation with "stop" unless ignored;
// max tokens ends it with "length"; usage counts both sides.
func TestFinishAndUsage(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 2})
	p := prompt(t, tinyQ8, testPrompts[3])
	r := generate(t, e, engine.Request{Prompt: p, MaxTokens: 5, IgnoreEOS: true})
	if r.final.Finish != engine.FinishLength || r.final.Usage != (engine.Usage{PromptTokens: len(p), CompletionTokens: 5}) || len(r.tokens) != 5 {
		t.Fatalf("got finish %q usage %+v tokens %d", r.final.Finish, r.final.Usage, len(r.tokens))
	}
	if r.final.Timings.FirstByte <= 0 || r.final.Timings.Decode <= 0 {
		t.Fatalf("timings not set: %+v", r.final.Timings)
	}
	// End of generation: sample with a seed and IgnoreEOS until an
	// end-of-generation token shows up, then run the same seed without
	// IgnoreEOS: it must stop right there.
	eos := tinyQ8.Info().EOS
	if !tinyQ8.IsEOG(eos) {
		t.Fatalf("EOS %d is not an end-of-generation token", eos)
	}
	for seed := uint32(0); seed < 64; seed++ {
		s := seed
		req := engine.Request{Prompt: p, MaxTokens: 256, IgnoreEOS: true, Sampling: engine.Sampling{Temperature: engine.MaxTemperature, Seed: &s}}
		r := generate(t, e, req)
		at := slices.IndexFunc(r.tokens, tinyQ8.IsEOG)
		if at < 0 {
			continue
		}
		req.IgnoreEOS = false
		stopped := generate(t, e, req)
		if stopped.final.Finish != engine.FinishStop || !slices.Equal(stopped.tokens, r.tokens[:at]) ||
			stopped.final.Usage.CompletionTokens != at+1 {
			t.Fatalf("seed %d: end-of-generation token %d at %d, but generation stopped with %q after %d tokens (usage %+v)",
				seed, r.tokens[at], at, stopped.final.Finish, len(stopped.tokens), stopped.final.Usage)
		}
		return
	}
	t.Fatal("no sampled generation reached EOS: the test cannot check the stop")
}

// TestQueueFullAndTierOrder: a full queue refuses at once; a freed slot
// goes to the highest tier waiting, whatever the arrival order.
func TestQueueFullAndTierOrder(t *testing.T) {
	// The hog cannot end before the test cancels it (16,000 tokens take
	// seconds even on the tiny model), however slow the machine.
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 1, MaxQueue: 2, Context: 16384})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := prompt(t, tinyQ8, testPrompts[0])
	hog, err := e.Generate(ctx, engine.Request{Prompt: p, MaxTokens: 16000, IgnoreEOS: true, Tier: engine.TierBatch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hog.Recv(); err != nil { // admitted: the queue is empty again
		t.Fatal(err)
	}
	batch, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 2, Tier: engine.TierBatch})
	if err != nil {
		t.Fatal(err)
	}
	rt, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 2, Tier: engine.TierRealtime})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 2}); !errors.Is(err, engine.ErrQueueFull) {
		t.Fatalf("third waiting request: got %v, want ErrQueueFull", err)
	}
	cancel() // free the slot
	b, r := collect(t, batch), collect(t, rt)
	if b.final.Err != nil || r.final.Err != nil {
		t.Fatalf("batch: %v, realtime: %v", b.final.Err, r.final.Err)
	}
	// One slot: the batch request, submitted first, may start only once the
	// realtime one has ended.
	rtDone := r.final.Timings.Queue + r.final.Timings.Prefill + r.final.Timings.Decode
	if b.final.Timings.Queue < rtDone {
		t.Fatalf("batch request admitted after %v in the queue, before the realtime one ended (%v after its submission)", b.final.Timings.Queue, rtDone)
	}
}

// TestKVPressureQueues: with a unified KV cache smaller than the
// sequences could use, requests wait for room instead of failing, and
// finish with the same output as alone (they run two by two and finish
// together, so no cell is reused out of order).
func TestKVPressureQueues(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 4, Context: 128, KVCells: 256, UnifiedKV: true})
	var reqs []engine.Request
	var want []result
	for i := 0; i < 4; i++ {
		// Equal lengths: the pairs that run together also finish together.
		p := prompt(t, tinyQ8, testPrompts[i])[:8]
		r := engine.Request{Prompt: p, MaxTokens: 128 - len(p), IgnoreEOS: true, TopLogprobs: 2} // reserves a whole context each
		reqs = append(reqs, r)
		want = append(want, generate(t, e, r))
	}
	var streams []*engine.Stream
	for _, r := range reqs {
		st, err := e.Generate(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	s := waitStats(t, e, "two sequences running", func(s engine.Stats) bool { return s.Sequences == 2 })
	if s.Waiting != 2 || s.KVCellsReserved != 256 {
		t.Fatalf("under KV pressure: %+v, want 2 running, 2 waiting, 256 cells reserved", s)
	}
	// Requests that wait run in other KV cells and other batches than
	// alone. Flash attention's rounding depends a little on both, and
	// Debian's ggml picks CPU kernels (its zen4 variant, on AVX-512 CPUs
	// without AMX) that round q8_0 rows differently by batch size; on this
	// random-weight model a near-tie can then flip a greedy choice (seen
	// once in 40 runs on a loaded machine: after 45 equal tokens, the top
	// two 0.039 apart). So the outputs must agree up to a token where the
	// two candidates are the top two in both runs, within tol of each
	// other; past it they may differ. Stale or misplaced KV cells would
	// show as early, wide divergences instead.
	tol := float32(0.1)
	if engine.Provider == "system" {
		tol = 0.25
	}
	for i, st := range streams {
		got := collect(t, st)
		if got.final.Err != nil || len(got.tokens) != len(want[i].tokens) {
			t.Errorf("request %d after waiting for KV room: %d tokens (want %d), %v", i, len(got.tokens), len(want[i].tokens), got.final.Err)
			continue
		}
		d := 0
		for d < len(got.tokens) && got.tokens[d] == want[i].tokens[d] {
			d++
		}
		if d == len(got.tokens) {
			continue
		}
		gap, ok := nearTie(got.tops[d], got.tokens[d], want[i].tokens[d], tol)
		gapAlone, okAlone := nearTie(want[i].tops[d], got.tokens[d], want[i].tokens[d], tol)
		if !ok || !okAlone {
			t.Errorf("request %d: output differs after waiting for KV room from token %d of %d, not at a near-tie (gap %v, alone %v; alternatives %v, alone %v)",
				i, d, len(got.tokens), gap, gapAlone, got.tops[d], want[i].tops[d])
		} else {
			t.Logf("request %d: a near-tie flipped at token %d (gap %v)", i, d, gap)
		}
	}
}

// nearTie reports whether tokens a and b are both among top with
// log-probabilities within tol, and their gap.
func nearTie(top []engine.TokenLogprob, a, b engine.Token, tol float32) (float32, bool) {
	la, lb := float32(math.NaN()), float32(math.NaN())
	for _, t := range top {
		switch t.Token {
		case a:
			la = t.Logprob
		case b:
			lb = t.Logprob
		}
	}
	gap := la - lb
	return gap, gap >= -tol && gap <= tol // false when either is missing (NaN)
}

// TestCloseEndsEverything: closing the engine ends running and waiting
// requests with ErrStopped, and later requests are refused.
func TestCloseEndsEverything(t *testing.T) {
	e, err := engine.New(tinyQ8, engine.Options{Parallel: 1, Context: 512, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	p := prompt(t, tinyQ8, testPrompts[0])
	running, _ := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 500, IgnoreEOS: true})
	if _, err := running.Recv(); err != nil {
		t.Fatal(err)
	}
	waiting, _ := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 5})
	e.Close()
	for name, st := range map[string]*engine.Stream{"running": running, "waiting": waiting} {
		r := collect(t, st)
		if !errors.Is(r.final.Err, engine.ErrStopped) {
			t.Errorf("%s request ended with %v, want ErrStopped", name, r.final.Err)
		}
	}
	if _, err := e.Generate(context.Background(), engine.Request{Prompt: p}); !errors.Is(err, engine.ErrStopped) {
		t.Errorf("Generate after Close: %v, want ErrStopped", err)
	}
	if _, err := e.Score(context.Background(), engine.ScoreRequest{Variants: [][]engine.Token{p}}); !errors.Is(err, engine.ErrStopped) {
		t.Errorf("Score after Close: %v, want ErrStopped", err)
	}
	e.Close() // idempotent
}

// TestChatTemplates: the model's own template and named ones render; an
// unknown template and NUL bytes are errors.
func TestChatTemplates(t *testing.T) {
	msgs := []engine.Message{{Role: "system", Content: "你是银行客服。"}, {Role: "user", Content: "余额?"}}
	own, err := tinyQ8.ApplyChatTemplate("", msgs, true)
	want := "<|im_start|>system\n你是银行客服。<|im_end|>\n<|im_start|>user\n余额?<|im_end|>\n<|im_start|>assistant\n"
	if err != nil || own != want {
		t.Fatalf("own template: %q, %v; want %q", own, err, want)
	}
	toks, err := tinyQ8.Tokenize(own, true, true)
	if err != nil || toks[1] != 259 { // <|im_start|> parsed as one special token
		t.Fatalf("template tokens %v, %v", toks, err)
	}
	if out, err := tinyQ8.ApplyChatTemplate("llama3", msgs, true); err != nil || out == own {
		t.Fatalf("llama3 template: %q, %v", out, err)
	}
	if _, err := tinyQ8.ApplyChatTemplate("no-such-template", msgs, true); err == nil {
		t.Fatal("unknown template accepted")
	}
	if _, err := tinyQ8.ApplyChatTemplate("", []engine.Message{{Role: "user", Content: "a\x00b"}}, true); err == nil {
		t.Fatal("NUL byte accepted")
	}
}

// TestGrammarConstrainsOutput: with a grammar, every generated text is in
// its language, greedy or sampled, and generation ends where it completes.
func TestGrammarConstrainsOutput(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 4})
	grammar := `root ::= "yes" | "no" | "maybe " [0-9] [0-9]?`
	valid := regexp.MustCompile(`^(yes|no|maybe [0-9][0-9]?)$`)
	seed := uint32(1)
	for i, s := range []engine.Sampling{
		{Grammar: grammar},
		{Grammar: grammar, Temperature: 1, Seed: &seed},
		{Grammar: grammar, Temperature: 0.8, TopK: 40, TopP: 0.9, PresencePenalty: 1, Seed: &seed},
	} {
		for _, text := range []string{"Is this transaction suspicious?", "请回答", "x"} {
			st, err := e.Generate(context.Background(), engine.Request{Prompt: prompt(t, tinyQ8, text), MaxTokens: 16, Sampling: s})
			if err != nil {
				t.Fatal(err)
			}
			out, ev, err := st.Collect()
			if err != nil {
				t.Fatal(err)
			}
			if !valid.MatchString(out) || ev.Finish != engine.FinishStop {
				t.Errorf("sampling %d, %q: output %q, finish %s", i, text, out, ev.Finish)
			}
		}
	}
}
