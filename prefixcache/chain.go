// Package prefixcache holds the parts of finserve's prompt-prefix cache
// that need no llama.cpp: hash chains over fixed-size token blocks, which
// name a prefix by its tokens, and the host tier, a byte-bounded store of
// serialized KV state in host RAM (ristretto, optionally zstd).
//
// The engine owns the resident tier (prefixes still in the KV cache) and
// uses these pieces to find and keep prefixes; nothing here knows about
// sequences or llama.cpp state beyond opaque bytes.
package prefixcache

import (
	"encoding/binary"
	"hash/maphash"
)

// seed keys every hash of the process: chains are compared only within
// one process, and a random key means no client can craft collisions.
var seed = maphash.MakeSeed()

// Chain is the hash chain of a token sequence cut into blocks of Block
// tokens: Sum(i) names tokens[:(i+1)*Block], because each block's hash
// covers the previous sum. Equal sums mean equal prefixes (up to a 64-bit
// keyed-hash collision; callers that need certainty compare the tokens).
type Chain struct {
	block int
	sums  []uint64
}

// NewChain returns an empty chain with blocks of block tokens (>= 1).
func NewChain(block int) Chain {
	return Chain{block: max(block, 1)}
}

// ChainOf returns the chain of tokens' complete blocks.
func ChainOf(block int, tokens []int32) Chain {
	c := NewChain(block)
	c.Extend(tokens)
	return c
}

// Block is the chain's block size in tokens.
func (c *Chain) Block() int { return c.block }

// Len is the number of complete blocks hashed.
func (c *Chain) Len() int { return len(c.sums) }

// Tokens is the number of tokens the chain covers.
func (c *Chain) Tokens() int { return len(c.sums) * c.block }

// Sum is the hash of the first i+1 blocks.
func (c *Chain) Sum(i int) uint64 { return c.sums[i] }

// Extend hashes the complete blocks of tokens that the chain does not
// cover yet; tokens must start with the tokens already hashed.
func (c *Chain) Extend(tokens []int32) {
	var buf [8]byte
	var h maphash.Hash
	h.SetSeed(seed)
	for n := len(c.sums); (n+1)*c.block <= len(tokens); n++ {
		h.Reset()
		var prev uint64
		if n > 0 {
			prev = c.sums[n-1]
		}
		binary.LittleEndian.PutUint64(buf[:], prev)
		h.Write(buf[:])
		for _, t := range tokens[n*c.block : (n+1)*c.block] {
			binary.LittleEndian.PutUint32(buf[:4], uint32(t))
			h.Write(buf[:4])
		}
		c.sums = append(c.sums, h.Sum64())
	}
}

// Truncate keeps the blocks within the first n tokens.
func (c *Chain) Truncate(n int) {
	if b := n / max(c.block, 1); b < len(c.sums) {
		c.sums = c.sums[:b]
	}
}

// Clone returns a chain that shares nothing with c.
func (c *Chain) Clone() Chain {
	return Chain{block: c.block, sums: append([]uint64(nil), c.sums...)}
}

// Common returns the length of the longest common prefix of ta and tb,
// whose chains are a and b (of the same block size; they may cover fewer
// blocks than the tokens hold, or more). Whole blocks are skipped by their
// sums and then checked token by token, so that a hash collision can
// never make a prefix look shared.
func Common(a *Chain, ta []int32, b *Chain, tb []int32) int {
	limit := min(len(ta), len(tb))
	blocks := min(a.Len(), b.Len(), limit/max(a.block, 1))
	if a.block != b.block {
		blocks = 0
	}
	i := 0
	for i < blocks && a.sums[i] == b.sums[i] {
		i++
	}
	n := i * a.block
	for j := 0; j < n; j++ {
		if ta[j] != tb[j] {
			return j
		}
	}
	for n < limit && ta[n] == tb[n] {
		n++
	}
	return n
}

// key names a block-aligned prefix of one tenant in the host tier.
func key(tenant string, sum uint64) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	var buf [8]byte
	// The length first, so that no two (tenant, sum) pairs hash the same bytes.
	binary.LittleEndian.PutUint64(buf[:], uint64(len(tenant)))
	h.Write(buf[:])
	h.WriteString(tenant)
	binary.LittleEndian.PutUint64(buf[:], sum)
	h.Write(buf[:])
	return h.Sum64()
}
