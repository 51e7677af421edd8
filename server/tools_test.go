package server

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/finserve/finserve/engine"
)

// TestReplyStream: a streamed {"response":...} answer comes out as its
// decoded text, whole characters and escapes only, however the model's
// tokens split it; a tool-call answer gives no text.
func TestReplyStream(t *testing.T) {
	for _, tc := range []struct {
		name   string
		pieces []string
		want   string
	}{
		{"plain", []string{`{"response":"`, `Your balance `, `is CNY 1,200.`, `"}`}, "Your balance is CNY 1,200."},
		{"escape split", []string{`{"response":"a\`, `nb \"q\`, `" \\ \/"}`}, "a\nb \"q\" \\ /"},
		{"unicode escape split", []string{`{"response":"\u4f`, `60\u597d`, `"}`}, "你好"},
		{"surrogate pair split", []string{`{"response":"\ud83d`, `\ude00!"}`}, "😀!"},
		{"raw UTF-8 split", []string{`{"response":"` + "\xe4\xbd", "\xa0\xe5\xa5\xbd" + `"}`}, "你好"},
		{"prefix split", []string{`{"resp`, `onse":"ok"}`}, "ok"},
		{"text after the string", []string{`{"response":"ok"}`, ` trailing`}, "ok"},
		{"tool calls", []string{`{"tool_calls":[{"name":"f","arguments":{"response":"x"}}]}`}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r replyStream
			var got strings.Builder
			for _, p := range tc.pieces {
				got.WriteString(r.feed(p))
			}
			if got.String() != tc.want {
				t.Errorf("streamed %q, want %q", got.String(), tc.want)
			}
		})
	}
}

// FuzzReplyStream: whatever the response text and wherever the stream
// splits its JSON, the pieces streamed join to the text.
func FuzzReplyStream(f *testing.F) {
	f.Add("Your balance is CNY 1,200.", uint64(0))
	f.Add("a\nb\"c\\d\u2028😀\x01", uint64(0x0102030405))
	f.Add("", uint64(7))
	f.Fuzz(func(t *testing.T, text string, cuts uint64) {
		if !utf8.ValidString(text) {
			return
		}
		enc, _ := json.Marshal(text)
		// json.Marshal escapes <, > and & as \u003c...: the decoder must
		// read those as well as a model's plain ones.
		full := `{"response":` + string(enc) + `}`
		var r replyStream
		var got strings.Builder
		for rest := full; rest != ""; {
			n := 1 + int(cuts%7)
			cuts = cuts/7 + 1
			n = min(n, len(rest))
			got.WriteString(r.feed(rest[:n]))
			rest = rest[n:]
		}
		if got.String() != text {
			t.Fatalf("streamed %q, want %q", got.String(), text)
		}
	})
}

// TestParseReply: a response gives its text; calls get ids and compact
// arguments; anything else is content as it is.
func TestParseReply(t *testing.T) {
	content, calls, ok := parseReply(`{"response":"hello"}`)
	if !ok || content != "hello" || calls != nil {
		t.Errorf("response: %q %v %v", content, calls, ok)
	}
	_, calls, ok = parseReply(`{"tool_calls":[{"name":"get_balance","arguments":{"account": "A-1"}},{"name":"now","arguments":{}}]}`)
	if !ok || len(calls) != 2 || calls[0].Function.Name != "get_balance" || calls[0].Function.Arguments != `{"account":"A-1"}` ||
		calls[1].Function.Arguments != `{}` || !regexp.MustCompile(`^call_[0-9a-f]{24}$`).MatchString(calls[0].ID) || calls[0].ID == calls[1].ID || calls[0].Type != "function" {
		t.Errorf("calls: %+v %v", calls, ok)
	}
	for _, text := range []string{`{"tool_calls":[{"name":"f","argu`, `plain text`, `{"other":1}`, `{"tool_calls":[]}`} {
		if content, calls, ok := parseReply(text); ok || content != text || calls != nil {
			t.Errorf("%q: %q %v %v", text, content, calls, ok)
		}
	}
}

