package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
)

// The wire types follow the OpenAI API reference. Fields the server does
// not implement but that change a response's meaning (tools, n > 1, ...)
// are decoded so that they can be refused with a clear error rather than
// silently ignored; fields that only annotate a request are ignored.

// ChatRequest is the body of POST /v1/chat/completions.
type ChatRequest struct {
	GenerationParams
	Messages            []ChatMessage   `json:"messages"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Logprobs            bool            `json:"logprobs"`
	TopLogprobs         *int            `json:"top_logprobs"`
	ResponseFormat      *ResponseFormat `json:"response_format"`
	Tools               []Tool          `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	ParallelToolCalls   *bool           `json:"parallel_tool_calls"`
	Functions           json.RawMessage `json:"functions"` // the deprecated form of tools: refused
}

// GenerationParams are the fields chat and completions requests share.
type GenerationParams struct {
	Model            string          `json:"model"`
	Stream           bool            `json:"stream"`
	StreamOptions    *StreamOptions  `json:"stream_options"`
	MaxTokens        *int            `json:"max_tokens"`
	Temperature      *float64        `json:"temperature"`
	TopP             *float64        `json:"top_p"`
	Seed             *int64          `json:"seed"`
	Stop             StopList        `json:"stop"`
	PresencePenalty  *float64        `json:"presence_penalty"`
	FrequencyPenalty *float64        `json:"frequency_penalty"`
	N                *int            `json:"n"`
	User             string          `json:"user"`
	LogitBias        json.RawMessage `json:"logit_bias"`
	Samplers
}

// Samplers are llama.cpp sampling extensions, named as llama-server names
// them, so that clients written for it work unchanged.
type Samplers struct {
	TopK          *int     `json:"top_k"`
	MinP          *float64 `json:"min_p"`
	RepeatPenalty *float64 `json:"repeat_penalty"`
	// IgnoreEOS keeps generating past end-of-generation tokens; benchmarks
	// use it to generate a fixed number of tokens.
	IgnoreEOS bool `json:"ignore_eos"`
	// CachePrompt false computes the whole prompt, reusing nothing from
	// the prefix cache (llama.cpp's extension; default true).
	CachePrompt *bool `json:"cache_prompt"`
	// NPredict is llama-server's name for max_tokens.
	NPredict *int `json:"n_predict"`
	// Grammar constrains the answer with a GBNF grammar (llama.cpp's),
	// which llama.cpp's parser checks before anything runs.
	Grammar *string `json:"grammar"`
	// JSONSchema is llama-server's JSON Schema constraint: the schema
	// itself, enforced as response_format json_schema's.
	JSONSchema json.RawMessage `json:"json_schema"`
}

// StreamOptions are the options of a streamed response.
type StreamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// ResponseFormat asks for a constrained output format.
type ResponseFormat struct {
	Type string `json:"type"`
	// JSONSchema is response_format json_schema's: the answer is a JSON
	// document that validates against Schema.
	JSONSchema *JSONSchemaFormat `json:"json_schema,omitempty"`
	// Schema is llama-server's form: type json_object with the schema
	// beside it, enforced as json_schema's.
	Schema json.RawMessage `json:"schema,omitempty"`
}

// JSONSchemaFormat is OpenAI's response_format.json_schema.
type JSONSchemaFormat struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	Schema      json.RawMessage `json:"schema"`
	// Strict is accepted either way: finserve always enforces the schema,
	// and refuses one it cannot enforce.
	Strict *bool `json:"strict,omitempty"`
}

// ChatMessage is one message of a chat request.
type ChatMessage struct {
	Role    string      `json:"role"`
	Content ChatContent `json:"content"`
	Name    string      `json:"name,omitempty"`
	// ToolCalls are an assistant's calls; ToolCallID says which call a
	// tool message answers.
	ToolCalls  []ToolCall `json:"tool_calls,omitempty"`
	ToolCallID string     `json:"tool_call_id,omitempty"`
}

// ChatContent is a message's content: a string or an array of parts, of
// which only text parts are supported.
type ChatContent struct {
	Text  string
	Null  bool   // the content was null or absent
	Other string // the type of the first part that is not text
}

// UnmarshalJSON accepts a string, null, or an array of content parts.
func (c *ChatContent) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		*c = ChatContent{Null: true}
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		*c = ChatContent{}
		return json.Unmarshal(b, &c.Text)
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(b, &parts); err != nil {
		return errors.New("content must be a string or an array of content parts")
	}
	*c = ChatContent{}
	var buf bytes.Buffer
	for _, p := range parts {
		if p.Type != "text" || p.Text == nil {
			if c.Other == "" {
				c.Other = p.Type
				if c.Other == "" {
					c.Other = "untyped"
				}
			}
			continue
		}
		buf.WriteString(*p.Text)
	}
	c.Text = buf.String()
	return nil
}

