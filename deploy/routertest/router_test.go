package routertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/config/loader"
	fwkdl "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/datalayer"
	fwkplugin "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/plugin"
	fwkrc "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/requestcontrol"
	fwksched "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/scheduling"
	extractormetrics "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/datalayer/extractor/metrics"
	sourcemetrics "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/datalayer/source/metrics"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/flowcontrol/fairness"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/flowcontrol/ordering"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/flowcontrol/saturationdetector/concurrency"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/flowcontrol/saturationdetector/utilization"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/flowcontrol/usagelimits"
	reqdataprodprefix "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/requesthandling/parsers/openai"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/requesthandling/parsers/passthrough"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/picker"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/profile"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/scorer/kvcacheutilization"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/scorer/prefix"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/scorer/queuedepth"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/scheduling"
	"sigs.k8s.io/yaml"
)

// The plugin types the configuration names, and those the loader adds by
// default, registered as the EPP's runner registers them.
func init() {
	for typ, f := range map[string]fwkplugin.FactoryFunc{
		prefix.PrefixCacheScorerPluginType:              prefix.PrefixCachePluginFactory,
		picker.MaxScorePickerType:                       picker.MaxScorePickerFactory,
		profile.SingleProfileHandlerType:                profile.SingleProfileHandlerFactory,
		kvcacheutilization.KvCacheUtilizationScorerType: kvcacheutilization.KvCacheUtilizationScorerFactory,
		queuedepth.QueueScorerType:                      queuedepth.QueueScorerFactory,
		reqdataprodprefix.ApproxPrefixCachePluginType:   reqdataprodprefix.ApproxPrefixCacheFactory,
		sourcemetrics.MetricsDataSourceType:             sourcemetrics.MetricsDataSourceFactory,
		extractormetrics.MetricsExtractorType:           extractormetrics.CoreMetricsExtractorFactory,
		fairness.GlobalStrictFairnessPolicyType:         fairness.GlobalStrictFairnessPolicyFactory,
		fairness.RoundRobinFairnessPolicyType:           fairness.RoundRobinFairnessPolicyFactory,
		ordering.FCFSOrderingPolicyType:                 ordering.FCFSOrderingPolicyFactory,
		usagelimits.StaticUsageLimitPolicyType:          usagelimits.StaticPolicyFactory,
		openai.OpenAIParserType:                         openai.OpenAIParserPluginFactory,
		passthrough.PassthroughParserType:               passthrough.PassthroughParserPluginFactory,
		concurrency.ConcurrencyDetectorType:             concurrency.ConcurrencyDetectorFactory,
		utilization.UtilizationDetectorType:             utilization.UtilizationDetectorFactory,
	} {
		fwkplugin.Register(typ, f)
	}
}

// replica is a live finserve process.
type replica struct {
	name string
	base string // http://127.0.0.1:PORT
	port int
	ep   *fwkdl.ModelServer
	logs *bytes.Buffer
}

// router is GIE's endpoint picker as the chart's values configure it.
type router struct {
	handle    fwkplugin.Handle
	scheduler *scheduling.Scheduler
	source    fwkdl.PollingDataSource
	extractor *extractormetrics.Extractor
	producers []fwkrc.PrepareDataPlugin
	pre       []fwkrc.PreRequest
}

func finserveBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("FINSERVE_BIN")
	if bin == "" {
		bin = filepath.Join("..", "..", "bin", "finserve")
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("no finserve binary at %s: make build first, or set FINSERVE_BIN", abs)
	}
	return abs
}

