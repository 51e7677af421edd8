// Package registry keeps the models a server serves: each is loaded on
// first use (or at start), shared by the requests that use it, and
// unloaded when it has been idle for its keep-alive, or when another model
// needs its memory (least recently used first) under the memory budget.
// One model's failure to load is that model's error; the others serve on.
//
// The registry's state is guarded by one mutex; loads and unloads run in
// goroutines of their own, and every state change wakes whoever waits for
// one (a closed channel, replaced at each change).
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/finserve/finserve/engine"
)

// Spec is one served model.
type Spec struct {
	// ID names the model in the API; Path is its GGUF file.
	ID, Path string
	Model    engine.ModelOptions
	Engine   engine.Options
	// KeepAlive is how long the model stays loaded once idle (no request
	// using it): 0 for ever (the default, until the budget needs its
	// memory), negative to unload it as soon as it is idle.
	KeepAlive time.Duration
	// Preload loads the model at start rather than on first use.
	Preload bool
	// Bytes is the host memory the model takes loaded (weights, KV cache,
	// buffers), counted against Options.Budget; Devices what it takes on
	// each GPU, by device name, counted against Options.DeviceBudgets.
	Bytes   int64
	Devices map[string]int64
}

// State is where a model is in its life.
type State string

// The states of a model.
const (
	Unloaded  State = "unloaded"
	Loading   State = "loading"
	Ready     State = "ready"
	Unloading State = "unloading"
	Failed    State = "failed"
)

// Status describes a model for /v1/models and /ready.
type Status struct {
	ID, Path string
	State    State
	Progress float32 // of a load under way, 0 to 1
	Err      string  // why the last load failed
	Bytes    int64
	Active   int       // requests using it now
	Waiting  int       // requests waiting for it to load, or for room
	LastUsed time.Time // zero if never
	Info     engine.ModelInfo
	Options  engine.Options // with defaults filled in, once loaded
}

// Instance is a loaded model and the engine serving it.
type Instance struct {
	Model  *engine.Model
	Engine *engine.Engine
}

// Loader loads a spec; progress is called as the file is read.
type Loader func(ctx context.Context, s Spec, progress func(float32)) (*Instance, error)

// Load is the production Loader: engine.LoadModel, then engine.New.
func Load(ctx context.Context, s Spec, progress func(float32)) (*Instance, error) {
	mo := s.Model
	mo.Progress = progress
	m, err := engine.LoadModel(ctx, s.Path, mo)
	if err != nil {
		return nil, err
	}
	e, err := engine.New(m, s.Engine)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("starting engine for %s: %w", s.ID, err)
	}
	return &Instance{Model: m, Engine: e}, nil
}

// Options configure a Registry.
type Options struct {
	// Budget bounds the Bytes of the models loaded (and loading) at once;
	// 0 for none. DeviceBudgets bounds their Devices bytes on each GPU
	// (a device without a budget is not bounded).
	Budget        int64
	DeviceBudgets map[string]int64
	// RetryFailed is how long a failed load is answered with its error
	// before a request tries again (default 30 s).
	RetryFailed time.Duration
	Loader      Loader // default Load
	Logger      *slog.Logger
	Now         func() time.Time // default time.Now
	// AfterFunc runs f after d, unless the returned stop is called first
	// (default time.AfterFunc); tests fire keep-alives by hand.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
}

// Errors of Acquire.
var (
	ErrUnknownModel = errors.New("no such model")
	ErrClosed       = errors.New("the registry is closed")
)

// LoadError is a model's failed load.
type LoadError struct {
	ID  string
	Err error
}

func (e *LoadError) Error() string { return fmt.Sprintf("model %s failed to load: %v", e.ID, e.Err) }
func (e *LoadError) Unwrap() error { return e.Err }

// OverBudgetError says a model cannot be loaded beside the models in use:
// the budget holds it, but not now.
type OverBudgetError struct {
	ID           string
	Need, Budget int64
}

func (e *OverBudgetError) Error() string {
	return fmt.Sprintf("model %s needs %d bytes and the memory budget of %d bytes is taken by models in use", e.ID, e.Need, e.Budget)
}