// MarshalJSON writes the content as a string.
func (c ChatContent) MarshalJSON() ([]byte, error) {
	if c.Null {
		return []byte("null"), nil
	}
	return json.Marshal(c.Text)
}

// StopList is "stop": a string, an array of strings, or null.
type StopList []string

// UnmarshalJSON accepts a string, an array of strings, or null.
func (s *StopList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*s = nil
		return nil
	case len(b) > 0 && b[0] == '"':
		var one string
		if err := json.Unmarshal(b, &one); err != nil {
			return err
		}
		*s = StopList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return errors.New("stop must be a string or an array of strings")
	}
	*s = many
	return nil
}

// CompletionRequest is the body of POST /v1/completions.
type CompletionRequest struct {
	GenerationParams
	Prompt   PromptList `json:"prompt"`
	Logprobs *int       `json:"logprobs"`
	BestOf   *int       `json:"best_of"`
	Echo     bool       `json:"echo"`
	Suffix   *string    `json:"suffix"`
}

// PromptList is a completion prompt: a string, an array of strings, an
// array of token ids, or an array of arrays of token ids. Each entry is
// one prompt, answered by one choice.
type PromptList struct {
	Texts  []string
	Tokens [][]int32
	Set    bool
}

// Len is the number of prompts.
func (p PromptList) Len() int { return len(p.Texts) + len(p.Tokens) }

// UnmarshalJSON accepts the four shapes OpenAI accepts.
func (p *PromptList) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	*p = PromptList{Set: !bytes.Equal(b, []byte("null"))}
	if !p.Set {
		return nil
	}
	var one string
	if json.Unmarshal(b, &one) == nil {
		p.Texts = []string{one}
		return nil
	}
	var texts []string
	if json.Unmarshal(b, &texts) == nil {
		p.Texts = texts
		return nil
	}
	var ids []int32
	if json.Unmarshal(b, &ids) == nil {
		p.Tokens = [][]int32{ids}
		return nil
	}
	var lists [][]int32
	if json.Unmarshal(b, &lists) == nil {
		p.Tokens = lists
		return nil
	}
	return errors.New("prompt must be a string, an array of strings, an array of token ids or an array of arrays of token ids")
}

// Usage counts the tokens of a request.
type Usage struct {
	PromptTokens        int                 `json:"prompt_tokens"`
	CompletionTokens    int                 `json:"completion_tokens"`
	TotalTokens         int                 `json:"total_tokens"`
	PromptTokensDetails PromptTokensDetails `json:"prompt_tokens_details"`
}

// PromptTokensDetails breaks the prompt tokens down, as OpenAI does.
type PromptTokensDetails struct {
	// CachedTokens were served from the prompt-prefix cache instead of
	// being computed.
	CachedTokens int `json:"cached_tokens"`
}

// Timings is finserve's extension field with a response's own timings, in
// milliseconds, named as llama-server names them where it has the same.
type Timings struct {
	QueueMS   float64 `json:"queue_ms"`
	PromptMS  float64 `json:"prompt_ms"`
	DecodeMS  float64 `json:"predicted_ms"`
	TTFTMS    float64 `json:"ttft_ms"`
	TotalMS   float64 `json:"total_ms"`
	PromptN   int     `json:"prompt_n"`
	DecodeN   int     `json:"predicted_n"`
	DecodeTPS float64 `json:"predicted_per_second"`
}

// ResponseHeader opens every completion response and stream chunk.
type ResponseHeader struct {
	ID                string `json:"id"`
	Object            string `json:"object"`
	Created           int64  `json:"created"`
	Model             string `json:"model"`
	SystemFingerprint string `json:"system_fingerprint"`
}

// ChatResponse is a chat completion, or one chunk of a streamed one.
type ChatResponse struct {
	ResponseHeader
	Choices []ChatChoice `json:"choices"`
	Usage   *Usage       `json:"usage"`
	Timings *Timings     `json:"timings,omitempty"`
}

// ChatChoice is one choice of a chat completion.
type ChatChoice struct {
	Index        int              `json:"index"`
	Message      *AssistantOutput `json:"message,omitempty"`
	Delta        *AssistantOutput `json:"delta,omitempty"`
	Logprobs     *ChatLogprobs    `json:"logprobs"`
	FinishReason *string          `json:"finish_reason"`
}

