package engine

// #include <stdlib.h>
// #include "helpers.h"
import "C"

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"unsafe"
)

// llamaExec is the device on a llama.cpp context: the loop's only cgo.
type llamaExec struct {
	m      *Model
	ctx    *C.struct_llama_context
	mem    C.llama_memory_t
	pool   *C.struct_ggml_threadpool
	nVocab int
	// kvCells is the context's size in KV cells.
	kvCells int

	// The C batch and views of its arrays.
	cb      C.struct_llama_batch
	bTok    []C.llama_token
	bPos    []C.llama_pos
	bSeq    []*C.llama_seq_id
	bLogits []C.int8_t

	// C scratch for fs_sample_batch.
	cSamplers []*C.struct_llama_sampler
	cGrammars []*C.struct_llama_sampler
	cIdx      []C.int32_t
	cOut      []C.int32_t
	cScratch  unsafe.Pointer

	// cutFlag, in C memory, is read by the compute thread between graph
	// nodes (fs_set_cut).
	cutFlag *C.int32_t
}

// newLlamaExec creates the llama.cpp context for e's options.
func newLlamaExec(e *Engine) (*llamaExec, error) {
	o := e.opts
	e.model.mu.RLock()
	defer e.model.mu.RUnlock()
	if e.model.closed {
		return nil, ErrModelClosed
	}
	slots := o.Parallel + len(o.PrefixCache.Pinned)
	p := C.llama_context_default_params()
	p.n_seq_max = C.uint32_t(slots)
	p.n_batch = C.uint32_t(o.Batch)
	p.n_ubatch = C.uint32_t(o.UBatch)
	p.n_threads = C.int32_t(o.Threads)
	p.n_threads_batch = C.int32_t(o.ThreadsBatch)
	p.kv_unified = C.bool(o.UnifiedKV)
	p.no_perf = true
	// An embedding model pools by its own type (pooling_type left
	// unspecified takes the model's).
	p.embeddings = C.bool(e.model.info.Embeds())
	p.n_ctx = C.uint32_t(o.KVCells)
	if !o.UnifiedKV {
		// llama.cpp divides the cells evenly between the streams, rounding
		// each down to its padding of 256: ask for whole multiples.
		p.n_ctx = C.uint32_t((o.Context + 255) / 256 * 256 * slots)
	}
	p.type_k, p.type_v = C.enum_ggml_type(o.typeK), C.enum_ggml_type(o.typeV) // parsed by Options.fill
	switch o.FlashAttention {
	case FlashAttentionOn:
		p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED
	case FlashAttentionOff:
		p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_DISABLED
	default:
		p.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_AUTO
	}
	ctx := C.llama_init_from_model(e.model.c, p)
	if ctx == nil {
		return nil, fmt.Errorf("creating llama context (%d KV cells, %d sequences): llama.cpp refused (out of memory for the KV cache? it holds --parallel times --ctx cells: lower either, or use --cache-type-k/--cache-type-v q8_0), see its log at --log-level debug", o.KVCells, o.Parallel)
	}
	x := &llamaExec{
		m:       e.model,
		ctx:     ctx,
		mem:     C.llama_get_memory(ctx),
		nVocab:  e.model.info.VocabSize,
		kvCells: int(C.llama_n_ctx(ctx)),
	}
	if perSeq := int(C.llama_n_ctx_seq(ctx)); perSeq < o.Context {
		x.close()
		return nil, fmt.Errorf("creating llama context: a sequence holds %d cells, fewer than the context %d", perSeq, o.Context)
	}
	// A persistent thread pool: without one ggml starts and joins its
	// worker threads on every graph computation.
	x.pool = C.fs_threadpool_attach(ctx, C.int32_t(max(o.Threads, o.ThreadsBatch)))
	if x.pool == nil {
		e.log.Warn("ggml CPU thread pool unavailable; decoding creates threads per step")
	}
	n := o.Batch
	x.cb = C.llama_batch_init(C.int32_t(n), 0, 1)
	x.bTok = unsafe.Slice(x.cb.token, n)
	x.bPos = unsafe.Slice(x.cb.pos, n)
	x.bSeq = unsafe.Slice(x.cb.seq_id, n)
	x.bLogits = unsafe.Slice(x.cb.logits, n)
	nSeq := unsafe.Slice(x.cb.n_seq_id, n)
	for i := range nSeq {
		nSeq[i] = 1
	}
	x.cutFlag = (*C.int32_t)(C.calloc(1, 4))
	C.fs_set_cut(ctx, x.cutFlag)
	// One allocation for the sampling scratch: two pointer arrays, then two
	// int32 arrays.
	ptr := C.size_t(unsafe.Sizeof(uintptr(0)))
	x.cScratch = C.malloc(2*C.size_t(n)*ptr + 2*C.size_t(n)*4)
	x.cSamplers = unsafe.Slice((**C.struct_llama_sampler)(x.cScratch), n)
	x.cGrammars = unsafe.Slice((**C.struct_llama_sampler)(unsafe.Add(x.cScratch, n*int(ptr))), n)
	x.cIdx = unsafe.Slice((*C.int32_t)(unsafe.Add(x.cScratch, 2*n*int(ptr))), n)
	x.cOut = unsafe.Slice((*C.int32_t)(unsafe.Add(x.cScratch, 2*n*int(ptr)+4*n)), n)
	return x, nil
}