type entry struct {
	spec     Spec
	state    State
	progress float32
	err      error
	failedAt time.Time
	inst     *Instance
	active   int
	waiting  int // Acquire calls waiting for it: it is not unloaded under them
	lastUsed time.Time
	idle     func() bool // stops the keep-alive of an idle model
	idleNo   uint64      // which keep-alive is current
	cancel   context.CancelFunc
}

// Registry serves a set of models within a memory budget.
type Registry struct {
	opts    Options
	log     *slog.Logger
	mu      sync.Mutex
	entries []*entry // in the order given: the first is the default
	byID    map[string]*entry
	changed chan struct{} // closed at every state change
	// observed is closed at every change Status shows, waiters counted
	// too (Changed); changed leaves those out, as waiters wait on it.
	observed chan struct{}
	closed   bool
	wg       sync.WaitGroup // loads and unloads under way
}

// New makes a registry of specs (the first is the default model); nothing
// is loaded until Preload or Acquire.
func New(specs []Spec, o Options) (*Registry, error) {
	if len(specs) == 0 {
		return nil, errors.New("registry: no model to serve")
	}
	if o.Loader == nil {
		o.Loader = Load
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.RetryFailed <= 0 {
		o.RetryFailed = 30 * time.Second
	}
	if o.AfterFunc == nil {
		o.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	r := &Registry{opts: o, log: o.Logger, byID: map[string]*entry{}, changed: make(chan struct{}), observed: make(chan struct{})}
	for _, s := range specs {
		switch {
		case s.ID == "":
			return nil, fmt.Errorf("registry: the model %s has no id", s.Path)
		case r.byID[s.ID] != nil:
			return nil, fmt.Errorf("registry: two models named %q", s.ID)
		case o.Budget > 0 && s.Bytes > o.Budget:
			return nil, fmt.Errorf("registry: the model %s needs %d bytes, more than the whole memory budget of %d", s.ID, s.Bytes, o.Budget)
		}
		for d, n := range s.Devices {
			if b, ok := o.DeviceBudgets[d]; ok && n > b {
				return nil, fmt.Errorf("registry: the model %s needs %d bytes on %s, more than its whole budget of %d", s.ID, n, d, b)
			}
		}
		e := &entry{spec: s, state: Unloaded}
		r.entries = append(r.entries, e)
		r.byID[s.ID] = e
	}
	return r, nil
}

// Default is the id of the model requests that name none are served by.
func (r *Registry) Default() string { return r.entries[0].spec.ID }

// Preload starts loading the models marked Preload (the default model
// always is), as the budget allows, and returns at once.
func (r *Registry) Preload() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range r.entries {
		if (i == 0 || e.spec.Preload) && e.state == Unloaded && r.room(e.spec) {
			r.startLoad(e)
		}
	}
}

// Lease is a request's use of a loaded model; Release ends it.
type Lease struct {
	*Instance
	ID   string
	r    *Registry
	e    *entry
	once sync.Once
}

// Release ends the lease: the model may be unloaded once no lease holds it.
func (l *Lease) Release() { l.once.Do(func() { l.r.release(l.e) }) }

// Acquire returns a lease on model id ("" the default), loading it first
// if need be, and making room under the budget by unloading idle models,
// least recently used first. It waits while the model loads, or while
// the budget is held by models in use, until ctx ends.
func (r *Registry) Acquire(ctx context.Context, id string) (*Lease, error) {
	if id == "" {
		id = r.Default()
	}
	r.mu.Lock()
	e := r.byID[id]
	r.mu.Unlock()
	if e == nil {
		return nil, ErrUnknownModel
	}
	for {
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			return nil, ErrClosed
		}
		switch e.state {
		case Ready:
			e.active++
			e.lastUsed = r.opts.Now()
			r.stopIdle(e)
			r.mu.Unlock()
			return &Lease{Instance: e.inst, ID: id, r: r, e: e}, nil
		case Failed:
			if r.opts.Now().Sub(e.failedAt) < r.opts.RetryFailed {
				err := &LoadError{ID: id, Err: e.err}
				r.mu.Unlock()
				return nil, err
			}
			e.state = Unloaded
			r.mu.Unlock()
			continue
		case Unloaded:
			if r.makeRoom(e) {
				r.startLoad(e)
			}
		}
		wait := r.changed
		e.waiting++
		r.notify()
		r.mu.Unlock()
		select {
		case <-wait:
			r.mu.Lock()
			e.waiting--
			r.notify()
			r.mu.Unlock()
		case <-ctx.Done():
			r.mu.Lock()
			e.waiting--
			r.notify()
			waitedForRoom := e.state == Unloaded
			r.mu.Unlock()
			if waitedForRoom {
				return nil, fmt.Errorf("%w: %w", ctx.Err(), &OverBudgetError{ID: id, Need: e.spec.Bytes, Budget: r.opts.Budget})
			}
			return nil, ctx.Err()
		}
	}
}

