package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// SoakOptions configure a soak: many clients mixing tiers and behaviours
// against one server for a bounded time, watching its memory and KV cache.
type SoakOptions struct {
	Root     string        // server root URL, e.g. http://127.0.0.1:8080
	Clients  int           // concurrent clients (default 64)
	Duration time.Duration // how long clients start requests (default 10m); those in flight then finish
	Key      string        // a key allowed every tier
	// RateKey is a key with a low request rate; an eighth of the clients
	// send with it as fast as they can, so that 429s are expected there.
	RateKey string
	// AMLCase is a case body for POST /v1/aml/score (optional): some
	// standard-tier clients send it.
	AMLCase []byte
	Sample  time.Duration // metrics sampling interval (default 30s)
	Seed    uint64
	HTTP    *http.Client
}

// SoakReport is what a soak saw.
type SoakReport struct {
	Clients  int           `json:"clients"`
	Duration time.Duration `json:"duration_ns"`
	// Status counts outcomes by behaviour: "200", "429 queue_full", "503 queue_timeout" (status and error code), "transport",
	// "disconnected" (a client that left on purpose) and so on.
	Status map[string]map[string]int `json:"status"`
	// Shed counts requests the server refused by design under load: 429
	// queue_full and 503 queue_timeout, with Retry-After.
	Shed int `json:"shed"`
	// Unintended counts outcomes other than success, intended disconnects,
	// 429s on the rate-limited key and shed load.
	Unintended int          `json:"unintended"`
	Samples    []SoakSample `json:"samples"`
	// After the clients stopped and the server went idle.
	IdleRunning      float64 `json:"idle_running"`
	IdleWaiting      float64 `json:"idle_waiting"`
	IdleKVUsage      float64 `json:"idle_kv_usage"`
	IdlePrefixTokens float64 `json:"idle_prefix_tokens"`
}

// SoakSample is one scrape of the server's metrics.
type SoakSample struct {
	At      time.Duration `json:"at_ns"`
	RSS     float64       `json:"rss_bytes"`
	KVUsage float64       `json:"kv_usage"` // fraction of cells reserved by running requests
	Running float64       `json:"running"`
}

// behaviours of soak clients, chosen by client index.
const (
	behRate       = "over-rate"     // a rate-limited key listing models without a pause
	behDisconnect = "disconnecting" // standard streams left after their first chunks
	behRealtime   = "realtime-chat"
	behStandard   = "standard-chat"
	behBatch      = "batch-stream"
	behAML        = "aml-score"
)

// Soak runs the soak.
func Soak(ctx context.Context, o SoakOptions) (*SoakReport, error) {
	if o.Clients <= 0 {
		o.Clients = 64
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Minute
	}
	if o.Sample <= 0 {
		o.Sample = 30 * time.Second
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.Clients * 2}}
	}
	r := &SoakReport{Clients: o.Clients, Duration: o.Duration, Status: map[string]map[string]int{}}
	var mu sync.Mutex
	count := func(beh, status string) {
		mu.Lock()
		defer mu.Unlock()
		if r.Status[beh] == nil {
			r.Status[beh] = map[string]int{}
		}
		r.Status[beh][status]++
	}
	start := time.Now()
	sample := func() {
		m, err := scrape(ctx, o, "/metrics")
		if err != nil {
			return
		}
		mu.Lock()
		r.Samples = append(r.Samples, SoakSample{At: time.Since(start).Round(time.Second), RSS: m["process_resident_memory_bytes"],
			KVUsage: m["finserve_kv_cache_usage_perc"], Running: m["finserve_num_requests_running"]})
		mu.Unlock()
	}
	sample()
	// At the end of Duration clients start nothing new; what is in flight
	// then gets soakDrain to finish and is counted (cut, a request slow
	// under load would be neither a success nor a failure).
	runCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	reqCtx, cancelReqs := context.WithTimeout(ctx, o.Duration+soakDrain)
	defer cancelReqs()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(o.Sample)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				sample()
			}
		}
	}()
	for i := range o.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(o.Seed, uint64(i)))
			for n := 0; runCtx.Err() == nil; n++ {
				beh := behaviour(i, n, o)
				status := o.request(reqCtx, beh, rng)
				if reqCtx.Err() != nil && status == "transport" {
					break // cut by the end of the drain, not a failure
				}
				count(beh, status)
				pause := time.Duration(rng.IntN(200)) * time.Millisecond
				if beh == behRate {
					pause = 20 * time.Millisecond // ~50 requests a second: far over a low rate
				}
				time.Sleep(pause)
			}
		}()
	}
	wg.Wait()
	// Idle: wait for running requests to end, then sample once more.
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		m, err := scrape(ctx, o, "/metrics")
		if err == nil && m["finserve_num_requests_running"] == 0 && m["finserve_num_requests_waiting"] == 0 {
			r.IdleRunning, r.IdleWaiting = m["finserve_num_requests_running"], m["finserve_num_requests_waiting"]
			r.IdleKVUsage, r.IdlePrefixTokens = m["finserve_kv_cache_usage_perc"], m["finserve_prefix_cache_resident_tokens"]
			break
		}
	}
	sample()
	for beh, st := range r.Status {
		for s, n := range st {
			switch classify(beh, s) {
			case outcomeShed:
				r.Shed += n
			case outcomeUnintended:
				r.Unintended += n
			}
		}
	}
	return r, nil
}

// soakDrain bounds how long requests in flight at the end of a soak may
// take to finish.
const soakDrain = 2 * time.Minute

