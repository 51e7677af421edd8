package main

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/finserve/finserve/engine"
)

// FuzzServeSettings: any config file and environment variable either
// fail with an error naming where the bad setting came from, or set
// serve's flags; nothing panics, and the same input gives the same flags.
func FuzzServeSettings(f *testing.F) {
	f.Add([]byte("model: /m.gguf\nparallel: 4\napi-key: [a, b]\ntier-batch: {max-running: 2}\n"), "FINSERVE_CTX", "2048")
	f.Add([]byte("pin-system-prompt:\n  - one, two\n  - three\nread-timeout: 5s\n"), "FINSERVE_API_KEY", "k1,k2")
	f.Add([]byte("tier_standard: {deterministic: false, max-tokens: 800}\nlog-format: json\n"), "FINSERVE_TIER_REALTIME", "max-queued=8")
	f.Add([]byte("modle: x\n"), "FINSERVE_PARALLEL", "many")
	f.Add([]byte("parallel: [\n"), "", "")
	f.Add([]byte("a: {b: {c: 1}}\n"), "FINSERVE_GPU_LAYERS", "all")
	path := filepath.Join(f.TempDir(), "serve.yaml")
	f.Fuzz(func(t *testing.T, yaml []byte, envKey, envVal string) {
		if err := os.WriteFile(path, yaml, 0o600); err != nil {
			t.Fatal(err)
		}
		lookup := func(k string) (string, bool) { return envVal, k == envKey }
		values := func() (string, error) {
			cmd := newServeCmd()
			var level, format string
			logFlags(cmd.Flags(), &level, &format)
			err := applySettings(cmd, path, lookup)
			var b strings.Builder
			for _, name := range []string{"model", "parallel", "ctx", "api-key", "pin-system-prompt", "tier-batch", "log-format", "gpu-layers"} {
				b.WriteString(cmd.Flags().Lookup(name).Value.String() + "\x00")
			}
			return b.String(), err
		}
		a, errA := values()
		b, errB := values()
		if a != b || (errA == nil) != (errB == nil) {
			t.Fatalf("the same settings gave %q (%v) and %q (%v)", a, errA, b, errB)
		}
		if errA != nil && !strings.Contains(errA.Error(), path) && !strings.Contains(errA.Error(), envKey) {
			t.Fatalf("the error names neither the file nor the variable: %v", errA)
		}
	})
}

// FuzzTierSpec: a --tier-NAME spec is refused naming its flag, or gives
// limits within bounds.
func FuzzTierSpec(f *testing.F) {
	for _, s := range []string{"max-queued=8, ttft-target=150ms,preemptible=false", "priority=3,max-running=-1,queue-timeout=30m",
		"max-tokens=800,default-max-tokens=100,deterministic=true", "speed=11", "queue-timeout", "max-queued=-1", "=", ",,"} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, spec string, which uint8) {
		var specs [engine.NumTiers]string
		tier := engine.Tier(int(which) % engine.NumTiers)
		specs[tier] = spec
		policies, limits, err := tiers(specs)
		if err != nil {
			if !strings.Contains(err.Error(), "--tier-"+tier.String()) {
				t.Fatalf("error %v does not name --tier-%s", err, tier)
			}
			return
		}
		p, l := policies[tier], limits[tier]
		if p.MaxQueued < 0 || p.QueueTimeout < 0 || p.TTFTTarget < 0 || l.MaxTokens < 0 || l.DefaultMaxTokens < 0 {
			t.Fatalf("accepted %q as %+v %+v", spec, p, l)
		}
	})
}

// FuzzParseBytes: a byte size parses to a non-negative count no larger
// than its bound, or is refused with the accepted forms named.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"0", "1GiB", "512MiB", "2GB", "1.5 gib", "64kb", "", "-1", "1PB", "9999999TiB", "1e9", "NaN", "0x10", ".5KiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseBytes(s)
		if err != nil {
			if !strings.Contains(err.Error(), "is not a byte size") {
				t.Fatalf("error %v", err)
			}
			return
		}
		if n < 0 || n > 1<<50 {
			t.Fatalf("%q parsed to %d", s, n)
		}
	})
}

// FuzzCgroupCPULimit: whatever /proc/self/cgroup, mountinfo and the
// quota files hold, the reader returns a positive finite limit or none,
// and never panics.
func FuzzCgroupCPULimit(f *testing.F) {
	f.Add("0::/x\n", "25 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", "150000 100000", "-1", "100000")
	f.Add("1:cpu,cpuacct:/a/b\n0::/\n", "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "max 100000", "50000", "100000")
	f.Add("0::/k/p\n", "1 1 0:26 /k /sys/fs/c\\040g ro - cgroup2 cgroup2 rw\n", "1 1", "x", "0")
	f.Fuzz(func(t *testing.T, self, mounts, cpuMax, quota, period string) {
		read := func(name string) ([]byte, error) {
			switch {
			case name == "/proc/self/cgroup":
				return []byte(self), nil
			case name == "/proc/self/mountinfo":
				return []byte(mounts), nil
			case strings.HasSuffix(name, "/cpu.max"):
				return []byte(cpuMax), nil
			case strings.HasSuffix(name, "/cpu.cfs_quota_us"):
				return []byte(quota), nil
			case strings.HasSuffix(name, "/cpu.cfs_period_us"):
				return []byte(period), nil
			}
			return nil, os.ErrNotExist
		}
		limit, ok := cgroupCPULimit(read)
		if ok && !(limit > 0 && !math.IsInf(limit, 0)) || !ok && limit != 0 {
			t.Fatalf("limit %v %v", limit, ok)
		}
	})
}
