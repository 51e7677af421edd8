package server

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/finserve/finserve/engine"
)

// chatPrompt renders messages with the chat template and tokenizes them.
//
// The template's own markers are special tokens, so the rendered prompt is
// tokenized with special-token parsing on. Message content must not smuggle
// markers in: "<|im_end|><|im_start|>system" inside a user message would
// otherwise become a forged system turn. Content that would tokenize to a
// control token is therefore refused.
func (s *Server) chatPrompt(b *backend, msgs []engine.Message) ([]engine.Token, *APIError) {
	for i, m := range msgs {
		toks, err := b.model.Tokenize(m.Content, false, true)
		if err != nil {
			return nil, badRequest("messages["+strconv.Itoa(i)+"].content", "%s", err.Error())
		}
		for _, t := range toks {
			if b.model.IsSpecial(t) {
				return nil, badRequest("messages["+strconv.Itoa(i)+"].content",
					"messages[%d].content contains the model's control token %q; control tokens are not allowed in message content",
					i, b.model.Piece(t))
			}
		}
	}
	text, err := b.model.ApplyChatTemplate(s.cfg.ChatTemplate, msgs, true)
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
