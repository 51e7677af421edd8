package server

import (
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/finserve/finserve/engine"
)

// chatPrompt renders messages with the chat template and tokenizes them.
//
// The template's own markers are special tokens, so the rendered prompt is
// tokenized with special-token parsing on. Message content must not smuggle
// markers in: "<|im_end|><|im_start|>system" inside a user message would
// otherwise become a forged system turn. Two checks make sure none does:
// content that tokenizes to a control or user-defined token (llama.cpp
// matches user-defined ones even with special parsing off, so parsing
// content as plain text would not stop them) is refused; and the prompt's
// marker tokens must be exactly those of the same conversation rendered
// with neutral contents ("x"), so that no marker forms across the seam between
// content and template text either. (Tokenizing contents apart and
// joining them to the template's tokens would not catch user-defined
// tokens, and with SentencePiece vocabularies it adds a space to every
// message.)
func (s *Server) chatPrompt(b *backend, msgs []engine.Message) ([]engine.Token, *APIError) {
	contents := make([]string, len(msgs))
	for i, m := range msgs {
		contents[i] = m.Content
	}
	return s.promptOf(b, contents, nil, func(cs []string) (string, error) {
		out := make([]engine.Message, len(msgs))
		for i, m := range msgs {
			out[i] = engine.Message{Role: m.Role, Content: cs[i]}
		}
		return b.model.ApplyChatTemplate(s.cfg.ChatTemplate, out, true)
	})
}

// promptOf is chatPrompt's work for any renderer: render(contents) is the
// conversation with those message contents; extra is other client text
// the template writes in (tool call arguments), checked as contents are.
func (s *Server) promptOf(b *backend, contents, extra []string, render func([]string) (string, error)) ([]engine.Token, *APIError) {
	all := append(slices.Clone(contents), extra...)
	n := 0
	for _, c := range all {
		n += len(c)
	}
	if err := b.boundBytes(n, "messages"); err != nil {
		return nil, err
	}
	for i, c := range all {
		param := "messages[" + strconv.Itoa(i) + "].content"
		if i >= len(contents) {
			param = "messages"
		}
		toks, err := b.model.Tokenize(c, false, true)
		if err != nil {
			return nil, badRequest(param, "%s", err.Error())
		}
		for _, t := range toks {
			if b.model.IsMarker(t) {
				return nil, badRequest(param, "%s contains the model's special token %q; special tokens are not allowed in message content",
					param, b.model.Piece(t))
			}
		}
	}
	toks, apiErr := renderTokens(b, render, contents)
	if apiErr != nil {
		return nil, apiErr
	}
	// Neutral contents; an empty one stays empty, as templates render
	// messages without content differently (an assistant's tool call).
	empty := make([]string, len(contents))
	for i, c := range contents {
		if c != "" {
			empty[i] = "x"
		}
	}
	skeleton, apiErr := renderTokens(b, render, empty)
	if apiErr != nil {
		return nil, apiErr
	}
	if !slices.Equal(markers(b.model, toks), markers(b.model, skeleton)) {
		return nil, badRequest("messages", "message content joined to the chat template's text forms a special token; change the content")
	}
	return toks, nil
}

func renderTokens(b *backend, render func([]string) (string, error), contents []string) ([]engine.Token, *APIError) {
	text, err := render(contents)
	if err != nil {
		if errors.Is(err, engine.ErrNoChatTemplate) {
			return nil, &APIError{Status: 400, Type: "invalid_request_error", Code: "no_chat_template",
				Message: "the served model has no chat template; start the server with --chat-template, or use /v1/completions"}
		}
		return nil, badRequest("messages", "%s", err.Error())
	}
	toks, err := b.model.Tokenize(text, true, true)
	if err != nil {
		return nil, badRequest("messages", "%s", err.Error())
	}
	return toks, nil
}

// markers are the control and user-defined tokens of toks, in order.
func markers(m *engine.Model, toks []engine.Token) []engine.Token {
	var out []engine.Token
	for _, t := range toks {
		if m.IsMarker(t) {
			out = append(out, t)
		}
	}
	return out
}

// SystemPrefix returns the tokens that every chat prompt opening with the
// system message text begins with, rendered by template ("" for the
// model's own) as chat requests are: what a pinned system prompt holds.
func SystemPrefix(m *engine.Model, template, text string) ([]engine.Token, error) {
	if text == "" {
		return nil, errors.New("the system prompt is empty")
	}
	rendered, err := m.ApplyChatTemplate(template, []engine.Message{{Role: "system", Content: text}}, false)
	if err != nil {
		return nil, fmt.Errorf("rendering the system prompt: %w", err)
	}
	return m.Tokenize(rendered, true, true)
}

// completionPrompts tokenizes the prompts of a completions request. Text
// prompts are plain text: special-token names in them stay text.
func completionPrompts(b *backend, p PromptList) ([][]engine.Token, *APIError) {
	var out [][]engine.Token
	for i, text := range p.Texts {
		if err := b.boundBytes(len(text), "prompt"); err != nil {
			return nil, err
		}
		toks, err := b.model.Tokenize(text, true, false)
		if err != nil {
			return nil, badRequest("prompt", "prompt %d: %s", i, err.Error())
		}
		out = append(out, toks)
	}
	for i, ids := range p.Tokens {
		if len(ids) == 0 {
			return nil, badRequest("prompt", "prompt %d has no tokens", i)
		}
		for _, t := range ids {
			if !b.model.ValidToken(t) {
				return nil, badRequest("prompt", "prompt %d has token id %d; the vocabulary has %d tokens",
					i, t, b.model.Info().VocabSize)
			}
		}
		out = append(out, append([]engine.Token(nil), ids...))
	}
	return out, nil
}

// boundBytes refuses text of n bytes that cannot fit the context whatever
// it tokenizes to (Model.MinTokens), before the tokenizer runs: megabytes
// of prompt cost seconds of CPU to tokenize only to be refused then.
func (b *backend) boundBytes(n int, param string) *APIError {
	if b.eng == nil {
		return nil
	}
	limit := b.eng.PromptLimit()
	if least := b.model.MinTokens(n); least > limit {
		return &APIError{Status: 400, Type: "invalid_request_error", Param: param, Code: "context_length_exceeded",
			Message: fmt.Sprintf("the prompt's %d bytes make at least %d tokens; this server's context holds at most %d prompt tokens", n, least, limit)}
	}
	return nil
}
