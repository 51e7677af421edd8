package main

import (
	"crypto/tls"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain doubles as the finserve binary for tests that need a real
// process to kill: FINSERVE_TEST_ARGS holds its arguments, separated by the unit separator \x1f.
func TestMain(m *testing.M) {
	if args := os.Getenv("FINSERVE_TEST_ARGS"); args != "" {
		os.Exit(run(strings.Split(args, "\x1f"))) // as main, signals included
	}
	os.Exit(m.Run())
}

// waitFor polls ready every 20 ms until it is true, failing the test with
// what() after limit.
func waitFor(t *testing.T, limit time.Duration, ready func() bool, what func() string) {
	t.Helper()
	for deadline := time.Now().Add(limit); !ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal(what())
		}
	}
}

// readyAt says whether GET url answers 200 (a readiness probe).
func readyAt(url string) bool {
	// A test server's certificate is its own: readiness is the question.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}
