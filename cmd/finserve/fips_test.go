package main

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"
)

// TestFIPSTLS: with GODEBUG=fips140=on (what a FIPS=v1.0.0 build turns on
// by default) serve says so at start and serves TLS with approved
// algorithms only: a client that offers only X25519, or only
// ChaCha20-Poly1305, is refused; P-256 with AES-GCM is served.
func TestFIPSTLS(t *testing.T) {
	dir := t.TempDir()
	model := tinyModel(t, dir)
	_, cert, key, _, _ := certs(t, dir)
	c := spawn(t, []string{"GODEBUG=fips140=on"}, nil, "--model", model, "--threads", "1", "--ctx", "256", "--parallel", "1",
		"--tls-cert", cert, "--tls-key", key)
	addr := strings.TrimPrefix(c.base, "http://")
	waitFor(t, 60*time.Second, func() bool { return readyAt("https://" + addr + "/ready") },
		func() string { return "never ready:\n" + c.logs.String() })
	if line := logLine(t, c, "finserve"); !strings.HasPrefix(line["fips140"].(string), "on (Go Cryptographic Module ") {
		t.Errorf("start log: fips140 %v", line["fips140"])
	}
	handshake := func(cfg *tls.Config) error {
		cfg.InsecureSkipVerify = true
		conn, err := tls.Dial("tcp", addr, cfg)
		if err == nil {
			conn.Close()
		}
		return err
	}
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		ok   bool
	}{
		{"TLS 1.3, P-256", &tls.Config{MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{tls.CurveP256}}, true},
		{"TLS 1.2, AES-GCM", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}, true},
		{"X25519 only", &tls.Config{CurvePreferences: []tls.CurveID{tls.X25519}}, false},
		{"TLS 1.2, ChaCha20 only", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}}, false},
	} {
		if err := handshake(tc.cfg); (err == nil) != tc.ok {
			t.Errorf("%s: handshake error %v, want success %t", tc.name, err, tc.ok)
		}
	}
}
