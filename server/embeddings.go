package server

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/finserve/finserve/engine"
)

// EmbeddingRequest is the body of POST /v1/embeddings.
type EmbeddingRequest struct {
	Model string         `json:"model"`
	Input EmbeddingInput `json:"input"`
	// Content is llama-server's name for input.
	Content EmbeddingInput `json:"content"`
	// EncodingFormat is float (the default) or base64: the float32 values,
	// little-endian, base64-encoded, a quarter of the JSON's size.
	EncodingFormat string `json:"encoding_format"`
	// Dimensions asks for shorter vectors; accepted only when it is the
	// model's own length (see embeddings).
	Dimensions *int   `json:"dimensions"`
	User       string `json:"user"`
}

// EmbeddingInput is an embedding request's input: a string, an array of
// strings, an array of token ids or an array of arrays of token ids, as
// OpenAI accepts it.
type EmbeddingInput struct{ PromptList }

// UnmarshalJSON accepts the four shapes, with an error naming input.
func (in *EmbeddingInput) UnmarshalJSON(b []byte) error {
	if err := in.PromptList.UnmarshalJSON(b); err != nil {
		return &fieldError{field: "input", msg: "input must be a string, an array of strings, an array of token ids or an array of arrays of token ids"}
	}
	return nil
}

// EmbeddingResponse is the answer of POST /v1/embeddings.
type EmbeddingResponse struct {
	Object string           `json:"object"` // "list"
	Data   []Embedding      `json:"data"`
	Model  string           `json:"model"`
	Usage  EmbeddingUsage   `json:"usage"`
	Timing *EmbeddingTiming `json:"timings,omitempty"`
}

// Embedding is one input's vector: a list of numbers, or a base64 string
// with encoding_format base64.
type Embedding struct {
	Object    string `json:"object"` // "embedding"
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"`
}

// EmbeddingUsage counts the input tokens.
type EmbeddingUsage struct {
	PromptTokens int `json:"prompt_tokens"`
	TotalTokens  int `json:"total_tokens"`
}

// EmbeddingTiming is finserve's extension: where the request's time went,
// in milliseconds.
type EmbeddingTiming struct {
	QueueMS   float64 `json:"queue_ms"`
	ComputeMS float64 `json:"compute_ms"`
}

// embeddings answers POST /v1/embeddings on an embedding model: every
// input's unit vector, pooled as the model says, computed in the engine's
// steps beside other requests' inputs.
func (s *Server) embeddings(c *fiber.Ctx) error {
	if _, err := s.ready(); err != nil && s.fleet.Load() == nil {
		return err // loading or draining: before reading the body
	}
	var req EmbeddingRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return bodyError(err)
	}
	b, release, err := s.acquire(c, req.Model, false)
	if err != nil {
		return err
	}
	defer release()
	inputs, apiErr := embeddingInputs(b, &req, b.eng.EmbedLimit())
	if apiErr != nil {
		return apiErr
	}

	ctx, _, gone, end := s.hold(c)
	if ctx == nil {
		return errDraining
	}
	defer end()
	res, err := b.eng.Embed(ctx, engine.EmbedRequest{Inputs: inputs, Tier: s.tier(c), Tenant: s.tenant(c),
		ID: cmp.Or(requestID(c), "embedding")})
	if err != nil {
		switch {
		case gone.Load():
			return nil // the client left: nobody to answer
		case s.draining.Load() && errors.Is(err, context.Canceled):
			return errDraining
		}
		apiErr := fromEngine(err)
		var tooLong *engine.PromptTooLongError
		if errors.As(err, &tooLong) {
			apiErr.Param = "input"
			apiErr.Message = fmt.Sprintf("input %d has %d tokens; this model embeds at most %d tokens an input", tooLong.Input, tooLong.Tokens, tooLong.Limit)
		}
		if apiErr.Status >= 500 && apiErr.Status != 503 {
			s.log.Error("embedding failed", "err", err)
		}
		return apiErr
	}
	m := s.metrics
	m.tenantTokens.WithLabelValues(m.tenants.label(s.tenant(c)), "embedded").Add(float64(res.Tokens))
	out := EmbeddingResponse{Object: "list", Model: b.id, Data: make([]Embedding, len(res.Embeddings)),
		Usage:  EmbeddingUsage{PromptTokens: res.Tokens, TotalTokens: res.Tokens},
		Timing: &EmbeddingTiming{QueueMS: ms(res.Timings.Queue), ComputeMS: ms(res.Timings.Prefill)}}
	for i, v := range res.Embeddings {
		d := Embedding{Object: "embedding", Index: i, Embedding: v}
		if req.EncodingFormat == "base64" {
			d.Embedding = base64Floats(v)
		}
		out.Data[i] = d
	}
	return c.JSON(out)
}

