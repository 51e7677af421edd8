package engine

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/finserve/finserve/prefixcache"
)

// Scheduling tests: tables over the fake executor and the fake clock
// (fake_exec_test.go). Every step is the production scheduler's; only
// the model and time are imaginary, so each outcome is exact and the
// same on any machine.

// arrival is a request of a table: when it is submitted (before which
// turn of the loop), its tier, prompt and answer length.
type arrival struct {
	name   string
	turn   int
	tier   Tier
	prompt []Token
	max    int
	cancel int // cancelled before this turn (0: never)
}

// outcome is what became of one arrival.
type outcome struct {
	events []Event
	final  Event
}

// play submits the arrivals at their turns and runs until all ended.
func (s *sim) play(arrivals []arrival, maxTurns int) map[string]outcome {
	s.t.Helper()
	streams := map[string]*Stream{}
	cancels := map[string]context.CancelFunc{}
	out := map[string]outcome{}
	for turn := 0; ; turn++ {
		if turn == maxTurns {
			s.t.Fatalf("not done after %d turns", maxTurns)
		}
		for _, a := range arrivals {
			if a.turn == turn {
				ctx, cancel := context.WithCancel(context.Background())
				st, err := s.e.Generate(ctx, Request{ID: a.name, Prompt: a.prompt, MaxTokens: a.max, IgnoreEOS: true, Tier: a.tier})
				if err != nil {
					s.t.Fatalf("%s: %v", a.name, err)
				}
				streams[a.name], cancels[a.name] = st, cancel
			}
			if a.cancel == turn && a.cancel > 0 {
				cancels[a.name]()
			}
		}
		s.turn()
		for name, st := range streams {
			evs, done := drain(st)
			o := out[name]
			o.events = append(o.events, evs...)
			if done {
				o.final = o.events[len(o.events)-1]
				o.events = o.events[:len(o.events)-1]
				delete(streams, name)
			}
			out[name] = o
		}
		if len(out) == len(arrivals) && len(streams) == 0 {
			for _, c := range cancels {
				c()
			}
			return out
		}
	}
}

// greedy is what the imaginary model generates after p alone.
func (s *sim) greedy(p []Token, n int) []Token {
	toks := slices.Clone(p)
	for range n {
		toks = append(toks, s.x.next(toks))
	}
	return toks[len(p):]
}

func tokensOf(evs []Event) []Token {
	var out []Token
	for _, ev := range evs {
		out = append(out, ev.Token)
	}
	return out
}

