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
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config describes one load run.
type Config struct {
	// BaseURL is the API root, for example http://127.0.0.1:8080/v1.
	BaseURL string `json:"base_url"`
	Model   string `json:"model"`
	// APIKey is never written to a report.
	APIKey string `json:"-"`
	// Clients is the number of concurrent clients (closed loop: each sends
	// its next request when the last ended); Requests the total number of
	// requests (conversations with Turns > 1), spread over them.
	Clients  int `json:"clients"`
	Requests int `json:"requests"`
	// Rate > 0 sends requests open loop instead, at that many per second
	// on average, however many are in flight: arrival gaps are drawn from
	// a gamma distribution of shape Burstiness (default 1: Poisson
	// arrivals; below 1 burstier, above 1 more regular), seeded by Seed.
	Rate       float64 `json:"rate,omitempty"`
	Burstiness float64 `json:"burstiness,omitempty"`
	// Duration > 0 stops sending new requests after that long (requests
	// in flight finish); with it Requests may be 0 (no count limit).
	Duration time.Duration `json:"duration_ns,omitempty"`
	// API is "chat" (default: /chat/completions), "completions"
	// (/completions, the chat's messages joined as a plain prompt) or
	// "embeddings" (/embeddings: Inputs generated questions a request;
	// TTFT and E2E are then the whole response's time, and the token
	// throughput is the inputs' tokens).
	API string `json:"api"`
	// Inputs is how many texts an embeddings request embeds (default 1).
	Inputs int `json:"inputs_per_request,omitempty"`
	// SLOTTFT and SLOTPOT, when set, are the service-level objectives
	// goodput counts requests against.
	SLOTTFT time.Duration `json:"slo_ttft_ns,omitempty"`
	SLOTPOT time.Duration `json:"slo_tpot_ns,omitempty"`
	// MaxTokens per request; with IgnoreEOS each request generates exactly
	// that many (a llama.cpp extension finserve and llama-server honour).
	MaxTokens int  `json:"max_tokens"`
	IgnoreEOS bool `json:"ignore_eos"`
	// Prompt is the user message; request i appends " #i" so that no two
	// prompts are equal.
	Prompt string `json:"prompt,omitempty"`
	// SystemWords > 0 sends every request the same system message of that
	// many words (a bank's long system prompt): a workload for prefix
	// caches. QuestionWords > 0 replaces Prompt with a distinct generated
	// question of that many words per request and turn.
	SystemWords   int `json:"system_words,omitempty"`
	QuestionWords int `json:"question_words,omitempty"`
	// Seed varies the generated questions: runs with different seeds ask
	// different ones, so that a prefix cache cannot serve one run's
	// prompts from another's.
	Seed uint64 `json:"seed"`
	// Turns > 1 makes each request a conversation: turn k resends the
	// whole history (system, questions and the server's answers) and asks
	// one more question. Latencies are reported per turn too.
	Turns int `json:"turns,omitempty"`
	// Timeout bounds each request (default 5 minutes).
	Timeout time.Duration `json:"timeout_ns"`
	// NoPromptCache sends "cache_prompt": false: llama-server then does
	// not reuse its slot's previous prompt, and finserve reuses nothing
	// from its prefix cache.
	NoPromptCache bool `json:"no_prompt_cache,omitempty"`
	// ResponseFormat, when set, is sent as response_format's type
	// ("json_object"), or as the whole object when it is one (a
	// json_schema): grammar-constrained decoding, to measure what it costs
	// against the same run without (needs IgnoreEOS off: a grammar ends
	// the answer where it completes).
	ResponseFormat string `json:"response_format,omitempty"`
	// Temperature of the requests (default 0, greedy: every server gives
	// the same text). Sampling makes a grammar-constrained answer as long
	// as an unconstrained one on a random model, where greedy closes a
	// JSON object within a few tokens.
	Temperature float64 `json:"temperature,omitempty"`
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
	Background          int    `json:"background,omitempty"`
	BackgroundURL       string `json:"background_url,omitempty"`
	BackgroundWords     int    `json:"background_words,omitempty"`
	BackgroundMaxTokens int    `json:"background_max_tokens,omitempty"`

	firstToken func() // called at a request's first token (background)
	done       func() // called when a measured request (or turn) ends
}

