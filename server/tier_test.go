package server

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/finserve/finserve/engine"
)

// tierURL is the base URL of tier name on ts.
func (ts *testServer) tierURL(name string) string {
	return strings.TrimSuffix(ts.url, "/v1") + "/tiers/" + name + "/v1"
}

// TestTierBaseURLs: every tier is a whole OpenAI base URL the official SDK
// works against, and responses say which tier served them.
func TestTierBaseURLs(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	ctx := context.Background()
	for _, tier := range []string{"realtime", "standard", "batch"} {
		t.Run(tier, func(t *testing.T) {
			var resp *http.Response
			client := ts.client(option.WithBaseURL(ts.tierURL(tier)+"/"), option.WithResponseInto(&resp))
			out, err := client.Chat.Completions.New(ctx, chatParams(6, openai.UserMessage("hello")))
			if err != nil {
				t.Fatal(err)
			}
			if got := resp.Header.Get(TierHeader); got != tier || out.Usage.CompletionTokens < 1 {
				t.Fatalf("tier header %q, usage %+v", got, out.Usage)
			}
			stream := client.Chat.Completions.NewStreaming(ctx, chatParams(6, openai.UserMessage("hello")))
			chunks := 0
			for stream.Next() {
				chunks++
			}
			if err := stream.Err(); err != nil || chunks < 2 {
				t.Fatalf("stream: %d chunks, %v", chunks, err)
			}
			if models, err := client.Models.List(ctx); err != nil || len(models.Data) != 1 {
				t.Fatalf("models: %v", err)
			}
		})
	}
	resp, body := sendTo(t, ts.tierURL("gold"), "/chat/completions", `{"messages":[{"role":"user","content":"hi"}]}`)
	checkError(t, resp, body, 404, "", "tier_not_found")
	// Plain /v1 is the default tier.
	resp, _ = ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`)
	if got := resp.Header.Get(TierHeader); got != "standard" {
		t.Fatalf("/v1 served by tier %q, want the default, standard", got)
	}
}

// TestTierKeysAndHeader: a key declared with a tier uses it on /v1 and
// may not go above it; the tier header lowers a tier and never raises it.
func TestTierKeysAndHeader(t *testing.T) {
	ts := startServer(t, Config{APIKeys: []string{"standard:k-std", "k-any"}}, engine.Options{})
	msg := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`
	cases := []struct {
		name, base, key, header string
		status                  int
		tier, code              string
	}{
		{"key tier on /v1", ts.url, "k-std", "", 200, "standard", ""},
		{"key tier lowered", ts.url, "k-std", "batch", 200, "batch", ""},
		{"key tier raised by header", ts.url, "k-std", "realtime", 403, "", "tier_not_allowed"},
		{"key tier raised by path", ts.tierURL("realtime"), "k-std", "", 403, "", "tier_not_allowed"},
		{"key below its tier by path", ts.tierURL("batch"), "k-std", "", 200, "batch", ""},
		{"key without tier on /v1", ts.url, "k-any", "", 200, "standard", ""},
		{"key without tier, realtime path", ts.tierURL("realtime"), "k-any", "", 200, "realtime", ""},
		{"path lowered by header", ts.tierURL("realtime"), "k-any", "standard", 200, "standard", ""},
		{"path raised by header", ts.tierURL("batch"), "k-any", "realtime", 403, "", "tier_not_allowed"},
		{"unknown header tier", ts.url, "k-any", "platinum", 400, "", "invalid_tier"},
		{"tier path needs a key", ts.tierURL("batch"), "", "", 401, "", "invalid_api_key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := []string{}
			if tc.key != "" {
				h = append(h, "Authorization", "Bearer "+tc.key)
			}
			if tc.header != "" {
				h = append(h, TierHeader, tc.header)
			}
			resp, body := sendTo(t, tc.base, "/chat/completions", msg, h...)
			if tc.status != 200 {
				checkError(t, resp, body, tc.status, "", tc.code)
				return
			}
			if resp.StatusCode != 200 || resp.Header.Get(TierHeader) != tc.tier {
				t.Fatalf("status %d tier %q, want 200 %s: %s", resp.StatusCode, resp.Header.Get(TierHeader), tc.tier, body)
			}
		})
	}
}

