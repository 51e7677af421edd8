package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/openai/openai-go/v3"

	"github.com/finserve/finserve/engine"
)

func chatParams(maxTokens int64, msgs ...openai.ChatCompletionMessageParamUnion) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:       "tiny",
		Messages:    msgs,
		MaxTokens:   openai.Int(maxTokens),
		Temperature: openai.Float(0),
	}
}

// TestChatStreamedEqualsUnstreamed: greedy decoding gives the same text and
// usage streamed and not streamed, through the official SDK.
func TestChatStreamedEqualsUnstreamed(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	client := ts.client()
	ctx := context.Background()
	cases := []struct {
		name string
		msgs []openai.ChatCompletionMessageParamUnion
	}{
		{"english", []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("You are a bank assistant."), openai.UserMessage("What is my balance?")}},
		{"chinese", []openai.ChatCompletionMessageParamUnion{openai.UserMessage("请问信用卡的年费是多少?")}},
		{"multi-turn", []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi"), openai.AssistantMessage("hello"), openai.UserMessage("again 🙂")}},
		{"parts", []openai.ChatCompletionMessageParamUnion{openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
			openai.TextContentPart("first part, "), openai.TextContentPart("second part")})}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			params := chatParams(24, tc.msgs...)
			resp, err := client.Chat.Completions.New(ctx, params)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Choices) != 1 || resp.Object != "chat.completion" || resp.Model != "tiny" {
				t.Fatalf("unexpected response: %s", resp.RawJSON())
			}
			want := resp.Choices[0].Message.Content
			if resp.Choices[0].Message.Role != "assistant" {
				t.Errorf("role %q", resp.Choices[0].Message.Role)
			}
			if resp.Usage.CompletionTokens < 1 || resp.Usage.CompletionTokens > 24 || resp.Usage.PromptTokens < 3 ||
				resp.Usage.TotalTokens != resp.Usage.PromptTokens+resp.Usage.CompletionTokens {
				t.Errorf("usage %+v", resp.Usage)
			}
			if fr := resp.Choices[0].FinishReason; (fr == "length") != (resp.Usage.CompletionTokens == 24) || fr != "length" && fr != "stop" {
				t.Errorf("finish_reason %q with %d tokens", fr, resp.Usage.CompletionTokens)
			}

			params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
			stream := client.Chat.Completions.NewStreaming(ctx, params)
			var got strings.Builder
			var chunks, finishes int
			var usage openai.CompletionUsage
			var role string
			for stream.Next() {
				c := stream.Current()
				if c.Object != "chat.completion.chunk" || c.ID == "" {
					t.Fatalf("chunk %s", c.RawJSON())
				}
				chunks++
				if c.JSON.Usage.Valid() && c.Usage.TotalTokens > 0 {
					if len(c.Choices) != 0 {
						t.Errorf("usage chunk has choices: %s", c.RawJSON())
					}
					usage = c.Usage
				}
				for _, ch := range c.Choices {
					if chunks == 1 {
						role = string(ch.Delta.Role)
					}
					if !utf8.ValidString(ch.Delta.Content) {
						t.Errorf("invalid UTF-8 in a delta: %q", ch.Delta.Content)
					}
					got.WriteString(ch.Delta.Content)
					if ch.FinishReason != "" {
						finishes++
						if ch.FinishReason != resp.Choices[0].FinishReason {
							t.Errorf("streamed finish_reason %q, unstreamed %q", ch.FinishReason, resp.Choices[0].FinishReason)
						}
					}
				}
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			if got.String() != want {
				t.Errorf("streamed text %q differs from unstreamed %q", got.String(), want)
			}
			if role != "assistant" || finishes != 1 {
				t.Errorf("first delta role %q, %d finish chunks", role, finishes)
			}
			if usage.PromptTokens != resp.Usage.PromptTokens || usage.CompletionTokens != resp.Usage.CompletionTokens {
				t.Errorf("streamed usage %+v, unstreamed %+v", usage, resp.Usage)
			}
		})
	}
}

