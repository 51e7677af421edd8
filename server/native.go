package server

// Native tool calling: when the model's own chat template describes tools
// in a syntax finserve knows, the tools and the conversation's calls and
// results are rendered by that template (package chattemplate, a Jinja
// engine) and the model answers in its family's syntax, which it was
// trained on; a grammar holds it to that syntax when a call is required.
// Other templates keep the generic format of tools.go.
//
// Families (the syntax of their templates, as of 2026-12-01):
//   - hermes: Qwen 2.5/3 and Hermes models, <tool_call>{"name": ...,
//     "arguments": ...}</tool_call>, several in one answer;
//   - llama3: Llama 3.1-3.3, one {"name": ..., "parameters": ...} object
//     as the whole answer.
//   - mistral: Ministral 3 and Mistral Medium 3.5, [TOOL_CALLS]NAME[ARGS]{...};
//   - harmony: gpt-oss, a commentary-channel message to=functions.NAME.
// The last two are made of control tokens: their answers carry the
// tokens' text (engine.Request.KeepSpecial), and their grammars refer to
// the tokens by id.

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/finserve/finserve/chattemplate"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/gbnf"
)

// toolFamily is a model family's tool-call syntax.
type toolFamily struct {
	name string
	tmpl *chattemplate.Template
	// call is the grammar of one call of the tool named name (a JSON
	// string) with arguments args (a grammar expression).
	call func(name, args string) string
	// many: an answer may hold several calls, joined by sep.
	many bool
	sep  string
	// parse reads an answer: its calls, and the text around them.
	parse func(text string) (content string, calls []ToolCall, ok bool)
	// keepSpecial: the syntax is made of control tokens, which the
	// answer's text must then carry (engine.Request.KeepSpecial).
	keepSpecial bool
}

var (
	hermesCall  = regexp.MustCompile(`(?s)<tool_call>\s*(.*?)\s*</tool_call>`)
	mistralCall = regexp.MustCompile(`(?s)\[TOOL_CALLS\]([A-Za-z0-9_-]+)\[ARGS\]`)
	harmonyCall = regexp.MustCompile(`(?s)to=functions\.([A-Za-z0-9_-]+)(?:[^<]|<\|channel\|>|<\|constrain\|>)*<\|message\|>(.*?)(?:<\|call\|>|<\|end\|>|$)`)
	harmonyText = regexp.MustCompile(`(?s)<\|channel\|>final<\|message\|>(.*?)(?:<\|return\|>|<\|end\|>|$)`)
	harmonyMark = regexp.MustCompile(`<\|[a-z_]+\|>`)
)

