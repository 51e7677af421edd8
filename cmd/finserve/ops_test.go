package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/models"
)

// child is a `finserve serve` process of the test binary (TestMain).
type child struct {
	cmd  *exec.Cmd
	base string // http://ADDR
	logs *lockedBuffer
	exit chan error
}

// spawn starts `finserve serve --addr ADDR args...` with extra
// environment variables, as uid:gid when cred is set, without waiting
// for it to be ready.
func spawn(t *testing.T, env []string, cred *syscall.Credential, args ...string) *child {
	t.Helper()
	return spawnWrapped(t, nil, env, cred, args...)
}

// spawnWrapped is spawn with the binary started by a wrapper command
// (wrap, then the binary and its arguments): cgroupWrap, podWrap.
func spawnWrapped(t *testing.T, wrap []string, env []string, cred *syscall.Credential, args ...string) *child {
	t.Helper()
	addr := freeAddr(t)
	bin := os.Args[0]
	if cred != nil || wrap != nil {
		bin = exported(t) // go test's own folder is private to root
	}
	c := &child{base: "http://" + addr, logs: &lockedBuffer{}, exit: make(chan error, 1)}
	argv := append(slices.Clone(wrap), bin, "-test.run=^$")
	c.cmd = exec.Command(argv[0], argv[1:]...)
	c.cmd.Env = append(append(os.Environ(), env...),
		"FINSERVE_TEST_ARGS="+strings.Join(append([]string{"serve", "--addr", addr, "--log-format", "json"}, args...), "\x1f"))
	c.cmd.Stderr = c.logs
	if cred != nil {
		c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.exit <- c.cmd.Wait() }()
	t.Cleanup(func() {
		c.cmd.Process.Kill()
		<-c.exit
		if t.Failed() {
			t.Logf("child log:\n%s", c.logs.String())
		}
	})
	return c
}

// cgroupWrap starts a command in the cgroup (v1 or v2) whose folder is
// dir: a shell moves itself there, then execs it, so that the Go runtime
// reads the cgroup's limits from the start.
func cgroupWrap(dir string) []string {
	return []string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, dir}
}

// runCmd runs a finserve command in this process and returns what it
// printed.
func runCmd(args ...string) (string, error) {
	var out bytes.Buffer
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

// freeAddr is a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitReady waits for GET /ready to answer 200.
func (c *child) waitReady(t *testing.T) {
	t.Helper()
	waitFor(t, 60*time.Second, func() bool { return readyAt(c.base + "/ready") },
		func() string { return "the child never became ready:\n" + c.logs.String() })
}

var exportOnce sync.Once
var exportedBin string

// exported copies the test binary where any user may run it (go test's
// own directory is private to root).
func exported(t *testing.T) string {
	exportOnce.Do(func() {
		dir, err := os.MkdirTemp("", "finserve-bin-")
		if err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, 0o755)
		exportedBin = filepath.Join(dir, "finserve.test")
		data, err := os.ReadFile(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(exportedBin, data, 0o755); err != nil {
			t.Fatal(err)
		}
	})
	return exportedBin
}

// tinyModel generates the tiny preset model into dir.
func tinyModel(t *testing.T, dir string) string {
	t.Helper()
	model := filepath.Join(dir, "tiny.gguf")
	if err := models.Generate(context.Background(), model, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	return model
}

// call sends method path with a JSON body (or none) and an optional
// bearer key; a connection error fails the test.
func call(t *testing.T, method, url, body, key string) (*http.Response, string) {
	t.Helper()
	resp, text, err := try(method, url, body, key)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp, text
}

func try(method, url, body, key string) (*http.Response, string, error) {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, r)
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b), nil
}

// notifySocket listens where a Type=notify unit's NOTIFY_SOCKET points
// and collects what the service sends.
type notifySocket struct {
	path string
	mu   sync.Mutex
	got  []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.got = append(n.got, strings.Split(string(buf[:k]), "\n")...)
			n.mu.Unlock()
		}
	}()
	return n
}

func (n *notifySocket) has(state string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, s := range n.got {
		if s == state {
			return true
		}
	}
	return false
}