// TestSchedAdmission: who is admitted when, as the number of steps each
// request waited (QueueSteps), over tiers, slots, KV cells and MaxRunning.
// Every request must also produce exactly what it would alone.
func TestSchedAdmission(t *testing.T) {
	p := func(seed, n int) []Token { return prompt(seed, n) }
	capBatch := DefaultTiers()
	capBatch[TierBatch].MaxRunning = -1 // all slots but one
	cases := []struct {
		name     string
		opts     Options
		arrivals []arrival
		// waits is each arrival's QueueSteps.
		waits map[string]uint64
		// preempted is each arrival's preemption count (absent: 0).
		preempted map[string]int
	}{
		{
			name: "priority order, then arrival, for the free slots",
			opts: Options{Parallel: 2, Context: 256},
			arrivals: []arrival{
				{name: "batch", tier: TierBatch, prompt: p(1, 8), max: 3},
				{name: "std1", tier: TierStandard, prompt: p(2, 8), max: 3},
				{name: "rt", tier: TierRealtime, prompt: p(3, 8), max: 3},
				{name: "std2", tier: TierStandard, prompt: p(4, 8), max: 3},
			},
			// rt and std1 take the slots; each needs a prefill step and two
			// decode steps (its first token comes with the prefill), so
			// std2 then batch start after three.
			waits: map[string]uint64{"rt": 0, "std1": 0, "std2": 3, "batch": 3},
		},
		{
			name: "a realtime arrival preempts a batch stream for its slot",
			opts: Options{Parallel: 1, Context: 256},
			arrivals: []arrival{
				{name: "batch", tier: TierBatch, prompt: p(1, 8), max: 20},
				{name: "rt", turn: 5, tier: TierRealtime, prompt: p(2, 8), max: 3},
			},
			waits:     map[string]uint64{"batch": 0, "rt": 0},
			preempted: map[string]int{"batch": 1},
		},
		{
			name: "a standard arrival waits: standard does not preempt standard",
			opts: Options{Parallel: 1, Context: 256},
			arrivals: []arrival{
				{name: "first", tier: TierStandard, prompt: p(1, 8), max: 6},
				{name: "second", turn: 2, tier: TierStandard, prompt: p(2, 8), max: 2},
			},
			// first: prefill (token 1) at step 0, tokens 2..6 at steps 1..5;
			// second arrives before step 2 and starts at step 6.
			waits: map[string]uint64{"first": 0, "second": 4},
		},
		{
			name: "batch at MaxRunning leaves a slot: realtime starts without preempting",
			opts: Options{Parallel: 3, Context: 256, Tiers: capBatch},
			arrivals: []arrival{
				{name: "b1", tier: TierBatch, prompt: p(1, 8), max: 10},
				{name: "b2", tier: TierBatch, prompt: p(2, 8), max: 10},
				{name: "b3", tier: TierBatch, prompt: p(3, 8), max: 10},
				{name: "rt", turn: 3, tier: TierRealtime, prompt: p(4, 8), max: 3},
			},
			// b1 and b2 would end after step 9, but sat out rt's prefill
			// step (pausing): b3 starts after step 10.
			waits: map[string]uint64{"b1": 0, "b2": 0, "b3": 11, "rt": 0},
		},
		{
			name: "KV cells: a request that does not fit blocks later ones (FIFO), then all finish",
			opts: Options{Parallel: 4, Context: 128, KVCells: 160, UnifiedKV: true, PrefixCache: PrefixCache{Disabled: true}},
			arrivals: []arrival{
				{name: "a", tier: TierStandard, prompt: p(1, 60), max: 40},    // 100 cells
				{name: "big", tier: TierStandard, prompt: p(2, 60), max: 40},  // does not fit beside a
				{name: "small", tier: TierStandard, prompt: p(3, 10), max: 5}, // would fit, but waits behind big
			},
			waits: map[string]uint64{"a": 0, "big": 40, "small": 40},
		},
		{
			name: "KV cells: realtime preempts batch for cells, not only slots",
			opts: Options{Parallel: 4, Context: 128, KVCells: 200, UnifiedKV: true, PrefixCache: PrefixCache{Disabled: true}},
			arrivals: []arrival{
				{name: "b1", tier: TierBatch, prompt: p(1, 20), max: 80},
				{name: "b2", tier: TierBatch, prompt: p(2, 20), max: 80},
				{name: "rt", turn: 4, tier: TierRealtime, prompt: p(3, 20), max: 10},
			},
			waits:     map[string]uint64{"b1": 0, "b2": 0, "rt": 0},
			preempted: map[string]int{"b2": 1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, tc.opts, nil)
			out := s.play(tc.arrivals, 2000)
			for _, a := range tc.arrivals {
				o := out[a.name]
				if o.final.Err != nil {
					t.Fatalf("%s: %v", a.name, o.final.Err)
				}
				if got, want := tokensOf(o.events), s.greedy(a.prompt, a.max); !slices.Equal(got, want) {
					t.Errorf("%s: output differs from the request alone:\n got %v\nwant %v", a.name, got, want)
				}
				if got := o.final.Timings.QueueSteps; got != tc.waits[a.name] {
					t.Errorf("%s: waited %d steps, want %d", a.name, got, tc.waits[a.name])
				}
				if got := o.final.Preemptions; got != tc.preempted[a.name] {
					t.Errorf("%s: preempted %d times, want %d", a.name, got, tc.preempted[a.name])
				}
			}
			s.checkIdle()
		})
	}
}

// checkIdle asserts that the engine holds nothing for requests that
// ended: no sequence, no reservation beyond kept prefixes, no sampler.
func (s *sim) checkIdle() {
	s.t.Helper()
	l := s.l
	kept := 0
	for _, k := range l.kept {
		if k != nil {
			kept += len(k.tokens)
		}
	}
	if len(l.running) != 0 || len(l.waiting) != 0 || l.kvUsed != kept {
		s.t.Errorf("not idle: %d running, %d waiting, %d cells reserved, %d kept", len(l.running), len(l.waiting), l.kvUsed, kept)
	}
	for slot, c := range s.x.cells {
		if int(slot) < len(l.kept) && l.kept[slot] == nil && len(c) > 0 {
			s.t.Errorf("slot %d holds %d cells although nothing keeps them", slot, len(c))
		}
		if k := l.kept[slot]; k != nil && !slices.Equal(k.tokens, c) {
			s.t.Errorf("slot %d keeps %d tokens, its cells hold %d others", slot, len(k.tokens), len(c))
		}
	}
	if n := len(s.x.samplers); n != 0 {
		s.t.Errorf("%d samplers alive", n)
	}
}

