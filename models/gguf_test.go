package models

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"reflect"
	"strings"
	"testing"
)

// micro is a model small enough to build in memory for every test case.
var micro = Preset{Name: "micro", Embd: 32, Layers: 1, Heads: 2, HeadsKV: 1, FF: 64, Vocab: 300, Context: 128}

func microBytes(t testing.TB, typ TensorType) []byte {
	t.Helper()
	vocab, err := BuildVocab(int(micro.Vocab))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteModel(context.Background(), &buf, GenOptions{Preset: micro, Type: typ, Seed: 3}, vocab); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readBytes(b []byte) (*File, error) { return Read(bytes.NewReader(b), int64(len(b))) }

func TestWriteReadRoundTrip(t *testing.T) {
	kvs := []KV{
		{"general.architecture", "test"},
		{"general.alignment", uint32(64)},
		{"u8", uint8(200)}, {"i8", int8(-5)}, {"u16", uint16(60000)}, {"i16", int16(-30000)},
		{"u32", uint32(4e9)}, {"i32", int32(-2e9)}, {"f32", float32(1.5)}, {"b", true},
		{"s", "银行 🙂"}, {"u64", uint64(1 << 60)}, {"i64", int64(-1 << 60)}, {"f64", math.Pi},
		{"a.u8", []uint8{1, 2}}, {"a.i8", []int8{-1}}, {"a.u16", []uint16{7}}, {"a.i16", []int16{-7}},
		{"a.u32", []uint32{1, 2, 3}}, {"a.i32", []int32{-1, 0, 1}}, {"a.f32", []float32{0.25}},
		{"a.b", []bool{true, false}}, {"a.s", []string{"", "x", "中文"}}, {"a.u64", []uint64{9}},
		{"a.i64", []int64{-9}}, {"a.f64", []float64{2.5}}, {"a.empty", []string{}},
	}
	data := func(n int64) func(io.Writer) error {
		return func(w io.Writer) error { _, err := w.Write(bytes.Repeat([]byte{0xAB}, int(n))); return err }
	}
	tensors := []TensorSource{
		{Info: TensorInfo{Name: "a", Type: TypeF32, Dims: []int64{3}}, Write: data(12)},
		{Info: TensorInfo{Name: "b", Type: TypeQ8_0, Dims: []int64{64, 2}}, Write: data(2 * 2 * 34)},
		{Info: TensorInfo{Name: "c", Type: TypeQ4_K, Dims: []int64{256, 1, 2}}, Write: data(2 * 144)},
	}
	var buf bytes.Buffer
	if err := Write(&buf, kvs, tensors, nil); err != nil {
		t.Fatal(err)
	}
	f, err := readBytes(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.KV, kvs) {
		t.Errorf("metadata differs after a round trip:\n got %v\nwant %v", f.KV, kvs)
	}
	if f.Alignment != 64 || f.DataOffset%64 != 0 || f.Version != 3 {
		t.Errorf("alignment %d, data offset %d, version %d", f.Alignment, f.DataOffset, f.Version)
	}
	for i, ts := range tensors {
		got := f.Tensors[i]
		if got.Name != ts.Info.Name || got.Type != ts.Info.Type || !reflect.DeepEqual(got.Dims, ts.Info.Dims) || got.Offset%64 != 0 {
			t.Errorf("tensor %d: got %+v, want %+v", i, got, ts.Info)
		}
	}
	if want := f.DataOffset + f.Tensors[2].Offset + f.Tensors[2].Bytes(); int64(buf.Len()) < want {
		t.Errorf("file of %d bytes is shorter than its last tensor's end %d", buf.Len(), want)
	}
}

// TestReadRejects: each corruption is refused with the right kind of error
// and a message that says what is wrong.
func TestReadRejects(t *testing.T) {
	good := microBytes(t, TypeQ8_0)
	f, err := readBytes(good)
	if err != nil {
		t.Fatal(err)
	}
	firstTensor := tensorInfoOffset(t, good, f)

	put32 := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b }
	}
	put64 := func(off int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { binary.LittleEndian.PutUint64(b[off:], v); return b }
	}
	nameLen := len(f.Tensors[0].Name)
	dimsAt := firstTensor + 8 + nameLen + 4 // after name and n_dims
	typeAt := dimsAt + 8*len(f.Tensors[0].Dims)
	cases := []struct {
		name   string
		mutate func([]byte) []byte
		kind   error
		detail string
	}{
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }, ErrCorrupt, "bad magic"},
		{"version 1", put32(4, 1), ErrUnsupported, "version 1"},
		{"version 4", put32(4, 4), ErrUnsupported, "version 4"},
		{"too many tensors", put64(8, 1<<40), ErrUnsupported, "tensors"},
		{"counts past the end", put64(16, 60000), ErrCorrupt, "more than the file holds"},
		{"key length past the end", put64(24, 1<<40), ErrUnsupported, "string of"},
		{"key length near the end", put64(24, uint64(len(good))), ErrCorrupt, "past the end"},
		{"value type invalid", put32(24+8+len("general.architecture"), 99), ErrCorrupt, "invalid value type"},
		{"zero dimension", put64(dimsAt, 0), ErrCorrupt, "invalid shape"},
		{"unknown tensor type", put32(typeAt, 31), ErrUnsupported, "unknown or unsupported type"},
		{"row not a block multiple", put64(dimsAt, 33), ErrCorrupt, "not a multiple"},
		{"too many dimensions", put32(firstTensor+8+nameLen, 5), ErrCorrupt, "dimensions"},
		{"misplaced tensor data", put64(typeAt+4, 32), ErrCorrupt, "at data offset"},
		{"truncated data", func(b []byte) []byte { return b[:len(b)-40] }, ErrCorrupt, "truncated"}, // more than the final padding
		{"empty file", func(b []byte) []byte { return b[:0] }, ErrCorrupt, "end of file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(bytes.Clone(good))
			_, err := readBytes(b)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.detail) {
				t.Fatalf("got %v, want %v mentioning %q", err, tc.kind, tc.detail)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("%v is not a *FormatError", err)
			}
		})
	}
}