// TestChatLogprobs: the chosen token's log-probability is reported with its
// alternatives, in order, and under greedy decoding it is the best one.
func TestChatLogprobs(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	params := chatParams(8, openai.UserMessage("score this"))
	params.Logprobs = openai.Bool(true)
	params.TopLogprobs = openai.Int(3)
	resp, err := ts.client().Chat.Completions.New(context.Background(), params)
	if err != nil {
		t.Fatal(err)
	}
	lp := resp.Choices[0].Logprobs.Content
	if int64(len(lp)) != resp.Usage.CompletionTokens {
		t.Fatalf("%d logprobs for %d tokens", len(lp), resp.Usage.CompletionTokens)
	}
	for i, tok := range lp {
		if len(tok.TopLogprobs) != 3 {
			t.Fatalf("token %d: %d alternatives", i, len(tok.TopLogprobs))
		}
		if tok.Logprob > 0 || math.Abs(tok.Logprob-tok.TopLogprobs[0].Logprob) > 1e-6 || tok.Token != tok.TopLogprobs[0].Token {
			t.Errorf("token %d: chosen %q %v, best %q %v", i, tok.Token, tok.Logprob, tok.TopLogprobs[0].Token, tok.TopLogprobs[0].Logprob)
		}
		for k := 1; k < 3; k++ {
			if tok.TopLogprobs[k].Logprob > tok.TopLogprobs[k-1].Logprob {
				t.Errorf("token %d: alternatives out of order", i)
			}
		}
		if len(tok.Bytes) == 0 {
			t.Errorf("token %d has no bytes", i)
		}
	}
}