// families are the syntaxes known, in the order they are tried; make
// binds one to a model (its control tokens' ids), or fails when the
// model's vocabulary lacks one.
var families = []struct {
	name   string
	detect func(src string) bool
	make   func(m *engine.Model) (toolFamily, error)
}{
	{"hermes", func(src string) bool {
		// Qwen3-Coder writes XML inside <tool_call> (<function=NAME>): not this syntax
		return strings.Contains(src, "<tool_call>") && strings.Contains(src, "tools") && !strings.Contains(src, "<function=")
	}, func(*engine.Model) (toolFamily, error) {
		return toolFamily{
			call: func(name, args string) string {
				return gbnf.Literal("<tool_call>\n{\"name\": "+name+", \"arguments\": ") + " " + args + " " + gbnf.Literal("}\n</tool_call>")
			},
			many: true,
			sep:  "\n",
			parse: func(text string) (string, []ToolCall, bool) {
				var calls []ToolCall
				for _, m := range hermesCall.FindAllStringSubmatch(text, -1) {
					c, ok := callOf(m[1], "arguments")
					if !ok {
						return text, nil, false
					}
					calls = append(calls, c)
				}
				if len(calls) == 0 {
					return text, nil, false
				}
				return strings.TrimSpace(hermesCall.ReplaceAllString(text, "")), calls, true
			},
		}, nil
	}},
	{"llama3", func(src string) bool {
		return strings.Contains(src, "<|start_header_id|>") && strings.Contains(src, `"parameters": dictionary of argument name and its value`)
	}, func(*engine.Model) (toolFamily, error) {
		return toolFamily{
			call: func(name, args string) string {
				return gbnf.Literal("{\"name\": "+name+", \"parameters\": ") + " " + args + " " + gbnf.Literal("}")
			},
			parse: func(text string) (string, []ToolCall, bool) {
				s := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(text), "<|python_tag|>"))
				c, ok := callOf(s, "parameters")
				if !ok {
					return text, nil, false
				}
				return "", []ToolCall{c}, true
			},
		}, nil
	}},
	// Mistral's v13 syntax (Ministral 3, Mistral Medium 3.5):
	// [TOOL_CALLS]NAME[ARGS]{...}, repeated for several calls.
	{"mistral", func(src string) bool {
		return strings.Contains(src, "[TOOL_CALLS]") && strings.Contains(src, "[ARGS]")
	}, func(m *engine.Model) (toolFamily, error) {
		calls, err := controlToken(m, "[TOOL_CALLS]")
		if err != nil {
			return toolFamily{}, err
		}
		argsTok, err := controlToken(m, "[ARGS]")
		if err != nil {
			return toolFamily{}, err
		}
		return toolFamily{
			keepSpecial: true,
			call: func(name, args string) string {
				var bare string
				_ = json.Unmarshal([]byte(name), &bare)
				return calls + " " + gbnf.Literal(bare) + " " + argsTok + " " + args
			},
			many: true, // each call follows the last
			parse: func(text string) (string, []ToolCall, bool) {
				idx := mistralCall.FindAllStringSubmatchIndex(text, -1)
				if len(idx) == 0 {
					return text, nil, false
				}
				var calls []ToolCall
				for k, m := range idx {
					end := len(text)
					if k+1 < len(idx) {
						end = idx[k+1][0]
					}
					args := strings.TrimSpace(text[m[1]:end])
					if !json.Valid([]byte(args)) {
						return text, nil, false
					}
					calls = append(calls, ToolCall{ID: callID(), Type: "function",
						Function: ToolCallFunction{Name: text[m[2]:m[3]], Arguments: string(compactJSON(json.RawMessage(args)))}})
				}
				return strings.TrimSpace(text[:idx[0][0]]), calls, true
			},
		}, nil
	}},
	// OpenAI's harmony (gpt-oss): a call is a message on the commentary
	// channel to=functions.NAME; the answer is the final channel's.
	{"harmony", func(src string) bool {
		return strings.Contains(src, "<|channel|>") && strings.Contains(src, "to=") && strings.Contains(src, "functions.")
	}, func(m *engine.Model) (toolFamily, error) {
		toks := map[string]string{}
		for _, name := range []string{"<|channel|>", "<|message|>"} {
			ref, err := controlToken(m, name)
			if err != nil {
				return toolFamily{}, err
			}
			toks[name] = ref
		}
		return toolFamily{
			keepSpecial: true,
			call: func(name, args string) string {
				var bare string
				_ = json.Unmarshal([]byte(name), &bare)
				// as the template writes calls, after the prompt's
				// <|start|>assistant; <|call|> ends it, an end of
				// generation, which a grammar cannot ask for
				return gbnf.Literal(" to=functions."+bare) + " " + toks["<|channel|>"] + " " + gbnf.Literal("commentary json") + " " +
					toks["<|message|>"] + " " + args
			},
			parse: func(text string) (string, []ToolCall, bool) {
				var calls []ToolCall
				for _, m := range harmonyCall.FindAllStringSubmatch(text, -1) {
					args := strings.TrimSpace(m[2])
					if !json.Valid([]byte(args)) {
						return harmonyContent(text), nil, false
					}
					calls = append(calls, ToolCall{ID: callID(), Type: "function",
						Function: ToolCallFunction{Name: m[1], Arguments: string(compactJSON(json.RawMessage(args)))}})
				}
				if len(calls) == 0 {
					return harmonyContent(text), nil, false
				}
				return "", calls, true
			},
		}, nil
	}},
}