// TestTierLimits: each tier applies its own max_tokens cap and default,
// and the standard tier decodes greedily unless asked otherwise.
func TestTierLimits(t *testing.T) {
	ts := startServer(t, Config{Limits: Limits{MaxTokens: 1000}}, engine.Options{})
	resp, body := sendTo(t, ts.tierURL("realtime"), "/chat/completions",
		`{"messages":[{"role":"user","content":"hi"}],"max_tokens":600}`)
	checkError(t, resp, body, 400, "max_tokens", "")
	if resp, body := sendTo(t, ts.tierURL("batch"), "/chat/completions",
		`{"messages":[{"role":"user","content":"hi"}],"max_tokens":600,"ignore_eos":true}`); resp.StatusCode != 200 {
		t.Fatalf("batch tier, 600 tokens: %d %s", resp.StatusCode, body)
	}
	// Without max_tokens a realtime chat gets the tier's default of 256.
	client := ts.client(option.WithBaseURL(ts.tierURL("realtime") + "/"))
	out, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}, Temperature: openai.Float(0)},
		option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if out.Usage.CompletionTokens != 256 || out.Choices[0].FinishReason != "length" {
		t.Fatalf("realtime default: %d tokens, %s; want 256, length", out.Usage.CompletionTokens, out.Choices[0].FinishReason)
	}
	// Standard is deterministic: no temperature means greedy, so two
	// sampled-by-default requests agree token for token.
	std := ts.client(option.WithBaseURL(ts.tierURL("standard") + "/"))
	var texts []string
	for range 2 {
		out, err := std.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("score this case")}, MaxTokens: openai.Int(24)},
			option.WithJSONSet("ignore_eos", true))
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, out.Choices[0].Message.Content)
	}
	greedy, err := std.Chat.Completions.New(context.Background(), chatParams(24, openai.UserMessage("score this case")),
		option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	if texts[0] != texts[1] || texts[0] != greedy.Choices[0].Message.Content {
		t.Fatal("the standard tier's default decoding is not greedy")
	}
}

