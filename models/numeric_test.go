package models

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestFloat16RoundTripsEveryValue(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := Float16ToFloat32(uint16(h))
		back := Float32ToFloat16(f)
		if math.IsNaN(float64(f)) {
			if back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back != uint16(h) {
			t.Fatalf("%#04x -> %g -> %#04x", h, f, back)
		}
	}
}

func TestFloat32ToFloat16Rounding(t *testing.T) {
	for _, tc := range []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00}, {-2, 0xc000}, {0, 0}, {float32(math.Copysign(0, -1)), 0x8000},
		{65504, 0x7bff}, {65519, 0x7bff}, {65520, 0x7c00}, {1e9, 0x7c00},
		{float32(math.Inf(-1)), 0xfc00},
		{1 + 1.0/2048, 0x3c00},    // tie, to even
		{1 + 3.0/2048, 0x3c02},    // tie, to even (up)
		{1.0 / (1 << 24), 0x0001}, // smallest subnormal
		{1.0 / (1 << 25), 0x0000}, // half of it: tie to even (zero)
		{3.0 / (1 << 25), 0x0002}, // 1.5 subnormal units: to even
		{6.1035156e-05, 0x0400},   // smallest normal
		{6.097555e-05, 0x03ff},    // largest subnormal
	} {
		if got := Float32ToFloat16(tc.in); got != tc.want {
			t.Errorf("Float32ToFloat16(%g) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
}

// TestFloat32ToFloat16IsNearest checks random values against their f16
// neighbours: the result is never farther than either.
func TestFloat32ToFloat16IsNearest(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	for i := 0; i < 200000; i++ {
		x := float32(rng.NormFloat64() * math.Pow(2, float64(rng.IntN(40)-25)))
		h := Float32ToFloat16(x)
		if h&0x7c00 == 0x7c00 {
			continue // overflow to infinity
		}
		d := math.Abs(float64(x - Float16ToFloat32(h)))
		for _, n := range []uint16{h - 1, h + 1} {
			if n&0x7c00 == 0x7c00 || (n^h)&0x8000 != 0 {
				continue
			}
			if dn := math.Abs(float64(x - Float16ToFloat32(n))); dn < d {
				t.Fatalf("%g rounded to %#04x (off by %g) but %#04x is off by %g", x, h, d, n, dn)
			}
		}
	}
}

func TestQuantizeQ8_0(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	x := make([]float32, 32*64)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	x[5] = 0 // a zero inside a block
	for i := 32; i < 64; i++ {
		x[i] = 0 // an all-zero block
	}
	q := make([]byte, len(x)/32*34)
	QuantizeQ8_0(q, x)
	y := make([]float32, len(x))
	DequantizeQ8_0(y, q)
	for b := 0; b < len(x)/32; b++ {
		amax := 0.0
		for _, v := range x[b*32 : b*32+32] {
			amax = math.Max(amax, math.Abs(float64(v)))
		}
		d := float64(Float16ToFloat32(Float32ToFloat16(float32(amax / 127))))
		for j := b * 32; j < b*32+32; j++ {
			if err := math.Abs(float64(x[j] - y[j])); err > d/2+1e-6+amax*1e-3 {
				t.Fatalf("element %d: %g became %g (scale %g)", j, x[j], y[j], d)
			}
		}
	}
	if y[5] != 0 || y[40] != 0 {
		t.Fatal("zeros not preserved")
	}
}
