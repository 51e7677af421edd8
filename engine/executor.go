package engine

import (
	"slices"
	"time"
)

// The engine's loop is two halves owned by one goroutine. The scheduler
// (loop.go, prefix.go, tier.go, scoretree.go, embed.go: pure Go) decides
// what each step computes and writes it down as a plan: the KV operations
// its admissions, preemptions and endings call for (copy, trim, spill,
// restore), the batch rows with their logits flags, what to sample and
// read back, and the samplers of ended generations to free. The executor
// carries a plan out in one call, in that order, and gives back the
// sampled tokens, log-probabilities, pooled vectors and spilled states
// (run). It owns the samplers and drives a device: a llama.cpp context
// (llama_exec.go, the only cgo the loop reaches) or, in tests, a fake
// one (fake_exec_test.go), so that admission, tiers, preemption and
// prefix reuse are checked step by step without decoding a model or
// racing timers.

// plan is one step's work for the executor, in the order run carries it
// out. KV operations and frees gather between runs; a plan without rows
// only applies them (loop.flush).
type plan struct {
	ops     []kvOp
	free    []uint64 // generations whose samplers are no longer needed
	batch   batch
	samples []sampleRow
	reads   []readRow
	embeds  []embedRead
}

type kvKind uint8

const (
	kvRemove  kvKind = iota // drop slot's cells at positions [p0, p1)
	kvCopy                  // make slot hold src's cells at [p0, p1) as well
	kvSave                  // serialize slot's cells (result.saved)
	kvRestore               // fill the empty slot from state
)

// kvOp is one KV operation; positions run from 0 and a negative bound
// is open (llama.cpp's -1).
type kvOp struct {
	kind   kvKind
	slot   int32
	src    int32
	p0, p1 int
	state  []byte
}

// sampleRow asks for a token from the logits of a batch row, with the
// generation's sampler (made from sampling the first time its key is
// seen; nil sampling or greedy settings need none), and optionally the
// sampled token's log-probability and the top most likely tokens.
type sampleRow struct {
	row      int32
	key      uint64
	sampling *Sampling
	logprobs bool
	top      int
}

// readRow asks for a row's log-probabilities of targets and its top
// most likely tokens, or, with dist set, its whole log-distribution
// written into dist.
type readRow struct {
	row     int32
	targets []Token
	top     int
	dist    []float32
}

// embedRead asks for the pooled vector of slot's sequence, into out.
type embedRead struct {
	slot int32
	out  []float32
}

// remove plans dropping slot's cells at positions [p0, p1).
func (p *plan) remove(slot int32, p0, p1 int) {
	p.ops = append(p.ops, kvOp{kind: kvRemove, slot: slot, p0: p0, p1: p1})
}

// copySeq plans making dst hold src's cells at [p0, p1) as well.
func (p *plan) copySeq(src, dst int32, p0, p1 int) {
	p.ops = append(p.ops, kvOp{kind: kvCopy, slot: dst, src: src, p0: p0, p1: p1})
}

// save plans serializing slot's cells; the state is result.saved's next.
func (p *plan) save(slot int32) {
	p.ops = append(p.ops, kvOp{kind: kvSave, slot: slot})
}

// restore plans filling the empty slot from a saved state.
func (p *plan) restore(slot int32, state []byte) {
	p.ops = append(p.ops, kvOp{kind: kvRestore, slot: slot, state: state})
}

// pending says whether the plan holds work that must not wait for rows.
func (p *plan) pending() bool { return len(p.ops) > 0 || len(p.free) > 0 }

// applied empties the plan of what a run carried out for good.
func (p *plan) applied() {
	clear(p.ops) // drop restored states
	p.ops, p.free = p.ops[:0], p.free[:0]
}

// reset empties the step part of the plan for the next step.
func (p *plan) reset() {
	p.batch.reset()
	clear(p.samples)
	clear(p.reads)
	clear(p.embeds)
	p.samples, p.reads, p.embeds = p.samples[:0], p.reads[:0], p.embeds[:0]
}

