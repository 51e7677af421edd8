package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/finserve/finserve/apikeys"
)

// The user OpenShift's restricted-v2 policy runs a pod as: a UID from the
// namespace's range, group 0, no capabilities.
const podUID = "1000870000"

// podWrap runs a command as a restricted pod's container would: in a
// mount namespace whose root file system is read-only but for the
// writable folders, as podUID with group 0, without capabilities. It
// needs root, unshare and setpriv; without them the test cannot take the
// pod's shape, and says so.
func podWrap(t *testing.T, writable ...string) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make the mount namespace and change user")
	}
	for _, tool := range []string{"unshare", "setpriv", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (util-linux)", tool)
		}
	}
	script := ""
	for range writable {
		script += `mount --bind "$1" "$1" && shift && `
	}
	script += `mount -o remount,bind,ro / && exec setpriv --reuid ` + podUID + ` --regid 0 --clear-groups --inh-caps=-all --bounding-set=-all -- "$@"`
	return append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"}, writable...)
}

// TestRestrictedPod: as an arbitrary UID with group 0, no capabilities,
// on a read-only root with only the audit folder writable, and with the
// key file mounted as a Secret (0440, ..data links, owned by root:0),
// `config check` passes, serve starts, answers probes on the plain probe
// port without a key, scores an AML case and writes its audit log, which
// verifies. The model, made by model gen, is readable by that user.
func TestRestrictedPod(t *testing.T) {
	base := t.TempDir()
	os.Chmod(base, 0o755)
	os.Chmod(filepath.Dir(base), 0o755) // go test's per-test folder is 0700
	model := tinyModel(t, base)
	keysDir := filepath.Join(t.TempDir(), "keys")
	os.MkdirAll(keysDir, 0o755)
	k, err := apikeys.Add(filepath.Join(keysDir, "keys.json"), "aml-batch", []string{"standard"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(keysDir, "keys.json"))
	secret := newSecretMount(t, map[string][]byte{"keys.json": data})
	os.Chmod(filepath.Dir(secret.dir), 0o755)
	os.Chmod(filepath.Dir(filepath.Dir(secret.dir)), 0o755)
	audit := filepath.Join(base, "audit")
	// the image's audit folder: root:0, group-writable (chmod g=u)
	if err := os.Mkdir(audit, 0o775); err != nil {
		t.Fatal(err)
	}
	os.Chmod(audit, 0o775) // past the umask
	conf := filepath.Join(base, "serve.yaml")
	os.WriteFile(conf, []byte("model: "+model+"\napi-keys: "+secret.path("keys.json")+"\naudit-log: "+audit+"/audit.jsonl\n"), 0o644)

	bin := exported(t)
	wrap := podWrap(t, audit)
	check := exec.Command(wrap[0], append(wrap[1:], bin, "-test.run=^$")...)
	check.Env = append(os.Environ(), "FINSERVE_TEST_ARGS=config\x1fcheck\x1f"+conf)
	if out, err := check.CombinedOutput(); err != nil || !strings.Contains(string(out), "ok: "+conf) {
		t.Fatalf("config check as a restricted pod: %v\n%s", err, out)
	}

	probe := freeAddr(t)
	c := spawnWrapped(t, wrap, nil, nil, "--config", conf, "--probe-addr", probe, "--threads", "1", "--ctx", "1024", "--parallel", "1")
	waitFor(t, 60*time.Second, func() bool { return readyAt("http://" + probe + "/ready") },
		func() string { return "the probe port never said ready:\n" + c.logs.String() })
	if resp, _ := call(t, "GET", "http://"+probe+"/metrics", "", ""); resp.StatusCode != 200 {
		t.Errorf("metrics on the probe port: %d", resp.StatusCode)
	}
	body, _ := os.ReadFile("../../aml/testdata/salary.json")
	if resp, text := call(t, "POST", c.base+"/v1/aml/score", string(body), ""); resp.StatusCode != 401 {
		t.Errorf("AML without a key: %d %s", resp.StatusCode, text)
	}
	if resp, text := call(t, "POST", c.base+"/v1/aml/score", string(body), k); resp.StatusCode != 200 {
		t.Fatalf("AML as the pod: %d %s\n%s", resp.StatusCode, text, c.logs.String())
	}
	logData, err := os.ReadFile(filepath.Join(audit, "audit.jsonl"))
	if err != nil || bytes.Count(logData, []byte("\n")) != 1 {
		t.Fatalf("audit log: %v, %d lines", err, bytes.Count(logData, []byte("\n")))
	}
	if out, err := runCmd("audit", "verify", filepath.Join(audit, "audit.jsonl")); err != nil || !strings.Contains(out, "ok: 1 record") {
		t.Errorf("audit verify: %v %s", err, out)
	}
	if strings.Contains(c.logs.String(), `"level":"ERROR"`) {
		t.Errorf("errors in the pod's log:\n%s", c.logs.String())
	}
}