// TestCompletions: one prompt or several, streamed or not; each prompt's
// choice is what it gets alone.
func TestCompletions(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	client := ts.client()
	ctx := context.Background()
	prompts := []string{"The bank's policy", "风险评估", "Once upon"}
	alone := make([]string, len(prompts))
	for i, p := range prompts {
		resp, err := client.Completions.New(ctx, openai.CompletionNewParams{
			Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(p)},
			MaxTokens: openai.Int(12), Temperature: openai.Float(0),
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Choices) != 1 || resp.Object != "text_completion" {
			t.Fatalf("response %s", resp.RawJSON())
		}
		alone[i] = resp.Choices[0].Text
	}
	params := openai.CompletionNewParams{
		Model: "tiny", Prompt: openai.CompletionNewParamsPromptUnion{OfArrayOfStrings: prompts},
		MaxTokens: openai.Int(12), Temperature: openai.Float(0),
	}
	resp, err := client.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Choices) != len(prompts) {
		t.Fatalf("%d choices for %d prompts", len(resp.Choices), len(prompts))
	}
	for _, c := range resp.Choices {
		if c.Text != alone[c.Index] {
			t.Errorf("choice %d: %q batched, %q alone", c.Index, c.Text, alone[c.Index])
		}
	}

	stream := client.Completions.NewStreaming(ctx, params)
	streamed := make([]strings.Builder, len(prompts))
	for stream.Next() {
		for _, c := range stream.Current().Choices {
			streamed[c.Index].WriteString(c.Text)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	for i := range prompts {
		if streamed[i].String() != alone[i] {
			t.Errorf("prompt %d streamed %q, alone %q", i, streamed[i].String(), alone[i])
		}
	}
}

// TestModels lists and fetches the served model.
func TestModels(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	client := ts.client()
	page, err := client.Models.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != "tiny" || page.Data[0].Object != "model" {
		t.Fatalf("models %s", page.RawJSON())
	}
	m, err := client.Models.Get(context.Background(), "tiny")
	if err != nil || m.ID != "tiny" {
		t.Fatalf("get: %v %+v", err, m)
	}
	_, err = client.Models.Get(context.Background(), "gpt-4")
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound || apiErr.Code != "model_not_found" {
		t.Fatalf("unknown model: %v", err)
	}
}

// TestEmbeddingsRefused: a generative model cannot embed; the SDK gets a
// clear 400.
func TestEmbeddingsRefused(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	_, err := ts.client().Embeddings.New(context.Background(), openai.EmbeddingNewParams{
		Model: "tiny", Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("hello")},
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusBadRequest || apiErr.Code != "model_not_supported" {
		t.Fatalf("embeddings: %v", err)
	}
}

// TestSDKErrors: errors reach the SDK as OpenAI error objects.
func TestSDKErrors(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	params := chatParams(4, openai.UserMessage("hi"))
	params.N = openai.Int(2)
	_, err := ts.client().Chat.Completions.New(context.Background(), params)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "n" || apiErr.Type != "invalid_request_error" {
		t.Fatalf("n=2: %v", err)
	}
	long := strings.Repeat("word ", 2000)
	_, err = ts.client().Chat.Completions.New(context.Background(), chatParams(4, openai.UserMessage(long)))
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Code != "context_length_exceeded" {
		t.Fatalf("long prompt: %v", err)
	}
	// The error object as the SDK hands it to the application.
	var body map[string]any
	if err := json.Unmarshal([]byte(apiErr.RawJSON()), &body); err != nil {
		t.Fatal(err)
	}
	if msg, _ := body["message"].(string); !strings.Contains(msg, "tokens") || body["type"] != "invalid_request_error" ||
		body["param"] != "messages" || body["code"] != "context_length_exceeded" {
		t.Errorf("the error object the SDK got: %s", apiErr.RawJSON())
	}
}

// TestSeedReproducible: sampling with a seed repeats itself.
func TestSeedReproducible(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	params := chatParams(16, openai.UserMessage("tell me a story"))
	params.Temperature = openai.Float(1)
	params.TopP = openai.Float(0.9)
	params.Seed = openai.Int(42)
	params.PresencePenalty = openai.Float(0.5)
	params.FrequencyPenalty = openai.Float(0.5)
	params.Stop = openai.ChatCompletionNewParamsStopUnion{OfStringArray: []string{"zzz-never"}}
	var texts []string
	for range 2 {
		resp, err := ts.client().Chat.Completions.New(context.Background(), params)
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, resp.Choices[0].Message.Content)
	}
	if texts[0] != texts[1] {
		t.Fatalf("same seed, different text: %q vs %q", texts[0], texts[1])
	}
	// A server that ignored temperature or the seed would repeat itself
	// across seeds too.
	differ := 0
	for _, seed := range []int64{43, 44, 45} {
		params.Seed = openai.Int(seed)
		resp, err := ts.client().Chat.Completions.New(context.Background(), params)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Choices[0].Message.Content != texts[0] {
			differ++
		}
	}
	if differ == 0 {
		t.Errorf("seeds 43, 44 and 45 all gave seed 42's text %q: sampling ignores the seed or the temperature", texts[0])
	}
}

// TestJSONObjectFormat: response_format json_object constrains output to
// a JSON object: complete when the model stopped, otherwise a valid prefix
// of one (max_tokens cut it), through the SDK, streamed and not.
func TestJSONObjectFormat(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{Context: 1024})
	client := ts.client()
	stopped := 0
	for i := range 6 {
		params := chatParams(int64(40+40*i), openai.UserMessage(fmt.Sprintf("Reply in JSON: case %d risk factors", i)))
		params.ResponseFormat = openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &openai.ResponseFormatJSONObjectParam{}}
		if i%2 == 1 {
			params.Temperature = openai.Float(1)
			params.Seed = openai.Int(int64(i))
		}
		resp, err := client.Chat.Completions.New(context.Background(), params)
		if err != nil {
			t.Fatal(err)
		}
		out, finish := resp.Choices[0].Message.Content, resp.Choices[0].FinishReason
		checkJSONObject(t, out, finish)
		if finish == "stop" {
			stopped++
		}
		if i == 0 {
			stream := client.Chat.Completions.NewStreaming(context.Background(), params)
			var got strings.Builder
			for stream.Next() {
				for _, c := range stream.Current().Choices {
					got.WriteString(c.Delta.Content)
				}
			}
			if err := stream.Err(); err != nil || got.String() != out {
				t.Errorf("streamed %q (%v), unstreamed %q", got.String(), err, out)
			}
		}
	}
	if stopped == 0 {
		t.Error("no answer completed its JSON object: the grammar never lets the model stop")
	}
	resp, body := ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"},"ignore_eos":true}`)
	checkError(t, resp, body, 400, "ignore_eos", "")
}

// checkJSONObject asserts that out is a JSON object, or with finish
// "length" the beginning of one.
func checkJSONObject(t *testing.T, out, finish string) {
	t.Helper()
	if !strings.HasPrefix(out, "{") {
		t.Fatalf("output %q does not open an object", out)
	}
	var v map[string]any
	err := json.Unmarshal([]byte(out), &v)
	switch {
	case err == nil:
		if finish != "stop" {
			t.Errorf("a complete object with finish %q: %q", finish, out)
		}
	case finish == "length" && strings.Contains(err.Error(), "unexpected end of JSON input"):
	default:
		t.Errorf("finish %q, output %q: %v", finish, out, err)
	}
}
