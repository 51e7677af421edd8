package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// tiny is a random-weight llama model generated for this test run; its
// vocabulary and ChatML template are real, its output gibberish.
var tiny *engine.Model

// tinyUser is tiny with its turn markers typed user-defined instead of
// control tokens, as gpt-oss types its own.
var tinyUser *engine.Model

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	level := slog.LevelWarn
	if os.Getenv("FINSERVE_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	engine.SetLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	// The SDK reads OPENAI_* variables; tests must not depend on them.
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "OPENAI_") {
			os.Unsetenv(k)
		}
	}
	dir, err := os.MkdirTemp("", "finserve-server-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "tiny.gguf")
	opts := models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 11}
	if err := models.Generate(context.Background(), path, opts); err != nil {
		fmt.Fprintln(os.Stderr, "generating test model:", err)
		return 1
	}
	if tiny, err = engine.LoadModel(context.Background(), path, engine.ModelOptions{DisableRepack: true}); err != nil {
		fmt.Fprintln(os.Stderr, "loading test model:", err)
		return 1
	}
	defer tiny.Close()
	userPath := filepath.Join(dir, "tiny-user-markers.gguf")
	opts.UserDefinedMarkers = true
	if err := models.Generate(context.Background(), userPath, opts); err != nil {
		fmt.Fprintln(os.Stderr, "generating test model:", err)
		return 1
	}
	if tinyUser, err = engine.LoadModel(context.Background(), userPath, engine.ModelOptions{DisableRepack: true}); err != nil {
		fmt.Fprintln(os.Stderr, "loading test model:", err)
		return 1
	}
	defer tinyUser.Close()
	return m.Run()
}

// testServer is a real server on a loopback port over a real engine.
type testServer struct {
	url string // base URL, ending in /v1
	srv *Server
	eng *engine.Engine
}

// startServer serves the tiny model; zero options get test defaults.
func startServer(t testing.TB, cfg Config, o engine.Options) *testServer {
	t.Helper()
	ts := startLoading(t, cfg)
	if o.Threads == 0 {
		o.Threads = 1 // see engine's newEngine: spinning threads beside other tests
	}
	if o.Context == 0 {
		o.Context = 1024
	}
	if o.Parallel == 0 {
		o.Parallel = 4
	}
	e, err := engine.New(tiny, o)
	if err != nil {
		t.Fatalf("engine.New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	ts.eng = e
	ts.srv.SetEngine(e, "tiny")
	return ts
}

// startLoading starts a server that has no engine yet.
func startLoading(t testing.TB, cfg Config) *testServer {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.DisconnectPoll == 0 {
		cfg.DisconnectPoll = 5 * time.Millisecond
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx, 5*time.Second); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		<-served
	})
	return &testServer{url: "http://" + ln.Addr().String() + "/v1", srv: srv}
}

// client is the official OpenAI SDK pointed at ts, without retries.
func (ts *testServer) client(opts ...option.RequestOption) *openai.Client {
	base := []option.RequestOption{option.WithBaseURL(ts.url + "/"), option.WithAPIKey("unused"), option.WithMaxRetries(0)}
	c := openai.NewClient(append(base, opts...)...)
	return &c
}

// post sends a raw JSON body and returns the response and its body.
func (ts *testServer) post(t testing.TB, path, body string, header ...string) (*http.Response, string) {
	t.Helper()
	return sendTo(t, ts.url, path, body, header...)
}

// sendTo posts a raw JSON body to path under base (an API base URL such
// as a tier's) with header pairs.
func sendTo(t testing.TB, base, path, body string, header ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func (ts *testServer) get(t testing.TB, path string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, strings.TrimSuffix(ts.url, "/v1")+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func do(t testing.TB, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading %s: %v", req.URL, err)
	}
	return resp, string(b)
}

// waitStats waits until the engine's stats satisfy ok, failing the test
// after a generous bound.
func (ts *testServer) waitStats(t testing.TB, ok func(engine.Stats) bool) engine.Stats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := ts.eng.Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("engine stats never as expected: %+v", st)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitIdle waits until the engine holds no sequence and the server has
// finished every response (metrics recorded), failing the test if that
// takes longer than a generous bound.
func (ts *testServer) waitIdle(t testing.TB) engine.Stats {
	t.Helper()
	return ts.waitStats(t, func(st engine.Stats) bool {
		return st.Sequences == 0 && st.Running == 0 && st.Waiting == 0 && ts.srv.Generating() == 0
	})
}
