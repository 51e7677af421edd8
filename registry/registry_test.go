package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

var tinyPath string

func TestMain(m *testing.M) {
	engine.SetLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))
	dir, err := os.MkdirTemp("", "finserve-registry-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tinyPath = filepath.Join(dir, "tiny.gguf")
	if err := models.Generate(context.Background(), tinyPath, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// spec is a tiny model counted as 100 bytes.
func spec(id string) Spec {
	return Spec{ID: id, Path: tinyPath, Bytes: 100, Model: engine.ModelOptions{DisableRepack: true},
		Engine: engine.Options{Parallel: 2, Context: 128, Threads: 1}}
}

// fakeTimers records keep-alives for the test to fire.
type fakeTimers struct {
	mu     sync.Mutex
	fns    []func()
	active []bool
}

func (f *fakeTimers) afterFunc(_ time.Duration, fn func()) func() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := len(f.fns)
	f.fns, f.active = append(f.fns, fn), append(f.active, true)
	return func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		was := f.active[i]
		f.active[i] = false
		return was
	}
}

// fire runs the keep-alives still armed.
func (f *fakeTimers) fire() int {
	f.mu.Lock()
	var run []func()
	for i, fn := range f.fns {
		if f.active[i] {
			f.active[i] = false
			run = append(run, fn)
		}
	}
	f.mu.Unlock()
	for _, fn := range run {
		fn()
	}
	return len(run)
}

