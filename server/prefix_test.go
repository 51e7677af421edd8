package server

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/finserve/finserve/engine"
)

// TestPrefixCacheTenantsOverHTTP: through the official SDK, a repeated
// system prompt is reported as cached tokens within one API key's tenant,
// never across keys, and never with the cache off.
func TestPrefixCacheTenantsOverHTTP(t *testing.T) {
	system := strings.Repeat("You are the bank's assistant; answer about accounts and cards only. ", 6)
	ask := func(c *openai.Client, q string) openai.CompletionUsage {
		t.Helper()
		resp, err := c.Chat.Completions.New(context.Background(),
			chatParams(4, openai.SystemMessage(system), openai.UserMessage(q)))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Usage
	}
	ts := startServer(t, Config{APIKeys: []string{"key-alpha", "key-beta"}}, engine.Options{})
	alpha := ts.client(option.WithAPIKey("key-alpha"))
	beta := ts.client(option.WithAPIKey("key-beta"))

	first := ask(alpha, "What is my balance?")
	if first.PromptTokensDetails.CachedTokens != 0 {
		t.Errorf("the first request reports %d cached tokens", first.PromptTokensDetails.CachedTokens)
	}
	if u := ask(beta, "What is my balance?"); u.PromptTokensDetails.CachedTokens != 0 {
		t.Errorf("key-beta was served %d tokens cached for key-alpha", u.PromptTokensDetails.CachedTokens)
	}
	second := ask(alpha, "How do I block my card?")
	if n := second.PromptTokensDetails.CachedTokens; n < first.PromptTokens/2 || n >= second.PromptTokens {
		t.Errorf("key-alpha's second request reused %d of %d prompt tokens; the system prompt is most of them",
			n, second.PromptTokens)
	}

	// "cache_prompt": false (llama.cpp's field) opts one request out.
	noCache := chatParams(4, openai.SystemMessage(system), openai.UserMessage("How do I block my card?"))
	noCache.SetExtraFields(map[string]any{"cache_prompt": false})
	resp, err := alpha.Chat.Completions.New(context.Background(), noCache)
	if err != nil {
		t.Fatal(err)
	}
	if n := resp.Usage.PromptTokensDetails.CachedTokens; n != 0 {
		t.Errorf("cache_prompt false, yet %d cached tokens", n)
	}

	off := startServer(t, Config{}, engine.Options{PrefixCache: engine.PrefixCache{Disabled: true}})
	for range 2 {
		if u := ask(off.client(), "What is my balance?"); u.PromptTokensDetails.CachedTokens != 0 {
			t.Errorf("cache off, yet %d cached tokens", u.PromptTokensDetails.CachedTokens)
		}
	}
}

// TestSystemPrefix: the tokens of a pinned system prompt are the start of
// every chat prompt that opens with it.
func TestSystemPrefix(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	b := ts.srv.backend.Load()
	sys := "Policies: no investment advice; 中文也可以."
	prefix, err := SystemPrefix(tiny, "", sys)
	if err != nil {
		t.Fatal(err)
	}
	full, apiErr := ts.srv.chatPrompt(b, []engine.Message{{Role: "system", Content: sys}, {Role: "user", Content: "hello"}})
	if apiErr != nil {
		t.Fatal(apiErr)
	}
	if len(full) <= len(prefix) || !slices.Equal(full[:len(prefix)], prefix) {
		t.Fatalf("the chat prompt does not start with the system prefix\nprefix: %v\nfull:   %v", prefix, full)
	}
	if _, err := SystemPrefix(tiny, "", ""); err == nil {
		t.Error("an empty system prompt was accepted")
	}
}
