package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Workload is a named, seeded request mix: it sets the request fields of
// a Config.
type Workload struct {
	Name, Description string
	apply             func(c *Config, t *Target)
}

// Workloads are the built-in request mixes.
var Workloads = map[string]Workload{
	"short": {"short", "one short question per request, 128 tokens out: throughput and latency against concurrency",
		func(c *Config, _ *Target) {
			c.Prompt, c.MaxTokens = cmpStr(c.Prompt, "Summarise the bank's policy on overdraft fees for a new customer."), 128
		}},
	"chat": {"chat", "customer-service chat: a shared ~300-word system prompt and conversations of 3 turns (each resends the history), 64 tokens per answer",
		func(c *Config, _ *Target) {
			c.SystemWords, c.QuestionWords, c.Turns, c.MaxTokens = 300, 24, 3, 64
		}},
	"batch": {"batch", "long-prompt batch analysis: ~1,200-word documents, 256 tokens out",
		func(c *Config, _ *Target) {
			c.QuestionWords, c.MaxTokens = 1200, 256
		}},
	"embed": {"embed", "retrieval indexing: /embeddings requests of 4 generated texts of ~48 words; total tok/s counts the inputs' tokens, TTFT and E2E are the whole response's time",
		func(c *Config, _ *Target) {
			c.API, c.Inputs, c.QuestionWords, c.MaxTokens = "embeddings", 4, 48, 1
		}},
	"mixed": {"mixed", "realtime chat (~48-word questions, 32 tokens) beside 8 batch streams (~200 words, 128 tokens); on finserve through its tier URLs",
		func(c *Config, t *Target) {
			c.QuestionWords, c.MaxTokens = 48, 32
			c.Background, c.BackgroundWords, c.BackgroundMaxTokens = 8, 200, 128
			c.BaseURL, c.BackgroundURL = t.tierURL("realtime"), t.tierURL("batch")
		}},
}

func cmpStr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Target is a server to measure: a name and its OpenAI base URL.
type Target struct {
	Name string `json:"name"`
	URL  string `json:"url"`
	// Tiers is set when the server offers finserve's tier URLs.
	Tiers bool `json:"tiers"`
}

// ParseTarget reads "NAME=URL" or a bare URL (named by its host).
func ParseTarget(s string) (Target, error) {
	name, raw, ok := strings.Cut(s, "=")
	if !ok || strings.Contains(name, "/") {
		name, raw = "", s
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Target{}, fmt.Errorf("target %q: want an http(s) base URL such as http://127.0.0.1:8080/v1", s)
	}
	if name == "" {
		name = u.Host
	}
	return Target{Name: name, URL: strings.TrimRight(raw, "/")}, nil
}

// tierURL is the base URL of tier name on a server with tiers, else URL.
func (t *Target) tierURL(name string) string {
	if !t.Tiers {
		return t.URL
	}
	return strings.TrimSuffix(t.URL, "/v1") + "/tiers/" + name + "/v1"
}

// Plan is a benchmark: one workload against each target at each load
// level.
type Plan struct {
	Targets  []Target
	Workload string
	// Concurrency levels (closed loop), or Rates in requests/s (open
	// loop) when set.
	Concurrency []int
	Rates       []float64
	// Base holds the other settings (model, key, requests, duration,
	// SLOs, ...). Requests 0 and Duration 0 mean PerClient requests per
	// client (default 4), or 60 s of arrivals with Rates.
	Base      Config
	PerClient int
	// Override, if set, changes the workload's settings for each run
	// (explicit flags over a workload's defaults).
	Override func(*Config)
	// Progress, if set, is told of every finished request, from one
	// goroutine at a time.
	Progress func(done, total int)
}

// Level is one load level's result against one target.
type Level struct {
	Concurrency int     `json:"concurrency,omitempty"`
	Rate        float64 `json:"rate,omitempty"`
	Result      Result  `json:"result"`
}

// TargetReport is what a target served.
type TargetReport struct {
	Target
	Model  string  `json:"model"`  // the model the server lists first
	Server string  `json:"server"` // its Server header, if any
	Levels []Level `json:"levels"`
}

