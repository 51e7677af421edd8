// Package models reads, validates, inspects and generates GGUF model files.
//
// Every model finserve loads passes through Read and Validate before
// llama.cpp sees it: a truncated, corrupt or unsupported file is an error
// here, with the byte offset and the reason, never a crash in C. The package
// also writes synthetic llama-architecture models with seeded random weights
// for tests and benchmarks (see Generate). It has no cgo.
package models

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"unicode/utf8"
)

// Sentinel errors; every error from Read wraps one of them.
var (
	// ErrCorrupt means the file is damaged: truncated, inconsistent or not GGUF.
	ErrCorrupt = errors.New("corrupt or truncated GGUF file")
	// ErrUnsupported means the file is well-formed but uses something
	// finserve does not load (a GGUF version, a tensor type, a limit).
	ErrUnsupported = errors.New("unsupported GGUF file")
)

// FormatError says where in a file reading failed and why.
type FormatError struct {
	Offset int64  // byte offset in the file
	Kind   error  // ErrCorrupt or ErrUnsupported
	Detail string // human-readable reason
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%v at byte %d: %s", e.Kind, e.Offset, e.Detail)
}

func (e *FormatError) Unwrap() error { return e.Kind }

// Limits that keep a hostile header from exhausting memory. Real models are
// far below them (tens of keys, hundreds to a few thousand tensors).
const (
	maxKVs        = 1 << 16
	maxTensors    = 1 << 20
	maxStringLen  = 64 << 20
	maxTensorName = 63 // ggml's GGML_MAX_NAME is 64 including the NUL
	maxDims       = 4  // GGML_MAX_DIMS
	maxAlignment  = 1 << 16

	// DefaultAlignment is the tensor data alignment when general.alignment is absent.
	DefaultAlignment = 32
)

const ggufMagic = 0x46554747 // "GGUF" little-endian

// ValueType is the type tag of a GGUF metadata value.
type ValueType uint32

// GGUF metadata value types (the format's gguf_type).
const (
	ValUint8   ValueType = 0
	ValInt8    ValueType = 1
	ValUint16  ValueType = 2
	ValInt16   ValueType = 3
	ValUint32  ValueType = 4
	ValInt32   ValueType = 5
	ValFloat32 ValueType = 6
	ValBool    ValueType = 7
	ValString  ValueType = 8
	ValArray   ValueType = 9
	ValUint64  ValueType = 10
	ValInt64   ValueType = 11
	ValFloat64 ValueType = 12
)

// KV is one metadata entry. Value holds a Go value of the matching type:
// uint8, int8, uint16, int16, uint32, int32, float32, bool, string, uint64,
// int64, float64, or a slice of one of them for arrays.
type KV struct {
	Key   string
	Value any
}

// TensorInfo is one entry of the tensor table.
type TensorInfo struct {
	Name string
	Type TensorType
	// Dims are ggml's ne[], innermost first: a weight matrix of a layer that
	// maps n_in to n_out is {n_in, n_out}.
	Dims []int64
	// Offset of the tensor's data from the start of the data section.
	Offset int64
}

// Elements is the number of elements in the tensor.
func (t TensorInfo) Elements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// Bytes is the size of the tensor's data, without alignment padding.
func (t TensorInfo) Bytes() int64 {
	return t.Elements() / t.Type.BlockSize() * t.Type.BlockBytes()
}

// File is the parsed header of a GGUF file: its metadata and tensor table.
// Tensor data is not read.
type File struct {
	Version    uint32
	KV         []KV
	Tensors    []TensorInfo
	Alignment  int64
	DataOffset int64 // file offset where the tensor data section starts
	Size       int64 // file length in bytes
}

// ReadFile opens path and reads its GGUF header; see Read.
func ReadFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening model: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening model: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("opening model: %s is not a regular file", path)
	}
	return Read(f, st.Size())
}

