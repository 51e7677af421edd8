package server

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/gofiber/fiber/v2/middleware/adaptor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/finserve/finserve/engine"
)

// metrics holds the Prometheus series. Names follow vLLM's set, spelled
// with underscores (colons are reserved for recording rules).
type metrics struct {
	s        *Server
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	success  *prometheus.CounterVec

	ttft, e2e, queue     *prometheus.HistogramVec // by tier
	itl, prefill, decode prometheus.Histogram

	promptTokens, generationTokens prometheus.Counter
	disconnects                    prometheus.Counter
	tenantTokens                   *prometheus.CounterVec // by tenant and kind
	tenants                        tenantLabels

	// AML decisions (aml.go)
	amlDecisions              *prometheus.CounterVec // by risk level
	amlRules                  *prometheus.CounterVec // by rule id
	amlSeconds                *prometheus.HistogramVec
	amlEvaluated, amlPromptTk prometheus.Counter

	handler fiber.Handler
}

var (
	latencyBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
		1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640}
	tokenBuckets = []float64{0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
		0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5}
	requestBuckets = []float64{0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50,
		60, 120, 240, 480, 960}
)

func newMetrics(s *Server) *metrics {
	m := &metrics{s: s, reg: prometheus.NewRegistry()}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "finserve_" + name, Help: help, Buckets: buckets})
		m.reg.MustRegister(h)
		return h
	}
	counter := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: "finserve_" + name, Help: help})
		m.reg.MustRegister(c)
		return c
	}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "finserve_http_requests_total",
		Help: "HTTP requests by route, method and status code."}, []string{"route", "method", "status"})
	m.success = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "finserve_request_success_total",
		Help: "Generations that ended, by finish reason (stop, length, abort, error)."}, []string{"finished_reason"})
	m.reg.MustRegister(m.requests, m.success)
	byTier := func(name, help string, buckets []float64) *prometheus.HistogramVec {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "finserve_" + name, Help: help, Buckets: buckets}, []string{"tier"})
		m.reg.MustRegister(h)
		return h
	}
	m.ttft = byTier("time_to_first_token_seconds", "Time from request arrival to its first generated token, by tier.", latencyBuckets)
	m.itl = hist("inter_token_latency_seconds", "Time between consecutive generated tokens of one sequence.", tokenBuckets)
	m.e2e = byTier("e2e_request_latency_seconds", "Time from request arrival to its last token, by tier.", requestBuckets)
	m.queue = byTier("request_queue_time_seconds", "Time a request waited for a sequence slot, by tier.", requestBuckets)
	m.prefill = hist("request_prefill_time_seconds", "Time from admission to the first token (prompt processing).", requestBuckets)
	m.decode = hist("request_decode_time_seconds", "Time from the first token to the last.", requestBuckets)
	m.promptTokens = counter("prompt_tokens_total", "Prompt tokens processed.")
	m.generationTokens = counter("generation_tokens_total", "Tokens generated.")
	m.disconnects = counter("client_disconnects_total", "Generations cancelled because their client disconnected.")
	m.tenantTokens = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "finserve_tenant_tokens_total",
		Help: "Tokens by tenant (API key name; \"anonymous\" without keys; \"other\" past the first " + strconv.Itoa(maxTenantLabels) +
			") and kind: prompt (all prompt tokens), cached (of those, served from the prefix cache), generated, scored (computed for AML attribution) and embedded (inputs of /v1/embeddings)."}, []string{"tenant", "kind"})
	m.reg.MustRegister(m.tenantTokens)
	b := s.cfg.Build
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "finserve_build_info",
		Help:        "Always 1; the labels say what is running: version, VCS revision, Go version and the llama.cpp it was built with.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion, "llama_cpp": b.LlamaCpp}},
		func() float64 { return 1 }))
	if s.audit != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "finserve_audit_healthy",
			Help: "1 while the AML audit log accepts records; 0 after a failed write (AML decisions answer 503 until a retry succeeds)."},
			func() float64 {
				if s.audit.Err() != nil {
					return 0
				}
				return 1
			}))
	}
	m.amlDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "finserve_aml_decisions_total",
		Help: "AML decisions returned, by risk level."}, []string{"risk_level"})
	m.amlRules = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "finserve_aml_rules_fired_total",
		Help: "AML rules and statutory reports that fired, by rule id."}, []string{"rule"})
	m.reg.MustRegister(m.amlDecisions, m.amlRules)
	m.amlSeconds = byTier("aml_decision_seconds", "Time from an AML request's arrival to its decision, audit record included, by tier.", requestBuckets)
	m.amlEvaluated = counter("aml_evaluated_tokens_total", "Tokens the model computed for AML attribution (each shared token once).")
	m.amlPromptTk = counter("aml_coalition_prompt_tokens_total", "Tokens of all AML coalition prompts: what scoring each on its own would compute.")
	m.reg.MustRegister(engineCollector{s}, fleetCollector{s})
	m.reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	m.handler = adaptor.HTTPHandler(promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	return m
}

