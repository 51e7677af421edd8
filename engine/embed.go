package engine

import (
	"context"
	"errors"
	"math"
)

// Embeddings. An embedding model (ModelInfo.Pooling set) runs in a context
// made with embeddings on: llama.cpp pools the final hidden states of
// every sequence of a micro-batch by the model's pooling type. Each input
// is one sequence fed whole in one step (a sequence split over two
// micro-batches would be pooled over its last part only), with every row
// an output, as pooling needs; the loop packs as many inputs as the batch
// holds, from one request or several, reads each pooled vector, frees the
// sequence and normalizes the vector in Go.

// MaxEmbedInputs bounds the inputs of one embedding request (OpenAI's
// limit for /v1/embeddings, 2,048 inputs, as documented in its API
// reference on 2026-12-01).
const MaxEmbedInputs = 2048

// Errors of a request the model cannot serve.
var (
	// ErrNotEmbedding: Embed on a text-generation model.
	ErrNotEmbedding = errors.New("the model is a text-generation model and produces no embeddings")
	// ErrEmbeddingOnly: Generate or Score on an embedding model.
	ErrEmbeddingOnly = errors.New("the model is an embedding model and generates no text")
)

// EmbedRequest asks for the embeddings of several inputs.
type EmbedRequest struct {
	// Inputs are token sequences (Model.Tokenize with special tokens, as
	// the model's pooling expects its BOS or CLS), each at most
	// EmbedLimit tokens.
	Inputs [][]Token
	Tier   Tier
	Tenant string
	ID     string // names the request in Stats.Work
}

// EmbedResult is the embeddings of an EmbedRequest's inputs, in order.
type EmbedResult struct {
	// Embeddings are unit vectors (L2), one per input, of the model's
	// embedding length; a zero vector stays zero.
	Embeddings [][]float32
	Tokens     int // input tokens computed
	Timings    Timings
}

type embedTask struct {
	taskBase
	req      EmbedRequest
	next     int // inputs started
	finished int
	tokens   int
	result   *EmbedResult
	err      error
	done     chan struct{}
}

// EmbedLimit is the most tokens one input may have: a sequence is fed in
// one step, so it must fit the batch (Options.Context is cut to it).
func (e *Engine) EmbedLimit() int { return min(e.opts.Context, e.opts.Batch) }

// Embed computes the embeddings of req's inputs and waits for them.
func (e *Engine) Embed(ctx context.Context, req EmbedRequest) (*EmbedResult, error) {
	t, err := e.submitEmbed(ctx, req)
	if err != nil {
		return nil, err
	}
	<-t.done // the loop finalises every task it accepted, even when it stops
	return t.result, t.err
}

// submitEmbed validates req and hands it to the loop.
func (e *Engine) submitEmbed(ctx context.Context, req EmbedRequest) (*embedTask, error) {
	if err := e.validateEmbed(&req); err != nil {
		return nil, err
	}
	t := &embedTask{
		taskBase: taskBase{ctx: ctx, tier: req.Tier, tenant: req.Tenant, submitted: e.now()},
		req:      req,
		result:   &EmbedResult{Embeddings: make([][]float32, len(req.Inputs))},
		done:     make(chan struct{}),
	}
	if err := e.enqueue(ctx, t); err != nil {
		return nil, err
	}
	return t, nil
}

func (e *Engine) validateEmbed(req *EmbedRequest) error {
	if !e.model.info.Embeds() {
		return ErrNotEmbedding
	}
	if len(req.Inputs) == 0 {
		return invalid("input", "at least one input is needed")
	}
	if len(req.Inputs) > MaxEmbedInputs {
		return invalid("input", "%d inputs; at most %d are allowed in one request", len(req.Inputs), MaxEmbedInputs)
	}
	limit := e.EmbedLimit()
	for i, in := range req.Inputs {
		if len(in) == 0 {
			return invalid("input", "input %d is empty", i)
		}
		if len(in) > limit {
			return &PromptTooLongError{Tokens: len(in), Limit: limit, Input: i}
		}
		for j, t := range in {
			if !e.model.ValidToken(t) {
				return invalid("input", "token %d at position %d of input %d is not in the vocabulary of %d", t, j, i, e.model.info.VocabSize)
			}
		}
	}
	return validTier(req.Tier)
}

