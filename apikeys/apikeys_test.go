package apikeys

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestAddMatchRevoke(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	k1, err := Add(path, "teller-app", []string{"realtime", "standard"}, 5)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := Add(path, "aml-batch", []string{"batch"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k1, Prefix) || len(k1) != len(Prefix)+43 || k1 == k2 {
		t.Fatalf("keys %q %q", k1, k2)
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), k1[len(Prefix)+4:]) {
		t.Fatal("the key file holds a key")
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v", fi.Mode().Perm())
	}
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := s.Match(k1); !ok || e.Name != "teller-app" || e.Rate != 5 || len(e.Tiers) != 2 {
		t.Errorf("match k1: %+v %v", e, ok)
	}
	for _, bad := range []string{"", k1 + "x", k1[:len(k1)-1], strings.ToUpper(k1)} {
		if _, ok := s.Match(bad); ok {
			t.Errorf("matched %q", bad)
		}
	}
	if _, err := Add(path, "teller-app", []string{"batch"}, 0); err == nil {
		t.Error("duplicate name accepted")
	}
	if _, err := Add(path, "x", []string{"premium"}, 0); err == nil {
		t.Error("unknown tier accepted")
	}
	if _, err := Add(path, "bad name!", []string{"batch"}, 0); err == nil {
		t.Error("bad name accepted")
	}
	if err := Revoke(path, "teller-app"); err != nil {
		t.Fatal(err)
	}
	s, _ = Load(path)
	if _, ok := s.Match(k1); ok {
		t.Error("a revoked key still matches")
	}
	if _, ok := s.Match(k2); !ok {
		t.Error("revoking one key lost another")
	}
}

