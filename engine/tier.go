package engine

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// Latency tiers. Every request carries one; the engine schedules by the
// tiers' policies (Options.Tiers):
//
//   - admission: waiting requests are admitted in order of priority, then
//     arrival. A request that finds no room blocks those after it (so big
//     requests are not starved by small ones), except that a tier at its
//     MaxRunning lets the others pass.
//   - preemption: a request that finds no free slot or KV cells takes them
//     from the lowest-priority running generation of a Preemptible tier
//     below its own priority. The victim goes back to the queue with the
//     tokens it has so far; its cells stay in its slot as a kept prefix
//     (spilled to the host tier when the slot is taken), so it resumes from
//     the prefix cache, or recomputes, and continues exactly where it was.
//   - pausing: while a prompt of some priority is prefilled, Preemptible
//     sequences of lower priority sit the step out, so that the prefill
//     step is as short as it would be on an idle engine.
//   - step length: a tier's prompt chunks are cut so that one step stays
//     within 1/stepShare of the smallest TTFTTarget of the tiers above it
//     that had a request in the last minute: a request arriving during a
//     step waits at most that long to start.
//   - aging: a request held back by higher priorities (the first waiting
//     request of its tier, unless its tier is at MaxRunning, or a paused
//     sequence, while a higher priority runs) gains one priority level
//     per Options.Aging it is held back, up to the top. It is then
//     admitted ahead of later higher-tier requests and never paused or
//     preempted by them: every tier keeps making progress under any
//     sustained load.

// NumTiers is the number of latency tiers.
const NumTiers = 3

// ParseTier reads a tier's name.
func ParseTier(name string) (Tier, error) {
	for t := range Tier(NumTiers) {
		if t.String() == name {
			return t, nil
		}
	}
	return 0, fmt.Errorf("unknown tier %q (the tiers are realtime, standard and batch)", name)
}

// TierPolicy is how the engine schedules one tier.
type TierPolicy struct {
	// Priority orders the tiers: higher is admitted first and may preempt
	// and pause Preemptible tiers of lower priority.
	Priority int
	// MaxQueued bounds the tier's waiting requests; more are refused with
	// a *QueueFullError (0: only Options.MaxQueue bounds them).
	MaxQueued int
	// MaxRunning bounds the sequences the tier runs at once (0: Parallel;
	// negative: Parallel less that many, slots kept for other tiers).
	MaxRunning int
	// QueueTimeout ends a request that was not admitted within it with a
	// *QueueTimeoutError (0: it waits as long as its context allows).
	QueueTimeout time.Duration
	// Preemptible generations give way to higher priorities: they are
	// paused while a higher-priority prompt is prefilled and preempted when
	// one needs their slot or cells.
	Preemptible bool
	// TTFTTarget is the tier's time-to-first-token objective (0: none).
	// Lower tiers' prompt chunks are cut so that a step lasts at most a
	// sixth of it.
	TTFTTarget time.Duration
}

// DefaultTiers are the engine's policies when Options.Tiers is left zero:
// realtime over standard over batch, batch preemptible, no limits beyond
// Options.MaxQueue. The server's defaults add queue bounds and targets.
func DefaultTiers() [NumTiers]TierPolicy {
	return [NumTiers]TierPolicy{
		TierRealtime: {Priority: 2},
		TierStandard: {Priority: 1},
		TierBatch:    {Priority: 0, Preemptible: true},
	}
}

// DefaultAging is Options.Aging's default.
const DefaultAging = 10 * time.Second

func (o *Options) fillTiers() error {
	if o.Tiers == ([NumTiers]TierPolicy{}) {
		o.Tiers = DefaultTiers()
	}
	if o.Aging == 0 {
		o.Aging = DefaultAging
	}
	for t := range o.Tiers {
		p := &o.Tiers[t]
		switch {
		case p.MaxQueued < 0 || p.QueueTimeout < 0 || p.TTFTTarget < 0:
			return fmt.Errorf("engine options: tier %s: limits must not be negative", Tier(t))
		case p.MaxRunning > o.Parallel || p.MaxRunning <= -o.Parallel:
			return fmt.Errorf("engine options: tier %s: max running %d must be between %d and parallel, %d", Tier(t), p.MaxRunning, 1-o.Parallel, o.Parallel)
		case p.Priority < -1000 || p.Priority > 1000:
			return fmt.Errorf("engine options: tier %s: priority %d is outside -1000..1000", Tier(t), p.Priority)
		}
		if p.MaxRunning < 0 {
			p.MaxRunning += o.Parallel
		}
	}
	return nil
}

