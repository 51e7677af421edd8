package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"golang.org/x/time/rate"

	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/engine"
)

// apiKey is a configured key, compiled: its hash, the tiers it may use,
// its default tier on /v1, and its request-rate limiter.
type apiKey struct {
	name string
	sum  [32]byte
	// previous are hashes the key had before a rotation, each accepted
	// until its expiry.
	previous []previousSum
	allowed  [engine.NumTiers]bool // for keys of the key file
	ceiling  engine.Tier           // for TIER:KEY entries: that tier and those below it
	capped   bool
	def      engine.Tier
	rate     float64
	limiter  *rate.Limiter // nil: unlimited
	// concurrency bounds the key's requests in flight (0: unbounded);
	// inflight counts them, shared with the key's next compilation.
	concurrency int
	inflight    *atomic.Int64
	// models are the model ids the key may use; nil: all.
	models map[string]bool
}

// mayUse says whether the request's key (if any) may use model id.
func mayUse(c *fiber.Ctx, id string) bool {
	k, ok := c.Locals(keyLocal{}).(*apiKey)
	return !ok || k.models == nil || k.models[id]
}

type previousSum struct {
	sum     [32]byte
	expires time.Time
}

// keyring is the key set in force; SetKeys swaps it whole.
type keyring struct {
	keys   []*apiKey
	byName map[string]*apiKey
}

// parseKey reads an APIKeys entry: "KEY" or "TIER:KEY".
func parseKey(entry string) (key string, tier engine.Tier, hasTier bool) {
	if name, rest, ok := strings.Cut(entry, ":"); ok && rest != "" {
		if t, err := engine.ParseTier(name); err == nil {
			return rest, t, true
		}
	}
	return entry, 0, false
}