// harmonyContent is the final channel's message of a harmony answer, or
// the text without its markers when it has none.
func harmonyContent(text string) string {
	if m := harmonyText.FindStringSubmatch(text); m != nil {
		return strings.TrimSpace(m[1])
	}
	return strings.TrimSpace(harmonyMark.ReplaceAllString(text, ""))
}

// controlToken is the grammar reference of the model's control (or
// user-defined: llama.cpp types gpt-oss's <|channel|> so) token named
// text: llama.cpp's <[id]>.
func controlToken(m *engine.Model, text string) (string, error) {
	toks, err := m.Tokenize(text, false, true)
	if err != nil || len(toks) != 1 || !m.IsMarker(toks[0]) {
		return "", fmt.Errorf("the vocabulary has no control token %s", text)
	}
	return "<[" + strconv.Itoa(int(toks[0])) + "]>", nil
}

// callOf reads one call object: {"name": N, argsKey: A}, A an object (or
// a JSON string holding one).
func callOf(s, argsKey string) (ToolCall, bool) {
	var obj map[string]json.RawMessage
	if json.Unmarshal([]byte(s), &obj) != nil {
		return ToolCall{}, false
	}
	var name string
	if json.Unmarshal(obj["name"], &name) != nil || !toolNameRE.MatchString(name) {
		return ToolCall{}, false
	}
	args := bytes.TrimSpace(obj[argsKey])
	if len(args) > 0 && args[0] == '"' {
		var inner string
		_ = json.Unmarshal(args, &inner)
		args = []byte(inner)
	}
	if len(args) == 0 {
		args = []byte("{}")
	}
	if !json.Valid(args) {
		return ToolCall{}, false
	}
	return ToolCall{ID: callID(), Type: "function", Function: ToolCallFunction{Name: name, Arguments: string(compactJSON(args))}}, true
}

// nativeTools is a backend's tool family, found once from its own
// template (nil: the generic format).
type nativeTools struct {
	once sync.Once
	fam  *toolFamily
}

// toolFamily is b's family when the server renders with the model's own
// template (no --chat-template).
func (s *Server) toolFamily(b *backend) *toolFamily {
	if s.cfg.ChatTemplate != "" {
		return nil
	}
	b.native.once.Do(func() {
		src := b.model.Info().ChatTemplate
		for _, f := range families {
			if !f.detect(src) {
				continue
			}
			t, err := chattemplate.Compile(src)
			if err != nil {
				s.log.Warn("the model's chat template does not compile; tools use the generic format", "model", b.id, "err", err)
				return
			}
			fam, err := f.make(b.model)
			if err != nil {
				s.log.Warn("the model's tool syntax is not usable; tools use the generic format", "model", b.id, "family", f.name, "err", err)
				return
			}
			fam.name, fam.tmpl = f.name, t
			b.native.fam = &fam
			s.log.Info("tool calls in the model's own syntax", "model", b.id, "family", f.name)
			return
		}
	})
	return b.native.fam
}

// nativeGrammar is the grammar of an answer of calls in fam's syntax:
// one call, or with parallel calls up to maxParallelCalls.
func (p *toolPlan) nativeGrammar(fam *toolFamily) string {
	var alts []string
	for _, c := range p.calls {
		alts = append(alts, fam.call(c.name, c.args))
	}
	call := "(" + strings.Join(alts, " | ") + ")"
	root := call
	if p.parallel && fam.many {
		sep := ""
		if fam.sep != "" {
			sep = gbnf.Literal(fam.sep) + " "
		}
		root = call + " (" + sep + call + "){0," + strconv.Itoa(maxParallelCalls-1) + "}"
	}
	return p.b.Grammar(root)
}