// used is the budget taken, on the host ("") and each device: by models
// loaded or loading, and unless afterUnloads by those unloading.
func (r *Registry) used(afterUnloads bool) map[string]int64 {
	n := map[string]int64{}
	for _, e := range r.entries {
		if e.state == Ready || e.state == Loading || e.state == Unloading && !afterUnloads {
			n[""] += e.spec.Bytes
			for d, b := range e.spec.Devices {
				n[d] += b
			}
		}
	}
	return n
}

// over lists where s does not fit beside the usage used: "" for the
// host, else device names.
func (r *Registry) over(s Spec, used map[string]int64) []string {
	var out []string
	if r.opts.Budget > 0 && used[""]+s.Bytes > r.opts.Budget {
		out = append(out, "")
	}
	for d, b := range s.Devices {
		if budget, ok := r.opts.DeviceBudgets[d]; ok && used[d]+b > budget {
			out = append(out, d)
		}
	}
	return out
}

// fits says whether s fits beside the usage used.
func (r *Registry) fits(s Spec, used map[string]int64) bool { return len(r.over(s, used)) == 0 }

func (r *Registry) room(s Spec) bool { return r.fits(s, r.used(false)) }

// makeRoom unloads idle models, least recently used first, until e will
// fit the budget; it reports whether e fits now. Unloads free their share
// when they end (a state change), and e is tried again then.
func (r *Registry) makeRoom(e *entry) bool {
	if r.room(e.spec) {
		return true
	}
	for {
		over := r.over(e.spec, r.used(true))
		if len(over) == 0 {
			break
		}
		// the least recently used idle model that frees memory where
		// it is short
		var victim *entry
		for _, o := range r.entries {
			frees := false
			for _, where := range over {
				frees = frees || where == "" && o.spec.Bytes > 0 || o.spec.Devices[where] > 0
			}
			if frees && o != e && o.state == Ready && o.active == 0 && o.waiting == 0 && (victim == nil || o.lastUsed.Before(victim.lastUsed)) {
				victim = o
			}
		}
		if victim == nil {
			return false
		}
		r.log.Info("unloading model for another under the memory budget", "model", victim.spec.ID, "for", e.spec.ID,
			"budget", r.opts.Budget, "used", r.used(false)[""], "need", e.spec.Bytes)
		r.startUnload(victim)
	}
	return false
}

// startLoad loads e in a goroutine.
func (r *Registry) startLoad(e *entry) {
	e.state, e.progress, e.err = Loading, 0, nil
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	r.broadcast()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cancel()
		start := r.opts.Now()
		r.log.Info("loading model", "model", e.spec.ID, "path", e.spec.Path, "bytes", e.spec.Bytes)
		inst, err := r.opts.Loader(ctx, e.spec, func(p float32) {
			r.mu.Lock()
			e.progress = p
			r.mu.Unlock()
		})
		r.mu.Lock()
		defer r.mu.Unlock()
		e.cancel = nil
		if err != nil {
			e.state, e.err, e.failedAt = Failed, err, r.opts.Now()
			r.log.Error("model failed to load; the others serve on", "model", e.spec.ID, "err", err)
			r.broadcast()
			return
		}
		if r.closed {
			r.free(inst)
			e.state = Unloaded
			r.broadcast()
			return
		}
		e.state, e.inst, e.progress = Ready, inst, 1
		e.lastUsed = r.opts.Now()
		r.log.Info("model ready", "model", e.spec.ID, "seconds", r.opts.Now().Sub(start).Seconds())
		if e.waiting == 0 && e.spec.KeepAlive > 0 {
			r.idleFrom(e) // preloaded: idle from now (keep-alive 0 waits for a first use)
		}
		r.broadcast()
	}()
}

