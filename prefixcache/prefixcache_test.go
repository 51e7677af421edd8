package prefixcache

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func naiveCommon(a, b []int32) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func seq(n int, seed uint64) []int32 {
	r := rand.New(rand.NewPCG(seed, 1))
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(r.IntN(50))
	}
	return t
}

func TestCommon(t *testing.T) {
	base := seq(200, 1)
	with := func(n int, tail ...int32) []int32 { return append(slices.Clone(base[:n]), tail...) }
	cases := []struct {
		name string
		a, b []int32
		want int
	}{
		{"equal", base, base, 200},
		{"empty", nil, base, 0},
		{"prefix", base[:70], base, 70},
		{"differ in a block", with(37, 99, 99), base, 37},
		{"differ at a block boundary", with(64, 99), base, 64},
		{"differ at first token", with(0, 99), base, 0},
		{"differ after the last block", with(130, 99), base, 130},
	}
	for _, block := range []int{1, 16, 32, 64, 500} {
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/block%d", c.name, block), func(t *testing.T) {
				ca, cb := ChainOf(block, c.a), ChainOf(block, c.b)
				if got := Common(&ca, c.a, &cb, c.b); got != c.want {
					t.Fatalf("Common = %d, want %d", got, c.want)
				}
				// Chains that cover fewer blocks than the tokens (a sequence
				// that grew since it was hashed) give the same answer.
				ca.Truncate(len(c.a) / 2)
				if got := Common(&ca, c.a, &cb, c.b); got != c.want {
					t.Fatalf("Common with a short chain = %d, want %d", got, c.want)
				}
			})
		}
	}
}

func TestChainNamesPrefixes(t *testing.T) {
	a := seq(128, 2)
	b := slices.Clone(a)
	b[100] = 49 - b[100] // differs in block 3 of 32
	ca, cb := ChainOf(32, a), ChainOf(32, b)
	for i := range 4 {
		if same := ca.Sum(i) == cb.Sum(i); same != (i < 3) {
			t.Errorf("block %d: sums equal = %v", i, same)
		}
	}
	// Extend is incremental: hashing in pieces gives the same chain.
	c := NewChain(32)
	for n := 0; n <= len(a); n += 7 {
		c.Extend(a[:n])
	}
	c.Extend(a)
	if !slices.Equal(c.sums, ca.sums) {
		t.Fatal("an incrementally extended chain differs from the chain of the whole")
	}
}

func FuzzCommon(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4}, []byte{1, 2, 3, 5}, uint8(2))
	f.Fuzz(func(t *testing.T, x, y []byte, block uint8) {
		a, b := tokensOf(x), tokensOf(y)
		bs := int(block%40) + 1
		ca, cb := ChainOf(bs, a), ChainOf(bs, b)
		if got, want := Common(&ca, a, &cb, b), naiveCommon(a, b); got != want {
			t.Fatalf("Common = %d, want %d", got, want)
		}
	})
}

// tokensOf maps bytes to tokens from a small alphabet, so that fuzzed
// inputs share long prefixes often.
func tokensOf(b []byte) []int32 {
	t := make([]int32, len(b))
	for i, c := range b {
		t[i] = int32(c % 4)
	}
	return t
}

