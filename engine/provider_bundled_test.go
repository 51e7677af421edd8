//go:build !llama_system

package engine

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestBundledCommit: the llama.cpp commit that version and
// finserve_build_info report is the one the ollama module in go.mod
// vendors (its Makefile.sync), so that an upgrade cannot leave it stale.
func TestBundledCommit(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/ollama/ollama").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "Makefile.sync"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^FETCH_HEAD=(\w+)$`).FindSubmatch(data)
	if m == nil || string(m[1]) != bundledCommit {
		t.Errorf("the ollama module vendors llama.cpp %s; bundledCommit says %s", m, bundledCommit)
	}
	if got := LlamaCpp(); !strings.Contains(got, bundledCommit) {
		t.Errorf("LlamaCpp() = %q", got)
	}
}