// AssistantOutput is a response message or a streamed delta.
type AssistantOutput struct {
	Role      string     `json:"role,omitempty"`
	Content   *string    `json:"content,omitempty"`
	Refusal   *string    `json:"refusal,omitempty"`
	ToolCalls []ToolCall `json:"tool_calls,omitempty"`
}

// ChatLogprobs are the log-probabilities of a choice's tokens.
type ChatLogprobs struct {
	Content []TokenLogprob `json:"content"`
	Refusal []TokenLogprob `json:"refusal"`
}

// TokenLogprob is one token's log-probability, with its alternatives.
type TokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float32      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []TopLogprob `json:"top_logprobs"`
}

// TopLogprob is one alternative token.
type TopLogprob struct {
	Token   string  `json:"token"`
	Logprob float32 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

// CompletionResponse is a legacy text completion, streamed or not.
type CompletionResponse struct {
	ResponseHeader
	Choices []CompletionChoice `json:"choices"`
	Usage   *Usage             `json:"usage"`
	Timings *Timings           `json:"timings,omitempty"`
}

// CompletionChoice is one choice of a text completion.
type CompletionChoice struct {
	Index        int                 `json:"index"`
	Text         string              `json:"text"`
	Logprobs     *CompletionLogprobs `json:"logprobs"`
	FinishReason *string             `json:"finish_reason"`
}

// CompletionLogprobs is the legacy completions log-probability format.
type CompletionLogprobs struct {
	Tokens        []string             `json:"tokens"`
	TokenLogprobs []float32            `json:"token_logprobs"`
	TopLogprobs   []map[string]float32 `json:"top_logprobs"`
	TextOffset    []int                `json:"text_offset"`
}

// Model is one entry of GET /v1/models.
type Model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
	// Meta is finserve's extension: what the model is (once loaded).
	Meta *ModelMeta `json:"meta,omitempty"`
	// Status is finserve's extension when several models are served.
	Status *ModelStatus `json:"status,omitempty"`
}

// ModelMeta describes a loaded model.
type ModelMeta struct {
	Architecture string `json:"architecture"`
	Params       uint64 `json:"n_params"`
	SizeBytes    uint64 `json:"size"`
	VocabSize    int    `json:"n_vocab"`
	TrainContext int    `json:"n_ctx_train"`
	Context      int    `json:"n_ctx"`
	Parallel     int    `json:"parallel"`
	// Embedding is the vector length (llama-server's n_embd); Pooling
	// is set for an embedding model (mean, cls or last), which serves
	// /v1/embeddings and no text.
	Embedding int    `json:"n_embd"`
	Pooling   string `json:"pooling,omitempty"`
}

// ModelList is GET /v1/models.
type ModelList struct {
	Object string  `json:"object"`
	Data   []Model `json:"data"`
}

// ErrorBody is the OpenAI error object.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail describes one error.
type ErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

var listIndex = regexp.MustCompile(`\.(\d+)`)

// fieldError is a decoding error in one field of the body.
type fieldError struct{ field, msg string }

func (e *fieldError) Error() string { return e.msg }

// bodyError is the 400 for a body decodeJSON refused, naming the field
// where it knows it.
func bodyError(err error) *APIError {
	var fe *fieldError
	if errors.As(err, &fe) {
		return badRequest(fe.field, "%s", fe.msg)
	}
	return badRequest("", "%s", err.Error())
}

// decodeJSON decodes one JSON object and refuses trailing data, so that a
// body such as `{...}{...}` is an error rather than half a request.
func decodeJSON(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return errors.New("the request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		var fe *fieldError
		switch {
		case errors.As(err, &fe):
			return fe // a field's own decoder named it
		case errors.As(err, &syn):
			return fmt.Errorf("the request body is not valid JSON: %s (at byte %d)", syn.Error(), syn.Offset)
		case errors.As(err, &typ):
			if typ.Field != "" {
				// OpenAI names list items messages[0].content; Go 1.27's
				// path is messages.0.content.
				field := listIndex.ReplaceAllString(typ.Field, "[$1]")
				return &fieldError{field, fmt.Sprintf("invalid type for %s: expected %s, got JSON %s", field, typ.Type, typ.Value)}
			}
			return fmt.Errorf("the request body must be a JSON object, got JSON %s", typ.Value)
		}
		return fmt.Errorf("the request body is not valid: %s", err.Error())
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("the request body has data after its JSON object")
	}
	return nil
}