func newHost(t *testing.T, opts HostOptions) *Host {
	t.Helper()
	h, err := NewHost(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// state is a stand-in for serialized KV state: mostly small numbers, like
// f16 activations, so that it compresses somewhat.
func state(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := 0; i < n; i += 2 {
		binary.LittleEndian.PutUint16(b[i:], uint16(0x3c00+r.IntN(512)))
	}
	return b
}

func TestHostLookup(t *testing.T) {
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", compress), func(t *testing.T) {
			h := newHost(t, HostOptions{MaxBytes: 1 << 24, Compress: compress})
			prompt := seq(300, 3)
			chain := ChainOf(32, prompt)
			short, long := state(4096, 1), state(8192, 2)
			h.Put("bank-a", prompt[:64], &chain, slices.Clone(short))
			h.Put("bank-a", prompt[:256], &chain, slices.Clone(long))
			h.Wait()

			hit := h.Lookup("bank-a", &chain, prompt, 299)
			if hit == nil || len(hit.Tokens) != 256 || !bytes.Equal(hit.State, long) {
				t.Fatalf("lookup did not return the longest prefix intact: %+v", hit != nil)
			}
			// Under a limit, the longest entry still serves its first
			// blocks: the hit names the tokens to keep.
			if hit := h.Lookup("bank-a", &chain, prompt, 200); hit == nil || len(hit.Tokens) != 192 || !bytes.Equal(hit.State, long) {
				t.Fatal("lookup under a limit did not return the first blocks of the longer prefix")
			}
			// A request that shares only the first 100 tokens (another
			// question after the same system prompt) finds 96 of them.
			other := append(slices.Clone(prompt[:100]), seq(100, 4)...)
			oc := ChainOf(32, other)
			if hit := h.Lookup("bank-a", &oc, other, 199); hit == nil || len(hit.Tokens) != 96 || !slices.Equal(hit.Tokens, other[:96]) {
				t.Fatal("a request sharing part of an entry missed it")
			}
			// Tenant isolation: the same tokens are never a hit for another tenant.
			if hit := h.Lookup("bank-b", &chain, prompt, 299); hit != nil {
				t.Fatal("tenant bank-b hit a prefix of bank-a")
			}
			// A prompt that differs in its first block misses.
			other = slices.Clone(prompt)
			other[10]++
			oc = ChainOf(32, other)
			if hit := h.Lookup("bank-a", &oc, other, 299); hit != nil {
				t.Fatal("a different prompt hit")
			}
			st := h.Stats()
			if st.Entries != 2 || st.Hits != 3 || st.Misses != 2 {
				t.Fatalf("stats %+v: want 2 entries, 3 hits, 2 misses", st)
			}
			if compress {
				// Entries are stored compressed: repetitive state shrinks.
				h.Put("bank-a", prompt[:32], &chain, make([]byte, 1<<16))
				h.Wait()
				if st2 := h.Stats(); st2.StoredBytes-st.StoredBytes > 1<<12 {
					t.Errorf("64 KiB of zeros were stored as %d bytes", st2.StoredBytes-st.StoredBytes)
				}
			}
		})
	}
}

// TestHostByteBound offers far more than the bound, from several
// goroutines, and checks the stored total after every round.
func TestHostByteBound(t *testing.T) {
	const bound = 1 << 20
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", compress), func(t *testing.T) {
			h := newHost(t, HostOptions{MaxBytes: bound, Compress: compress})
			for round := range 10 {
				done := make(chan struct{})
				for g := range 4 {
					go func() {
						defer func() { done <- struct{}{} }()
						for i := range 20 {
							toks := seq(64, uint64(round*1000+g*100+i))
							c := ChainOf(32, toks)
							h.Put("t", toks, &c, state(16<<10+i*512, uint64(i)))
						}
					}()
				}
				for range 4 {
					<-done
				}
				h.Wait()
				st := h.Stats()
				if st.Bytes > bound || st.Bytes < 0 {
					t.Fatalf("round %d: %d bytes stored, bound %d", round, st.Bytes, bound)
				}
				if st.Entries == 0 {
					t.Fatalf("round %d: nothing stored", round)
				}
			}
			st := h.Stats()
			if st.Evictions == 0 && st.Dropped == 0 {
				t.Fatalf("offered %d bytes to a %d-byte tier without evicting or refusing anything: %+v", st.RawBytes, bound, st)
			}
		})
	}
}

func TestHostRefusesOversizeAndClosed(t *testing.T) {
	h := newHost(t, HostOptions{MaxBytes: 1000})
	toks := seq(32, 9)
	c := ChainOf(32, toks)
	h.Put("t", toks, &c, make([]byte, 5000))
	h.Wait()
	if st := h.Stats(); st.Entries != 0 || st.Dropped != 1 {
		t.Fatalf("an entry over the bound: %+v", st)
	}
	var zero Chain
	h.Put("t", toks, &zero, make([]byte, 10)) // ignored, not a panic
	if h.Lookup("t", &zero, toks, 32) != nil {
		t.Error("a zero chain found something")
	}
	h.Close()
	h.Put("t", toks, &c, make([]byte, 10)) // must not panic
	if _, err := NewHost(HostOptions{}); err == nil {
		t.Fatal("a zero bound was accepted")
	}
}
