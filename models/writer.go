package models

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// TensorSource is a tensor to write: its table entry (Offset is computed by
// Write) and a function that writes exactly Info.Bytes() bytes of data.
type TensorSource struct {
	Info  TensorInfo
	Write func(w io.Writer) error
}

// Progress is called as a long write advances: done of total bytes.
type Progress func(done, total int64)

// Write encodes a GGUF version 3 file: the metadata in order, the tensor
// table with offsets laid out as ggml expects, then each tensor's data,
// streamed from its source so that no model has to fit in memory.
func Write(w io.Writer, kvs []KV, tensors []TensorSource, progress Progress) error {
	align := int64(DefaultAlignment)
	for _, kv := range kvs {
		if kv.Key == "general.alignment" {
			a, ok := kv.Value.(uint32)
			if !ok || a == 0 || a&(a-1) != 0 {
				return fmt.Errorf("writing gguf: general.alignment must be a uint32 power of two, got %v", kv.Value)
			}
			align = int64(a)
		}
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	e := &encoder{w: bw}
	e.u32(ggufMagic)
	e.u32(3)
	e.u64(uint64(len(tensors)))
	e.u64(uint64(len(kvs)))
	for _, kv := range kvs {
		e.str(kv.Key)
		if err := e.value(kv.Value); err != nil {
			return fmt.Errorf("writing gguf key %q: %w", kv.Key, err)
		}
	}
	var off, total int64
	for i := range tensors {
		t := &tensors[i].Info
		if !t.Type.Known() || len(t.Dims) == 0 || len(t.Dims) > maxDims || t.Dims[0]%t.Type.BlockSize() != 0 {
			return fmt.Errorf("writing gguf: tensor %q has an invalid type or shape", t.Name)
		}
		t.Offset = off
		e.str(t.Name)
		e.u32(uint32(len(t.Dims)))
		for _, d := range t.Dims {
			e.u64(uint64(d))
		}
		e.u32(uint32(t.Type))
		e.u64(uint64(off))
		off = alignUp(off+t.Bytes(), align)
		total += t.Bytes()
	}
	e.pad(align)
	if e.err != nil {
		return fmt.Errorf("writing gguf header: %w", e.err)
	}

	var done int64
	for _, src := range tensors {
		cw := &countingWriter{w: bw}
		if err := src.Write(cw); err != nil {
			return fmt.Errorf("writing tensor %q: %w", src.Info.Name, err)
		}
		if cw.n != src.Info.Bytes() {
			return fmt.Errorf("writing tensor %q: wrote %d bytes, want %d", src.Info.Name, cw.n, src.Info.Bytes())
		}
		e.n += cw.n
		e.pad(align)
		if e.err != nil {
			return fmt.Errorf("writing tensor %q: %w", src.Info.Name, e.err)
		}
		done += cw.n
		if progress != nil {
			progress(done, total)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("writing gguf: %w", err)
	}
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

type encoder struct {
	w   io.Writer
	n   int64
	err error
	buf [8]byte
}

func (e *encoder) write(p []byte) {
	if e.err != nil {
		return
	}
	n, err := e.w.Write(p)
	e.n += int64(n)
	e.err = err
}

func (e *encoder) u8(v uint8)   { e.buf[0] = v; e.write(e.buf[:1]) }
func (e *encoder) u16(v uint16) { binary.LittleEndian.PutUint16(e.buf[:], v); e.write(e.buf[:2]) }
func (e *encoder) u32(v uint32) { binary.LittleEndian.PutUint32(e.buf[:], v); e.write(e.buf[:4]) }
func (e *encoder) u64(v uint64) { binary.LittleEndian.PutUint64(e.buf[:], v); e.write(e.buf[:8]) }
func (e *encoder) str(s string) { e.u64(uint64(len(s))); e.write([]byte(s)) }

func (e *encoder) boolean(b bool) {
	if b {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

func (e *encoder) pad(align int64) {
	var zero [64]byte
	for rem := alignUp(e.n, align) - e.n; rem > 0 && e.err == nil; {
		k := min(rem, int64(len(zero)))
		e.write(zero[:k])
		rem -= k
	}
}

func (e *encoder) value(v any) error {
	switch x := v.(type) {
	case uint8:
		e.u32(uint32(ValUint8))
		e.u8(x)
	case int8:
		e.u32(uint32(ValInt8))
		e.u8(uint8(x))
	case uint16:
		e.u32(uint32(ValUint16))
		e.u16(x)
	case int16:
		e.u32(uint32(ValInt16))
		e.u16(uint16(x))
	case uint32:
		e.u32(uint32(ValUint32))
		e.u32(x)
	case int32:
		e.u32(uint32(ValInt32))
		e.u32(uint32(x))
	case float32:
		e.u32(uint32(ValFloat32))
		e.u32(math.Float32bits(x))
	case bool:
		e.u32(uint32(ValBool))
		e.boolean(x)
	case string:
		e.u32(uint32(ValString))
		e.str(x)
	case uint64:
		e.u32(uint32(ValUint64))
		e.u64(x)
	case int64:
		e.u32(uint32(ValInt64))
		e.u64(uint64(x))
	case float64:
		e.u32(uint32(ValFloat64))
		e.u64(math.Float64bits(x))
	case []uint8:
		writeArray(e, ValUint8, x, e.u8)
	case []int8:
		writeArray(e, ValInt8, x, func(v int8) { e.u8(uint8(v)) })
	case []uint16:
		writeArray(e, ValUint16, x, e.u16)
	case []int16:
		writeArray(e, ValInt16, x, func(v int16) { e.u16(uint16(v)) })
	case []uint32:
		writeArray(e, ValUint32, x, e.u32)
	case []int32:
		writeArray(e, ValInt32, x, func(v int32) { e.u32(uint32(v)) })
	case []float32:
		writeArray(e, ValFloat32, x, func(v float32) { e.u32(math.Float32bits(v)) })
	case []bool:
		writeArray(e, ValBool, x, e.boolean)
	case []string:
		writeArray(e, ValString, x, e.str)
	case []uint64:
		writeArray(e, ValUint64, x, e.u64)
	case []int64:
		writeArray(e, ValInt64, x, func(v int64) { e.u64(uint64(v)) })
	case []float64:
		writeArray(e, ValFloat64, x, func(v float64) { e.u64(math.Float64bits(v)) })
	default:
		return fmt.Errorf("unsupported metadata value type %T", v)
	}
	return nil
}

func writeArray[T any](e *encoder, t ValueType, s []T, put func(T)) {
	e.u32(uint32(ValArray))
	e.u32(uint32(t))
	e.u64(uint64(len(s)))
	for _, v := range s {
		put(v)
	}
}