// QueueFullError refuses a request whose tier queue (or the engine's) is
// full. It matches ErrQueueFull with errors.Is.
type QueueFullError struct {
	Tier    Tier
	Waiting int // requests of the tier waiting
	// RetryAfter estimates when the tier's backlog will have moved on.
	RetryAfter time.Duration
}

func (e *QueueFullError) Error() string {
	return fmt.Sprintf("%s queue is full: %d requests waiting", e.Tier, e.Waiting)
}

// Is makes errors.Is(err, ErrQueueFull) true.
func (e *QueueFullError) Is(target error) bool { return target == ErrQueueFull }

// QueueTimeoutError ends a request that waited past its tier's
// QueueTimeout without being admitted. Nothing of it was computed.
type QueueTimeoutError struct {
	Tier       Tier
	Waited     time.Duration
	RetryAfter time.Duration
}

func (e *QueueTimeoutError) Error() string {
	return fmt.Sprintf("waited %s in the %s queue without being admitted", e.Waited.Round(time.Millisecond), e.Tier)
}

// TierStats describe one tier's share of the engine.
type TierStats struct {
	Waiting   int // requests waiting, preempted ones included
	Sequences int // sequences running
	// Preemptions counts generations preempted; PausedSteps the steps a
	// sequence of the tier sat out for a higher-priority prefill.
	Preemptions, PausedSteps uint64
	// Rejected counts requests refused with a full queue; TimedOut those
	// ended by QueueTimeout.
	Rejected, TimedOut uint64
}

// tierCounters are the loop's cumulative counts per tier.
type tierCounters struct {
	preemptions, paused, timedOut uint64
}

// policy is the scheduling policy of tier t.
func (l *loop) policy(t Tier) *TierPolicy { return &l.e.opts.Tiers[t] }

// prio is a task's effective priority: its tier's, raised by aging.
func (l *loop) prio(b *taskBase) int {
	p := l.policy(b.tier).Priority
	if a := l.e.opts.Aging; a > 0 && b.held > 0 {
		p += int(min(b.held/a, math.MaxInt32))
	}
	return min(p, l.topPrio)
}

// preemptible says whether sequence sq gives way to priority p.
func (l *loop) preemptible(sq *sequence, p int) bool {
	return sq.gen != nil && l.policy(sq.tier).Preemptible && l.prio(&sq.gen.taskBase) < p
}

// preemptFor preempts the running generation that gives way to priority p
// with the lowest priority, the latest arrival among equals. It reports
// whether there was one.
func (l *loop) preemptFor(p int) bool {
	var victim *sequence
	vp := 0
	for _, sq := range l.running {
		if !l.preemptible(sq, p) {
			continue
		}
		q := l.prio(&sq.gen.taskBase)
		if victim == nil || q < vp || q == vp && sq.order > victim.order {
			victim, vp = sq, q
		}
	}
	if victim == nil {
		return false
	}
	t := victim.gen
	// The sequence's tokens so far (prompt, then output; the last sampled
	// token is not yet decoded) are what it resumes from.
	t.resume, t.lookedUp = victim.tokens, false
	l.removeSeq(victim, true)
	t.seq = nil
	t.preemptions++
	l.tstats[t.tier].preemptions++
	l.requeued = append(l.requeued, t)
	l.e.queued(t.tier, 1)
	return true
}

// tierFull says whether t's tier runs as many sequences as it may.
func (l *loop) tierFull(t *taskBase) bool {
	limit := l.policy(t.tier).MaxRunning
	if limit == 0 {
		return false
	}
	n := 0
	for _, sq := range l.running {
		if sq.tier == t.tier {
			n++
		}
	}
	return n >= limit
}