// startReplicas starts n finserve processes on a generated tiny model.
func startReplicas(t *testing.T, n, parallel int) []*replica {
	t.Helper()
	bin := finserveBin(t)
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.gguf")
	if out, err := exec.Command(bin, "model", "gen", "--preset", "tiny", "--type", "q8_0", "--out", model).CombinedOutput(); err != nil {
		t.Fatalf("model gen: %v %s", err, out)
	}
	var rs []*replica
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		r := &replica{name: fmt.Sprintf("finserve-%d", i), base: fmt.Sprintf("http://127.0.0.1:%d", port), port: port, logs: &bytes.Buffer{}}
		cmd := exec.Command(bin, "serve", "--model", model, "--model-id", "chat", "--addr", fmt.Sprintf("127.0.0.1:%d", port),
			"--parallel", strconv.Itoa(parallel), "--ctx", "4096", "--threads", "1", "--log-format", "json")
		cmd.Stderr = r.logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		r.ep = fwkdl.NewEndpoint(&fwkdl.EndpointMetadata{
			NamespacedName: types.NamespacedName{Namespace: "ai", Name: r.name}, PodName: r.name,
			Address: "127.0.0.1", Port: strconv.Itoa(port), MetricsHost: fmt.Sprintf("127.0.0.1:%d", port),
			Labels: map[string]string{"llm-d.ai/engine-type": "finserve"},
		}, nil)
		rs = append(rs, r)
	}
	for _, r := range rs {
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if resp, err := http.Get(r.base + "/ready"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never ready:\n%s", r.name, r.logs.String())
			}
		}
	}
	return rs
}

// newRouter builds GIE's endpoint picker from the chart's router values,
// with GIE's own configuration loader.
func newRouter(t *testing.T, rs []*replica) *router {
	t.Helper()
	data, err := os.ReadFile("../helm/llm-d-router-values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		InferenceExtension struct {
			PluginsConfigFile   string            `json:"pluginsConfigFile"`
			PluginsCustomConfig map[string]string `json:"pluginsCustomConfig"`
		} `json:"inferenceExtension"`
	}
	if err := yaml.Unmarshal(data, &values); err != nil {
		t.Fatal(err)
	}
	cfgText := values.InferenceExtension.PluginsCustomConfig[values.InferenceExtension.PluginsConfigFile]
	if cfgText == "" {
		t.Fatal("the router values name no plugins configuration")
	}
	names := make([]types.NamespacedName, len(rs))
	for i, r := range rs {
		names[i] = r.ep.GetMetadata().NamespacedName
	}
	handle := fwkplugin.NewEppHandle(context.Background(), func() []types.NamespacedName { return names })
	raw, _, err := loader.LoadRawConfig([]byte(cfgText), logr.Discard())
	if err != nil {
		t.Fatalf("GIE refuses the router values' configuration: %v", err)
	}
	cfg, err := loader.InstantiateAndConfigure(raw, handle, logr.Discard())
	if err != nil {
		t.Fatalf("GIE cannot build the router values' configuration: %v", err)
	}
	ro := &router{handle: handle, scheduler: scheduling.NewSchedulerWithConfig(cfg.SchedulerConfig)}
	for _, p := range handle.GetAllPlugins() {
		switch p := p.(type) {
		case *extractormetrics.Extractor:
			ro.extractor = p
		case fwkdl.PollingDataSource:
			ro.source = p
		}
		if p, ok := p.(fwkrc.PrepareDataPlugin); ok {
			ro.producers = append(ro.producers, p)
		}
		if p, ok := p.(fwkrc.PreRequest); ok {
			ro.pre = append(ro.pre, p)
		}
	}
	if ro.source == nil || ro.extractor == nil {
		t.Fatalf("the configuration has no metrics data source or extractor")
	}
	return ro
}

// scrape refreshes each replica's metrics as the EPP's data layer does.
func (ro *router) scrape(t *testing.T, rs []*replica) {
	t.Helper()
	for _, r := range rs {
		data, err := ro.source.Poll(context.Background(), r.ep)
		if err != nil {
			t.Fatalf("GIE's data source on %s: %v", r.name, err)
		}
		if err := ro.extractor.Extract(context.Background(), data, r.ep); err != nil {
			t.Fatalf("GIE's extractor on %s: %v", r.name, err)
		}
	}
}

