package engine_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/finserve/finserve/engine"
)

// hogCtx is the context of the engines hogs run in: the tiny model's whole.
const hogCtx = 4096

// hogs starts n generations on tier that run until cancelled (or to
// the end of their context).
func hogs(t *testing.T, e *engine.Engine, n int, tier engine.Tier) ([]*engine.Stream, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var streams []*engine.Stream
	for i := range n {
		p := prompt(t, tinyQ8, testPrompts[i%len(testPrompts)])
		// To the end of the context (hogCtx): thousands of steps, so that
		// a loaded machine's scheduling delays cannot outlast them (400
		// tokens could: a control request then found the hogs gone).
		st, err := e.Generate(ctx, engine.Request{Prompt: p, IgnoreEOS: true, Tier: tier})
		if err != nil {
			t.Fatal(err)
		}
		streams = append(streams, st)
	}
	return streams, cancel
}

// TestRealtimeAdmittedWhileBatchSaturates: with batch streams in every
// slot and more queued, a realtime request is admitted at the first step
// boundary after it arrives (a batch stream is preempted for its slot),
// prefills while the batch streams sit out, and finishes while they are
// still running. Sent as a batch request instead, the same request waits
// for slots: the control that shows the tiers did it.
func TestRealtimeAdmittedWhileBatchSaturates(t *testing.T) {
	for _, tc := range []struct {
		tier    engine.Tier
		preempt bool
	}{{engine.TierRealtime, true}, {engine.TierBatch, false}} {
		t.Run(tc.tier.String(), func(t *testing.T) {
			e := newEngine(t, tinyQ8, engine.Options{Parallel: 2, Context: hogCtx})
			streams, stop := hogs(t, e, 4, engine.TierBatch)
			waitStats(t, e, "two batch streams running", func(s engine.Stats) bool { return s.Sequences == 2 })

			p := prompt(t, tinyQ8, systemText)
			st, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 4, IgnoreEOS: true, Tier: tc.tier})
			if err != nil {
				t.Fatal(err)
			}
			if !tc.preempt {
				// Let the control wait a few steps, then free the slots.
				waitStats(t, e, "steps", func(s engine.Stats) bool { return s.Steps > 40 })
				stop()
			}
			r := collect(t, st)
			if r.final.Err != nil {
				t.Fatal(r.final.Err)
			}
			s, err := e.Stats(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			b := s.Tiers[engine.TierBatch]
			if !tc.preempt {
				if r.final.Timings.QueueSteps == 0 || b.Preemptions != 0 {
					t.Fatalf("a batch request among batch streams: waited %d steps, %d preemptions; want a wait and none",
						r.final.Timings.QueueSteps, b.Preemptions)
				}
				return
			}
			if r.final.Timings.QueueSteps != 0 {
				t.Errorf("realtime request waited %d steps for admission; want 0", r.final.Timings.QueueSteps)
			}
			if b.Preemptions != 1 || b.PausedSteps == 0 {
				t.Errorf("batch tier: %d preemptions, %d paused steps; want 1 and some", b.Preemptions, b.PausedSteps)
			}
			// The batch streams are all still there: the preempted one
			// takes its slot back.
			waitStats(t, e, "the batch streams back", func(s engine.Stats) bool {
				return s.Sequences == 2 && s.Tiers[engine.TierBatch].Waiting == 2
			})
			stop()
			for i, h := range streams {
				if _, ev, _ := h.Collect(); !isCancel(ev.Err) {
					t.Errorf("batch stream %d ended with %v before it was cancelled", i, ev.Err)
				}
			}
		})
	}
}

// TestTierMaxRunning: a tier at its MaxRunning leaves the other slots to
// the other tiers (here batch keeps one free, as the server's defaults
// do): a realtime request starts at once without preempting anything.
func TestTierMaxRunning(t *testing.T) {
	tiers := engine.DefaultTiers()
	tiers[engine.TierBatch].MaxRunning = -1 // all slots but one
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 3, Context: hogCtx, Tiers: tiers})
	_, stop := hogs(t, e, 4, engine.TierBatch)
	defer stop()
	waitStats(t, e, "two batch streams running", func(s engine.Stats) bool { return s.Sequences == 2 })
	s, err := e.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Tiers[engine.TierBatch].Sequences != 2 || s.Tiers[engine.TierBatch].Waiting != 2 {
		t.Fatalf("batch tier: %+v; want 2 running (3 slots less 1) and 2 waiting", s.Tiers[engine.TierBatch])
	}
	r := generate(t, e, engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[3]), MaxTokens: 4, IgnoreEOS: true})
	if s, err = e.Stats(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r.final.Timings.QueueSteps != 0 || r.final.Preemptions != 0 || s.Tiers[engine.TierBatch].Preemptions != 0 {
		t.Fatalf("realtime request waited %d steps; %d batch preemptions; want neither", r.final.Timings.QueueSteps,
			s.Tiers[engine.TierBatch].Preemptions)
	}
}

