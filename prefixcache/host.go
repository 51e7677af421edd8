package prefixcache

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/ristretto/v2"
	"github.com/klauspost/compress/zstd"
)

// HostOptions configure a host tier.
type HostOptions struct {
	// MaxBytes bounds the stored state (compressed size when Compress);
	// the tokens and bookkeeping of an entry are counted too.
	MaxBytes int64
	// Compress stores state zstd-compressed (fastest level). Compression
	// runs on a worker goroutine; decompression runs in Lookup.
	Compress bool
}

// Host is the host tier: serialized KV state of prefixes evicted from the
// KV cache, bounded in bytes. Ristretto holds the entries and decides
// which stay; an index maps every block boundary of every entry (keyed by
// tenant and hash-chain sum) to it, so that a request sharing only the
// first blocks of an entry (the system prompt of another conversation)
// finds it too. All methods are safe for concurrent use.
type Host struct {
	cache    *ristretto.Cache[uint64, *entry]
	maxBytes int64
	enc      *zstd.Encoder
	dec      *zstd.Decoder
	work     chan *entry // compression queue; nil without Compress
	wg       sync.WaitGroup
	mu       sync.RWMutex // guards closed against Puts racing Close
	closed   bool

	imu     sync.Mutex
	index   map[uint64]*entry // boundary key -> the latest entry holding that prefix
	pending atomic.Int64      // entries queued or being compressed

	puts, dropped, hits, misses atomic.Uint64
	rawIn, storedIn             atomic.Uint64 // bytes offered and bytes stored, for the compression ratio
}

// entry is one stored prefix.
type entry struct {
	key        uint64
	bounds     []uint64 // boundary keys of its blocks, the last one is key
	tenant     string
	tokens     []int32
	state      []byte
	raw        int // uncompressed size of state
	compressed bool
}

func (e *entry) cost() int64 {
	return int64(len(e.state) + 4*len(e.tokens) + 8*len(e.bounds) + len(e.tenant) + 128)
}

// HostStats is a snapshot of a host tier.
type HostStats struct {
	Entries, Bytes, MaxBytes int64
	Puts                     uint64 // entries offered
	Dropped                  uint64 // offered but not stored: refused by the admission policy, too big, or the queue was full
	Evictions                uint64 // stored, then evicted for room
	Hits, Misses             uint64 // lookups
	RawBytes, StoredBytes    uint64 // state offered, and as stored (compressed)
}

// NewHost returns a host tier bounded to opts.MaxBytes (> 0).
func NewHost(opts HostOptions) (*Host, error) {
	if opts.MaxBytes <= 0 {
		return nil, errors.New("prefix cache host tier: the byte bound must be positive")
	}
	h := &Host{maxBytes: opts.MaxBytes, index: map[uint64]*entry{}}
	c, err := ristretto.NewCache(&ristretto.Config[uint64, *entry]{
		// Entries are prefixes of at least a block of KV state: kilobytes
		// to megabytes. 1e5 counters track the frequency of that many.
		NumCounters:        100_000,
		MaxCost:            opts.MaxBytes,
		BufferItems:        64,
		Metrics:            true,
		IgnoreInternalCost: true, // entry.cost counts the bookkeeping
		OnReject: func(it *ristretto.Item[*entry]) {
			h.dropped.Add(1)
			h.unindex(it.Value)
		},
		OnEvict: func(it *ristretto.Item[*entry]) { h.unindex(it.Value) },
	})
	if err != nil {
		return nil, fmt.Errorf("creating the prefix cache host tier: %w", err)
	}
	h.cache = c
	if opts.Compress {
		if h.enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1)); err != nil {
			c.Close()
			return nil, fmt.Errorf("creating the prefix cache compressor: %w", err)
		}
		if h.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0)); err != nil {
			c.Close()
			return nil, fmt.Errorf("creating the prefix cache decompressor: %w", err)
		}
		h.work = make(chan *entry, 4)
		h.wg.Add(1)
		go h.compressor()
	}
	return h, nil
}

// Close stops the compressor and frees every entry. Puts after Close are
// dropped.
func (h *Host) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	h.mu.Unlock()
	if h.work != nil {
		close(h.work)
		h.wg.Wait()
		h.enc.Close()
		h.dec.Close()
	}
	h.cache.Close()
}

// Has says whether an entry of tenant holds the prefix that chain sum
// names (stored, or on its way in).
func (h *Host) Has(tenant string, sum uint64) bool {
	h.imu.Lock()
	defer h.imu.Unlock()
	_, ok := h.index[key(tenant, sum)]
	return ok
}

