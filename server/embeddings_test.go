package server

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// startEmbedServer serves a generated embedding model (the embed preset,
// mean pooling) as "embed".
func startEmbedServer(t *testing.T, o engine.Options) (*testServer, *engine.Model) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "embed.gguf")
	if err := models.Generate(context.Background(), path, models.GenOptions{Preset: models.Presets["embed"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	m, err := engine.LoadModel(context.Background(), path, engine.ModelOptions{DisableRepack: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if o.Threads == 0 {
		o.Threads = 1
	}
	if o.Parallel == 0 {
		o.Parallel = 4
	}
	e, err := engine.New(m, o)
	if err != nil {
		t.Fatal(err)
	}
	ts := startLoading(t, Config{})
	t.Cleanup(func() { e.Close() }) // after the server's shutdown (cleanups run last first)
	ts.eng = e
	ts.srv.SetEngine(e, "embed")
	return ts, m
}

var embedInputs = []string{
	"Customer asks to raise the daily card limit before a trip abroad.",
	"结构化 存款 低于 申报 门槛",
	"ok",
	"Three cash deposits of 9,500 EUR each in one week, followed by a wire to a new beneficiary.",
	"Branch hours?",
	"Loan application for a small business, revenue 2.1M EUR, two directors.",
}

// embedTolerance bounds the largest difference of a component between an
// input embedded in a batch and alone (engine's embedTolerance says why
// it depends on the llama.cpp).
var embedTolerance = map[string]float64{"bundled": 1e-5, "system": 2e-3}[engine.Provider]

// TestEmbeddingsSDK: the official SDK embeds a batch of strings and gets,
// in order, the unit vectors each string gets alone; token ids give what
// the text they spell gives; usage counts the tokens; the model is listed
// as an embedding model and refuses chat.
func TestEmbeddingsSDK(t *testing.T) {
	ts, m := startEmbedServer(t, engine.Options{Parallel: 4})
	ctx := context.Background()
	c := ts.client()
	batch, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "embed",
		Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: embedInputs}})
	if err != nil {
		t.Fatal(err)
	}
	if len(batch.Data) != len(embedInputs) || batch.Model != "embed" {
		t.Fatalf("%d embeddings for %d inputs, model %q", len(batch.Data), len(embedInputs), batch.Model)
	}
	tokens := 0
	for i, text := range embedInputs {
		d := batch.Data[i]
		if d.Index != int64(i) || len(d.Embedding) != m.Info().Embedding {
			t.Fatalf("input %d: index %d, %d dimensions", i, d.Index, len(d.Embedding))
		}
		alone, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "embed",
			Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String(text)}})
		if err != nil {
			t.Fatal(err)
		}
		toks, err := m.Tokenize(text, true, false)
		if err != nil {
			t.Fatal(err)
		}
		tokens += len(toks)
		ids := make([]int64, len(toks))
		for k, tok := range toks {
			ids[k] = int64(tok)
		}
		byIDs, err := c.Embeddings.New(ctx, openai.EmbeddingNewParams{Model: "embed",
			Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfTokens: ids}})
		if err != nil {
			t.Fatal(err)
		}
		var ss float64
		for j, x := range d.Embedding {
			ss += x * x
			if diff := math.Abs(x - alone.Data[0].Embedding[j]); diff > embedTolerance {
				t.Fatalf("input %d component %d: batch %v, alone %v", i, j, x, alone.Data[0].Embedding[j])
			}
			if x != byIDs.Data[0].Embedding[j] && math.Abs(x-byIDs.Data[0].Embedding[j]) > embedTolerance {
				t.Fatalf("input %d component %d: text %v, token ids %v", i, j, x, byIDs.Data[0].Embedding[j])
			}
		}
		if math.Abs(ss-1) > 1e-5 {
			t.Errorf("input %d: squared norm %v", i, ss)
		}
	}
	if batch.Usage.PromptTokens != int64(tokens) || batch.Usage.TotalTokens != int64(tokens) {
		t.Errorf("usage %+v, want %d tokens", batch.Usage, tokens)
	}
	models, err := c.Models.List(ctx)
	if err != nil || len(models.Data) != 1 {
		t.Fatalf("models: %v %v", models, err)
	}
	var meta struct {
		Meta ModelMeta `json:"meta"`
	}
	if err := json.Unmarshal([]byte(models.Data[0].RawJSON()), &meta); err != nil || meta.Meta.Pooling != "mean" || meta.Meta.Embedding != 128 {
		t.Errorf("model entry %s: %v", models.Data[0].RawJSON(), err)
	}
	chat := chatParams(4, openai.UserMessage("hi"))
	chat.Model = "embed"
	_, err = c.Chat.Completions.New(ctx, chat)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || apiErr.Code != "model_not_supported" {
		t.Fatalf("chat on an embedding model: %v", err)
	}
	resp, body := ts.get(t, "/ready/aml")
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "no_text_model") {
		t.Errorf("/ready/aml on an embedding model: %d %s", resp.StatusCode, body)
	}
	resp, body = ts.post(t, "/aml/score", `{}`)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "model_not_supported") {
		t.Errorf("AML scoring on an embedding model: %d %s", resp.StatusCode, body)
	}
	checkEngineIdle(t, ts)
}

