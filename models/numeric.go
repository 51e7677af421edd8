package models

import (
	"encoding/binary"
	"math"
)

// Float32ToFloat16 converts to IEEE 754 binary16 with round-to-nearest-even,
// as ggml's GGML_FP32_TO_FP16 does (overflow goes to infinity, NaN stays NaN).
func Float32ToFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff

	switch {
	case exp == 0xff: // inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp > 142: // >= 2^16: overflow
		return sign | 0x7c00
	case exp >= 113: // normal half: exponent 1..30
		h := uint32(exp-112)<<10 | mant>>13
		rem := mant & 0x1fff
		if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
			h++ // may carry into the exponent, up to infinity: correct
		}
		return sign | uint16(h)
	case exp >= 102: // subnormal half
		m := mant | 0x800000
		shift := uint32(126 - exp) // 14..24
		h := m >> shift
		rem := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	return sign // underflow to signed zero
}

// Float16ToFloat32 converts IEEE 754 binary16 to float32 exactly.
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// subnormal: value = mant * 2^-24
		f := float32(mant) * (1.0 / (1 << 24))
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// q8Block is the size of one q8_0 block: an f16 scale and 32 int8 values.
const q8Block = 34

// QuantizeQ8_0 encodes x (a multiple of 32 values) as ggml's q8_0 blocks
// into dst, which must hold len(x)/32*34 bytes. It follows ggml's reference
// quantize_row_q8_0_ref: scale = max|x|/127, values rounded half away from zero.
func QuantizeQ8_0(dst []byte, x []float32) {
	for b := 0; b < len(x)/32; b++ {
		blk := x[b*32 : b*32+32]
		var amax float32
		for _, v := range blk {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		out := dst[b*q8Block : (b+1)*q8Block]
		binary.LittleEndian.PutUint16(out, Float32ToFloat16(d))
		for j, v := range blk {
			out[2+j] = byte(int8(math.Round(float64(v * id))))
		}
	}
}

// DequantizeQ8_0 decodes q8_0 blocks into dst (len(src)/34*32 values).
func DequantizeQ8_0(dst []float32, src []byte) {
	for b := 0; b < len(src)/q8Block; b++ {
		blk := src[b*q8Block : (b+1)*q8Block]
		d := Float16ToFloat32(binary.LittleEndian.Uint16(blk))
		for j := 0; j < 32; j++ {
			dst[b*32+j] = float32(int8(blk[2+j])) * d
		}
	}
}