// Dist summarises a latency distribution, in seconds.
type Dist struct {
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
}

// Metric definitions follow vLLM's serving benchmark: TTFT from sending a
// request to its first streamed token; TPOT (E2E - TTFT) / (output tokens
// - 1) per request; ITL every gap between consecutive streamed chunks;
// E2E from sending to the end of the stream.

// Result is what one run measured.
type Result struct {
	Clients      int           `json:"clients"`
	Requests     int           `json:"requests"`
	Failed       int           `json:"failed"`
	Wall         time.Duration `json:"wall_ns"`
	PromptTokens int           `json:"prompt_tokens"`
	OutputTokens int           `json:"output_tokens"`
	// OutputTPS is aggregate output tokens per second of wall time;
	// TotalTPS counts prompt tokens too.
	// (vLLM's serving benchmark names them so.)
	OutputTPS  float64 `json:"output_throughput"`
	TotalTPS   float64 `json:"total_token_throughput"`
	RequestsPS float64 `json:"request_throughput"`
	TTFT       Dist    `json:"ttft"`
	TPOT       Dist    `json:"tpot"`
	ITL        Dist    `json:"itl"`
	E2E        Dist    `json:"e2el"`
	// Goodput is requests per second that met every SLO set (SLOMet of
	// them); without SLOs every successful request counts.
	Goodput float64 `json:"request_goodput"`
	SLOMet  int     `json:"slo_met"`
	// Errors counts failed requests by HTTP status ("429", "503"), or
	// "transport" and "stream" for failures outside HTTP statuses.
	Errors map[string]int `json:"errors,omitempty"`
	// ClientCPU is the CPU time the load generator itself used, as a
	// fraction of one core over the wall time: it must stay small beside
	// the servers it measures.
	ClientCPU float64 `json:"client_cpu"`
	// CachedTokens is the prompt tokens the server reported as served from
	// its prefix cache (usage.prompt_tokens_details.cached_tokens).
	CachedTokens int `json:"cached_tokens"`
	// TurnTTFT[k] is the TTFT of turn k+1 of every conversation (Turns > 1).
	TurnTTFT    []Dist   `json:"turn_ttft,omitempty"`
	FirstErrors []string `json:"first_errors"`
	// Background summarises the background requests that completed
	// while the measured ones ran (Config.Background > 0).
	Background *Result `json:"background,omitempty"`
}

// sample is one request's (or turn's) measurements.
type sample struct {
	turn                   int
	ttft, e2e              time.Duration
	itls                   []time.Duration
	prompt, output, cached int
	answer                 string
	status                 int // HTTP status of a refused request; 0 otherwise
	err                    error
}

// Run sends the requests cfg describes and measures them.
func Run(ctx context.Context, cfg Config) (Result, error) {
	switch {
	case cfg.BaseURL == "" || cfg.MaxTokens < 1:
		return Result{}, errors.New("bench: a base URL and at least one token per request are required")
	case cfg.Rate <= 0 && cfg.Clients < 1:
		return Result{}, errors.New("bench: at least one client, or a request rate, is required")
	case cfg.Requests < 1 && cfg.Duration <= 0:
		return Result{}, errors.New("bench: a number of requests or a duration is required")
	case cfg.API != "" && cfg.API != "chat" && cfg.API != "completions" && cfg.API != "embeddings":
		return Result{}, fmt.Errorf("bench: API %q is not chat, completions or embeddings", cfg.API)
	}
	cfg.Inputs = max(cfg.Inputs, 1)
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Minute
	}
	if cfg.Burstiness <= 0 {
		cfg.Burstiness = 1
	}
	conns := cfg.Clients
	if cfg.Rate > 0 {
		conns = 0 // open loop: as many as are in flight
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: max(conns, 64), MaxConnsPerHost: conns}}
	defer client.CloseIdleConnections()
	var bg *background
	if cfg.Background > 0 {
		var err error
		if bg, err = startBackground(ctx, cfg); err != nil {
			return Result{}, err
		}
	}

	cfg.Turns = max(cfg.Turns, 1)
	var mu sync.Mutex
	var samples []sample
	send := func(i int) {
		out := make([]sample, cfg.Turns)
		converse(ctx, client, cfg, i, out)
		for range out {
			if cfg.done != nil {
				cfg.done()
			}
		}
		mu.Lock()
		samples = append(samples, out...)
		mu.Unlock()
	}
	cpu0 := cpuTime()
	start := time.Now()
	var stop <-chan time.Time
	if cfg.Duration > 0 {
		t := time.NewTimer(cfg.Duration)
		defer t.Stop()
		stop = t.C
	}
	var wg sync.WaitGroup
	if cfg.Rate > 0 {
		openLoop(ctx, cfg, stop, &wg, send)
	} else {
		closedLoop(ctx, cfg, stop, &wg, send)
	}
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
	r.ClientCPU = (cpuTime() - cpu0).Seconds() / wall.Seconds()
	r.Background = bgResult
	return r, nil
}