// TestDrainKeepsListening: SIGTERM drains with the listener open: /ready
// answers 503 shutting_down (a load balancer can tell draining from
// dead), /health says shutting_down, the API answers 503 shutting_down
// and closes the connection, for as long as --drain-delay; systemd is
// told READY=1 once the model serves and STOPPING=1 at the signal; a
// second SIGTERM ends the drain at once and the exit is clean.
func TestDrainKeepsListening(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) { drainTest(t, sig) })
	}
}

func drainTest(t *testing.T, sig syscall.Signal) {
	dir := t.TempDir()
	model := tinyModel(t, dir)
	notify := listenNotify(t)
	c := spawn(t, []string{"NOTIFY_SOCKET=" + notify.path}, nil,
		"--model", model, "--threads", "1", "--ctx", "256", "--shutdown-grace", "5m", "--drain-delay", "5m")
	c.waitReady(t)
	waitFor(t, 5*time.Second, func() bool { return notify.has("READY=1") }, func() string { return "no READY=1 on the notify socket" })
	if notify.has("STOPPING=1") {
		t.Fatal("STOPPING=1 before the stop")
	}

	c.cmd.Process.Signal(sig)
	var status int
	var body string
	waitFor(t, 10*time.Second, func() bool {
		resp, text, err := try("GET", c.base+"/ready", "", "")
		if err != nil {
			t.Fatalf("/ready while draining: %v (the listener closed)", err)
		}
		status, body = resp.StatusCode, text
		return status == 503
	}, func() string { return "/ready never answered 503" })
	if !strings.Contains(body, `"status":"shutting_down"`) {
		t.Errorf("/ready while draining: %s", body)
	}
	if _, body := call(t, "GET", c.base+"/health", "", ""); !strings.Contains(body, `"status":"shutting_down"`) {
		t.Errorf("/health while draining: %s", body)
	}
	resp, body := call(t, "POST", c.base+"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`, "")
	if resp.StatusCode != 503 || !strings.Contains(body, `"code":"shutting_down"`) || !resp.Close {
		t.Errorf("a request while draining: %d close=%v %s", resp.StatusCode, resp.Close, body)
	}
	waitFor(t, 5*time.Second, func() bool { return notify.has("STOPPING=1") }, func() string { return "no STOPPING=1 on the notify socket" })
	// With nothing in flight, the drain delay holds the listener open.
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(c.logs.String(), "answering 503 until the drain delay ends") },
		func() string { return "the drain delay was not logged" })
	if _, _, err := try("GET", c.base+"/ready", "", ""); err != nil {
		t.Fatalf("the listener closed during the drain delay: %v", err)
	}

	c.cmd.Process.Signal(sig)
	select {
	case err := <-c.exit:
		c.exit <- err // for the cleanup
		if err != nil {
			t.Fatalf("exit after the second %v: %v", sig, err)
		}
	case <-time.After(2 * time.Minute): // a hang guard: the stop after it takes at most 6 s
		t.Fatalf("a second %v did not end the drain", sig)
	}
	if !strings.Contains(c.logs.String(), "second stop signal") {
		t.Error("the second signal was not logged")
	}
	if _, _, err := try("GET", c.base+"/ready", "", ""); err == nil {
		t.Error("still listening after exit")
	}
}