// TestToolsOf: the tool choices, and what each refuses.
func TestToolsOf(t *testing.T) {
	balance := `{"type":"function","function":{"name":"get_balance","parameters":{"type":"object","properties":{"account":{"type":"string"}},"required":["account"]}}}`
	iban := `{"type":"function","function":{"name":"check_iban","strict":%s,"parameters":{"type":"object","properties":{"iban":{"type":"string","pattern":"^[A-Z]{2}"}}}}}`
	for _, tc := range []struct {
		name, body string
		param      string // "" accepted
		required   bool
		none       bool // no tools in the answer
	}{
		{"no tools", `{}`, "", false, true},
		{"auto", `{"tools":[` + balance + `]}`, "", false, false},
		{"none", `{"tools":[` + balance + `],"tool_choice":"none"}`, "", false, true},
		{"required", `{"tools":[` + balance + `],"tool_choice":"required"}`, "", true, false},
		{"named", `{"tools":[` + balance + `],"tool_choice":{"type":"function","function":{"name":"get_balance"}}}`, "", true, false},
		{"not parallel", `{"tools":[` + balance + `],"parallel_tool_calls":false}`, "", false, false},
		{"no parameters", `{"tools":[{"type":"function","function":{"name":"now"}}]}`, "", false, false},
		{"loose schema", `{"tools":[` + strings.Replace(iban, "%s", "false", 1) + `]}`, "", false, false},
		{"strict schema it cannot enforce", `{"tools":[` + strings.Replace(iban, "%s", "true", 1) + `]}`, "tools[0].function.parameters", false, false},
		{"required without tools", `{"tool_choice":"required"}`, "tool_choice", false, false},
		{"unknown choice", `{"tools":[` + balance + `],"tool_choice":"always"}`, "tool_choice", false, false},
		{"named unknown", `{"tools":[` + balance + `],"tool_choice":{"type":"function","function":{"name":"transfer"}}}`, "tool_choice", false, false},
		{"not a function", `{"tools":[{"type":"retrieval","function":{"name":"x"}}]}`, "tools[0].type", false, false},
		{"bad name", `{"tools":[{"type":"function","function":{"name":"get balance"}}]}`, "tools[0].function.name", false, false},
		{"twice", `{"tools":[` + balance + `,` + balance + `]}`, "tools[1].function.name", false, false},
		{"not a schema", `{"tools":[{"type":"function","function":{"name":"f","parameters":[1]}}]}`, "tools[0].function.parameters", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r ChatRequest
			if err := json.Unmarshal([]byte(tc.body), &r); err != nil {
				t.Fatal(err)
			}
			plan, apiErr := toolsOf(&r)
			switch {
			case tc.param != "":
				if apiErr == nil || apiErr.Param != tc.param {
					t.Errorf("got %+v, want an error on %s", apiErr, tc.param)
				}
			case apiErr != nil:
				t.Errorf("refused: %+v", apiErr)
			case tc.none != (plan == nil):
				t.Errorf("plan %+v", plan)
			case plan != nil && (plan.required != tc.required || !strings.Contains(plan.grammar, "root ::=") ||
				tc.required == strings.Contains(plan.grammar, `{\"response\":`)):
				t.Errorf("plan required %v, grammar:\n%s", plan.required, plan.grammar)
			}
		})
	}
}

// bankTools are the tools of the round-trip test: strings bounded and
// enums, so that a random model's arguments end.
var bankTools = map[string]string{
	"get_balance": `{"type":"object","additionalProperties":false,"properties":{"account":{"type":"string","maxLength":8},
		"currency":{"enum":["CNY","USD","HKD"]}},"required":["account","currency"]}`,
	"list_transactions": `{"type":"object","properties":{"account":{"type":"string","maxLength":8},"days":{"type":"integer","minimum":0}},
		"required":["account","days"]}`,
}

// TestToolRoundTrip: through the OpenAI SDK, streamed and not: a
// required tool choice gives calls of offered tools whose arguments
// validate against their schemas, finish_reason tool_calls; the call's
// result sent back as a tool message gives a final answer; a named
// choice calls that tool; auto answers either way; parallel calls stay
// within the limit.
func TestToolRoundTrip(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{Parallel: 2, Context: 1024})
	toolRoundTrip(t, ts.client(), "tiny")
}

