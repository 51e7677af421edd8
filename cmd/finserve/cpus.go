package main

import (
	"bufio"
	"bytes"
	"errors"
	"math"
	"path"
	"slices"
	"strconv"
	"strings"
)

// The Go runtime's own default GOMAXPROCS follows the cgroup quota, but
// never below 2 (runtime/cgroup_linux.go): a pod limited to 1 CPU would
// still run 2 compute threads, each throttled half the time. The compute
// threads need the quota itself, so finserve reads it.

// cgroupCPULimit is the CPU bandwidth the process's cgroup and its
// ancestors allow, in CPUs (1.5 for a quota of 150000 µs a 100000 µs
// period), and false when none is set or the files cannot be read.
// cgroup v1's cpu controller is used when the process has one, else v2.
func cgroupCPULimit(read func(string) ([]byte, error)) (float64, bool) {
	self, err := read("/proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	mounts, err := read("/proc/self/mountinfo")
	if err != nil {
		return 0, false
	}
	v1, v2, hasV1 := cgroupPaths(self)
	var dir, mount string
	var ok bool
	if hasV1 {
		dir, mount, ok = cgroupDir(mounts, "cgroup", v1)
	} else {
		dir, mount, ok = cgroupDir(mounts, "cgroup2", v2)
	}
	if !ok {
		return 0, false
	}
	limit := math.Inf(1)
	// Up to the mount point: a parent's quota bounds its children.
	for ; ; dir = path.Dir(dir) {
		var q float64
		var set bool
		if hasV1 {
			q, set = quotaV1(read, dir)
		} else {
			q, set = quotaV2(read, dir)
		}
		if set {
			limit = min(limit, q)
		}
		if dir == mount || !strings.HasPrefix(dir, mount) {
			break
		}
	}
	if math.IsInf(limit, 1) {
		return 0, false
	}
	return limit, true
}

// cgroupPaths reads /proc/self/cgroup: the v1 cpu controller's path (and
// whether there is one) and the v2 path.
func cgroupPaths(self []byte) (v1, v2 string, hasV1 bool) {
	sc := bufio.NewScanner(bytes.NewReader(self))
	for sc.Scan() {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		controllers, p, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		if id == "0" && controllers == "" {
			v2 = p
			continue
		}
		for c := range strings.SplitSeq(controllers, ",") {
			if c == "cpu" {
				v1, hasV1 = p, true
			}
		}
	}
	return v1, v2, hasV1
}

// cgroupDir finds where the cgroup p is in the file system, from
// /proc/self/mountinfo: a mount of fstype ("cgroup" with the cpu option,
// or "cgroup2") whose root is p or above it; and that mount's point.
func cgroupDir(mounts []byte, fstype, p string) (dir, mount string, ok bool) {
	for line := range strings.Lines(string(mounts)) {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, g := strings.Fields(pre), strings.Fields(post)
		if len(f) < 5 || len(g) < 3 || g[0] != fstype {
			continue
		}
		if fstype == "cgroup" && !slices.Contains(strings.Split(g[2], ","), "cpu") {
			continue
		}
		root, point := f[3], unescapeMount(f[4])
		rel, ok := strings.CutPrefix(p, root)
		if root == "/" {
			rel, ok = p, true
		}
		if !ok || (rel != "" && !strings.HasPrefix(rel, "/")) {
			continue
		}
		return path.Join(point, rel), point, true
	}
	return "", "", false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// quotaV2 reads cpu.max: "max 100000" (none) or "QUOTA PERIOD".
func quotaV2(read func(string) ([]byte, error), dir string) (float64, bool) {
	b, err := read(path.Join(dir, "cpu.max"))
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 || f[0] == "max" {
		return 0, false
	}
	return ratio(f[0], f[1])
}

// quotaV1 reads cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us.
func quotaV1(read func(string) ([]byte, error), dir string) (float64, bool) {
	q, err1 := read(path.Join(dir, "cpu.cfs_quota_us"))
	p, err2 := read(path.Join(dir, "cpu.cfs_period_us"))
	if err := errors.Join(err1, err2); err != nil {
		return 0, false
	}
	return ratio(strings.TrimSpace(string(q)), strings.TrimSpace(string(p)))
}

func ratio(quota, period string) (float64, bool) {
	q, err1 := strconv.ParseInt(quota, 10, 64)
	p, err2 := strconv.ParseInt(period, 10, 64)
	if err1 != nil || err2 != nil || q <= 0 || p <= 0 {
		return 0, false
	}
	return float64(q) / float64(p), true
}