// age credits the time since the last call to every task held back by a
// higher priority: the first waiting task of each tier (unless its tier
// runs all it may) and the tasks of sequences paused in the last step,
// while something of higher priority runs.
func (l *loop) age(now time.Time) {
	dt := now.Sub(l.lastAged)
	l.lastAged = now
	// What holds a task back is a higher tier that ran in the step (it
	// may have ended in it: its step still held the others back), not a
	// task of its own tier that aged: counting those made same-tier tasks
	// age past each other and preempt each other in turn.
	top := l.stepTop
	if l.e.opts.Aging <= 0 || top == math.MinInt {
		return
	}
	var seen [NumTiers]bool
	for _, t := range l.waiting {
		b := t.base()
		if !seen[b.tier] {
			seen[b.tier] = true
			// A tier at its own MaxRunning is not held back by others.
			if l.prio(b) < top && !l.tierFull(b) {
				b.held += dt
			}
		}
	}
	for _, sq := range l.running {
		if sq.paused && sq.gen != nil && sq.gen.heldAt != l.steps {
			sq.gen.heldAt = l.steps // once per task and step
			sq.gen.held += dt
		}
	}
}

// expired ends tasks that waited past their tier's queue timeout. Only
// tasks never admitted expire: a preempted one has already answered.
func (l *loop) expired(now time.Time) {
	l.waiting = slices.DeleteFunc(l.waiting, func(t task) bool {
		b := t.base()
		limit := l.policy(b.tier).QueueTimeout
		if limit == 0 || !b.admitted.IsZero() {
			return false
		}
		waited := now.Sub(b.submitted)
		if waited < limit {
			return false
		}
		l.e.queued(b.tier, -1)
		l.tstats[b.tier].timedOut++
		l.end(t, &QueueTimeoutError{Tier: b.tier, Waited: waited, RetryAfter: l.e.retryAfter(b.tier)})
		return true
	})
}

// nextDeadline is when the next waiting task's queue timeout falls (zero:
// none).
func (l *loop) nextDeadline() time.Time {
	var next time.Time
	for _, t := range l.waiting {
		b := t.base()
		if limit := l.policy(b.tier).QueueTimeout; limit > 0 && b.admitted.IsZero() {
			if d := b.submitted.Add(limit); next.IsZero() || d.Before(next) {
				next = d
			}
		}
	}
	return next
}

// stepShare is the fraction of a TTFT target (1/stepShare) that one step
// of lower-tier work may take. A request arriving mid-step waits for the
// step, then for its own prefill: under a saturating lower-tier load, a
// sixth kept its p99 TTFT at 1.17x of an idle engine's (a quarter: 1.59x;
// scripts/tier-bench.sh, 2 CPU threads), at the cost of smaller, less
// efficient prompt chunks for the lower tiers.
const stepShare = 6

// activeWindow is how long after a tier's last request its TTFT target
// still cuts the steps of the tiers below: arrivals cannot be foreseen,
// but a tier nobody has used for this long does not cost the others.
const activeWindow = time.Minute

// chunkCap is how many prompt tokens a sequence of priority p may add to
// a step that already holds n tokens, and whether it is bounded at all:
// as many as keep the step within 1/stepShare of the smallest TTFT target
// above p of a tier active within activeWindow, by the step-time model. The first capped sequence of a step
// gets at least minChunk, so that lower tiers always progress; with
// capped set (one already did) the rest get only what fits.
func (l *loop) chunkCap(p, n int, capped bool) (int, bool) {
	var target time.Duration
	now := l.now()
	for t, tp := range l.e.opts.Tiers {
		if tp.Priority > p && tp.TTFTTarget > 0 && (target == 0 || tp.TTFTTarget < target) &&
			now.Sub(l.lastSeen[t]) < activeWindow {
			target = tp.TTFTTarget
		}
	}
	if target == 0 {
		return 0, false
	}
	fit, ok := l.stepTime.tokensWithin(target / stepShare)
	if !ok {
		return 0, false // nothing measured yet
	}
	if capped {
		return max(0, fit-n), true
	}
	return max(l.stepTime.minChunk(l.e.opts.UBatch), fit-n), true
}

