package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/models"
)

// certs writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all signed by the CA; it returns their PEM paths and the
// client's key pair.
func certs(t *testing.T, dir string) (ca, cert, key string, client tls.Certificate, pool *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	issue := func(serial int64, server bool) ([]byte, *ecdsa.PrivateKey) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "finserve-test"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
		if server {
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		} else {
			tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca = write("ca.pem", "CERTIFICATE", caDER)
	sDER, sKey := issue(2, true)
	cert = write("server.pem", "CERTIFICATE", sDER)
	skDER, _ := x509.MarshalECPrivateKey(sKey)
	key = write("server-key.pem", "EC PRIVATE KEY", skDER)
	cDER, cKey := issue(3, false)
	client = tls.Certificate{Certificate: [][]byte{cDER}, PrivateKey: cKey}
	return
}

// TestServeTLSAndKeyReload: serve with mutual TLS and a key file: a
// client without a certificate cannot connect, plain HTTP gets nothing,
// a client with one and a key is served; a key added to the file works
// after SIGHUP, without a restart.
func TestServeTLSAndKeyReload(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "tiny.gguf")
	if err := models.Generate(context.Background(), model, models.GenOptions{Preset: models.Presets["tiny"], Type: models.TypeQ8_0, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	ca, cert, key, client, pool := certs(t, dir)
	keys := filepath.Join(dir, "keys.json")
	k1, err := apikeys.Add(keys, "first", []string{"standard"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cmd := newServeCmd()
	cmd.SetArgs([]string{"--model", model, "--addr", addr, "--threads", "1", "--ctx", "256", "--parallel", "1",
		"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", ca, "--api-keys", keys, "--shutdown-grace", "1s"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	good := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{client}}}}
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(c *http.Client, url, key string) (int, error) {
		req, _ := http.NewRequest("GET", url, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	base := "https://" + addr
	waitFor(t, 30*time.Second, func() bool { code, _ := get(good, base+"/ready", k1); return code == 200 },
		func() string { return "the TLS server never became ready" })
	if _, err := get(noCert, base+"/health", ""); err == nil {
		t.Error("a client without a certificate was served")
	}
	if code, err := get(&http.Client{Timeout: 2 * time.Second}, "http://"+addr+"/health", ""); err == nil && code == 200 {
		t.Error("plain HTTP was served")
	}
	// Only TLS 1.2+ with forward-secret AEAD suites: a client that offers
	// only CBC-SHA1 suites, or only TLS 1.1, gets no session.
	for name, cfg := range map[string]*tls.Config{
		"TLS 1.2 with CBC-SHA1 suites only": {MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, tls.TLS_RSA_WITH_AES_128_CBC_SHA}},
		"TLS 1.2 with RSA key exchange only": {MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}},
		"TLS 1.1":                            {MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11},
	} {
		cfg.RootCAs, cfg.Certificates = pool, []tls.Certificate{client}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		if _, err := get(c, base+"/health", ""); err == nil {
			t.Errorf("%s: served", name)
		}
	}
	gcm := &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}, RootCAs: pool, Certificates: []tls.Certificate{client}}
	if code, err := get(&http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: gcm}}, base+"/health", ""); err != nil || code != 200 {
		t.Errorf("TLS 1.2 with ECDHE-ECDSA-AES128-GCM: %d %v", code, err)
	}
	// A body three times the 4 MiB limit, refused over TLS with an answer
	// the client reads although the server stopped reading long before.
	big, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader(`{"prompt":"`+strings.Repeat("x", 12<<20)+`"}`))
	big.Header.Set("Authorization", "Bearer "+k1)
	if resp, err := good.Do(big); err != nil {
		t.Errorf("12 MiB body over TLS: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("12 MiB body over TLS: %d", resp.StatusCode)
		}
	}
	k2, err := apikeys.Add(keys, "second", []string{"batch"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := get(good, base+"/v1/models", k2); code != 401 {
		t.Errorf("a key added to the file works before SIGHUP: %d", code)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, 5*time.Second, func() bool { code, _ := get(good, base+"/tiers/batch/v1/models", k2); return code == 200 },
		func() string { return "the new key never worked after SIGHUP" })
	if code, _ := get(good, base+"/v1/models", k1); code != 200 {
		t.Errorf("the first key after reload: %d", code)
	}
}

// TestSecretFileModes: serve refuses a key file, TLS key or audit key
// that others may read, as config check does (apikeys.TestCheckMode has
// the modes).
func TestSecretFileModes(t *testing.T) {
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.json")
	if _, err := apikeys.Add(keys, "first", []string{"standard"}, 0); err != nil {
		t.Fatal(err)
	}
	os.Chmod(keys, 0o644)
	cmd := newServeCmd()
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	cmd.SetArgs([]string{"--model", filepath.Join(dir, "none.gguf"), "--addr", "127.0.0.1:0", "--api-keys", keys})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("serve with a 0644 key file: %v, want a refusal naming chmod 600", err)
	}
	_, _, key, _, _ := certs(t, dir)
	os.Chmod(key, 0o644)
	if _, err := tlsConfig(filepath.Join(dir, "server.pem"), key, ""); err == nil || !strings.Contains(err.Error(), "--tls-key") {
		t.Errorf("a 0644 TLS key: %v", err)
	}
	// The audit key, given or beside the log: whoever reads it can rewrite
	// the chain. serve and config check refuse it alike.
	auditKeyFile := filepath.Join(dir, "audit.key")
	if out, err := runCmd("audit", "keygen", auditKeyFile); err != nil {
		t.Fatalf("keygen: %v %s", err, out)
	}
	logPath := filepath.Join(dir, "audit.jsonl")
	os.Chmod(auditKeyFile, 0o644)
	for name, check := range map[string]func() error{
		"serve --audit-key-file": func() error {
			cmd := newServeCmd()
			cmd.SilenceErrors, cmd.SilenceUsage = true, true
			cmd.SetArgs([]string{"--model", filepath.Join(dir, "none.gguf"), "--addr", "127.0.0.1:0", "--audit-log", logPath, "--audit-key-file", auditKeyFile})
			return cmd.Execute()
		},
		"config check": func() error { return checkAuditLog(logPath, auditKeyFile) },
	} {
		if err := check(); err == nil || !strings.Contains(err.Error(), "open to others") {
			t.Errorf("%s with a 0644 audit key: %v", name, err)
		}
	}
	os.Rename(auditKeyFile, logPath+".key") // the default place
	if _, err := auditKey(logPath, "", true); err == nil || !strings.Contains(err.Error(), "open to others") {
		t.Errorf("a 0644 audit key beside the log: %v", err)
	}
	os.Chmod(logPath+".key", 0o440)
	if _, err := auditKey(logPath, "", true); err != nil {
		t.Errorf("a 0440 audit key (a Secret mount's mode): %v", err)
	}
}