// TestSchedPreemptionResumesExactly: a batch generation preempted by
// realtime requests continues from where it was, whether its cells stay
// kept in its slot (preempted for cells its reservation frees), come back
// from the host tier (preempted for its slot, once or twice), or are
// recomputed (no host tier, no prefix cache).
func TestSchedPreemptionResumesExactly(t *testing.T) {
	forSlot := Options{Parallel: 1, Context: 512}
	withHost := forSlot
	withHost.PrefixCache.HostBytes = 4 << 20
	noCache := forSlot
	noCache.PrefixCache.Disabled = true
	forCells := Options{Parallel: 2, Context: 512, KVCells: 600, UnifiedKV: true}
	batch := arrival{name: "batch", tier: TierBatch, prompt: prompt(1, 200), max: 60}
	rt := func(name string, turn, max int) arrival {
		return arrival{name: name, turn: turn, tier: TierRealtime, prompt: prompt(len(name)+turn, 100), max: max}
	}
	cases := []struct {
		name        string
		opts        Options
		arrivals    []arrival
		preemptions int
		restored    bool // its cells came back (kept or host): at most a block recomputed
		failRestore bool // restores from the host tier fail
	}{
		{"preempted for cells: kept in its slot", forCells,
			[]arrival{{name: "batch", tier: TierBatch, prompt: prompt(1, 100), max: 380}, rt("rt", 10, 30)}, 1, true, false},
		{"preempted for its slot: spilled to the host tier and restored", withHost, []arrival{batch, rt("rt", 10, 3)}, 1, true, false},
		{"preempted twice: restored from the host tier both times", withHost, []arrival{batch, rt("rt1", 10, 3), rt("rt2", 30, 3)}, 2, true, false},
		{"the host tier's restore fails: recomputed", withHost, []arrival{batch, rt("rt", 10, 3)}, 1, false, true},
		{"evicted without a host tier: recomputed", forSlot, []arrival{batch, rt("rt", 10, 3)}, 1, false, false},
		{"no prefix cache: recomputed", noCache, []arrival{batch, rt("rt", 10, 3)}, 1, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, tc.opts, nil)
			if hb := tc.opts.PrefixCache.HostBytes; hb > 0 {
				h, err := prefixcache.NewHost(prefixcache.HostOptions{MaxBytes: hb})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(h.Close)
				s.e.host, s.l.pc.host = h, h
			}
			s.x.restoreFails = tc.failRestore
			out := s.play(tc.arrivals, 2000)
			if tc.failRestore && !slices.Contains(s.x.calls, "restore 0") {
				t.Fatalf("no restore was tried: %v", s.x.calls)
			}
			if hh := s.l.pstats.hostHits; tc.failRestore && hh != 0 || !tc.failRestore && tc.opts.PrefixCache.HostBytes > 0 && hh != uint64(tc.preemptions) {
				t.Errorf("%d hits from the host tier counted", hh)
			}
			b, a := out["batch"], tc.arrivals[0]
			if got, want := tokensOf(b.events), s.greedy(a.prompt, a.max); !slices.Equal(got, want) {
				t.Fatalf("resumed output differs:\n got %v\nwant %v", got, want)
			}
			if b.final.Preemptions != tc.preemptions {
				t.Fatalf("preempted %d times, want %d", b.final.Preemptions, tc.preemptions)
			}
			// Rows the batch request fed, less what it feeds without
			// preemption (its prompt, and each sampled token but the
			// last): what it recomputed.
			fed := 0
			for _, st := range s.x.steps {
				fed += st.byFirst[a.prompt[0]]
			}
			recomputed := fed - (len(a.prompt) + a.max - 1)
			if tc.restored && recomputed > s.l.pc.block || !tc.restored && recomputed < len(a.prompt) {
				t.Errorf("recomputed %d tokens after %d preemptions; want restored: %v", recomputed, tc.preemptions, tc.restored)
			}
			s.checkIdle()
		})
	}
}

