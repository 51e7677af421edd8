// Package server is finserve's HTTP front: an OpenAI-compatible API on
// fiber over the engine, with server-sent events, OpenAI error objects,
// explicit client-disconnect detection, limits, Prometheus metrics and
// graceful shutdown. It has no cgo; the engine does the inference.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/compress"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/audit"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/registry"
)

// Limits bound what one request may ask for.
type Limits struct {
	// MaxTokens caps max_tokens; it is also the default when a chat
	// request sends none (generation still ends when the context is full).
	MaxTokens int
}

// Config configures a Server. The zero value of each field means its
// documented default.
type Config struct {
	// ModelID is the name clients use in "model" (default: the file name).
	ModelID string
	// ChatTemplate overrides the model's own chat template: a builtin name
	// such as "chatml" or a Jinja template llama.cpp recognises.
	ChatTemplate string
	Limits       Limits
	// BodyLimit is the largest request body in bytes (default 4 MiB).
	BodyLimit int
	// ReadTimeout bounds reading a request; IdleTimeout bounds a
	// keep-alive connection's wait for its next request (defaults 30s and
	// 120s). WriteTimeout bounds a whole response, streams included, so it
	// is off (0) by default.
	ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// APIKeys, when set, are required as "Authorization: Bearer <key>" on
	// every route but the probes (/health, /ready, /ready/aml) and
	// /metrics (unless MetricsAuth). Only their SHA-256 hashes are
	// kept. An entry "TIER:KEY" limits the key to that tier and those
	// below it, and makes it the key's tier on /v1.
	APIKeys []string
	// MetricsAuth requires an API key on /metrics too. Off by default, as
	// in vLLM: Prometheus and a router's endpoint picker scrape without
	// credentials, and the series hold no request content.
	MetricsAuth bool
	// KeyFile is a key file's set (apikeys), with names, allowed tiers and
	// rates; SetKeys replaces it while serving.
	KeyFile *apikeys.Set
	// Tiers are the request limits of each latency tier (default
	// DefaultTierLimits, when left zero).
	Tiers [engine.NumTiers]TierLimits
	// DefaultTier serves /v1 requests whose key declares no tier (default
	// "standard").
	DefaultTier string
	// Compress enables gzip/brotli/deflate for JSON responses that accept
	// it (never for event streams).
	Compress bool
	// DrainDelay keeps the listener open after Shutdown begins, answering
	// 503 shutting_down, until this much time has passed even when no
	// request is in flight: time for a load balancer's readiness probe to
	// take the server out of rotation (default 0; at most the grace).
	DrainDelay time.Duration
	// KeepAlive is the interval of SSE comment lines while a stream has
	// nothing to send, so that proxies do not time it out (default 10s).
	KeepAlive time.Duration
	// DisconnectPoll is how often a generating request checks that its
	// client is still connected (default 20ms).
	DisconnectPoll time.Duration
	// LogContent adds each request's prompt and completion, masked
	// (package pii), to its log line. Off by default: prompts hold
	// customer data.
	LogContent bool
	// AML configures POST /v1/aml/score (default aml.DefaultConfig()).
	AML *aml.Config
	// Audit, when set, receives every AML decision before its response
	// leaves. The server does not close it.
	Audit  *audit.Log
	Logger *slog.Logger
	// Build describes the binary, for finserve_build_info.
	Build BuildInfo
	// Clock is the time API keys' rates and rotation overlaps are judged
	// by (default time.Now); tests inject their own.
	Clock func() time.Time
}

// BuildInfo says what is running.
type BuildInfo struct {
	Version, Revision, GoVersion, LlamaCpp string
}