// minChunk is the smallest prompt chunk the first capped sequence of a
// step gets: as many tokens as cost what a step costs anyway (base/per by
// the model), so that a capped tier pays at most twice a big step's cost
// per token. On a 2-core CPU a token costs about a tenth of a decode step
// and this is the floor of 16; on a GPU, where a decode step reads all the
// weights and a prompt token costs little, it grows to many tokens,
// bounded by the micro-batch.
func (m *stepModel) minChunk(ubatch int) int {
	const floor = 16
	base, per, ok := m.fit()
	if !ok || per <= 0 {
		return floor
	}
	return max(floor, min(int(base/per), ubatch))
}

// stepModel predicts a step's duration from its token count, d = base +
// per*n, by least squares over recent steps (exponentially forgotten):
// the fixed cost of a step (reading the weights, attention over long
// contexts) matters as much as the cost per token on a CPU.
type stepModel struct {
	w, x, y, xx, xy float64 // decayed sums of 1, n, d, n², n·d (d in seconds)
}

func (m *stepModel) add(n int, d time.Duration) {
	const keep = 0.98 // about the last 50 steps
	x, y := float64(n), d.Seconds()
	m.w = m.w*keep + 1
	m.x = m.x*keep + x
	m.y = m.y*keep + y
	m.xx = m.xx*keep + x*x
	m.xy = m.xy*keep + x*y
}

// tokensWithin is how many tokens a step may hold to last at most d; ok
// is false before any step was measured.
func (m *stepModel) tokensWithin(d time.Duration) (int, bool) {
	base, per, ok := m.fit()
	if !ok {
		return 0, false
	}
	return int(min((d.Seconds()-base)/per, 1<<20)), true
}

// fit is the model's fixed cost of a step and cost per token, in seconds;
// ok is false before any step was measured.
func (m *stepModel) fit() (base, per float64, ok bool) {
	if m.w == 0 || m.x == 0 {
		return 0, 0, false
	}
	mx, my := m.x/m.w, m.y/m.w
	varX := m.xx/m.w - mx*mx
	per = my / mx // without spread in n: the mean cost per token
	if varX >= 1 {
		if slope := (m.xy/m.w - mx*my) / varX; slope > 0 {
			per, base = slope, max(0, my-slope*mx)
		}
	}
	return base, per, true
}

// tierStats is the tiers' part of Stats.
func (l *loop) tierStats() [NumTiers]TierStats {
	var s [NumTiers]TierStats
	for _, t := range l.waiting {
		s[t.base().tier].Waiting++
	}
	for _, sq := range l.running {
		s[sq.tier].Sequences++
	}
	for t := range s {
		c := l.tstats[t]
		s[t].Preemptions, s[t].PausedSteps, s[t].TimedOut = c.preemptions, c.paused, c.timedOut
		s[t].Rejected = l.e.rejected[t].Load()
	}
	return s
}

// queued adds n to the waiting counts of tier t (negative: leaving).
func (e *Engine) queued(t Tier, n int64) {
	e.waiting.Add(n)
	e.tierWaiting[t].Add(n)
}

// retryAfter estimates when a request of tier t refused now should come
// back: the backlog at or above its priority, times the tier's mean
// service time, spread over the slots it may use.
func (e *Engine) retryAfter(t Tier) time.Duration {
	p := e.opts.Tiers[t].Priority
	backlog := int64(0)
	for u, tp := range e.opts.Tiers {
		if tp.Priority >= p {
			backlog += e.tierWaiting[u].Load()
		}
	}
	service := time.Duration(e.service[t].Load())
	if service == 0 {
		service = time.Second
	}
	slots := e.opts.Tiers[t].MaxRunning
	if slots == 0 {
		slots = e.opts.Parallel
	}
	d := time.Duration(backlog) * service / time.Duration(slots)
	return min(max(d, time.Second), 10*time.Minute)
}

// served records how long a task of tier t held the engine, for retryAfter.
func (e *Engine) served(t Tier, d time.Duration) {
	old := time.Duration(e.service[t].Load())
	if old == 0 {
		old = d
	}
	e.service[t].Store(int64(old + (d-old)/8))
}
