package engine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sort"
	"time"

	"github.com/finserve/finserve/prefixcache"
)

// taskBase is what generation and scoring tasks share.
type taskBase struct {
	ctx       context.Context
	tier      Tier
	tenant    string
	submitted time.Time
	admitted  time.Time // first admission
	arrival   uint64    // l.steps when the loop took it in
	waitSteps uint64    // steps it waited before its first admission
	order     uint64    // arrival order, for FIFO within a priority
	// held is how long higher priorities held the task back (aging);
	// heldAt the step it was last credited for a pause.
	held   time.Duration
	heldAt uint64
	// unwatch stops the wake-up of the loop when ctx is cancelled.
	unwatch func() bool

	// The hash chain of the prompt (or shared prefix) and what the host
	// tier holds of it, found at submission.
	chain prefixcache.Chain
	hit   *prefixcache.Hit
}

func (t *taskBase) base() *taskBase { return t }

// ended releases what the task holds outside the loop.
func (t *taskBase) ended() {
	if t.unwatch != nil {
		t.unwatch()
	}
}

// task is a *genTask, a *scoreTask or an *embedTask.
type task interface{ base() *taskBase }

type genTask struct {
	taskBase
	req       Request
	stream    *Stream
	asm       textAssembler
	seq       *sequence
	sampled   bool // the executor holds its sampler
	generated int
	cached    int // prompt tokens reused from the prefix cache
	firstTok  time.Time
	// resume holds the tokens (prompt and output so far) of a preempted
	// generation, which it continues from when it is admitted again.
	resume      []Token
	lookedUp    bool // the host tier was searched for resume
	preemptions int
}

// tokens is what the task's sequence starts from.
func (t *genTask) tokens() []Token {
	if t.resume != nil {
		return t.resume
	}
	return t.req.Prompt
}

type scoreTask struct {
	taskBase
	req     ScoreRequest
	root    *scoreNode // the variants' prefix tree (scoretree.go)
	sorted  []int      // variants sorted: every node's are sorted[lo:hi]
	longest int        // the most tokens a variant has past the root
	cells   int        // KV cells its nodes hold
	// finished counts variants scored; the task ends with the last.
	finished int
	result   *ScoreResult
	err      error
	done     chan struct{}
}

func newScoreTask(ctx context.Context, req ScoreRequest, now time.Time) *scoreTask {
	t := &scoreTask{
		taskBase: taskBase{ctx: ctx, tier: req.Tier, tenant: req.Tenant, submitted: now},
		req:      req,
		result:   &ScoreResult{Variants: make([]VariantScore, len(req.Variants))},
		done:     make(chan struct{}),
	}
	// The root is the prefix every variant shares, less a token for
	// each variant's own leaf.
	rootLen := len(req.Variants[0])
	if len(req.Variants) == 1 {
		rootLen = 0 // nothing to share: one fresh sequence
	}
	maxLen := 0
	for _, v := range req.Variants {
		rootLen = min(rootLen, len(v)-1)
		maxLen = max(maxLen, len(v))
		for i := 0; i < rootLen; i++ {
			if v[i] != req.Variants[0][i] {
				rootLen = i
				break
			}
		}
	}
	t.root, t.sorted = buildScoreTree(req.Variants, rootLen)
	t.longest = maxLen - rootLen
	for i, v := range req.Variants {
		if req.Positions {
			t.result.Variants[i].Positions = make([]float32, len(v)-1)
		}
		if req.Distributions {
			t.result.Variants[i].Dists = make([][]float32, len(v)-1-req.DistributionsFrom)
		}
	}
	t.result.SharedPrefix = rootLen
	t.result.EvaluatedTokens = t.root.tokens()
	return t
}

// cacheLimit is how many of a sequence's n tokens may come from the
// prefix cache: none when every position's scores are wanted (cached
// tokens have no logits), and never the last, whose logits are needed.
func (t *scoreTask) cacheLimit(n int) int {
	switch {
	case t.req.Positions:
		return 0
	case t.req.Distributions:
		return min(t.req.DistributionsFrom, n-1)
	}
	return n - 1
}

// sequence is one llama.cpp sequence: a slot in the KV cache and the
// tokens it feeds, in order, at positions 0, 1, ...
type sequence struct {
	slot    int32
	tokens  []Token
	fed     int // tokens decoded so far
	reserve int // KV cells reserved for it
	tier    Tier
	order   uint64
	gen     *genTask
	score   *scoreTask
	embed   *embedTask
	variant int        // index of the variant (or input), or -1 for a shared prefix
	node    *scoreNode // the prefix-tree node a score sequence computes
	tenant  string
	chain   prefixcache.Chain // of tokens; may cover fewer or more than fed

	// set while building a step
	inBatch int  // tokens of this sequence in the current batch
	paused  bool // sat the step out for a higher-priority prefill
}

