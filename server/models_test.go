package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"

	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
	"github.com/finserve/finserve/registry"
)

// startFleet serves specs from a registry with budget; each spec's model
// is generated from gen[id] (a preset and seed) into a temporary file.
func startFleet(t *testing.T, budget int64, specs []registry.Spec, gen map[string]models.GenOptions) (*testServer, *registry.Registry) {
	t.Helper()
	dir := t.TempDir()
	for i := range specs {
		s := &specs[i]
		if g, ok := gen[s.ID]; ok {
			s.Path = filepath.Join(dir, s.ID+".gguf")
			if err := models.Generate(context.Background(), s.Path, g); err != nil {
				t.Fatal(err)
			}
		}
		s.Model.DisableRepack = true
		s.Engine.Threads, s.Engine.Parallel, s.Engine.Context = 1, 4, 256
	}
	reg, err := registry.New(specs, registry.Options{Budget: budget, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ts := startLoading(t, Config{})
	t.Cleanup(reg.Close) // after the server's shutdown
	ts.srv.SetModels(reg)
	reg.Preload()
	return ts, reg
}

var fleetGen = map[string]models.GenOptions{
	"chat":  {Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 11},
	"other": {Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 12},
	"embed": {Preset: models.Presets["embed"], Type: models.TypeQ8_0, Seed: 3},
}

// modelStates is GET /v1/models as id -> state.
func modelStates(t *testing.T, ts *testServer) map[string]string {
	t.Helper()
	resp, body := ts.get(t, "/v1/models")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/v1/models: %d %s", resp.StatusCode, body)
	}
	var list ModelList
	if err := json.Unmarshal([]byte(body), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range list.Data {
		if m.Status == nil {
			t.Fatalf("%s has no status: %s", m.ID, body)
		}
		out[m.ID] = m.Status.State
		if m.Status.State == "ready" && (m.Meta == nil || m.Meta.VocabSize == 0) {
			t.Errorf("%s ready without its shape: %s", m.ID, body)
		}
	}
	return out
}

// TestSeveralModels: the SDK's requests to a chat model and an embedding
// model, interleaved, are each served by the model they name; the models
// are listed with their state; a third model used under a budget for two
// unloads the least recently used idle one, and loads again on use.
func TestSeveralModels(t *testing.T) {
	specs := []registry.Spec{{ID: "chat", Bytes: 100}, {ID: "embed", Bytes: 50}, {ID: "other", Bytes: 100}}
	ts, reg := startFleet(t, 150, specs, fleetGen)
	c := ts.client()
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				p := chatParams(8, openai.UserMessage(fmt.Sprintf("question %d", i)))
				p.Model = "chat"
				st := c.Chat.Completions.NewStreaming(ctx, p)
				n := 0
				for st.Next() {
					n++
				}
				if err := st.Err(); err != nil || n == 0 {
					errs <- fmt.Errorf("chat %d: %d chunks, %v", i, n, err)
				}
				return
			}
			r, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "embed",
				Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a text", fmt.Sprint("text ", i)}}})
			if err != nil || len(r.Data) != 2 || len(r.Data[0].Embedding) != 128 || r.Model != "embed" {
				errs <- fmt.Errorf("embed %d: %v %v", i, r, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := modelStates(t, ts); got["chat"] != "ready" || got["embed"] != "ready" || got["other"] != "unloaded" {
		t.Fatalf("after chat and embed: %v", got)
	}

	// embed used last: chat is the least recently used, and the one
	// unloaded for other
	if _, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "embed",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("last")}}); err != nil {
		t.Fatal(err)
	}
	p := chatParams(4, openai.UserMessage("hi"))
	p.Model = "other"
	resp, err := c.Chat.Completions.New(ctx, p)
	if err != nil || resp.Model != "other" {
		t.Fatalf("other: %v %v", resp, err)
	}
	waitState(t, reg, "chat", registry.Unloaded)
	if got := modelStates(t, ts); got["chat"] != "unloaded" || got["embed"] != "ready" || got["other"] != "ready" {
		t.Fatalf("after other: %v", got)
	}
	_, metrics := ts.get(t, "/metrics")
	for _, want := range []string{`finserve_model_state{model="chat",state="unloaded"} 1`, `finserve_model_state{model="other",state="ready"} 1`,
		`finserve_model_memory_bytes{model="embed"} 50`, `finserve_model_active_requests{model="other"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	p.Model = "" // the default: chat
	if resp, err := c.Chat.Completions.New(ctx, p); err != nil || resp.Model != "chat" {
		t.Fatalf("chat again: %v %v", resp, err)
	}

	// what each model may be asked
	for _, c := range []struct{ path, body, code string }{
		{"/embeddings", `{"model":"chat","input":"a"}`, "model_not_supported"},
		{"/chat/completions", `{"model":"embed","messages":[{"role":"user","content":"a"}]}`, "model_not_supported"},
		{"/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"a"}]}`, "model_not_found"},
	} {
		resp, body := ts.post(t, c.path, c.body)
		if resp.StatusCode/100 != 4 || !strings.Contains(body, c.code) {
			t.Errorf("%s %s: %d %s", c.path, c.body, resp.StatusCode, body)
		}
	}
}

func waitState(t *testing.T, reg *registry.Registry, id string, want registry.State) {
	t.Helper()
	waitStatus(t, reg, func(st registry.Status) bool { return st.ID == id && st.State == want })
}

// waitStatus waits, without polling, until one of reg's models' status
// holds ok: it looks again at each change (Registry.Changed).
func waitStatus(t *testing.T, reg *registry.Registry, ok func(registry.Status) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second) // a hang guard, not a timing
	for {
		changed := reg.Changed()
		for _, st := range reg.Status() {
			if ok(st) {
				return
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("status never as expected: %+v", reg.Status())
		}
	}
}

