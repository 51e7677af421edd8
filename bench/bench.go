// Package bench is finserve's load generator for OpenAI-compatible
// servers: concurrent streaming chat clients, measured as LLM serving is
// measured (time to first token, time per output token, end-to-end
// latency, aggregate output throughput). It talks HTTP only, so it measures
// finserve and its peers (llama-server) alike.
package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Config describes one load run.
type Config struct {
	// BaseURL is the API root, for example http://127.0.0.1:8080/v1.
	BaseURL string
	Model   string
	APIKey  string
	// Clients is the number of concurrent clients; Requests the total
	// number of requests, spread over them.
	Clients, Requests int
	// MaxTokens per request; with IgnoreEOS each request generates exactly
	// that many (a llama.cpp extension finserve and llama-server honour).
	MaxTokens int
	IgnoreEOS bool
	// Prompt is the user message; request i appends " #i" so that no two
	// prompts are equal.
	Prompt string
	// SystemWords > 0 sends every request the same system message of that
	// many words (a bank's long system prompt): a workload for prefix
	// caches. QuestionWords > 0 replaces Prompt with a distinct generated
	// question of that many words per request and turn.
	SystemWords, QuestionWords int
	// Seed varies the generated questions: runs with different seeds ask
	// different ones, so that a prefix cache cannot serve one run's
	// prompts from another's.
	Seed uint64
	// Turns > 1 makes each request a conversation: turn k resends the
	// whole history (system, questions and the server's answers) and asks
	// one more question. Latencies are reported per turn too.
	Turns int
	// Timeout bounds each request (default 5 minutes).
	Timeout time.Duration
	// NoPromptCache sends "cache_prompt": false: llama-server then does
	// not reuse its slot's previous prompt, and finserve reuses nothing
	// from its prefix cache.
	NoPromptCache bool
	// Background > 0 runs that many closed-loop streaming clients beside
	// the measured requests, from before the first of them (once the
	// first background token arrived: every client has sent its request
	// by then, filling the slots and the queue) until the last ends: a load
	// to measure under, such as batch-tier analysis (finserve:
	// BackgroundURL http://host/tiers/batch/v1) beside realtime chat
	// (BaseURL http://host/tiers/realtime/v1). Each background request
	// asks a distinct question of BackgroundWords words (default 200) for
	// BackgroundMaxTokens tokens (default 256), at BackgroundURL (default
	// BaseURL). Requests cut off at the end are not counted.
	Background          int
	BackgroundURL       string
	BackgroundWords     int
	BackgroundMaxTokens int

	firstToken func() // called at a request's first token (background)
}

// Dist summarises a latency distribution, in seconds.
type Dist struct {
	Mean, P50, P90, P99 float64
}

// Result is what one run measured.
type Result struct {
	Clients, Requests, Failed int
	Wall                      time.Duration
	PromptTokens              int
	OutputTokens              int
	// OutputTPS is aggregate output tokens per second of wall time.
	OutputTPS  float64
	RequestsPS float64
	TTFT, TPOT Dist
	E2E        Dist
	// CachedTokens is the prompt tokens the server reported as served from
	// its prefix cache (usage.prompt_tokens_details.cached_tokens).
	CachedTokens int
	// TurnTTFT[k] is the TTFT of turn k+1 of every conversation (Turns > 1).
	TurnTTFT    []Dist `json:",omitempty"`
	FirstErrors []string
	// Background summarises the background requests that completed
	// while the measured ones ran (Config.Background > 0).
	Background *Result `json:",omitempty"`
}

// sample is one request's (or turn's) measurements.
type sample struct {
	turn                   int
	ttft, e2e              time.Duration
	prompt, output, cached int
	answer                 string
	err                    error
}

// Run sends cfg.Requests streaming chat requests from cfg.Clients clients.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if cfg.BaseURL == "" || cfg.Clients < 1 || cfg.Requests < 1 || cfg.MaxTokens < 1 {
		return Result{}, errors.New("bench: a base URL, at least one client, one request and one token are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Clients, MaxConnsPerHost: cfg.Clients}}
	defer client.CloseIdleConnections()
	var bg *background
	if cfg.Background > 0 {
		var err error
		if bg, err = startBackground(ctx, cfg); err != nil {
			return Result{}, err
		}
	}

	cfg.Turns = max(cfg.Turns, 1)
	next := make(chan int)
	samples := make([]sample, cfg.Requests*cfg.Turns)
	var wg sync.WaitGroup
	start := time.Now()
	for range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				converse(ctx, client, cfg, i, samples[i*cfg.Turns:(i+1)*cfg.Turns])
			}
		}()
	}