// result is what a run gives back.
type result struct {
	// rc is llama_decode's: 0 done, 1 no KV room (nothing changed), 2 cut
	// short (cells of the batch may remain), other values failures; or
	// rcRestoreFailed when a restore failed and nothing was decoded.
	rc       int
	took     time.Duration // the decode's
	restored []restoreFailure
	saved    []savedState // one per kvSave, in order
	tokens   []Token      // one per sample row: the sampled token (negative: none allowed)
	lp       []float32    // one per sample row asking for logprobs
	top      [][]TokenLogprob
	readLP   [][]float32 // one per read row
	readTop  [][]TokenLogprob
	embedOK  []bool // one per embed read: whether the decode pooled one
}

// rcRestoreFailed is run's result when a restore failed: its slot's cells
// are dropped and the batch was not decoded, for the scheduler to plan
// the step again.
const rcRestoreFailed = -1000

type restoreFailure struct {
	slot int32
	err  error
}

type savedState struct {
	state []byte // nil: the slot held nothing
	err   error
}

// device is what an executor drives: one llama.cpp context, or a fake.
type device interface {
	seqRemove(slot int32, p0, p1 int)
	seqCopy(src, dst int32, p0, p1 int)
	// seqPosMax is the last position slot holds, or -1.
	seqPosMax(slot int32) int
	// saveSeq serializes slot's cells; nil if it holds none.
	saveSeq(slot int32) ([]byte, error)
	// restoreSeq fills the empty slot from saveSeq's bytes.
	restoreSeq(slot int32, state []byte) error
	// decode computes b (result.rc).
	decode(b *batch) int
	// armCut clears a cut asked for before; cut, from any goroutine, asks
	// the decode under way (or the next) to stop as soon as it can.
	armCut()
	cut()
	// sample draws one token for each of rows (rows of the last decode),
	// each with its sampler (nil: greedy), into out.
	sample(samplers []sampler, rows []int32, out []Token)
	// logprobs returns the log-probabilities of targets at row, and the
	// k most likely tokens.
	logprobs(row int32, targets []Token, k int) ([]float32, []TokenLogprob)
	// logSoftmax writes row's whole log-distribution into out.
	logSoftmax(row int32, out []float32)
	// embedding writes the pooled embedding of slot's sequence, from the
	// last decode, into out; false if the decode pooled none for it.
	embedding(slot int32, out []float32) bool
	// newSampler makes a sampler for s; nil for greedy decoding.
	newSampler(s *Sampling) sampler
	freeSampler(sampler)
	// close frees the context; the device is not used after.
	close()
}

// sampler is a device's sampling state for one generation, opaque to
// everything but the device.
type sampler any

// executor carries plans out on a device and keeps the generations'
// samplers between steps.
type executor struct {
	d        device
	now      func() time.Time
	nVocab   int
	samplers map[uint64]sampler
	smp      []sampler // scratch of a step's sampling
	rows     []int32
}

func newExecutor(d device, nVocab int, now func() time.Time) *executor {
	return &executor{d: d, now: now, nVocab: nVocab, samplers: map[uint64]sampler{}}
}