// checkEngineIdle fails unless the engine runs nothing and holds no cells.
func checkEngineIdle(t *testing.T, ts *testServer) {
	t.Helper()
	st := ts.waitIdle(t)
	if st.KVCellsReserved != 0 || st.SlotsWithMemory != 0 {
		t.Errorf("cells held after the requests: %+v", st)
	}
}

// TestEmbeddingsBase64: encoding_format base64 is the float32 values,
// little-endian, the same numbers as the float form.
func TestEmbeddingsBase64(t *testing.T) {
	ts, _ := startEmbedServer(t, engine.Options{})
	var f, b EmbeddingResponse
	for _, c := range []struct {
		format string
		out    *EmbeddingResponse
	}{{"float", &f}, {"base64", &b}} {
		resp, body := ts.post(t, "/embeddings", fmt.Sprintf(`{"model":"embed","input":["one input","another"],"encoding_format":%q}`, c.format))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", c.format, resp.StatusCode, body)
		}
		if err := json.Unmarshal([]byte(body), c.out); err != nil {
			t.Fatal(err)
		}
	}
	for i := range f.Data {
		s, ok := b.Data[i].Embedding.(string)
		if !ok {
			t.Fatalf("base64 embedding %d is %T", i, b.Data[i].Embedding)
		}
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		want := f.Data[i].Embedding.([]any)
		if len(raw) != 4*len(want) {
			t.Fatalf("embedding %d: %d bytes for %d values", i, len(raw), len(want))
		}
		for j := range want {
			got := math.Float32frombits(binary.LittleEndian.Uint32(raw[4*j:]))
			if got != float32(want[j].(float64)) {
				t.Fatalf("embedding %d value %d: base64 %v, float %v", i, j, got, want[j])
			}
		}
	}
}

// TestEmbeddingsErrors: each malformed request is a 400 naming the
// parameter, and the server embeds afterwards.
func TestEmbeddingsErrors(t *testing.T) {
	ts, _ := startEmbedServer(t, engine.Options{Batch: 64})
	long := strings.Repeat("word ", 200)
	many := make([]string, engine.MaxEmbedInputs+1)
	for i := range many {
		many[i] = "x"
	}
	manyJSON, _ := json.Marshal(many)
	for _, c := range []struct {
		name, body, param, code string
	}{
		{"no input", `{"model":"embed"}`, "input", ""},
		{"empty list", `{"input":[]}`, "input", ""},
		{"empty string", `{"input":["a",""]}`, "input", ""},
		{"an object", `{"input":{"text":"a"}}`, "input", ""},
		{"mixed list", `{"input":["a",1]}`, "input", ""},
		{"token outside the vocabulary", `{"input":[[1,2,99999]]}`, "input", ""},
		{"empty token list", `{"input":[[]]}`, "input", ""},
		{"longer than the batch", `{"input":["a",` + fmt.Sprintf("%q", long) + `]}`, "input", "context_length_exceeded"},
		{"too many inputs", `{"input":` + string(manyJSON) + `}`, "input", ""},
		{"unknown encoding", `{"input":"a","encoding_format":"int8"}`, "encoding_format", ""},
		{"other dimensions", `{"input":"a","dimensions":64}`, "dimensions", "unsupported_parameter"},
		{"unknown model", `{"model":"gpt-4","input":"a"}`, "model", "model_not_found"},
		{"not JSON", `{"input":`, "", ""},
	} {
		resp, body := ts.post(t, "/embeddings", c.body)
		var e struct {
			Error APIError `json:"error"`
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatalf("%s: %d %s", c.name, resp.StatusCode, body)
		}
		want := http.StatusBadRequest
		if c.code == "model_not_found" {
			want = http.StatusNotFound
		}
		if resp.StatusCode != want || e.Error.Param != c.param || c.code != "" && e.Error.Code != c.code || e.Error.Message == "" {
			t.Errorf("%s: %d %s", c.name, resp.StatusCode, body)
		}
	}
	// dimensions equal to the model's, and llama-server's content, are fine
	resp, body := ts.post(t, "/embeddings", `{"content":"a","dimensions":128}`)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"index":0`) {
		t.Fatalf("after the errors: %d %s", resp.StatusCode, body)
	}
	checkEngineIdle(t, ts)
}
