package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/finserve/finserve/chattemplate"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/gbnf"
)

const (
	maxMessages = 4096
	maxPrompts  = 64 // prompts in one completions request
)

// genParams is what a chat or completions request asks of the engine,
// validated: req is the engine request every prompt of it starts from
// (the prompt, tier, tenant and id are the generation's own).
type genParams struct {
	req          engine.Request
	stream       bool
	includeUsage bool
	// grammarFrom names what req's grammar was made from (response_format,
	// tools, grammar or json_schema), for the errors about it.
	grammarFrom string
}

// params reads the shared fields. OpenAI's defaults apply where a field
// is absent: temperature 1 (0 in a deterministic tier), top_p 1; the
// tier caps max_tokens. The bounds of every engine parameter are the
// engine's own (engine.Request.Check, which check runs once the request
// is complete). maxTokens is the request's token limit and param the
// field it came from.
func (c *GenerationParams) params(l limits, maxTokens *int, param string) (genParams, *APIError) {
	if c.NPredict != nil {
		if maxTokens != nil && *maxTokens != *c.NPredict {
			return genParams{}, badRequest("n_predict", "%s and n_predict (llama-server's name for it) disagree; send one", param)
		}
		maxTokens, param = c.NPredict, "n_predict"
	}
	p := genParams{stream: c.Stream}
	r := &p.req
	r.IgnoreEOS, r.NoCache = c.IgnoreEOS, c.CachePrompt != nil && !*c.CachePrompt
	if c.N != nil && *c.N != 1 {
		return p, unsupported("n", "n must be 1: this server returns one choice per prompt")
	}
	if c.StreamOptions != nil {
		if !c.Stream {
			return p, badRequest("stream_options", "stream_options is only allowed with stream: true")
		}
		p.includeUsage = c.StreamOptions.IncludeUsage
	}
	if len(c.LogitBias) > 0 && string(c.LogitBias) != "null" && string(c.LogitBias) != "{}" {
		return p, unsupported("logit_bias", "logit_bias is not supported")
	}

	r.MaxTokens = l.defaultMaxTokens
	if maxTokens != nil {
		switch n := *maxTokens; {
		case n < 1:
			return p, badRequest(param, "%s must be at least 1", param)
		case n > l.maxTokens:
			return p, badRequest(param, "%s is %d; this tier allows at most %d", param, n, l.maxTokens)
		default:
			r.MaxTokens = n
		}
	}

	s := &r.Sampling
	s.Temperature = 1
	if l.deterministic {
		s.Temperature = 0
	}
	set := func(dst *float32, v *float64) {
		if v != nil {
			*dst = float32(*v)
		}
	}
	set(&s.Temperature, c.Temperature)
	if c.TopP != nil && *c.TopP == 0 {
		// OpenAI accepts 0 and keeps only the most likely token.
		s.Temperature = 0
	} else {
		set(&s.TopP, c.TopP)
	}
	set(&s.PresencePenalty, c.PresencePenalty)
	set(&s.FrequencyPenalty, c.FrequencyPenalty)
	set(&s.MinP, c.MinP)
	set(&s.RepeatPenalty, c.RepeatPenalty)
	if c.TopK != nil {
		s.TopK = *c.TopK
	}
	if c.Seed != nil {
		// The sampler takes 32 bits; equal seeds still give equal output.
		seed := uint32(uint64(*c.Seed))
		s.Seed = &seed
	}
	r.Stop = c.Stop
	// llama-server's constraints. response_format and tools (chat) come
	// after; constrain refuses a second one.
	if isSet(c.JSONSchema) {
		g, apiErr := grammarOfSchema(c.JSONSchema, "json_schema")
		if apiErr != nil {
			return p, apiErr
		}
		_ = p.constrain(g, "json_schema") // the first: cannot conflict
	}
	if c.Grammar != nil && *c.Grammar != "" {
		if apiErr := p.constrain(*c.Grammar, "grammar"); apiErr != nil {
			return p, apiErr
		}
	}
	return p, nil
}

// constrain sets the grammar made from param (grammar, json_schema,
// response_format, tools), refusing a second constraint.
func (p *genParams) constrain(g, param string) *APIError {
	if p.grammarFrom != "" {
		return badRequest(param, "%s and %s are two constraints on one answer; send one", p.grammarFrom, param)
	}
	p.req.Sampling.Grammar, p.grammarFrom = g, param
	return nil
}