// toolRoundTrip drives tool calls on model through the SDK: required and
// named calls whose arguments validate, the result sent back and a text
// answer, auto; streamed and not.
func toolRoundTrip(t *testing.T, client *openai.Client, model string) {
	validators := map[string]*jsonschema.Schema{}
	var tools []openai.ChatCompletionToolUnionParam
	for _, name := range []string{"get_balance", "list_transactions"} {
		raw := bankTools[name]
		doc, err := jsonschema.UnmarshalJSON(strings.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		c := jsonschema.NewCompiler()
		if err := c.AddResource(name+".json", doc); err != nil {
			t.Fatal(err)
		}
		if validators[name], err = c.Compile(name + ".json"); err != nil {
			t.Fatal(err)
		}
		var params map[string]any
		if err := json.Unmarshal([]byte(raw), &params); err != nil {
			t.Fatal(err)
		}
		tools = append(tools, openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: name,
			Description: openai.String("a core banking call"), Parameters: params, Strict: openai.Bool(true)}))
	}
	checkCalls := func(t *testing.T, calls []openai.ChatCompletionMessageToolCallUnion, most int) {
		t.Helper()
		if len(calls) == 0 || len(calls) > most {
			t.Fatalf("%d tool calls, want 1 to %d", len(calls), most)
		}
		ids := map[string]bool{}
		for _, c := range calls {
			v := validators[c.Function.Name]
			if v == nil || c.ID == "" || ids[c.ID] || c.Type != "function" {
				t.Fatalf("call %+v: not an offered tool, or no fresh id", c)
			}
			ids[c.ID] = true
			t.Logf("%s %s(%s)", c.ID, c.Function.Name, c.Function.Arguments)
			args, err := jsonschema.UnmarshalJSON(strings.NewReader(c.Function.Arguments))
			if err != nil {
				t.Fatalf("arguments of %s are not JSON: %v\n%s", c.Function.Name, err, c.Function.Arguments)
			}
			if err := v.Validate(args); err != nil {
				t.Fatalf("arguments of %s %s do not validate: %v", c.Function.Name, c.Function.Arguments, err)
			}
		}
	}
	// ask sends params streamed or not and returns the assistant's message
	// and finish reason as the SDK assembles them.
	ask := func(t *testing.T, stream bool, params openai.ChatCompletionNewParams) (openai.ChatCompletionMessage, string) {
		t.Helper()
		if !stream {
			out, err := client.Chat.Completions.New(context.Background(), params)
			if err != nil {
				t.Fatal(err)
			}
			return out.Choices[0].Message, out.Choices[0].FinishReason
		}
		s := client.Chat.Completions.NewStreaming(context.Background(), params)
		var acc openai.ChatCompletionAccumulator
		finished := 0
		for s.Next() {
			acc.AddChunk(s.Current())
			if _, ok := acc.JustFinishedToolCall(); ok {
				finished++
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		if finished != len(acc.Choices[0].Message.ToolCalls) {
			t.Errorf("the stream finished %d tool calls of %d", finished, len(acc.Choices[0].Message.ToolCalls))
		}
		return acc.Choices[0].Message, acc.Choices[0].FinishReason
	}
	question := openai.UserMessage("What is the balance of account A-1 in CNY?")
	for _, stream := range []bool{false, true} {
		t.Run(fmt.Sprintf("stream=%v", stream), func(t *testing.T) {
			for seed := range 2 {
				params := chatParams(200, question)
				params.Model = model
				params.Temperature, params.Seed = openai.Float(1), openai.Int(int64(seed))
				params.Tools = tools
				params.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("required")}
				params.ParallelToolCalls = openai.Bool(false)
				msg, finish := ask(t, stream, params)
				if finish != "tool_calls" {
					t.Fatalf("seed %d: finish_reason %q, content %q", seed, finish, msg.Content)
				}
				checkCalls(t, msg.ToolCalls, 1)

				// The result goes back; the final answer is text.
				params.Messages = []openai.ChatCompletionMessageParamUnion{question, msg.ToParam(),
					openai.ToolMessage(`{"balance":"1200.00","currency":"CNY"}`, msg.ToolCalls[0].ID)}
				params.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("none")}
				params.MaxTokens = openai.Int(12)
				final, finish := ask(t, stream, params)
				t.Logf("final answer (%s): %q", finish, final.Content)
				if len(final.ToolCalls) != 0 || final.Content == "" || finish == "tool_calls" {
					t.Fatalf("seed %d: final answer %+v, finish %q", seed, final, finish)
				}
			}

			named := chatParams(200, question)
			named.Model = model
			named.Tools = tools
			named.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfFunctionToolChoice: &openai.ChatCompletionNamedToolChoiceParam{
				Function: openai.ChatCompletionNamedToolChoiceFunctionParam{Name: "list_transactions"}}}
			msg, finish := ask(t, stream, named)
			checkCalls(t, msg.ToolCalls, maxParallelCalls)
			for _, c := range msg.ToolCalls {
				if c.Function.Name != "list_transactions" || finish != "tool_calls" {
					t.Fatalf("named choice called %s (finish %q)", c.Function.Name, finish)
				}
			}

			auto := chatParams(40, question)
			auto.Model = model
			auto.Tools = tools
			auto.Temperature, auto.Seed = openai.Float(1), openai.Int(3)
			msg, finish = ask(t, stream, auto)
			switch {
			case finish == "tool_calls":
				checkCalls(t, msg.ToolCalls, maxParallelCalls)
			case len(msg.ToolCalls) != 0 || msg.Content == "" && finish == "stop":
				t.Fatalf("auto: %+v, finish %q", msg, finish)
			}
		})
	}
}

