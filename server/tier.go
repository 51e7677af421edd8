package server

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/gofiber/fiber/v2"

	"github.com/finserve/finserve/engine"
)

// Latency tiers in the API. Every tier is a whole OpenAI base URL,
// /tiers/{tier}/v1, so that an SDK pointed at it just works; plain /v1
// serves the API key's tier, or Config.DefaultTier. The X-Finserve-Tier
// header may lower a request's tier, never raise it, and a key declared
// with a tier ("standard:KEY" in Config.APIKeys) may use that tier and
// those below it only. The engine schedules by tier (engine/tier.go); the
// server applies each tier's request limits (TierLimits) and answers with
// the tier it used in X-Finserve-Tier.

// TierHeader names the request header that lowers a request's tier, and
// the response header that says which tier served it.
const TierHeader = "X-Finserve-Tier"

// TierLimits are the request limits of one tier. Zero fields take the
// server-wide Limits.
type TierLimits struct {
	// MaxTokens caps max_tokens (at most Limits.MaxTokens).
	MaxTokens int
	// DefaultMaxTokens applies when a chat request sends no max_tokens
	// (default MaxTokens).
	DefaultMaxTokens int
	// Deterministic makes temperature default to 0 (greedy decoding)
	// instead of OpenAI's 1: scoring must give the same answer twice.
	Deterministic bool
}

// DefaultTierLimits are the limits when Config.Tiers is left zero:
// realtime answers are short, standard ones deterministic.
func DefaultTierLimits() [engine.NumTiers]TierLimits {
	return [engine.NumTiers]TierLimits{
		engine.TierRealtime: {MaxTokens: 512, DefaultMaxTokens: 256},
		engine.TierStandard: {Deterministic: true},
		engine.TierBatch:    {},
	}
}

// limits is what a request of one tier may ask for.
type limits struct {
	maxTokens, defaultMaxTokens int
	deterministic               bool
}

func (s *Server) limitsOf(t engine.Tier) limits {
	tl := s.cfg.Tiers[t]
	l := limits{maxTokens: s.limits.MaxTokens, deterministic: tl.Deterministic}
	if tl.MaxTokens > 0 {
		l.maxTokens = min(l.maxTokens, tl.MaxTokens)
	}
	l.defaultMaxTokens = l.maxTokens
	if tl.DefaultMaxTokens > 0 {
		l.defaultMaxTokens = min(l.maxTokens, tl.DefaultMaxTokens)
	}
	return l
}

type tierLocal struct{}

// priority is tier t's scheduling priority in the engine.
func (s *Server) priority(t engine.Tier) int {
	if b := s.defaultBackend(); b != nil {
		return b.eng.Options().Tiers[t].Priority
	}
	return engine.DefaultTiers()[t].Priority
}

// resolveTier decides a request's tier from its route, its key and the
// tier header, refusing tiers the key may not use.
func (s *Server) resolveTier(c *fiber.Ctx) error {
	tier := s.defaultTier
	key, _ := c.Locals(keyLocal{}).(*apiKey)
	if key != nil {
		tier = key.def
	}
	if name := c.Params("tier"); name != "" {
		t, err := engine.ParseTier(name)
		if err != nil {
			return &APIError{Status: http.StatusNotFound, Type: "invalid_request_error", Code: "tier_not_found",
				Message: fmt.Sprintf("there is no tier %q; the tiers are /tiers/realtime/v1, /tiers/standard/v1 and /tiers/batch/v1", name)}
		}
		tier = t
	}
	if name := c.Get(TierHeader); name != "" {
		t, err := engine.ParseTier(name)
		if err != nil {
			return &APIError{Status: http.StatusBadRequest, Type: "invalid_request_error", Code: "invalid_tier",
				Message: fmt.Sprintf("%s: %v", TierHeader, err)}
		}
		if s.priority(t) > s.priority(tier) {
			return &APIError{Status: http.StatusForbidden, Type: "permission_error", Code: "tier_not_allowed",
				Message: fmt.Sprintf("%s may lower a request's tier, not raise it: %s is above %s", TierHeader, t, tier)}
		}
		tier = t
	}
	if key != nil && !s.may(key, tier) {
		var names []string
		for t := range engine.Tier(engine.NumTiers) {
			if s.may(key, t) {
				names = append(names, t.String())
			}
		}
		return &APIError{Status: http.StatusForbidden, Type: "permission_error", Code: "tier_not_allowed",
			Message: fmt.Sprintf("this API key may use the tiers %s, not %s", strings.Join(names, ", "), tier)}
	}
	c.Locals(tierLocal{}, tier)
	c.Set(TierHeader, tier.String())
	return c.Next()
}

// tier is the tier resolveTier chose for the request.
func (s *Server) tier(c *fiber.Ctx) engine.Tier {
	if t, ok := c.Locals(tierLocal{}).(engine.Tier); ok {
		return t
	}
	return s.defaultTier
}