// TestReloadedKeysStayReadable: the service runs as its own user and
// reads a key file its group may read (0640); root runs `keys add` and
// `keys rotate` on it; after SIGHUP the new key works, the rotated-out
// one still works for its overlap, and the file still belongs to the
// service (before, the rewrite left it root-owned 0600: the reload
// failed and the new key got 401).
func TestReloadedKeysStayReadable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs the server as another user") // CI runs as root
	}
	const uid, gid = 4242, 4243
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	model := tinyModel(t, dir)
	os.Chmod(model, 0o644)
	keys := filepath.Join(dir, "keys.json")
	first, err := apikeys.Add(keys, "first", []string{"standard"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	os.Chown(keys, 0, gid)
	os.Chmod(keys, 0o640)

	c := spawn(t, nil, &syscall.Credential{Uid: uid, Gid: gid}, "--model", model, "--threads", "1", "--ctx", "256", "--api-keys", keys)
	waitFor(t, 60*time.Second, func() bool {
		resp, _, err := try("GET", c.base+"/ready", "", first)
		return err == nil && resp.StatusCode == 200
	}, func() string { return "never ready" })

	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		root := newRoot()
		root.SetArgs(args)
		root.SetOut(&out)
		root.SetErr(&errOut)
		if err := root.Execute(); err != nil {
			t.Fatalf("%v: %v %s", args, err, errOut.String())
		}
		return strings.TrimSpace(out.String())
	}
	second := run("keys", "add", "second", "--file", keys)
	rotated := run("keys", "rotate", "first", "--file", keys, "--overlap", "1h")
	c.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(c.logs.String(), "API keys reloaded") },
		func() string { return "the reload was not logged" })
	for name, k := range map[string]string{"added": second, "rotated in": rotated, "rotated out, in its overlap": first} {
		if resp, body := call(t, "GET", c.base+"/v1/models", "", k); resp.StatusCode != 200 {
			t.Errorf("the %s key after SIGHUP: %d %s", name, resp.StatusCode, body)
		}
	}
	fi, _ := os.Stat(keys)
	if st := fi.Sys().(*syscall.Stat_t); st.Gid != gid || fi.Mode().Perm() != 0o640 {
		t.Errorf("the key file after root's rewrites: group %d mode %v", st.Gid, fi.Mode().Perm())
	}
	run("keys", "rotate", "first", "--file", keys, "--overlap", "0")
	c.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, func() bool { return strings.Count(c.logs.String(), "API keys reloaded") == 2 },
		func() string { return "the second reload was not logged" })
	if resp, _ := call(t, "GET", c.base+"/v1/models", "", rotated); resp.StatusCode != 401 {
		t.Errorf("a value rotated out without overlap: %d", resp.StatusCode)
	}
	if resp, _ := call(t, "GET", c.base+"/v1/models", "", first); resp.StatusCode != 200 {
		t.Errorf("a value still in its overlap, after another rotation: %d", resp.StatusCode)
	}
}

// mountTmpfs mounts a tmpfs of size bytes at dir (root only) with
// options, unmounting it when the test ends.
func mountTmpfs(t *testing.T, dir string, size int, opts string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs") // CI runs as root
	}
	o := "size=" + strconv.Itoa(size)
	if opts != "" {
		o += "," + opts
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", o, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
}

// fill writes into a file in dir until the file system is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := make([]byte, 512)
	for {
		if _, err := f.Write(block); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling: %v", err)
			}
			break
		}
	}
	f.Sync()
	return path
}