// closedLoop runs cfg.Clients clients, each sending its next request when
// the last ended, until cfg.Requests are sent or stop fires.
func closedLoop(ctx context.Context, cfg Config, stop <-chan time.Time, wg *sync.WaitGroup, send func(int)) {
	next := make(chan int)
	for range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				send(i)
			}
		}()
	}
	defer close(next)
	for i := 0; cfg.Requests == 0 || i < cfg.Requests; i++ {
		select {
		case next <- i:
		case <-stop:
			return
		case <-ctx.Done():
			return
		}
	}
}

// openLoop sends requests at gamma-distributed arrival times, whatever is
// in flight, until cfg.Requests are sent or stop fires.
func openLoop(ctx context.Context, cfg Config, stop <-chan time.Time, wg *sync.WaitGroup, send func(int)) {
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xa771))
	at := time.Now()
	for i := 0; cfg.Requests == 0 || i < cfg.Requests; i++ {
		if i > 0 {
			// mean 1/Rate: shape k, scale 1/(k·Rate)
			at = at.Add(time.Duration(Gamma(rng, cfg.Burstiness) / (cfg.Burstiness * cfg.Rate) * float64(time.Second)))
		}
		t := time.NewTimer(time.Until(at))
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
			return
		case <-ctx.Done():
			t.Stop()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			send(i)
		}()
	}
}

// Gamma draws from a gamma distribution of shape k and scale 1 (mean k;
// Marsaglia and Tsang, shapes below 1 by the boost k+1, U^(1/k)).
func Gamma(rng *rand.Rand, k float64) float64 {
	if k < 1 {
		return Gamma(rng, k+1) * math.Pow(rng.Float64(), 1/k)
	}
	d := k - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := rng.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := rng.Float64()
		if math.Log(u) < 0.5*x*x+d-d*v+d*math.Log(v) {
			return d * v
		}
	}
}

// cpuTime is the CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
	var ttft, tpot, itl, e2e []float64
	turns := make([][]float64, cfg.Turns)
	for _, s := range samples {
		if s.err != nil {
			r.Failed++
			if r.Errors == nil {
				r.Errors = map[string]int{}
			}
			r.Errors[errorKind(s)]++
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
		for _, g := range s.itls {
			itl = append(itl, g.Seconds())
		}
		ok := cfg.SLOTTFT <= 0 || s.ttft <= cfg.SLOTTFT
		if s.output > 1 {
			per := (s.e2e - s.ttft) / time.Duration(s.output-1)
			tpot = append(tpot, per.Seconds())
			ok = ok && (cfg.SLOTPOT <= 0 || per <= cfg.SLOTPOT)
		}
		if ok {
			r.SLOMet++
		}
	}
	r.OutputTPS = float64(r.OutputTokens) / wall.Seconds()
	r.TotalTPS = float64(r.OutputTokens+r.PromptTokens) / wall.Seconds()
	r.RequestsPS = float64(len(samples)-r.Failed) / wall.Seconds()
	r.Goodput = float64(r.SLOMet) / wall.Seconds()
	r.TTFT, r.TPOT, r.ITL, r.E2E = Summarize(ttft), Summarize(tpot), Summarize(itl), Summarize(e2e)
	if cfg.Turns > 1 {
		for _, xs := range turns {
			r.TurnTTFT = append(r.TurnTTFT, Summarize(xs))
		}
	}
	return r
}