// check runs the engine's own checks on the complete request, before
// the prompt is tokenized, so that a client sees the same bounds
// whichever way it reaches the engine.
func (p *genParams) check() *APIError {
	if err := p.req.Check(); err != nil {
		var ir *engine.InvalidRequestError
		if errors.As(err, &ir) && ir.Field == "grammar" {
			// the grammar is what the client asked for (response_format,
			// tools, grammar, json_schema): what conflicts with it is
			// ignore_eos
			return badRequest("ignore_eos", "ignore_eos cannot be combined with %s: the answer ends where its grammar completes", p.grammarFrom)
		}
		if errors.As(err, &ir) {
			return badRequest(ir.Field, "%s %s", ir.Field, ir.Reason)
		}
		return badRequest("", "%v", err)
	}
	return nil
}

// chatRequest is a validated chat request.
type chatRequest struct {
	genParams
	messages []engine.Message
	tools    *toolPlan // nil: the answer is free text
	// native and toolDefs are the conversation and tools as OpenAI sent
	// them, for a model whose own template renders tools (native.go).
	native   []chattemplate.Message
	toolDefs []chattemplate.Tool
}

func (s *Server) validateChat(r *ChatRequest, tier engine.Tier) (*chatRequest, *APIError) {
	if err := s.checkModel(r.Model); err != nil {
		return nil, err
	}
	maxTokens, param := r.MaxTokens, "max_tokens"
	if r.MaxCompletionTokens != nil {
		if r.MaxTokens != nil && *r.MaxTokens != *r.MaxCompletionTokens {
			return nil, badRequest("max_completion_tokens", "max_tokens and max_completion_tokens disagree; send one")
		}
		maxTokens, param = r.MaxCompletionTokens, "max_completion_tokens"
	}
	p, err := r.params(s.limitsOf(tier), maxTokens, param)
	if err != nil {
		return nil, err
	}
	if isSet(r.Functions) {
		return nil, unsupported("functions", "functions is deprecated and not supported; send tools")
	}
	tools, apiErr := toolsOf(r)
	if apiErr != nil {
		return nil, apiErr
	}
	if f := r.ResponseFormat; f != nil {
		g := ""
		switch f.Type {
		case "", "text":
		case "json_object":
			g = jsonObjectGrammar
			if isSet(f.Schema) { // llama-server's form of json_schema
				if g, apiErr = grammarOfSchema(f.Schema, "response_format.schema"); apiErr != nil {
					return nil, apiErr
				}
			}
		case "json_schema":
			if g, apiErr = schemaGrammar(f.JSONSchema); apiErr != nil {
				return nil, apiErr
			}
		default:
			return nil, unsupported("response_format",
				"response_format %q is not supported; use json_schema, json_object or text", f.Type)
		}
		if g != "" {
			if apiErr := p.constrain(g, "response_format"); apiErr != nil {
				return nil, apiErr
			}
		}
	}
	if tools != nil {
		switch {
		case r.ResponseFormat != nil && r.ResponseFormat.Type != "" && r.ResponseFormat.Type != "text":
			return nil, unsupported("response_format", "response_format %q together with tools is not supported; describe the answer as a tool's parameters", r.ResponseFormat.Type)
		case r.Logprobs:
			return nil, unsupported("logprobs", "logprobs together with tools is not supported")
		}
		if apiErr := p.constrain(tools.grammar, "tools"); apiErr != nil {
			return nil, apiErr
		}
	}
	if r.TopLogprobs != nil {
		if !r.Logprobs {
			return nil, badRequest("top_logprobs", "top_logprobs requires logprobs: true")
		}
		p.req.TopLogprobs = *r.TopLogprobs
	}
	p.req.Logprobs = r.Logprobs
	if err := p.check(); err != nil {
		return nil, err
	}

	if len(r.Messages) == 0 {
		return nil, badRequest("messages", "messages must contain at least one message")
	}
	if len(r.Messages) > maxMessages {
		return nil, badRequest("messages", "messages has %d entries; at most %d are allowed", len(r.Messages), maxMessages)
	}
	out := &chatRequest{genParams: p, messages: make([]engine.Message, 0, len(r.Messages)), tools: tools}
	called := map[string]string{} // tool call id -> the function it called
	var results []toolResult      // consecutive tool messages, for one user turn
	flush := func() {
		if len(results) > 0 {
			out.messages = append(out.messages, engine.Message{Role: "user", Content: resultsJSON(results)})
			results = nil
		}
	}
	for i, m := range r.Messages {
		param := "messages[" + strconv.Itoa(i) + "]"
		role := m.Role
		switch role {
		case "system", "user", "assistant", "tool":
		case "developer":
			role = "system" // OpenAI's newer name for the system role
		case "function":
			return nil, unsupported(param+".role", "role \"function\" is deprecated and not supported; send tool messages")
		case "":
			return nil, badRequest(param+".role", "%s.role is required", param)
		default:
			return nil, badRequest(param+".role", "role %q is not one of system, developer, user, assistant or tool", role)
		}
		if m.Content.Other != "" {
			return nil, unsupported(param+".content", "content parts of type %q are not supported; send text parts", m.Content.Other)
		}
		if m.Content.Null && role != "assistant" {
			return nil, badRequest(param+".content", "%s.content is required", param)
		}
		if !utf8.ValidString(m.Content.Text) || strings.IndexByte(m.Content.Text, 0) >= 0 {
			return nil, badRequest(param+".content", "%s.content must be valid UTF-8 without NUL characters", param)
		}
		if len(m.ToolCalls) > 0 && role != "assistant" {
			return nil, badRequest(param+".tool_calls", "only assistant messages have tool_calls")
		}
		content := m.Content.Text
		nm := chattemplate.Message{Role: role, Content: content, ToolCallID: m.ToolCallID}
		for _, c := range m.ToolCalls {
			args := json.RawMessage(c.Function.Arguments)
			if !json.Valid(args) {
				args = promptJSON(c.Function.Arguments) // kept as a JSON string
			}
			nm.ToolCalls = append(nm.ToolCalls, chattemplate.ToolCall{ID: c.ID, Name: c.Function.Name, Arguments: args})
		}
		if role == "tool" {
			nm.Name = called[m.ToolCallID]
		}
		out.native = append(out.native, nm)
		switch {
		case role == "tool":
			name, ok := called[m.ToolCallID]
			if !ok {
				return nil, badRequest(param+".tool_call_id", "%s.tool_call_id %q answers no tool call of an earlier assistant message", param, m.ToolCallID)
			}
			results = append(results, toolResult{ToolCallID: m.ToolCallID, Name: name, Content: content})
			continue
		case len(m.ToolCalls) > 0:
			for k, c := range m.ToolCalls {
				cp := param + ".tool_calls[" + strconv.Itoa(k) + "]"
				switch {
				case c.Type != "" && c.Type != "function":
					return nil, badRequest(cp+".type", "%s.type must be \"function\"", cp)
				case c.ID == "":
					return nil, badRequest(cp+".id", "%s.id is required", cp)
				case !toolNameRE.MatchString(c.Function.Name):
					return nil, badRequest(cp+".function.name", "%s.function.name must be 1 to 64 letters, digits, underscores or dashes", cp)
				case !utf8.ValidString(c.Function.Arguments) || strings.IndexByte(c.Function.Arguments, 0) >= 0:
					return nil, badRequest(cp+".function.arguments", "%s.function.arguments must be valid UTF-8 without NUL characters", cp)
				}
				called[c.ID] = c.Function.Name
			}
			content = strings.TrimSpace(content + "\n" + callsJSON(m.ToolCalls))
		case role == "assistant" && tools != nil:
			// the answer as the model writes it when it has tools
			content = `{"response":` + string(promptJSON(content)) + `}`
		}
		flush()
		out.messages = append(out.messages, engine.Message{Role: role, Content: content})
	}
	flush()
	if tools != nil {
		out.messages = withToolsSystem(out.messages, tools.system)
	}
	for _, t := range r.Tools { // with tool_choice none too: the model sees them, calls none
		out.toolDefs = append(out.toolDefs, chattemplate.Tool{Name: t.Function.Name, Description: t.Function.Description,
			Parameters: t.Function.Parameters})
	}
	return out, nil
}