func (c *Config) fill() error {
	if c.Tiers == ([engine.NumTiers]TierLimits{}) {
		c.Tiers = DefaultTierLimits()
	}
	if c.DefaultTier == "" {
		c.DefaultTier = engine.TierStandard.String()
	}
	if _, err := engine.ParseTier(c.DefaultTier); err != nil {
		return fmt.Errorf("server config: default tier: %w", err)
	}
	for t, tl := range c.Tiers {
		if tl.MaxTokens < 0 || tl.DefaultMaxTokens < 0 {
			return fmt.Errorf("server config: tier %s: token limits must not be negative", engine.Tier(t))
		}
	}
	if c.Limits.MaxTokens <= 0 {
		c.Limits.MaxTokens = 4096
	}
	if c.BodyLimit <= 0 {
		c.BodyLimit = 4 << 20
	}
	if c.ReadTimeout <= 0 {
		c.ReadTimeout = 30 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 10 * time.Second
	}
	if c.DisconnectPoll <= 0 {
		c.DisconnectPoll = 20 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.AML == nil {
		c.AML = aml.DefaultConfig()
	}
	return nil
}

// backend is what serves requests once the model is loaded.
type backend struct {
	eng     *engine.Engine
	model   *engine.Model
	id      string
	created int64
	sha256  func() (string, error) // of the model file, computed once
	native  nativeTools            // the model's own tool syntax, if known
}

// Server is the HTTP front. Create it with New, start it with Serve, and
// give it an engine with SetEngine when the model has loaded; until then
// /ready answers 503 and the API answers 503 model_loading.
type Server struct {
	cfg    Config
	limits Limits
	log    *slog.Logger
	app    *fiber.App
	// probes answers /health, /ready and /metrics on a plain listener of
	// their own (ServeProbes), for deployments whose API port wants TLS
	// client certificates that a kubelet does not present.
	probes *fiber.App
	keys   atomic.Pointer[keyring]
	keysMu sync.Mutex // serialises SetKeys

	defaultTier engine.Tier

	backend atomic.Pointer[backend]
	// fleet, when set (SetModels), serves several models instead of
	// backend; fleetBackends are its loaded models' backends.
	fleet         atomic.Pointer[registry.Registry]
	fleetMu       sync.Mutex
	fleetBackends map[string]*backend
	draining      atomic.Bool
	// base is the parent of every request's context; Shutdown cancels it
	// when the grace period ends.
	base      context.Context
	cancelAll context.CancelFunc
	beginMu   sync.Mutex // orders begin against shutdown's Wait
	inflight  sync.WaitGroup
	inflightN atomic.Int64 // the WaitGroup's count, for Generating
	stopOnce  sync.Once
	stopErr   error
	// listeners are those Serve and ServeProbes were given, closed by
	// shutdown after fasthttp's own close: a listener that reached
	// fasthttp after its Shutdown would otherwise accept for ever.
	lnMu      sync.Mutex
	listeners []net.Listener
	closed    bool // shutdown closed the listeners: Serve refuses new ones

	metrics *metrics
	// routePaths are the registered routes, for metric labels of
	// requests refused before routing.
	routePaths []string
	amlCfg     atomic.Pointer[aml.Config] // SetAML replaces it
	audit      *audit.Log
}

// New builds a server from cfg.
func New(cfg Config) (*Server, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, limits: cfg.Limits, log: cfg.Logger, audit: cfg.Audit}
	s.amlCfg.Store(cfg.AML)
	s.defaultTier, _ = engine.ParseTier(cfg.DefaultTier)
	s.base, s.cancelAll = context.WithCancel(context.Background())
	r, err := s.compileKeys(cfg.APIKeys, cfg.KeyFile, nil)
	if err != nil {
		return nil, err
	}
	s.keys.Store(r)
	s.metrics = newMetrics(s)
	s.app = fiber.New(fiber.Config{
		AppName:               "finserve",
		DisableStartupMessage: true,
		BodyLimit:             cfg.BodyLimit,
		ReadBufferSize:        headerLimit,
		ReadTimeout:           cfg.ReadTimeout,
		WriteTimeout:          cfg.WriteTimeout,
		IdleTimeout:           cfg.IdleTimeout,
		ErrorHandler:          s.handleError,
		JSONEncoder:           json.Marshal,
		JSONDecoder:           json.Unmarshal,
	})
	s.routes()
	s.probes = fiber.New(fiber.Config{
		AppName:               "finserve-probes",
		DisableStartupMessage: true,
		ReadTimeout:           cfg.ReadTimeout,
		WriteTimeout:          cfg.ReadTimeout,
		IdleTimeout:           cfg.IdleTimeout,
		ErrorHandler:          s.handleError,
		JSONEncoder:           json.Marshal,
	})
	s.probeRoutes(s.probes)
	return s, nil
}

