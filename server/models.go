package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/registry"
)

// Several models: with SetModels the server serves a registry's models,
// each request by the one its "model" names (the first when it names
// none), loaded on first use; without it, the one engine SetEngine gave.

// loadWait bounds how long a request waits for its model to load, or for
// room under the memory budget, before a 503.
const loadWait = 5 * time.Minute

// SetModels serves the models of r from now on, instead of one engine.
func (s *Server) SetModels(r *registry.Registry) {
	s.fleet.Store(r)
}

// backendOf is the backend of a registry model's instance: one per load,
// so that the file is hashed once per load for the audit trail.
func (s *Server) backendOf(id string, inst *registry.Instance) *backend {
	s.fleetMu.Lock()
	defer s.fleetMu.Unlock()
	if b := s.fleetBackends[id]; b != nil && b.eng == inst.Engine {
		return b
	}
	b := newBackend(inst.Engine, id)
	if s.audit != nil {
		go b.sha256()
	}
	if s.fleetBackends == nil {
		s.fleetBackends = map[string]*backend{}
	}
	s.fleetBackends[id] = b
	return b
}

// acquire resolves a request's model id ("" the default) to the backend
// that serves it, loading the model if need be; release ends the
// request's use of it (the registry may unload it after). text asks for a
// text-generation model; otherwise an embedding model is wanted. A key
// limited to some models may use no other (403 model_not_allowed).
func (s *Server) acquire(c *fiber.Ctx, id string, text bool) (b *backend, release func(), err error) {
	if s.draining.Load() {
		return nil, nil, errDraining
	}
	release = func() {}
	if reg := s.fleet.Load(); reg != nil {
		if id == "" {
			id = reg.Default()
		}
		if !mayUse(c, id) {
			return nil, nil, modelNotAllowed(id)
		}
		ctx, cancel := context.WithTimeout(s.base, loadWait)
		defer cancel()
		// a client that leaves while its model loads stops waiting
		stopWatch := s.watchClient(c.Context().Conn(), cancel)
		lease, err := reg.Acquire(ctx, id)
		stopWatch()
		if err != nil {
			return nil, nil, fleetError(id, err)
		}
		b, release = s.backendOf(lease.ID, lease.Instance), lease.Release
	} else {
		if b = s.backend.Load(); b == nil {
			return nil, nil, errLoading
		}
		if id != "" && id != b.id {
			return nil, nil, modelNotFound(id)
		}
		if !mayUse(c, b.id) {
			return nil, nil, modelNotAllowed(b.id)
		}
	}
	embeds := b.model.Info().Embeds()
	switch {
	case text && embeds:
		release()
		return nil, nil, &APIError{Status: fiber.StatusBadRequest, Type: "invalid_request_error", Param: "model", Code: "model_not_supported",
			Message: fmt.Sprintf("the model %q is an embedding model and generates no text; use /v1/embeddings", b.id)}
	case !text && !embeds:
		release()
		return nil, nil, &APIError{Status: fiber.StatusBadRequest, Type: "invalid_request_error", Param: "model", Code: "model_not_supported",
			Message: fmt.Sprintf("the model %q is a text-generation model and cannot produce embeddings; serve an embedding model for /v1/embeddings", b.id)}
	}
	return b, release, nil
}

func modelNotAllowed(id string) *APIError {
	return &APIError{Status: http.StatusForbidden, Type: "invalid_request_error", Param: "model", Code: "model_not_allowed",
		Message: fmt.Sprintf("this API key may not use the model %q", id)}
}

// fleetError is what a client sees when the registry cannot give it its
// model.
func fleetError(id string, err error) *APIError {
	var load *registry.LoadError
	var over *registry.OverBudgetError
	switch {
	case errors.Is(err, registry.ErrUnknownModel):
		return modelNotFound(id)
	case errors.As(err, &load):
		return &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Param: "model", Code: "model_unavailable",
			Message: fmt.Sprintf("the model %q failed to load (%v); the other models serve on", load.ID, load.Err), RetryAfter: 30}
	case errors.As(err, &over):
		return &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Param: "model", Code: "model_busy",
			Message: fmt.Sprintf("the model %q waited %s for memory that models in use hold; retry later", over.ID, loadWait), RetryAfter: 10}
	case errors.Is(err, registry.ErrClosed):
		return errDraining
	case errors.Is(err, context.DeadlineExceeded):
		return &APIError{Status: http.StatusServiceUnavailable, Type: "server_error", Param: "model", Code: "model_loading",
			Message: fmt.Sprintf("the model %q is still loading; retry later", id), RetryAfter: 10}
	}
	return errDraining // the server's base context ended: it is shutting down
}

// defaultBackend is the backend of the default model while it is loaded,
// for what reports on the server as a whole (metrics, /slots, tiers).
func (s *Server) defaultBackend() *backend {
	reg := s.fleet.Load()
	if reg == nil {
		return s.backend.Load()
	}
	inst := reg.Loaded(reg.Default())
	if inst == nil {
		return nil
	}
	return s.backendOf(reg.Default(), inst)
}

// ModelStatus is finserve's extension to a /v1/models entry when the
// server serves several models: where the model is in its life.
type ModelStatus struct {
	State    string  `json:"state"` // unloaded, loading, ready, unloading, failed
	Progress float32 `json:"progress"`
	Error    string  `json:"error,omitempty"`
	Bytes    int64   `json:"memory_bytes"`
	Active   int     `json:"active_requests"`
	Waiting  int     `json:"waiting_requests"`
}

// fleetModels lists the registry's models the request's key may use,
// for /v1/models.
func (s *Server) fleetModels(c *fiber.Ctx, reg *registry.Registry) []Model {
	var out []Model
	for _, st := range reg.Status() {
		if !mayUse(c, st.ID) {
			continue
		}
		m := Model{ID: st.ID, Object: "model", OwnedBy: "finserve",
			Status: &ModelStatus{State: string(st.State), Progress: st.Progress, Error: st.Err, Bytes: st.Bytes, Active: st.Active,
				Waiting: st.Waiting}}
		if st.State == registry.Ready {
			i, o := st.Info, st.Options
			m.Meta = &ModelMeta{Architecture: i.Architecture, Params: i.Params, SizeBytes: i.SizeBytes, VocabSize: i.VocabSize,
				TrainContext: i.TrainContext, Context: o.Context, Parallel: o.Parallel, Embedding: i.Embedding, Pooling: i.Pooling}
		}
		out = append(out, m)
	}
	return out
}

// newBackend is the backend of engine e, named id.
func newBackend(e *engine.Engine, id string) *backend {
	path := e.Model().Info().Path
	return &backend{eng: e, model: e.Model(), id: id, created: time.Now().Unix(),
		sha256: sync.OnceValues(func() (string, error) { return hashFile(path) })}
}
