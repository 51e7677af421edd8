package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/finserve/finserve/models"
)

// startChild runs `finserve serve args...` as a separate process and
// waits for it to be healthy.
func startChild(t *testing.T, args ...string) (*exec.Cmd, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	args = append([]string{"serve", "--addr", addr}, args...)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FINSERVE_TEST_ARGS="+strings.Join(args, "\x1f"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	base := "http://" + addr
	waitFor(t, 60*time.Second, func() bool { return readyAt(base + "/ready") },
		func() string { return "child server never became ready; its log:\n" + stderr.String() })
	return cmd, base
}

// TestAuditSurvivesKill: decisions answered before a kill -9 are all in
// the audit log, which verifies; a restarted server continues the chain;
// `audit verify` fails on an edited byte.
func TestAuditSurvivesKill(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.gguf")
	if err := models.Generate(context.Background(), model, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "audit.jsonl")
	body, err := os.ReadFile("../../aml/testdata/structuring.json")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for round, n := range []int{3, 1} {
		cmd, base := startChild(t, "--model", model, "--threads", "1", "--ctx", "1024", "--audit-log", logPath)
		if round == 0 {
			// A second server on the same log is refused, clearly.
			second := exec.Command(os.Args[0], "-test.run=^$")
			second.Env = append(os.Environ(), "FINSERVE_TEST_ARGS="+strings.Join([]string{"serve", "--addr", "127.0.0.1:0", "--model", model, "--threads", "1", "--audit-log", logPath}, "\x1f"))
			out, err := second.CombinedOutput()
			if err == nil || !strings.Contains(string(out), "locked by another process") {
				t.Fatalf("a second server on the same audit log: %v %s", err, out)
			}
		}
		for range n {
			resp, err := http.Post(base+"/v1/aml/score", "application/json", bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var d struct {
				DecisionID string `json:"decision_id"`
				Audit      struct{ Seq int }
			}
			if resp.StatusCode != 200 || json.Unmarshal(out, &d) != nil || d.Audit.Seq != len(ids)+1 {
				t.Fatalf("round %d: %d %s", round, resp.StatusCode, out)
			}
			ids = append(ids, d.DecisionID)
		}
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()

		var out bytes.Buffer
		v := newAuditCmd()
		v.SilenceErrors, v.SilenceUsage = true, true
		v.SetArgs([]string{"verify", logPath})
		v.SetOut(&out)
		if err := v.Execute(); err != nil || !strings.Contains(out.String(), "ok: ") {
			t.Fatalf("round %d: verify after kill -9: %v %s", round, err, out.String())
		}
		trail, _ := os.ReadFile(logPath)
		for _, id := range ids {
			if !strings.Contains(string(trail), id) {
				t.Errorf("round %d: decision %s answered but not in the audit log", round, id)
			}
		}
	}
	trail, _ := os.ReadFile(logPath)
	i := bytes.Index(trail, []byte(`"risk_level":"`))
	trail[i+14] ^= 1 // one bit of one byte
	os.WriteFile(logPath, trail, 0o600)
	var out bytes.Buffer
	v := newAuditCmd()
	v.SilenceErrors, v.SilenceUsage = true, true
	v.SetArgs([]string{"verify", logPath})
	v.SetOut(&out)
	if err := v.Execute(); err == nil || !strings.Contains(out.String(), "line 1") {
		t.Errorf("verify of an edited log: %v %s", err, out.String())
	}
	trail[i+14] ^= 1
	os.WriteFile(logPath, trail, 0o600)

	// The log is keyed with the key serve made beside it: without that
	// key it does not verify; cut after the last acknowledged record it
	// fails, serve refuses it naming the repair, and repair mends it.
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		c := newAuditCmd()
		c.SilenceErrors, c.SilenceUsage = true, true
		c.SetArgs(args)
		c.SetOut(&out)
		err := c.Execute()
		return out.String(), err
	}
	other := filepath.Join(dir, "other.key")
	if out, err := run("keygen", other); err != nil || !strings.Contains(out, "wrote") {
		t.Fatalf("keygen: %v %s", err, out)
	}
	if out, err := run("verify", logPath, "--key-file", other); err == nil || !strings.Contains(err.Error(), "another key") {
		t.Errorf("verify with another key: %v %s", err, out)
	}
	os.WriteFile(logPath, trail[:len(trail)-10], 0o600)
	if out, err := run("verify", logPath); err == nil || !strings.Contains(out, "acknowledged") {
		t.Errorf("verify of a cut acknowledged record: %v %s", err, out)
	}
	refused := exec.Command(os.Args[0], "-test.run=^$")
	refused.Env = append(os.Environ(), "FINSERVE_TEST_ARGS="+strings.Join([]string{"serve", "--addr", "127.0.0.1:0", "--model", model, "--threads", "1", "--audit-log", logPath}, "\x1f"))
	if out, err := refused.CombinedOutput(); err == nil || !strings.Contains(string(out), "finserve audit repair") {
		t.Errorf("serve on a cut acknowledged record: %v %s", err, out)
	}
	if out, err := run("repair", logPath); err != nil || !strings.Contains(out, "repaired: 3 whole records") {
		t.Errorf("repair: %v %s", err, out)
	}
	if out, err := run("verify", logPath); err != nil || !strings.Contains(out, "ok: 3 records, keyed") {
		t.Errorf("verify after repair: %v %s", err, out)
	}
}

// TestHangupAndLogSettings: SIGHUP on a server without a key file (what
// systemctl reload sends) is logged and survived, not an exit 129; and
// log-format from the config file (and log-level from the environment)
// take effect: the child's log is JSON at debug level.
func TestHangupAndLogSettings(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.gguf")
	if err := models.Generate(context.Background(), model, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := filepath.Join(dir, "serve.yaml")
	os.WriteFile(conf, []byte("model: "+model+"\nctx: 256\nthreads: 1\nlog-format: json\naddr: "+addr+"\n"), 0o600)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FINSERVE_TEST_ARGS=serve\x1f--config\x1f"+conf, "FINSERVE_LOG_LEVEL=debug")
	logs := &lockedBuffer{}
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	base := "http://" + addr
	waitFor(t, 60*time.Second, func() bool { return readyAt(base + "/ready") }, func() string { return "never ready:\n" + logs.String() })
	for n := 1; n <= 2; n++ {
		cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, 10*time.Second, func() bool {
			return strings.Count(logs.String(), `"msg":"SIGHUP: nothing to reload (no --api-keys file, TLS certificate or --aml-config)"`) == n
		}, func() string { return "the hangup was not logged as JSON:\n" + logs.String() })
	}
	if !readyAt(base + "/ready") {
		t.Fatal("not serving after two SIGHUPs")
	}
	if !strings.Contains(logs.String(), `"level":"DEBUG"`) {
		t.Errorf("FINSERVE_LOG_LEVEL=debug did not take effect:\n%.2000s", logs.String())
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGHUP, SIGTERM: %v\n%s", err, logs.String())
	}
}

// lockedBuffer is a child's stderr that the test may read while it runs.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