func (s *sequence) remaining() int { return len(s.tokens) - s.fed }

// owner is the task the sequence belongs to.
func (s *sequence) owner() task {
	switch {
	case s.gen != nil:
		return s.gen
	case s.embed != nil:
		return s.embed
	}
	return s.score
}

// wantsLogits says whether the token at index i needs its logits.
func (s *sequence) wantsLogits(i int) bool {
	last := i == len(s.tokens)-1
	switch {
	case s.gen != nil:
		return last
	case s.embed != nil:
		return true // pooling reads every row's hidden state
	case s.variant >= 0:
		r := &s.score.req
		return last || r.Positions || r.Distributions && i >= r.DistributionsFrom
	default: // shared by several variants: only position scores need its logits
		return s.score.req.Positions
	}
}

// output records where a sequence's logits sit in the step's outputs.
type output struct {
	seq   *sequence
	index int   // index of the token in seq.tokens
	batch int32 // index of the token in the batch
}

// loop is the state owned by the engine's goroutine.
type loop struct {
	e       *Engine
	m       *Model
	x       *executor
	now     func() time.Time // the clock: time.Now, or a test's
	nBatch  int
	nVocab  int
	kvTotal int
	kvUsed  int
	split   bool // one KV stream per sequence (not UnifiedKV)

	freeSlots []int32     // free slots, highest first: the lowest is taken next
	bySlot    []*sequence // slot -> its sequence, nil if free
	running   []*sequence
	waiting   []task
	scoring   []*scoreTask // admitted score tasks with variants left to start
	nextNo    uint64
	steps     uint64

	// the step being planned, what its run gave back, and what to do with
	// the results that are not a step's outputs
	p      plan
	res    result
	outs   []output
	onSave []func(savedState) // one per kvSave of the plan
	onRead []func(lp []float32, top []TokenLogprob)
	embeds []*sequence // one per embed read of the plan

	prefillCap int // shrinks after a KV-full decode, recovers after success

	// prompt-prefix cache (prefix.go)
	pc struct {
		on    bool
		block int
		host  *prefixcache.Host
	}
	kept   []*kept // by slot: cached cells of free and pinned slots
	clock  uint64
	pstats prefixCounters

	// latency tiers (tier.go)
	topPrio  int    // the highest tier priority: aging stops there
	requeued []task // preempted during admission, waiting from the next
	tstats   [NumTiers]tierCounters
	lastAged time.Time
	stepTime stepModel           // measured step durations, for chunkCap
	stepTop  int                 // the highest priority that computed in the last step (aging)
	cuts     uint64              // steps cut short for a higher-priority arrival
	lastSeen [NumTiers]time.Time // when a request of each tier last arrived
}

func (e *Engine) run(ready chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(e.done)

	l, err := e.newLoop()
	if err != nil {
		e.take(true)
		ready <- err
		return
	}
	ready <- nil
	defer l.free()
	l.serve()
}

func (e *Engine) newLoop() (*loop, error) {
	x, err := newLlamaExec(e)
	if err != nil {
		return nil, err
	}
	l := newLoop(e, x, x.kvCells)
	if err := l.prefillPinned(e.opts.PrefixCache.Pinned); err != nil {
		l.free()
		return nil, err
	}
	o := e.opts
	e.log.Info("engine ready", "provider", Provider, "parallel", o.Parallel, "context", o.Context,
		"kv_cells", l.kvTotal, "batch", o.Batch, "threads", o.Threads, "unified_kv", o.UnifiedKV,
		"prefix_cache", l.pc.on, "host_tier_bytes", o.PrefixCache.HostBytes, "pinned", len(o.PrefixCache.Pinned))
	return l, nil
}

// newLoop makes the scheduler for e's options on device d, whose
// context holds kvCells cells.
func newLoop(e *Engine, d device, kvCells int) *loop {
	o := e.opts
	x := newExecutor(d, e.model.info.VocabSize, e.now)
	e.cutAbove.Store(math.MaxInt64)
	e.mu.Lock()
	e.cut = x.cut
	e.mu.Unlock()
	now := e.now
	slots := o.Parallel + len(o.PrefixCache.Pinned)
	l := &loop{
		e:          e,
		m:          e.model,
		x:          x,
		now:        now,
		nBatch:     o.Batch,
		nVocab:     e.model.info.VocabSize,
		kvTotal:    kvCells,
		split:      !o.UnifiedKV,
		prefillCap: o.Batch,
	}
	n := o.Batch
	l.p.batch = batch{tok: make([]Token, 0, n), pos: make([]int32, 0, n), seq: make([]int32, 0, n), logits: make([]bool, 0, n)}
	for i := o.Parallel - 1; i >= 0; i-- {
		l.freeSlots = append(l.freeSlots, int32(i))
	}
	l.bySlot = make([]*sequence, slots)
	l.kept = make([]*kept, slots)
	l.topPrio = o.Tiers[0].Priority
	for _, tp := range o.Tiers {
		l.topPrio = max(l.topPrio, tp.Priority)
	}
	l.lastAged = now()
	l.pc.on = !o.PrefixCache.Disabled
	l.pc.block = o.PrefixCache.BlockTokens
	l.pc.host = e.host
	return l
}

