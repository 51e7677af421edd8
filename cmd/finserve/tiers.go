package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/server"
)

// tierSettings are one latency tier's settings: the engine's scheduling
// policy and the server's request limits, set together by one
// --tier-NAME flag.
type tierSettings struct {
	engine.TierPolicy
	server.TierLimits
}

// defaultTierSettings are the product's tiers (DESIGN.md): realtime chat
// with a short queue that fails fast and a 300 ms TTFT target; standard
// scoring, deterministic; batch analysis, preemptible, never timed out,
// in all slots but one.
func defaultTierSettings() [engine.NumTiers]tierSettings {
	policies := engine.DefaultTiers()
	limits := server.DefaultTierLimits()
	var s [engine.NumTiers]tierSettings
	for t := range s {
		s[t] = tierSettings{policies[t], limits[t]}
	}
	rt, std, batch := &s[engine.TierRealtime], &s[engine.TierStandard], &s[engine.TierBatch]
	rt.MaxQueued, rt.QueueTimeout, rt.TTFTTarget = 64, 5*time.Second, 300*time.Millisecond
	std.MaxQueued, std.QueueTimeout, std.TTFTTarget = 256, time.Minute, 2*time.Second
	// One slot stays free of batch work for the tiers above: a realtime
	// request then starts at the next step without preempting anything
	// (preemption, which moves a sequence's cells out, is for bursts).
	batch.MaxQueued, batch.MaxRunning = 1024, -1
	return s
}

// tierKeys document the keys of a --tier-NAME setting.
const tierKeys = "priority, max-queued, max-running, queue-timeout, preemptible, ttft-target, max-tokens, default-max-tokens, deterministic"

// apply sets the "key=value,..." pairs of spec.
func (s *tierSettings) apply(spec string) error {
	for _, kv := range strings.Split(spec, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("%q is not key=value (keys: %s)", kv, tierKeys)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		var err error
		switch k {
		case "priority":
			s.Priority, err = strconv.Atoi(v)
		case "max-queued":
			s.MaxQueued, err = atoiMin(v, 0)
		case "max-running":
			s.MaxRunning, err = strconv.Atoi(v)
		case "max-tokens":
			s.MaxTokens, err = atoiMin(v, 0)
		case "default-max-tokens":
			s.DefaultMaxTokens, err = atoiMin(v, 0)
		case "queue-timeout":
			s.QueueTimeout, err = durationMin(v)
		case "ttft-target":
			s.TTFTTarget, err = durationMin(v)
		case "preemptible":
			s.Preemptible, err = strconv.ParseBool(v)
		case "deterministic":
			s.Deterministic, err = strconv.ParseBool(v)
		default:
			return fmt.Errorf("unknown key %q (keys: %s)", k, tierKeys)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
	}
	return nil
}

func atoiMin(v string, lo int) (int, error) {
	n, err := strconv.Atoi(v)
	if err == nil && n < lo {
		err = fmt.Errorf("%d is below %d", n, lo)
	}
	return n, err
}

func durationMin(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err == nil && d < 0 {
		err = fmt.Errorf("%s is negative", v)
	}
	return d, err
}

// tiers applies the --tier-NAME settings to the defaults and splits them
// between the engine and the server.
func tiers(specs [engine.NumTiers]string) ([engine.NumTiers]engine.TierPolicy, [engine.NumTiers]server.TierLimits, error) {
	s := defaultTierSettings()
	var policies [engine.NumTiers]engine.TierPolicy
	var limits [engine.NumTiers]server.TierLimits
	for t := range s {
		if err := s[t].apply(specs[t]); err != nil {
			return policies, limits, fmt.Errorf("--tier-%s: %w", engine.Tier(t), err)
		}
		policies[t], limits[t] = s[t].TierPolicy, s[t].TierLimits
	}
	return policies, limits, nil
}
