package main

import (
	"bytes"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/models"
	"github.com/finserve/finserve/server"
)

// runRoot runs the finserve command line in process and returns its
// output (stdout and stderr together) and error.
func runRoot(args ...string) (string, error) {
	var out bytes.Buffer
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

// TestHelpText: every flag's value name in --help is its type (a usage
// string with `quotes` would make pflag print the quoted words instead);
// every command's examples parse with its own flags; keys commands say
// --file is required.
func TestHelpText(t *testing.T) {
	var visit func(c *cobra.Command)
	examples := 0
	visit = func(c *cobra.Command) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if name, _ := pflag.UnquoteUsage(f); strings.Contains(name, " ") {
				t.Errorf("%s --%s shows the value name %q in --help", c.CommandPath(), f.Name, name)
			}
		})
		for _, line := range strings.Split(c.Example, "\n") {
			line = strings.TrimSpace(line)
			for _, part := range strings.Split(line, "&&") {
				fields := strings.Fields(strings.TrimSpace(part))
				// "VAR=x finserve sub ..." and only finserve's own commands
				for len(fields) > 0 && strings.Contains(fields[0], "=") {
					fields = fields[1:]
				}
				if len(fields) == 0 || fields[0] != "finserve" {
					continue
				}
				examples++
				target, rest, err := c.Root().Find(fields[1:])
				if err != nil || target != c && !strings.HasPrefix(target.CommandPath(), c.CommandPath()) {
					t.Errorf("%s: example %q runs %v (%v)", c.CommandPath(), part, target.CommandPath(), err)
					continue
				}
				if err := target.ParseFlags(dequote(rest)); err != nil {
					t.Errorf("%s: example %q: %v", c.CommandPath(), part, err)
				}
			}
		}
		if c.Runnable() && c.Example == "" && c.Name() != "help" && c.Name() != "completion" && c.Parent() != nil {
			t.Errorf("%s has no example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			visit(sub)
		}
	}
	visit(newRoot())
	if examples < 20 {
		t.Errorf("%d examples checked", examples)
	}
	for _, args := range [][]string{{"keys", "list"}, {"keys", "revoke", "x"}, {"keys", "rotate", "x"}, {"keys", "add", "x"}} {
		if _, err := runRoot(args...); err == nil || !strings.Contains(err.Error(), "--file is required") {
			t.Errorf("%v without --file: %v", args, err)
		}
	}
	path := filepath.Join(t.TempDir(), "keys.json")
	if _, err := apikeys.Add(path, "gone", []string{"batch"}, 0); err != nil {
		t.Fatal(err)
	}
	if out, err := runRoot("keys", "revoke", "gone", "--file", path); err != nil || !strings.Contains(out, `revoked key "gone"`) {
		t.Errorf("keys revoke says %q, %v", out, err)
	}
}

// dequote joins an example's "quoted words" into one argument.
func dequote(fields []string) []string {
	var out []string
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		if strings.HasPrefix(f, `"`) && !strings.HasSuffix(f, `"`) {
			for i+1 < len(fields) && !strings.HasSuffix(f, `"`) {
				i++
				f += " " + fields[i]
			}
		}
		out = append(out, strings.Trim(f, `"`))
	}
	return out
}

// TestLlamaServerFlagHints: llama-server's flags get finserve's names.
func TestLlamaServerFlagHints(t *testing.T) {
	for flag, want := range map[string]string{
		"--port": "--addr HOST:PORT", "--host": "--addr HOST:PORT", "-m": "--model", "-ngl": "--gpu-layers", "-c": "--ctx", "--nonsense": "see finserve serve --help",
	} {
		_, err := runRoot("serve", flag, "1")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("serve %s: %v, want a hint naming %s", flag, err, want)
		}
	}
}

