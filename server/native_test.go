package server

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"

	"github.com/finserve/finserve/chattemplate"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// jinjaTemplate reads a model family's chat template from the jinja
// module's testdata in the module cache (chattemplate's tests read the
// same files; see chattemplate/testdata/SOURCES.md).
func jinjaTemplate(t *testing.T, name string) string {
	t.Helper()
	version := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/ardanlabs/jinja" {
				version = d.Version
			}
		}
	}
	out, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil || version == "" {
		t.Fatalf("locating the jinja module (version %q): %v", version, err)
	}
	b, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "github.com/ardanlabs/jinja@"+version, "testdata/templates", name+".jinja"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestNativeToolCalls: a generated model carrying Qwen3's, Llama 3.2's,
// Ministral 3's or gpt-oss's own chat template (and the control tokens its
// syntax is made of) gets its tools and tool history rendered by that
// template, and answers calls in its family's syntax (<tool_call> blocks;
// one {"name", "parameters"} object; [TOOL_CALLS]NAME[ARGS]; a commentary
// message to=functions.NAME): the SDK's round trip, streamed and not,
// required, named and auto, with arguments that validate.
func TestNativeToolCalls(t *testing.T) {
	for _, c := range []struct {
		template, family string
		control          []string // the family's control tokens, in the generated vocabulary
	}{
		{"Qwen3-8B-Q8_0", "hermes", nil},
		{"Llama-3.2-1B-Instruct-GGUF", "llama3", nil},
		{"Ministral-3-14B-Instruct-2512-Q4_0", "mistral", []string{"[TOOL_CALLS]", "[ARGS]"}},
		{"gpt-oss-20b-Q8_0", "harmony", []string{"<|start|>", "<|end|>", "<|channel|>", "<|message|>", "<|call|>", "<|return|>"}},
	} {
		t.Run(c.family, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), c.family+".gguf")
			src := jinjaTemplate(t, c.template)
			if err := models.Generate(context.Background(), path, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0,
				Seed: 11, ChatTemplate: src, ControlTokens: c.control}); err != nil {
				t.Fatal(err)
			}
			m, err := engine.LoadModel(context.Background(), path, engine.ModelOptions{DisableRepack: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(m.Close)
			e, err := engine.New(m, engine.Options{Parallel: 2, Context: 2048, Threads: 1})
			if err != nil {
				t.Fatal(err)
			}
			ts := startLoading(t, Config{})
			t.Cleanup(func() { e.Close() })
			ts.srv.SetEngine(e, c.family)
			b := ts.srv.backend.Load()
			if fam := ts.srv.toolFamily(b); fam == nil || fam.name != c.family {
				t.Fatalf("family %v, want %s", fam, c.family)
			}
			toolRoundTrip(t, ts.client(), c.family)

			// The prompt is the template's own rendering of the tools and
			// the history, tokenized as is.
			tmpl, err := chattemplate.Compile(src)
			if err != nil {
				t.Fatal(err)
			}
			params := `{"type":"object","properties":{"account":{"type":"string"}},"required":["account"]}`
			body := `{"model":"` + c.family + `","max_tokens":4,"tools":[{"type":"function","function":{"name":"get_balance","parameters":` + params + `}}],
				"messages":[{"role":"user","content":"Balance of A-1?"},
				{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_balance","arguments":"{\"account\":\"A-1\"}"}}]},
				{"role":"tool","tool_call_id":"call_1","content":"{\"balance\":1200}"}]}`
			resp, out := ts.post(t, "/chat/completions", body)
			var r ChatResponse
			if resp.StatusCode != 200 || json.Unmarshal([]byte(out), &r) != nil {
				t.Fatalf("%d %s", resp.StatusCode, out)
			}
			text, err := tmpl.Render(chattemplate.Input{AddGenerationPrompt: true, BOS: string(m.Piece(m.Info().BOS)), EOS: string(m.Piece(m.Info().EOS)),
				Tools: []chattemplate.Tool{{Name: "get_balance", Parameters: json.RawMessage(params)}},
				Messages: []chattemplate.Message{{Role: "user", Content: "Balance of A-1?"},
					{Role: "assistant", ToolCalls: []chattemplate.ToolCall{{ID: "call_1", Name: "get_balance", Arguments: json.RawMessage(`{"account":"A-1"}`)}}},
					{Role: "tool", ToolCallID: "call_1", Name: "get_balance", Content: `{"balance":1200}`}}})
			if err != nil {
				t.Fatal(err)
			}
			toks, err := m.Tokenize(strings.TrimPrefix(text, string(m.Piece(m.Info().BOS))), true, true)
			if err != nil {
				t.Fatal(err)
			}
			if r.Usage.PromptTokens != len(toks) {
				t.Errorf("prompt of %d tokens, the template's rendering has %d", r.Usage.PromptTokens, len(toks))
			}
		})
	}
}

// TestFamilyDetection: which templates get which syntax; the others
// keep the generic format.
func TestFamilyDetection(t *testing.T) {
	detect := func(src string) string {
		for _, f := range families {
			if f.detect(src) {
				return f.name
			}
		}
		return ""
	}
	for _, c := range []struct{ src, want string }{
		{jinjaTemplate(t, "Qwen3-8B-Q8_0"), "hermes"},
		{jinjaTemplate(t, "Llama-3.2-1B-Instruct-GGUF"), "llama3"},
		{jinjaTemplate(t, "Ministral-3-14B-Instruct-2512-Q4_0"), "mistral"},
		{jinjaTemplate(t, "gpt-oss-20b-Q8_0"), "harmony"},
		{models.ChatMLTemplate, ""},
		// Qwen3-Coder's form: XML inside the tags
		{"{% if tools %}<tool_call>\n<function=name>\n<parameter=p>{% endif %}", ""},
	} {
		if got := detect(c.src); got != c.want {
			t.Errorf("%.60q: %q, want %q", c.src, got, c.want)
		}
	}
}