func (m *metrics) started(j *job) {
	for _, p := range j.prompts {
		m.promptTokens.Add(float64(len(p)))
	}
}

// finished records a job's latencies once all its choices have ended.
func (m *metrics) finished(j *job) {
	seconds := func(d time.Duration) float64 { return d.Seconds() }
	tier := j.tier.String()
	for i := range j.choices {
		ch := &j.choices[i]
		reason := "error"
		switch {
		case ch.done && ch.final.Err == nil:
			reason = string(ch.final.Finish)
		case j.ctx.Err() != nil:
			reason = "abort"
		}
		m.success.WithLabelValues(reason).Inc()
		m.generationTokens.Add(float64(ch.tokens))
		tenant := m.tenants.label(j.tenant)
		m.tenantTokens.WithLabelValues(tenant, "generated").Add(float64(ch.tokens))
		if ch.tokens > 0 {
			m.ttft.WithLabelValues(tier).Observe(seconds(ch.firstAt.Sub(j.start)))
		}
		if ch.done {
			t := ch.final.Timings
			if ch.final.Err == nil || t.Queue > 0 {
				m.queue.WithLabelValues(tier).Observe(seconds(t.Queue))
			}
			m.prefill.Observe(seconds(t.Prefill))
			m.decode.Observe(seconds(t.Decode))
		}
	}
	m.e2e.WithLabelValues(tier).Observe(time.Since(j.start).Seconds())
	u := j.usage()
	tenant := m.tenants.label(j.tenant)
	m.tenantTokens.WithLabelValues(tenant, "prompt").Add(float64(u.PromptTokens))
	m.tenantTokens.WithLabelValues(tenant, "cached").Add(float64(u.PromptTokensDetails.CachedTokens))
}

// maxTenantLabels bounds the tenant label's values: key files are small,
// but plain --api-key keys and reloads add names.
const maxTenantLabels = 256