// completionRequest is a validated completions request.
type completionRequest struct {
	genParams
	prompts PromptList
}

func (s *Server) validateCompletion(r *CompletionRequest, tier engine.Tier) (*completionRequest, *APIError) {
	if err := s.checkModel(r.Model); err != nil {
		return nil, err
	}
	l := s.limitsOf(tier)
	maxTokens := r.MaxTokens
	if maxTokens == nil && r.NPredict == nil {
		// The completions API defaults to 16 tokens.
		sixteen := min(16, l.maxTokens)
		maxTokens = &sixteen
	}
	p, err := r.params(l, maxTokens, "max_tokens")
	if err != nil {
		return nil, err
	}
	switch {
	case r.BestOf != nil && *r.BestOf != 1:
		return nil, unsupported("best_of", "best_of must be 1")
	case r.Echo:
		return nil, unsupported("echo", "echo is not supported")
	case r.Suffix != nil && *r.Suffix != "":
		return nil, unsupported("suffix", "suffix is not supported")
	}
	if r.Logprobs != nil {
		if *r.Logprobs < 0 || *r.Logprobs > 5 {
			return nil, badRequest("logprobs", "logprobs must be between 0 and 5")
		}
		p.req.Logprobs, p.req.TopLogprobs = true, *r.Logprobs
	}
	if err := p.check(); err != nil {
		return nil, err
	}
	if !r.Prompt.Set || r.Prompt.Len() == 0 {
		return nil, badRequest("prompt", "prompt is required")
	}
	if r.Prompt.Len() > maxPrompts {
		return nil, badRequest("prompt", "prompt has %d entries; at most %d are allowed", r.Prompt.Len(), maxPrompts)
	}
	for i, t := range r.Prompt.Texts {
		if !utf8.ValidString(t) || strings.IndexByte(t, 0) >= 0 {
			return nil, badRequest("prompt", "prompt %d must be valid UTF-8 without NUL characters", i)
		}
	}
	return &completionRequest{genParams: p, prompts: r.Prompt}, nil
}