// index makes e the entry found at each of its boundaries.
func (h *Host) reindex(e *entry) {
	h.imu.Lock()
	defer h.imu.Unlock()
	for _, b := range e.bounds {
		h.index[b] = e
	}
}

// unindex forgets e, which left the cache or never entered it.
func (h *Host) unindex(e *entry) {
	if e == nil {
		return
	}
	h.imu.Lock()
	defer h.imu.Unlock()
	for _, b := range e.bounds {
		if h.index[b] == e {
			delete(h.index, b)
		}
	}
}

// Put offers the state of tokens, a whole number of blocks of chain, for
// tenant. The host tier takes ownership of state. Storing is asynchronous
// and may be refused; a later Lookup finds the entry if it was kept.
func (h *Host) Put(tenant string, tokens []int32, chain *Chain, state []byte) {
	if chain.block < 1 || len(state) == 0 {
		return
	}
	n := len(tokens) / chain.block
	if n == 0 || n > chain.Len() || n*chain.block != len(tokens) {
		return
	}
	h.puts.Add(1)
	h.rawIn.Add(uint64(len(state)))
	e := &entry{tenant: tenant, tokens: slices.Clone(tokens), state: state, raw: len(state)}
	e.bounds = make([]uint64, n)
	for i := range e.bounds {
		e.bounds[i] = key(tenant, chain.Sum(i))
	}
	e.key = e.bounds[n-1]
	h.mu.RLock()
	defer h.mu.RUnlock()
	switch {
	case h.closed:
		h.dropped.Add(1)
	case h.work == nil:
		h.store(e)
	default:
		h.pending.Add(1)
		select {
		case h.work <- e:
		default:
			// Compression is behind: dropping a cache entry loses only time.
			h.pending.Add(-1)
			h.dropped.Add(1)
		}
	}
}

func (h *Host) store(e *entry) {
	h.storedIn.Add(uint64(len(e.state)))
	// Indexed before ristretto decides, so that OnReject and OnEvict,
	// which may run at once, always find it.
	h.reindex(e)
	if !h.cache.Set(e.key, e, e.cost()) {
		h.dropped.Add(1)
		h.unindex(e)
	}
}

func (h *Host) compressor() {
	defer h.wg.Done()
	for e := range h.work {
		e.state = h.enc.EncodeAll(e.state, make([]byte, 0, len(e.state)/2))
		e.compressed = true
		h.store(e)
		h.pending.Add(-1)
	}
}

// Hit is a stored prefix found by Lookup.
type Hit struct {
	Tokens []int32 // the prefix of the request that State holds; do not modify
	// State is the serialized KV state of an entry that starts with
	// Tokens and may hold more: drop the cells past len(Tokens) after
	// restoring it. Uncompressed; do not modify.
	State []byte
}

// Lookup finds the longest stored prefix of tokens for tenant that is at
// most limit tokens long. chain is the hash chain of tokens.
func (h *Host) Lookup(tenant string, chain *Chain, tokens []int32, limit int) *Hit {
	if chain.block < 1 {
		return nil
	}
	for i := min(chain.Len(), limit/chain.block, len(tokens)/chain.block) - 1; i >= 0; i-- {
		n := (i + 1) * chain.block
		h.imu.Lock()
		e := h.index[key(tenant, chain.Sum(i))]
		h.imu.Unlock()
		if e == nil || e.tenant != tenant || len(e.tokens) < n || !slices.Equal(e.tokens[:n], tokens[:n]) {
			continue
		}
		h.cache.Get(e.key) // counts the access for ristretto's admission policy
		state := e.state
		if e.compressed {
			var err error
			if state, err = h.dec.DecodeAll(e.state, make([]byte, 0, e.raw)); err != nil {
				continue
			}
		}
		h.hits.Add(1)
		return &Hit{Tokens: e.tokens[:n], State: state}
	}
	h.misses.Add(1)
	return nil
}

// Wait blocks until every Put so far has been stored or refused (tests).
func (h *Host) Wait() {
	for h.pending.Load() > 0 {
		time.Sleep(time.Millisecond)
	}
	h.cache.Wait()
}

// Stats returns a snapshot of the tier.
func (h *Host) Stats() HostStats {
	m := h.cache.Metrics
	added, evicted := m.KeysAdded(), m.KeysEvicted()
	return HostStats{
		Entries:     int64(added - evicted),
		Bytes:       int64(m.CostAdded() - m.CostEvicted()),
		MaxBytes:    h.maxBytes,
		Puts:        h.puts.Load(),
		Dropped:     h.dropped.Load(),
		Evictions:   evicted,
		Hits:        h.hits.Load(),
		Misses:      h.misses.Load(),
		RawBytes:    h.rawIn.Load(),
		StoredBytes: h.storedIn.Load(),
	}
}
