package engine

import (
	"testing"
	"time"
)

// TestAgingOnlyUnderHigherTiers: aging credits a waiting task only for
// steps in which a higher tier computed (also one that ended in the step:
// skipping those lost a third of the credit behind short realtime
// requests, TestSchedAging). An aged task of its own tier running is no higher
// priority: crediting that made batch requests on two slots age past
// each other and preempt each other in turn, recomputing their contexts
// each time (a 1,000-token batch stream beside two others ran 14 minutes
// under load in TestRealtimeBesideBatchStreams).
func TestAgingOnlyUnderHigherTiers(t *testing.T) {
	tiers := DefaultTiers()
	t0 := time.Unix(1_800_000_000, 0)
	const dt = 5 * time.Second
	run := func(tier Tier, held time.Duration) *sequence {
		return &sequence{tier: tier, inBatch: 1, gen: &genTask{taskBase: taskBase{tier: tier, held: held}}}
	}
	cases := []struct {
		name  string
		ran   []*sequence // in the step
		ended int         // how many of ran ended in it
		want  time.Duration
	}{
		{"batch beside batch", []*sequence{run(TierBatch, 0), run(TierBatch, 0)}, 0, 0},
		{"batch beside batch aged by an earlier realtime request", []*sequence{run(TierBatch, 0), run(TierBatch, 25*time.Second)}, 0, 0},
		{"batch under realtime", []*sequence{run(TierBatch, 0), run(TierRealtime, 0)}, 0, dt},
		{"batch under standard", []*sequence{run(TierStandard, 0)}, 0, dt},
		{"batch under a realtime request that ended in the step", []*sequence{run(TierRealtime, 0)}, 1, dt},
		{"nothing computed", nil, 0, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := &loop{e: &Engine{opts: Options{Tiers: tiers, Aging: DefaultAging}}, running: tc.ran, lastAged: t0}
			for _, tp := range tiers {
				l.topPrio = max(l.topPrio, tp.Priority)
			}
			l.stepTop = l.computingTop()
			l.running = tc.ran[tc.ended:]
			waiting := &genTask{taskBase: taskBase{tier: TierBatch}}
			l.waiting = []task{waiting}
			l.age(t0.Add(dt))
			if waiting.held != tc.want {
				t.Errorf("waiting batch task credited %v, want %v", waiting.held, tc.want)
			}
		})
	}
}