// TestVersionAndBuildInfo: finserve version names the version, revision
// and date the build was stamped with (make passes them), Go and the
// llama.cpp commit; without stamps it says so rather than "(devel)".
func TestVersionAndBuildInfo(t *testing.T) {
	out, err := runRoot("version")
	for _, want := range []string{"finserve devel\n", "revision: unknown\n", "go: go1.", "llama.cpp ec98e2002 (bundled from github.com/ollama/ollama v0.17.4)"} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("version without stamps lacks %q: %v\n%s", want, err, out)
		}
	}
	defer func(v, r, d string) { buildVersion, buildRevision, buildDate = v, r, d }(buildVersion, buildRevision, buildDate)
	buildVersion, buildRevision, buildDate = "v1.4.0", "0123abc", "2026-12-01T06:00:00Z"
	out, _ = runRoot("version")
	for _, want := range []string{"finserve v1.4.0\n", "revision: 0123abc\n", "built: 2026-12-01T06:00:00Z\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("stamped version lacks %q:\n%s", want, out)
		}
	}
	b, _ := build()
	if b != (server.BuildInfo{Version: "v1.4.0", Revision: "0123abc", GoVersion: b.GoVersion, LlamaCpp: b.LlamaCpp}) || !strings.HasPrefix(b.GoVersion, "go1.") {
		t.Errorf("build info %+v", b)
	}
}

// TestTracingExport: with OTEL_EXPORTER_OTLP_ENDPOINT set, the server
// exports a span per request over OTLP/HTTP that continues the client's
// W3C traceparent (same trace id, its span as parent); the request's log
// line carries the trace id.
func TestTracingExport(t *testing.T) {
	var mu sync.Mutex
	var spans []struct{ trace, parent, name string }
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req collectortrace.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			w.WriteHeader(400)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, s := range ss.Spans {
					spans = append(spans, struct{ trace, parent, name string }{hex.EncodeToString(s.TraceId), hex.EncodeToString(s.ParentSpanId), s.Name})
				}
			}
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(nil)
	}))
	defer collector.Close()

	dir := t.TempDir()
	model := tinyModel(t, dir)
	c := spawn(t, []string{"OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.URL, "OTEL_BSP_SCHEDULE_DELAY=50", "OTEL_SERVICE_NAME=finserve-test"}, nil,
		"--model", model, "--threads", "1", "--ctx", "256")
	c.waitReady(t)
	const trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	req, _ := http.NewRequest("POST", c.base+"/v1/chat/completions", strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`))
	req.Header.Set("traceparent", "00-"+trace+"-"+parent+"-01")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("chat: %v %v", resp, err)
	}
	resp.Body.Close()
	c.cmd.Process.Signal(syscall.SIGTERM) // the exporter flushes on exit
	select {
	case err := <-c.exit:
		c.exit <- err
	case <-time.After(30 * time.Second):
		t.Fatal("no exit")
	}
	mu.Lock()
	defer mu.Unlock()
	found := false
	for _, s := range spans {
		if s.trace == trace && s.parent == parent && s.name == "POST /v1/chat/completions" {
			found = true
		}
	}
	if !found {
		t.Errorf("no span continuing the client's trace among %+v", spans)
	}
	if !strings.Contains(c.logs.String(), `"trace_id":"`+trace+`"`) {
		t.Error("the request's log line lacks the trace id")
	}
}

// TestMemoryWarning: model inspect warns when serving on the CPU needs
// more than the machine has, naming --parallel and --ctx when the KV
// cache is what does not fit, a smaller quantization when the weights
// are.
func TestMemoryWarning(t *testing.T) {
	const gib = int64(1) << 30
	for _, c := range []struct {
		name  string
		m     models.Memory
		avail int64
		want  []string
	}{
		{"fits", models.Memory{Weights: 8 * gib, KVCache: 4 * gib}, 16 * gib, nil},
		{"unknown memory", models.Memory{Weights: 80 * gib}, 0, nil},
		{"kv cache", models.Memory{Weights: 4 * gib, KVCache: 20 * gib}, 16 * gib, []string{"--parallel", "--ctx", "20.00 GiB"}},
		{"weights", models.Memory{Weights: 26 * gib, KVCache: 2 * gib}, 16 * gib, []string{"smaller quantization", "finserve quant"}},
	} {
		got := memoryWarning(c.m, c.avail)
		if (got == "") != (c.want == nil) {
			t.Errorf("%s: %q", c.name, got)
		}
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", c.name, got, w)
			}
		}
	}
	if hostMemory() <= 0 {
		t.Error("no memory figure read from /proc/meminfo")
	}
}
