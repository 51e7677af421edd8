package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/finserve/finserve/aml"
)

// secretMount lays files out as the kubelet mounts a Secret or ConfigMap:
// each name a link to ..data/NAME, ..data a link to a timestamped folder,
// the files 0440. update swaps ..data to a new folder, as an update does.
type secretMount struct {
	dir string
	n   int
}

func newSecretMount(t *testing.T, files map[string][]byte) *secretMount {
	t.Helper()
	m := &secretMount{dir: filepath.Join(t.TempDir(), "secret")}
	if err := os.Mkdir(m.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	m.update(t, files)
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(m.dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func (m *secretMount) path(name string) string { return filepath.Join(m.dir, name) }

func (m *secretMount) update(t *testing.T, files map[string][]byte) {
	t.Helper()
	m.n++
	ts := filepath.Join(m.dir, "..2026_12_01_09_00_0"+string(rune('0'+m.n)))
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(ts, name), data, 0o440); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(m.dir, "..data_tmp")
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(m.dir, "..data")); err != nil { // atomic, as the kubelet's
		t.Fatal(err)
	}
}

// TestReloadsOnSecretUpdate: with --reload-interval, serve picks up a
// rotated TLS certificate and a changed AML configuration from
// Secret-style mounts without a restart; a broken update is logged and
// leaves the ones in force; SIGHUP reloads at once.
func TestReloadsOnSecretUpdate(t *testing.T) {
	dir := t.TempDir()
	model := tinyModel(t, dir)
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	_, cert1, key1, _, _ := certs(t, t.TempDir())
	_, cert2, key2, _, _ := certs(t, t.TempDir())
	tlsFiles := func(cert, key string) map[string][]byte {
		return map[string][]byte{"tls.crt": read(cert), "tls.key": read(key)}
	}
	secret := newSecretMount(t, tlsFiles(cert1, key1))
	v2 := bytes.Replace(aml.DefaultYAML(), []byte(`version: "finserve-aml-2026.12"`), []byte(`version: "bank-aml-2026.12-b"`), 1)
	if bytes.Equal(v2, aml.DefaultYAML()) {
		t.Fatal("the default AML config's version line moved; update the test")
	}
	cm := newSecretMount(t, map[string][]byte{"aml.yaml": aml.DefaultYAML()})

	c := spawn(t, nil, nil, "--model", model, "--threads", "1", "--ctx", "1024", "--parallel", "1",
		"--tls-cert", secret.path("tls.crt"), "--tls-key", secret.path("tls.key"), "--aml-config", cm.path("aml.yaml"),
		"--reload-interval", "100ms")
	addr, logs := strings.TrimPrefix(c.base, "http://"), c.logs
	// Which certificate the server presents, by a fresh handshake.
	presented := func() []byte {
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return nil
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Raw
	}
	der := func(certFile string) []byte {
		b, _ := pem.Decode(read(certFile))
		return b.Bytes
	}
	waitFor(t, 60*time.Second, func() bool { return bytes.Equal(presented(), der(cert1)) }, func() string { return "never served cert1:\n" + logs.String() })
	insecure := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	waitFor(t, 60*time.Second, func() bool { return readyAt("https://" + addr + "/ready") }, func() string { return "never ready" })
	configVersion := func() string {
		body, err := os.ReadFile("../../aml/testdata/salary.json")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := insecure.Post("https://"+addr+"/v1/aml/score", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Versions struct{ Config string } `json:"versions"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != 200 {
			t.Fatalf("aml score: %d %v", resp.StatusCode, err)
		}
		return out.Versions.Config
	}
	if v := configVersion(); v != "finserve-aml-2026.12" {
		t.Fatalf("config version before the update: %q", v)
	}

	// A rotation (cert-manager renews into the Secret): picked up by the poll.
	secret.update(t, tlsFiles(cert2, key2))
	waitFor(t, 30*time.Second, func() bool { return bytes.Equal(presented(), der(cert2)) },
		func() string { return "the rotated certificate was never served:\n" + logs.String() })
	if !strings.Contains(logs.String(), `"msg":"file changed: TLS certificate reloaded"`) {
		t.Errorf("the rotation was not logged:\n%s", logs.String())
	}
	// A broken update (a key that does not match): logged, cert2 stays.
	secret.update(t, map[string][]byte{"tls.crt": read(cert1), "tls.key": read(key2)})
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(logs.String(), "reloading the TLS certificate failed") },
		func() string { return "the failed reload was not logged:\n" + logs.String() })
	if !bytes.Equal(presented(), der(cert2)) {
		t.Error("a broken certificate update replaced the one in force")
	}

	// The AML configuration: a new version, then a broken file.
	cm.update(t, map[string][]byte{"aml.yaml": v2})
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(logs.String(), "AML configuration reloaded") },
		func() string { return "the AML reload was not logged:\n" + logs.String() })
	if v := configVersion(); v != "bank-aml-2026.12-b" {
		t.Errorf("config version after the update: %q", v)
	}
	cm.update(t, map[string][]byte{"aml.yaml": []byte("rules: [")})
	waitFor(t, 30*time.Second, func() bool { return strings.Contains(logs.String(), "reloading the AML configuration failed") },
		func() string { return "the failed AML reload was not logged:\n" + logs.String() })
	if v := configVersion(); v != "bank-aml-2026.12-b" {
		t.Errorf("config version after a broken update: %q", v)
	}
}
