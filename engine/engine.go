// Package engine runs llama.cpp in-process and serves many concurrent
// sequences from one loaded model with continuous batching.
//
// One goroutine, locked to its OS thread, owns the llama context and makes
// every call on it. Requests reach it through a channel; each step it
// builds one batch that mixes one decode token for every generating
// sequence with prompt chunks of the others, under a token budget, runs one
// llama_decode, samples, and sends events to per-request streams. Requests
// join at any step, and a cancelled request leaves at the next one, freeing
// its KV cells.
//
// With the prompt-prefix cache (on by default, see PrefixCache and
// prefix.go) a sequence starts from the longest prefix of its prompt that
// its tenant already computed: cells kept from ended sequences, copied from
// running or pinned ones, or restored from the host tier.
//
// Everything that reaches llama.cpp is validated first: token ids, lengths
// against the context, sampling parameters. Nothing a caller passes can trip
// a llama.cpp assertion.
//
// This is the only package with cgo. It builds against the bundled
// llama.cpp (the default) or an installed one (build tag llama_system).
package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/finserve/finserve/models"
	"github.com/finserve/finserve/prefixcache"
)

// Tier is a request's latency class; Options.Tiers says how each is
// scheduled (tier.go).
type Tier int

// The tiers, highest default priority first.
const (
	TierRealtime Tier = iota // interactive chat
	TierStandard             // scoring
	TierBatch                // analysis; first to wait, preemptible
)

func (t Tier) String() string {
	switch t {
	case TierRealtime:
		return "realtime"
	case TierStandard:
		return "standard"
	case TierBatch:
		return "batch"
	}
	return fmt.Sprintf("tier(%d)", int(t))
}

// Errors returned by the engine.
var (
	ErrStopped     = errors.New("engine stopped")
	ErrQueueFull   = errors.New("engine queue is full")
	ErrKVExhausted = errors.New("KV cache exhausted")
	// ErrGrammarStuck: the request's grammar allows no token at some
	// point (it asks for an end of generation before it is complete, or
	// only for tokens the sampler bans).
	ErrGrammarStuck = errors.New("the grammar allows no token here")
)

// PromptTooLongError says a prompt cannot fit the context.
type PromptTooLongError struct {
	Tokens int // prompt tokens
	Limit  int // most prompt tokens a sequence can hold
	Input  int // which input of an embedding request (0 for others)
}

func (e *PromptTooLongError) Error() string {
	return fmt.Sprintf("prompt of %d tokens is too long: a sequence holds at most %d prompt tokens", e.Tokens, e.Limit)
}

// InvalidRequestError says a request is malformed; Field names what.
type InvalidRequestError struct {
	Field  string
	Reason string
}

func (e *InvalidRequestError) Error() string { return e.Field + ": " + e.Reason }

