package engine

import (
	"fmt"
	"slices"

	"github.com/finserve/finserve/prefixcache"
)

// The prompt-prefix cache has three tiers, searched together when a
// sequence starts:
//
//   - kept: when a sequence ends its cells stay in its slot, labelled with
//     its tokens and tenant, until the slot is needed again. A new sequence
//     that shares a prefix takes the slot over and drops only the tail: no
//     copy at all. Multi-turn chat lands here.
//   - running and pinned: a prefix held by a running sequence, or by a
//     pinned prefix's own slot, is copied with llama_memory_seq_cp (cell
//     metadata in a unified cache; the stream's buffers with split streams).
//     A request whose prefix another one is still prefilling waits for it
//     instead of computing it twice.
//   - host: kept prefixes evicted for room are serialized
//     (llama_state_seq_get_data) into the byte-bounded host tier and
//     restored (llama_state_seq_set_data) into a free slot on a hit.
//
// Every tier matches only sequences of the same tenant (pinned prefixes
// without a tenant match everyone). Reused cells hold exactly what a cold
// prefill computed, so outputs match it within the float tolerance of
// chunked prefill (tests state it).

// kept describes the cached cells of a slot no sequence runs in.
type kept struct {
	tokens []Token // at positions 0..len-1
	chain  prefixcache.Chain
	tenant string
	pinned bool   // a pinned prefix: never evicted, only copied
	used   uint64 // loop clock at the last use, for LRU eviction
}

func (k *kept) usableBy(tenant string) bool {
	return k.tenant == tenant || (k.pinned && k.tenant == "")
}

// srcKind says where a new sequence's first tokens come from.
type srcKind int

const (
	srcNone srcKind = iota
	srcKept         // take over a free slot's kept cells
	srcCopy         // copy from a running sequence or a pinned prefix
	srcHost         // restore from the host tier
)

// source is the best reusable prefix for a new sequence.
type source struct {
	kind srcKind
	slot int32 // srcKept, srcCopy
	n    int   // tokens reused
	hit  *prefixcache.Hit
}

// prefixCounters are the cache's cumulative counts, kept by the loop.
type prefixCounters struct {
	queries, hits, hostHits, reused, evictions, spills, waits uint64
}

// PrefixStats describe the prompt-prefix cache.
type PrefixStats struct {
	Enabled bool
	// Queries counts sequences started with the cache on, Hits those that
	// reused at least one token (HostHits of them from the host tier), and
	// ReusedTokens the prompt tokens they did not compute.
	Queries, Hits, HostHits, ReusedTokens uint64
	// Waits counts admissions postponed because another request was
	// computing the same prefix.
	Waits uint64
	// Kept slots hold the cells of ended sequences (KeptTokens in all);
	// Pinned slots hold pinned prefixes.
	Kept, KeptTokens, Pinned, PinnedTokens int
	// Evictions counts kept slots dropped for room; Spills those of them
	// saved to the host tier first.
	Evictions, Spills uint64
	Host              prefixcache.HostStats
}

// tick advances the loop's LRU clock.
func (l *loop) tick() uint64 {
	l.clock++
	return l.clock
}

// findSource finds the longest prefix of tokens (at most limit) that a
// new sequence of tenant can reuse. wait reports that a running sequence
// is still computing a much longer shared prefix: admitting later reuses
// it instead of computing it twice.
func (l *loop) findSource(tokens []Token, chain *prefixcache.Chain, tenant string, limit int, hit *prefixcache.Hit) (best source, wait bool) {
	if !l.pc.on || limit <= 0 {
		return source{}, false
	}
	// A copy between split streams moves a whole stream: prefer taking a
	// kept slot over copying a slightly longer prefix.
	copyCost := 0
	if l.split {
		copyCost = l.pc.block
	}
	score := 0
	consider := func(s source, cost int) {
		if s.n > 0 && s.n-cost > score {
			best, score = s, s.n-cost
		}
	}
	for slot, k := range l.kept {
		if k == nil || !k.usableBy(tenant) {
			continue
		}
		n := min(prefixcache.Common(&k.chain, k.tokens, chain, tokens), limit)
		if k.pinned {
			consider(source{kind: srcCopy, slot: int32(slot), n: n}, copyCost)
		} else {
			consider(source{kind: srcKept, slot: int32(slot), n: n}, 0)
		}
	}
	potential := 0
	for _, sq := range l.running {
		if sq.tenant != tenant {
			continue
		}
		n := prefixcache.Common(&sq.chain, sq.tokens[:sq.fed], chain, tokens)
		consider(source{kind: srcCopy, slot: sq.slot, n: min(n, limit)}, copyCost)
		if n == sq.fed && sq.remaining() > 1 {
			// Still prefilling, and everything so far is shared.
			p := n
			for p < len(sq.tokens) && p < len(tokens) && sq.tokens[p] == tokens[p] {
				p++
			}
			potential = max(potential, min(p, limit))
		}
	}
	if hit != nil {
		consider(source{kind: srcHost, n: min(len(hit.Tokens), limit), hit: hit}, copyCost)
	}
	if potential-best.n >= 2*l.pc.block {
		return source{}, true
	}
	return best, false
}