// TestSchedPlan: what one run of a plan asks of the device, in order.
// KV operations decided at admission reach the device before the decode
// that reads them; a generation's sampler is made at its first token,
// lives through preemption and is freed at its end; what ended is freed
// before the loop sleeps.
func TestSchedPlan(t *testing.T) {
	// after returns the calls after the first one equal to from.
	after := func(calls []string, from string) []string {
		i := slices.Index(calls, from)
		if i < 0 {
			t.Fatalf("no %q in %v", from, calls)
		}
		return calls[i+1:]
	}
	t.Run("a follower's copy and trim come before the decode of its rows", func(t *testing.T) {
		s := newSim(t, Options{Parallel: 2, Context: 256}, nil)
		shared := prompt(3, 80)
		out := s.play([]arrival{
			{name: "leader", prompt: append(slices.Clone(shared), prompt(4, 10)...), max: 20},
			{name: "follower", turn: 5, prompt: append(slices.Clone(shared), prompt(5, 12)...), max: 4},
		}, 200)
		if c := out["follower"].final.Usage.CachedTokens; c != 80 {
			t.Fatalf("follower reused %d tokens, want 80", c)
		}
		rest := after(s.x.calls, "copy 0 to 1")
		if len(rest) < 2 || rest[0] != "remove 1 [80,-1)" || !strings.HasPrefix(rest[1], "decode ") {
			t.Errorf("after the copy: %v; want the trim, then the decode", rest[:min(3, len(rest))])
		}
		s.checkIdle()
	})
	t.Run("a sampled generation's sampler: made at its first token, kept through preemption, freed at its end", func(t *testing.T) {
		s := newSim(t, Options{Parallel: 1, Context: 512}, nil)
		seed := uint32(1)
		batchReq := Request{Prompt: prompt(1, 40), MaxTokens: 30, IgnoreEOS: true, Tier: TierBatch,
			Sampling: Sampling{Temperature: 1, Seed: &seed}}
		b := s.gen(batchReq)
		s.runUntil(100, func() bool { return slices.Contains(s.x.calls, "new sampler") })
		if got := s.x.calls[len(s.x.calls)-1]; !strings.HasPrefix(s.x.calls[len(s.x.calls)-2], "decode ") || got != "new sampler" {
			t.Fatalf("the sampler was made after %v, want right after its prompt's decode", s.x.calls)
		}
		rt := s.gen(Request{Prompt: prompt(2, 20), MaxTokens: 3, IgnoreEOS: true, Tier: TierRealtime})
		evs := s.finish(500, b, rt)
		if f := evs[0][len(evs[0])-1]; f.Err != nil || f.Preemptions != 1 || f.Usage.CompletionTokens != 30 {
			t.Fatalf("batch: %v, %d preemptions, %d tokens", f.Err, f.Preemptions, f.Usage.CompletionTokens)
		}
		var made, freed int
		for _, c := range s.x.calls {
			made += b2i(c == "new sampler")
			freed += b2i(c == "free sampler")
		}
		if made != 1 || freed != 1 {
			t.Errorf("%d samplers made and %d freed, want 1 and 1", made, freed)
		}
		s.checkIdle()
	})
	t.Run("what ended is freed before the loop sleeps", func(t *testing.T) {
		o := Options{Parallel: 2, Context: 256}
		o.PrefixCache.Disabled = true
		s := newSim(t, o, nil)
		seed := uint32(2)
		st := s.gen(Request{Prompt: prompt(6, 30), MaxTokens: 5, IgnoreEOS: true, Sampling: Sampling{Temperature: 1, Seed: &seed}})
		s.finish(100, st)
		if len(s.x.samplers) != 0 || s.x.used() != 0 {
			t.Errorf("after the last turn: %d samplers, %d cells held", len(s.x.samplers), s.x.used())
		}
		if last := s.x.calls[len(s.x.calls)-2:]; !slices.Equal(last, []string{"free sampler", "remove 0 [-1,-1)"}) &&
			!slices.Equal(last, []string{"remove 0 [-1,-1)", "free sampler"}) {
			t.Errorf("the last calls are %v, want the sampler freed and the cells removed", last)
		}
	})
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestSchedPrefixWaits: requests sharing a prompt prefix that arrive
// together. A follower waits only while another request computes the
// prefix right now, and then every follower is admitted in the same step
// from the computed cells; a shared part under two blocks is not worth a
// wait. Warm (the prefix kept from an earlier request), nobody waits.
func TestSchedPrefixWaits(t *testing.T) {
	sys := prompt(99, 667)
	with := func(seed, n int) []Token { return append(slices.Clone(sys[:n]), prompt(seed, 23)...) }
	cases := []struct {
		name      string
		warm      bool
		shared    int
		waits     []uint64
		cached    []int
		prefixWas uint64 // PrefixStats.Waits: admissions postponed, per turn
	}{
		{"cold: followers wait for the leader's prefill, then start together", false, 667, []uint64{0, 2, 2, 2}, []int{0, 667, 667, 667}, 6},
		{"warm: all start at once from the kept prefix", true, 667, []uint64{0, 0, 0, 0}, []int{667, 667, 667, 667}, 0},
		{"cold, shared less than two blocks: nobody waits", false, 20, []uint64{0, 0, 0, 0}, []int{0, 0, 0, 0}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Options{Parallel: 4, Context: 1024, Batch: 512}, nil)
			if tc.warm {
				s.play([]arrival{{name: "earlier", prompt: with(50, tc.shared), max: 2}}, 100)
			}
			var arr []arrival
			for i := range 4 {
				arr = append(arr, arrival{name: string(rune('a' + i)), tier: TierStandard, prompt: with(i, tc.shared), max: 16})
			}
			waits0 := s.l.pstats.waits
			out := s.play(arr, 500)
			for i, a := range arr {
				f := out[a.name].final
				if f.Timings.QueueSteps != tc.waits[i] || f.Usage.CachedTokens != tc.cached[i] {
					t.Errorf("%s: waited %d steps with %d cached; want %d and %d", a.name, f.Timings.QueueSteps, f.Usage.CachedTokens, tc.waits[i], tc.cached[i])
				}
				if got, want := tokensOf(out[a.name].events), s.greedy(a.prompt, a.max); !slices.Equal(got, want) {
					t.Errorf("%s: output differs from the request alone", a.name)
				}
			}
			if got := s.l.pstats.waits - waits0; got != tc.prefixWas {
				t.Errorf("%d prefix waits counted, want %d", got, tc.prefixWas)
			}
			s.checkIdle()
		})
	}
}