feed:
	for i := range cfg.Requests {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	wall := time.Since(start)
	var bgResult *Result
	if bg != nil {
		bgResult = bg.stop()
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	r := summarise(cfg, samples, wall)
	r.Background = bgResult
	return r, nil
}

// background is the load Config.Background describes.
type background struct {
	cfg     Config // of the background requests
	clients int
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	start   time.Time
	mu      sync.Mutex
	samples []sample
}

// startBackground starts the background clients and returns once the
// first of them has its first token.
func startBackground(ctx context.Context, cfg Config) (*background, error) {
	b := &background{cfg: cfg, clients: cfg.Background}
	c := &b.cfg
	c.BaseURL = cmp.Or(cfg.BackgroundURL, cfg.BaseURL)
	c.QuestionWords = cmp.Or(cfg.BackgroundWords, 200)
	c.MaxTokens = cmp.Or(cfg.BackgroundMaxTokens, 256)
	c.SystemWords, c.Turns, c.Background = 0, 1, 0
	started := make(chan struct{})
	var once sync.Once
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Background, MaxConnsPerHost: cfg.Background}}
	ctx, b.cancel = context.WithCancel(ctx)
	for k := range cfg.Background {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			defer client.CloseIdleConnections()
			cc := *c
			cc.firstToken = func() { once.Do(func() { close(started) }) }
			for i := k; ctx.Err() == nil; i += cfg.Background {
				var s [1]sample
				// distinct from the measured requests' questions
				converse(ctx, client, cc, 1_000_000+i, s[:])
				cc.firstToken() // a request that failed before any token starts the run too
				if ctx.Err() != nil {
					break
				}
				b.mu.Lock()
				b.samples = append(b.samples, s[0])
				b.mu.Unlock()
				if s[0].err != nil {
					select { // a refusing server is not hammered
					case <-time.After(100 * time.Millisecond):
					case <-ctx.Done():
					}
				}
			}
		}()
	}
	select {
	case <-started:
	case <-ctx.Done():
		b.stop()
		return nil, fmt.Errorf("bench: background load did not start: %w", ctx.Err())
	}
	b.mu.Lock()
	b.samples, b.start = nil, time.Now() // count what completes from here
	b.mu.Unlock()
	return b, nil
}

// stop ends the background load and summarises what completed.
func (b *background) stop() *Result {
	wall := time.Since(b.start)
	b.cancel()
	b.wg.Wait()
	r := summarise(b.cfg, b.samples, wall)
	r.Clients = b.clients
	return &r
}

func summarise(cfg Config, samples []sample, wall time.Duration) Result {
	r := Result{Clients: cfg.Clients, Requests: len(samples), Wall: wall}
	var ttft, tpot, e2e []float64
	turns := make([][]float64, cfg.Turns)
	for _, s := range samples {
		if s.err != nil {
			r.Failed++
			if len(r.FirstErrors) < 3 {
				r.FirstErrors = append(r.FirstErrors, s.err.Error())
			}
			continue
		}
		r.PromptTokens += s.prompt
		r.OutputTokens += s.output
		r.CachedTokens += s.cached
		ttft = append(ttft, s.ttft.Seconds())
		turns[s.turn] = append(turns[s.turn], s.ttft.Seconds())
		e2e = append(e2e, s.e2e.Seconds())
		if s.output > 1 {
			tpot = append(tpot, (s.e2e-s.ttft).Seconds()/float64(s.output-1))
		}
	}
	r.OutputTPS = float64(r.OutputTokens) / wall.Seconds()
	r.RequestsPS = float64(len(samples)-r.Failed) / wall.Seconds()
	r.TTFT, r.TPOT, r.E2E = Summarize(ttft), Summarize(tpot), Summarize(e2e)
	if cfg.Turns > 1 {
		for _, xs := range turns {
			r.TurnTTFT = append(r.TurnTTFT, Summarize(xs))
		}
	}
	return r
}

// words is the vocabulary of generated prompts: common English words of
// banking, most of them one token in common tokenizers.
var words = strings.Fields(`the account bank money loan credit card transfer payment balance fund risk customer report
rule score model compliance transaction cash wire deposit interest rate review alert case income debt please thank help
service branch phone address open close limit fee charge statement policy office staff client check online mobile
daily monthly annual customer savings business personal secure access verify identity document form request approve`)

