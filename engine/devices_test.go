package engine

import (
	"errors"
	"math"
	"slices"
	"testing"
)

func TestCheckGPU(t *testing.T) {
	nan := float32(math.NaN())
	inf := float32(math.Inf(1))
	for _, tc := range []struct {
		name string
		gpus int
		opts ModelOptions
		ok   bool
	}{
		{"defaults without GPU", 0, ModelOptions{}, true},
		{"all layers without GPU (a warning, not an error)", 0, ModelOptions{GPULayers: -1}, true},
		{"main GPU 0 without GPU", 0, ModelOptions{MainGPU: 0, SplitMode: SplitNone}, true},
		{"main GPU 1 without GPU", 0, ModelOptions{MainGPU: 1}, false},
		{"split without GPU", 0, ModelOptions{TensorSplit: []float32{1}}, false},
		{"negative main GPU", 2, ModelOptions{MainGPU: -1}, false},
		{"main GPU in range", 2, ModelOptions{MainGPU: 1, SplitMode: SplitNone}, true},
		{"main GPU past the end", 2, ModelOptions{MainGPU: 2}, false},
		{"split over both", 2, ModelOptions{TensorSplit: []float32{3, 1}}, true},
		{"split over the first only", 2, ModelOptions{TensorSplit: []float32{1}}, true},
		{"one GPU left out", 2, ModelOptions{TensorSplit: []float32{0, 1}}, true},
		{"more entries than GPUs", 2, ModelOptions{TensorSplit: []float32{1, 1, 1}}, false},
		{"negative share", 2, ModelOptions{TensorSplit: []float32{1, -1}}, false},
		{"NaN share", 2, ModelOptions{TensorSplit: []float32{nan, 1}}, false},
		{"infinite share", 2, ModelOptions{TensorSplit: []float32{inf}}, false},
		{"all zero", 2, ModelOptions{TensorSplit: []float32{0, 0}}, false},
		{"unknown split mode", 2, ModelOptions{SplitMode: 7}, false},
		{"row split", 2, ModelOptions{SplitMode: SplitRow, MainGPU: 1, TensorSplit: []float32{1, 1}}, true},
	} {
		err := tc.opts.checkGPU(tc.gpus)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrGPUOptions) {
			t.Errorf("%s: %v, want ErrGPUOptions", tc.name, err)
		}
	}
}

func TestParseTensorSplitAndMode(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []float32
		ok   bool
	}{
		{"", nil, true},
		{"1", []float32{1}, true},
		{"3,1", []float32{3, 1}, true},
		{" 0.5 , 0.25,0.25", []float32{0.5, 0.25, 0.25}, true},
		{"1,,1", nil, false},
		{"1;1", nil, false},
		{"a", nil, false},
	} {
		got, err := ParseTensorSplit(tc.in)
		if (err == nil) != tc.ok || !slices.Equal(got, tc.want) {
			t.Errorf("ParseTensorSplit(%q) = %v, %v", tc.in, got, err)
		}
	}
	for _, name := range []string{"layer", "row", "none"} {
		m, err := ParseSplitMode(name)
		if err != nil || m.String() != name {
			t.Errorf("ParseSplitMode(%q) = %v, %v", name, m, err)
		}
	}
	if m, err := ParseSplitMode("LAYER"); err == nil {
		t.Errorf("ParseSplitMode(LAYER) = %v, want an error", m)
	}
	if m, _ := ParseSplitMode("layer"); m != SplitLayer || SplitLayer != 0 {
		t.Error("the zero split mode must be llama.cpp's default, layer")
	}
}

// FuzzParseTensorSplit: whatever an operator writes, parsing and checking
// never panic, and an accepted split has only finite shares >= 0.
func FuzzParseTensorSplit(f *testing.F) {
	for _, s := range []string{"", "1", "3,1", "NaN", "-0,1", "1e40", "+Inf,1", ",,"} {
		f.Add(s, 2)
	}
	f.Fuzz(func(t *testing.T, s string, gpus int) {
		gpus = min(max(gpus, 0), 16)
		split, err := ParseTensorSplit(s)
		if err != nil {
			return
		}
		if (ModelOptions{TensorSplit: split}).checkGPU(gpus) != nil {
			return
		}
		for _, v := range split {
			if v < 0 || math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("accepted %q: share %v", s, v)
			}
		}
	})
}