// TestSchedQueueTimeoutAndCancel: with the clock under the test's
// control, a queue timeout falls exactly when the tier's limit has passed,
// and a request cancelled while waiting or running leaves nothing behind.
func TestSchedQueueTimeoutAndCancel(t *testing.T) {
	tiers := DefaultTiers()
	tiers[TierBatch].QueueTimeout = 500 * time.Millisecond
	// Each step costs 20 ms + 1 ms per row: a one-row decode step 21 ms.
	s := newSim(t, Options{Parallel: 1, Context: 256, Tiers: tiers}, nil)
	out := s.play([]arrival{
		{name: "running", tier: TierStandard, prompt: prompt(1, 8), max: 60},
		{name: "timesout", tier: TierBatch, prompt: prompt(2, 8), max: 4},
		{name: "cancelled-waiting", tier: TierStandard, prompt: prompt(3, 8), max: 4, cancel: 3},
		{name: "cancelled-running", turn: 80, tier: TierStandard, prompt: prompt(4, 8), max: 40, cancel: 90},
	}, 1000)
	var qt *QueueTimeoutError
	if err := out["timesout"].final.Err; !errors.As(err, &qt) || qt.Waited < 500*time.Millisecond || qt.Waited > 521*time.Millisecond {
		t.Errorf("timesout: %v; want a queue timeout within one step past 500 ms", err)
	}
	if err := out["cancelled-waiting"].final.Err; !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled-waiting: %v", err)
	}
	if f := out["cancelled-running"].final; !errors.Is(f.Err, context.Canceled) || f.Usage.CompletionTokens == 0 || f.Usage.CompletionTokens >= 40 {
		t.Errorf("cancelled-running: %v after %d tokens; want cancelled mid-way", f.Err, f.Usage.CompletionTokens)
	}
	if f := out["running"].final; f.Err != nil || f.Usage.CompletionTokens != 60 {
		t.Errorf("running: %v, %d tokens", f.Err, f.Usage.CompletionTokens)
	}
	s.checkIdle()
}