// text returns n words chosen by a generator seeded with seed.
func text(n int, seed uint64) string {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(words[rng.IntN(len(words))])
	}
	return b.String()
}

// converse runs request i: one turn, or a conversation of cfg.Turns turns,
// filling out with one sample per turn.
func converse(ctx context.Context, client *http.Client, cfg Config, i int, out []sample) {
	var msgs []map[string]string
	if cfg.SystemWords > 0 {
		msgs = append(msgs, map[string]string{"role": "system", "content": text(cfg.SystemWords, 0)})
	}
	for turn := range out {
		q := fmt.Sprintf("%s #%d", cfg.Prompt, i)
		if cfg.QuestionWords > 0 {
			q = fmt.Sprintf("Question %d.%d: %s?", i, turn+1, text(cfg.QuestionWords, cfg.Seed<<32+uint64(1+i*cfg.Turns+turn)))
		}
		msgs = append(msgs, map[string]string{"role": "user", "content": q})
		out[turn] = one(ctx, client, cfg, i, msgs)
		out[turn].turn = turn
		if out[turn].err != nil {
			for k := turn + 1; k < len(out); k++ {
				out[k] = sample{turn: k, err: fmt.Errorf("turn %d not sent: %w", k+1, out[turn].err)}
			}
			return
		}
		msgs = append(msgs, map[string]string{"role": "assistant", "content": out[turn].answer})
	}
}

// Summarize gives the mean and nearest-rank percentiles of xs (sorted in
// place).
func Summarize(xs []float64) Dist {
	if len(xs) == 0 {
		return Dist{}
	}
	slices.Sort(xs)
	q := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(xs)))) - 1
		return xs[max(0, min(i, len(xs)-1))]
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return Dist{Mean: sum / float64(len(xs)), P50: q(0.50), P90: q(0.90), P99: q(0.99)}
}

// one sends the messages of request i and reads the event stream.
func one(ctx context.Context, client *http.Client, cfg Config, i int, msgs []map[string]string) sample {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	fields := map[string]any{
		"model":          cfg.Model,
		"messages":       msgs,
		"max_tokens":     cfg.MaxTokens,
		"temperature":    0,
		"stream":         true,
		"stream_options": map[string]bool{"include_usage": true},
		"ignore_eos":     cfg.IgnoreEOS,
	}
	if cfg.NoPromptCache {
		fields["cache_prompt"] = false
	}
	body, _ := json.Marshal(fields)
	start0 := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(cfg.BaseURL, "/")+"/chat/completions", bytes.NewReader(body))
	if err != nil {
		return sample{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	// Marks the POST as safe to resend, so that net/http retries it when a
	// server closed the kept-alive connection just as it was reused
	// (llama-server does) instead of failing the request.
	req.Header.Set("Idempotency-Key", fmt.Sprintf("bench-%d-%d", start0.UnixNano(), i))
	if cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.APIKey)
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return sample{err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return sample{err: fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(msg))}
	}
	var s sample
	var answer strings.Builder
	chunks := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			s.e2e = time.Since(start)
			if s.output == 0 {
				s.output = chunks
			}
			s.answer = answer.String()
			return s
		}
		var c struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				PromptTokens        int `json:"prompt_tokens"`
				CompletionTokens    int `json:"completion_tokens"`
				PromptTokensDetails struct {
					CachedTokens int `json:"cached_tokens"`
				} `json:"prompt_tokens_details"`
			} `json:"usage"`
		}
		if err := json.Unmarshal([]byte(data), &c); err != nil {
			return sample{err: fmt.Errorf("bad event: %w", err)}
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content != "" {
				answer.WriteString(ch.Delta.Content)
				if chunks == 0 {
					s.ttft = time.Since(start)
					if cfg.firstToken != nil {
						cfg.firstToken()
					}
				}
				chunks++
			}
		}
		if c.Usage != nil && c.Usage.CompletionTokens > 0 {
			s.prompt, s.output = c.Usage.PromptTokens, c.Usage.CompletionTokens
			s.cached = c.Usage.PromptTokensDetails.CachedTokens
		}
	}
	if err := sc.Err(); err != nil {
		return sample{err: err}
	}
	return sample{err: errors.New("stream ended without [DONE]")}
}