// tenantLabels maps tenants to label values, the first maxTenantLabels
// by name and the rest to "other".
type tenantLabels struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (t *tenantLabels) label(tenant string) string {
	if tenant == "" {
		return "anonymous"
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seen == nil {
		t.seen = map[string]bool{}
	}
	if !t.seen[tenant] {
		if len(t.seen) >= maxTenantLabels {
			return "other"
		}
		t.seen[tenant] = true
	}
	return tenant
}

// cacheBlockSize is the block a router's prefix index counts in, in
// tokens. llama.cpp keeps KV per token, so any size is exact to within a
// block; 16 is vLLM's default, which routers are tuned for.
const cacheBlockSize = 16

// engineCollector reports the engine's state at scrape time.
type engineCollector struct{ s *Server }

// fleetCollector reports each model of a server of several (SetModels):
// its state, memory counted against the budget, and requests using it.
// The engine metrics above are the default model's, under the names
// vLLM's exporters use, which routers read one series each of.
type fleetCollector struct{ s *Server }

var (
	descModelState  = prometheus.NewDesc("finserve_model_state", "1 for each served model's current state: unloaded, loading, ready, unloading or failed.", []string{"model", "state"}, nil)
	descModelMemory = prometheus.NewDesc("finserve_model_memory_bytes", "Memory a model is counted for against --memory-budget (its estimate or memory=).", []string{"model"}, nil)
	descModelActive = prometheus.NewDesc("finserve_model_active_requests", "Requests using a model now (it is not unloaded while any does).", []string{"model"}, nil)
)

func (fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descModelState
	ch <- descModelMemory
	ch <- descModelActive
}

func (f fleetCollector) Collect(ch chan<- prometheus.Metric) {
	reg := f.s.fleet.Load()
	if reg == nil {
		return
	}
	for _, st := range reg.Status() {
		ch <- prometheus.MustNewConstMetric(descModelState, prometheus.GaugeValue, 1, st.ID, string(st.State))
		ch <- prometheus.MustNewConstMetric(descModelMemory, prometheus.GaugeValue, float64(st.Bytes), st.ID)
		ch <- prometheus.MustNewConstMetric(descModelActive, prometheus.GaugeValue, float64(st.Active), st.ID)
	}
}

var (
	descRunning = prometheus.NewDesc("finserve_num_requests_running", "Requests holding a sequence slot.", nil, nil)
	// The unlabelled total is what a router reads (the Gateway API
	// Inference Extension's endpoint picker takes one series and does not
	// sum); the split by tier is a separate family.
	descWaiting     = prometheus.NewDesc("finserve_num_requests_waiting", "Requests waiting for a sequence slot (preempted ones included), all tiers.", nil, nil)
	descTierWaiting = prometheus.NewDesc("finserve_tier_requests_waiting", "Requests waiting for a sequence slot (preempted ones included), by tier.", []string{"tier"}, nil)
	// descCacheConfig is vLLM's cache_config_info in finserve's name: the
	// endpoint picker's prefix scorer sizes its index of each replica by
	// block_size and num_gpu_blocks (label values, the gauge is 1).
	descCacheConfig = prometheus.NewDesc("finserve_cache_config_info", "The KV cache's configuration, in the labels: block_size tokens a block (a reporting unit: llama.cpp's cache is per token), num_gpu_blocks blocks in all, context and slots.", []string{"block_size", "num_gpu_blocks", "context", "slots"}, nil)
	descPreempt     = prometheus.NewDesc("finserve_tier_preemptions_total", "Generations preempted for a higher tier, by tier.", []string{"tier"}, nil)
	descPaused      = prometheus.NewDesc("finserve_tier_paused_steps_total", "Sequence steps sat out for a higher tier's prefill, by tier.", []string{"tier"}, nil)
	descCut         = prometheus.NewDesc("finserve_cut_steps_total", "Engine steps of preemptible tiers cut short for a higher-priority arrival (computed again).", nil, nil)
	descReject      = prometheus.NewDesc("finserve_tier_rejections_total", "Requests refused, by tier and reason: queue_full (429) or queue_timeout (503).", []string{"tier", "reason"}, nil)
	descKV          = prometheus.NewDesc("finserve_kv_cache_usage_perc", "Fraction of KV-cache cells reserved by running requests (0 to 1); cells the prefix cache keeps are not counted.", nil, nil)
	descReady       = prometheus.NewDesc("finserve_model_ready", "1 once the model is loaded and serving.", nil, nil)

	descPrefixQueries = prometheus.NewDesc("finserve_prefix_cache_queries_total", "Sequences started with the prefix cache on.", nil, nil)
	descPrefixHits    = prometheus.NewDesc("finserve_prefix_cache_hits_total", "Sequences that reused a cached prefix, by the tier it came from.", []string{"tier"}, nil)
	descPrefixReused  = prometheus.NewDesc("finserve_prefix_cache_reused_tokens_total", "Prompt tokens served from the prefix cache instead of being computed.", nil, nil)
	descPrefixWaits   = prometheus.NewDesc("finserve_prefix_cache_waits_total", "Admissions postponed to reuse a prefix another request was computing.", nil, nil)
	descPrefixTokens  = prometheus.NewDesc("finserve_prefix_cache_resident_tokens", "Tokens whose KV cells the prefix cache holds, kept from ended requests or pinned.", []string{"kind"}, nil)
	descPrefixEvict   = prometheus.NewDesc("finserve_prefix_cache_evictions_total", "Cached prefixes evicted for room, by tier.", []string{"tier"}, nil)
	descPrefixSpills  = prometheus.NewDesc("finserve_prefix_cache_spills_total", "Prefixes evicted from the KV cache and saved to the host tier.", nil, nil)
	descHostBytes     = prometheus.NewDesc("finserve_prefix_cache_host_bytes", "Bytes the host tier holds.", nil, nil)
	descHostMaxBytes  = prometheus.NewDesc("finserve_prefix_cache_host_max_bytes", "The host tier's byte bound.", nil, nil)
	descHostEntries   = prometheus.NewDesc("finserve_prefix_cache_host_entries", "Prefixes the host tier holds.", nil, nil)
	descHostDropped   = prometheus.NewDesc("finserve_prefix_cache_host_dropped_total", "Prefixes offered to the host tier and not stored (refused by its admission policy or too big).", nil, nil)
)

func (engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRunning, descWaiting, descTierWaiting, descCacheConfig, descPreempt, descPaused, descCut, descReject, descKV, descReady,
		descPrefixQueries, descPrefixHits,
		descPrefixReused, descPrefixWaits, descPrefixTokens, descPrefixEvict, descPrefixSpills, descHostBytes,
		descHostMaxBytes, descHostEntries, descHostDropped} {
		ch <- d
	}
}