func TestParseErrors(t *testing.T) {
	good := `{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","tiers":["batch"]}`
	for name, body := range map[string]string{
		"not json":     `{`,
		"version":      `{"version":2,"keys":[]}`,
		"short hash":   `{"version":1,"keys":[{"name":"a","sha256":"abcd","tiers":["batch"]}]}`,
		"no tiers":     `{"version":1,"keys":[{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `"}]}`,
		"negative":     `{"version":1,"keys":[{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","tiers":["batch"],"rate":-1}]}`,
		"duplicate":    `{"version":1,"keys":[` + good + `,` + good + `]}`,
		"unknown tier": `{"version":1,"keys":[{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","tiers":["gold"]}]}`,
		"empty model":  `{"version":1,"keys":[{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","tiers":["batch"],"models":["chat",""]}]}`,
		"model twice":  `{"version":1,"keys":[{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","tiers":["batch"],"models":["chat","embed","chat"]}]}`,
		"long model":   `{"version":1,"keys":[{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","tiers":["batch"],"models":["` + strings.Repeat("m", 257) + `"]}]}`,
	} {
		if _, err := Parse([]byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Parse([]byte(`{"version":1,"keys":[` + good + `]}`)); err != nil {
		t.Error(err)
	}
	// the longest model id, and several
	models := `{"version":1,"keys":[{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","tiers":["batch"],"models":["chat","` + strings.Repeat("m", 256) + `"]}]}`
	if s, err := Parse([]byte(models)); err != nil || len(s.Keys[0].Models) != 2 {
		t.Errorf("models: %v", err)
	}
}

// TestAddKeyModels: a key limited to models keeps the list through the
// file; an invalid list is refused before the file changes.
func TestAddKeyModels(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys.json")
	if _, err := AddKey(p, "indexer", Limits{Tiers: []string{"standard"}, Models: []string{"embed", "chat"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := AddKey(p, "bad", Limits{Tiers: []string{"standard"}, Models: []string{"embed", "embed"}}); err == nil {
		t.Error("a model named twice was accepted")
	}
	s, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Keys) != 1 || strings.Join(s.Keys[0].Models, ",") != "embed,chat" {
		t.Errorf("keys %+v", s.Keys)
	}
}

// TestCheckMode: secret files pass only without access for others and
// without group write; a missing file is an error.
func TestCheckMode(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys.json")
	if err := CheckMode(p); err == nil {
		t.Error("a missing file passed")
	}
	os.WriteFile(p, []byte("{}"), 0o600)
	for mode, ok := range map[os.FileMode]bool{0o600: true, 0o640: true, 0o440: true, 0o400: true, 0o644: false, 0o604: false, 0o660: false, 0o620: false, 0o601: false} {
		os.Chmod(p, mode)
		if err := CheckMode(p); (err == nil) != ok {
			t.Errorf("mode %v: %v, want ok %t", mode, err, ok)
		}
	}
	os.Chmod(p, 0o644)
	if _, err := Load(p); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("Load of a 0644 file: %v", err)
	}
}

func TestConcurrencyBounds(t *testing.T) {
	p := filepath.Join(t.TempDir(), "keys.json")
	for _, n := range []int{-1, 1<<20 + 1} {
		if _, err := AddLimited(p, "k", []string{"standard"}, 0, n); err == nil {
			t.Errorf("concurrency %d accepted", n)
		}
	}
	for _, n := range []int{0, 1, 1 << 20} {
		name := fmt.Sprintf("k%d", n)
		if _, err := AddLimited(p, name, []string{"standard"}, 0, n); err != nil {
			t.Errorf("concurrency %d: %v", n, err)
		}
	}
	set, err := Load(p)
	if err != nil || len(set.Keys) != 3 || set.Keys[1].Concurrency != 1 {
		t.Fatalf("loaded %+v, %v", set, err)
	}
}

// TestRotate: the new value matches at once, the old one until its
// overlap ends (and not after), and a rotation without overlap drops the
// old value; name, tiers and limits stay.
func TestRotate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.json")
	old, err := AddLimited(path, "teller", []string{"realtime"}, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	fresh, err := Rotate(path, "teller", time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{old, fresh} {
		if e, ok := s.Match(k); !ok || e.Name != "teller" || e.Rate != 3 || e.Concurrency != 2 || e.Tiers[0] != "realtime" {
			t.Errorf("after rotation with overlap, %q: %+v %v", k[:8], e, ok)
		}
	}
	if p := s.Keys[0].Previous; len(p) != 1 || !p[0].Expires.Equal(now.Add(time.Hour).UTC().Truncate(time.Second)) || p[0].Hint != old[:len(Prefix)+4] {
		t.Errorf("previous values %+v", p)
	}
	if h := s.Keys[0].Hint; h != fresh[:len(Prefix)+4] {
		t.Errorf("hint %q of the new value %q", h, fresh)
	}
	// Past the overlap the old value is refused even before the file
	// changes: Match judges expiry when the key is presented.
	s.Keys[0].Previous[0].Expires = time.Now().Add(-time.Second)
	if _, ok := s.Match(old); ok {
		t.Error("an expired previous value matched")
	}
	third, err := Rotate(path, "teller", 0, now.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	s, _ = Load(path)
	if _, ok := s.Match(fresh); ok {
		t.Error("a value rotated out without overlap still matches")
	}
	if _, ok := s.Match(third); !ok {
		t.Error("the newest value does not match")
	}
	if len(s.Keys[0].Previous) != 0 {
		t.Errorf("the expired previous value was kept: %+v", s.Keys[0].Previous)
	}
	for _, bad := range []struct {
		name    string
		overlap time.Duration
	}{{"nobody", time.Hour}, {"teller", -time.Hour}} {
		if _, err := Rotate(path, bad.name, bad.overlap, now); err == nil {
			t.Errorf("rotate %q %v: accepted", bad.name, bad.overlap)
		}
	}
}

// TestRewriteKeepsOwnerAndMode: a key file the service reads (another
// owner, group-readable 0640) keeps its owner, group and mode when root
// rewrites it; a new file is 0600.
func TestRewriteKeepsOwnerAndMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	k, err := Add(path, "first", []string{"batch"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := Load(path); s.Keys[0].Hint != k[:len(Prefix)+4] {
		t.Errorf("hint %q of %q", s.Keys[0].Hint, k)
	}
	if fi, _ := os.Stat(path); fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) || fi.Mode().Perm() != 0o600 {
		t.Errorf("a new key file: owner %d mode %v, want %d and 0600", fi.Sys().(*syscall.Stat_t).Uid, fi.Mode().Perm(), os.Geteuid())
	}
	uid, gid := 4242, 4343
	if os.Geteuid() != 0 {
		uid, gid = os.Geteuid(), os.Getegid() // a non-root run checks the mode only
	}
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	check := func(what string) {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o640 || int(st.Uid) != uid || int(st.Gid) != gid {
			t.Errorf("after %s: mode %v owner %d:%d, want 0640 %d:%d", what, fi.Mode().Perm(), st.Uid, st.Gid, uid, gid)
		}
	}
	if _, err := Add(path, "second", []string{"batch"}, 0); err != nil {
		t.Fatal(err)
	}
	check("add")
	if _, err := Rotate(path, "second", time.Minute, time.Now()); err != nil {
		t.Fatal(err)
	}
	check("rotate")
	if err := Revoke(path, "first"); err != nil {
		t.Fatal(err)
	}
	check("revoke")
	if os.Geteuid() == 0 {
		// Only one of owner and group another's: each alone is kept.
		for _, o := range [][2]int{{4242, os.Getegid()}, {os.Geteuid(), 4343}} {
			uid, gid = o[0], o[1]
			if err := os.Chown(path, uid, gid); err != nil {
				t.Fatal(err)
			}
			if _, err := Add(path, fmt.Sprintf("owner-%d-%d", uid, gid), []string{"batch"}, 0); err != nil {
				t.Fatal(err)
			}
			check(fmt.Sprintf("add to a file of %d:%d", uid, gid))
		}
	}
	// A mode open to others is not kept: the rewrite tightens it.
	os.Chmod(path, 0o644)
	if _, err := Add(path, "third", []string{"batch"}, 0); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("a 0644 file rewritten as %v, want 0600", fi.Mode().Perm())
	}
}
