package server

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// The request's identity, kept in its locals by access.
type requestIDKey struct{}

// tracer is the global provider's: a no-op unless the binary installed
// an exporter (OTEL_* settings), so that tracing costs nothing when off.
func tracer() trace.Tracer { return otel.Tracer("github.com/finserve/finserve/server") }

// traceContext reads W3C traceparent/tracestate headers.
var traceContext = propagation.TraceContext{}

// access is the outermost middleware. It names the request (a client's
// X-Request-Id is kept, and its W3C traceparent continued), opens its
// trace span, counts it by route and status, and logs every request the
// server refuses, so that a 401 or a 429 leaves a trace an operator can
// follow from the bank's gateway.
func (s *Server) access(c *fiber.Ctx) error {
	start := time.Now()
	rid := strings.Clone(c.Get("X-Request-Id"))
	if !validRequestID(rid) {
		rid = ""
	}
	c.Locals(requestIDKey{}, rid)
	// fiber's strings alias request buffers that are reused: whatever
	// outlives the request (span attributes, metric labels) is a copy.
	method, path := strings.Clone(c.Method()), strings.Clone(c.Path())
	ctx := traceContext.Extract(c.UserContext(), headerCarrier{c})
	ctx, span := tracer().Start(ctx, method, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.request.method", method), attribute.String("url.path", path)))
	c.SetUserContext(ctx)

	err := s.safely("serving "+method+" "+path, c.Next)

	status, code := outcome(c, err)
	route := s.routeLabel(c)
	if id, _ := c.Locals(requestIDKey{}).(string); id != "" {
		rid = id // generate named it after its response
	} else if rid == "" {
		rid = newRequestID()
	}
	c.Set("X-Request-Id", rid)
	if status == fiber.StatusServiceUnavailable && s.draining.Load() {
		// Draining: move the client's next request to another connection
		// (and so, behind a balancer, to another replica).
		c.Context().SetConnectionClose()
	}
	// Named by route, not path, as OpenTelemetry's HTTP conventions ask:
	// span names stay few.
	span.SetName(method + " " + route)
	span.SetAttributes(attribute.String("http.route", route), attribute.Int("http.response.status_code", status),
		attribute.String("finserve.request_id", rid))
	if status >= 500 {
		span.SetStatus(codes.Error, code)
	}
	span.End()
	s.metrics.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	// Readiness answering 503 while loading or draining is a state, not a
	// refusal: probes would flood the log.
	probe := (route == "/ready" || route == "/ready/aml") && status == fiber.StatusServiceUnavailable
	if status >= 400 && !probe {
		level := s.log.Info
		if status >= 500 {
			level = s.log.Warn
		}
		attrs := []any{"request_id", rid, "route", route, "method", method, "status", status, "reason", code,
			"client", c.Context().RemoteIP().String(), "ms", time.Since(start).Milliseconds()}
		if t := s.tenant(c); t != "" {
			attrs = append(attrs, "tenant", t)
		}
		if sc := span.SpanContext(); sc.HasTraceID() {
			attrs = append(attrs, "trace_id", sc.TraceID().String())
		}
		level("request refused", attrs...)
	}
	return err
}

// outcome is the status the client gets and the reason for an error
// status (the OpenAI error code, or its type when it has none). The error
// handler writes err's response after this middleware returns.
func outcome(c *fiber.Ctx, err error) (status int, reason string) {
	if err == nil {
		return c.Response().StatusCode(), ""
	}
	api, known := asAPIError(err)
	if !known {
		return api.Status, "internal_error"
	}
	if api.Code != "" {
		return api.Status, api.Code
	}
	return api.Status, api.Type
}

// validRequestID accepts what is safe to echo and log: 1 to 128 letters,
// digits and . _ : - (UUIDs, gateway ids).
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == ':' || r == '-'
		if !ok {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	rand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}

// requestID is the id the request is known by: the client's
// X-Request-Id, or "" until one is made.
func requestID(c *fiber.Ctx) string {
	id, _ := c.Locals(requestIDKey{}).(string)
	return id
}

// traceID is the request's W3C trace id, or "" outside a trace.
func traceID(c *fiber.Ctx) string {
	if sc := trace.SpanContextFromContext(c.UserContext()); sc.HasTraceID() {
		return sc.TraceID().String()
	}
	return ""
}

// headerCarrier reads a fiber request's headers for the propagator.
type headerCarrier struct{ c *fiber.Ctx }

func (h headerCarrier) Get(key string) string { return strings.Clone(h.c.Get(key)) }
func (h headerCarrier) Set(string, string)    {}
func (h headerCarrier) Keys() []string        { return nil }

// routeLabel names the route a request was for, as registered
// ("/v1/chat/completions", "/tiers/:tier/v1/models/+"), also when a
// middleware refused it before routing (fiber then reports the
// middleware's "/"); "unmatched" for paths no route serves, so that the
// label's values stay bounded.
func (s *Server) routeLabel(c *fiber.Ctx) string {
	path := c.Path()
	if r := c.Route().Path; slices.Contains(s.routePaths, r) && matchRoute(r, path) {
		return r
	}
	for _, r := range s.routePaths {
		if matchRoute(r, path) {
			return r
		}
	}
	return "unmatched"
}

// matchRoute matches path against a fiber route pattern of static
// segments, ":param" (one segment) and a final "+" (one or more).
func matchRoute(pattern, path string) bool {
	ps := strings.Split(strings.Trim(pattern, "/"), "/")
	xs := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range ps {
		switch {
		case p == "+":
			return i < len(xs) && xs[i] != ""
		case i >= len(xs):
			return false
		case strings.HasPrefix(p, ":"):
			if xs[i] == "" {
				return false
			}
		case p != xs[i]:
			return false
		}
	}
	return len(ps) == len(xs)
}

// errPanic is what a client sees of a panic: a 500 without detail.
var errPanic = &APIError{Status: fiber.StatusInternalServerError, Type: "server_error", Code: "internal_error",
	Message: "internal error; the server logged it and keeps serving"}

// safely runs fn, turning a panic into errPanic and an error log line
// with the stack: no request may take the process down. Goroutines a
// handler starts (AML cases, stream writers) run their work through it
// too, as a panic there is beyond the middleware's reach.
func (s *Server) safely(what string, fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic: the request failed and the server keeps serving", "in", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = errPanic
		}
	}()
	return fn()
}