// admitEmbed starts t's next inputs, each a sequence finishing in the
// step it is fed in, while slots and KV cells last. A task with inputs
// left stays waiting (noRoom: later tasks wait behind it), so that the
// next admission weighs its rest against higher tiers that arrived.
func (l *loop) admitEmbed(t *embedTask) admission {
	select {
	case <-t.done:
		return admitted // ended while its rest waited (a failed decode): leave the queue
	default:
	}
	for t.next < len(t.req.Inputs) && len(l.freeSlots) > 0 {
		in := t.req.Inputs[t.next]
		if !l.room(len(in), source{}) {
			break
		}
		if t.next == 0 {
			t.admitted, t.waitSteps = l.now(), l.steps-t.arrival
		}
		sq := &sequence{slot: l.claimSlot(), tokens: in, reserve: len(in), tier: t.tier, order: t.order,
			embed: t, variant: t.next, tenant: t.tenant}
		l.addSeq(sq)
		t.next++
	}
	if t.next < len(t.req.Inputs) {
		return noRoom
	}
	return admitted
}

// planEmbeds asks for the pooled vector of every input the step feeds
// whole.
func (l *loop) planEmbeds() {
	for _, sq := range l.running {
		if sq.embed != nil && sq.inBatch > 0 && sq.remaining() == sq.inBatch {
			l.p.embeds = append(l.p.embeds, embedRead{slot: sq.slot, out: make([]float32, l.m.info.Embedding)})
			l.embeds = append(l.embeds, sq)
		}
	}
}

// embedOutputs takes the pooled vector of every input fed whole in the
// step, frees its sequence and ends the tasks whose inputs are all done.
func (l *loop) embedOutputs() {
	for i, sq := range l.embeds {
		t := sq.embed
		select {
		case <-t.done:
			continue // ended by an input before
		default:
		}
		if !l.res.embedOK[i] {
			l.finishEmbed(t, errors.New("llama.cpp returned no pooled embedding for a sequence"))
			continue
		}
		v := l.p.embeds[i].out
		normalize(v)
		t.result.Embeddings[sq.variant] = v
		t.tokens += len(sq.tokens)
		l.removeSeq(sq, false)
		if t.finished++; t.finished == len(t.req.Inputs) {
			l.finishEmbed(t, nil)
		}
	}
}

// normalize scales v to unit L2 norm (llama-server's default for
// /v1/embeddings), in float64 so that the norm does not lose the small
// components of a long vector.
func normalize(v []float32) {
	var ss float64
	for _, x := range v {
		ss += float64(x) * float64(x)
	}
	if ss == 0 {
		return
	}
	inv := 1 / math.Sqrt(ss)
	for i, x := range v {
		v[i] = float32(float64(x) * inv)
	}
}

// finishEmbed ends an embedding task and frees its sequences.
func (l *loop) finishEmbed(t *embedTask, err error) {
	select {
	case <-t.done:
		return
	default:
	}
	for i := 0; i < len(l.running); {
		if sq := l.running[i]; sq.embed == t {
			l.removeSeq(sq, false)
			continue
		}
		i++
	}
	t.ended()
	if err != nil {
		t.err, t.result = err, nil
	} else {
		now := l.now()
		l.e.served(t.tier, now.Sub(t.admitted))
		t.result.Tokens = t.tokens
		t.result.Timings = Timings{Queue: t.admitted.Sub(t.submitted), Prefill: now.Sub(t.admitted),
			FirstByte: now.Sub(t.submitted), QueueSteps: t.waitSteps}
	}
	close(t.done)
}
