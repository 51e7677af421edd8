package server

import (
	"bufio"
	"compress/gzip"
	"compress/zlib"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/gofiber/fiber/v2"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/audit"
	"github.com/finserve/finserve/engine"
)

// TestCompressionEncodings: gzip, brotli and deflate responses decode
// to the same JSON a client that asks for none gets.
func TestCompressionEncodings(t *testing.T) {
	ts := startServer(t, Config{Compress: true}, engine.Options{})
	body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":30,"ignore_eos":true,"logprobs":true,"top_logprobs":5}`
	fetch := func(enc string) (string, string) {
		req, _ := http.NewRequest(http.MethodPost, ts.url+"/chat/completions", strings.NewReader(body))
		req.Header.Set("Accept-Encoding", enc)
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var r io.Reader = resp.Body
		switch resp.Header.Get("Content-Encoding") {
		case "gzip":
			if r, err = gzip.NewReader(r); err != nil {
				t.Fatal(err)
			}
		case "br":
			r = brotli.NewReader(r)
		case "deflate":
			if r, err = zlib.NewReader(r); err != nil {
				t.Fatal(err)
			}
		}
		plain, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s: %v", enc, err)
		}
		return resp.Header.Get("Content-Encoding"), string(plain)
	}
	_, identity := fetch("identity")
	var want ChatResponse
	if err := json.Unmarshal([]byte(identity), &want); err != nil {
		t.Fatal(err)
	}
	for _, enc := range []string{"gzip", "br", "deflate"} {
		got, plain := fetch(enc)
		var resp ChatResponse
		if got != enc || json.Unmarshal([]byte(plain), &resp) != nil {
			t.Errorf("Accept-Encoding %s: Content-Encoding %q, body %.200q", enc, got, plain)
			continue
		}
		// Greedy decoding: the same answer, whatever the encoding.
		if resp.Choices[0].Message.Content == nil || *resp.Choices[0].Message.Content != *want.Choices[0].Message.Content {
			t.Errorf("%s: a different answer", enc)
		}
	}
}

// TestTimingsReported: the timings field (llama-server's names) in a
// response body and in a stream's usage chunk counts the request's own
// tokens, and its times are ordered.
func TestTimingsReported(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	check := func(what string, tm *Timings, u *Usage) {
		t.Helper()
		switch {
		case tm == nil || u == nil:
			t.Fatalf("%s: timings %v usage %v", what, tm, u)
		case tm.PromptN != u.PromptTokens || tm.DecodeN != u.CompletionTokens || tm.DecodeN != 7:
			t.Errorf("%s: timings count %d and %d tokens, usage %d and %d", what, tm.PromptN, tm.DecodeN, u.PromptTokens, u.CompletionTokens)
		case tm.TTFTMS <= 0 || tm.TotalMS < tm.TTFTMS || tm.DecodeMS <= 0 || tm.PromptMS <= 0 || tm.DecodeTPS <= 0 || tm.QueueMS < 0:
			t.Errorf("%s: times %+v", what, tm)
		}
	}
	req := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":7,"ignore_eos":true`
	resp, body := ts.post(t, "/chat/completions", req+`}`)
	var out ChatResponse
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &out) != nil {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	check("body", out.Timings, out.Usage)
	if !strings.Contains(body, `"timings":{"queue_ms":`) || !strings.Contains(body, `"predicted_per_second":`) {
		t.Errorf("timings not under llama-server's names: %s", body)
	}

	resp, body = ts.post(t, "/chat/completions", req+`,"stream":true,"stream_options":{"include_usage":true}}`)
	var last ChatResponse
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok && data != "[DONE]" {
			last = ChatResponse{}
			if err := json.Unmarshal([]byte(data), &last); err != nil {
				t.Fatal(err)
			}
		}
	}
	check("the stream's last chunk", last.Timings, last.Usage)
}

// TestConnectionTimeouts: an idle keep-alive connection is closed after
// --idle-timeout; a stream that cannot be written within --write-timeout
// is cut. Each wait is several times the timeout, and only its effect
// is asserted.
func TestConnectionTimeouts(t *testing.T) {
	ts := startServer(t, Config{IdleTimeout: 200 * time.Millisecond, WriteTimeout: 300 * time.Millisecond,
		Limits: Limits{MaxTokens: 16000}}, engine.Options{Parallel: 1, Context: 16384})
	addr := strings.TrimPrefix(strings.TrimSuffix(ts.url, "/v1"), "http://")
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("health: %v", err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("an idle keep-alive connection: %v, want EOF (closed by the server)", err)
	}

	// A stream of 16,000 tokens cannot be written in 300 ms: the
	// connection is cut before its end.
	start := time.Now()
	resp, err := http.Post(ts.url+"/chat/completions", "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"go"}],"max_tokens":16000,"ignore_eos":true,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || err == nil || strings.Contains(string(body), "data: [DONE]") {
		t.Errorf("a stream past the write timeout: %d, read error %v, ends %q", resp.StatusCode, err, tail(string(body)))
	}
	if took := time.Since(start); took > 60*time.Second {
		t.Errorf("the cut stream took %v", took)
	}
	ts.waitIdle(t) // the engine stops generating for the cut client
}