// TestPreemptedOutputIsExact: a batch generation preempted mid-way by a
// realtime request resumes where it was and gives exactly the tokens and
// log-probabilities it gives alone, whether its cells come back from the
// host tier, or are recomputed (no host tier, or no prefix cache), and
// for seeded sampling as well as greedy decoding.
func TestPreemptedOutputIsExact(t *testing.T) {
	seed := uint32(11)
	cases := []struct {
		name     string
		pc       engine.PrefixCache
		sampling engine.Sampling
		restored bool
	}{
		{"host tier", engine.PrefixCache{HostBytes: 64 << 20, BlockTokens: 8}, engine.Sampling{}, true},
		{"recomputed", engine.PrefixCache{}, engine.Sampling{}, false},
		{"no prefix cache", engine.PrefixCache{Disabled: true}, engine.Sampling{}, false},
		{"sampled", engine.PrefixCache{HostBytes: 64 << 20, BlockTokens: 8}, engine.Sampling{Temperature: 0.9, TopK: 40, Seed: &seed, RepeatPenalty: 1.1}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, tinyQ8, engine.Options{Parallel: 1, Context: 2048, FlashAttention: noFA, PrefixCache: tc.pc})
			// 1,000 tokens: still running when the realtime request comes,
			// however loaded the machine (48 were not, once, under three
			// parallel test runs: no preemption at all).
			req := engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[1]), MaxTokens: 1000, IgnoreEOS: true, Logprobs: true,
				Sampling: tc.sampling, Tier: engine.TierBatch}
			want := generate(t, e, req)

			st, err := e.Generate(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			var got result
			for len(got.tokens) < 20 { // well into its output
				ev, err := st.Recv()
				if err != nil || ev.Done {
					t.Fatalf("batch generation ended early: %v %v", err, ev.Err)
				}
				got.tokens = append(got.tokens, ev.Token)
				got.lps = append(got.lps, ev.Logprob.Logprob)
			}
			rt := generate(t, e, engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[2]), MaxTokens: 6, IgnoreEOS: true})
			rest := collect(t, st)
			if rest.final.Err != nil {
				t.Fatal(rest.final.Err)
			}
			got.tokens = append(got.tokens, rest.tokens...)
			got.lps = append(got.lps, rest.lps...)
			if rest.final.Preemptions != 1 {
				t.Fatalf("batch generation preempted %d times; want 1", rest.final.Preemptions)
			}
			if !slices.Equal(got.tokens, want.tokens) {
				t.Fatalf("preempted output differs at token %d", firstDiffTok(got.tokens, want.tokens))
			}
			if i := firstDiff(got.lps, want.lps); i >= 0 {
				t.Fatalf("log-probability %d differs after preemption: %v vs %v", i, got.lps[i], want.lps[i])
			}
			if rest.final.Usage.CompletionTokens != req.MaxTokens || len(rt.tokens) != 6 {
				t.Fatalf("usage %+v, realtime tokens %d", rest.final.Usage, len(rt.tokens))
			}
			s := checkIdle(t, e, "after the preempted generation")
			if restored := s.Prefix.HostHits > 0; restored != tc.restored {
				t.Errorf("host-tier hits %d; restored from it: %v, want %v", s.Prefix.HostHits, restored, tc.restored)
			}
		})
	}
}