// compileKeys builds a keyring from the plain APIKeys entries and a key
// file's set, keeping the limiters of keys that were already in force
// with the same rate (a reload does not refill their buckets).
func (s *Server) compileKeys(plain []string, set *apikeys.Set, old *keyring) (*keyring, error) {
	r := &keyring{byName: map[string]*apiKey{}}
	add := func(k *apiKey) error {
		if _, dup := r.byName[k.name]; dup {
			return fmt.Errorf("API key name %q appears twice", k.name)
		}
		k.inflight = new(atomic.Int64)
		if o := old.lookup(k.name); o != nil {
			k.inflight = o.inflight // requests in flight stay counted across a reload
		}
		if k.rate > 0 {
			if o := old.lookup(k.name); o != nil && o.rate == k.rate && o.limiter != nil {
				k.limiter = o.limiter
			} else {
				k.limiter = rate.NewLimiter(rate.Limit(k.rate), max(1, int(math.Ceil(k.rate))))
			}
		}
		r.keys = append(r.keys, k)
		r.byName[k.name] = k
		return nil
	}
	for _, entry := range plain {
		key, tier, hasTier := parseKey(entry)
		if key == "" {
			return nil, fmt.Errorf("server config: an API key is empty")
		}
		sum := sha256.Sum256([]byte(key))
		k := &apiKey{name: "key-" + hex.EncodeToString(sum[:8]), sum: sum, def: s.defaultTier, allowed: [engine.NumTiers]bool{true, true, true}}
		if hasTier {
			k.def, k.ceiling, k.capped = tier, tier, true
		}
		if err := add(k); err != nil {
			return nil, err
		}
	}
	if set != nil {
		for _, e := range set.Keys {
			k := &apiKey{name: e.Name, rate: e.Rate, concurrency: e.Concurrency}
			for _, m := range e.Models {
				if k.models == nil {
					k.models = map[string]bool{}
				}
				k.models[m] = true
			}
			b, _ := hex.DecodeString(e.SHA256)
			copy(k.sum[:], b)
			for _, p := range e.Previous {
				var ps previousSum
				b, _ := hex.DecodeString(p.SHA256)
				copy(ps.sum[:], b)
				ps.expires = p.Expires
				k.previous = append(k.previous, ps)
			}
			for i, name := range e.Tiers {
				t, err := engine.ParseTier(name)
				if err != nil {
					return nil, fmt.Errorf("API key %q: %w", e.Name, err)
				}
				k.allowed[t] = true
				if i == 0 {
					k.def = t
				}
			}
			if k.allowed[s.defaultTier] {
				k.def = s.defaultTier
			}
			if err := add(k); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

func (r *keyring) lookup(name string) *apiKey {
	if r == nil {
		return nil
	}
	return r.byName[name]
}

// SetKeys puts a key file's set in force (with the configured plain
// keys), as on SIGHUP. Requests in flight keep the key they came with.
func (s *Server) SetKeys(set *apikeys.Set) error {
	s.keysMu.Lock()
	defer s.keysMu.Unlock()
	r, err := s.compileKeys(s.cfg.APIKeys, set, s.keys.Load())
	if err != nil {
		return err
	}
	s.keys.Store(r)
	s.log.Info("API keys in force", "keys", len(r.keys))
	return nil
}

// may says whether key k may use tier t. A capped key's tiers follow the
// engine's priorities, which are known once it runs.
func (s *Server) may(k *apiKey, t engine.Tier) bool {
	if k.capped {
		return s.priority(t) <= s.priority(k.ceiling)
	}
	return k.allowed[t]
}

type keyLocal struct{}

// authenticate admits requests with a valid key (every route but
// /health, when keys are configured), and enforces the key's rate.
func (s *Server) authenticate(c *fiber.Ctx) error {
	r := s.keys.Load()
	if r == nil || len(r.keys) == 0 {
		return c.Next()
	}
	auth := c.Get(fiber.HeaderAuthorization)
	presented, ok := strings.CutPrefix(auth, "Bearer ")
	if !ok || presented == "" {
		return errUnauthorized
	}
	sum := sha256.Sum256([]byte(presented))
	var found *apiKey
	now := s.cfg.Clock()
	for _, k := range r.keys {
		// every key is compared, whichever matches
		if subtle.ConstantTimeCompare(sum[:], k.sum[:]) == 1 {
			found = k
		}
		for _, p := range k.previous {
			if subtle.ConstantTimeCompare(sum[:], p.sum[:]) == 1 && now.Before(p.expires) {
				found = k
			}
		}
	}
	if found == nil {
		return errUnauthorized
	}
	// The key's tenant: its name, never anything the client chooses, so
	// that no request can claim another tenant's cached prefixes. Set
	// before the limits so that their refusals name it.
	c.Locals(tenantKey{}, found.name)
	if found.limiter != nil {
		allowed := found.limiter.AllowN(now, 1)
		setRateHeaders(c, found.limiter, now)
		if !allowed {
			return &APIError{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "rate_limit_exceeded",
				Message:    fmt.Sprintf("this API key may send %g requests per second; retry later", found.rate),
				RetryAfter: max(1, int(math.Ceil(1/found.rate)))}
		}
	}
	if found.concurrency > 0 {
		if n := found.inflight.Add(1); n > int64(found.concurrency) {
			found.inflight.Add(-1)
			return &APIError{Status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: "concurrency_limit_exceeded",
				Message:    fmt.Sprintf("this API key may have %d requests in flight; retry when one has finished", found.concurrency),
				RetryAfter: 1}
		}
		var once sync.Once
		release := func() { once.Do(func() { found.inflight.Add(-1) }) }
		c.Locals(releaseKey{}, release)
		// A stream outlives the handler: streamRelease hands the release
		// to its writer; otherwise the request ends here.
		defer func() {
			if r, ok := c.Locals(releaseKey{}).(func()); ok {
				r()
			}
		}()
	}
	c.Locals(keyLocal{}, found)
	return c.Next()
}

type releaseKey struct{}

// streamRelease takes over the release of the request's slot in its key's
// concurrency bound, for a response streamed after the handler returns;
// the caller runs it when the stream ends. A no-op without a bound.
func streamRelease(c *fiber.Ctx) func() {
	r, ok := c.Locals(releaseKey{}).(func())
	if !ok {
		return func() {}
	}
	c.Locals(releaseKey{}, nil)
	return r
}

// setRateHeaders sends the key's request budget as OpenAI does: how many
// requests the bucket holds, how many remain, and when it is full again.
func setRateHeaders(c *fiber.Ctx, l *rate.Limiter, now time.Time) {
	burst := float64(l.Burst())
	tokens := max(0, l.TokensAt(now))
	reset := time.Duration((burst - tokens) / float64(l.Limit()) * float64(time.Second)).Round(time.Millisecond)
	c.Set("X-Ratelimit-Limit-Requests", strconv.Itoa(l.Burst()))
	c.Set("X-Ratelimit-Remaining-Requests", strconv.Itoa(int(math.Floor(tokens))))
	c.Set("X-Ratelimit-Reset-Requests", reset.String())
}