// TestAuditDiskFull: a full audit disk turns AML decisions and /ready/aml
// to 503 (chat stays ready) and finserve_audit_healthy to 0; freeing the
// disk brings them back without a restart; a server killed while the
// disk is full passes `config check` and restarts (the record cut short
// was never acknowledged), and the chain verifies throughout.
func TestAuditDiskFull(t *testing.T) {
	dir := t.TempDir()
	model := tinyModel(t, dir)
	auditDir := filepath.Join(dir, "audit")
	os.Mkdir(auditDir, 0o750)
	mountTmpfs(t, auditDir, 256<<10, "")
	logPath := filepath.Join(auditDir, "audit.jsonl")
	keyPath := filepath.Join(dir, "audit.key") // apart from the log, on a disk with room
	if out, err := runCmd("audit", "keygen", keyPath); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	conf := filepath.Join(dir, "serve.yaml")
	os.WriteFile(conf, []byte("model: "+model+"\nthreads: 1\nctx: 1024\naudit-log: "+logPath+"\naudit-key-file: "+keyPath+"\n"), 0o600)
	amlCase, err := os.ReadFile("../../aml/testdata/structuring.json")
	if err != nil {
		t.Fatal(err)
	}
	decide := func(c *child) (int, string) {
		resp, body := call(t, "POST", c.base+"/v1/aml/score", string(amlCase), "")
		return resp.StatusCode, body
	}
	metric := func(c *child) string {
		_, body := call(t, "GET", c.base+"/metrics", "", "")
		m := regexp.MustCompile(`(?m)^finserve_audit_healthy (\d)$`).FindStringSubmatch(body)
		if m == nil {
			return "absent"
		}
		return m[1]
	}

	c := spawn(t, nil, nil, "--config", conf)
	c.waitReady(t)
	if code, body := decide(c); code != 200 {
		t.Fatalf("a decision with room on the disk: %d %s", code, body)
	}
	filler := fill(t, auditDir)
	if code, body := decide(c); code != 503 || !strings.Contains(body, "audit_unavailable") {
		t.Fatalf("a decision on a full disk: %d %s", code, body)
	}
	if code, _ := statusOf(t, c.base+"/ready/aml"); code != 503 {
		t.Errorf("/ready/aml on a full disk: %d", code)
	}
	if code, body := statusOf(t, c.base+"/ready"); code != 200 || !strings.Contains(body, `"audit":"unavailable"`) {
		t.Errorf("/ready on a full disk: %d %s", code, body)
	}
	if m := metric(c); m != "0" {
		t.Errorf("finserve_audit_healthy on a full disk: %s", m)
	}
	os.Remove(filler)
	waitFor(t, 20*time.Second, func() bool { code, _ := statusOf(t, c.base+"/ready/aml"); return code == 200 },
		func() string { return "/ready/aml never recovered after the disk was freed" })
	if code, body := decide(c); code != 200 || !strings.Contains(body, `"seq":2`) {
		t.Fatalf("a decision after the disk was freed: %d %s", code, body)
	}
	if m := metric(c); m != "1" {
		t.Errorf("finserve_audit_healthy after recovery: %s", m)
	}

	// Full again, and killed before the disk is freed.
	filler = fill(t, auditDir)
	if code, _ := decide(c); code != 503 {
		t.Fatalf("a decision on a full disk, again: %d", code)
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.exit
	c.exit <- nil
	os.Remove(filler)
	if out, err := runCmd("config", "check", conf); err != nil {
		t.Fatalf("config check after a kill on a full disk (serve starts on this log): %v %s", err, out)
	}
	c = spawn(t, nil, nil, "--config", conf)
	c.waitReady(t)
	if code, body := decide(c); code != 200 || !strings.Contains(body, `"seq":3`) {
		t.Fatalf("a decision after the restart: %d %s", code, body)
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	<-c.exit
	c.exit <- nil
	if out, err := runCmd("audit", "verify", logPath, "--key-file", keyPath); err != nil || !strings.Contains(out, "ok: 3 records") {
		t.Errorf("verify: %v %s", err, out)
	}
}

func statusOf(t *testing.T, url string) (int, string) {
	resp, body := call(t, "GET", url, "", "")
	return resp.StatusCode, body
}

// TestConfigCheckMatchesServe: for each configuration, `config check`
// accepts it exactly when serve starts on it: a missing or read-only
// audit directory, a world-readable TLS key, an audit log cut before or
// after an acknowledged record, a pinned prompt without the prefix cache.
func TestConfigCheckMatchesServe(t *testing.T) {
	dir := t.TempDir()
	model := tinyModel(t, dir)
	_, cert, tlsKey, _, _ := certs(t, dir)
	openKey := filepath.Join(dir, "open-key.pem")
	data, _ := os.ReadFile(tlsKey)
	os.WriteFile(openKey, data, 0o644)
	roDir := filepath.Join(dir, "ro")
	os.Mkdir(roDir, 0o755)
	mountTmpfs(t, roDir, 64<<10, "ro")

	// A log of two decisions, the checkpoint kept after each, then copies
	// cut inside the second record: once with the first checkpoint (the
	// cut record was never acknowledged), once with the second.
	good := filepath.Join(dir, "good")
	os.Mkdir(good, 0o750)
	logPath := filepath.Join(good, "audit.jsonl")
	c := spawn(t, nil, nil, "--model", model, "--threads", "1", "--ctx", "1024", "--audit-log", logPath)
	c.waitReady(t)
	amlCase, _ := os.ReadFile("../../aml/testdata/structuring.json")
	var heads [][]byte
	for range 2 {
		if resp, body := call(t, "POST", c.base+"/v1/aml/score", string(amlCase), ""); resp.StatusCode != 200 {
			t.Fatalf("decision: %d %s", resp.StatusCode, body)
		}
		h, err := os.ReadFile(logPath + ".head")
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, h)
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	<-c.exit
	c.exit <- nil
	trail, _ := os.ReadFile(logPath)
	key, _ := os.ReadFile(logPath + ".key")
	cutCopy := func(name string, head []byte) string {
		d := filepath.Join(dir, name)
		os.Mkdir(d, 0o750)
		p := filepath.Join(d, "audit.jsonl")
		os.WriteFile(p, trail[:len(trail)-10], 0o640)
		os.WriteFile(p+".key", key, 0o600)
		os.WriteFile(p+".head", head, 0o640)
		return p
	}
	unacked, acked := cutCopy("unacked", heads[0]), cutCopy("acked", heads[1])
	// A whole log with one decision's risk level edited.
	tampered := filepath.Join(dir, "tampered")
	os.Mkdir(tampered, 0o750)
	edited := bytes.Replace(trail, []byte(`"risk_level":"high"`), []byte(`"risk_level":"low"`), 1)
	if bytes.Equal(edited, trail) {
		t.Fatal("no risk level to edit in the log")
	}
	os.WriteFile(filepath.Join(tampered, "audit.jsonl"), edited, 0o640)
	os.WriteFile(filepath.Join(tampered, "audit.jsonl.key"), key, 0o600)
	os.WriteFile(filepath.Join(tampered, "audit.jsonl.head"), heads[1], 0o640)

	base := "model: " + model + "\nthreads: 1\nctx: 256\n"
	cases := []struct {
		name, yaml string
		ok         bool
	}{
		{"plain", base, true},
		{"audit dir missing", base + "audit-log: " + filepath.Join(dir, "nowhere", "audit.jsonl") + "\n", false},
		{"audit dir read-only", base + "audit-log: " + filepath.Join(roDir, "audit.jsonl") + "\n", false},
		{"tls key open to others", base + "tls-cert: " + cert + "\ntls-key: " + openKey + "\n", false},
		{"tls key 0600", base + "tls-cert: " + cert + "\ntls-key: " + tlsKey + "\n", true},
		{"cut before acknowledgement", base + "audit-log: " + unacked + "\n", true},
		{"cut after acknowledgement", base + "audit-log: " + acked + "\n", false},
		{"an edited record", base + "audit-log: " + filepath.Join(tampered, "audit.jsonl") + "\n", false},
		{"a whole log", base + "audit-log: " + logPath + "\n", true},
		{"pinned prompt without prefix cache", base + "prefix-cache: false\npin-system-prompt: [hello]\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conf := filepath.Join(t.TempDir(), "serve.yaml")
			os.WriteFile(conf, []byte(tc.yaml), 0o600)
			var out bytes.Buffer
			root := newRoot()
			root.SetArgs([]string{"config", "check", conf})
			root.SetOut(&out)
			root.SetErr(&out)
			checkErr := root.Execute()

			s := spawn(t, nil, nil, "--config", conf)
			started := false
			select {
			case <-s.exit:
				s.exit <- nil
			case <-time.After(60 * time.Second):
				t.Fatal("serve neither started nor failed")
			case <-waitCh(func() bool { return readyAt(s.base+"/ready") || readyAt(tlsBase(s.base)+"/ready") }):
				started = true
			}
			if started != tc.ok || (checkErr == nil) != tc.ok {
				t.Errorf("serve started: %v; config check: %v %s; want both %v\nserve's log:\n%s", started, checkErr, out.String(), tc.ok, s.logs.String())
			}
		})
	}
}

// tlsBase is base over HTTPS.
func tlsBase(base string) string { return strings.Replace(base, "http://", "https://", 1) }

// waitCh closes its channel once ready() holds (polled every 20 ms).
func waitCh(ready func() bool) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		for !ready() {
			time.Sleep(20 * time.Millisecond)
		}
		close(ch)
	}()
	return ch
}