// free releases the executor and its samplers.
func (l *loop) free() {
	l.x.close()
}

func (l *loop) serve() {
	e := l.e
	for {
		select {
		case <-e.stop:
			l.shutdown()
			return
		default:
		}
		l.intake(e.take(false))
		stepped := l.iterate()
		if stepped || len(l.running) > 0 || len(l.scoring) > 0 {
			continue
		}
		// Nothing was computed, nothing runs, and nothing waiting could
		// start: sleep until a request arrives or one is cancelled (both
		// wake the loop), or a waiting one's queue timeout falls.
		var timeout <-chan time.Time
		var timer *time.Timer
		if d := l.nextDeadline(); !d.IsZero() {
			timer = time.NewTimer(time.Until(d))
			timeout = timer.C
		}
		select {
		case <-e.wake:
		case <-timeout:
		case <-e.stop:
			l.shutdown()
			return
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// iterate is one turn of the loop after intake: drop what was cancelled
// or timed out, admit, compute a step, age. It reports whether it
// decoded anything.
func (l *loop) iterate() bool {
	l.dropCancelled()
	l.expired(l.now())
	l.admit()
	stepped := l.step()
	l.age(l.now())
	if len(l.running) == 0 && l.p.pending() {
		l.flush() // idle: free what ended now, not at the next request
	}
	return stepped
}

// flush runs the plan's KV operations and frees without a batch.
func (l *loop) flush() {
	l.p.reset()
	l.run()
}

// run carries the plan out and takes back what is not a step's output:
// spilled states (to the host tier) and failed restores (their sequences
// start over). It leaves the step's outputs in l.res.
func (l *loop) run() {
	l.x.run(&l.p, &l.res)
	l.p.applied()
	for i, f := range l.onSave {
		f(l.res.saved[i])
	}
	clear(l.onSave)
	l.onSave = l.onSave[:0]
	for _, f := range l.res.restored {
		l.e.log.Warn("restoring a prefix from the host tier failed; computing it", "err", f.err)
		if sq := l.bySlot[f.slot]; sq != nil {
			// Counted as a hit from the host tier when it was admitted.
			l.pstats.hits--
			l.pstats.hostHits--
			l.pstats.reused -= uint64(sq.fed)
			sq.fed = 0
			if sq.gen != nil && sq.gen.resume == nil {
				sq.gen.cached = 0
			}
		}
	}
}

func (l *loop) intake(items []any) {
	for _, it := range items {
		switch v := it.(type) {
		case chan Stats:
			v <- l.stats()
		case task:
			b := v.base()
			b.arrival = l.steps
			l.lastSeen[b.tier] = l.now()
			b.order = l.nextNo
			l.nextNo++
			l.waiting = append(l.waiting, v)
		}
	}
}

// sortWaiting orders the queue: highest effective priority first, then
// arrival.
func (l *loop) sortWaiting() {
	slices.SortFunc(l.waiting, func(a, b task) int {
		if d := l.prio(b.base()) - l.prio(a.base()); d != 0 {
			return d
		}
		return cmpOrder(a.base().order, b.base().order)
	})
}

func cmpOrder(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (l *loop) stats() Stats {
	s := Stats{
		Waiting:         len(l.waiting),
		Sequences:       len(l.running),
		Slots:           l.e.opts.Parallel,
		KVCellsReserved: l.kvUsed,
		KVCells:         l.kvTotal,
		Steps:           l.steps,
		CutSteps:        l.cuts,
		Tiers:           l.tierStats(),
	}
	tasks := map[task]bool{}
	for _, sq := range l.running {
		tasks[sq.owner()] = true
	}
	s.Running = len(tasks)
	if l.p.pending() {
		l.flush()
	}
	for slot := range l.bySlot {
		if l.x.posMax(int32(slot)) >= 0 {
			s.SlotsWithMemory++
		}
	}
	s.Prefix = l.prefixStats()
	s.Work = l.work()
	return s
}

// work lists the tasks the loop holds for Stats.Work.
func (l *loop) work() []Work {
	now := l.now()
	var out []Work
	index := map[task]int{}
	describe := func(t task, state string) Work {
		b := t.base()
		w := Work{State: state, Tier: b.tier, Tenant: b.tenant, Age: now.Sub(b.submitted)}
		switch t := t.(type) {
		case *genTask:
			w.ID, w.Kind, w.PromptTokens = t.req.ID, "generate", len(t.req.Prompt)
			w.CachedTokens, w.Generated, w.Preemptions = t.cached, t.generated, t.preemptions
		case *scoreTask:
			w.ID, w.Kind = t.req.ID, "score"
			for _, v := range t.req.Variants {
				w.PromptTokens = max(w.PromptTokens, len(v))
			}
		case *embedTask:
			w.ID, w.Kind = t.req.ID, "embed"
			for _, v := range t.req.Inputs {
				w.PromptTokens += len(v)
			}
		}
		return w
	}
	running := slices.Clone(l.running)
	slices.SortFunc(running, func(a, b *sequence) int { return int(a.slot) - int(b.slot) })
	for _, sq := range running {
		t := sq.owner()
		i, ok := index[t]
		if !ok {
			i = len(out)
			index[t] = i
			out = append(out, describe(t, "running"))
		}
		out[i].Slots = append(out[i].Slots, int(sq.slot))
	}
	for _, t := range l.waiting {
		if _, ok := index[t]; !ok {
			out = append(out, describe(t, "waiting"))
		}
	}
	return out
}

// shutdown ends every task with ErrStopped.
func (l *loop) shutdown() {
	for len(l.running) > 0 {
		l.end(l.running[0].owner(), ErrStopped)
	}
	for _, t := range slices.Clone(l.scoring) {
		l.finishScore(t, ErrStopped)
	}
	for _, it := range l.e.take(true) {
		if t, ok := it.(task); ok {
			l.waiting = append(l.waiting, t)
		}
	}
	for _, t := range l.waiting {
		l.e.queued(t.base().tier, -1)
		l.end(t, ErrStopped)
	}
	l.waiting = nil
}

// end ends a task with err, freeing whatever it holds.
func (l *loop) end(t task, err error) {
	switch t := t.(type) {
	case *genTask:
		l.finishGen(t, "", err)
	case *scoreTask:
		l.finishScore(t, err)
	case *embedTask:
		l.finishEmbed(t, err)
	}
}

// dropCancelled ends tasks whose context is done, freeing their sequences.
func (l *loop) dropCancelled() {
	for i := 0; i < len(l.running); {
		t := l.running[i].owner()
		err := t.base().ctx.Err()
		if err == nil {
			i++
			continue
		}
		// Ending removes the task's sequences; rescan from the start.
		l.end(t, err)
		i = 0
	}
	for _, t := range slices.Clone(l.scoring) {
		if err := t.ctx.Err(); err != nil {
			l.finishScore(t, err)
		}
	}

	l.waiting = slices.DeleteFunc(l.waiting, func(t task) bool {
		err := t.base().ctx.Err()
		if err == nil {
			return false
		}
		l.e.queued(t.base().tier, -1)
		l.end(t, err)
		return true
	})
}

// admission is the outcome of trying to admit a task.
type admission int

const (
	admitted admission = iota
	noRoom             // not enough slots or cells: later tasks wait too
	later              // its prefix is being computed: later tasks may go first
)

// admit starts variants of admitted score tasks, then waiting tasks in
// priority order, while slots and KV cells last, preempting lower tiers
// where their policies allow (tier.go). Admission is FIFO within the
// order: a task that does not fit stops it, so big requests are not
// starved by small ones. Only a task waiting for a prefix that another is
// computing, or whose tier runs all it may, lets the next ones pass.
func (l *loop) admit() {
	for _, t := range l.scoring {
		l.startNodes(t)
	}

	l.sortWaiting()
	stay := l.waiting[:0]
	blocked := false
	for _, t := range l.waiting {
		if blocked || l.tierFull(t.base()) {
			stay = append(stay, t)
			continue
		}
		var r admission
		switch t := t.(type) {
		case *genTask:
			r = l.admitGen(t)
		case *scoreTask:
			r = l.admitScore(t)
		case *embedTask:
			r = l.admitEmbed(t)
		}
		switch r {
		case admitted:
			l.e.queued(t.base().tier, -1)
		case noRoom:
			blocked = true
			stay = append(stay, t)
		case later:
			stay = append(stay, t)
		}
	}
	clear(l.waiting[len(stay):])
	l.waiting = append(stay, l.requeued...)
	clear(l.requeued)
	l.requeued = l.requeued[:0]
}

// freeSlot makes sure a slot is free for a task of priority p, preempting
// a lower tier if need be.
func (l *loop) freeSlot(p, slots int) bool {
	for len(l.freeSlots) < slots {
		if !l.preemptFor(p) {
			return false
		}
	}
	return true
}

func (l *loop) releaseSlot(s int32) {
	i, _ := slices.BinarySearchFunc(l.freeSlots, s, func(a, b int32) int { return int(b) - int(a) })
	l.freeSlots = slices.Insert(l.freeSlots, i, s)
}

// addSeq registers a sequence, keeping running sorted by tier priority
// (highest first), then arrival, then (among a task's sequences) the
// order they started in.
func (l *loop) addSeq(sq *sequence) {
	l.kvUsed += sq.reserve
	l.bySlot[sq.slot] = sq
	i := sort.Search(len(l.running), func(i int) bool {
		r := l.running[i]
		if d := l.policy(sq.tier).Priority - l.policy(r.tier).Priority; d != 0 {
			return d > 0
		}
		return r.order > sq.order
	})
	l.running = slices.Insert(l.running, i, sq)
}

// removeSeq ends a sequence, freeing its slot and reservation. With
// keepCells (and the prefix cache on) its cells stay in the slot for
// later sequences to reuse; otherwise they are freed.
func (l *loop) removeSeq(sq *sequence, keepCells bool) {
	i := slices.Index(l.running, sq)
	if i < 0 {
		return
	}
	l.running = slices.Delete(l.running, i, i+1)
	l.kvUsed -= sq.reserve
	if keepCells && l.pc.on && sq.fed > 0 {
		l.keep(sq)
	} else {
		l.p.remove(sq.slot, -1, -1)
	}
	l.bySlot[sq.slot] = nil
	l.releaseSlot(sq.slot)
}

func (l *loop) admitGen(t *genTask) admission {
	prompt := t.tokens()
	need := len(prompt) + t.req.MaxTokens - t.generated
	limit := len(prompt) - 1
	if t.req.NoCache {
		limit = 0
	}
	if t.resume != nil && l.pc.on && limit > 0 && !t.lookedUp {
		// A preempted generation: its own cells are kept, or were spilled
		// to the host tier when its slot was taken. Look them up here, on
		// the loop: it is rare, and a lookup is a map probe (plus a
		// decompression with zstd on).
		t.lookedUp = true
		if t.chain.Block() != l.pc.block {
			t.chain = prefixcache.NewChain(l.pc.block)
		}
		t.chain.Extend(prompt)
		if l.pc.host != nil {
			t.hit = l.pc.host.Lookup(t.tenant, &t.chain, prompt, limit)
		}
	}
	src, wait := l.findSource(prompt, &t.chain, t.tenant, limit, t.hit)
	if wait {
		l.pstats.waits++
		return later
	}
	// Preempt for a slot, then for cells; a victim may have been the
	// source (it is then a kept slot), so look again after each.
	p := l.prio(&t.taskBase)
	for len(l.freeSlots) == 0 || !l.room(need, src) {
		if !l.preemptFor(p) {
			return noRoom
		}
		src, _ = l.findSource(prompt, &t.chain, t.tenant, limit, t.hit)
	}
	slot, fed := l.open(src)
	t.hit = nil
	if t.resume == nil {
		t.admitted, t.waitSteps = l.now(), l.steps-t.arrival
		t.cached = fed
		t.stream.admit()
	}
	tokens := make([]Token, len(prompt), len(prompt)+t.req.MaxTokens-t.generated)
	copy(tokens, prompt)
	t.resume = nil
	t.seq = &sequence{slot: slot, tokens: tokens, fed: fed, reserve: need, tier: t.tier, order: t.order, gen: t, variant: -1,
		tenant: t.tenant, chain: t.chain}
	l.addSeq(t.seq)
	return admitted
}

// step builds one batch, decodes it and handles its outputs. It reports
// whether it decoded anything.
func (l *loop) step() bool {
	l.stepTop = math.MinInt
	if len(l.running) == 0 {
		return false
	}
	n := 0
	l.outs = l.outs[:0]
	l.p.reset()
	add := func(sq *sequence, k int) {
		for j := 0; j < k; j++ {
			i := sq.fed + j
			logits := sq.wantsLogits(i)
			if logits {
				l.outs = append(l.outs, output{seq: sq, index: i, batch: int32(n)})
			}
			l.p.batch.add(sq.tokens[i], i, sq.slot, logits)
			n++
		}
		sq.inBatch = k
	}
	// While a prompt is prefilled, preemptible sequences of lower priority
	// sit the step out, so that it is no longer than on an idle engine.
	// Then decode tokens, one per generating sequence in slot order (all of
	// them go in, so priority does not matter here, and split KV streams
	// are viewed fastest in order), then prompt chunks in priority order
	// with the rest of the budget: the first whole, the others within
	// prefillBound, lower tiers' chunks cut to keep the step short for the
	// tiers above (chunkCap).
	top := math.MinInt // the highest tier priority with a prompt to prefill
	for _, sq := range l.running {
		sq.inBatch, sq.paused = 0, false
		if sq.remaining() > 1 {
			top = max(top, l.policy(sq.tier).Priority)
		}
	}
	for _, sq := range l.running {
		if l.preemptible(sq, top) {
			sq.paused = true
			l.tstats[sq.tier].paused++
		}
	}
	for _, sq := range l.bySlot {
		if sq != nil && !sq.paused && sq.remaining() == 1 {
			add(sq, 1)
		}
	}
	budget := l.nBatch
	maxRows := l.prefillBound(n)
	prefill, capped := 0, false
	for _, sq := range l.running {
		if sq.inBatch > 0 || sq.paused || sq.remaining() == 0 {
			continue
		}
		if sq.embed != nil {
			// An input is fed whole or not at all (embed.go); one that
			// does not fit goes first in the next step, as this step's
			// inputs all end in it.
			if k := sq.remaining(); k <= budget-n {
				add(sq, k)
				prefill += k
			}
			continue
		}
		k := min(sq.remaining(), budget-n, l.prefillCap-prefill)
		if prefill > 0 {
			k = min(k, maxRows-n) // the first chunk is exempt (prefillBound)
		}
		if k <= 0 {
			break // the budget is spent
		}
		if c, ok := l.chunkCap(l.prio(sq.owner().base()), n, capped); ok {
			k, capped = min(k, c), true
		}
		if k <= 0 {
			continue // an aged sequence further on may be uncapped
		}
		add(sq, k)
		prefill += k
	}
	if n == 0 {
		return false
	}
	l.stepTop = l.computingTop()
	cutAbove := l.cutAbove()
	l.x.armCut()
	l.e.cutAbove.Store(int64(cutAbove))
	if cutAbove < math.MaxInt && l.e.outranked(cutAbove) {
		l.x.cut() // arrived since intake: no need to start
	}
	l.planOutputs()
	l.run()
	rc := l.res.rc
	l.e.cutAbove.Store(math.MaxInt64)
	if rc == rcRestoreFailed {
		l.dropReads()
		return true // planned again from the sequences' new state
	}
	l.steps++
	if rc == 2 {
		l.dropReads()
		l.stepCut()
		return true
	}
	if rc != 0 {
		l.dropReads()
		l.decodeFailed(rc, prefill)
		return true
	}
	l.stepTime.add(n, l.res.took)
	l.prefillCap = min(l.nBatch, l.prefillCap*2)
	for _, sq := range l.running {
		sq.fed += sq.inBatch
	}
	l.handleOutputs()
	return true
}

// cutAbove is the priority above which an arriving request may cut the
// step: the step's highest if every sequence in it gives way to higher
// priorities (a Preemptible tier); else none (MaxInt).
func (l *loop) cutAbove() int {
	for _, sq := range l.running {
		if sq.inBatch > 0 && !l.policy(sq.tier).Preemptible {
			return math.MaxInt
		}
	}
	return l.stepTop
}

// stepCut undoes a step cut short for a higher-priority arrival: llama.cpp
// removed the cells of the ubatch it stopped in, those of the ubatches
// before stay; dropping everything the step fed leaves each sequence as
// it was, to be fed again.
func (l *loop) stepCut() {
	for _, sq := range l.running {
		if sq.inBatch > 0 {
			l.p.remove(sq.slot, sq.fed, -1)
			sq.inBatch = 0
		}
	}
	l.cuts++
}

// prefillShare bounds how much longer than its decode part a step may
// grow for prompt chunks beyond its first (prefillBound).
const prefillShare = 2

// prefillBound is how many rows a step with n decode rows may hold once
// it has one prompt chunk: as many as keep it within prefillShare times
// the decode part's duration by the step-time model (MaxInt before any
// step was measured). The policy, in full: every decoding sequence gets
// its token; the first prompt chunk, in priority order, gets what the
// batch and its tier's chunkCap allow; further chunks only what fits in
// that bound. So a lone prompt is computed in as few steps as the batch
// allows (an idle server's time to first token is untouched), while
// prompts that arrive together are started in turn over short steps
// instead of in one long step that every one of them, and every decoding
// stream, waits for: each gets its first token sooner on average, and
// clients in a closed loop do not stay in lockstep (simulated in
// TestSchedPrefillBound, measured in bench/RESULTS.md). On a CPU a prompt
// row costs about what a decode row costs, so a step takes one or two
// short prompts beside the decodes; on a GPU a row costs little beside
// a step's fixed cost and hundreds fit.
func (l *loop) prefillBound(n int) int {
	base, per, ok := l.stepTime.fit()
	if !ok || per <= 0 {
		return math.MaxInt
	}
	rows, _ := l.stepTime.tokensWithin(time.Duration(prefillShare * (base + per*float64(n)) * float64(time.Second)))
	return rows
}

// computingTop is the highest tier priority of the sequences in the
// step's batch (math.MinInt for none).
func (l *loop) computingTop() int {
	top := math.MinInt
	for _, sq := range l.running {
		if sq.inBatch > 0 {
			top = max(top, l.policy(sq.tier).Priority)
		}
	}
	return top
}

// decodeFailed recovers from a failed llama_decode without losing the
// other sequences.
func (l *loop) decodeFailed(rc, prefill int) {
	if rc == 1 && prefill > 1 {
		// No KV slot for the batch: the cache is unchanged; retry with
		// smaller prompt chunks.
		l.prefillCap = max(1, prefill/2)
		l.e.log.Warn("llama_decode found no KV slot; shrinking prompt chunks", "prefill_cap", l.prefillCap)
		return
	}
	var err error
	if rc == 1 {
		err = ErrKVExhausted
	} else {
		err = fmt.Errorf("llama_decode failed with code %d", rc)
	}
	l.e.log.Error("decode failed; ending the sequences of the batch", "code", rc)
	// The failed ubatches may have left cells behind: end every task in the
	// batch, which removes all of their cells.
	var victims []task
	for _, sq := range l.running {
		if sq.inBatch > 0 {
			victims = append(victims, sq.owner())
		}
	}
	for _, t := range victims {
		l.end(t, err)
	}
}

// planOutputs asks the plan for what the step's outputs need: a token
// for every generation that feeds its last token (sampled together in one
// device call), the reads of score rows, the pooled vectors of inputs fed
// whole.
func (l *loop) planOutputs() {
	for _, o := range l.outs {
		switch {
		case o.seq.gen != nil:
			t := o.seq.gen
			t.sampled = true
			l.p.samples = append(l.p.samples, sampleRow{row: o.batch, key: t.order, sampling: &t.req.Sampling,
				logprobs: t.req.Logprobs, top: t.req.TopLogprobs})
		case o.seq.score != nil:
			l.scoreOutput(o)
		}
	}
	l.planEmbeds()
}

// dropReads forgets what the step's outputs were to be read for: the
// step computed none.
func (l *loop) dropReads() {
	clear(l.onRead)
	clear(l.embeds)
	l.onRead, l.embeds = l.onRead[:0], l.embeds[:0]
}

// read plans a row's log-probabilities of targets (and top k), or its
// whole log-distribution into dist, and what to do with them.
func (l *loop) read(r readRow, then func(lp []float32, top []TokenLogprob)) {
	l.p.reads = append(l.p.reads, r)
	l.onRead = append(l.onRead, then)
}

// handleOutputs takes the step's results in: sampled tokens into their
// generations, score reads into their results, pooled vectors into
// embedding tasks, then ends the score tasks whose variants are done.
func (l *loop) handleOutputs() {
	i := 0
	for _, o := range l.outs {
		if o.seq.gen != nil {
			l.accept(o, l.res.tokens[i], l.res.lp[i], l.res.top[i])
			i++
		}
	}
	for i, f := range l.onRead {
		f(l.res.readLP[i], l.res.readTop[i])
	}
	l.embedOutputs()
	l.dropReads()
	// Count the variants whose leaf was computed in this step; sequences
	// that finished a node move on in the next admission (startNodes).
	for i := 0; i < len(l.running); {
		sq := l.running[i]
		i++
		if sq.score == nil || sq.variant < 0 || sq.inBatch == 0 || sq.remaining() > 0 {
			continue
		}
		t := sq.score
		if t.finished++; t.finished == len(t.req.Variants) {
			l.finishScore(t, nil)
			i = 0 // it may have removed sequences before i
		}
	}
}

// accept takes a sampled token, with its log-probability and the top
// tokens when the request asked for them, into a generation.
func (l *loop) accept(o output, tok Token, lp float32, top []TokenLogprob) {
	t := o.seq.gen
	now := l.now()
	if t.generated == 0 {
		t.firstTok = now
	}
	if tok < 0 || int(tok) >= l.nVocab {
		err := errors.New("sampler returned no valid token")
		if t.req.Sampling.Grammar != "" {
			err = ErrGrammarStuck
		}
		l.finishGen(t, "", err)
		return
	}
	t.generated++
	if l.m.eog[tok] && !t.req.IgnoreEOS {
		l.finishGen(t, FinishStop, nil)
		return
	}
	ev := Event{Token: tok}
	if t.req.Logprobs || t.req.TopLogprobs > 0 {
		ev.Logprob = &TokenLogprob{Token: tok, Logprob: lp}
		ev.TopLogprobs = top
	}
	var piece []byte
	if !l.m.IsSpecial(tok) || t.req.KeepSpecial {
		piece = l.m.pieces[tok]
	}
	text, stopped := t.asm.push(piece)
	ev.Text = text
	t.stream.push(ev)
	switch {
	case stopped:
		t.asm = textAssembler{} // drop held text: it is part of the stop string
		l.finishGen(t, FinishStop, nil)
	case t.generated >= t.req.MaxTokens:
		l.finishGen(t, FinishLength, nil)
	default:
		o.seq.tokens = append(o.seq.tokens, tok)
	}
}

// scoreOutput plans the reads of one output row of a score task and
// where their results go.
func (l *loop) scoreOutput(o output) {
	t := o.seq.score
	req := &t.req
	sq := o.seq
	if sq.variant < 0 {
		// A node shared by several variants: position scores for all of
		// them; its last row predicts each child's first token.
		n := sq.node
		if o.index < n.end-1 {
			l.read(readRow{row: o.batch, targets: []Token{sq.tokens[o.index+1]}}, func(lp []float32, _ []TokenLogprob) {
				for _, v := range t.sorted[n.lo:n.hi] {
					t.result.Variants[v].Positions[o.index] = lp[0]
				}
			})
			return
		}
		next := make([]Token, len(n.children))
		for i, c := range n.children {
			next[i] = req.Variants[c.rep][n.end]
		}
		l.read(readRow{row: o.batch, targets: next}, func(lp []float32, _ []TokenLogprob) {
			for i, c := range n.children {
				for _, v := range t.sorted[c.lo:c.hi] {
					t.result.Variants[v].Positions[o.index] = lp[i]
				}
			}
		})
		return
	}
	vs := &t.result.Variants[sq.variant]
	if o.index < len(sq.tokens)-1 {
		if req.Positions {
			l.read(readRow{row: o.batch, targets: []Token{sq.tokens[o.index+1]}}, func(lp []float32, _ []TokenLogprob) {
				vs.Positions[o.index] = lp[0]
			})
		}
		if k := o.index - req.DistributionsFrom; req.Distributions && k >= 0 {
			row := make([]float32, l.nVocab)
			l.read(readRow{row: o.batch, dist: row}, func([]float32, []TokenLogprob) { vs.Dists[k] = row })
		}
		return
	}
	l.read(readRow{row: o.batch, targets: req.Targets, top: req.TopK}, func(lp []float32, top []TokenLogprob) {
		vs.Targets, vs.Top = lp, top
	})
}

// finishGen ends a generation: its final event, then its resources.
func (l *loop) finishGen(t *genTask, reason FinishReason, err error) {
	if t.seq != nil {
		l.removeSeq(t.seq, reusable(err))
		t.seq = nil
	}
	if t.sampled {
		l.p.free = append(l.p.free, t.order)
		t.sampled = false
	}
	t.ended()
	now := l.now()
	ev := Event{Token: -1, Done: true, Err: err, Preemptions: t.preemptions,
		Usage: Usage{PromptTokens: len(t.req.Prompt), CompletionTokens: t.generated, CachedTokens: t.cached}}
	if err == nil {
		ev.Finish = reason
		ev.Text = t.asm.flush()
	}
	if !t.admitted.IsZero() {
		l.e.served(t.tier, now.Sub(t.admitted))
		ev.Timings.Queue, ev.Timings.QueueSteps = t.admitted.Sub(t.submitted), t.waitSteps
		if !t.firstTok.IsZero() {
			ev.Timings.Prefill = t.firstTok.Sub(t.admitted)
			ev.Timings.Decode = now.Sub(t.firstTok)
			ev.Timings.FirstByte = t.firstTok.Sub(t.submitted)
		}
	}
	t.stream.push(ev)
	t.stream.cancel() // release the derived context
}

// reusable says whether the cells of a sequence that ended with err hold
// what they should: after a failed decode or at shutdown they may not.
func reusable(err error) bool {
	return err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// finishScore ends a score task and frees all of its sequences.
func (l *loop) finishScore(t *scoreTask, err error) {
	select {
	case <-t.done:
		return
	default:
	}
	for i := 0; i < len(l.running); {
		if sq := l.running[i]; sq.score == t {
			l.removeSeq(sq, reusable(err))
			continue
		}
		i++
	}
	l.kvUsed -= t.cells // the nodes' reservations; kept cells count apart
	t.cells = 0
	t.ended()
	l.scoring = slices.DeleteFunc(l.scoring, func(x *scoreTask) bool { return x == t })
	if err != nil {
		t.err, t.result = err, nil
	} else {
		now := l.now()
		l.e.served(t.tier, now.Sub(t.admitted))
		t.result.Timings = Timings{Queue: t.admitted.Sub(t.submitted), Prefill: now.Sub(t.admitted), FirstByte: now.Sub(t.submitted),
			QueueSteps: t.waitSteps}
	}
	close(t.done)
}
