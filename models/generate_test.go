package models

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestPresetShapes(t *testing.T) {
	for _, tc := range []struct {
		preset string
		params int64
	}{
		// embeddings in and out, output norm, 2 layers of norms, q, k, v, o
		// (kv heads 2 of 4: k and v are 64 wide) and a gated feed-forward
		{"tiny", 2*2048*128 + 128 + 2*(2*128+2*128*128+2*128*64+3*128*256)},
		{"bench", 134105856}, // DESIGN.md's 134M
		{"13b", 13015864320}, // a llama 13B
	} {
		if got := Presets[tc.preset].Params(); got != tc.params {
			t.Errorf("%s: %d parameters, want %d", tc.preset, got, tc.params)
		}
	}
	// KV cache of a 13B llama at 4096 tokens in f16: 2 x 40 x 4096 x 5120 x 2 bytes.
	s := Summary{Layers: 40, HeadsKV: 40, HeadDimK: 128, HeadDimV: 128}
	if got := s.MemoryFor(4096, 1, 512).KVCache; got != 3355443200 {
		t.Errorf("13b KV at 4096 tokens: %d bytes, want 3355443200", got)
	}
	if got := s.MemoryFor(1024, 4, 512).KVCache; got != 3355443200 {
		t.Errorf("13b KV at 4 x 1024 tokens: %d bytes, want 3355443200", got)
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	sum := func(name string, typ TensorType, seed uint64) [32]byte {
		path := filepath.Join(dir, name)
		if err := Generate(context.Background(), path, GenOptions{Preset: Presets["tiny"], Type: typ, Seed: seed}); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("mode %v %v, want 0644: a server of another UID reads it", st.Mode(), err)
		}
		return sha256.Sum256(b)
	}
	if sum("a", TypeQ8_0, 1) != sum("b", TypeQ8_0, 1) {
		t.Error("same seed, different files")
	}
	if sum("c", TypeQ8_0, 1) == sum("d", TypeQ8_0, 2) {
		t.Error("different seeds, same file")
	}
	// The same weights in every precision: f16 and q8_0 decode close to f32.
	f32, f16, q8 := tensorFloats(t, filepath.Join(dir, "e"), TypeF32), tensorFloats(t, filepath.Join(dir, "f"), TypeF16), tensorFloats(t, filepath.Join(dir, "g"), TypeQ8_0)
	for i := range f32 {
		if d := f32[i] - f16[i]; d > 1e-2 || d < -1e-2 {
			t.Fatalf("f16 weight %d: %g vs %g", i, f16[i], f32[i])
		}
		if d := f32[i] - q8[i]; d > 5e-2 || d < -5e-2 {
			t.Fatalf("q8_0 weight %d: %g vs %g", i, q8[i], f32[i])
		}
	}
}