// pick routes one chat request as the EPP's director does: producers,
// scheduler, then the pre-request hooks that record the choice.
func (ro *router) pick(t *testing.T, rs []*replica, id string, messages []map[string]string) *replica {
	t.Helper()
	ro.scrape(t, rs)
	var msgs []fwksched.Message
	for _, m := range messages {
		msgs = append(msgs, fwksched.Message{Role: m["role"], Content: fwksched.Content{Raw: m["content"]}})
	}
	req := &fwksched.LLMRequest{RequestId: id, TargetModel: "chat",
		Body: &fwksched.LLMRequestBody{ChatCompletions: &fwksched.ChatCompletionsRequest{Messages: msgs}}}
	// a snapshot per request, as the director takes it
	candidates := make([]fwksched.Endpoint, len(rs))
	for i, r := range rs {
		candidates[i] = fwksched.NewEndpoint(r.ep.GetMetadata(), r.ep.GetMetrics(), nil)
	}
	ctx := context.Background()
	for _, p := range ro.producers {
		if err := p.PrepareRequestData(ctx, req, candidates); err != nil {
			t.Fatalf("%s: %v", p.TypedName(), err)
		}
	}
	res, err := ro.scheduler.Schedule(ctx, req, candidates)
	if err != nil {
		t.Fatalf("schedule: %v", err)
	}
	for _, p := range ro.pre {
		p.PreRequest(ctx, req, res)
	}
	target := res.ProfileResults[res.PrimaryProfileName].TargetEndpoints[0]
	for _, r := range rs {
		if r.ep.GetMetadata().NamespacedName == target.GetMetadata().NamespacedName {
			return r
		}
	}
	t.Fatalf("the scheduler picked %v, not a replica", target.GetMetadata())
	return nil
}

// ownMetrics is a replica's /metrics as finserve reports it: value by
// series name (labels dropped, the unlabelled series of each family).
func ownMetrics(t *testing.T, r *replica) map[string]string {
	t.Helper()
	resp, err := http.Get(r.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if ok {
			m[name] = value
		}
	}
	return m
}

// stream starts a long streamed chat on r; cancel ends it.
func stream(t *testing.T, r *replica, maxTokens int) (cancel func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	body := fmt.Sprintf(`{"messages":[{"role":"user","content":"write"}],"max_tokens":%d,"ignore_eos":true,"stream":true}`, maxTokens)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, r.base+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}()
	t.Cleanup(cancel)
	return cancel
}

func waitMetric(t *testing.T, r *replica, name, want string) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ownMetrics(t, r)[name] == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s never reached %s (now %s)", r.name, name, want, ownMetrics(t, r)[name])
		}
	}
}

// TestGIEScrapesFinserve: under uneven load (one replica idle, one with
// both slots running, one with both running and three waiting), GIE's
// metrics data source and core metrics extractor, configured by the
// router values, read queue, running, KV use and cache configuration as
// each server reports them.
func TestGIEScrapesFinserve(t *testing.T) {
	rs := startReplicas(t, 3, 2)
	ro := newRouter(t, rs)
	for range 2 {
		stream(t, rs[1], 3000)
	}
	for range 5 {
		stream(t, rs[2], 3000)
	}
	waitMetric(t, rs[1], "finserve_num_requests_running", "2")
	waitMetric(t, rs[2], "finserve_num_requests_running", "2")
	waitMetric(t, rs[2], "finserve_num_requests_waiting", "3")
	ro.scrape(t, rs)
	for i, want := range []struct{ running, waiting int }{{0, 0}, {2, 0}, {2, 3}} {
		r := rs[i]
		m := r.ep.GetMetrics()
		if m.RunningRequestsSize != want.running || m.WaitingQueueSize != want.waiting {
			t.Errorf("%s: GIE read running %d waiting %d, want %d and %d", r.name, m.RunningRequestsSize, m.WaitingQueueSize, want.running, want.waiting)
		}
		own := ownMetrics(t, r)
		kv, _ := strconv.ParseFloat(own["finserve_kv_cache_usage_perc"], 64)
		if want.running == 0 && m.KVCacheUsagePercent != 0 || want.running > 0 && !(m.KVCacheUsagePercent > 0 && m.KVCacheUsagePercent <= kv) {
			t.Errorf("%s: GIE read KV use %v; the server says %v now", r.name, m.KVCacheUsagePercent, kv)
		}
		var blocks int
		for name := range own {
			if strings.HasPrefix(name, "finserve_cache_config_info{") {
				i := strings.Index(name, `num_gpu_blocks="`)
				fmt.Sscanf(name[i+len(`num_gpu_blocks="`):], "%d", &blocks)
			}
		}
		if m.CacheBlockSize != 16 || m.CacheNumBlocks != blocks || blocks == 0 {
			t.Errorf("%s: GIE read block size %d and %d blocks; the server says 16 and %d", r.name, m.CacheBlockSize, m.CacheNumBlocks, blocks)
		}
	}
	// The least loaded replica gets a new request.
	if got := ro.pick(t, rs, "least-loaded", []map[string]string{{"role": "user", "content": "hello"}}); got != rs[0] {
		t.Errorf("GIE picked %s under uneven load, want the idle %s", got.name, rs[0].name)
	}
}