// TestDefaultTier: with DefaultTier batch, a /v1 request without a
// tier runs (and is counted) in the batch tier.
func TestDefaultTier(t *testing.T) {
	ts := startServer(t, Config{DefaultTier: "batch"}, engine.Options{})
	resp, body := ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2,"ignore_eos":true}`)
	if resp.StatusCode != 200 || resp.Header.Get(TierHeader) != "batch" {
		t.Fatalf("%d tier %q %s", resp.StatusCode, resp.Header.Get(TierHeader), body)
	}
	_, m := ts.get(t, "/metrics")
	if !strings.Contains(m, `finserve_time_to_first_token_seconds_count{tier="batch"} 1`) || strings.Contains(m, `finserve_time_to_first_token_seconds_count{tier="standard"}`) {
		t.Errorf("the request was not counted in the batch tier")
	}
	if _, err := New(Config{DefaultTier: "gold"}); err == nil || !strings.Contains(err.Error(), "default tier") {
		t.Errorf("an unknown default tier: %v", err)
	}
}

// TestAMLCaseLimit: a request may carry at most aml.MaxCases cases: one
// more is refused naming the limit; exactly that many passes the count
// (the one invalid case among them is what is refused).
func TestAMLCaseLimit(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	one := strings.TrimSpace(amlCase(t, "salary.json"))
	list := func(n int, last string) string {
		cases := make([]string, n)
		for i := range cases {
			cases[i] = one
		}
		cases[n-1] = last
		return `{"cases":[` + strings.Join(cases, ",") + `]}`
	}
	resp, body := ts.post(t, "/aml/score", list(aml.MaxCases+1, one))
	checkError(t, resp, body, 400, "cases", "")
	if !strings.Contains(body, fmt.Sprintf("at most %d cases", aml.MaxCases)) {
		t.Errorf("the refusal does not name the limit: %s", body)
	}
	bad := strings.Replace(one, `"jurisdiction": "CN"`, `"jurisdiction": "XX"`, 1)
	if bad == one {
		t.Fatal("the salary case has no jurisdiction to spoil")
	}
	resp, body = ts.post(t, "/aml/score", list(aml.MaxCases, bad))
	checkError(t, resp, body, 400, fmt.Sprintf("cases[%d].jurisdiction", aml.MaxCases-1), "")
}

// TestAuditNoSync: records written without fsync are whole and chained.
func TestAuditNoSync(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	lg, err := audit.Open(path, audit.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Config{Audit: lg}, engine.Options{})
	for range 2 {
		if resp, body := ts.post(t, "/aml/score", amlCase(t, "salary.json")); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	lg.Close()
	if sum, err := audit.VerifyFile(path, nil); err != nil || sum.Records != 2 {
		t.Errorf("verify: %+v %v", sum, err)
	}
}

// TestPanicRecovered: a handler that panics answers 500 internal_error
// as an error object, logs the panic with its stack, and the server keeps
// serving; work a handler runs in its own goroutine (AML cases, stream
// writers) goes through the same guard.
func TestPanicRecovered(t *testing.T) {
	logs := &syncBuffer{}
	s, err := New(Config{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	s.app.Get("/boom", func(*fiber.Ctx) error { panic("decimal division by 0") })
	for range 2 {
		resp, err := s.app.Test(httptest.NewRequest(http.MethodGet, "/boom", nil), -1)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 500 || !strings.Contains(string(body), `"code":"internal_error"`) {
			t.Fatalf("a panicking handler: %d %s", resp.StatusCode, body)
		}
	}
	resp, err := s.app.Test(httptest.NewRequest(http.MethodGet, "/health", nil), -1)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("after the panics: %v %v", resp, err)
	}
	if l := logLines(logs, "panic: the request failed and the server keeps serving"); len(l) != 2 ||
		l[0]["panic"] != "decimal division by 0" || !strings.Contains(l[0]["stack"].(string), "claims_test.go") {
		t.Errorf("panic log lines: %v", l)
	}
	done := make(chan error)
	go func() { done <- s.safely("a goroutine", func() error { var m map[string]int; m["x"] = 1; return nil }) }()
	if err := <-done; err != errPanic {
		t.Errorf("a panic in a guarded goroutine: %v", err)
	}
	if err := s.safely("no panic", func() error { return errDraining }); err != errDraining {
		t.Errorf("an ordinary error through the guard: %v", err)
	}
}