// embeddingInputs validates an embedding request's parameters and
// tokenizes its inputs, as llama-server does: with the model's special
// tokens (BOS, and EOS where the model asks for it), which its pooling
// was trained with. Text that cannot fit limit tokens is refused before
// it is tokenized; the engine refuses longer token lists.
func embeddingInputs(b *backend, req *EmbeddingRequest, limit int) ([][]engine.Token, *APIError) {
	in := req.Input
	if !in.Set {
		in = req.Content
	}
	switch {
	case !in.Set || in.Len() == 0:
		return nil, badRequest("input", "input is required: a string, an array of strings or an array of token id arrays")
	case in.Len() > engine.MaxEmbedInputs:
		return nil, badRequest("input", "%d inputs; at most %d are allowed in one request", in.Len(), engine.MaxEmbedInputs)
	}
	switch req.EncodingFormat {
	case "", "float", "base64":
	default:
		return nil, badRequest("encoding_format", "encoding_format %q is not float or base64", req.EncodingFormat)
	}
	n := b.model.Info().Embedding
	if d := req.Dimensions; d != nil && *d != n {
		// Cutting a vector short is right only for a model trained for it
		// (Matryoshka); a GGUF does not say whether it was.
		return nil, unsupported("dimensions", "the model %q produces %d dimensions and cannot shorten them; omit dimensions or send %d", b.id, n, n)
	}
	out := make([][]engine.Token, 0, in.Len())
	for i, text := range in.Texts {
		if text == "" {
			return nil, badRequest("input", "input %d is an empty string", i)
		}
		if least := b.model.MinTokens(len(text)); least > limit {
			return nil, &APIError{Status: 400, Type: "invalid_request_error", Param: "input", Code: "context_length_exceeded",
				Message: fmt.Sprintf("input %d's %d bytes make at least %d tokens; this model embeds at most %d tokens an input", i, len(text), least, limit)}
		}
		toks, err := b.model.Tokenize(text, true, false)
		if err != nil {
			return nil, badRequest("input", "input %d: %s", i, err.Error())
		}
		out = append(out, toks)
	}
	for i, ids := range in.Tokens {
		if len(ids) == 0 {
			return nil, badRequest("input", "input %d has no tokens", i)
		}
		for _, t := range ids {
			if !b.model.ValidToken(t) {
				return nil, badRequest("input", "input %d has token id %d; the vocabulary has %d tokens", i, t, b.model.Info().VocabSize)
			}
		}
		out = append(out, append([]engine.Token(nil), ids...))
	}
	return out, nil
}

// base64Floats is OpenAI's base64 encoding of a vector: its float32
// values little-endian, base64 (standard alphabet, padded).
func base64Floats(v []float32) string {
	var buf bytes.Buffer
	buf.Grow(4 * len(v))
	for _, x := range v {
		buf.Write(binary.LittleEndian.AppendUint32(nil, math.Float32bits(x)))
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

// ms is d in milliseconds, to the microsecond (the timings' unit).
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
