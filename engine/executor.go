package engine

// The engine's loop is two halves owned by one goroutine. The scheduler
// (loop.go, prefix.go, tier.go, scoretree.go: pure Go) decides what each
// step computes: which requests to admit, which KV cells to reuse, copy,
// spill or drop, which tokens go into the batch and which rows need
// logits. The executor carries those decisions out on a llama.cpp context
// (llama_exec.go, the only cgo the loop calls). Tests drive the scheduler
// with a fake executor and a fake clock (fake_exec_test.go), so that
// admission, tiers, preemption and prefix reuse are checked step by step
// without decoding a model or racing timers.

// executor runs a llama.cpp context for the scheduler. Slots are sequence
// ids; positions run from 0; a negative bound is open (llama.cpp's -1).
type executor interface {
	// seqRemove drops slot's cells at positions [p0, p1).
	seqRemove(slot int32, p0, p1 int)
	// seqCopy makes dst hold src's cells at positions [p0, p1) as well.
	seqCopy(src, dst int32, p0, p1 int)
	// seqPosMax is the last position slot holds, or -1.
	seqPosMax(slot int32) int
	// saveSeq serializes slot's cells (for the host tier); nil if it holds none.
	saveSeq(slot int32) ([]byte, error)
	// restoreSeq fills the empty slot from saveSeq's bytes.
	restoreSeq(slot int32, state []byte) error

	// decode computes b. Its result is llama_decode's: 0 done, 1 no KV
	// room (nothing changed), 2 cut short by cut (cells of the batch may
	// remain), other values failures.
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
	// last decode, into out (the model's embedding length); false if the
	// decode pooled none for it.
	embedding(slot int32, out []float32) bool

	// newSampler makes a sampler for s; nil for greedy decoding, which
	// needs none.
	newSampler(s *Sampling) sampler
	freeSampler(sampler)

	// close frees the context; the executor is not used after.
	close()
}

// sampler is an executor's sampling state for one generation, opaque to
// the scheduler.
type sampler any

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