// TestSystemdUnit: the shipped unit passes systemd-analyze verify and
// scores at most 2.5 in systemd-analyze security; it names no path that
// nothing creates, and waits for the model (Type=notify).
func TestSystemdUnit(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed") // on every machine of this project's kind
	}
	unit, err := os.ReadFile("../../deploy/finserve.service")
	if err != nil {
		t.Fatal(err)
	}
	text := string(unit)
	for _, want := range []string{"Type=notify", "StateDirectory=finserve", "LogsDirectory=finserve", "TimeoutStartSec=", "UMask=0027", "SystemCallFilter=@system-service"} {
		if !strings.Contains(text, want) {
			t.Errorf("the unit lacks %s", want)
		}
	}
	if strings.Contains(text, "ReadWritePaths=") {
		t.Error("ReadWritePaths names directories nothing creates: use StateDirectory/LogsDirectory")
	}
	// verify checks that ExecStart's binary exists: point it at this one.
	dir := t.TempDir()
	path := filepath.Join(dir, "finserve.service")
	os.WriteFile(path, []byte(strings.ReplaceAll(text, "/usr/local/bin/finserve", exported(t))), 0o644)
	if out, err := exec.Command("systemd-analyze", "verify", path).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	out, err := exec.Command("systemd-analyze", "security", "--offline=yes", path).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for finserve.service: (\d+\.\d+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	if score, _ := strconv.ParseFloat(string(m[1]), 64); score > 2.5 {
		t.Errorf("exposure %.1f, want at most 2.5:\n%s", score, out)
	}
}

