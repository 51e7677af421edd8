package engine

import (
	"testing"
	"time"
)

// TestStepModel: the step-time model recovers a step's fixed cost and its
// cost per token from measured steps, and so how many tokens fit a budget.
func TestStepModel(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	cases := []struct {
		name   string
		steps  [][2]float64 // tokens, milliseconds
		budget time.Duration
		want   int
		known  bool
	}{
		{"nothing measured", nil, ms(50), 0, false},
		{"fixed plus per token", [][2]float64{{4, 38}, {40, 110}, {100, 230}, {4, 38}, {64, 158}}, ms(50), 10, true},
		{"one size of step only", [][2]float64{{32, 64}, {32, 64}}, ms(50), 25, true},
		{"budget of the fixed cost alone", [][2]float64{{4, 38}, {40, 110}, {100, 230}}, ms(30), 0, true},
	}
	for _, tc := range cases {
		var m stepModel
		for _, s := range tc.steps {
			m.add(int(s[0]), ms(s[1]))
		}
		got, ok := m.tokensWithin(tc.budget)
		if ok != tc.known || got != tc.want {
			t.Errorf("%s: tokensWithin(%v) = %d, %v; want %d, %v", tc.name, tc.budget, got, ok, tc.want, tc.known)
		}
	}
}

// TestMinChunk: the smallest chunk of a capped tier follows the measured
// step costs: the floor on a CPU-like machine, where a prompt token costs
// a good part of a decode step, and base/per on a GPU-like one, where a
// step's fixed cost is that of many prompt tokens.
func TestMinChunk(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	for _, tc := range []struct {
		name   string
		base   float64 // ms
		per    float64 // ms per token
		ubatch int
		want   int
	}{
		{"nothing measured", 0, 0, 512, 16},
		// 2-core CPU, bench model: 8 ms a decode step, 2 ms a prompt token.
		{"CPU", 8, 2, 512, 16},
		// H200, 13B q8_0 (DESIGN.md): 7 ms a decode step, pp512 at 6108 t/s.
		{"GPU", 7, 1000.0 / 6108, 512, 42},
		{"GPU, fixed cost above the micro-batch", 50, 0.01, 512, 512},
	} {
		var m stepModel
		if tc.per > 0 {
			for _, n := range []int{1, 8, 64, 512, 2, 128} {
				m.add(n, ms(tc.base+tc.per*float64(n)))
			}
		}
		if got := m.minChunk(tc.ubatch); got != tc.want {
			t.Errorf("%s: minChunk = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// TestChunkCap: how many prompt tokens a lower tier's sequence may add to
// a step: unbounded unless a higher tier with a TTFT target was active in
// the last minute; then what keeps the step within a sixth of the
// smallest such target by the step-time model, at least the minimum
// chunk for the step's first capped sequence, only what is left for the
// rest.
func TestChunkCap(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	var measured stepModel
	for _, s := range [][2]float64{{4, 38}, {40, 110}, {100, 230}, {4, 38}, {64, 158}} {
		measured.add(int(s[0]), ms(s[1]))
	}
	fitRT, _ := measured.tokensWithin(600 * time.Millisecond / stepShare)
	fitStd, _ := measured.tokensWithin(1200 * time.Millisecond / stepShare)
	floor := measured.minChunk(512)
	if fitRT <= floor || fitStd <= fitRT {
		t.Fatalf("the fixture does not separate the cases: fit %d and %d, minimum chunk %d", fitRT, fitStd, floor)
	}
	now := time.Now()
	active, idle := now, now.Add(-2*activeWindow)
	tiers := DefaultTiers()
	tiers[TierRealtime].TTFTTarget = 600 * time.Millisecond
	tiers[TierStandard].TTFTTarget = 1200 * time.Millisecond
	batch, standard, realtime := tiers[TierBatch].Priority, tiers[TierStandard].Priority, tiers[TierRealtime].Priority
	cases := []struct {
		name       string
		seen       [NumTiers]time.Time // realtime, standard, batch
		model      stepModel
		p, n       int
		capped     bool
		want       int
		wantCapped bool
	}{
		{"no higher tier active", [NumTiers]time.Time{idle, idle, active}, measured, batch, 0, false, 0, false},
		{"realtime active: a sixth of its target", [NumTiers]time.Time{active, idle, active}, measured, batch, 0, false, fitRT, true},
		{"only standard active: a sixth of its target", [NumTiers]time.Time{idle, active, active}, measured, batch, 0, false, fitStd, true},
		{"both active: the smaller target", [NumTiers]time.Time{active, active, active}, measured, batch, 0, false, fitRT, true},
		{"standard under realtime", [NumTiers]time.Time{active, active, active}, measured, standard, 0, false, fitRT, true},
		{"realtime is never capped", [NumTiers]time.Time{active, active, active}, measured, realtime, 0, false, 0, false},
		{"nothing measured yet", [NumTiers]time.Time{active, idle, idle}, stepModel{}, batch, 0, false, 0, false},
		{"first capped: what is left", [NumTiers]time.Time{active, idle, idle}, measured, batch, fitRT - floor - 3, false, floor + 3, true},
		{"first capped: at least the minimum chunk", [NumTiers]time.Time{active, idle, idle}, measured, batch, fitRT, false, floor, true},
		{"later capped: only what is left", [NumTiers]time.Time{active, idle, idle}, measured, batch, fitRT - 5, true, 5, true},
		{"later capped: nothing left", [NumTiers]time.Time{active, idle, idle}, measured, batch, fitRT + 5, true, 0, true},
	}
	for _, tc := range cases {
		l := &loop{e: &Engine{opts: Options{Tiers: tiers, UBatch: 512}}, now: func() time.Time { return now }, lastSeen: tc.seen, stepTime: tc.model}
		got, capped := l.chunkCap(tc.p, tc.n, tc.capped)
		if got != tc.want || capped != tc.wantCapped {
			t.Errorf("%s: chunkCap = %d, %v; want %d, %v", tc.name, got, capped, tc.want, tc.wantCapped)
		}
	}
}