// run carries p out: frees, KV operations in order, then (if p has rows
// and every restore succeeded) the decode, the sampling and the reads,
// into r.
func (x *executor) run(p *plan, r *result) {
	r.rc = 0
	r.restored, r.saved = r.restored[:0], r.saved[:0]
	for _, k := range p.free {
		x.freeSampler(k)
	}
	for _, op := range p.ops {
		switch op.kind {
		case kvRemove:
			x.d.seqRemove(op.slot, op.p0, op.p1)
		case kvCopy:
			x.d.seqCopy(op.src, op.slot, op.p0, op.p1)
		case kvSave:
			st, err := x.d.saveSeq(op.slot)
			r.saved = append(r.saved, savedState{st, err})
		case kvRestore:
			if err := x.d.restoreSeq(op.slot, op.state); err != nil {
				x.d.seqRemove(op.slot, -1, -1)
				r.restored = append(r.restored, restoreFailure{op.slot, err})
			}
		}
	}
	if p.batch.len() == 0 {
		return
	}
	if len(r.restored) > 0 {
		r.rc = rcRestoreFailed
		return
	}
	start := x.now()
	r.rc = x.d.decode(&p.batch)
	r.took = x.now().Sub(start)
	if r.rc != 0 {
		return
	}
	x.sample(p, r)
	r.readLP, r.readTop = grow(r.readLP, len(p.reads)), grow(r.readTop, len(p.reads))
	for i, rd := range p.reads {
		if rd.dist != nil {
			x.d.logSoftmax(rd.row, rd.dist)
			r.readLP[i], r.readTop[i] = nil, nil // no step's results left behind
			continue
		}
		r.readLP[i], r.readTop[i] = x.d.logprobs(rd.row, rd.targets, rd.top)
	}
	r.embedOK = grow(r.embedOK, len(p.embeds))
	for i, e := range p.embeds {
		r.embedOK[i] = x.d.embedding(e.slot, e.out)
	}
}

// sample draws every sample row's token in one device call, then the
// log-probabilities asked for.
func (x *executor) sample(p *plan, r *result) {
	n := len(p.samples)
	r.tokens, r.lp, r.top = grow(r.tokens, n), grow(r.lp, n), grow(r.top, n)
	if n == 0 {
		return
	}
	x.smp, x.rows = grow(x.smp, n), grow(x.rows, n)
	for i, s := range p.samples {
		smp, ok := x.samplers[s.key]
		if !ok {
			if s.sampling != nil {
				smp = x.d.newSampler(s.sampling)
			}
			x.samplers[s.key] = smp
		}
		x.smp[i], x.rows[i] = smp, s.row
	}
	x.d.sample(x.smp, x.rows, r.tokens)
	clear(x.smp) // hold no sampler that may be freed
	for i, s := range p.samples {
		r.lp[i], r.top[i] = 0, nil
		if tok := r.tokens[i]; (s.logprobs || s.top > 0) && tok >= 0 && int(tok) < x.nVocab {
			lp, top := x.d.logprobs(s.row, []Token{tok}, s.top)
			r.lp[i], r.top[i] = lp[0], top
		}
	}
}

// posMax is the last position slot holds in the device's memory, or -1:
// for Stats, which checks llama.cpp's view against the scheduler's.
func (x *executor) posMax(slot int32) int { return x.d.seqPosMax(slot) }

func (x *executor) armCut() { x.d.armCut() }
func (x *executor) cut()    { x.d.cut() }

// freeSampler frees the sampler of generation k, if it has one.
func (x *executor) freeSampler(k uint64) {
	if s := x.samplers[k]; s != nil {
		x.d.freeSampler(s)
	}
	delete(x.samplers, k)
}

// close frees the samplers left, then the device.
func (x *executor) close() {
	for k := range x.samplers {
		x.freeSampler(k)
	}
	x.d.close()
}

// grow returns s with length n, reusing its array when it can.
func grow[T any](s []T, n int) []T {
	return slices.Grow(s[:0], n)[:n]
}

// batch is one step's input: row i feeds tok[i] at pos[i] of sequence
// seq[i], and logits[i] says whether its logits are kept.
type batch struct {
	tok    []Token
	pos    []int32
	seq    []int32
	logits []bool
}

// reset empties b for a new step.
func (b *batch) reset() {
	b.tok, b.pos, b.seq, b.logits = b.tok[:0], b.pos[:0], b.seq[:0], b.logits[:0]
}

// add appends a row.
func (b *batch) add(tok Token, pos int, seq int32, logits bool) {
	b.tok = append(b.tok, tok)
	b.pos = append(b.pos, int32(pos))
	b.seq = append(b.seq, seq)
	b.logits = append(b.logits, logits)
}

// len is the number of rows.
func (b *batch) len() int { return len(b.tok) }