// room makes sure cells more KV cells can be reserved for a sequence
// that starts from src, evicting kept slots (least recently used first,
// never src's) in a unified cache. With split streams every slot has its
// own cells.
func (l *loop) room(cells int, src source) bool {
	if l.split {
		return true
	}
	credit, except := 0, int32(-1)
	if src.kind == srcKept {
		credit, except = len(l.kept[src.slot].tokens), src.slot
	}
	need := l.kvUsed - credit + cells - l.kvTotal
	if need <= 0 {
		return true
	}
	evictable := 0
	for slot, k := range l.kept {
		if k != nil && !k.pinned && int32(slot) != except {
			evictable += len(k.tokens)
		}
	}
	if evictable < need {
		return false
	}
	for l.kvUsed-credit+cells > l.kvTotal {
		l.evict(l.lruKept(except))
	}
	return true
}

// lruKept is the free slot with kept cells used least recently, or -1.
func (l *loop) lruKept(except int32) int32 {
	victim := int32(-1)
	for _, slot := range l.freeSlots {
		k := l.kept[slot]
		if k != nil && slot != except && (victim < 0 || k.used < l.kept[victim].used) {
			victim = slot
		}
	}
	return victim
}

// claimSlot takes a free slot for a sequence that starts empty or from a
// copy: the lowest one without kept cells, else the least recently used
// kept one, evicted.
func (l *loop) claimSlot() int32 {
	for i := len(l.freeSlots) - 1; i >= 0; i-- {
		if s := l.freeSlots[i]; l.kept[s] == nil {
			l.freeSlots = slices.Delete(l.freeSlots, i, i+1)
			return s
		}
	}
	s := l.lruKept(-1)
	l.evict(s)
	l.takeFree(s)
	return s
}

// takeFree removes slot from the free list.
func (l *loop) takeFree(slot int32) {
	if i := slices.Index(l.freeSlots, slot); i >= 0 {
		l.freeSlots = slices.Delete(l.freeSlots, i, i+1)
	}
}

// open claims a slot for a new sequence and fills it from src. It returns
// the slot and how many tokens its memory already holds.
func (l *loop) open(src source) (int32, int) {
	slot, n := l.fill(src)
	if l.pc.on {
		l.pstats.queries++
	}
	if n > 0 {
		l.pstats.hits++
		l.pstats.reused += uint64(n)
		if src.kind == srcHost {
			l.pstats.hostHits++
		}
	}
	return slot, n
}

// fill does open's work.
func (l *loop) fill(src source) (int32, int) {
	if src.kind == srcKept {
		l.takeFree(src.slot)
		l.dropKept(src.slot, src.n)
		return src.slot, src.n
	}
	slot := l.claimSlot()
	switch src.kind {
	case srcCopy:
		// Between split streams only whole streams can be copied; the copy
		// happens at the next decode, before anything writes to the source.
		l.p.copySeq(src.slot, slot, -1, -1)
		l.p.remove(slot, src.n, -1)
	case srcHost:
		// Should the restore fail, the run drops the slot's cells and the
		// sequence starts over (loop.run).
		l.p.restore(slot, src.hit.State)
		l.p.remove(slot, src.n, -1)
	}
	return slot, src.n
}