func firstDiffTok(a, b []engine.Token) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestTierQueueLimits: a full tier queue refuses with a QueueFullError
// (an ErrQueueFull) that names the tier and suggests a retry, while other
// tiers still queue; a request not admitted within its tier's queue
// timeout ends with a QueueTimeoutError, reported by AwaitStart too.
func TestTierQueueLimits(t *testing.T) {
	tiers := engine.DefaultTiers()
	tiers[engine.TierRealtime].MaxQueued = 1
	tiers[engine.TierRealtime].QueueTimeout = 20 * time.Millisecond
	tiers[engine.TierStandard].MaxQueued = 2
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 1, Context: hogCtx, Tiers: tiers})
	// A standard-tier hog: not preemptible, so nothing gets its slot.
	_, stop := hogs(t, e, 1, engine.TierStandard)
	waitStats(t, e, "the hog running", func(s engine.Stats) bool { return s.Sequences == 1 })

	p := prompt(t, tinyQ8, testPrompts[0])
	req := func(tier engine.Tier) engine.Request {
		return engine.Request{Prompt: p, MaxTokens: 2, Tier: tier}
	}
	var queued []*engine.Stream
	for range 2 {
		st, err := e.Generate(context.Background(), req(engine.TierStandard))
		if err != nil {
			t.Fatalf("standard request within the bound: %v", err)
		}
		queued = append(queued, st)
	}
	_, err := e.Generate(context.Background(), req(engine.TierStandard))
	var full *engine.QueueFullError
	if !errors.As(err, &full) || !errors.Is(err, engine.ErrQueueFull) || full.Tier != engine.TierStandard ||
		full.Waiting != 2 || full.RetryAfter < time.Second {
		t.Fatalf("third standard request: %v (%+v); want a full standard queue with 2 waiting and a retry time", err, full)
	}
	// The realtime queue is its own: its request is accepted, then times out.
	rt, err := e.Generate(context.Background(), req(engine.TierRealtime))
	if err != nil {
		t.Fatalf("realtime request beside a full standard queue: %v", err)
	}
	var timeout *engine.QueueTimeoutError
	if err := rt.AwaitStart(time.Minute); !errors.As(err, &timeout) || timeout.Tier != engine.TierRealtime || timeout.Waited < 20*time.Millisecond {
		t.Fatalf("AwaitStart of a request that cannot be admitted: %v; want a realtime queue timeout", err)
	}
	if r := collect(t, rt); !errors.As(r.final.Err, &timeout) || len(r.tokens) != 0 {
		t.Fatalf("timed-out request: %d tokens, %v", len(r.tokens), r.final.Err)
	}
	s, err := e.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Tiers[engine.TierStandard].Rejected != 1 || s.Tiers[engine.TierRealtime].TimedOut != 1 || s.Tiers[engine.TierStandard].Waiting != 2 {
		t.Fatalf("tier stats %+v", s.Tiers)
	}
	stop()
	for i, st := range queued {
		if err := st.AwaitStart(time.Minute); err != nil {
			t.Fatalf("queued request %d: %v", i, err)
		}
		if r := collect(t, st); r.final.Err != nil {
			t.Fatalf("queued request %d: %v", i, r.final.Err)
		}
	}
	checkIdle(t, e, "after the queue limits")
}

// TestAgingLetsBatchFinish: under a steady realtime load that always has a
// request waiting, a batch request is held back, ages to the top priority,
// is admitted ahead of later realtime requests and finishes while the load
// goes on. Without aging it would wait for the load to end.
func TestAgingLetsBatchFinish(t *testing.T) {
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 1, Aging: 5 * time.Millisecond})
	p := prompt(t, tinyQ8, testPrompts[0])
	const total = 400
	var sent, done atomic.Int64
	var over atomic.Bool
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !over.Load() && sent.Add(1) <= total {
				st, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 8, IgnoreEOS: true})
				if err != nil {
					t.Error(err)
					return
				}
				if _, ev, err := st.Collect(); err != nil {
					t.Error(err, ev.Err)
					return
				}
				done.Add(1)
			}
		}()
	}
	waitStats(t, e, "realtime load", func(s engine.Stats) bool { return s.Tiers[engine.TierRealtime].Waiting > 0 })
	st, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: 16, IgnoreEOS: true, Tier: engine.TierBatch})
	if err != nil {
		t.Fatal(err)
	}
	r := collect(t, st)
	atEnd := done.Load()
	over.Store(true)
	wg.Wait()
	if r.final.Err != nil || len(r.tokens) != 16 {
		t.Fatalf("batch request: %d tokens, %v", len(r.tokens), r.final.Err)
	}
	if atEnd >= total {
		t.Fatalf("the batch request finished only after the realtime load (%d requests) ended", total)
	}
	t.Logf("batch request finished after %d of %d realtime requests; waited %v (%d steps)",
		atEnd, total, r.final.Timings.Queue, r.final.Timings.QueueSteps)
}

// TestTierOptions: invalid tier policies are refused when the engine
// starts, and tier names parse.
func TestTierOptions(t *testing.T) {
	for name, mod := range map[string]func(*[engine.NumTiers]engine.TierPolicy){
		"negative queue":   func(p *[engine.NumTiers]engine.TierPolicy) { p[0].MaxQueued = -1 },
		"running > slots":  func(p *[engine.NumTiers]engine.TierPolicy) { p[1].MaxRunning = 5 },
		"running < 1":      func(p *[engine.NumTiers]engine.TierPolicy) { p[1].MaxRunning = -4 },
		"negative timeout": func(p *[engine.NumTiers]engine.TierPolicy) { p[2].QueueTimeout = -time.Second },
		"absurd priority":  func(p *[engine.NumTiers]engine.TierPolicy) { p[2].Priority = 1 << 20 },
		"negative ttft":    func(p *[engine.NumTiers]engine.TierPolicy) { p[0].TTFTTarget = -1 },
	} {
		tiers := engine.DefaultTiers()
		mod(&tiers)
		if e, err := engine.New(tinyQ8, engine.Options{Parallel: 4, Context: 256, Threads: 2, Tiers: tiers}); err == nil {
			e.Close()
			t.Errorf("%s: accepted", name)
		}
	}
	for _, name := range []string{"realtime", "standard", "batch"} {
		if tier, err := engine.ParseTier(name); err != nil || tier.String() != name {
			t.Errorf("ParseTier(%q) = %v, %v", name, tier, err)
		}
	}
	if _, err := engine.ParseTier("gold"); err == nil {
		t.Error("ParseTier accepted an unknown tier")
	}
}

