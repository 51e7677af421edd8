package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/finserve/finserve/engine"
)

// APIError is an error a client sees: an HTTP status and an OpenAI error
// object.
type APIError struct {
	Status  int
	Message string
	Type    string // invalid_request_error, authentication_error, ...
	Param   string
	Code    string
	// RetryAfter, in seconds, is sent as the Retry-After header when > 0.
	RetryAfter int
}

func (e *APIError) Error() string { return e.Message }

func (e *APIError) body() ErrorBody {
	d := ErrorDetail{Message: e.Message, Type: e.Type}
	if e.Param != "" {
		d.Param = &e.Param
	}
	if e.Code != "" {
		d.Code = &e.Code
	}
	return ErrorBody{Error: d}
}

func badRequest(param, format string, args ...any) *APIError {
	return &APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: param,
		Message: fmt.Sprintf(format, args...)}
}

func unsupported(param, format string, args ...any) *APIError {
	e := badRequest(param, format, args...)
	e.Code = "unsupported_parameter"
	return e
}

var (
	errLoading = &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "model_loading",
		Message: "the model is still loading; retry shortly", RetryAfter: 1}
	errDraining = &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "shutting_down",
		Message: "the server is shutting down", RetryAfter: 1}
	errUnauthorized = &APIError{Status: http.StatusUnauthorized, Type: "authentication_error", Code: "invalid_api_key",
		Message: "a valid API key is required: send it as 'Authorization: Bearer <key>'"}
)

func modelNotFound(id string) *APIError {
	return &APIError{Status: http.StatusNotFound, Type: "invalid_request_error", Param: "model", Code: "model_not_found",
		Message: fmt.Sprintf("the model %q does not exist; GET /v1/models lists the served models", id)}
}

// fromEngine translates an engine error into what the client sees. Errors
// the client caused are 4xx; the rest are 500 without internal detail.
func fromEngine(err error) *APIError {
	var tooLong *engine.PromptTooLongError
	var invalid *engine.InvalidRequestError
	var full *engine.QueueFullError
	var timeout *engine.QueueTimeoutError
	switch {
	case errors.As(err, &full):
		return &APIError{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "queue_full",
			Message:    fmt.Sprintf("the %s tier's queue is full (%d requests waiting); retry later", full.Tier, full.Waiting),
			RetryAfter: seconds(full.RetryAfter)}
	case errors.As(err, &timeout):
		return &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "queue_timeout",
			Message: fmt.Sprintf("the request waited %s in the %s tier's queue, its limit, without starting; retry later",
				timeout.Waited.Round(time.Millisecond), timeout.Tier),
			RetryAfter: seconds(timeout.RetryAfter)}
	case errors.As(err, &tooLong):
		return &APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: "messages",
			Code: "context_length_exceeded",
			Message: fmt.Sprintf("the prompt has %d tokens; this server's context holds at most %d prompt tokens",
				tooLong.Tokens, tooLong.Limit)}
	case errors.As(err, &invalid):
		return badRequest(invalid.Field, "%s", invalid.Error())
	case errors.Is(err, engine.ErrGrammarStuck):
		return badRequest("grammar", "the grammar allows no token at some point of the answer: it asks for a token that ends generation before the grammar is complete, or only for tokens that are never valid text")
	case errors.Is(err, engine.ErrEmbeddingOnly), errors.Is(err, engine.ErrNotEmbedding):
		return &APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: "model", Code: "model_not_supported",
			Message: err.Error()}
	case errors.Is(err, engine.ErrQueueFull):
		return &APIError{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "queue_full",
			Message: "the server is at capacity; retry later", RetryAfter: 1}
	case errors.Is(err, engine.ErrKVExhausted):
		return &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "kv_cache_exhausted",
			Message: "the server has no KV-cache space for this request now; retry later", RetryAfter: 1}
	case errors.Is(err, engine.ErrStopped):
		return errDraining
	case errors.Is(err, context.DeadlineExceeded):
		return &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "timeout",
			Message: "the request ran past its deadline"}
	}
	return &APIError{Status: http.StatusInternalServerError, Type: "server_error", Message: "internal error while generating"}
}

// seconds rounds a retry delay up to whole seconds, at least one.
func seconds(d time.Duration) int {
	return max(1, int((d+time.Second-1)/time.Second))
}

// fromFiber translates fiber's own errors (routing, body limit, timeouts)
// into OpenAI error objects.
func fromFiber(err *fiber.Error) *APIError {
	e := &APIError{Status: err.Code, Type: "invalid_request_error", Message: err.Message}
	switch err.Code {
	case fiber.StatusNotFound:
		e.Code = "not_found"
		e.Message = "no such route; this server implements the OpenAI API under /v1"
	case fiber.StatusMethodNotAllowed:
		e.Code = "method_not_allowed"
	case fiber.StatusRequestEntityTooLarge:
		e.Code = "request_too_large"
		e.Message = "the request body is larger than this server accepts"
	case fiber.StatusRequestHeaderFieldsTooLarge:
		e.Code = "headers_too_large"
		e.Message = "the request headers are larger than this server accepts"
	case fiber.StatusRequestTimeout:
		e.Code = "timeout"
	}
	if err.Code >= 500 {
		e.Type = "server_error"
	}
	return e
}