// startUnload closes e's engine and model in a goroutine; its memory
// counts against the budget until they are closed.
func (r *Registry) startUnload(e *entry) {
	inst := e.inst
	e.state, e.inst = Unloading, nil
	r.stopIdle(e)
	r.broadcast()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.free(inst)
		r.mu.Lock()
		e.state = Unloaded
		r.log.Info("model unloaded", "model", e.spec.ID)
		r.broadcast()
		r.mu.Unlock()
	}()
}

func (r *Registry) free(inst *Instance) {
	inst.Engine.Close()
	inst.Model.Close()
}

// release ends a lease on e.
func (r *Registry) release(e *entry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e.active--
	e.lastUsed = r.opts.Now()
	r.idleFrom(e)
	r.broadcast() // an idle model may make room for a waiting one
}

// idleFrom starts e's keep-alive when it is loaded and idle.
func (r *Registry) idleFrom(e *entry) {
	ka := e.spec.KeepAlive
	if e.state != Ready || e.active > 0 || ka == 0 || r.closed {
		return
	}
	if ka < 0 {
		r.startUnload(e)
		return
	}
	r.stopIdle(e)
	e.idleNo++
	no := e.idleNo
	e.idle = r.opts.AfterFunc(ka, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		if e.idleNo == no && e.idle != nil && e.state == Ready && e.active == 0 {
			e.idle = nil
			r.log.Info("unloading idle model", "model", e.spec.ID, "keep_alive", ka)
			r.startUnload(e)
		}
	})
}

// stopIdle stops e's keep-alive, if it runs.
func (r *Registry) stopIdle(e *entry) {
	if e.idle != nil {
		e.idle()
		e.idle = nil
	}
}

func (r *Registry) broadcast() {
	close(r.changed)
	r.changed = make(chan struct{})
	r.notify()
}

// notify wakes whoever watches Status (Changed).
func (r *Registry) notify() {
	close(r.observed)
	r.observed = make(chan struct{})
}

// Changed returns a channel closed at the next change of what Status
// shows, for watching the registry without polling it.
func (r *Registry) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.observed
}

// Status describes every model, in the order given.
func (r *Registry) Status() []Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Status, len(r.entries))
	for i, e := range r.entries {
		s := Status{ID: e.spec.ID, Path: e.spec.Path, State: e.state, Progress: e.progress, Bytes: e.spec.Bytes,
			Active: e.active, Waiting: e.waiting, LastUsed: e.lastUsed}
		if e.err != nil {
			s.Err = e.err.Error()
		}
		if e.inst != nil {
			s.Info, s.Options = e.inst.Model.Info(), e.inst.Engine.Options()
		}
		out[i] = s
	}
	return out
}

// Loaded returns model id's instance while it is loaded (nil
// otherwise), for stats and metrics: its engine may close right after,
// so use it for reads that tolerate engine.ErrStopped.
func (r *Registry) Loaded(id string) *Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.byID[id]; e != nil {
		return e.inst
	}
	return nil
}

// IDs are the model ids, the default first.
func (r *Registry) IDs() []string {
	ids := make([]string, len(r.entries))
	for i, e := range r.entries {
		ids[i] = e.spec.ID
	}
	return ids
}

// Close cancels loads under way, unloads every model (requests still
// running end with engine.ErrStopped) and waits for it all.
func (r *Registry) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	for _, e := range r.entries {
		switch {
		case e.cancel != nil:
			e.cancel()
		case e.state == Ready:
			r.startUnload(e)
		}
	}
	r.broadcast()
	r.mu.Unlock()
	r.wg.Wait()
}