// nativePrompt renders the conversation with the model's own template and
// tokenizes it, with chatPrompt's checks against forged markers.
func (s *Server) nativePrompt(b *backend, fam *toolFamily, v *chatRequest) ([]engine.Token, *APIError) {
	info := b.model.Info()
	bos, eos := "", ""
	if info.BOS >= 0 {
		bos = string(b.model.Piece(info.BOS))
	}
	if info.EOS >= 0 {
		eos = string(b.model.Piece(info.EOS))
	}
	render := func(contents []string) (string, error) {
		msgs := append([]chattemplate.Message(nil), v.native...)
		for i := range msgs {
			msgs[i].Content = contents[i]
		}
		text, err := fam.tmpl.Render(chattemplate.Input{Messages: msgs, Tools: v.toolDefs, AddGenerationPrompt: true, BOS: bos, EOS: eos})
		if err != nil {
			return "", err
		}
		// The tokenizer adds BOS itself, as llama.cpp's own rendering
		// assumes: a template that writes it would double it.
		if info.AddBOS && bos != "" {
			text = strings.TrimPrefix(text, bos)
		}
		return text, nil
	}
	contents := make([]string, len(v.native))
	var extra []string // tool call arguments: the model reads them too
	for i, m := range v.native {
		contents[i] = m.Content
		for _, c := range m.ToolCalls {
			extra = append(extra, string(c.Arguments))
		}
	}
	return s.promptOf(b, contents, extra, render)
}

// toolHistory says whether the conversation holds tool calls or results.
func (v *chatRequest) toolHistory() bool {
	for _, m := range v.native {
		if len(m.ToolCalls) > 0 || m.Role == "tool" {
			return true
		}
	}
	return false
}

// streamable is how many bytes of an answer's text so far may go out as
// content while it is written: none that may still turn out to be part of
// a call. Harmony's text is a channel's message, known at the end.
func (f *toolFamily) streamable(text string) int {
	marker := ""
	switch f.name {
	case "hermes":
		marker = "<tool_call>"
	case "mistral":
		marker = "[TOOL_CALLS]"
	case "llama3":
		// a call is the whole answer: one that starts otherwise is text
		t := strings.TrimLeft(text, " \t\r\n")
		if t == "" || t[0] == '{' || strings.HasPrefix(t, "<|python_tag|>") || strings.HasPrefix("<|python_tag|>", t) {
			return 0
		}
		return len(text)
	default:
		return 0
	}
	if i := strings.Index(text, marker); i >= 0 {
		return i
	}
	// hold back what may be the marker's beginning
	for k := min(len(marker)-1, len(text)); k > 0; k-- {
		if strings.HasSuffix(text, marker[:k]) {
			return len(text) - k
		}
	}
	return len(text)
}

// sendNative streams one event of an answer in the model's own syntax:
// text as it is known to be content (streamable), and at the end the rest
// of the content, or the calls, and the finish reason.
func (j *job) sendNative(send func(any) bool, i int, ch *choiceState, ev engine.Event, fam *toolFamily) bool {
	text := ch.text.String()
	emit := func(s string) bool {
		if s == "" {
			return true
		}
		return send(j.chatChunk(ChatChoice{Index: i, Delta: &AssistantOutput{Content: &s}}))
	}
	if !ev.Done {
		if n := fam.streamable(text); n > ch.sent {
			if !emit(text[ch.sent:n]) {
				return false
			}
			ch.sent = n
		}
		return true
	}
	finish := j.finishChunk(i, ev).(ChatResponse)
	content, calls, reason := j.toolAnswer(text)
	switch {
	case len(calls) > 0:
		for k := range calls {
			calls[k].Index = &k
		}
		finish.Choices[0].FinishReason = cmp.Or(reason, finish.Choices[0].FinishReason)
		var c *string // what streamed before the calls was their content
		if ch.sent == 0 {
			c = content
		}
		if !send(j.chatChunk(ChatChoice{Index: i, Delta: &AssistantOutput{Content: c, ToolCalls: calls}})) {
			return false
		}
	case ch.sent > 0:
		if !emit(text[ch.sent:]) {
			return false
		}
	case content != nil:
		if !emit(*content) {
			return false
		}
	}
	return send(finish)
}
