package main

import (
	"os"
	"strings"
	"testing"
)

// TestMain doubles as the finserve binary for tests that need a real
// process to kill: FINSERVE_TEST_ARGS holds its arguments, separated by the unit separator \x1f.
func TestMain(m *testing.M) {
	if args := os.Getenv("FINSERVE_TEST_ARGS"); args != "" {
		root := newRoot()
		root.SetArgs(strings.Split(args, "\x1f"))
		if err := root.Execute(); err != nil {
			os.Stderr.WriteString("finserve: " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
