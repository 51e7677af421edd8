package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestThreadsFromCPULimit: in a cgroup whose CPU quota is one CPU, on a
// machine with more, serve starts one compute thread and one Go proc and
// logs where the number came from; --threads still wins.
func TestThreadsFromCPULimit(t *testing.T) {
	cg := cpuQuotaCgroup(t, 1)
	model := tinyModel(t, t.TempDir())
	c := spawnWrapped(t, cgroupWrap(cg), nil, nil, "--model", model, "--ctx", "256", "--parallel", "1")
	c.waitReady(t)
	line := logLine(t, c, "compute threads")
	if line["threads"] != 1.0 || line["source"] != "cgroup CPU limit" {
		t.Errorf("under a 1-CPU quota: %v", line)
	}
	if procs := logLine(t, c, "Go procs"); procs["n"] != 1.0 {
		t.Errorf("Go procs under a 1-CPU quota: %v", procs)
	}

	explicit := spawnWrapped(t, cgroupWrap(cg), nil, nil, "--model", model, "--ctx", "256", "--parallel", "1", "--threads", "2")
	explicit.waitReady(t)
	if line := logLine(t, explicit, "compute threads"); line["threads"] != 2.0 || line["source"] != "--threads" {
		t.Errorf("--threads 2 under the quota: %v", line)
	}
}

// cpuQuotaCgroup makes a cgroup limited to cpus CPUs (CFS quota) and
// returns its folder. It needs a writable cpu controller (root, cgroup v1
// or v2 with cpu delegated) and more CPUs than the quota: where either
// is missing the limit cannot be shown, and the test says so.
func cpuQuotaCgroup(t *testing.T, cpus int) string {
	t.Helper()
	if n := runtime.NumCPU(); n <= cpus {
		t.Skipf("this process already has %d CPUs; a quota of %d would not show", n, cpus)
	}
	name := fmt.Sprintf("finserve-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	type layout struct{ dir, write, value string }
	for _, l := range []layout{
		{"/sys/fs/cgroup", "cpu.max", fmt.Sprintf("%d 100000", cpus*100000)},  // v2
		{"/sys/fs/cgroup/cpu", "cpu.cfs_quota_us", fmt.Sprint(cpus * 100000)}, // v1, period 100000 by default
	} {
		dir := filepath.Join(l.dir, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
			os.RemoveAll(dir) // not a cgroup file system (a tmpfs holding v1's mounts)
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, l.write), []byte(l.value), 0o644); err != nil {
			os.Remove(dir)
			continue
		}
		t.Cleanup(func() {
			// the children are gone (their cleanups ran first); an empty
			// cgroup is removed with rmdir
			for i := 0; i < 50 && os.Remove(dir) != nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		})
		return dir
	}
	t.Skip("no writable cgroup cpu controller here (not root, or cpu not delegated)")
	return ""
}

// logLine returns the first JSON log line of c whose msg is msg.
func logLine(t *testing.T, c *child, msg string) map[string]any {
	t.Helper()
	for _, l := range strings.Split(c.logs.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == msg {
			return m
		}
	}
	t.Fatalf("no log line %q in:\n%s", msg, c.logs.String())
	return nil
}

// TestCgroupCPULimit: the quota is found for cgroup v1 and v2, in a
// container whose cgroup is the root of its mount, below a parent with a
// smaller quota, and not at all where none is set or files are missing.
func TestCgroupCPULimit(t *testing.T) {
	const (
		v1Mounts = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n" +
			"33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
		// A hybrid host: v1 controllers, and a v2 mount without cpu.
		hybrid = v1Mounts + "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
		// A pod: its cgroup namespace makes its own cgroup the mount's root.
		podV2 = "1500 1400 0:26 /kubepods/burstable/pod1/c1 /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n"
		v2    = "25 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
		space = "25 1 0:26 / /sys/fs/my\\040cgroup rw - cgroup2 cgroup2 rw\n"
	)
	cases := []struct {
		name         string
		self, mounts string
		files        map[string]string
		want         float64
		wantLimit    bool
	}{
		{"v1 quota", "1:cpu,cpuacct:/job\n0::/\n", v1Mounts,
			map[string]string{"/sys/fs/cgroup/cpu/job/cpu.cfs_quota_us": "150000\n", "/sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000\n",
				"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n"}, 1.5, true},
		{"v1 none", "1:cpu:/job\n", v1Mounts,
			map[string]string{"/sys/fs/cgroup/cpu/job/cpu.cfs_quota_us": "-1", "/sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000"}, 0, false},
		{"v1 on a hybrid host, parent smaller", "1:cpu:/a/b\n0::/\n", hybrid,
			map[string]string{"/sys/fs/cgroup/cpu/a/b/cpu.cfs_quota_us": "400000", "/sys/fs/cgroup/cpu/a/b/cpu.cfs_period_us": "100000",
				"/sys/fs/cgroup/cpu/a/cpu.cfs_quota_us": "50000", "/sys/fs/cgroup/cpu/a/cpu.cfs_period_us": "100000",
				"/sys/fs/cgroup/unified/a/b/cpu.max": "100000 100000"}, 0.5, true},
		{"v2 pod", "0::/kubepods/burstable/pod1/c1\n", podV2,
			map[string]string{"/sys/fs/cgroup/cpu.max": "400000 100000\n"}, 4, true},
		{"v2 nested", "0::/system.slice/finserve.service\n", v2,
			map[string]string{"/sys/fs/cgroup/system.slice/finserve.service/cpu.max": "max 100000\n",
				"/sys/fs/cgroup/system.slice/cpu.max": "300000 100000\n", "/sys/fs/cgroup/cpu.max": "garbage"}, 3, true},
		{"v2 no limit", "0::/x\n", v2, map[string]string{"/sys/fs/cgroup/x/cpu.max": "max 100000"}, 0, false},
		{"v2 escaped mount point", "0::/x\n", space, map[string]string{"/sys/fs/my cgroup/x/cpu.max": "200000 100000"}, 2, true},
		{"no cgroup mount", "0::/x\n", "", nil, 0, false},
		{"outside the mount's root", "0::/elsewhere\n", podV2, map[string]string{"/sys/fs/cgroup/cpu.max": "100000 100000"}, 0, false},
		{"zero period", "0::/\n", v2, map[string]string{"/sys/fs/cgroup/cpu.max": "100000 0"}, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			files := map[string]string{"/proc/self/cgroup": c.self, "/proc/self/mountinfo": c.mounts}
			for k, v := range c.files {
				files[k] = v
			}
			got, ok := cgroupCPULimit(fakeFiles(files))
			if ok != c.wantLimit || got != c.want {
				t.Errorf("limit %v %v, want %v %v", got, ok, c.want, c.wantLimit)
			}
		})
	}
}

func fakeFiles(files map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		if s, ok := files[name]; ok {
			return []byte(s), nil
		}
		return nil, os.ErrNotExist
	}
}