// TestToolHistory: a conversation with tool calls and results reaches
// the template in the format the model answers in: the tools in the
// system message, the calls as {"tool_calls":...}, consecutive results
// as one user turn naming their calls' functions, earlier text answers
// as {"response":...}; text stays as written (no HTML escapes).
func TestToolHistory(t *testing.T) {
	s, _ := fuzzServer()
	body := `{"messages":[
		{"role":"system","content":"You serve bank customers."},
		{"role":"user","content":"Balance of A-1 & A-2?"},
		{"role":"assistant","content":null,"tool_calls":[
			{"id":"c1","type":"function","function":{"name":"get_balance","arguments":"{\"account\": \"A-1\"}"}},
			{"id":"c2","type":"function","function":{"name":"get_balance","arguments":"not json"}}]},
		{"role":"tool","tool_call_id":"c1","content":"<1200>"},
		{"role":"tool","tool_call_id":"c2","content":"300"},
		{"role":"assistant","content":"A-1 holds 1200."},
		{"role":"user","content":"Thanks"}],
		"tools":[{"type":"function","function":{"name":"get_balance","description":"balance < limit","parameters":{"type":"object","properties":{"account":{"type":"string"}}}}}]}`
	var req ChatRequest
	if err := decodeJSON([]byte(body), &req); err != nil {
		t.Fatal(err)
	}
	v, apiErr := s.validateChat(&req, 0)
	if apiErr != nil {
		t.Fatal(apiErr)
	}
	var got []string
	for _, m := range v.messages {
		got = append(got, m.Role+": "+m.Content)
	}
	want := []string{
		"system: You serve bank customers.\n\n" + v.tools.system,
		"user: Balance of A-1 & A-2?",
		`assistant: {"tool_calls":[{"name":"get_balance","arguments":{"account":"A-1"}},{"name":"get_balance","arguments":"not json"}]}`,
		`user: {"tool_results":[{"tool_call_id":"c1","name":"get_balance","content":"<1200>"},{"tool_call_id":"c2","name":"get_balance","content":"300"}]}`,
		`assistant: {"response":"A-1 holds 1200."}`,
		"user: Thanks",
	}
	if strings.Join(got, "\n---\n") != strings.Join(want, "\n---\n") {
		t.Errorf("messages:\n%s\nwant:\n%s", strings.Join(got, "\n---\n"), strings.Join(want, "\n---\n"))
	}
	if !strings.Contains(v.tools.system, `"description":"balance < limit"`) {
		t.Errorf("tools described as:\n%s", v.tools.system)
	}
}