// TestModelFailsToLoad: a model whose file is corrupt answers 503
// model_unavailable naming it; the others serve, /ready is 200 with
// every model's state.
func TestModelFailsToLoad(t *testing.T) {
	specs := []registry.Spec{{ID: "chat", Bytes: 100}, {ID: "broken", Path: filepath.Join("testdata", "no-such.gguf"), Bytes: 100}}
	ts, _ := startFleet(t, 0, specs, fleetGen)
	resp, body := ts.post(t, "/chat/completions", `{"model":"broken","messages":[{"role":"user","content":"a"}],"max_tokens":2}`)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "model_unavailable") || !strings.Contains(body, "broken") {
		t.Fatalf("broken model: %d %s", resp.StatusCode, body)
	}
	resp, body = ts.post(t, "/chat/completions", `{"model":"chat","messages":[{"role":"user","content":"a"}],"max_tokens":2}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("chat beside the broken model: %d %s", resp.StatusCode, body)
	}
	resp, body = ts.get(t, "/ready")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"state":"failed"`) || !strings.Contains(body, `"state":"ready"`) {
		t.Fatalf("/ready: %d %s", resp.StatusCode, body)
	}
}

// TestKeyLimitedToModels: a key limited to some models is refused the
// others (403 model_not_allowed, before any load) and sees only its own
// in /v1/models; an unlimited key uses them all.
func TestKeyLimitedToModels(t *testing.T) {
	file := filepath.Join(t.TempDir(), "keys.json")
	embedKey, err := apikeys.AddKey(file, "indexer", apikeys.Limits{Tiers: []string{"standard"}, Models: []string{"embed"}})
	if err != nil {
		t.Fatal(err)
	}
	allKey, err := apikeys.AddKey(file, "teller", apikeys.Limits{Tiers: []string{"standard"}})
	if err != nil {
		t.Fatal(err)
	}
	set, err := apikeys.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	specs := []registry.Spec{{ID: "chat", Bytes: 100}, {ID: "embed", Bytes: 50}}
	dir := t.TempDir()
	for i := range specs {
		s := &specs[i]
		s.Path = filepath.Join(dir, s.ID+".gguf")
		if err := models.Generate(context.Background(), s.Path, fleetGen[s.ID]); err != nil {
			t.Fatal(err)
		}
		s.Model.DisableRepack = true
		s.Engine.Threads, s.Engine.Parallel, s.Engine.Context = 1, 2, 256
	}
	reg, err := registry.New(specs, registry.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ts := startLoading(t, Config{KeyFile: set})
	t.Cleanup(reg.Close)
	ts.srv.SetModels(reg)
	for _, c := range []struct {
		key, path, body string
		status          int
	}{
		{embedKey, "/embeddings", `{"model":"embed","input":"a"}`, 200},
		{embedKey, "/chat/completions", `{"model":"chat","messages":[{"role":"user","content":"a"}],"max_tokens":2}`, 403},
		{embedKey, "/chat/completions", `{"messages":[{"role":"user","content":"a"}],"max_tokens":2}`, 403}, // the default is chat
		{allKey, "/chat/completions", `{"model":"chat","messages":[{"role":"user","content":"a"}],"max_tokens":2}`, 200},
		{allKey, "/embeddings", `{"model":"embed","input":"a"}`, 200},
	} {
		resp, body := ts.post(t, c.path, c.body, "Authorization", "Bearer "+c.key)
		if resp.StatusCode != c.status || c.status == 403 && !strings.Contains(body, "model_not_allowed") {
			t.Errorf("%s %s: %d %s", c.path, c.body, resp.StatusCode, body)
		}
	}
	req, _ := http.NewRequest(http.MethodGet, ts.url+"/models", nil)
	req.Header.Set("Authorization", "Bearer "+embedKey)
	resp, body := do(t, req)
	if resp.StatusCode != 200 || !strings.Contains(body, `"id":"embed"`) || strings.Contains(body, `"id":"chat"`) {
		t.Errorf("/v1/models for the embedding key: %s", body)
	}
}

// TestLeaveWhileLoading: a client that disconnects while its model loads
// stops waiting for it (the registry counts no waiter), and the load ends
// as loads do.
func TestLeaveWhileLoading(t *testing.T) {
	path := filepath.Join(t.TempDir(), "chat.gguf")
	if err := models.Generate(context.Background(), path, fleetGen["chat"]); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	slow := func(ctx context.Context, s registry.Spec, p func(float32)) (*registry.Instance, error) {
		<-release // a load that takes as long as the test wants
		return registry.Load(ctx, s, p)
	}
	spec := registry.Spec{ID: "chat", Path: path, Model: engine.ModelOptions{DisableRepack: true},
		Engine: engine.Options{Threads: 1, Parallel: 1, Context: 256}}
	reg, err := registry.New([]registry.Spec{spec}, registry.Options{Loader: slow, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ts := startLoading(t, Config{})
	t.Cleanup(reg.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	ts.srv.SetModels(reg)
	conn, err := net.Dial("tcp", strings.TrimPrefix(strings.TrimSuffix(ts.url, "/v1"), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"chat","messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	waiting := func(n int) {
		t.Helper()
		waitStatus(t, reg, func(st registry.Status) bool { return st.Waiting == n })
	}
	waiting(1)
	conn.Close()
	waiting(0)
	close(release)
	waitState(t, reg, "chat", registry.Ready)
	if st := reg.Status()[0]; st.Active != 0 {
		t.Errorf("%d leases held after the client left", st.Active)
	}
}