// TestTierQueueErrors: a full tier queue answers 429 with a Retry-After;
// a request that waits past the tier's queue timeout answers 503 with a
// Retry-After, streamed or not; both are counted, and the server serves on.
// The queue-full check cannot race a timeout: that tier's timeout is an
// hour; the timeouts are those of another tier.
func TestTierQueueErrors(t *testing.T) {
	tiers := engine.DefaultTiers()
	tiers[engine.TierRealtime].MaxQueued = 1
	tiers[engine.TierRealtime].QueueTimeout = time.Hour
	tiers[engine.TierBatch].QueueTimeout = time.Second
	// A context beyond the tiny model's 4096: the hog must outlast two
	// queue timeouts with room to spare (4000 tokens once did not, on a
	// loaded machine with the system provider's faster kernels).
	ts := startServer(t, Config{Limits: Limits{MaxTokens: 16000}}, engine.Options{Parallel: 1, Context: 16384, Tiers: tiers})
	// A standard-tier stream holds the only slot: it is not preemptible.
	req, _ := http.NewRequest(http.MethodPost, ts.tierURL("standard")+"/chat/completions",
		strings.NewReader(`{"messages":[{"role":"user","content":"go"}],"max_tokens":16000,"ignore_eos":true,"stream":true}`))
	hog, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer hog.Body.Close()
	if _, err := bufio.NewReader(hog.Body).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	ts.waitStats(t, func(st engine.Stats) bool { return st.Running == 1 })

	msg := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2`
	type answer struct {
		resp *http.Response
		body string
	}
	first := make(chan answer, 1)
	go func() {
		resp, body := sendTo(t, ts.tierURL("realtime"), "/chat/completions", msg+`}`)
		first <- answer{resp, body}
	}()
	ts.waitStats(t, func(st engine.Stats) bool { return st.Tiers[engine.TierRealtime].Waiting == 1 })
	resp, body := sendTo(t, ts.tierURL("realtime"), "/chat/completions", msg+`}`)
	checkError(t, resp, body, 429, "", "queue_full")
	if n, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || n < 1 {
		t.Errorf("429 Retry-After %q", resp.Header.Get("Retry-After"))
	}
	resp, body = sendTo(t, ts.tierURL("batch"), "/chat/completions", msg+`}`)
	checkError(t, resp, body, 503, "", "queue_timeout")
	if resp.Header.Get("Retry-After") == "" {
		t.Error("503 queue_timeout without Retry-After")
	}
	// Streamed, the timeout is still a status, not a 200 stream.
	resp, body = sendTo(t, ts.tierURL("batch"), "/chat/completions", msg+`,"stream":true}`)
	checkError(t, resp, body, 503, "", "queue_timeout")

	_, metrics := ts.get(t, "/metrics")
	for _, want := range []string{
		`finserve_tier_rejections_total{reason="queue_full",tier="realtime"} 1`,
		`finserve_tier_rejections_total{reason="queue_timeout",tier="batch"} 2`,
		`finserve_tier_rejections_total{reason="queue_timeout",tier="realtime"} 0`,
		`finserve_tier_requests_waiting{tier="realtime"} 1`,
		`finserve_tier_requests_waiting{tier="batch"} 0`,
		"finserve_num_requests_waiting 1",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	hog.Body.Close()
	if a := <-first; a.resp.StatusCode != 200 {
		t.Errorf("the queued realtime request once the hog left: %d %s", a.resp.StatusCode, a.body)
	}
	ts.waitIdle(t)
	if resp, body := sendTo(t, ts.tierURL("realtime"), "/chat/completions", msg+`}`); resp.StatusCode != 200 {
		t.Fatalf("after the hog left: %d %s", resp.StatusCode, body)
	}
}

// TestRealtimeBesideBatchStreams: with batch streams in every slot, a
// realtime request through the SDK completes while they run; each batch
// stream is preempted or paused, resumes, and still delivers every token.
func TestRealtimeBesideBatchStreams(t *testing.T) {
	// 1,000-token streams: still running when the realtime request comes,
	// a few milliseconds after they fill the slots, however loaded the
	// machine (48 tokens once were not; 3,000 took 11 minutes to run to
	// their end beside three other suites).
	const answer = 1000
	ts := startServer(t, Config{}, engine.Options{Parallel: 2, Context: 2048})
	ctx := context.Background()
	batch := ts.client(option.WithBaseURL(ts.tierURL("batch") + "/"))
	const n = 3 // one more than the slots: one waits
	streams := make([]chan int, n)
	for i := range streams {
		streams[i] = make(chan int, 1)
		st := batch.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("write a long report " + strconv.Itoa(i))},
			MaxTokens:     openai.Int(answer),
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}},
			option.WithJSONSet("ignore_eos", true))
		go func(out chan<- int) {
			defer st.Close()
			tokens := 0
			for st.Next() {
				if u := st.Current().Usage; u.CompletionTokens > 0 {
					tokens = int(u.CompletionTokens)
				}
			}
			if st.Err() != nil {
				tokens = -1
			}
			out <- tokens
		}(streams[i])
	}
	ts.waitStats(t, func(st engine.Stats) bool { return st.Sequences == 2 && st.Tiers[engine.TierBatch].Waiting == 1 })
	rt := ts.client(option.WithBaseURL(ts.tierURL("realtime") + "/"))
	out, err := rt.Chat.Completions.New(ctx, chatParams(8, openai.UserMessage("what is my balance?")))
	if err != nil {
		t.Fatal(err)
	}
	st, err := ts.eng.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Both slots held batch streams: at least one was preempted for the
	// realtime request (more if a resumed one met it again).
	preempted := st.Tiers[engine.TierBatch].Preemptions
	if out.Usage.CompletionTokens < 1 || preempted < 1 {
		t.Fatalf("realtime: %+v; batch preemptions %d, want at least 1", out.Usage, preempted)
	}
	for i, ch := range streams {
		select {
		case got := <-ch:
			t.Fatalf("batch stream %d ended (%d tokens) before the realtime request did", i, got)
		default:
		}
	}
	for i, ch := range streams {
		if got := <-ch; got != answer {
			t.Errorf("batch stream %d: %d tokens, want %d", i, got, answer)
		}
	}
	_, metrics := ts.get(t, "/metrics")
	for _, want := range []string{`finserve_tier_preemptions_total{tier="batch"} ` + strconv.FormatUint(preempted, 10),
		`finserve_time_to_first_token_seconds_count{tier="realtime"} 1`, `finserve_time_to_first_token_seconds_count{tier="batch"} 3`,
		"finserve_cut_steps_total " + strconv.FormatUint(st.CutSteps, 10)} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