// TestGIEPrefixRouting: a prefix-heavy workload (four long system
// prompts, each with many questions) over three idle replicas. GIE's
// scheduler sends requests that share a system prompt to the replica that
// computed it; the share of prompt tokens served from finserve's prefix
// cache (usage.prompt_tokens_details.cached_tokens) is measured against
// round-robin routing of the same requests to fresh replicas.
func TestGIEPrefixRouting(t *testing.T) {
	const prompts, questions = 4, 6
	systems := make([]string, prompts)
	for i := range systems {
		var b strings.Builder
		fmt.Fprintf(&b, "You are assistant %d of the bank's desk %d. ", i, i*7+3)
		for j := range 40 {
			fmt.Fprintf(&b, "Rule %d.%d: answer about account type %d and fee schedule %d only. ", i, j, j*i+1, j+i*13)
		}
		systems[i] = b.String()
	}
	type request struct {
		system   int
		messages []map[string]string
	}
	var workload []request
	for q := range questions {
		for p := range prompts {
			workload = append(workload, request{p, []map[string]string{{"role": "system", "content": systems[p]},
				{"role": "user", "content": fmt.Sprintf("question %d about product %d", q, q*31+p)}}})
		}
	}
	run := func(route func(i int, r request) *replica) (cached, prompt int, placed map[int]map[*replica]int) {
		placed = map[int]map[*replica]int{}
		for i, r := range workload {
			target := route(i, r)
			if placed[r.system] == nil {
				placed[r.system] = map[*replica]int{}
			}
			placed[r.system][target]++
			c, p := chat(t, target, r.messages)
			cached += c
			prompt += p
		}
		return
	}
	rr := startReplicas(t, 3, 2)
	rrCached, rrPrompt, _ := run(func(i int, _ request) *replica { return rr[i%len(rr)] })

	gie := startReplicas(t, 3, 2)
	ro := newRouter(t, gie)
	gCached, gPrompt, placed := run(func(i int, r request) *replica { return ro.pick(t, gie, fmt.Sprintf("req-%d", i), r.messages) })

	rrShare, gShare := float64(rrCached)/float64(rrPrompt), float64(gCached)/float64(gPrompt)
	t.Logf("cached share of prompt tokens: GIE routing %.3f (%d of %d), round-robin %.3f (%d of %d)", gShare, gCached, gPrompt, rrShare, rrCached, rrPrompt)
	for p, where := range placed {
		most := 0
		for _, n := range where {
			most = max(most, n)
		}
		if most < questions-1 {
			t.Errorf("system prompt %d spread over replicas %v: GIE should keep it where it is cached", p, where)
		}
	}
	if gShare <= rrShare {
		t.Errorf("GIE routing's cached share %.3f is not above round-robin's %.3f", gShare, rrShare)
	}
	if out := os.Getenv("ROUTER_REPORT"); out != "" {
		os.WriteFile(out, []byte(fmt.Sprintf("gie %.4f %d %d\nround-robin %.4f %d %d\n", gShare, gCached, gPrompt, rrShare, rrCached, rrPrompt)), 0o644)
	}
}

var chatMu sync.Mutex

// chat sends one chat request and returns its cached and prompt tokens.
func chat(t *testing.T, r *replica, messages []map[string]string) (cached, prompt int) {
	t.Helper()
	chatMu.Lock()
	defer chatMu.Unlock()
	body, _ := json.Marshal(map[string]any{"messages": messages, "max_tokens": 2})
	resp, err := http.Post(r.base+"/v1/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Usage struct {
			PromptTokens        int `json:"prompt_tokens"`
			PromptTokensDetails struct {
				CachedTokens int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("chat on %s: %d %v", r.name, resp.StatusCode, err)
	}
	return out.Usage.PromptTokensDetails.CachedTokens, out.Usage.PromptTokens
}