// close frees the C resources, once, in the order llama.cpp needs: what
// uses the context (the batch) first; the context after the device
// finished its queued work (on a GPU a decode returns before its kernels
// end, and freeing their buffers under them crashes); the thread pool
// only once no context refers to it. The model outlives the context
// (Model.Close closes its engines first).
func (x *llamaExec) close() {
	if x.cScratch != nil {
		C.free(x.cScratch)
		x.cScratch = nil
	}
	if x.cb.token != nil {
		C.llama_batch_free(x.cb)
		x.cb = C.struct_llama_batch{}
	}
	if x.ctx != nil {
		C.llama_synchronize(x.ctx)
		C.llama_set_abort_callback(x.ctx, nil, nil)
		if x.pool != nil {
			C.llama_detach_threadpool(x.ctx)
		}
		C.llama_free(x.ctx)
		x.ctx = nil
	}
	if x.pool != nil {
		C.fs_threadpool_free(x.pool)
		x.pool = nil
	}
	if x.cutFlag != nil {
		C.free(unsafe.Pointer(x.cutFlag))
		x.cutFlag = nil
	}
}

func (x *llamaExec) armCut() { atomic.StoreInt32((*int32)(unsafe.Pointer(x.cutFlag)), 0) }
func (x *llamaExec) cut()    { atomic.StoreInt32((*int32)(unsafe.Pointer(x.cutFlag)), 1) }

func (x *llamaExec) seqRemove(slot int32, p0, p1 int) {
	C.llama_memory_seq_rm(x.mem, C.llama_seq_id(slot), C.llama_pos(p0), C.llama_pos(p1))
}

func (x *llamaExec) seqCopy(src, dst int32, p0, p1 int) {
	C.llama_memory_seq_cp(x.mem, C.llama_seq_id(src), C.llama_seq_id(dst), C.llama_pos(p0), C.llama_pos(p1))
}

func (x *llamaExec) seqPosMax(slot int32) int {
	return int(C.llama_memory_seq_pos_max(x.mem, C.llama_seq_id(slot)))
}

func (x *llamaExec) saveSeq(slot int32) ([]byte, error) {
	id := C.llama_seq_id(slot)
	size := C.llama_state_seq_get_size(x.ctx, id)
	if size == 0 {
		return nil, nil
	}
	buf := make([]byte, int(size))
	if got := C.llama_state_seq_get_data(x.ctx, (*C.uint8_t)(unsafe.Pointer(&buf[0])), size, id); got != size {
		return nil, fmt.Errorf("saving sequence %d: %d of %d bytes written", slot, int(got), int(size))
	}
	return buf, nil
}

func (x *llamaExec) restoreSeq(slot int32, st []byte) error {
	if len(st) == 0 {
		return errors.New("restoring a sequence: no state")
	}
	got := C.llama_state_seq_set_data(x.ctx, (*C.uint8_t)(unsafe.Pointer(&st[0])), C.size_t(len(st)), C.llama_seq_id(slot))
	if int(got) != len(st) {
		return fmt.Errorf("restoring sequence %d: %d of %d bytes read", slot, int(got), len(st))
	}
	return nil
}

func (x *llamaExec) decode(b *batch) int {
	n := b.len()
	for i := range n {
		x.bTok[i] = C.llama_token(b.tok[i])
		x.bPos[i] = C.llama_pos(b.pos[i])
		*x.bSeq[i] = C.llama_seq_id(b.seq[i])
		x.bLogits[i] = 0
		if b.logits[i] {
			x.bLogits[i] = 1
		}
	}
	x.cb.n_tokens = C.int32_t(n)
	return int(C.llama_decode(x.ctx, x.cb))
}

func (x *llamaExec) sample(samplers []sampler, rows []int32, out []Token) {
	for i, s := range samplers {
		x.cSamplers[i], x.cGrammars[i] = nil, nil
		if s != nil {
			ls := s.(*llamaSampler)
			x.cSamplers[i], x.cGrammars[i] = ls.chain, ls.grammar
		}
		x.cIdx[i] = C.int32_t(rows[i])
	}
	C.fs_sample_batch(x.ctx, C.int32_t(x.nVocab), C.int32_t(len(rows)), &x.cSamplers[0], &x.cGrammars[0], &x.cIdx[0], &x.cOut[0])
	for i := range rows {
		out[i] = Token(x.cOut[i])
	}
}