// TestNativeParse: each family's answers as models write them.
func TestNativeParse(t *testing.T) {
	fam := map[string]toolFamily{}
	for _, f := range families {
		if f.name == "hermes" || f.name == "llama3" {
			fam[f.name], _ = f.make(nil)
		}
	}
	for _, c := range []struct {
		family, text, content string
		calls                 []string // name(arguments)
	}{
		{"hermes", "<tool_call>\n{\"name\": \"get_balance\", \"arguments\": {\"account\": \"A-1\"}}\n</tool_call>", "", []string{`get_balance({"account":"A-1"})`}},
		{"hermes", "Let me check.\n<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": \"{\\\"x\\\":1}\"}\n</tool_call>",
			"Let me check.", []string{"a({})", `b({"x":1})`}},
		{"hermes", "no call here", "no call here", nil},
		{"hermes", "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\":</tool_call>", "<tool_call>\n{\"name\": \"a\", \"arguments\": {\"x\":</tool_call>", nil},
		{"llama3", "{\"name\": \"get_balance\", \"parameters\": {\"account\": \"A-1\"}}", "", []string{`get_balance({"account":"A-1"})`}},
		{"llama3", "<|python_tag|>{\"name\": \"f\", \"parameters\": {}}", "", []string{"f({})"}},
		{"llama3", "The balance is 1,200 EUR.", "The balance is 1,200 EUR.", nil},
		{"llama3", "{\"name\": \"bad name!\", \"parameters\": {}}", "{\"name\": \"bad name!\", \"parameters\": {}}", nil},
	} {
		content, calls, _ := fam[c.family].parse(c.text)
		var got []string
		for _, call := range calls {
			got = append(got, call.Function.Name+"("+call.Function.Arguments+")")
			if !strings.HasPrefix(call.ID, "call_") {
				t.Errorf("%s: id %q", c.family, call.ID)
			}
		}
		if content != c.content || strings.Join(got, " ") != strings.Join(c.calls, " ") {
			t.Errorf("%s %q: content %q calls %v, want %q %v", c.family, c.text, content, got, c.content, c.calls)
		}
	}
}

// TestNativeStreamable: how much of an answer so far goes out as content
// before it is whole: up to a call's marker, holding back what may begin
// one; for Llama 3.x nothing that may be a call's JSON; for harmony none.
func TestNativeStreamable(t *testing.T) {
	fam := func(name string) *toolFamily { return &toolFamily{name: name} }
	for _, c := range []struct {
		family, text string
		want         int
	}{
		{"hermes", "Let me check", 12},
		{"hermes", "Let me check <tool", 13},
		{"hermes", "Let me check <tool_call>\n{", 13},
		{"hermes", "a < b", 5},
		{"hermes", "", 0},
		{"mistral", "Sure[TOOL", 4},
		{"mistral", "[TOOL_CALLS]f[ARGS]{}", 0},
		{"llama3", "The balance is", 14},
		{"llama3", "  {\"name\"", 0},
		{"llama3", "<|python", 0},
		{"llama3", " ", 0},
		{"harmony", "<|channel|>final<|message|>Hi", 0},
	} {
		if got := fam(c.family).streamable(c.text); got != c.want {
			t.Errorf("%s %q: %d, want %d", c.family, c.text, got, c.want)
		}
	}
}

// TestNativeAutoStreams: with tool_choice auto, a native model's text
// answer streams in pieces as it decodes, and equals the answer not
// streamed (greedy).
func TestNativeAutoStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qwen.gguf")
	if err := models.Generate(context.Background(), path, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0,
		Seed: 11, ChatTemplate: jinjaTemplate(t, "Qwen3-8B-Q8_0")}); err != nil {
		t.Fatal(err)
	}
	m, err := engine.LoadModel(context.Background(), path, engine.ModelOptions{DisableRepack: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	e, err := engine.New(m, engine.Options{Parallel: 1, Context: 2048, Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	ts := startLoading(t, Config{})
	t.Cleanup(func() { e.Close() })
	ts.srv.SetEngine(e, "qwen")
	// Both compute the whole prompt (cache_prompt false): llama.cpp's
	// newer CPU kernels give a prompt resumed from kept cells logits a
	// hair apart from one computed whole, enough to change a greedy pick
	// of the random model.
	body := func(stream bool) string {
		return `{"model":"qwen","max_tokens":24,"temperature":0,"cache_prompt":false,"stream":` + strconv.FormatBool(stream) + `,
			"tools":[{"type":"function","function":{"name":"get_balance","parameters":{"type":"object","properties":{"account":{"type":"string"}}}}}],
			"messages":[{"role":"user","content":"Hello there"}]}`
	}
	resp, out := ts.post(t, "/chat/completions", body(false))
	var whole ChatResponse
	if resp.StatusCode != 200 || json.Unmarshal([]byte(out), &whole) != nil || whole.Choices[0].Message.Content == nil {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	resp, out = ts.post(t, "/chat/completions", body(true))
	var streamed strings.Builder
	pieces := 0
	for _, line := range strings.Split(out, "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk ChatResponse
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatal(err)
		}
		if len(chunk.Choices) > 0 && chunk.Choices[0].Delta != nil && chunk.Choices[0].Delta.Content != nil && *chunk.Choices[0].Delta.Content != "" {
			streamed.WriteString(*chunk.Choices[0].Delta.Content)
			pieces++
		}
	}
	if got, want := streamed.String(), *whole.Choices[0].Message.Content; got != want || pieces < 2 {
		t.Errorf("streamed %q in %d pieces; not streamed %q", got, pieces, want)
	}
}