// tensorFloats generates the tiny model as typ and decodes blk.0.attn_q.weight.
func tensorFloats(t *testing.T, path string, typ TensorType) []float32 {
	t.Helper()
	if err := Generate(context.Background(), path, GenOptions{Preset: Presets["tiny"], Type: typ, Seed: 9}); err != nil {
		t.Fatal(err)
	}
	f, err := Check(path)
	if err != nil {
		t.Fatal(err)
	}
	ti, _ := f.Tensor("blk.0.attn_q.weight")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b := raw[f.DataOffset+ti.Offset : f.DataOffset+ti.Offset+ti.Bytes()]
	out := make([]float32, ti.Elements())
	switch typ {
	case TypeF32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case TypeF16:
		for i := range out {
			out[i] = Float16ToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case TypeQ8_0:
		DequantizeQ8_0(out, b)
	}
	return out
}

func TestVocab(t *testing.T) {
	for _, size := range []int{300, 2048, 32000} {
		v, err := BuildVocab(size)
		if err != nil {
			t.Fatal(err)
		}
		if len(v.Tokens) != size || len(v.Scores) != size || len(v.Types) != size {
			t.Fatalf("size %d: got %d tokens", size, len(v.Tokens))
		}
		seen := map[string]bool{}
		for i, tok := range v.Tokens {
			if seen[tok] {
				t.Fatalf("size %d: duplicate token %q", size, tok)
			}
			seen[tok] = true
			if !utf8.ValidString(tok) {
				t.Fatalf("token %d is not UTF-8", i)
			}
		}
		for b := 0; b < 256; b++ {
			if v.Types[3+b] != tokByte {
				t.Fatalf("byte token %d missing", b)
			}
		}
		if v.Tokens[ImStartID] != "<|im_start|>" || v.Tokens[ImEndID] != "<|im_end|>" {
			t.Fatal("ChatML tokens not at their ids")
		}
		// Every normal piece is reachable by merges: its prefixes are tokens.
		for i, tok := range v.Tokens {
			if v.Types[i] != tokNormal {
				continue
			}
			r := []rune(tok)
			for k := 1; k < len(r); k++ {
				if !seen[string(r[:k])] {
					t.Fatalf("piece %q lacks its prefix %q", tok, string(r[:k]))
				}
			}
		}
	}
	if _, err := BuildVocab(10); err == nil {
		t.Fatal("a 10-token vocabulary was accepted")
	}
}

func TestInspectGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := Generate(context.Background(), path, GenOptions{Preset: Presets["tiny"], Type: TypeQ8_0, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	f, err := Check(path)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Summarize("tiny.gguf", f).Print(&buf, 2048, 4, 512); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "inspect-tiny-q8_0.golden")
	if os.Getenv("UPDATE_GOLDEN") != "" {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if buf.String() != string(want) {
		t.Errorf("inspect output differs from %s:\n%s", golden, buf.String())
	}
}

// TestPresetArithmetic: the tiny preset's parameter count, tensor bytes
// and serving memory, derived here from its shape (a llama model with
// separate input and output embeddings, grouped-query attention and a
// gated feed-forward), agree with what Summarize reads from the file
// and with the inspect golden file, so that neither is merely a copy of
// the output.
func TestPresetArithmetic(t *testing.T) {
	p := Presets["tiny"]
	e, l, v, ff := int64(p.Embd), int64(p.Layers), int64(p.Vocab), int64(p.FF)
	kvDim := e / int64(p.Heads) * int64(p.HeadsKV)
	perLayer := 2*e + // attention and feed-forward norms
		e*e + 2*e*kvDim + e*e + // q, k, v, o
		3*e*ff // gate, up, down
	norms := 2*l*e + e
	params := 2*v*e + e + l*perLayer // embeddings in and out, output norm, layers
	// q8_0: blocks of 32 values in 34 bytes; the norms stay f32.
	q8Bytes := (params - norms) / 32 * 34
	f32Bytes := norms * 4
	const ctx, seqs = 2048, 4
	kvBytes := 2 * l * kvDim * ctx * seqs * 2 // keys and values, f16
	logits := seqs * v * 4

	path := filepath.Join(t.TempDir(), "tiny.gguf")
	if err := Generate(context.Background(), path, GenOptions{Preset: p, Type: TypeQ8_0, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	f, err := Check(path)
	if err != nil {
		t.Fatal(err)
	}
	s := Summarize(path, f)
	if s.Params != params || s.TensorBytes != q8Bytes+f32Bytes {
		t.Errorf("params %d, tensor bytes %d; derived %d and %d", s.Params, s.TensorBytes, params, q8Bytes+f32Bytes)
	}
	if m := s.MemoryFor(ctx, seqs, 512); m.KVCache != kvBytes || m.Outputs != logits || m.Weights != q8Bytes+f32Bytes {
		t.Errorf("memory %+v; derived kv %d, logits %d", m, kvBytes, logits)
	}
	golden, err := os.ReadFile(filepath.Join("testdata", "inspect-tiny-q8_0.golden"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		fmt.Sprintf("parameters                        %d (", params),
		"tensors q8_0                      16 tensors, " + HumanBytes(q8Bytes),
		"tensors f32                       5 tensors, " + HumanBytes(f32Bytes),
		"kv cache (f16)                  " + HumanBytes(kvBytes),
		"logits                          " + HumanBytes(logits),
		fmt.Sprintf("memory at ctx %d x %d sequences", ctx, seqs),
	} {
		if !strings.Contains(string(golden), want) {
			t.Errorf("the golden file lacks the derived %q", want)
		}
	}
}