// TestSchedDecodeFailures: a decode that finds no KV room for its prompt
// chunks is retried with smaller chunks and loses nothing; any other
// failure ends the requests of that batch with an error, and the engine
// goes on with the next.
func TestSchedDecodeFailures(t *testing.T) {
	s := newSim(t, Options{Parallel: 2, Context: 256}, nil)
	a := s.gen(Request{Prompt: prompt(1, 100), MaxTokens: 4, IgnoreEOS: true})
	s.x.fail = 1
	evs := s.finish(100, a)
	if f := evs[0][len(evs[0])-1]; f.Err != nil || f.Usage.CompletionTokens != 4 {
		t.Fatalf("after a KV-full decode: %v, %d tokens", f.Err, f.Usage.CompletionTokens)
	}
	if got := s.x.steps[0].rows; got != 50 {
		t.Errorf("the retried prefill fed %d rows, want half the failed 100", got)
	}
	b := s.gen(Request{Prompt: prompt(2, 10), MaxTokens: 4, IgnoreEOS: true})
	s.turn()
	s.x.fail = -3
	evs = s.finish(10, b)
	if f := evs[0][len(evs[0])-1]; f.Err == nil || !strings.Contains(f.Err.Error(), "code -3") {
		t.Fatalf("after a failed decode: %v", f.Err)
	}
	c := s.gen(Request{Prompt: prompt(3, 10), MaxTokens: 4, IgnoreEOS: true})
	evs = s.finish(20, c)
	if f := evs[0][len(evs[0])-1]; f.Err != nil {
		t.Fatalf("the next request: %v", f.Err)
	}
	s.checkIdle()
}

// TestSchedAging: a batch request behind an endless stream of realtime
// requests on one slot gains a priority level per Aging it is held back,
// and is admitted once it reaches realtime's (two levels up), ahead of
// the realtime requests that arrived after it: on the fake clock, after
// 2 x Aging, within one realtime request's service time.
func TestSchedAging(t *testing.T) {
	const aging = 100 * time.Millisecond
	s := newSim(t, Options{Parallel: 1, Context: 256, Aging: aging}, nil)
	rtReq := func(i int) Request {
		return Request{Prompt: prompt(100+i, 8), MaxTokens: 3, IgnoreEOS: true, Tier: TierRealtime}
	}
	var rts []*Stream
	rts = append(rts, s.gen(rtReq(0)))
	b := s.gen(Request{Prompt: prompt(1, 8), MaxTokens: 4, IgnoreEOS: true, Tier: TierBatch})
	var bEvents []Event
	served := 0
	for turn := 0; ; turn++ {
		if turn == 1000 {
			t.Fatal("the batch request never finished")
		}
		// Keep two realtime requests waiting or running at all times.
		rts = slices.DeleteFunc(rts, func(st *Stream) bool {
			_, done := drain(st)
			if done {
				served++
			}
			return done
		})
		for len(rts) < 2 {
			rts = append(rts, s.gen(rtReq(turn*2+len(rts))))
		}
		s.turn()
		evs, done := drain(b)
		bEvents = append(bEvents, evs...)
		if done {
			break
		}
	}
	f := bEvents[len(bEvents)-1]
	t.Logf("batch queued %v; %d realtime requests served", f.Timings.Queue, served)
	// One realtime request: a prefill step of 8 rows (28 ms) and two decode
	// steps (21 ms each), plus the step it was admitted with.
	if f.Err != nil || f.Timings.Queue < 2*aging || f.Timings.Queue > 2*aging+100*time.Millisecond {
		t.Fatalf("batch request: %v, queued %v; want admitted within a realtime request after %v", f.Err, f.Timings.Queue, 2*aging)
	}
	if served < 2 {
		t.Fatalf("only %d realtime requests were served before: the fixture did not hold the batch back", served)
	}
}