// tensorInfoOffset finds where the tensor table starts by re-encoding the
// metadata section.
func tensorInfoOffset(t *testing.T, b []byte, f *File) int {
	t.Helper()
	var buf bytes.Buffer
	e := &encoder{w: &buf}
	for _, kv := range f.KV {
		e.str(kv.Key)
		if err := e.value(kv.Value); err != nil {
			t.Fatal(err)
		}
	}
	off := 24 + buf.Len()
	if got := string(b[off+8 : off+8+len(f.Tensors[0].Name)]); got != f.Tensors[0].Name {
		t.Fatalf("tensor table not at %d (found %q)", off, got)
	}
	return off
}

// TestReadEveryTruncation: every prefix of a valid file is an error, never a panic.
func TestReadEveryTruncation(t *testing.T) {
	good := microBytes(t, TypeF16)
	for n := 0; n < len(good); n += 1 + n/64 {
		if _, err := readBytes(good[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("prefix of %d bytes: got %v, want ErrCorrupt", n, err)
		}
	}
}

// TestReadMetadataRejects covers header corruptions built with the writer.
func TestReadMetadataRejects(t *testing.T) {
	header := func(kvs ...KV) []byte {
		var buf bytes.Buffer
		if err := Write(&buf, kvs, nil, nil); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	dup := header(KV{"a", uint32(1)}, KV{"b", uint32(2)})
	copy(dup[bytes.Index(dup, []byte("b")):], "a")
	nested := header(KV{"x", []uint32{1}})
	binary.LittleEndian.PutUint32(nested[24+8+1+4:], uint32(ValArray))
	// The writer refuses bad alignments: write another key, then rename it.
	alignment := func(v any) []byte {
		b := header(KV{"general.alignmenX", v})
		copy(b[bytes.Index(b, []byte("alignmenX")):], "alignment")
		return b
	}
	badBool := header(KV{"flag", true})
	badBool[bytes.Index(badBool, []byte("flag"))+4+4] = 7
	for _, tc := range []struct {
		name string
		b    []byte
		want string
	}{
		{"duplicate key", dup, "duplicate metadata key"},
		{"nested array", nested, "nested arrays"},
		{"alignment not u32", alignment(uint64(32)), "want uint32"},
		{"alignment not power of two", alignment(uint32(48)), "power of two"},
		{"bool not 0 or 1", badBool, "neither 0 nor 1"},
	} {
		if _, err := readBytes(tc.b); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error mentioning %q", tc.name, err, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	good := microBytes(t, TypeQ8_0)
	f, err := readBytes(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := Validate(f); err != nil {
		t.Fatalf("generated model does not validate: %v", err)
	}
	set := func(key string, v any) func(*File) {
		return func(f *File) {
			for i := range f.KV {
				if f.KV[i].Key == key {
					f.KV[i].Value = v
					return
				}
			}
			f.KV = append(f.KV, KV{key, v})
		}
	}
	drop := func(key string) func(*File) {
		return func(f *File) {
			for i := range f.KV {
				if f.KV[i].Key == key {
					f.KV = append(f.KV[:i], f.KV[i+1:]...)
					return
				}
			}
		}
	}
	for _, tc := range []struct {
		name   string
		mutate func(*File)
		kind   error
		want   string
	}{
		{"no architecture", drop("general.architecture"), ErrUnsupported, "general.architecture"},
		{"no tokenizer", drop("tokenizer.ggml.model"), ErrUnsupported, "no tokenizer"},
		{"tokens not strings", set("tokenizer.ggml.tokens", []int32{1}), ErrCorrupt, "tokenizer.ggml.tokens"},
		{"scores length", set("tokenizer.ggml.scores", []float32{1, 2}), ErrCorrupt, "scores has 2 entries"},
		{"bos out of range", set("tokenizer.ggml.bos_token_id", uint32(300)), ErrCorrupt, "bos_token_id"},
		{"heads do not divide", set("llama.attention.head_count_kv", uint32(3)), ErrCorrupt, "not a multiple"},
		{"no embedding length", drop("llama.embedding_length"), ErrCorrupt, "embedding_length"},
		{"wrong shape", set("llama.feed_forward_length", uint32(96)), ErrCorrupt, "ffn_gate.weight has shape"},
		{"missing tensor", func(f *File) { f.Tensors = f.Tensors[:len(f.Tensors)-2] }, ErrCorrupt, "output_norm.weight is missing"},
		{"odd rope", set("llama.rope.dimension_count", uint32(3)), ErrCorrupt, "rope.dimension_count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, _ := readBytes(good)
			tc.mutate(g)
			err := Validate(g)
			if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %v mentioning %q", err, tc.kind, tc.want)
			}
		})
	}
	// A -1 "none" special token is allowed.
	g, _ := readBytes(good)
	set("tokenizer.ggml.padding_token_id", int32(-1))(g)
	if err := Validate(g); err != nil {
		t.Fatalf("padding id -1 refused: %v", err)
	}
}

// FuzzRead: no input makes the reader or the validator panic, and every
// file the reader accepts survives a write/read round trip unchanged.
func FuzzRead(f *testing.F) {
	f.Add(microBytes(f, TypeQ8_0))
	f.Add(microBytes(f, TypeF16))
	f.Add([]byte("GGUF\x03\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := readBytes(b)
		if err != nil {
			if !IsInvalid(err) {
				t.Fatalf("error %v is neither corrupt nor unsupported", err)
			}
			return
		}
		_ = Validate(file)
		srcs := make([]TensorSource, len(file.Tensors))
		for i, ti := range file.Tensors {
			n := ti.Bytes()
			srcs[i] = TensorSource{Info: ti, Write: func(w io.Writer) error {
				_, err := w.Write(b[file.DataOffset+ti.Offset : file.DataOffset+ti.Offset+n])
				return err
			}}
		}
		var out bytes.Buffer
		if err := Write(&out, file.KV, srcs, nil); err != nil {
			t.Fatalf("rewriting an accepted file: %v", err)
		}
		again, err := readBytes(out.Bytes())
		if err != nil {
			t.Fatalf("rereading a rewritten file: %v", err)
		}
		// Compare encodings, not values: NaN metadata never equals itself.
		var out2 bytes.Buffer
		for i := range srcs {
			srcs[i].Info = again.Tensors[i]
		}
		if err := Write(&out2, again.KV, srcs, nil); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), out2.Bytes()) || !reflect.DeepEqual(again.Tensors, file.Tensors) {
			t.Fatal("round trip changed the file")
		}
	})
}