// errorKind names what made s fail, for Result.Errors.
func errorKind(s sample) string {
	var ue *url.Error
	switch {
	case s.status != 0:
		return strconv.Itoa(s.status)
	case errors.As(s.err, &ue):
		return "transport"
	}
	return "stream"
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
	if cfg.API == "embeddings" {
		inputs := make([]string, cfg.Inputs)
		for k := range inputs {
			inputs[k] = fmt.Sprintf("%s #%d.%d", cfg.Prompt, i, k)
			if cfg.QuestionWords > 0 {
				inputs[k] = text(cfg.QuestionWords, cfg.Seed<<32+uint64(1+i*cfg.Inputs+k))
			}
		}
		for turn := range out {
			out[turn] = embed(ctx, client, cfg, i, inputs)
			out[turn].turn = turn
		}
		return
	}
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

// embed sends the inputs of request i to /embeddings; its whole time is
// both TTFT and E2E, its inputs' tokens the prompt tokens.
func embed(ctx context.Context, client *http.Client, cfg Config, i int, inputs []string) sample {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	body, _ := json.Marshal(map[string]any{"model": cfg.Model, "input": inputs})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(cfg.BaseURL, "/")+"/embeddings", bytes.NewReader(body))
	if err != nil {
		return sample{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", fmt.Sprintf("bench-%d-%d", time.Now().UnixNano(), i))
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
		return sample{status: resp.StatusCode, err: fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(msg))}
	}
	var r struct {
		Data []struct {
			Embedding []float32 `json:"embedding"`
		} `json:"data"`
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return sample{err: fmt.Errorf("bad embeddings response: %w", err)}
	}
	if len(r.Data) != len(inputs) {
		return sample{err: fmt.Errorf("%d embeddings for %d inputs", len(r.Data), len(inputs))}
	}
	d := time.Since(start)
	return sample{ttft: d, e2e: d, prompt: r.Usage.PromptTokens}
}

// one sends the messages of request i and reads the event stream.
func one(ctx context.Context, client *http.Client, cfg Config, i int, msgs []map[string]string) sample {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	fields := map[string]any{
		"model":          cfg.Model,
		"max_tokens":     cfg.MaxTokens,
		"temperature":    cfg.Temperature,
		"stream":         true,
		"stream_options": map[string]bool{"include_usage": true},
		"ignore_eos":     cfg.IgnoreEOS,
	}
	if cfg.NoPromptCache {
		fields["cache_prompt"] = false
	}
	switch rf := cfg.ResponseFormat; {
	case strings.HasPrefix(rf, "{"):
		fields["response_format"] = json.RawMessage(rf) // a whole response_format object
	case rf != "":
		fields["response_format"] = map[string]string{"type": rf}
	}
	path := "/chat/completions"
	if cfg.API == "completions" {
		path = "/completions"
		var prompt strings.Builder
		for _, m := range msgs {
			prompt.WriteString(m["content"])
			prompt.WriteString("\n")
		}
		fields["prompt"] = prompt.String()
	} else {
		fields["messages"] = msgs
	}
	body, _ := json.Marshal(fields)
	start0 := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(cfg.BaseURL, "/")+path, bytes.NewReader(body))
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
		return sample{status: resp.StatusCode, err: fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(msg))}
	}
	var s sample
	var answer strings.Builder
	chunks := 0
	var last time.Time
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
				Text string `json:"text"` // completions
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
			content := ch.Delta.Content + ch.Text
			if content == "" {
				continue
			}
			now := time.Now()
			answer.WriteString(content)
			if chunks == 0 {
				s.ttft = now.Sub(start)
				if cfg.firstToken != nil {
					cfg.firstToken()
				}
			} else {
				s.itls = append(s.itls, now.Sub(last))
			}
			last = now
			chunks++
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