// TestPreemptForCells: with a unified KV cache that batch generations
// fill while slots are still free, a realtime request preempts one of
// them for its cells (not for a slot); both batch generations still
// deliver every token.
func TestPreemptForCells(t *testing.T) {
	// Each hog reserves a whole 512-cell context: two fill the cache.
	// Small, so that the hogs, which run to their end, finish in seconds
	// under -race on a loaded machine (with 2,048 the test ran past the
	// package's 20-minute limit beside three other suites).
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 4, Context: 512, KVCells: 1024, UnifiedKV: true})
	p := prompt(t, tinyQ8, testPrompts[0])
	req := engine.Request{Prompt: p, MaxTokens: 512 - len(p), IgnoreEOS: true, Tier: engine.TierBatch}
	var hogs []*engine.Stream
	for range 2 {
		st, err := e.Generate(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, st)
	}
	s := waitStats(t, e, "both hogs run", func(s engine.Stats) bool { return s.Sequences == 2 })
	if s.KVCellsReserved < s.KVCells || s.Slots-s.Sequences < 2 {
		t.Fatalf("the fixture does not fill the cells with slots to spare: %+v", s)
	}
	rt := generate(t, e, engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[1]), MaxTokens: 8, IgnoreEOS: true, Tier: engine.TierRealtime})
	if len(rt.tokens) != 8 || rt.final.Err != nil {
		t.Fatalf("realtime: %d tokens, %v", len(rt.tokens), rt.final.Err)
	}
	preempted := 0
	for i, h := range hogs {
		r := collect(t, h)
		if r.final.Err != nil || len(r.tokens) != req.MaxTokens {
			t.Errorf("batch %d: %d tokens, %v", i, len(r.tokens), r.final.Err)
		}
		preempted += r.final.Preemptions
	}
	if preempted < 1 {
		t.Error("no batch generation was preempted for the realtime request's cells")
	}
	checkIdle(t, e, "after preemption for cells")
}

// TestCutOnRealModel: a realtime request that arrives while batch streams
// decode cuts the real decode short (llama.cpp's abort callback): the
// step is undone and fed again later, the realtime request starts in the
// next step, and the batch streams give exactly the tokens they give
// alone.
func TestCutOnRealModel(t *testing.T) {
	prompts := [][]engine.Token{prompt(t, tinyQ8, testPrompts[0]), prompt(t, tinyQ8, testPrompts[1])}
	const n = 24
	alone := newEngine(t, tinyQ8, engine.Options{Parallel: 1, Context: 512})
	var want [][]engine.Token
	for _, p := range prompts {
		want = append(want, generate(t, alone, engine.Request{Prompt: p, MaxTokens: n, IgnoreEOS: true}).tokens)
	}
	h, err := engine.NewHandLoop(tinyQ8, engine.Options{Parallel: 3, Context: 512, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e := h.Engine()
	var batch []*engine.Stream
	for _, p := range prompts {
		st, err := e.Generate(context.Background(), engine.Request{Prompt: p, MaxTokens: n, IgnoreEOS: true, Tier: engine.TierBatch})
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, st)
	}
	var rt *engine.Stream
	decodes := 0
	h.During(func() {
		if decodes++; decodes == 6 {
			if rt, err = e.Generate(context.Background(), engine.Request{Prompt: prompts[1][:8], MaxTokens: 3, IgnoreEOS: true, Tier: engine.TierRealtime}); err != nil {
				t.Fatal(err)
			}
		}
	})
	for i := 0; h.Stats().Running > 0 || i < 10; i++ {
		if i == 500 {
			t.Fatal("not done after 500 turns")
		}
		h.Turn()
	}
	if s := h.Stats(); s.CutSteps != 1 {
		t.Fatalf("%d steps cut, want 1", s.CutSteps)
	}
	for i, st := range batch {
		r := collect(t, st)
		if r.final.Err != nil || !slices.Equal(r.tokens, want[i]) {
			t.Errorf("batch stream %d: %v, tokens %v; alone %v", i, r.final.Err, r.tokens, want[i])
		}
	}
	if r := collect(t, rt); r.final.Err != nil || len(r.tokens) != 3 || r.final.Timings.QueueSteps != 0 {
		t.Errorf("realtime: %v, %d tokens, waited %d steps", r.final.Err, len(r.tokens), r.final.Timings.QueueSteps)
	}
}
