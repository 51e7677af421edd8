package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/finserve/finserve/engine"
)

// rawPost writes an HTTP request on a fresh TCP connection and returns the
// connection, so that a test can drop it at the moment it chooses.
func rawPost(t *testing.T, ts *testServer, path, body string) (net.Conn, *bufio.Reader) {
	t.Helper()
	host := strings.TrimPrefix(strings.TrimSuffix(ts.url, "/v1"), "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "POST /v1%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		path, host, len(body), body)
	return conn, bufio.NewReader(conn)
}

// TestDisconnectCancels drops clients at three moments and watches the
// engine free their sequences: while streaming, while a non-streamed
// answer is generated, and while the prompt is still being prefilled.
// Every request asks for far more tokens than the test waits for, so only
// the disconnect can end it.
func TestDisconnectCancels(t *testing.T) {
	prompt := make([]string, 3000)
	for i := range prompt {
		prompt[i] = fmt.Sprint(100 + i%1500)
	}
	longPrompt := "[" + strings.Join(prompt, ",") + "]"
	cases := []struct {
		name, path, body string
		batch            int
		// ready reports when to drop the connection.
		ready func(t *testing.T, ts *testServer, r *bufio.Reader)
		// noTokens: the request must end before its first token.
		noTokens bool
	}{
		{
			name: "streaming", path: "/chat/completions",
			body: `{"messages":[{"role":"user","content":"stream"}],"max_tokens":3500,"ignore_eos":true,"stream":true}`,
			ready: func(t *testing.T, ts *testServer, r *bufio.Reader) {
				for n := 0; n < 3; {
					line, err := r.ReadString('\n')
					if err != nil {
						t.Fatal(err)
					}
					if strings.HasPrefix(line, "data: ") {
						n++
					}
				}
			},
		},
		{
			name: "non-streaming", path: "/chat/completions",
			body: `{"messages":[{"role":"user","content":"wait"}],"max_tokens":3500,"ignore_eos":true}`,
			ready: func(t *testing.T, ts *testServer, _ *bufio.Reader) {
				before := ts.waitStats(t, func(st engine.Stats) bool { return st.Running == 1 })
				ts.waitStats(t, func(st engine.Stats) bool { return st.Steps > before.Steps+5 })
			},
		},
		{
			name: "prefilling", path: "/completions", batch: 8,
			body: `{"prompt":` + longPrompt + `,"max_tokens":100,"ignore_eos":true,"stream":true}`,
			ready: func(t *testing.T, ts *testServer, _ *bufio.Reader) {
				ts.waitStats(t, func(st engine.Stats) bool { return st.Running == 1 })
			},
			noTokens: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Config{}, engine.Options{Context: 4096, Parallel: 2, Batch: tc.batch})
			conn, r := rawPost(t, ts, tc.path, tc.body)
			tc.ready(t, ts, r)
			before, _ := ts.eng.Stats(context.Background())
			conn.Close()
			after := ts.waitIdle(t)
			t.Logf("freed %d engine steps after the disconnect", after.Steps-before.Steps)
			if n := testutil.ToFloat64(ts.srv.metrics.disconnects); n != 1 {
				t.Errorf("%v disconnects counted, want 1", n)
			}
			if n := testutil.ToFloat64(ts.srv.metrics.success.WithLabelValues("abort")); n != 1 {
				t.Errorf("%v aborted requests counted, want 1", n)
			}
			if tokens := testutil.ToFloat64(ts.srv.metrics.generationTokens); tc.noTokens && tokens != 0 {
				t.Errorf("%v tokens generated for a client that left during prefill", tokens)
			}
			// The server serves on.
			if resp, body := ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`); resp.StatusCode != 200 {
				t.Fatalf("after the disconnect: %d %s", resp.StatusCode, body)
			}
		})
	}
}

// TestConcurrentStreams: 32 streaming SDK clients on 8 slots, every fourth
// leaving early; those that stay get exactly what they get alone.
func TestConcurrentStreams(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{Parallel: 8, Context: 512})
	client := ts.client()
	const clients = 32
	params := func(i int) openai.ChatCompletionNewParams {
		return chatParams(24, openai.UserMessage(fmt.Sprintf("client %d asks about account %d", i, i*7919)))
	}
	alone := make([]string, clients)
	for i := range clients {
		resp, err := client.Chat.Completions.New(context.Background(), params(i))
		if err != nil {
			t.Fatal(err)
		}
		alone[i] = resp.Choices[0].Message.Content
	}

	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			leave := i%4 == 3
			stream := client.Chat.Completions.NewStreaming(ctx, params(i))
			var text strings.Builder
			chunks := 0
			for stream.Next() {
				chunks++
				for _, c := range stream.Current().Choices {
					text.WriteString(c.Delta.Content)
				}
				if leave && chunks == 3 {
					cancel()
				}
			}
			err := stream.Err()
			switch {
			case leave:
				// cancelled; a stream that ended first is fine too
			case err != nil:
				errs <- fmt.Errorf("client %d: %w", i, err)
			case text.String() != alone[i]:
				errs <- fmt.Errorf("client %d: batched %q, alone %q", i, text.String(), alone[i])
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	ts.waitIdle(t)
}

// TestShutdownFinishesStreams: a stream in flight when shutdown starts
// runs to its end; new connections are refused.
func TestShutdownFinishesStreams(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{Context: 1024})
	conn, r := rawPost(t, ts, "/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":300,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}`)
	defer conn.Close()
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		// A grace no machine runs out of: 300 tokens once took more than
		// 30 s beside two race-enabled test runs, and the stream was cut.
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		done <- ts.srv.Shutdown(ctx, 5*time.Second)
	}()
	body, err := io.ReadAll(r)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	text := string(body)
	if !strings.Contains(text, "data: [DONE]") || !strings.Contains(text, `"finish_reason":"length"`) {
		t.Fatalf("stream did not finish: %q", tail(text))
	}
	if !strings.Contains(text, `"completion_tokens":300,`) {
		t.Errorf("usage does not count 300 tokens: %q", tail(text))
	}
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if _, err := http.Get(strings.TrimSuffix(ts.url, "/v1") + "/health"); err == nil {
		t.Error("the server still accepts connections after shutdown")
	}
}