// TestBrokenKeyFileKeepsKeys: a SIGHUP while the key file is broken (not
// JSON, or open to others) is logged and leaves the keys in force; the
// next good file is taken.
func TestBrokenKeyFileKeepsKeys(t *testing.T) {
	dir := t.TempDir()
	model := tinyModel(t, dir)
	keys := filepath.Join(dir, "keys.json")
	first, err := apikeys.Add(keys, "first", []string{"standard"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(keys)
	c := spawn(t, nil, nil, "--model", model, "--threads", "1", "--ctx", "256", "--api-keys", keys)
	waitFor(t, 60*time.Second, func() bool {
		resp, _, err := try("GET", c.base+"/ready", "", first)
		return err == nil && resp.StatusCode == 200
	}, func() string { return "never ready" })
	for i, broken := range []func(){
		func() { os.WriteFile(keys, []byte(`{"version":1,"keys":[`), 0o600) },
		func() { os.WriteFile(keys, good, 0o600); os.Chmod(keys, 0o644) },
	} {
		broken()
		c.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, 10*time.Second, func() bool { return strings.Count(c.logs.String(), "reloading API keys failed") == i+1 },
			func() string { return "the failed reload was not logged" })
		if resp, _ := call(t, "GET", c.base+"/v1/models", "", first); resp.StatusCode != 200 {
			t.Errorf("broken file %d: the key in force got %d", i, resp.StatusCode)
		}
	}
	os.Chmod(keys, 0o600)
	second, err := apikeys.Add(keys, "second", []string{"standard"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(c.logs.String(), "API keys reloaded") },
		func() string { return "the good reload was not logged" })
	if resp, _ := call(t, "GET", c.base+"/v1/models", "", second); resp.StatusCode != 200 {
		t.Errorf("the key of the mended file: %d", resp.StatusCode)
	}
}

// TestBinaryLogsMasked: the binary's own JSON log (not a test's handler)
// masks personal data in every string attribute: a card number sent as a
// request id and as an AML case id never appears in the log, which is one
// JSON object per line.
func TestBinaryLogsMasked(t *testing.T) {
	dir := t.TempDir()
	model := tinyModel(t, dir)
	c := spawn(t, nil, nil, "--model", model, "--threads", "1", "--ctx", "1024")
	c.waitReady(t)
	const card = "4111111111111111"
	req, _ := http.NewRequest("GET", c.base+"/v1/no-such-route", nil)
	req.Header.Set("X-Request-Id", card)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 || resp.Header.Get("X-Request-Id") != card {
		t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("X-Request-Id"))
	}
	amlCase, _ := os.ReadFile("../../aml/testdata/salary.json")
	var cs map[string]any
	json.Unmarshal(amlCase, &cs)
	cs["case_id"] = "CASE-" + card
	body, _ := json.Marshal(cs)
	if resp, text := call(t, "POST", c.base+"/v1/aml/score", string(body), ""); resp.StatusCode != 200 {
		t.Fatalf("aml: %d %s", resp.StatusCode, text)
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	<-c.exit
	c.exit <- nil
	logs := c.logs.String()
	if strings.Contains(logs, card) {
		t.Errorf("the card number is in the binary's log:\n%s", logs)
	}
	lines := 0
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Errorf("not a JSON line: %q", line)
			continue
		}
		lines++
	}
	for _, msg := range []string{`"msg":"request refused"`, `"msg":"aml decision"`} {
		if !strings.Contains(logs, msg) {
			t.Errorf("no %s line", msg)
		}
	}
	if lines < 5 {
		t.Errorf("%d log lines", lines)
	}
}