func newRegistry(t *testing.T, specs []Spec, o Options) (*Registry, *fakeTimers) {
	t.Helper()
	ft := &fakeTimers{}
	o.AfterFunc = ft.afterFunc
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	r, err := New(specs, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r, ft
}

// use acquires id, generates a few tokens on it and releases it.
func use(t *testing.T, r *Registry, id string) {
	t.Helper()
	l, err := r.Acquire(context.Background(), id)
	if err != nil {
		t.Fatalf("acquire %s: %v", id, err)
	}
	defer l.Release()
	generate(t, l)
}

func generate(t *testing.T, l *Lease) {
	t.Helper()
	toks, err := l.Model.Tokenize("hello", true, false)
	if err != nil {
		t.Fatal(err)
	}
	st, err := l.Engine.Generate(context.Background(), engine.Request{Prompt: toks, MaxTokens: 3, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Done {
			if ev.Err != nil || ev.Usage.CompletionTokens != 3 {
				t.Fatalf("%s: %+v", l.ID, ev)
			}
			return
		}
	}
}

// settle waits until no load or unload is under way.
func settle(r *Registry) { r.wg.Wait() }

func states(r *Registry) map[string]State {
	out := map[string]State{}
	for _, s := range r.Status() {
		out[s.ID] = s.State
	}
	return out
}

// TestLRUUnderBudget: with room for two of three models, using the third
// unloads the least recently used idle one, never one in use.
func TestLRUUnderBudget(t *testing.T) {
	r, _ := newRegistry(t, []Spec{spec("a"), spec("b"), spec("c")}, Options{Budget: 200})
	use(t, r, "a")
	use(t, r, "b")
	use(t, r, "c") // a is the least recently used
	settle(r)
	want := map[string]State{"a": Unloaded, "b": Ready, "c": Ready}
	if got := states(r); !mapsEqual(got, want) {
		t.Fatalf("after a, b, c: %v, want %v", got, want)
	}
	held, err := r.Acquire(context.Background(), "b") // b is now older than c, but in use
	if err != nil {
		t.Fatal(err)
	}
	use(t, r, "a")
	settle(r)
	want = map[string]State{"a": Ready, "b": Ready, "c": Unloaded}
	if got := states(r); !mapsEqual(got, want) {
		t.Fatalf("a again while b is held: %v, want %v", got, want)
	}
	generate(t, held) // the held model served throughout
	held.Release()
}

// TestBudgetWaitsForRelease: a model that fits only when a model in use
// is released waits for that release, or fails when its context ends.
func TestBudgetWaitsForRelease(t *testing.T) {
	r, _ := newRegistry(t, []Spec{spec("a"), spec("b")}, Options{Budget: 100})
	held, err := r.Acquire(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var over *OverBudgetError
	if _, err := r.Acquire(ctx, "b"); !errors.As(err, &over) || !errors.Is(err, context.Canceled) || over.ID != "b" {
		t.Fatalf("b while a is held, context ended: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := r.Acquire(context.Background(), "b")
		if err == nil {
			generate(t, l)
			l.Release()
		}
		got <- err
	}()
	held.Release()
	if err := <-got; err != nil {
		t.Fatalf("b after a's release: %v", err)
	}
	settle(r)
	if s := states(r); s["a"] != Unloaded || s["b"] != Ready {
		t.Fatalf("states %v", s)
	}
}

// TestDeviceBudgets: each GPU's budget is kept apart from the host's:
// two models on different GPUs load side by side, a third on a full GPU
// unloads the idle model on that GPU, not the other.
func TestDeviceBudgets(t *testing.T) {
	a, b, c := spec("a"), spec("b"), spec("c")
	a.Devices = map[string]int64{"CUDA0": 60}
	b.Devices = map[string]int64{"CUDA1": 60}
	c.Devices = map[string]int64{"CUDA0": 50, "CUDA1": 10}
	r, _ := newRegistry(t, []Spec{a, b, c}, Options{Budget: 1000, DeviceBudgets: map[string]int64{"CUDA0": 100, "CUDA1": 80}})
	use(t, r, "b")
	use(t, r, "a")
	use(t, r, "c") // CUDA0: a 60 + c 50 > 100: a goes, though b was used before it
	settle(r)
	want := map[string]State{"a": Unloaded, "b": Ready, "c": Ready}
	if got := states(r); !mapsEqual(got, want) {
		t.Fatalf("%v, want %v", got, want)
	}
	big := spec("big")
	big.Devices = map[string]int64{"CUDA1": 81}
	if _, err := New([]Spec{big}, Options{DeviceBudgets: map[string]int64{"CUDA1": 80}}); err == nil {
		t.Error("a model bigger than a GPU's whole budget was accepted")
	}
}

// TestKeepAlive: an idle model unloads when its keep-alive fires, unless
// it was used again since; a negative keep-alive unloads on release; 0
// keeps it.
func TestKeepAlive(t *testing.T) {
	short, never, now := spec("short"), spec("never"), spec("now")
	short.KeepAlive, never.KeepAlive, now.KeepAlive = 5*time.Minute, 0, -1
	r, timers := newRegistry(t, []Spec{short, never, now}, Options{})
	use(t, r, "short")
	use(t, r, "never")
	use(t, r, "now")
	use(t, r, "short") // stops the first keep-alive, arms a second
	settle(r)
	if s := states(r); s["short"] != Ready || s["never"] != Ready || s["now"] != Unloaded {
		t.Fatalf("before the keep-alive: %v", s)
	}
	if n := timers.fire(); n != 1 {
		t.Fatalf("%d keep-alives armed, want short's latest", n)
	}
	settle(r)
	if s := states(r); s["short"] != Unloaded || s["never"] != Ready {
		t.Fatalf("after the keep-alive: %v", s)
	}
	use(t, r, "short") // loads again on use
}

// TestFailedLoad: a model that fails to load answers with its error (and
// again only after RetryFailed); the others load and serve.
func TestFailedLoad(t *testing.T) {
	bad := spec("bad")
	bad.Path = filepath.Join(t.TempDir(), "missing.gguf")
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	loads := 0
	loader := func(ctx context.Context, s Spec, p func(float32)) (*Instance, error) {
		if s.ID == "bad" {
			loads++
		}
		return Load(ctx, s, p)
	}
	r, _ := newRegistry(t, []Spec{spec("good"), bad}, Options{Now: clock, Loader: loader, RetryFailed: time.Minute})
	r.Preload()
	for range 2 {
		var le *LoadError
		if _, err := r.Acquire(context.Background(), "bad"); !errors.As(err, &le) || le.ID != "bad" {
			t.Fatalf("bad model: %v", err)
		}
	}
	if loads != 1 {
		t.Fatalf("%d loads within RetryFailed, want 1", loads)
	}
	use(t, r, "good")
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if _, err := r.Acquire(context.Background(), "bad"); err == nil || loads != 2 {
		t.Fatalf("after RetryFailed: %v, %d loads", err, loads)
	}
	st := r.Status()
	if st[1].State != Failed || st[1].Err == "" || st[0].State != Ready {
		t.Fatalf("status %+v", st)
	}
	if _, err := r.Acquire(context.Background(), "nope"); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("unknown model: %v", err)
	}
}

// TestConcurrentUse: clients of two models under a budget of one share
// it in turn, every request served (go test -race).
func TestConcurrentUse(t *testing.T) {
	r, _ := newRegistry(t, []Spec{spec("a"), spec("b")}, Options{Budget: 100})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 3 {
				use(t, r, []string{"a", "b"}[i%2])
			}
		}()
	}
	wg.Wait()
	settle(r)
	loaded := 0
	for _, s := range r.Status() {
		if s.Active != 0 {
			t.Errorf("%s: %d leases left", s.ID, s.Active)
		}
		if s.State == Ready {
			loaded++
		}
	}
	if loaded != 1 {
		t.Errorf("%d models loaded under a budget of one", loaded)
	}
}

// TestNewRefuses: specs that cannot be served are refused at once.
func TestNewRefuses(t *testing.T) {
	big := spec("big")
	big.Bytes = 1000
	for _, c := range []struct {
		name  string
		specs []Spec
	}{
		{"none", nil},
		{"no id", []Spec{{Path: tinyPath}}},
		{"same id twice", []Spec{spec("a"), spec("a")}},
		{"bigger than the budget", []Spec{spec("a"), big}},
	} {
		if _, err := New(c.specs, Options{Budget: 500}); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}

func mapsEqual(a, b map[string]State) bool {
	if len(a) != len(b) {
		return false
	}
	keys := make([]string, 0, len(a))
	for k := range a {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if a[k] != b[k] {
			return false
		}
	}
	return true
}