// behaviour picks what client i sends in its n-th request.
func behaviour(i, n int, o SoakOptions) string {
	switch {
	case i%8 == 0 && o.RateKey != "":
		return behRate
	case i%8 == 1:
		return behDisconnect
	}
	mix := []string{behRealtime, behRealtime, behStandard, behBatch}
	if o.AMLCase != nil {
		mix = append(mix, behAML)
	}
	return mix[(i+n)%len(mix)]
}

// request sends one request of a behaviour and returns its outcome.
func (o SoakOptions) request(ctx context.Context, beh string, rng *rand.Rand) string {
	key, path, stream, maxTokens := o.Key, "/tiers/realtime/v1/chat/completions", true, 16
	n := 20 + rng.IntN(40)
	switch beh {
	case behRate:
		key = o.RateKey
	case behDisconnect:
		path, maxTokens = "/tiers/standard/v1/chat/completions", 256
	case behStandard:
		path, stream, maxTokens = "/tiers/standard/v1/chat/completions", false, 32
	case behBatch:
		path, maxTokens, n = "/tiers/batch/v1/chat/completions", 128, 300+rng.IntN(300)
	case behAML:
		path, stream = "/tiers/standard/v1/aml/score", false
	}
	if beh == behRate {
		// As fast as it can: a cheap request, counted by the key's rate
		// like any other.
		return o.get(ctx, key, "/tiers/realtime/v1/models")
	}
	var body []byte
	if beh == behAML {
		body = o.AMLCase
	} else {
		q := make([]string, n)
		for i := range q {
			q[i] = words[rng.IntN(len(words))]
		}
		body, _ = json.Marshal(map[string]any{"messages": []map[string]string{{"role": "user", "content": strings.Join(q, " ")}},
			"max_tokens": maxTokens, "stream": stream, "temperature": 0.7, "seed": rng.IntN(1 << 30)})
	}
	reqCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, o.Root+path, bytes.NewReader(body))
	if err != nil {
		return "transport"
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := o.HTTP.Do(req)
	if err != nil {
		return "transport"
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return refusal(resp)
	}
	if beh == behDisconnect {
		// Read a few events, then leave mid-stream (an error event, such as
		// a queue timeout, is an outcome of its own).
		sc := bufio.NewScanner(resp.Body)
		for n := 0; n < 3 && sc.Scan(); {
			if line := sc.Text(); strings.HasPrefix(line, "data: ") {
				if strings.Contains(line, `"error":`) {
					return "stream-error"
				}
				n++
			}
		}
		cancel()
		return "disconnected"
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return "transport"
	}
	if stream && (!bytes.Contains(data, []byte("data: [DONE]")) || bytes.Contains(data, []byte(`data: {"error":`))) {
		return "stream-error"
	}
	return "200"
}

// get sends a GET and returns its outcome.
func (o SoakOptions) get(ctx context.Context, key, path string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.Root+path, nil)
	if err != nil {
		return "transport"
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := o.HTTP.Do(req)
	if err != nil {
		return "transport"
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return refusal(resp)
	}
	io.Copy(io.Discard, resp.Body)
	return "200"
}

// scrape reads the server's Prometheus metrics as name -> value (label
// sets summed).
func scrape(ctx context.Context, o SoakOptions, path string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.Root+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+o.Key)
	resp, err := o.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err == nil {
			m[name] += v
		}
	}
	return m, sc.Err()
}

// WriteText prints a soak report for people.
func (r *SoakReport) WriteText(w io.Writer) {
	fmt.Fprintf(w, "soak: %d clients for %v\n", r.Clients, r.Duration)
	for _, beh := range slices.Sorted(maps.Keys(r.Status)) {
		fmt.Fprintf(w, "  %-14s", beh)
		for _, s := range slices.Sorted(maps.Keys(r.Status[beh])) {
			fmt.Fprintf(w, " %s=%d", s, r.Status[beh][s])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "shed under load (429 queue_full, 503 queue_timeout): %d\nunintended outcomes: %d\n", r.Shed, r.Unintended)
	if n := len(r.Samples); n > 0 {
		first, last := r.Samples[0], r.Samples[n-1]
		peak := 0.0
		for _, s := range r.Samples {
			peak = max(peak, s.RSS)
		}
		fmt.Fprintf(w, "RSS: start %.0f MiB, end %.0f MiB, peak %.0f MiB (%d samples)\n", first.RSS/(1<<20), last.RSS/(1<<20), peak/(1<<20), n)
	}
	fmt.Fprintf(w, "after: running %.0f, waiting %.0f, KV reserved by requests %.3f, prefix-cache resident tokens %.0f\n",
		r.IdleRunning, r.IdleWaiting, r.IdleKVUsage, r.IdlePrefixTokens)
}

// Outcome kinds of a soak request.
const (
	outcomeIntended = iota
	outcomeShed
	outcomeUnintended
)

// classify sorts an outcome of a behaviour: success, intended
// disconnects and the rate-limited key's 429s are intended; 429
// queue_full and 503 queue_timeout are load a loaded server sheds by
// design; anything else is unintended.
func classify(beh, outcome string) int {
	switch {
	case outcome == "200", beh == behDisconnect && outcome == "disconnected", beh == behRate && outcome == "429 rate_limit_exceeded":
		return outcomeIntended
	case outcome == "429 queue_full", outcome == "503 queue_timeout":
		return outcomeShed
	}
	return outcomeUnintended
}

// refusal names a non-200 answer by its status and OpenAI error code,
// such as "503 queue_timeout".
func refusal(resp *http.Response) string {
	var body struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	status := strconv.Itoa(resp.StatusCode)
	if json.Unmarshal(data, &body) == nil && body.Error.Code != "" {
		return status + " " + body.Error.Code
	}
	return status
}
