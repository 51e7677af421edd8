package chattemplate

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"
)

// familyTemplate reads a family's chat template from the jinja module's
// testdata in the module cache (the module is a dependency, so it is
// there wherever this test builds).
func familyTemplate(t *testing.T, name string) string {
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
	path := filepath.Join(strings.TrimSpace(string(out)), "github.com/ardanlabs/jinja@"+version, "testdata/templates", name+".jinja")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// conversations are those testdata/*.txt were rendered from.
func conversation(kind string) Input {
	in := Input{AddGenerationPrompt: true, BOS: "<s>", EOS: "<|im_end|>", Now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	if kind == "chat" {
		in.Messages = []Message{{Role: "system", Content: "You are the bank's assistant."}, {Role: "user", Content: "Hello"},
			{Role: "assistant", Content: "Hi, how can I help?"}, {Role: "user", Content: "Opening hours?"}}
		return in
	}
	in.Tools = []Tool{{Name: "get_balance", Description: "Balance of an account",
		Parameters: json.RawMessage(`{"type":"object","properties":{"account":{"type":"string"},"currency":{"type":"string","enum":["EUR","USD"]}},"required":["account"]}`)}}
	in.Messages = []Message{
		{Role: "system", Content: "You are the bank's assistant."},
		{Role: "user", Content: "Balance of A-1?"},
		{Role: "assistant", ToolCalls: []ToolCall{{ID: "call_1", Name: "get_balance", Arguments: json.RawMessage(`{"account":"A-1","currency":"EUR"}`)}}},
		{Role: "tool", ToolCallID: "call_1", Content: `{"balance": 1200}`},
		{Role: "assistant", Content: "It is 1,200 EUR."},
		{Role: "user", Content: "And B-2?"},
	}
	return in
}

// TestFamiliesAsLlamaCpp: the chat templates of Qwen3, Llama 3.2,
// Ministral 3 and gpt-oss render a chat and a tool round trip byte for
// byte as llama.cpp's own Jinja renderer does (testdata/SOURCES.md):
// tool schemas in their key order, calls, results, dates.
func TestFamiliesAsLlamaCpp(t *testing.T) {
	for _, name := range []string{"Qwen3-8B-Q8_0", "Llama-3.2-1B-Instruct-GGUF", "Ministral-3-14B-Instruct-2512-Q4_0", "gpt-oss-20b-Q8_0"} {
		tmpl, err := Compile(familyTemplate(t, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, kind := range []string{"chat", "tools"} {
			want, err := os.ReadFile(filepath.Join("testdata", name+"."+kind+".txt"))
			if err != nil {
				t.Fatal(err)
			}
			got, err := tmpl.Render(conversation(kind))
			if err != nil {
				t.Fatalf("%s %s: %v", name, kind, err)
			}
			got = strings.TrimPrefix(got, "<s>")
			if got != string(want) {
				t.Errorf("%s %s: rendered\n%s\nllama.cpp renders\n%s", name, kind, got, want)
			}
		}
	}
}

// TestRenderErrors: a template that raises, one that does not parse, and
// arguments that are not JSON are errors, not panics.
func TestRenderErrors(t *testing.T) {
	if _, err := Compile("{% if %}"); err == nil {
		t.Error("a template that does not parse compiled")
	}
	tmpl, err := Compile(`{{ raise_exception("roles must alternate") }}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmpl.Render(Input{}); err == nil || !strings.Contains(err.Error(), "roles must alternate") {
		t.Errorf("raise_exception: %v", err)
	}
	ok, _ := Compile(`{{ messages[0].tool_calls[0].function.arguments | tojson }}`)
	in := Input{Messages: []Message{{Role: "assistant", ToolCalls: []ToolCall{{Name: "f", Arguments: json.RawMessage(`{"a":`)}}}}}
	if _, err := ok.Render(in); err == nil {
		t.Error("broken arguments rendered")
	}
	in.Messages[0].ToolCalls[0].Arguments = json.RawMessage(`{"z":1,"a":[true,null,2.5,"x"]}`)
	if got, err := ok.Render(in); err != nil || got != `{"z": 1, "a": [true, null, 2.5, "x"]}` {
		t.Errorf("arguments in their order: %q %v", got, err)
	}
	deep := strings.Repeat("[", 100) + strings.Repeat("]", 100)
	in.Messages[0].ToolCalls[0].Arguments = json.RawMessage(deep)
	if _, err := ok.Render(in); err == nil {
		t.Error("arguments nested 100 deep rendered")
	}
}

// FuzzRender: client text (message content, tool arguments) through a
// real family template either renders or is an error, never a panic.
func FuzzRender(f *testing.F) {
	src := ""
	f.Add("hello", `{"a":1}`)
	f.Add("{{ 7*7 }}", `"x"`)
	f.Add("<tool_call>", `[1,2`)
	f.Fuzz(func(t *testing.T, content, args string) {
		if src == "" {
			src = familyTemplate(t, "Qwen3-8B-Q8_0")
		}
		tmpl, err := Compile(src)
		if err != nil {
			t.Fatal(err)
		}
		in := conversation("tools")
		in.Messages[1].Content = content
		in.Messages[2].ToolCalls[0].Arguments = json.RawMessage(args)
		out, err := tmpl.Render(in)
		if err == nil && !strings.Contains(out, content) {
			t.Fatalf("content %q missing from the prompt", content)
		}
	})
}