// TestSchedCut: a request arriving while a step computes cuts the step
// short when it outranks every sequence in it and they all give way
// (Preemptible tiers): it starts at once, and its time to first token
// stays within 1.5x of an idle engine's. Otherwise it waits for the step.
// The cut step's sequences lose nothing.
func TestSchedCut(t *testing.T) {
	cases := []struct {
		name    string
		running Tier // the streams computing when it arrives
		arrives Tier
		cut     bool
		before  bool // it arrives after the loop's intake, before the decode starts
	}{
		{"realtime during batch streams", TierBatch, TierRealtime, true, false},
		{"realtime just before a batch step: not started", TierBatch, TierRealtime, true, true},
		{"standard during batch streams", TierBatch, TierStandard, true, false},
		{"realtime during standard streams: they do not give way", TierStandard, TierRealtime, false, false},
		{"batch during realtime streams", TierRealtime, TierBatch, false, false},
		{"batch during batch streams: no higher", TierBatch, TierBatch, false, false},
	}
	question := prompt(500, 10)
	idle := func() time.Duration {
		s := newSim(t, Options{Parallel: 9, Context: 512}, nil)
		out := s.play([]arrival{{name: "q", tier: TierRealtime, prompt: question, max: 3}}, 100)
		return out["q"].final.Timings.FirstByte
	}()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Options{Parallel: 9, Context: 512}, nil)
			var arr []arrival
			for i := range 8 {
				arr = append(arr, arrival{name: string(rune('a' + i)), tier: tc.running, prompt: prompt(i, 100), max: 60})
			}
			var q *Stream
			decodes := 0
			arrive := func() {
				// Mid-way through the streams' decoding.
				if decodes++; decodes == 10 {
					q = s.gen(Request{Prompt: question, MaxTokens: 3, IgnoreEOS: true, Tier: tc.arrives})
				}
			}
			if tc.before {
				s.x.arming = arrive
			} else {
				s.x.during = arrive
			}
			out := s.play(arr, 1000)
			qe := s.finish(100, q)[0]
			f := qe[len(qe)-1]
			if f.Err != nil {
				t.Fatal(f.Err)
			}
			for _, a := range arr {
				if got, want := tokensOf(out[a.name].events), s.greedy(a.prompt, a.max); !slices.Equal(got, want) {
					t.Fatalf("%s: output differs from the request alone", a.name)
				}
			}
			st := s.l.stats()
			if cut := st.CutSteps > 0; cut != tc.cut || st.CutSteps > 1 {
				t.Fatalf("%d steps cut, want a cut: %v", st.CutSteps, tc.cut)
			}
			ratio := float64(f.Timings.FirstByte) / float64(idle)
			t.Logf("time to first token %v, idle %v: %.2fx", f.Timings.FirstByte, idle, ratio)
			if tc.cut && tc.arrives == TierRealtime && ratio > 1.5 {
				t.Errorf("time to first token %.2fx idle, want at most 1.5x", ratio)
			}
			s.checkIdle()
		})
	}
}

// TestSchedChunks: how a prompt is cut into chunks across steps. Alone,
// it takes the whole batch per step. Under a realtime tier that was
// active within the last minute, a batch prompt's chunks keep each step
// within a sixth of realtime's TTFT target by the step-time model (here
// 20 ms + 1 ms a row: 50 ms, 30 rows), and nothing runs beside it that a
// realtime arrival would wait for longer. A decode that finds no KV room
// halves the chunks, which grow back as steps succeed.
func TestSchedChunks(t *testing.T) {
	tiers := DefaultTiers()
	tiers[TierRealtime].TTFTTarget = 300 * time.Millisecond
	cases := []struct {
		name     string
		realtime bool // a realtime request ran first
		kvFull   bool // its first decode finds no KV room
		want     []int
		// or, under the step-time model: every chunk in [lo, hi] but the last
		lo, hi int
	}{
		{name: "alone: the batch size", want: []int{512, 188}},
		// The model's least-squares fit of 20 ms + 1 ms a row lands within
		// a float's rounding of 30 rows: 29 or 30.
		{name: "under an active realtime tier: steps of at most 50 ms", realtime: true, lo: 29, hi: 30},
		{name: "KV full: halved, then doubled back", kvFull: true, want: []int{256, 444}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t, Options{Parallel: 2, Context: 1024, Batch: 512, Tiers: tiers}, nil)
			if tc.realtime {
				// Steps of several sizes, so that the step-time model fits.
				for i, n := range []int{8, 40, 100} {
					s.play([]arrival{{name: "rt", tier: TierRealtime, prompt: prompt(100+i, n), max: 2}}, 50)
				}
			}
			before := len(s.x.steps)
			if tc.kvFull {
				s.x.fail = 1
			}
			p := prompt(1, 700)
			s.play([]arrival{{name: "doc", tier: TierBatch, prompt: p, max: 1}}, 200)
			var got []int
			for _, st := range s.x.steps[before:] {
				got = append(got, st.byFirst[p[0]])
			}
			if tc.want != nil && !slices.Equal(got, tc.want) {
				t.Errorf("chunks %v, want %v", got, tc.want)
			}
			sum := 0
			for i, n := range got {
				sum += n
				if tc.want == nil && i < len(got)-1 && (n < tc.lo || n > tc.hi) {
					t.Errorf("chunk %d of %d rows, want %d to %d: %v", i, n, tc.lo, tc.hi, got)
				}
			}
			if sum != len(p) {
				t.Errorf("chunks %v sum to %d, want the prompt's %d", got, sum, len(p))
			}
		})
	}
}