func invalid(field, format string, args ...any) error {
	return &InvalidRequestError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// FlashAttention selects llama.cpp's flash-attention mode.
type FlashAttention int

// Flash-attention modes.
const (
	FlashAttentionAuto FlashAttention = iota
	FlashAttentionOn
	FlashAttentionOff
)

// Options configure an Engine. Zero values get the defaults noted.
type Options struct {
	// Parallel is the number of sequences decoded together (default 4,
	// at most 256). Scoring requests use sequences from the same pool.
	Parallel int
	// Context is the most tokens (prompt plus output) one sequence may
	// hold (default: the model's training context, at most 4096).
	Context int
	// KVCells is the size of a unified KV cache in tokens (default
	// Context*Parallel, so that every sequence can reach Context at once).
	// Smaller values oversubscribe: requests then wait for room. Without
	// UnifiedKV every sequence has Context cells of its own.
	KVCells int
	// Batch is the token budget of one step: decode tokens of running
	// sequences first, prompt chunks with the rest. UBatch is llama.cpp's
	// physical micro-batch. Defaults: 512 and Batch on the CPU, where a
	// step's cost grows with its tokens from the first; 2048 and 512 when
	// the model runs wholly on GPUs (llama-server's defaults), where a
	// micro-batch of 512 prompt tokens costs a few decode steps and bigger
	// steps only add latency for the sequences decoding beside them.
	Batch  int
	UBatch int
	// CacheTypeK and CacheTypeV are the KV cache types, in llama-server's
	// names (--cache-type-k/-v): f16 (the default), f32, bf16, q8_0, q4_0,
	// q4_1, iq4_nl, q5_0, q5_1. q8_0 halves the cache of f16. A quantized
	// V cache needs flash attention (not FlashAttentionOff).
	CacheTypeK, CacheTypeV string
	typeK, typeV           models.TensorType // parsed by fill
	// Threads for decoding and ThreadsBatch for prompt processing (default:
	// GOMAXPROCS, the CPUs the cgroup quota and affinity allow).
	Threads, ThreadsBatch int
	// UnifiedKV puts every sequence in one shared KV cache of KVCells
	// cells instead of giving each its own stream of Context cells (the
	// default). A unified cache shares prefix cells without copying them
	// and can be oversubscribed, but it is not batch-invariant: cells freed
	// by a finished sequence are reused by the others out of position
	// order, flash attention then sums in another order, and a running
	// sequence's logits change in their last bits, enough to flip a
	// near-tie in greedy decoding. With a stream per sequence a request
	// gives the same tokens and scores alone or in any batch, and decoding
	// many sequences is faster because attention reads only their own cells.
	//
	// Batch invariance also needs matrix kernels that round a row the same
	// way whatever the number of rows. Quantized weights (q8_0, the K-quants)
	// have them; f32 and f16 weights do not in the bundled build, where
	// llamafile's tinyBLAS multiplies two or more rows and ggml's vec_dot a
	// single one; repacked weights (see ModelOptions.DisableRepack) neither.
	UnifiedKV bool
	// FlashAttention mode (default auto).
	FlashAttention FlashAttention
	// MaxQueue bounds the requests waiting for a sequence (default 1024).
	MaxQueue int
	// Tiers are the scheduling policies of the latency tiers (default
	// DefaultTiers, when left zero).
	Tiers [NumTiers]TierPolicy
	// Aging is how long a request must be held back by higher priorities
	// to gain one priority level (default DefaultAging; negative: never).
	Aging time.Duration
	// PrefixCache configures the prompt-prefix cache (on by default).
	PrefixCache PrefixCache
	// Logger for the engine's own messages (default slog.Default()).
	Logger *slog.Logger
}

func (o *Options) fill(m *Model) error {
	if o.Parallel == 0 {
		o.Parallel = 4
	}
	if o.Parallel < 1 || o.Parallel > 256 {
		return fmt.Errorf("engine options: parallel %d is outside 1..256", o.Parallel)
	}
	if o.Context == 0 {
		o.Context = min(m.info.TrainContext, 4096)
	}
	if o.Context < 16 {
		return fmt.Errorf("engine options: context %d is below 16 tokens", o.Context)
	}
	defaultCells := o.KVCells == 0
	if defaultCells {
		o.KVCells = o.Context * o.Parallel
	}
	if !o.UnifiedKV {
		o.KVCells = o.Context * o.Parallel
	}
	if o.KVCells < o.Context {
		return fmt.Errorf("engine options: %d KV cells cannot hold one sequence of %d tokens", o.KVCells, o.Context)
	}
	if o.KVCells > 1<<24 {
		return fmt.Errorf("engine options: %d KV cells is too many", o.KVCells)
	}
	gpu := m.plan.FullyOffloaded()
	if o.Batch == 0 {
		o.Batch = 512
		if gpu {
			o.Batch = 2048
		}
		o.Batch = max(o.Batch, o.Parallel)
	}
	if o.Batch < o.Parallel || o.Batch > 1<<16 {
		return fmt.Errorf("engine options: batch %d must be between parallel (%d) and 65536", o.Batch, o.Parallel)
	}
	if o.UBatch == 0 && gpu {
		o.UBatch = 512
	}
	if o.UBatch <= 0 || o.UBatch > o.Batch {
		o.UBatch = o.Batch
	}
	if err := o.fillEmbedding(m); err != nil {
		return err
	}
	if err := o.checkCacheTypes(m); err != nil {
		return err
	}
	if o.Threads <= 0 {
		// Go's default GOMAXPROCS follows the cgroup CPU quota and the
		// affinity mask; NumCPU would count every core of the node.
		o.Threads = runtime.GOMAXPROCS(0)
	}
	if o.ThreadsBatch <= 0 {
		o.ThreadsBatch = o.Threads
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := o.fillTiers(); err != nil {
		return err
	}
	if err := o.PrefixCache.fill(o, m); err != nil {
		return err
	}
	if defaultCells && o.UnifiedKV {
		// pinned prefixes hold their cells for good
		for _, p := range o.PrefixCache.Pinned {
			o.KVCells += len(p.Tokens)
		}
	}
	return nil
}

// fillEmbedding adapts the options to an embedding model: one micro-batch
// per step (each input is pooled within one) and no prefix cache (an
// input's cells are freed when it is pooled).
func (o *Options) fillEmbedding(m *Model) error {
	switch m.info.Pooling {
	case "":
		return nil
	case "rank":
		return fmt.Errorf("engine options: the model is a reranker (pooling rank), which finserve does not serve yet")
	}
	if len(o.PrefixCache.Pinned) > 0 {
		return fmt.Errorf("engine options: pinned prefixes need a text-generation model; this one is an embedding model")
	}
	// llama.cpp reserves its graphs for a batch rounded up to a multiple
	// of the sequences, with as many outputs as the batch had: pooling
	// every row then multiplies mismatched shapes and aborts. A batch
	// that is a multiple already is not rounded.
	o.Batch -= o.Batch % (o.Parallel + len(o.PrefixCache.Pinned))
	o.UBatch = o.Batch
	o.PrefixCache.Disabled = true
	// One cache shared by the step's inputs, as big as a step: every
	// input's cells are freed in the step that computes it, so each step
	// starts from an empty cache and an input's cells are laid out in
	// order whatever shares its step. (With a stream per sequence
	// llama.cpp splits a batch into micro-batches of equal parts of every
	// sequence, and pools each part apart.)
	o.UnifiedKV = true
	o.Context = min(o.Context, o.Batch)
	o.KVCells = o.Batch
	return nil
}

// checkCacheTypes validates the KV cache types before llama.cpp sees them:
// it would refuse the context with nothing but a log line.
func (o *Options) checkCacheTypes(m *Model) error {
	tk, err := models.ParseKVCacheType(o.CacheTypeK)
	if err != nil {
		return fmt.Errorf("engine options: %w", err)
	}
	tv, err := models.ParseKVCacheType(o.CacheTypeV)
	if err != nil {
		return fmt.Errorf("engine options: %w", err)
	}
	o.typeK, o.typeV = tk, tv
	if tv.Quantized() && o.FlashAttention == FlashAttentionOff {
		return fmt.Errorf("engine options: a quantized V cache (%s) needs flash attention, which is off", tv)
	}
	s := models.Summary{HeadDimK: m.head[0], HeadDimV: m.head[1]}
	if err := s.CheckKVCacheTypes(tk, tv); err != nil {
		return fmt.Errorf("engine options: %w", err)
	}
	return nil
}

// PrefixCache configures the prompt-prefix cache: sequences start from
// the longest prefix of their prompt that the KV cache or the host tier
// holds for their tenant, instead of computing it again.
type PrefixCache struct {
	// Disabled turns the cache off: every sequence starts empty and frees
	// its cells when it ends.
	Disabled bool
	// BlockTokens is the block size of the hash chains that name prefixes
	// (default 32). The host tier stores prefixes in whole blocks.
	BlockTokens int
	// HostBytes bounds the host tier in bytes; 0 leaves it out.
	HostBytes int64
	// Compress stores host-tier entries zstd-compressed.
	Compress bool
	// Pinned prefixes are computed when the engine starts and stay in
	// slots of their own (beyond Parallel), so that the most common
	// prefixes never pay prefill twice. With split KV streams each costs a
	// stream of Context cells.
	Pinned []PinnedPrefix
}

// PinnedPrefix is a prefix the cache always holds.
type PinnedPrefix struct {
	Tokens []Token
	Tenant string // the tenant that may use it; "" for every tenant
}

func (p *PrefixCache) fill(o *Options, m *Model) error {
	if p.BlockTokens == 0 {
		p.BlockTokens = 32
	}
	if p.BlockTokens < 1 || p.BlockTokens > 4096 {
		return fmt.Errorf("engine options: prefix cache block of %d tokens is outside 1..4096", p.BlockTokens)
	}
	if p.HostBytes < 0 {
		return fmt.Errorf("engine options: prefix cache host tier of %d bytes", p.HostBytes)
	}
	if p.Disabled && len(p.Pinned) > 0 {
		return errors.New("engine options: pinned prefixes need the prefix cache")
	}
	if o.Parallel+len(p.Pinned) > 256 {
		return fmt.Errorf("engine options: %d sequences and %d pinned prefixes exceed llama.cpp's 256 sequences", o.Parallel, len(p.Pinned))
	}
	for i, pp := range p.Pinned {
		if len(pp.Tokens) == 0 || len(pp.Tokens) >= o.Context {
			return fmt.Errorf("engine options: pinned prefix %d has %d tokens; it needs 1 to %d", i, len(pp.Tokens), o.Context-1)
		}
		for _, t := range pp.Tokens {
			if !m.ValidToken(t) {
				return fmt.Errorf("engine options: pinned prefix %d: token %d is not in the vocabulary", i, t)
			}
		}
	}
	return nil
}

// Sampling configures how the next token is chosen.
type Sampling struct {
	// Temperature 0 is greedy decoding (the default).
	Temperature float32
	TopK        int     // 0: off
	TopP        float32 // 0 or 1: off
	MinP        float32 // 0: off
	// Penalties over the last PenaltyLastN generated tokens (default 64).
	RepeatPenalty    float32 // 0 or 1: off
	FrequencyPenalty float32 // -2..2, 0: off
	PresencePenalty  float32 // -2..2, 0: off
	PenaltyLastN     int
	// Seed of the random sampler; nil picks one at random.
	Seed *uint32
	// Grammar constrains the output to a GBNF grammar (llama.cpp's syntax,
	// start rule "root"); "" leaves it free. Only tokens the grammar allows
	// are sampled, and end-of-generation only where the grammar is complete.
	// llama.cpp parses it: pass grammars the program wrote, never a
	// client's text (the server only passes its own JSON grammar).
	Grammar string
}

// Limits of a request's parameters. They are checked once, by
// Request.Check, for every caller: the HTTP server answers a 400 naming
// the parameter before it tokenizes anything, and the engine refuses the
// same request the same way. Where OpenAI's API bounds a parameter
// (temperature, top_p, the penalties, top_logprobs), its bound is used;
// the llama.cpp extensions take llama-server's own.
const (
	MaxTemperature   = 2 // OpenAI: 0 to 2
	MaxTopK          = 1 << 20
	MaxRepeatPenalty = 10
	MaxPenaltyLastN  = 1 << 20
	// MaxTopLogprobs is the most alternatives a request may ask for per
	// token (OpenAI: 20).
	MaxTopLogprobs = 20
	// MaxStops and MaxStopBytes bound the stop strings (OpenAI allows 4;
	// llama.cpp clients send more).
	MaxStops     = 16
	MaxStopBytes = 256
)

func (s *Sampling) validate() error {
	finite := func(v float32) bool { return !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0) }
	between := func(v, lo, hi float32) bool { return finite(v) && v >= lo && v <= hi }
	switch {
	case !between(s.Temperature, 0, MaxTemperature):
		return invalid("temperature", "must be between 0 and %d", MaxTemperature)
	case s.TopK < 0 || s.TopK > MaxTopK:
		return invalid("top_k", "must be between 0 and %d", MaxTopK)
	case !between(s.TopP, 0, 1):
		return invalid("top_p", "must be between 0 and 1")
	case !between(s.MinP, 0, 1):
		return invalid("min_p", "must be between 0 and 1")
	case !between(s.RepeatPenalty, 0, MaxRepeatPenalty):
		return invalid("repeat_penalty", "must be between 0 and %d", MaxRepeatPenalty)
	case !between(s.FrequencyPenalty, -2, 2):
		return invalid("frequency_penalty", "must be between -2 and 2")
	case !between(s.PresencePenalty, -2, 2):
		return invalid("presence_penalty", "must be between -2 and 2")
	case s.PenaltyLastN < 0 || s.PenaltyLastN > MaxPenaltyLastN:
		return invalid("penalty_last_n", "must be between 0 and %d", MaxPenaltyLastN)
	}
	return nil
}

func (s *Sampling) greedy() bool {
	return s.Temperature == 0 && !s.penalized() && s.Grammar == ""
}

func (s *Sampling) penalized() bool {
	return (s.RepeatPenalty != 0 && s.RepeatPenalty != 1) || s.FrequencyPenalty != 0 || s.PresencePenalty != 0
}

// Request is one generation.
type Request struct {
	Prompt    []Token // tokens to continue; build them with Model.Tokenize
	MaxTokens int     // 0: until the context is full
	Sampling  Sampling
	// Stop strings end the output before their first occurrence.
	Stop []string
	// IgnoreEOS keeps generating past end-of-generation tokens (benchmarks).
	IgnoreEOS bool
	// TopLogprobs > 0 reports that many alternatives per token (at most 20);
	// Logprobs reports the chosen token's log-probability.
	Logprobs    bool
	TopLogprobs int
	Tier        Tier
	// Tenant owns the request's prefixes: the prefix cache reuses only
	// what requests of the same tenant computed.
	Tenant string
	// NoCache computes the whole prompt, reusing nothing from the prefix
	// cache (its cells are still kept for others afterwards).
	NoCache bool
	// ID names the request in Stats.Work (the server's request id).
	ID string
	// KeepSpecial puts control tokens' text in the output (a tool call's
	// markers, for the server to parse), which is otherwise left out.
	KeepSpecial bool
}

// Check validates what does not depend on the model: max_tokens' sign,
// sampling, stop strings, top_logprobs and the tier, against the limits
// above. Generate runs it too; the server runs it before tokenizing.
// Errors are *InvalidRequestError naming the parameter.
func (r *Request) Check() error {
	if r.MaxTokens < 0 {
		return invalid("max_tokens", "must not be negative")
	}
	if err := r.Sampling.validate(); err != nil {
		return err
	}
	if r.TopLogprobs < 0 || r.TopLogprobs > MaxTopLogprobs {
		return invalid("top_logprobs", "must be between 0 and %d", MaxTopLogprobs)
	}
	if len(r.Stop) > MaxStops {
		return invalid("stop", "%d stop strings; at most %d are allowed", len(r.Stop), MaxStops)
	}
	for _, st := range r.Stop {
		switch {
		case st == "":
			return invalid("stop", "stop strings must not be empty")
		case len(st) > MaxStopBytes:
			return invalid("stop", "stop strings must be at most %d bytes", MaxStopBytes)
		case !utf8.ValidString(st):
			return invalid("stop", "stop strings must be valid UTF-8")
		}
	}
	if r.Sampling.Grammar != "" && r.IgnoreEOS {
		// a complete grammar allows nothing but end-of-generation
		return invalid("grammar", "cannot be combined with ignore_eos")
	}
	return validTier(r.Tier)
}

// ScoreRequest asks for log-probabilities without sampling.
type ScoreRequest struct {
	// Variants are whole token sequences, typically one prompt with
	// variations near its end; their common prefix is computed once.
	Variants [][]Token
	// Targets are tokens whose log-probabilities as the next token after
	// each variant are reported.
	Targets []Token
	// TopK also reports the k most likely next tokens (at most 100).
	TopK int
	// Positions reports, for each variant, the log-probability of every
	// token given those before it.
	Positions bool
	// Distributions reports, for a single variant, the whole next-token
	// distribution (log-probabilities over the vocabulary) after each of
	// its tokens from index DistributionsFrom to the last but one: what
	// comparing two models' predictions needs. It costs a vocabulary-sized
	// row per position, so the rows are bounded (MaxDistributionValues).
	Distributions     bool
	DistributionsFrom int
	Tier              Tier
	Tenant            string
	ID                string // names the request in Stats.Work
}

// MaxDistributionValues bounds the log-probabilities one Distributions
// request may return (rows times the vocabulary): 512 MiB of float32.
const MaxDistributionValues = 1 << 27

// VariantScore is the scoring result of one variant.
type VariantScore struct {
	Targets []float32      // log p(target | variant), in the order of Targets
	Top     []TokenLogprob // the TopK most likely next tokens
	// Positions[i] is log p(variant[i+1] | variant[:i+1]); len(variant)-1 values.
	Positions []float32
	// Dists[k] is the log-softmax over the vocabulary after token
	// DistributionsFrom+k, predicting token DistributionsFrom+k+1.
	Dists [][]float32
}

// ScoreResult holds the scores of every variant, in request order.
type ScoreResult struct {
	Variants     []VariantScore
	SharedPrefix int // tokens evaluated once for all variants
	// EvaluatedTokens counts the tokens of the variants' prefix tree: each
	// token shared by several variants counts once (cached ones included).
	EvaluatedTokens int
	CachedTokens    int // tokens of the shared prefix reused from the prefix cache
	Timings         Timings
}

// Stats is a snapshot of the engine's state, taken by its loop.
type Stats struct {
	Waiting   int // requests not yet admitted
	Running   int // requests with at least one sequence
	Sequences int // sequence slots in use
	Slots     int // sequence slots in all
	// KVCellsReserved counts the cells running sequences may fill, plus
	// those the prefix cache holds (Prefix.KeptTokens, evictable, and
	// Prefix.PinnedTokens), of KVCells.
	KVCellsReserved int
	KVCells         int
	// SlotsWithMemory counts slots (pinned ones included) whose llama.cpp
	// memory is not empty; it equals Sequences + Prefix.Kept +
	// Prefix.Pinned unless cells leaked.
	SlotsWithMemory int
	Steps           uint64 // llama_decode calls so far
	CutSteps        uint64 // of them, cut short for a higher-priority arrival
	Prefix          PrefixStats
	Tiers           [NumTiers]TierStats
	// Work lists the requests the engine holds, running ones first (in
	// slot order), then those waiting (in arrival order).
	Work []Work
}

// Work is one request as the engine sees it, for an operator's view
// (GET /slots).
type Work struct {
	ID     string
	Kind   string // "generate" or "score"
	State  string // "running" or "waiting"
	Tier   Tier
	Tenant string
	// Slots are the sequence slots it holds (a score request may hold
	// several; a waiting request none).
	Slots        []int
	PromptTokens int // of the prompt (the longest variant, for scoring)
	CachedTokens int // prompt tokens reused from the prefix cache
	Generated    int // tokens generated so far
	Preemptions  int
	Age          time.Duration // since submission
}

// Engine serves generation and scoring requests on one model.
type Engine struct {
	model *Model
	opts  Options
	log   *slog.Logger
	now   func() time.Time // time.Now; a test's clock in scheduling tests

	// Requests reach the loop through an intake list and a coalescing
	// wake-up signal, so that submitting never blocks and nothing can be
	// submitted after the loop's final drain.
	mu       sync.Mutex
	incoming []any // *genTask, *scoreTask, chan Stats
	closed   bool
	wake     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	host     *prefixcache.Host // nil without a host tier

	// A step of lower tiers under way is cut short when a request of a
	// higher priority than cutAbove arrives (the loop sets cutAbove
	// around each decode, MaxInt64 when no cut is allowed), by cut (the
	// executor's, set before the loop serves).
	cutAbove atomic.Int64
	cut      func()

	// Queue counts, kept by enqueue and the loop and read by both.
	waiting     atomic.Int64
	tierWaiting [NumTiers]atomic.Int64
	rejected    [NumTiers]atomic.Uint64
	service     [NumTiers]atomic.Int64 // mean time admitted, in ns (served)

	closeOnce sync.Once
}

// New creates a llama context on m and starts the engine's loop. The
// model must stay open until the engine is closed.
func New(m *Model, opts Options) (*Engine, error) {
	if err := opts.fill(m); err != nil {
		return nil, err
	}
	e := &Engine{
		model: m,
		opts:  opts,
		log:   opts.Logger,
		now:   time.Now,
		wake:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	if pc := opts.PrefixCache; !pc.Disabled && pc.HostBytes > 0 {
		h, err := prefixcache.NewHost(prefixcache.HostOptions{MaxBytes: pc.HostBytes, Compress: pc.Compress})
		if err != nil {
			return nil, err
		}
		e.host = h
	}
	// Registered before the loop starts, so that a Model.Close from now
	// on stops it before freeing the model.
	m.engMu.Lock()
	if m.engines == nil {
		m.engines = map[*Engine]struct{}{}
	}
	m.engines[e] = struct{}{}
	m.engMu.Unlock()
	ready := make(chan error, 1)
	go e.run(ready)
	if err := <-ready; err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// prefixLookup returns the hash chain of prompt and, when the host tier
// holds a prefix of it for tenant, that prefix. It runs on the caller's
// goroutine, so that a decompression never stalls the loop.
func (e *Engine) prefixLookup(prompt []Token, tenant string, limit int) (prefixcache.Chain, *prefixcache.Hit) {
	pc := &e.opts.PrefixCache
	if pc.Disabled {
		return prefixcache.Chain{}, nil
	}
	chain := prefixcache.ChainOf(pc.BlockTokens, prompt)
	if e.host == nil || limit <= 0 {
		return chain, nil
	}
	return chain, e.host.Lookup(tenant, &chain, prompt, limit)
}

// Model returns the engine's model.
func (e *Engine) Model() *Model { return e.model }

// Options returns the engine's options with defaults filled in.
func (e *Engine) Options() Options { return e.opts }

// Close stops the loop, ends every request with ErrStopped and frees the
// context. It is safe to call more than once.
func (e *Engine) Close() error {
	e.closeOnce.Do(func() { close(e.stop) })
	<-e.done
	if e.host != nil {
		e.host.Close()
	}
	e.model.engMu.Lock()
	delete(e.model.engines, e)
	e.model.engMu.Unlock()
	return nil
}

// PromptLimit is the longest prompt a generation request may have (one
// token of the context is left for the output).
func (e *Engine) PromptLimit() int { return e.opts.Context - 1 }

// Generate starts a generation and returns its stream. Invalid requests,
// prompts that cannot fit and a full queue are reported at once;
// everything later arrives as stream events. Cancelling ctx (or closing the
// stream) ends the generation at the next step.
func (e *Engine) Generate(ctx context.Context, req Request) (*Stream, error) {
	if err := e.validateGenerate(&req); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	t := &genTask{
		taskBase: taskBase{ctx: ctx, tier: req.Tier, tenant: req.Tenant, submitted: e.now()},
		req:      req,
		stream:   newStream(cancel),
		asm:      textAssembler{stops: req.Stop},
	}
	if !req.NoCache {
		t.chain, t.hit = e.prefixLookup(req.Prompt, req.Tenant, len(req.Prompt)-1)
	}
	if err := e.enqueue(ctx, t); err != nil {
		cancel()
		return nil, err
	}
	return t.stream, nil
}

func (e *Engine) validateGenerate(req *Request) error {
	if e.model.info.Embeds() {
		return ErrEmbeddingOnly
	}
	if len(req.Prompt) == 0 {
		return invalid("prompt", "must not be empty")
	}
	for i, t := range req.Prompt {
		if !e.model.ValidToken(t) {
			return invalid("prompt", "token %d at position %d is not in the vocabulary of %d", t, i, e.model.info.VocabSize)
		}
	}
	if len(req.Prompt) > e.PromptLimit() {
		return &PromptTooLongError{Tokens: len(req.Prompt), Limit: e.PromptLimit()}
	}
	if err := req.Check(); err != nil {
		return err
	}
	if room := e.opts.Context - len(req.Prompt); req.MaxTokens == 0 || req.MaxTokens > room {
		req.MaxTokens = room
	}
	if req.Sampling.PenaltyLastN == 0 {
		req.Sampling.PenaltyLastN = 64
	}
	if g := req.Sampling.Grammar; g != "" {
		if err := e.model.CheckGrammar(g); err != nil {
			return err
		}
	}
	return nil
}

func validTier(t Tier) error {
	if t < TierRealtime || t > TierBatch {
		return invalid("tier", "unknown tier %d", int(t))
	}
	return nil
}

// Score computes log-probabilities for the variants of req, sharing their
// common prefix, and waits for the result.
func (e *Engine) Score(ctx context.Context, req ScoreRequest) (*ScoreResult, error) {
	if err := e.validateScore(&req); err != nil {
		return nil, err
	}
	t := newScoreTask(ctx, req, e.now())
	if n := t.root.end; n > 0 {
		t.chain, t.hit = e.prefixLookup(req.Variants[0][:n], req.Tenant, t.cacheLimit(n))
	}
	if err := e.enqueue(ctx, t); err != nil {
		return nil, err
	}
	// The loop finalises every task it accepted, even when it stops.
	<-t.done
	return t.result, t.err
}

func (e *Engine) validateScore(req *ScoreRequest) error {
	if e.model.info.Embeds() {
		return ErrEmbeddingOnly
	}
	if len(req.Variants) == 0 {
		return invalid("variants", "at least one variant is needed")
	}
	if len(req.Variants) > 1<<16 {
		return invalid("variants", "at most 65536 variants")
	}
	for i, v := range req.Variants {
		if len(v) == 0 {
			return invalid("variants", "variant %d is empty", i)
		}
		if len(v) > e.opts.Context {
			return &PromptTooLongError{Tokens: len(v), Limit: e.opts.Context}
		}
		for j, t := range v {
			if !e.model.ValidToken(t) {
				return invalid("variants", "token %d at position %d of variant %d is not in the vocabulary", t, j, i)
			}
		}
	}
	for _, t := range req.Targets {
		if !e.model.ValidToken(t) {
			return invalid("targets", "token %d is not in the vocabulary", t)
		}
	}
	if req.TopK < 0 || req.TopK > 100 {
		return invalid("top_k", "must be between 0 and 100")
	}
	if req.Distributions {
		n := len(req.Variants[0])
		switch {
		case len(req.Variants) != 1:
			return invalid("distributions", "need exactly one variant")
		case req.DistributionsFrom < 0 || req.DistributionsFrom > n-2:
			return invalid("distributions_from", "must be between 0 and %d for a variant of %d tokens", n-2, n)
		case (n-1-req.DistributionsFrom)*e.model.info.VocabSize > MaxDistributionValues:
			return invalid("distributions", "%d rows of %d exceed %d values", n-1-req.DistributionsFrom, e.model.info.VocabSize, MaxDistributionValues)
		}
	}
	return validTier(req.Tier)
}

func (e *Engine) enqueue(ctx context.Context, t task) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tier := t.base().tier
	n := e.tierWaiting[tier].Add(1)
	all := e.waiting.Add(1)
	if limit := int64(e.opts.Tiers[tier].MaxQueued); all > int64(e.opts.MaxQueue) || limit > 0 && n > limit {
		e.queued(tier, -1)
		e.rejected[tier].Add(1)
		return &QueueFullError{Tier: tier, Waiting: int(n - 1), RetryAfter: e.retryAfter(tier)}
	}
	// A cancelled request must leave the queue even while the loop
	// sleeps (when nothing waiting can start).
	t.base().unwatch = context.AfterFunc(ctx, e.wakeUp)
	if !e.post(t) {
		t.base().ended()
		e.queued(tier, -1)
		return ErrStopped
	}
	return nil
}

// wakeUp makes the loop look at its requests again.
func (e *Engine) wakeUp() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// post hands v to the loop; false if the engine is closed. A task that
// outranks the step under way cuts it (under e.mu: the loop frees the
// executor only after closing the intake).
func (e *Engine) post(v any) bool {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return false
	}
	e.incoming = append(e.incoming, v)
	if t, ok := v.(task); ok && e.cut != nil && int64(e.opts.Tiers[t.base().tier].Priority) > e.cutAbove.Load() {
		e.cut()
	}
	e.mu.Unlock()
	e.wakeUp()
	return true
}

// outranked reports whether a task posted and not yet taken has a
// priority above p.
func (e *Engine) outranked(p int) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, v := range e.incoming {
		if t, ok := v.(task); ok && e.opts.Tiers[t.base().tier].Priority > p {
			return true
		}
	}
	return false
}

// take returns what was posted since the last call; with final set, it
// also closes the intake.
func (e *Engine) take(final bool) []any {
	e.mu.Lock()
	defer e.mu.Unlock()
	in := e.incoming
	e.incoming = nil
	if final {
		e.closed = true
	}
	return in
}

// Stats returns a snapshot of the engine's state.
func (e *Engine) Stats(ctx context.Context) (Stats, error) {
	reply := make(chan Stats, 1)
	if !e.post(reply) {
		return Stats{}, ErrStopped
	}
	select {
	case s := <-reply:
		return s, nil
	case <-ctx.Done():
		return Stats{}, ctx.Err()
	case <-e.done:
		return Stats{}, ErrStopped
	}
}