func (x *llamaExec) logitsRow(row int32) *C.float {
	return C.llama_get_logits_ith(x.ctx, C.int32_t(row))
}

func (x *llamaExec) logprobs(row int32, targets []Token, k int) ([]float32, []TokenLogprob) {
	lp := make([]float32, len(targets))
	ids := make([]int32, k+1)
	tops := make([]float32, k+1)
	var tp *C.int32_t
	if len(targets) > 0 {
		tp = (*C.int32_t)(unsafe.Pointer(&targets[0]))
	}
	var lpp *C.float
	if len(lp) > 0 {
		lpp = (*C.float)(unsafe.Pointer(&lp[0]))
	}
	C.fs_logprobs(x.logitsRow(row), C.int32_t(x.nVocab), tp, C.int32_t(len(targets)), lpp,
		C.int32_t(k), (*C.int32_t)(unsafe.Pointer(&ids[0])), (*C.float)(unsafe.Pointer(&tops[0])))
	var top []TokenLogprob
	if k > 0 {
		top = make([]TokenLogprob, k)
		for i := range top {
			top[i] = TokenLogprob{Token: ids[i], Logprob: tops[i]}
		}
	}
	return lp, top
}

func (x *llamaExec) logSoftmax(row int32, out []float32) {
	C.fs_log_softmax(x.logitsRow(row), C.int32_t(x.nVocab), (*C.float)(unsafe.Pointer(&out[0])))
}

func (x *llamaExec) embedding(slot int32, out []float32) bool {
	p := C.llama_get_embeddings_seq(x.ctx, C.llama_seq_id(slot))
	if p == nil {
		return false
	}
	copy(out, unsafe.Slice((*float32)(unsafe.Pointer(p)), len(out)))
	return true
}

// llamaSampler is a generation's sampling state: a llama.cpp sampler
// chain and, for a constrained one, its grammar, kept apart so that the
// grammar checks the chain's pick before it is run over every token
// (fs_sample_batch).
type llamaSampler struct {
	chain, grammar *C.struct_llama_sampler
}

func (x *llamaExec) newSampler(s *Sampling) sampler {
	if s.greedy() {
		return nil
	}
	m := x.m
	chain := C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
	ls := &llamaSampler{chain: chain}
	if s.Grammar != "" {
		if n := len(m.neverUTF8); n > 0 {
			// Bytes that are never UTF-8 out first: llama.cpp's grammar
			// decodes leniently and would accept them as characters.
			bias := (*C.llama_logit_bias)(C.malloc(C.size_t(n) * C.size_t(unsafe.Sizeof(C.llama_logit_bias{}))))
			biases := unsafe.Slice(bias, n)
			for i, t := range m.neverUTF8 {
				biases[i] = C.llama_logit_bias{token: C.llama_token(t), bias: C.float(math.Inf(-1))}
			}
			C.llama_sampler_chain_add(chain, C.llama_sampler_init_logit_bias(C.int32_t(x.nVocab), C.int32_t(n), bias))
			C.free(unsafe.Pointer(bias)) // llama.cpp keeps its own copy
		}
		// The grammar apart (it was parsed when the request was
		// submitted).
		ls.grammar = m.grammarSampler(s.Grammar)
	}
	if s.penalized() {
		rep := s.RepeatPenalty
		if rep == 0 {
			rep = 1
		}
		C.llama_sampler_chain_add(chain, initPenalties(m.vocab, C.int32_t(s.PenaltyLastN),
			C.float(rep), C.float(s.FrequencyPenalty), C.float(s.PresencePenalty)))
	}
	if s.Temperature == 0 {
		C.llama_sampler_chain_add(chain, C.llama_sampler_init_greedy())
		return ls
	}
	if s.TopK > 0 {
		C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_k(C.int32_t(s.TopK)))
	}
	if s.TopP > 0 && s.TopP < 1 {
		C.llama_sampler_chain_add(chain, C.llama_sampler_init_top_p(C.float(s.TopP), 1))
	}
	if s.MinP > 0 {
		C.llama_sampler_chain_add(chain, C.llama_sampler_init_min_p(C.float(s.MinP), 1))
	}
	C.llama_sampler_chain_add(chain, C.llama_sampler_init_temp(C.float(s.Temperature)))
	seed := rand.Uint32()
	if s.Seed != nil {
		seed = *s.Seed
	}
	C.llama_sampler_chain_add(chain, C.llama_sampler_init_dist(C.uint32_t(seed)))
	return ls
}

func (x *llamaExec) freeSampler(s sampler) {
	if s == nil {
		return
	}
	ls := s.(*llamaSampler)
	C.llama_sampler_free(ls.chain)
	if ls.grammar != nil {
		C.llama_sampler_free(ls.grammar)
	}
}