// dropKept ends the kept state of slot, keeping its first n tokens' cells
// (for a sequence taking it over). Cells it loses are spilled to the host
// tier first when that is worth it.
func (l *loop) dropKept(slot int32, n int) {
	k := l.kept[slot]
	if k == nil {
		return
	}
	if len(k.tokens)-n >= l.pc.block {
		l.spill(slot, k)
	}
	l.p.remove(slot, n, -1)
	l.kvUsed -= len(k.tokens)
	l.kept[slot] = nil
}

// evict frees a kept slot's cells, spilling them first.
func (l *loop) evict(slot int32) {
	l.pstats.evictions++
	l.dropKept(slot, 0)
}

// spill saves the whole blocks of a kept slot to the host tier, unless
// they are stored already or another slot holds them.
func (l *loop) spill(slot int32, k *kept) {
	if l.pc.host == nil {
		return
	}
	n := len(k.tokens) / l.pc.block * l.pc.block
	if n == 0 {
		return
	}
	k.chain.Extend(k.tokens)
	sum := k.chain.Sum(n/l.pc.block - 1)
	if l.pc.host.Has(k.tenant, sum) {
		return
	}
	for _, o := range l.kept {
		if o != nil && o != k && o.usableBy(k.tenant) && prefixcache.Common(&o.chain, o.tokens, &k.chain, k.tokens) >= n {
			return
		}
	}
	l.p.remove(slot, n, -1)
	l.p.save(slot)
	tenant, tokens, chain := k.tenant, k.tokens[:n], k.chain.Clone()
	l.onSave = append(l.onSave, func(s savedState) {
		if s.err != nil {
			l.e.log.Warn("saving a prefix to the host tier failed", "err", s.err)
			return
		}
		if s.state == nil {
			return
		}
		l.pc.host.Put(tenant, tokens, &chain, s.state)
		l.pstats.spills++
	})
}

// keep turns an ending sequence's cells into kept cells of its slot.
func (l *loop) keep(sq *sequence) {
	toks := slices.Clone(sq.tokens[:sq.fed])
	chain := prefixcache.NewChain(l.pc.block)
	if sq.chain.Block() == l.pc.block {
		chain = sq.chain.Clone()
		chain.Truncate(len(toks))
	}
	chain.Extend(toks)
	l.kept[sq.slot] = &kept{tokens: toks, chain: chain, tenant: sq.tenant, used: l.tick()}
	l.kvUsed += len(toks)
}

// prefillPinned computes the pinned prefixes into their slots, above the
// request slots, before the engine serves anything.
func (l *loop) prefillPinned(pinned []PinnedPrefix) error {
	for i, p := range pinned {
		slot := int32(l.e.opts.Parallel + i)
		for at := 0; at < len(p.Tokens); {
			n := min(len(p.Tokens)-at, l.nBatch)
			l.p.reset()
			for j := 0; j < n; j++ {
				l.p.batch.add(p.Tokens[at+j], at+j, slot, j == n-1)
			}
			l.run()
			if rc := l.res.rc; rc != 0 {
				return fmt.Errorf("prefilling pinned prefix %d: llama_decode failed with code %d", i, rc)
			}
			at += n
		}
		toks := slices.Clone(p.Tokens)
		l.kept[slot] = &kept{tokens: toks, chain: prefixcache.ChainOf(l.pc.block, toks), tenant: p.Tenant, pinned: true}
		l.kvUsed += len(toks)
	}
	return nil
}

// prefixStats is the cache's part of Stats.
func (l *loop) prefixStats() PrefixStats {
	c := l.pstats
	s := PrefixStats{Enabled: l.pc.on, Queries: c.queries, Hits: c.hits, HostHits: c.hostHits, ReusedTokens: c.reused,
		Waits: c.waits, Evictions: c.evictions, Spills: c.spills}
	for _, k := range l.kept {
		switch {
		case k == nil:
		case k.pinned:
			s.Pinned++
			s.PinnedTokens += len(k.tokens)
		default:
			s.Kept++
			s.KeptTokens += len(k.tokens)
		}
	}
	if l.pc.host != nil {
		s.Host = l.pc.host.Stats()
	}
	return s
}