// headerLimit bounds a request's headers (fasthttp reads them into one
// buffer of this size; more is 431). fiber's 4 KiB default refused the
// single-sign-on tokens and cookies a bank's proxies forward (a JWT with
// group claims runs to several KiB); nginx's default allows 8 KiB a line.
const headerLimit = 16 << 10

// probeRoutes are the routes that answer without an API key: liveness,
// readiness and, unless MetricsAuth, the metrics.
func (s *Server) probeRoutes(app *fiber.App) {
	app.Get("/health", s.health)
	app.Get("/ready", s.readyz)
	app.Get("/ready/aml", s.readyz)
	if !s.cfg.MetricsAuth {
		app.Get("/metrics", s.metrics.handler)
	}
}

func (s *Server) routes() {
	app := s.app
	app.Use(s.access)
	app.Use(refuseAmbiguousFraming)
	if s.cfg.Compress {
		app.Use(compress.New(compress.Config{Next: wantsStream}))
	}
	s.probeRoutes(app)
	app.Use(s.authenticate)
	if s.cfg.MetricsAuth {
		app.Get("/metrics", s.metrics.handler)
	}
	app.Get("/slots", s.slots)
	// The OpenAI API, once per tier (tier.go).
	for _, prefix := range []string{"/v1", "/tiers/:tier/v1"} {
		api := app.Group(prefix, s.resolveTier)
		api.Get("/models", s.listModels)
		api.Get("/models/+", s.getModel)
		api.Post("/chat/completions", s.chatCompletions)
		api.Post("/completions", s.completions)
		api.Post("/embeddings", s.embeddings)
		api.Post("/aml/score", s.amlScore)
	}
	for _, r := range app.GetRoutes(true) {
		if r.Path != "/" && !slices.Contains(s.routePaths, r.Path) {
			s.routePaths = append(s.routePaths, r.Path)
		}
	}
}

// SetEngine makes the server ready: requests are served by e from now on.
// id names the model in the API ("" keeps Config.ModelID).
func (s *Server) SetEngine(e *engine.Engine, id string) {
	if id == "" {
		id = s.cfg.ModelID
	}
	if id == "" {
		id = "default"
	}
	b := newBackend(e, id)
	if s.audit != nil {
		go b.sha256() // a 13B file takes seconds: start before the first decision needs it
	}
	s.backend.Store(b)
	s.log.Info("model ready", "model", id)
}

// SetAML replaces the AML configuration while serving (a reload); a
// decision under way keeps the one it began with.
func (s *Server) SetAML(cfg *aml.Config) {
	s.amlCfg.Store(cfg)
}

// Serve answers requests on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if !s.track(ln) {
		return nil
	}
	return s.app.Listener(newLingerListener(ln, s.cfg.BodyLimit))
}

// track records a listener for shutdown to close; after shutdown it
// closes ln at once and reports false.
func (s *Server) track(ln net.Listener) bool {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.closed {
		ln.Close()
		return false
	}
	s.listeners = append(s.listeners, ln)
	return true
}

// ServeProbes answers /health, /ready, /ready/aml and (unless
// MetricsAuth) /metrics on ln, without TLS or keys, until Shutdown: a
// port for kubelet probes and scrapers when the API port asks for client
// certificates.
func (s *Server) ServeProbes(ln net.Listener) error {
	if !s.track(ln) {
		return nil
	}
	return s.probes.Listener(ln)
}

// Shutdown drains the server: from the call on, new requests get 503
// shutting_down (and /ready 503, so that a load balancer can tell
// draining from dead: the listener stays open), while those in flight
// finish until ctx is done; then they are cancelled, and waited for up to
// hard more. The listener closes once the requests are done and at least
// Config.DrainDelay has passed (bounded by ctx). It does not close the
// engine. Later calls return the first call's result.
func (s *Server) Shutdown(ctx context.Context, hard time.Duration) error {
	s.stopOnce.Do(func() { s.stopErr = s.shutdown(ctx, hard) })
	return s.stopErr
}

