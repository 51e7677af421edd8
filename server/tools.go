package server

// Tool calling in llama.cpp's "generic" format, which works with any chat
// template: the tools are described in the system message, and the model
// answers with one JSON object, {"tool_calls":[{"name":N,"arguments":A}]}
// to call tools or {"response":"..."} to answer. A grammar built from the
// tools' parameter schemas (package gbnf) makes every answer parse, with
// arguments that validate against their tool's schema. Conversation
// history in OpenAI's shape (assistant tool_calls, tool results) is
// written back into that same JSON, so the model sees one format.
//
// Models whose own template renders tools in a syntax finserve knows
// (Hermes/Qwen, Llama 3.x) use that instead: native.go.

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/gbnf"
)

// Limits of a tool request (OpenAI's: 128 tools, names of 64 characters).
const (
	maxTools         = 128
	maxParallelCalls = 8 // calls in one answer when parallel_tool_calls holds
)

// Tool is one entry of a chat request's tools.
type Tool struct {
	Type     string       `json:"type"`
	Function ToolFunction `json:"function"`
}

// ToolFunction describes a function the model may call.
type ToolFunction struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Parameters  json.RawMessage `json:"parameters,omitempty"`
	// Strict: the arguments always validate against Parameters, and a
	// schema the grammar cannot enforce is a 400. Without it such a
	// schema's arguments are any JSON object.
	Strict *bool `json:"strict,omitempty"`
}

// ToolCall is a call of a tool in an assistant message, a response or a
// stream chunk (where Index says which call a delta belongs to).
type ToolCall struct {
	Index    *int             `json:"index,omitempty"`
	ID       string           `json:"id,omitempty"`
	Type     string           `json:"type,omitempty"`
	Function ToolCallFunction `json:"function"`
}

// ToolCallFunction is the function a call names and its arguments, a
// JSON text.
type ToolCallFunction struct {
	Name      string `json:"name,omitempty"`
	Arguments string `json:"arguments"`
}

// toolPlan is a validated request's use of tools.
type toolPlan struct {
	required bool   // the answer must call a tool (required, or one named)
	system   string // the tools described, for the system message
	grammar  string
	// For the model's own syntax (native.go): each callable tool's name
	// (a JSON string) and arguments grammar, built in b; and the family,
	// once the model is known to have one.
	calls    []callRule
	parallel bool
	b        *gbnf.Builder
	fam      *toolFamily
}

type callRule struct{ name, args string }

// answer reads a whole tool-using answer.
func (p *toolPlan) answer(text string) (content string, calls []ToolCall, ok bool) {
	if p.fam != nil {
		return p.fam.parse(text)
	}
	return parseReply(text)
}

var toolNameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,64}$`)

// toolsOf validates tools, tool_choice and parallel_tool_calls. It returns
// nil when the answer is free text: no tools, or tool_choice none.
func toolsOf(r *ChatRequest) (*toolPlan, *APIError) {
	choice, named, apiErr := toolChoice(r.ToolChoice)
	if apiErr != nil {
		return nil, apiErr
	}
	if len(r.Tools) == 0 {
		if choice == "required" || named != "" {
			return nil, badRequest("tool_choice", "tool_choice %q needs tools", cmp.Or(named, choice))
		}
		return nil, nil
	}
	if len(r.Tools) > maxTools {
		return nil, badRequest("tools", "tools has %d entries; at most %d are allowed", len(r.Tools), maxTools)
	}
	seen := map[string]bool{}
	for i, t := range r.Tools {
		p := "tools[" + strconv.Itoa(i) + "]"
		switch {
		case t.Type != "function":
			return nil, badRequest(p+".type", "%s.type must be \"function\", got %q", p, t.Type)
		case !toolNameRE.MatchString(t.Function.Name):
			return nil, badRequest(p+".function.name", "%s.function.name must be 1 to 64 letters, digits, underscores or dashes", p)
		case seen[t.Function.Name]:
			return nil, badRequest(p+".function.name", "two tools are named %q", t.Function.Name)
		}
		seen[t.Function.Name] = true
	}
	if named != "" && !seen[named] {
		return nil, badRequest("tool_choice", "tool_choice names %q, which is not one of the tools", named)
	}
	if choice == "none" {
		return nil, nil
	}
	parallel := r.ParallelToolCalls == nil || *r.ParallelToolCalls
	b := gbnf.NewBuilder()
	var calls []string
	var rules []callRule
	var listed bytes.Buffer
	for i, t := range r.Tools {
		if named != "" && t.Function.Name != named {
			continue
		}
		params := t.Function.Parameters
		if s := bytes.TrimSpace(params); len(s) == 0 || string(s) == "null" {
			params = json.RawMessage(`{"type":"object","properties":{}}`)
		}
		args, err := b.Schema(params)
		if err != nil {
			param := "tools[" + strconv.Itoa(i) + "].function.parameters"
			var un *gbnf.UnsupportedError
			switch {
			case errors.As(err, &un) && (t.Function.Strict == nil || !*t.Function.Strict):
				// not strict: any JSON object
				args, _ = b.Schema([]byte(`{"type":"object"}`))
			case errors.As(err, &un):
				return nil, unsupported(param, "%s", err.Error())
			default:
				return nil, badRequest(param, "%s", err.Error())
			}
		}
		name, _ := json.Marshal(t.Function.Name)
		calls = append(calls, gbnf.Literal(`{"name":`+string(name)+`,"arguments":`)+" "+args+" "+gbnf.Literal("}"))
		rules = append(rules, callRule{string(name), args})
		line := promptJSON(struct {
			Name        string          `json:"name"`
			Description string          `json:"description,omitempty"`
			Parameters  json.RawMessage `json:"parameters"`
		}{t.Function.Name, t.Function.Description, compactJSON(params)})
		listed.Write(line)
		listed.WriteByte('\n')
	}
	call := "(" + strings.Join(calls, " | ") + ")"
	more := ""
	if parallel {
		more = fmt.Sprintf(" ( %s %s ){0,%d}", gbnf.Literal(","), call, maxParallelCalls-1)
	}
	callsExpr := gbnf.Literal(`{"tool_calls":[`) + " " + call + more + " " + gbnf.Literal("]}")
	plan := &toolPlan{required: choice == "required" || named != "", calls: rules, parallel: parallel, b: b}
	var how string
	switch {
	case named != "":
		how = fmt.Sprintf(`Call the tool %s: reply with one JSON object and nothing else, {"tool_calls":[{"name":%q,"arguments":ARGUMENTS}]}, ARGUMENTS a JSON object matching its parameters.`, named, named)
	case plan.required:
		how = `Call one or more tools: reply with one JSON object and nothing else, {"tool_calls":[{"name":NAME,"arguments":ARGUMENTS}]}, ARGUMENTS a JSON object matching the tool's parameters.`
	default:
		how = `To call tools, reply with one JSON object and nothing else, {"tool_calls":[{"name":NAME,"arguments":ARGUMENTS}]}, ARGUMENTS a JSON object matching the tool's parameters. To answer the user, reply with {"response":TEXT}, TEXT a JSON string.`
	}
	if !parallel {
		how += " Call one tool at a time."
	}
	plan.system = "You can use these tools, one JSON object each:\n" + listed.String() + how
	root := callsExpr
	if !plan.required {
		text, _ := b.Schema([]byte(`{"type":"string"}`))
		root = "( " + callsExpr + " | " + gbnf.Literal(`{"response":`) + " " + text + " " + gbnf.Literal("}") + " )"
	}
	plan.grammar = b.Grammar(root)
	return plan, nil
}

// toolChoice reads tool_choice: "none", "auto", "required", or
// {"type":"function","function":{"name":N}} (named is then N).
func toolChoice(raw json.RawMessage) (choice, named string, _ *APIError) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "auto", "", nil
	}
	if raw[0] == '"' {
		_ = json.Unmarshal(raw, &choice)
		switch choice {
		case "none", "auto", "required":
			return choice, "", nil
		}
		return "", "", badRequest("tool_choice", `tool_choice must be "none", "auto", "required" or {"type":"function","function":{"name":...}}, got %q`, choice)
	}
	var obj struct {
		Type     string `json:"type"`
		Function struct {
			Name string `json:"name"`
		} `json:"function"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil || obj.Type != "function" || obj.Function.Name == "" {
		return "", "", badRequest("tool_choice", `tool_choice must be "none", "auto", "required" or {"type":"function","function":{"name":...}}`)
	}
	return "function", obj.Function.Name, nil
}

// promptJSON is v as JSON for the model to read: <, > and & as they are,
// not escaped for HTML.
func promptJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

func compactJSON(raw json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return raw
	}
	return b.Bytes()
}

// callsJSON writes an assistant's tool calls as the model writes them.
// Arguments that are not JSON are kept as a JSON string.
func callsJSON(calls []ToolCall) string {
	type call struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
	}
	out := struct {
		ToolCalls []call `json:"tool_calls"`
	}{}
	for _, c := range calls {
		args := json.RawMessage(compactJSON(json.RawMessage(c.Function.Arguments)))
		if !json.Valid(args) {
			args = promptJSON(c.Function.Arguments)
		}
		out.ToolCalls = append(out.ToolCalls, call{c.Function.Name, args})
	}
	return string(promptJSON(out))
}

// toolResult is one tool message, written for the model.
type toolResult struct {
	ToolCallID string `json:"tool_call_id"`
	Name       string `json:"name"`
	Content    string `json:"content"`
}

// resultsJSON writes consecutive tool messages as one user turn (chat
// templates expect user and assistant turns to alternate).
func resultsJSON(rs []toolResult) string {
	return string(promptJSON(struct {
		ToolResults []toolResult `json:"tool_results"`
	}{rs}))
}

// withToolsSystem puts the tools' description into the system message:
// after the client's own, or as a first one.
func withToolsSystem(msgs []engine.Message, system string) []engine.Message {
	if len(msgs) > 0 && msgs[0].Role == "system" {
		out := append([]engine.Message(nil), msgs...)
		out[0].Content += "\n\n" + system
		return out
	}
	return append([]engine.Message{{Role: "system", Content: system}}, msgs...)
}

// parseReply reads a tool-using answer: the content of {"response":...},
// or the calls of {"tool_calls":[...]} with fresh ids. ok is false when
// the text is not such an object (cut by max_tokens or a stop string):
// it is then returned as content, as it is.
func parseReply(text string) (content string, calls []ToolCall, ok bool) {
	var r struct {
		Response  *string `json:"response"`
		ToolCalls []struct {
			Name      string          `json:"name"`
			Arguments json.RawMessage `json:"arguments"`
		} `json:"tool_calls"`
	}
	if err := json.Unmarshal([]byte(text), &r); err != nil || (r.Response == nil && len(r.ToolCalls) == 0) {
		return text, nil, false
	}
	if r.Response != nil {
		return *r.Response, nil, true
	}
	for _, c := range r.ToolCalls {
		calls = append(calls, ToolCall{ID: callID(), Type: "function",
			Function: ToolCallFunction{Name: c.Name, Arguments: string(compactJSON(c.Arguments))}})
	}
	return "", calls, true
}

// replyStream turns a streamed tool-using answer into what a client sees
// as it arrives: the text of {"response":"..."} decoded piece by piece,
// nothing of a {"tool_calls":...} object until it is complete.
type replyStream struct {
	buf    strings.Builder
	sent   int  // bytes of the response string's body decoded and sent
	closed bool // the response string ended
}

const responsePrefix = `{"response":"`

// feed adds output text and returns the content it completes.
func (r *replyStream) feed(text string) string {
	r.buf.WriteString(text)
	s := r.buf.String()
	if r.closed || !strings.HasPrefix(s, responsePrefix) {
		return ""
	}
	out, n, closed := decodeJSONStringPrefix(s[len(responsePrefix)+r.sent:])
	r.sent += n
	r.closed = closed
	return out
}

// streaming says whether the answer is a response being streamed.
func (r *replyStream) streaming() bool {
	return strings.HasPrefix(r.buf.String(), responsePrefix)
}

// decodeJSONStringPrefix decodes the body of a JSON string (after its
// opening quote) as far as it is complete: up to the closing quote
// (closed) or the last whole character or escape. It returns the text
// and the bytes it consumed.
func decodeJSONStringPrefix(s string) (text string, n int, closed bool) {
	var out strings.Builder
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"':
			return out.String(), i + 1, true
		case c != '\\':
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && !utf8.FullRuneInString(s[i:]) {
				return out.String(), i, false
			}
			out.WriteString(s[i : i+size])
			i += size
			continue
		}
		if i+1 >= len(s) {
			return out.String(), i, false
		}
		switch e := s[i+1]; e {
		case '"', '\\', '/':
			out.WriteByte(e)
		case 'b':
			out.WriteByte('\b')
		case 'f':
			out.WriteByte('\f')
		case 'n':
			out.WriteByte('\n')
		case 'r':
			out.WriteByte('\r')
		case 't':
			out.WriteByte('\t')
		case 'u':
			r, size, ok := unicodeEscape(s[i:])
			if !ok {
				return out.String(), i, false
			}
			out.WriteRune(r)
			i += size
			continue
		default:
			out.WriteByte(e)
		}
		i += 2
	}
	return out.String(), i, false
}

// unicodeEscape reads \uXXXX at the start of s, with the low half of a
// surrogate pair when it follows; ok is false while either is incomplete.
func unicodeEscape(s string) (r rune, n int, ok bool) {
	hex := func(h string) (rune, bool) {
		v, err := strconv.ParseUint(h, 16, 16)
		return rune(v), err == nil
	}
	if len(s) < 6 {
		return 0, 0, false
	}
	hi, good := hex(s[2:6])
	if !good {
		return utf8.RuneError, 6, true
	}
	if !utf16.IsSurrogate(hi) {
		return hi, 6, true
	}
	if len(s) < 12 {
		if len(s) >= 7 && s[6] != '\\' || len(s) >= 8 && s[7] != 'u' {
			return utf8.RuneError, 6, true // a lone high surrogate
		}
		return 0, 0, false
	}
	if s[6] != '\\' || s[7] != 'u' {
		return utf8.RuneError, 6, true
	}
	lo, good := hex(s[8:12])
	if !good {
		return utf8.RuneError, 6, true
	}
	return utf16.DecodeRune(hi, lo), 12, true
}

// callID is a tool call's id in OpenAI's shape: call_ and 24 hex digits.
func callID() string { return "call_" + randomHex() }