func (e engineCollector) Collect(ch chan<- prometheus.Metric) {
	b := e.s.defaultBackend()
	if b == nil {
		ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(descReady, prometheus.GaugeValue, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := b.eng.Stats(ctx)
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descRunning, prometheus.GaugeValue, float64(st.Running))
	waiting := 0
	for t, ts := range st.Tiers {
		name := engine.Tier(t).String()
		waiting += ts.Waiting
		ch <- prometheus.MustNewConstMetric(descTierWaiting, prometheus.GaugeValue, float64(ts.Waiting), name)
		ch <- prometheus.MustNewConstMetric(descPreempt, prometheus.CounterValue, float64(ts.Preemptions), name)
		ch <- prometheus.MustNewConstMetric(descPaused, prometheus.CounterValue, float64(ts.PausedSteps), name)
		ch <- prometheus.MustNewConstMetric(descReject, prometheus.CounterValue, float64(ts.Rejected), name, "queue_full")
		ch <- prometheus.MustNewConstMetric(descReject, prometheus.CounterValue, float64(ts.TimedOut), name, "queue_timeout")
	}
	ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(waiting))
	ch <- prometheus.MustNewConstMetric(descCut, prometheus.CounterValue, float64(st.CutSteps))
	opts := b.eng.Options()
	ch <- prometheus.MustNewConstMetric(descCacheConfig, prometheus.GaugeValue, 1,
		strconv.Itoa(cacheBlockSize), strconv.Itoa(st.KVCells/cacheBlockSize), strconv.Itoa(opts.Context), strconv.Itoa(opts.Parallel))
	p := st.Prefix
	kv := 0.0
	if st.KVCells > 0 {
		kv = float64(st.KVCellsReserved-p.KeptTokens-p.PinnedTokens) / float64(st.KVCells)
	}
	ch <- prometheus.MustNewConstMetric(descKV, prometheus.GaugeValue, kv)
	if !p.Enabled {
		return
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	counter(descPrefixQueries, p.Queries)
	counter(descPrefixHits, p.Hits-p.HostHits, "resident")
	counter(descPrefixHits, p.HostHits, "host")
	counter(descPrefixReused, p.ReusedTokens)
	counter(descPrefixWaits, p.Waits)
	gauge(descPrefixTokens, int64(p.KeptTokens), "kept")
	gauge(descPrefixTokens, int64(p.PinnedTokens), "pinned")
	counter(descPrefixEvict, p.Evictions, "resident")
	counter(descPrefixSpills, p.Spills)
	if p.Host.MaxBytes > 0 {
		counter(descPrefixEvict, p.Host.Evictions, "host")
		gauge(descHostBytes, p.Host.Bytes)
		gauge(descHostMaxBytes, p.Host.MaxBytes)
		gauge(descHostEntries, p.Host.Entries)
		counter(descHostDropped, p.Host.Dropped)
	}
}