func (s *Server) shutdown(ctx context.Context, hard time.Duration) error {
	start := time.Now()
	// Under the lock: a request either began before (and is waited for)
	// or sees draining and is refused; none is added during the Wait.
	s.beginMu.Lock()
	s.draining.Store(true)
	s.beginMu.Unlock()
	finished := make(chan struct{})
	go func() { s.inflight.Wait(); close(finished) }()

	var err error
	select {
	case <-finished:
	case <-ctx.Done():
		s.log.Warn("shutdown grace period over; cancelling requests in flight")
		s.cancelAll()
		select {
		case <-finished:
		case <-time.After(hard):
			err = errors.New("shutting down: requests still in flight after cancellation")
		}
	}
	if wait := s.cfg.DrainDelay - time.Since(start); wait > 0 && err == nil {
		s.log.Info("draining: requests done; answering 503 until the drain delay ends", "left", wait.Round(time.Millisecond))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
	s.cancelAll()
	// fasthttp closes the listener, then waits for every connection to
	// close or go idle; one that was opened but never sent a request
	// counts as idle only after five seconds, and the process's exit
	// closes it anyway, so the wait is short.
	closeCtx, stop := context.WithTimeout(context.Background(), time.Second)
	defer stop()
	if cerr := s.app.ShutdownWithContext(closeCtx); cerr != nil && !errors.Is(cerr, context.DeadlineExceeded) && err == nil {
		err = cerr
	}
	// The probe port closes last: it answered 503 through the drain.
	if cerr := s.probes.ShutdownWithContext(closeCtx); cerr != nil && !errors.Is(cerr, context.DeadlineExceeded) && err == nil {
		err = cerr
	}
	// A Serve that began just before shutdown may have handed its
	// listener to fasthttp after fasthttp's close: closing it here ends
	// that Serve too (fasthttp returns on an accept error once stopped).
	s.lnMu.Lock()
	s.closed = true
	for _, ln := range s.listeners {
		ln.Close()
	}
	s.lnMu.Unlock()
	return err
}

// begin and done bracket a generation or decision, from its start to the
// end of its response (streams end after the handler returns). begin
// refuses (false) once shutdown has begun.
func (s *Server) begin() bool {
	s.beginMu.Lock()
	defer s.beginMu.Unlock()
	if s.draining.Load() {
		return false
	}
	s.inflight.Add(1)
	s.inflightN.Add(1)
	return true
}

func (s *Server) done() {
	s.inflightN.Add(-1)
	s.inflight.Done()
}

// Generating is the number of generations whose response is not yet
// complete.
func (s *Server) Generating() int { return int(s.inflightN.Load()) }

// handleError writes every error as an OpenAI error object.
func (s *Server) handleError(c *fiber.Ctx, err error) error {
	api, known := asAPIError(err)
	if !known {
		s.log.Error("request failed", "path", c.Path(), "err", err)
	}
	if api.RetryAfter > 0 {
		c.Set(fiber.HeaderRetryAfter, fmt.Sprint(api.RetryAfter))
	}
	if api.Status == fiber.StatusRequestEntityTooLarge || api.Status == fiber.StatusRequestHeaderFieldsTooLarge {
		// Refused unread: the client may still be sending it.
		markLinger(c.Context().Conn())
	}
	return c.Status(api.Status).JSON(api.body())
}

// asAPIError is what the client sees of err: itself, fiber's own errors
// translated, or (known false) a 500 without detail.
func asAPIError(err error) (api *APIError, known bool) {
	var fe *fiber.Error
	switch {
	case errors.As(err, &api):
		return api, true
	case errors.As(err, &fe):
		return fromFiber(fe), true
	}
	return &APIError{Status: fiber.StatusInternalServerError, Type: "server_error", Message: "internal error"}, false
}

// ready returns the default model's backend, or the error to answer
// while there is none.
func (s *Server) ready() (*backend, error) {
	if s.draining.Load() {
		return nil, errDraining
	}
	b := s.defaultBackend()
	if b == nil {
		return nil, errLoading
	}
	return b, nil
}

// health is liveness: 200 while the process serves HTTP at all, with
// what it is doing. A liveness probe must not kill a server that is
// loading a large model; readiness is /ready.
func (s *Server) health(c *fiber.Ctx) error {
	status := "ok"
	switch {
	case s.draining.Load():
		status = "shutting_down"
	case s.defaultBackend() == nil:
		status = "loading"
	}
	return c.JSON(fiber.Map{"status": status})
}

// readyz is readiness: 200 once the model is loaded and requests are
// accepted, 503 while loading or shutting down. The body also says how
// the AML audit log is ("ok", "unavailable", or "off" without one); the
// AML routes' own readiness, GET /ready/aml, is 503 while it fails, so
// that a balancer can keep chat on a replica whose audit disk is full.
func (s *Server) readyz(c *fiber.Ctx) error {
	audit := "off"
	if s.audit != nil {
		audit = "ok"
		if s.audit.Err() != nil {
			audit = "unavailable"
		}
	}
	body := fiber.Map{"audit": audit}
	b := s.defaultBackend()
	if reg := s.fleet.Load(); reg != nil {
		// each model's state, and the default's load progress
		var models []fiber.Map
		for _, st := range reg.Status() {
			m := fiber.Map{"id": st.ID, "state": st.State, "progress": st.Progress}
			if st.Err != "" {
				m["error"] = st.Err
			}
			models = append(models, m)
		}
		body["models"] = models
	}
	unready := func(status string) error {
		body["status"] = status
		return c.Status(fiber.StatusServiceUnavailable).JSON(body)
	}
	switch {
	case s.draining.Load():
		return unready("shutting_down")
	case b == nil:
		return unready("loading")
	case c.Route().Path == "/ready/aml" && audit == "unavailable":
		return unready("audit_unavailable")
	case c.Route().Path == "/ready/aml" && b.model.Info().Embeds():
		// an embedding model scores no AML case, however long one waits
		return unready("no_text_model")
	}
	body["status"] = "ready"
	return c.JSON(body)
}

type tenantKey struct{}

// tenant names the tenant of an authenticated request: the prompt-prefix
// cache shares prefixes only within a tenant. Without API keys every
// client is one tenant.
func (s *Server) tenant(c *fiber.Ctx) string {
	t, _ := c.Locals(tenantKey{}).(string)
	return t
}

// checkModel accepts a served model's id, or an empty one.
func (s *Server) checkModel(id string) *APIError {
	if id == "" {
		return nil
	}
	if reg := s.fleet.Load(); reg != nil {
		if slices.Contains(reg.IDs(), id) {
			return nil
		}
		return modelNotFound(id)
	}
	b := s.backend.Load()
	if b == nil || id == b.id {
		return nil
	}
	return modelNotFound(id)
}

func (s *Server) modelEntry(b *backend) Model {
	info := b.model.Info()
	opts := b.eng.Options()
	return Model{ID: b.id, Object: "model", Created: b.created, OwnedBy: "finserve",
		Meta: &ModelMeta{Architecture: info.Architecture, Params: info.Params, SizeBytes: info.SizeBytes,
			VocabSize: info.VocabSize, TrainContext: info.TrainContext, Context: opts.Context, Parallel: opts.Parallel,
			Embedding: info.Embedding, Pooling: info.Pooling}}
}

// listModels answers GET /v1/models: every model, with its state when
// the server serves several (unloaded ones too: they load on first use).
func (s *Server) listModels(c *fiber.Ctx) error {
	if reg := s.fleet.Load(); reg != nil {
		if s.draining.Load() {
			return errDraining
		}
		return c.JSON(ModelList{Object: "list", Data: s.fleetModels(c, reg)})
	}
	b, err := s.ready()
	if err != nil {
		return err
	}
	return c.JSON(ModelList{Object: "list", Data: []Model{s.modelEntry(b)}})
}

func (s *Server) getModel(c *fiber.Ctx) error {
	id := c.Params("+")
	if reg := s.fleet.Load(); reg != nil {
		if s.draining.Load() {
			return errDraining
		}
		for _, m := range s.fleetModels(c, reg) {
			if m.ID == id {
				return c.JSON(m)
			}
		}
		return modelNotFound(id)
	}
	b, err := s.ready()
	if err != nil {
		return err
	}
	if id != b.id {
		return modelNotFound(id)
	}
	return c.JSON(s.modelEntry(b))
}

// wantsStream tells the compression middleware to leave event streams
// alone: compressing them buffers tokens and adds a goroutine per stream.
func wantsStream(c *fiber.Ctx) bool {
	if c.Method() != fiber.MethodPost {
		return false
	}
	var probe struct {
		Stream bool `json:"stream"`
	}
	_ = json.Unmarshal(c.Body(), &probe)
	return probe.Stream
}

// refuseAmbiguousFraming answers 400 and closes the connection for a
// request that carries both Content-Length and Transfer-Encoding. fasthttp
// frames it by one of them; a proxy in front may have used the other, and
// the bytes left over would then be served as a second, smuggled request
// (RFC 9112 section 6.3 lets a server reject such a message, and it must
// close the connection after). The raw header block is read because
// fasthttp's parsed view keeps only one of the two.
func refuseAmbiguousFraming(c *fiber.Ctx) error {
	var cl, te bool
	for _, line := range bytes.Split(c.Request().Header.RawHeaders(), []byte("\n")) {
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		cl = cl || bytes.EqualFold(name, []byte(fiber.HeaderContentLength))
		te = te || bytes.EqualFold(name, []byte(fiber.HeaderTransferEncoding))
	}
	if cl && te {
		c.Context().SetConnectionClose()
		return badRequest("", "the request has both Content-Length and Transfer-Encoding; send one")
	}
	return c.Next()
}

// SlotView is one sequence slot in GET /slots.
type SlotView struct {
	ID    int    `json:"id"`
	State string `json:"state"` // "idle" or "busy"
	*WorkView
}

// WorkView is a request the engine holds, in GET /slots.
type WorkView struct {
	RequestID    string `json:"request_id"`
	Kind         string `json:"kind"` // generate or score
	Tier         string `json:"tier"`
	Tenant       string `json:"tenant,omitempty"`
	PromptTokens int    `json:"prompt_tokens"`
	CachedTokens int    `json:"cached_tokens"`
	Generated    int    `json:"generated_tokens"`
	Preemptions  int    `json:"preemptions"`
	AgeMS        int64  `json:"age_ms"`
}

// SlotsResponse is GET /slots: what each sequence slot is doing and what
// waits for one (llama-server has a /slots of its own shape).
type SlotsResponse struct {
	Object  string         `json:"object"` // "slots"
	Slots   []SlotView     `json:"slots"`
	Waiting []WorkView     `json:"waiting"`
	Queues  map[string]int `json:"queues"` // waiting requests by tier
}

// slots answers GET /slots.
func (s *Server) slots(c *fiber.Ctx) error {
	b, err := s.ready()
	if err != nil {
		return err
	}
	st, err := b.eng.Stats(c.UserContext())
	if err != nil {
		return fromEngine(err)
	}
	out := SlotsResponse{Object: "slots", Slots: make([]SlotView, st.Slots), Waiting: []WorkView{}, Queues: map[string]int{}}
	for i := range out.Slots {
		out.Slots[i] = SlotView{ID: i, State: "idle"}
	}
	for t, ts := range st.Tiers {
		out.Queues[engine.Tier(t).String()] = ts.Waiting
	}
	for _, w := range st.Work {
		v := &WorkView{RequestID: w.ID, Kind: w.Kind, Tier: w.Tier.String(), Tenant: w.Tenant, PromptTokens: w.PromptTokens,
			CachedTokens: w.CachedTokens, Generated: w.Generated, Preemptions: w.Preemptions, AgeMS: w.Age.Milliseconds()}
		if w.State == "waiting" {
			out.Waiting = append(out.Waiting, *v)
		}
		for _, slot := range w.Slots {
			if slot >= 0 && slot < len(out.Slots) {
				out.Slots[slot] = SlotView{ID: slot, State: "busy", WorkView: v}
			}
		}
	}
	return c.JSON(out)
}