func isSet(raw []byte) bool {
	s := strings.TrimSpace(string(raw))
	return s != "" && s != "null" && s != "[]"
}

// schemaNameRE is OpenAI's rule for response_format.json_schema.name.
var schemaNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// schemaGrammar is the grammar of a json_schema response format: a 400
// naming the schema keyword it cannot enforce, never a looser grammar.
func schemaGrammar(f *JSONSchemaFormat) (string, *APIError) {
	const param = "response_format.json_schema"
	switch {
	case f == nil:
		return "", badRequest(param, "response_format json_schema needs a json_schema object with a name and a schema")
	case !schemaNameRE.MatchString(f.Name):
		return "", badRequest(param+".name", "json_schema.name must be 1 to 64 letters, digits, underscores or dashes")
	case len(bytes.TrimSpace(f.Schema)) == 0 || string(bytes.TrimSpace(f.Schema)) == "null":
		return "", badRequest(param+".schema", "json_schema.schema is required")
	}
	return grammarOfSchema(f.Schema, param+".schema")
}

// grammarOfSchema converts the JSON Schema at param into a grammar.
func grammarOfSchema(schema json.RawMessage, param string) (string, *APIError) {
	g, err := gbnf.FromSchema(schema)
	var un *gbnf.UnsupportedError
	switch {
	case errors.As(err, &un):
		return "", unsupported(param, "%s", err.Error())
	case err != nil:
		return "", badRequest(param, "%s", err.Error())
	}
	return g, nil
}

// jsonObjectGrammar constrains output to one JSON object (RFC 8259), as
// response_format json_object promises. Whitespace between tokens is
// bounded to one character so that a model cannot pad forever; the object
// is the whole output, so end-of-generation follows its closing brace.
const jsonObjectGrammar = `root   ::= object
value  ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws ( member ( "," ws member )* )? "}"
member ::= string ws ":" ws value ws
array  ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1f\uD800-\uDFFF\U00110000-\U001FFFFF] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] ) )* "\""
number ::= "-"? ( "0" | [1-9] [0-9]* ) ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
ws     ::= [ \t\n]?
`
