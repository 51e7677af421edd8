package server

import (
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/finserve/finserve/engine"
)

// TestMetrics: after real requests, /metrics is valid Prometheus text that
// passes the linter and counts what happened.
func TestMetrics(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{PrefixCache: engine.PrefixCache{HostBytes: 1 << 20}})
	for range 3 {
		if resp, body := ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"ignore_eos":true}`); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	if resp, _ := ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":5,"ignore_eos":true,"stream":true}`); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	ts.post(t, "/chat/completions", `{bad json`)
	ts.get(t, "/nowhere")
	ts.waitIdle(t) // a stream's metrics are recorded after its last byte

	resp, text := ts.get(t, "/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("metrics: %d", resp.StatusCode)
	}
	problems, err := promlint.New(strings.NewReader(text)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parsing metrics: %v", err)
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		f, ok := families[name]
		if !ok {
			t.Fatalf("no series %s", name)
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
		t.Fatalf("no %s with %v", name, labels)
		return 0
	}
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"finserve_http_requests_total", map[string]string{"route": "/v1/chat/completions", "status": "200"}, 4},
		{"finserve_http_requests_total", map[string]string{"route": "/v1/chat/completions", "status": "400"}, 1},
		{"finserve_http_requests_total", map[string]string{"route": "unmatched", "status": "404"}, 1},
		{"finserve_request_success_total", map[string]string{"finished_reason": "length"}, 4},
		{"finserve_generation_tokens_total", nil, 20},
		{"finserve_time_to_first_token_seconds", nil, 4},
		{"finserve_inter_token_latency_seconds", nil, 16},
		{"finserve_e2e_request_latency_seconds", nil, 4},
		{"finserve_request_queue_time_seconds", nil, 4},
		{"finserve_request_prefill_time_seconds", nil, 4},
		{"finserve_request_decode_time_seconds", nil, 4},
		{"finserve_num_requests_running", nil, 0},
		{"finserve_num_requests_waiting", nil, 0},
		{"finserve_tier_requests_waiting", map[string]string{"tier": "batch"}, 0},
		{"finserve_cache_config_info", map[string]string{"block_size": "16"}, 1},
		{"finserve_kv_cache_usage_perc", nil, 0},
		{"finserve_model_ready", nil, 1},
		{"finserve_cut_steps_total", nil, 0}, // standard requests only: nothing to cut
	}
	for _, c := range checks {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// The router sizes its prefix index from the block count: cells / 16.
	st, err := ts.eng.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	blocks := strconv.Itoa(st.KVCells / 16)
	if got := value("finserve_cache_config_info", map[string]string{"num_gpu_blocks": blocks, "context": "1024", "slots": "4"}); got != 1 {
		t.Errorf("cache config info %v, want 1 with num_gpu_blocks %s", got, blocks)
	}
	prompt := value("finserve_prompt_tokens_total", nil)
	if prompt < 4*3 {
		t.Errorf("prompt tokens %v", prompt)
	}
	// The same prompt four times: three reuse all of it but the last token.
	prefix := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"finserve_prefix_cache_queries_total", nil, 4},
		{"finserve_prefix_cache_hits_total", map[string]string{"tier": "resident"}, 3},
		{"finserve_prefix_cache_hits_total", map[string]string{"tier": "host"}, 0},
		{"finserve_prefix_cache_reused_tokens_total", nil, 3 * (prompt/4 - 1)},
		{"finserve_prefix_cache_host_max_bytes", nil, 1 << 20},
	}
	for _, c := range prefix {
		if got := value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if got := value("finserve_prefix_cache_resident_tokens", map[string]string{"kind": "kept"}); got < prompt/4 {
		t.Errorf("kept tokens %v, want at least one prompt's %v", got, prompt/4)
	}
}

// TestCompression: JSON responses are compressed for clients that ask;
// event streams never are.
func TestCompression(t *testing.T) {
	ts := startServer(t, Config{Compress: true}, engine.Options{})
	body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":40,"ignore_eos":true,"logprobs":true,"top_logprobs":5}`
	req, _ := http.NewRequest(http.MethodPost, ts.url+"/chat/completions", strings.NewReader(body))
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("JSON response not compressed: %v", resp.Header)
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(zr)
	if err != nil || !strings.Contains(string(plain), `"chat.completion"`) {
		t.Fatalf("decompressed %q: %v", plain, err)
	}
	if timing := resp.Header.Get("Server-Timing"); !strings.Contains(timing, "ttft;dur=") {
		t.Errorf("Server-Timing %q", timing)
	}
	if id := resp.Header.Get("X-Request-Id"); !strings.HasPrefix(id, "chatcmpl-") || !strings.Contains(string(plain), `"id":"`+id+`"`) {
		t.Errorf("X-Request-Id %q does not name the response", id)
	}

	stream := strings.Replace(body, `"max_tokens"`, `"stream":true,"max_tokens"`, 1)
	req, _ = http.NewRequest(http.MethodPost, ts.url+"/chat/completions", strings.NewReader(stream))
	req.Header.Set("Accept-Encoding", "gzip")
	resp2, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp2.Body.Close()
	if enc := resp2.Header.Get("Content-Encoding"); enc != "" {
		t.Fatalf("event stream compressed with %s", enc)
	}
	if ct := resp2.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("stream content type %q", ct)
	}
	raw, _ := io.ReadAll(resp2.Body)
	if !strings.HasSuffix(string(raw), "data: [DONE]\n\n") {
		t.Fatalf("stream ends %q", tail(string(raw)))
	}
}

// TestMetricsLabelsAreCopies: request labels are copied out of fasthttp's
// reused buffers. Before they were, mixed methods and routes on reused
// connections corrupted stored labels, and /metrics failed with a
// "collected before" error.
func TestMetricsLabelsAreCopies(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	msg := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}`
	for i := range 30 {
		switch i % 5 {
		case 0:
			ts.post(t, "/chat/completions", msg)
		case 1:
			sendTo(t, ts.tierURL("realtime"), "/chat/completions", msg)
		case 2:
			ts.get(t, "/v1/models")
		case 3:
			ts.get(t, "/tiers/batch/v1/models")
		case 4:
			ts.post(t, "/no/such/route", "{}")
		}
	}
	resp, text := ts.get(t, "/metrics")
	if resp.StatusCode != 200 || strings.Contains(text, "error has occurred") {
		t.Fatalf("metrics: %d %.300s", resp.StatusCode, text)
	}
	for _, want := range []string{
		`finserve_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 6`,
		`finserve_http_requests_total{method="POST",route="/tiers/:tier/v1/chat/completions",status="200"} 6`,
		`finserve_http_requests_total{method="GET",route="/tiers/:tier/v1/models",status="200"} 6`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