// TestShutdownCancelsAfterGrace: requests still running when the grace
// period ends are cancelled and their sequences freed, and each client is
// told why: a stream ends with a shutting_down error event and [DONE] (no
// finish reason: it did not finish), a plain chat request and an AML
// decision waiting behind it answer 503 shutting_down, not 500.
func TestShutdownCancelsAfterGrace(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{Context: 4096, Parallel: 2})
	conn, r := rawPost(t, ts, "/chat/completions", `{"messages":[{"role":"user","content":"x"}],"max_tokens":4000,"ignore_eos":true,"stream":true}`)
	defer conn.Close()
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		status int
		body   string
	}
	plain, decision := make(chan answer, 1), make(chan answer, 1)
	go func() {
		resp, body := ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"y"}],"max_tokens":4000,"ignore_eos":true}`)
		plain <- answer{resp.StatusCode, body}
	}()
	// Both slots hog: the AML decision's scoring waits in the queue.
	ts.waitStats(t, func(st engine.Stats) bool { return st.Running == 2 })
	go func() {
		resp, body := ts.post(t, "/aml/score", amlCase(t, "structuring.json"))
		decision <- answer{resp.StatusCode, body}
	}()
	ts.waitStats(t, func(st engine.Stats) bool { return st.Waiting == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := ts.srv.Shutdown(ctx, 5*time.Second); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	body, _ := io.ReadAll(r)
	text := string(body)
	errAt, doneAt := strings.Index(text, `"code":"shutting_down"`), strings.Index(text, "data: [DONE]")
	if errAt < 0 || doneAt < errAt || strings.Contains(text, `"finish_reason":"length"`) {
		t.Errorf("the stream cut at the grace ends %q, want a shutting_down error event, then [DONE]", tail(text))
	}
	for name, ch := range map[string]chan answer{"chat": plain, "aml": decision} {
		a := <-ch
		if a.status != 503 || !strings.Contains(a.body, `"code":"shutting_down"`) {
			t.Errorf("%s request cut at the grace: %d %s, want 503 shutting_down", name, a.status, a.body)
		}
	}
	ts.waitIdle(t)
	if n := testutil.ToFloat64(ts.srv.metrics.success.WithLabelValues("abort")); n < 1 {
		t.Errorf("%v aborted requests, want the stream's at least", n)
	}
}

func tail(s string) string {
	if len(s) > 300 {
		return "..." + s[len(s)-300:]
	}
	return s
}

// TestKeepAliveDuringPrefill: a stream whose prompt takes many steps to
// prefill sends SSE comments meanwhile, and the stream stays valid.
func TestKeepAliveDuringPrefill(t *testing.T) {
	ts := startServer(t, Config{KeepAlive: time.Millisecond}, engine.Options{Context: 4096, Batch: 8, Parallel: 1})
	ids := make([]string, 3000)
	for i := range ids {
		ids[i] = fmt.Sprint(100 + i%1500)
	}
	resp, body := ts.post(t, "/completions", `{"prompt":[`+strings.Join(ids, ",")+`],"max_tokens":2,"ignore_eos":true,"stream":true}`)
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	first := strings.Index(body, "data: ")
	if first < 0 || !strings.Contains(body[:first], ": keep-alive\n\n") {
		t.Fatalf("no keep-alive before the first event: %q", body[:min(len(body), 200)])
	}
	if !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("stream ends %q", tail(body))
	}
}

// TestPipelinedRequests: a second request already waiting on the
// connection keeps the disconnect watcher from cancelling the first (the
// socket is readable, but the peer is there), and both are answered.
func TestPipelinedRequests(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{})
	host := strings.TrimPrefix(strings.TrimSuffix(ts.url, "/v1"), "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"messages":[{"role":"user","content":"hi"}],"max_tokens":64,"ignore_eos":true}`
	req := fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", host, len(body), body)
	if _, err := io.WriteString(conn, req+req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	for i := range 2 {
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"completion_tokens":64`) {
			t.Fatalf("response %d: %d %s", i, resp.StatusCode, b)
		}
	}
	if n := testutil.ToFloat64(ts.srv.metrics.disconnects); n != 0 {
		t.Errorf("%v disconnects counted for a client that stayed", n)
	}
}

// TestSlowClientTimesOut: a client that never finishes its request is cut
// off after the read timeout, and the server serves on.
func TestSlowClientTimesOut(t *testing.T) {
	ts := startServer(t, Config{ReadTimeout: 200 * time.Millisecond}, engine.Options{})
	host := strings.TrimPrefix(strings.TrimSuffix(ts.url, "/v1"), "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Length: 100\r\n\r\n{\"mess", host)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server kept a stalled request open")
	}
	if len(b) > 0 && !strings.Contains(string(b), "408") {
		t.Errorf("answer to a stalled request: %q", b)
	}
	// Serving on: a client slowed by a loaded machine between its dial and
	// its write is cut by the same 200 ms timeout, so a transport error
	// is tried again on a new connection; a server that stopped serving
	// fails every try.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for try := 1; ; try++ {
		resp, err := fresh.Post(ts.url+"/chat/completions", "application/json",
			strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`))
		if err != nil && try < 5 {
			continue
		}
		if err != nil {
			t.Fatalf("after the slow client: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("after the slow client: %d %s", resp.StatusCode, body)
		}
		break
	}
}

// TestServeAfterShutdown: a Serve that starts after Shutdown (a test or
// a process stopped during start-up) closes its listener and returns,
// rather than accepting for ever: seen as a test cleanup that hung for
// minutes once tests got fast enough to shut a server down before its
// Serve goroutine ran.
func TestServeAfterShutdown(t *testing.T) {
	srv, err := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Shutdown(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	for name, serve := range map[string]func(net.Listener) error{"api": srv.Serve, "probes": srv.ServeProbes} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- serve(ln) }()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		case <-time.After(2 * time.Minute): // a hang guard, not a timing assertion
			t.Fatalf("%s: Serve after Shutdown still accepts", name)
		}
		if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
			t.Errorf("%s: the listener is still open", name)
		}
	}
}