// Report is a whole benchmark: every figure, and how it was taken.
type Report struct {
	Date     time.Time `json:"date"`
	Host     string    `json:"host"`
	CPUs     int       `json:"cpus"`
	Bench    string    `json:"bench"` // the generator's module version
	Workload string    `json:"workload"`
	Plan     struct {
		Concurrency []int     `json:"concurrency"`
		Rates       []float64 `json:"rates"`
		Settings    Config    `json:"settings"`
	} `json:"plan"`
	Targets []TargetReport `json:"targets"`
}

// RunPlan runs p's workload against every target in turn.
func RunPlan(ctx context.Context, p Plan) (*Report, error) {
	w, ok := Workloads[p.Workload]
	if !ok {
		return nil, fmt.Errorf("bench: unknown workload %q (short, chat, batch, mixed, embed)", p.Workload)
	}
	if len(p.Targets) == 0 || len(p.Concurrency) == 0 && len(p.Rates) == 0 {
		return nil, fmt.Errorf("bench: a target and a load level are required")
	}
	r := &Report{Date: time.Now().UTC(), CPUs: runtime.NumCPU(), Workload: p.Workload}
	r.Host, _ = os.Hostname()
	if bi, ok := debug.ReadBuildInfo(); ok {
		r.Bench = bi.Main.Path + " " + bi.Main.Version
	}
	r.Plan.Concurrency, r.Plan.Rates, r.Plan.Settings = p.Concurrency, p.Rates, p.Base
	levels := len(p.Concurrency) + len(p.Rates)
	var done atomic.Int64
	var progressMu sync.Mutex // Progress is called from one goroutine at a time
	total := 0
	for range p.Targets {
		for _, c := range p.Concurrency {
			total += p.requests(c) * max(p.Base.Turns, 1)
		}
		total += len(p.Rates) * p.Base.Requests
	}
	for _, t := range p.Targets {
		tr := TargetReport{Target: t}
		tr.Model, tr.Server, tr.Tiers = probe(ctx, t, p.Base.APIKey)
		for i := range levels {
			c := p.Base
			c.BaseURL = tr.URL
			w.apply(&c, &tr.Target)
			if p.Override != nil {
				p.Override(&c)
			}
			if c.Model == "" {
				c.Model = tr.Model
			}
			lv := Level{}
			if i < len(p.Concurrency) {
				lv.Concurrency = p.Concurrency[i]
				c.Clients, c.Requests = lv.Concurrency, p.requests(lv.Concurrency)
			} else {
				lv.Rate = p.Rates[i-len(p.Concurrency)]
				c.Rate = lv.Rate
				if c.Requests == 0 && c.Duration == 0 {
					c.Duration = time.Minute
				}
			}
			c.Seed = p.Base.Seed + uint64(i) // levels ask different questions
			c.done = func() {
				if p.Progress != nil {
					progressMu.Lock()
					defer progressMu.Unlock()
					p.Progress(int(done.Add(1)), total)
				}
			}
			res, err := Run(ctx, c)
			if err != nil {
				return nil, fmt.Errorf("bench: %s: %w", t.Name, err)
			}
			lv.Result = res
			tr.Levels = append(tr.Levels, lv)
		}
		r.Targets = append(r.Targets, tr)
	}
	return r, nil
}

func (p *Plan) requests(clients int) int {
	if p.Base.Requests > 0 || p.Base.Duration > 0 {
		return p.Base.Requests
	}
	return clients * cmp.Or(p.PerClient, 4)
}

// probe asks a target for its model and whether it has tier URLs.
func probe(ctx context.Context, t Target, key string) (model, server string, tiers bool) {
	get := func(url string) (*http.Response, error) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		return http.DefaultClient.Do(req)
	}
	if resp, err := get(t.URL + "/models"); err == nil {
		var list struct {
			Data []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		if json.NewDecoder(resp.Body).Decode(&list) == nil && len(list.Data) > 0 {
			model = list.Data[0].ID
		}
		server = resp.Header.Get("Server")
		resp.Body.Close()
	}
	if strings.HasSuffix(t.URL, "/v1") {
		if resp, err := get(strings.TrimSuffix(t.URL, "/v1") + "/tiers/realtime/v1/models"); err == nil {
			tiers = resp.StatusCode == http.StatusOK
			resp.Body.Close()
		}
	}
	return model, server, tiers
}
