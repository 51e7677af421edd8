package server

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/finserve/finserve/engine"
)

// BenchmarkStream256 measures the server's overhead: one client streaming
// 256 greedy tokens through HTTP and SSE, against the same generation on
// the engine API alone, on one engine, the two alternating. FINSERVE_BENCH_MODEL names a model
// file to use instead of the tiny test model (for example the bench
// preset); FINSERVE_BENCH_THREADS the threads (default 2).
//
//	go test ./server -run '^$' -bench Stream256 -count 5
func BenchmarkStream256(b *testing.B) {
	m := tiny
	if path := os.Getenv("FINSERVE_BENCH_MODEL"); path != "" {
		var err error
		if m, err = engine.LoadModel(context.Background(), path, engine.ModelOptions{}); err != nil {
			b.Fatal(err)
		}
		defer m.Close()
	}
	threads := 2
	if s := os.Getenv("FINSERVE_BENCH_THREADS"); s != "" {
		if _, err := fmt.Sscan(s, &threads); err != nil {
			b.Fatal(err)
		}
	}
	ts := startLoading(b, Config{})
	e, err := engine.New(m, engine.Options{Parallel: 1, Context: 512, Threads: threads})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	ts.eng = e
	ts.srv.SetEngine(e, "bench")

	msgs := []engine.Message{{Role: "user", Content: "Summarise the overdraft policy."}}
	prompt, apiErr := ts.srv.chatPrompt(ts.srv.backend.Load(), msgs)
	if apiErr != nil {
		b.Fatal(apiErr)
	}
	viaEngine := func() {
		st, err := e.Generate(context.Background(), engine.Request{Prompt: prompt, MaxTokens: 256, IgnoreEOS: true})
		if err != nil {
			b.Fatal(err)
		}
		if _, ev, err := st.Collect(); err != nil || ev.Usage.CompletionTokens != 256 {
			b.Fatalf("%v, %d tokens", err, ev.Usage.CompletionTokens)
		}
	}
	body := `{"messages":[{"role":"user","content":"Summarise the overdraft policy."}],"max_tokens":256,"temperature":0,"ignore_eos":true,"stream":true}`
	client := &http.Client{}
	viaHTTP := func() {
		resp, err := client.Post(ts.url+"/chat/completions", "application/json", strings.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() == "data: [DONE]" {
				return
			}
		}
		b.Fatal("stream ended without [DONE]")
	}
	// The two paths alternate within one loop so that the machine's drift
	// hits both alike; the overhead is the ratio of their sums.
	var tEngine, tHTTP time.Duration
	for b.Loop() {
		t0 := time.Now()
		viaEngine()
		t1 := time.Now()
		viaHTTP()
		tEngine += t1.Sub(t0)
		tHTTP += time.Since(t1)
	}
	n := float64(b.N)
	b.ReportMetric(float64(tEngine.Milliseconds())/n, "engine-ms/op")
	b.ReportMetric(float64(tHTTP.Milliseconds())/n, "http-ms/op")
	b.ReportMetric(100*(tHTTP.Seconds()/tEngine.Seconds()-1), "overhead-%")
}
