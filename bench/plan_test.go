package bench_test

import (
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/finserve/finserve/bench"
)

// TestPlanReport: a plan against two targets at two concurrency levels
// writes a consistent report: every request succeeds, TTFT <= E2E, the
// per-chunk gaps are measured, ratios, chart and JSON are written, and
// the server's tier URLs are found. This is CI's short bench run.
func TestPlanReport(t *testing.T) {
	base := startServer(t)
	a, err := bench.ParseTarget("first=" + base)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bench.ParseTarget(base)
	if err != nil {
		t.Fatal(err)
	}
	done := 0
	r, err := bench.RunPlan(context.Background(), bench.Plan{Targets: []bench.Target{a, b}, Workload: "short",
		Concurrency: []int{1, 3}, PerClient: 2, Base: bench.Config{IgnoreEOS: true},
		Override: func(c *bench.Config) { c.MaxTokens = 8 }, Progress: func(d, total int) { done = d }})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Targets) != 2 || done != 2*(2+6) {
		t.Fatalf("%d targets, progress %d", len(r.Targets), done)
	}
	for _, tr := range r.Targets {
		if tr.Model != "tiny" || !tr.Tiers || len(tr.Levels) != 2 {
			t.Fatalf("target %+v", tr.Target)
		}
		for _, l := range tr.Levels {
			x := l.Result
			if x.Failed != 0 || x.Requests != 2*l.Concurrency || x.OutputTokens != 8*x.Requests || x.TTFT.P99 > x.E2E.P99 ||
				x.TTFT.P50 <= 0 || x.ITL.P50 <= 0 || x.SLOMet != x.Requests || x.TotalTPS <= x.OutputTPS || x.ClientCPU <= 0 {
				t.Fatalf("%s at %d: %+v", tr.Name, l.Concurrency, x)
			}
		}
	}
	dir := t.TempDir()
	if err := r.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	var back bench.Report
	data, err := os.ReadFile(filepath.Join(dir, "report.json"))
	if err != nil || json.Unmarshal(data, &back) != nil || back.Targets[1].Levels[1].Result.OutputTokens != r.Targets[1].Levels[1].Result.OutputTokens {
		t.Fatalf("report.json does not round-trip: %v", err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	svg, _ := os.ReadFile(filepath.Join(dir, "latency-throughput.svg"))
	if !strings.Contains(string(md), "Ratios to first") || strings.Count(string(svg), "<polyline") != 2 {
		t.Fatalf("report.md or the chart is incomplete:\n%s", md)
	}
}

// TestOpenLoopAndLimits: open-loop arrivals, a duration bound, SLOs and
// the mixed workload's tier URLs.
func TestOpenLoopAndLimits(t *testing.T) {
	base := startServer(t)
	ctx := context.Background()
	cfg := bench.Config{BaseURL: base, MaxTokens: 4, IgnoreEOS: true, Prompt: "hi"}

	open := cfg
	open.Rate, open.Burstiness, open.Requests = 40, 0.5, 6
	r, err := bench.Run(ctx, open)
	if err != nil || r.Failed != 0 || r.Requests != 6 {
		t.Fatalf("open loop: %+v, %v", r, err)
	}

	timed := cfg
	timed.Clients, timed.Duration = 2, 200*time.Millisecond
	start := time.Now()
	r, err = bench.Run(ctx, timed)
	if err != nil || r.Requests == 0 || r.Failed != 0 || time.Since(start) > 30*time.Second {
		t.Fatalf("duration-bound run: %+v, %v", r, err)
	}

	comp := cfg
	comp.API, comp.Clients, comp.Requests = "completions", 1, 2
	if r, err = bench.Run(ctx, comp); err != nil || r.Failed != 0 || r.OutputTokens != 8 || r.TTFT.P50 <= 0 {
		t.Fatalf("completions: %+v, %v", r, err)
	}

	strict := cfg
	strict.Clients, strict.Requests, strict.SLOTTFT = 1, 3, time.Nanosecond
	if r, err = bench.Run(ctx, strict); err != nil || r.SLOMet != 0 || r.Goodput != 0 {
		t.Fatalf("an SLO nobody meets: %+v, %v", r, err)
	}

	tgt, _ := bench.ParseTarget(base)
	rep, err := bench.RunPlan(ctx, bench.Plan{Targets: []bench.Target{tgt}, Workload: "mixed", Concurrency: []int{1}, PerClient: 2,
		Base: bench.Config{IgnoreEOS: true}, Override: func(c *bench.Config) {
			c.MaxTokens, c.BackgroundMaxTokens, c.Background, c.BackgroundWords = 4, 8, 2, 20
		}})
	if err != nil {
		t.Fatal(err)
	}
	x := rep.Targets[0].Levels[0].Result
	if x.Failed != 0 || x.Background == nil || x.Background.Failed != 0 {
		t.Fatalf("mixed: %+v; background %+v", x, x.Background)
	}
	if _, err := bench.RunPlan(ctx, bench.Plan{Targets: []bench.Target{tgt}, Workload: "nope", Concurrency: []int{1}}); err == nil {
		t.Fatal("unknown workload accepted")
	}
	if _, err := bench.ParseTarget("ftp://x"); err == nil {
		t.Fatal("non-HTTP target accepted")
	}
}

// TestGammaArrivals: arrival gaps have the mean the rate asks for, at
// every burstiness.
func TestGammaArrivals(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, k := range []float64{0.3, 1, 4} {
		sum := 0.0
		const n = 40000
		for range n {
			sum += bench.Gamma(rng, k)
		}
		if mean := sum / n; math.Abs(mean-k) > 0.03*k {
			t.Errorf("gamma shape %g: mean %g, want %g", k, mean, k)
		}
	}
}

// FuzzParseTarget: any --target text is refused or gives a named HTTP
// base URL without a trailing slash.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"http://127.0.0.1:8080/v1", "a=http://h/v1/", "https://x", "=http://y", "ftp://z", "n=", "http://a=b/v1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tgt, err := bench.ParseTarget(s)
		if err != nil {
			return
		}
		u, err := url.Parse(tgt.URL)
		if tgt.Name == "" || strings.HasSuffix(tgt.URL, "/") || err != nil || u.Host == "" ||
			u.Scheme != "http" && u.Scheme != "https" {
			t.Fatalf("ParseTarget(%q) = %+v", s, tgt)
		}
	})
}