// Read parses the GGUF header in r, whose length is size, and checks the
// tensor table against the file length the way ggml's loader will, so that
// a file that passes is one ggml parses without error.
func Read(r io.ReaderAt, size int64) (*File, error) {
	d := &decoder{r: bufio.NewReaderSize(io.NewSectionReader(r, 0, size), 1<<16), size: size}
	f := &File{Size: size, Alignment: DefaultAlignment}

	if magic := d.u32(); d.err == nil && magic != ggufMagic {
		return nil, d.fail(0, ErrCorrupt, "not a GGUF file (bad magic)")
	}
	f.Version = d.u32()
	if d.err == nil && (f.Version < 2 || f.Version > 3) {
		return nil, d.fail(4, ErrUnsupported, fmt.Sprintf("GGUF version %d (finserve reads versions 2 and 3)", f.Version))
	}
	nTensors := d.u64()
	nKV := d.u64()
	if d.err != nil {
		return nil, d.err
	}
	if nKV > maxKVs {
		return nil, d.fail(16, ErrUnsupported, fmt.Sprintf("%d metadata entries (limit %d)", nKV, maxKVs))
	}
	if nTensors > maxTensors {
		return nil, d.fail(8, ErrUnsupported, fmt.Sprintf("%d tensors (limit %d)", nTensors, maxTensors))
	}
	// Each entry takes at least 13 bytes and each tensor info at least 32:
	// a count the file cannot hold is corruption, found before allocating.
	if min := nKV*13 + nTensors*32; min > uint64(d.remaining()) {
		return nil, d.fail(d.off, ErrCorrupt, fmt.Sprintf("header declares %d entries and %d tensors, more than the file holds", nKV, nTensors))
	}

	f.KV = make([]KV, 0, nKV)
	seen := make(map[string]bool, nKV)
	for i := uint64(0); i < nKV; i++ {
		at := d.off
		key := d.str()
		if d.err != nil {
			return nil, d.err
		}
		if key == "" || !utf8.ValidString(key) {
			return nil, d.fail(at, ErrCorrupt, fmt.Sprintf("metadata key %d is empty or not UTF-8", i))
		}
		if seen[key] {
			return nil, d.fail(at, ErrCorrupt, fmt.Sprintf("duplicate metadata key %q", key))
		}
		seen[key] = true
		v := d.value(key)
		if d.err != nil {
			return nil, d.err
		}
		f.KV = append(f.KV, KV{Key: key, Value: v})
		if key == "general.alignment" {
			a, ok := v.(uint32)
			if !ok {
				return nil, d.fail(at, ErrCorrupt, fmt.Sprintf("general.alignment has type %T, want uint32", v))
			}
			if a == 0 || a&(a-1) != 0 {
				return nil, d.fail(at, ErrCorrupt, fmt.Sprintf("general.alignment %d is not a power of two", a))
			}
			if a > maxAlignment {
				return nil, d.fail(at, ErrUnsupported, fmt.Sprintf("general.alignment %d is above %d", a, maxAlignment))
			}
			f.Alignment = int64(a)
		}
	}

	f.Tensors = make([]TensorInfo, 0, nTensors)
	names := make(map[string]bool, nTensors)
	for i := uint64(0); i < nTensors; i++ {
		at := d.off
		t, err := d.tensorInfo(at)
		if err != nil {
			return nil, err
		}
		if names[t.Name] {
			return nil, d.fail(at, ErrCorrupt, fmt.Sprintf("duplicate tensor name %q", t.Name))
		}
		names[t.Name] = true
		f.Tensors = append(f.Tensors, t)
	}

	f.DataOffset = alignUp(d.off, f.Alignment)
	// ggml requires tensors to be laid out in table order, each at the
	// aligned end of the one before; check that and the file length.
	next := int64(0)
	for _, t := range f.Tensors {
		if t.Offset != next {
			return nil, d.fail(f.DataOffset+t.Offset, ErrCorrupt, fmt.Sprintf("tensor %q at data offset %d, want %d", t.Name, t.Offset, next))
		}
		end := f.DataOffset + t.Offset + t.Bytes()
		if end > size || end < 0 {
			return nil, d.fail(size, ErrCorrupt, fmt.Sprintf("tensor %q needs bytes up to %d but the file has %d (truncated?)", t.Name, end, size))
		}
		next = alignUp(t.Offset+t.Bytes(), f.Alignment)
	}
	return f, nil
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// decoder reads little-endian GGUF primitives, remembering the first error.
type decoder struct {
	r    *bufio.Reader
	off  int64
	size int64
	err  error
	buf  [8]byte
}

func (d *decoder) remaining() int64 { return d.size - d.off }

func (d *decoder) fail(off int64, kind error, detail string) error {
	if d.err == nil {
		d.err = &FormatError{Offset: off, Kind: kind, Detail: detail}
	}
	return d.err
}

func (d *decoder) read(n int) []byte {
	if d.err != nil {
		return d.buf[:n]
	}
	if _, err := io.ReadFull(d.r, d.buf[:n]); err != nil {
		d.fail(d.off, ErrCorrupt, "unexpected end of file")
		return d.buf[:n]
	}
	d.off += int64(n)
	return d.buf[:n]
}

func (d *decoder) u8() uint8   { return d.read(1)[0] }
func (d *decoder) u16() uint16 { return binary.LittleEndian.Uint16(d.read(2)) }
func (d *decoder) u32() uint32 { return binary.LittleEndian.Uint32(d.read(4)) }
func (d *decoder) u64() uint64 { return binary.LittleEndian.Uint64(d.read(8)) }

func (d *decoder) str() string {
	at := d.off
	n := d.u64()
	if d.err != nil {
		return ""
	}
	if n > maxStringLen {
		d.fail(at, ErrUnsupported, fmt.Sprintf("string of %d bytes (limit %d)", n, maxStringLen))
		return ""
	}
	if int64(n) > d.remaining() {
		d.fail(at, ErrCorrupt, fmt.Sprintf("string of %d bytes runs past the end of the file", n))
		return ""
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(d.r, b); err != nil {
		d.fail(d.off, ErrCorrupt, "unexpected end of file")
		return ""
	}
	d.off += int64(n)
	return string(b)
}

func (d *decoder) boolean() bool {
	at := d.off
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail(at, ErrCorrupt, "boolean is neither 0 nor 1")
	return false
}

// minSize is the smallest encoding of one value of type t, used to reject
// array lengths the rest of the file cannot hold.
func minSize(t ValueType) int64 {
	switch t {
	case ValUint8, ValInt8, ValBool:
		return 1
	case ValUint16, ValInt16:
		return 2
	case ValUint32, ValInt32, ValFloat32:
		return 4
	default:
		return 8
	}
}

func (d *decoder) value(key string) any {
	at := d.off
	t := ValueType(d.u32())
	if d.err != nil {
		return nil
	}
	if t != ValArray {
		return d.scalar(t, key, at)
	}
	et := ValueType(d.u32())
	n := d.u64()
	if d.err != nil {
		return nil
	}
	if et == ValArray {
		d.fail(at, ErrUnsupported, fmt.Sprintf("key %q: nested arrays", key))
		return nil
	}
	if et > ValFloat64 {
		d.fail(at, ErrCorrupt, fmt.Sprintf("key %q: invalid array element type %d", key, et))
		return nil
	}
	if n > uint64(d.remaining()/minSize(et)) {
		d.fail(at, ErrCorrupt, fmt.Sprintf("key %q: array of %d elements runs past the end of the file", key, n))
		return nil
	}
	return d.array(et, int(n), key, at)
}

func (d *decoder) scalar(t ValueType, key string, at int64) any {
	switch t {
	case ValUint8:
		return d.u8()
	case ValInt8:
		return int8(d.u8())
	case ValUint16:
		return d.u16()
	case ValInt16:
		return int16(d.u16())
	case ValUint32:
		return d.u32()
	case ValInt32:
		return int32(d.u32())
	case ValFloat32:
		return math.Float32frombits(d.u32())
	case ValBool:
		return d.boolean()
	case ValString:
		return d.str()
	case ValUint64:
		return d.u64()
	case ValInt64:
		return int64(d.u64())
	case ValFloat64:
		return math.Float64frombits(d.u64())
	}
	d.fail(at, ErrCorrupt, fmt.Sprintf("key %q: invalid value type %d", key, t))
	return nil
}

func (d *decoder) array(et ValueType, n int, key string, at int64) any {
	switch et {
	case ValUint8:
		return readSlice(d, n, d.u8)
	case ValInt8:
		return readSlice(d, n, func() int8 { return int8(d.u8()) })
	case ValUint16:
		return readSlice(d, n, d.u16)
	case ValInt16:
		return readSlice(d, n, func() int16 { return int16(d.u16()) })
	case ValUint32:
		return readSlice(d, n, d.u32)
	case ValInt32:
		return readSlice(d, n, func() int32 { return int32(d.u32()) })
	case ValFloat32:
		return readSlice(d, n, func() float32 { return math.Float32frombits(d.u32()) })
	case ValBool:
		return readSlice(d, n, d.boolean)
	case ValString:
		return readSlice(d, n, d.str)
	case ValUint64:
		return readSlice(d, n, d.u64)
	case ValInt64:
		return readSlice(d, n, func() int64 { return int64(d.u64()) })
	case ValFloat64:
		return readSlice(d, n, func() float64 { return math.Float64frombits(d.u64()) })
	}
	d.fail(at, ErrCorrupt, fmt.Sprintf("key %q: invalid array element type %d", key, et))
	return nil
}

func readSlice[T any](d *decoder, n int, next func() T) []T {
	s := make([]T, n)
	for i := range s {
		s[i] = next()
		if d.err != nil {
			return nil
		}
	}
	return s
}

func (d *decoder) tensorInfo(at int64) (TensorInfo, error) {
	var t TensorInfo
	t.Name = d.str()
	nDims := d.u32()
	if d.err != nil {
		return t, d.err
	}
	if len(t.Name) == 0 || len(t.Name) > maxTensorName || !utf8.ValidString(t.Name) {
		return t, d.fail(at, ErrCorrupt, fmt.Sprintf("tensor name %q is empty, longer than %d bytes or not UTF-8", t.Name, maxTensorName))
	}
	if nDims == 0 || nDims > maxDims {
		return t, d.fail(at, ErrCorrupt, fmt.Sprintf("tensor %q has %d dimensions (want 1 to %d)", t.Name, nDims, maxDims))
	}
	t.Dims = make([]int64, nDims)
	elems := int64(1)
	for i := range t.Dims {
		v := d.u64()
		if d.err != nil {
			return t, d.err
		}
		// ggml divides by these; zero or a product past int64 crashes it.
		if v == 0 || v > math.MaxInt64 || elems > math.MaxInt64/int64(v) {
			return t, d.fail(at, ErrCorrupt, fmt.Sprintf("tensor %q has an invalid shape (dimension %d is %d)", t.Name, i, v))
		}
		t.Dims[i] = int64(v)
		elems *= int64(v)
	}
	t.Type = TensorType(d.u32())
	off := d.u64()
	if d.err != nil {
		return t, d.err
	}
	if !t.Type.Known() {
		return t, d.fail(at, ErrUnsupported, fmt.Sprintf("tensor %q has unknown or unsupported type %d", t.Name, uint32(t.Type)))
	}
	if t.Dims[0]%t.Type.BlockSize() != 0 {
		return t, d.fail(at, ErrCorrupt, fmt.Sprintf("tensor %q: row of %d elements is not a multiple of the %s block size %d", t.Name, t.Dims[0], t.Type, t.Type.BlockSize()))
	}
	if elems/t.Type.BlockSize() > math.MaxInt64/t.Type.BlockBytes() {
		return t, d.fail(at, ErrCorrupt, fmt.Sprintf("tensor %q is too large", t.Name))
	}
	if off > math.MaxInt64/2 {
		return t, d.fail(at, ErrCorrupt, fmt.Sprintf("tensor %q has data offset %d", t.Name, off))
	}
	t.Offset = int64(off)
	return t, nil
}

// Lookup returns the value of key and whether it is present.
func (f *File) Lookup(key string) (any, bool) {
	for _, kv := range f.KV {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}

// String returns the string value of key; false if absent or not a string.
func (f *File) String(key string) (string, bool) {
	v, _ := f.Lookup(key)
	s, ok := v.(string)
	return s, ok
}

// Int returns an integer value of key of any integer type; false if
// absent, not an integer, or not representable as int64.
func (f *File) Int(key string) (int64, bool) {
	v, _ := f.Lookup(key)
	switch x := v.(type) {
	case uint8:
		return int64(x), true
	case int8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case int16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case int32:
		return int64(x), true
	case uint64:
		if x > math.MaxInt64 {
			return 0, false
		}
		return int64(x), true
	case int64:
		return x, true
	}
	return 0, false
}

// Float returns a floating-point value of key; false if absent or not a float.
func (f *File) Float(key string) (float64, bool) {
	v, _ := f.Lookup(key)
	switch x := v.(type) {
	case float32:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// Tensor returns the tensor named name.
func (f *File) Tensor(name string) (TensorInfo, bool) {
	for _, t := range f.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return TensorInfo{}, false
}

// Architecture is the value of general.architecture, or "" if absent.
func (f *File) Architecture() string {
	s, _ := f.String("general.architecture")
	return s
}