// closedLoop runs clients that each send their next request as soon as
// the last one ended, rounds requests each, and returns every request's
// time to first token.
func (s *sim) closedLoop(clients, rounds int, req func(client, round int) Request) []time.Duration {
	s.t.Helper()
	streams := make([]*Stream, clients)
	sent := make([]int, clients)
	var ttft []time.Duration
	for i := range streams {
		streams[i], sent[i] = s.gen(req(i, 0)), 1
	}
	for turn := 0; ; turn++ {
		if turn == 100000 {
			s.t.Fatal("the closed loop did not finish")
		}
		s.turn()
		live := 0
		for i, st := range streams {
			if st == nil {
				continue
			}
			live++
			evs, done := drain(st)
			if !done {
				continue
			}
			f := evs[len(evs)-1]
			if f.Err != nil {
				s.t.Fatal(f.Err)
			}
			ttft = append(ttft, f.Timings.FirstByte)
			streams[i] = nil
			if sent[i] < rounds {
				streams[i] = s.gen(req(i, sent[i]))
				sent[i]++
			}
		}
		if live == 0 {
			return ttft
		}
	}
}

func median(d []time.Duration) time.Duration {
	d = slices.Clone(d)
	slices.Sort(d)
	return d[(len(d)-1)/2]
}

// TestSchedPrefillBound: the split of a step between decoding and
// prompts (prefillBound), on a CPU-like step cost of 15 ms + 1.2 ms a row.
// A lone long prompt still takes the whole batch per step. Prompts that
// arrive together are started in turn, one whole chunk per step plus what
// keeps the step within twice its decode part; so closed-loop clients
// with the same answer length, which a step-per-group schedule keeps in
// lockstep for good, spread out, and their median time to first token
// falls well below the cost of prefilling a group at once.
func TestSchedPrefillBound(t *testing.T) {
	cpu := func(n int) time.Duration { return 15*time.Millisecond + time.Duration(n)*1200*time.Microsecond }
	measure := func(s *sim) {
		// Steps of several sizes, so that the step-time model fits.
		for i, n := range []int{8, 40, 100} {
			s.play([]arrival{{name: "warm", prompt: prompt(900+i, n), max: 2}}, 50)
		}
	}
	t.Run("a lone long prompt: whole batches", func(t *testing.T) {
		s := newSim(t, Options{Parallel: 4, Context: 2048, Batch: 512}, cpu)
		measure(s)
		before := len(s.x.steps)
		p := prompt(1, 1500)
		s.play([]arrival{{name: "doc", prompt: p, max: 1}}, 50)
		var got []int
		for _, st := range s.x.steps[before:] {
			got = append(got, st.rows)
		}
		if !slices.Equal(got, []int{512, 512, 476}) {
			t.Errorf("steps of %v rows, want 512, 512, 476", got)
		}
	})
	t.Run("prompts arriving together beside decoding streams: in turn", func(t *testing.T) {
		s := newSim(t, Options{Parallel: 16, Context: 1024}, cpu)
		measure(s)
		var arr []arrival
		for i := range 8 {
			arr = append(arr, arrival{name: "stream" + string(rune('a'+i)), prompt: prompt(i, 8), max: 40})
			arr = append(arr, arrival{name: "new" + string(rune('a'+i)), turn: 5, prompt: prompt(100+i, 11), max: 2})
		}
		before := 0
		s.x.during = func() {
			if before == 0 && len(s.l.running) > 8 {
				before = len(s.x.steps)
			}
		}
		s.play(arr, 500)
		// 8 decode rows take 15 + 9.6 ms; twice that, 49.2 ms, holds 28
		// rows: the 8 decodes, one whole 11-token prompt and 9 rows of the
		// next (8 by a float's rounding of the fitted model), not all 88.
		st := s.x.steps[before]
		if prompts := st.rows - 8; prompts < 19 || prompts > 20 {
			t.Errorf("the first step after the arrivals holds %d prompt rows, want 11 + 9", prompts)
		}
	})
	t.Run("closed-loop clients fall out of lockstep", func(t *testing.T) {
		s := newSim(t, Options{Parallel: 16, Context: 1024}, cpu)
		shared := prompt(7, 28)
		ttft := s.closedLoop(8, 8, func(c, r int) Request {
			return Request{Prompt: append(slices.Clone(shared), prompt(c*100+r, 11)...), MaxTokens: 64, IgnoreEOS: true}
		})
		group := cpu(8 * 11) // all 8 uncached tails in one step
		if m := median(ttft); m > group/2 {
			t.Errorf("median time to first token %v; a group prefilled at once takes %v", m, group)
		}
	})
}
