package models

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// presetFile is the header of a preset's model, without tensor data.
func presetFile(p Preset, typ TensorType, tied bool) *File {
	tokens := make([]string, p.Vocab)
	f := &File{KV: []KV{
		{"general.architecture", "llama"},
		{"llama.block_count", uint32(p.Layers)},
		{"llama.embedding_length", uint32(p.Embd)},
		{"llama.attention.head_count", uint32(p.Heads)},
		{"llama.attention.head_count_kv", uint32(p.HeadsKV)},
		{"llama.feed_forward_length", uint32(p.FF)},
		{"llama.context_length", uint32(p.Context)},
		{"tokenizer.ggml.tokens", tokens},
	}}
	for _, t := range p.tensors(typ) {
		if tied && t.Name == "output.weight" {
			continue
		}
		f.Tensors = append(f.Tensors, t)
	}
	return f
}

func TestParseGPULayers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		err  bool
	}{
		{"auto", GPULayersAuto, false}, {"AUTO", GPULayersAuto, false},
		{"all", GPULayersAll, false}, {"-1", GPULayersAll, false},
		{"0", 0, false}, {"41", 41, false}, {" 7 ", 7, false},
		{"-2", 0, true}, {"", 0, true}, {"half", 0, true}, {"1.5", 0, true},
	} {
		got, err := ParseGPULayers(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParseGPULayers(%q) = %d, %v; want %d, error %t", tc.in, got, err, tc.want, tc.err)
		}
		if !tc.err {
			if back, _ := ParseGPULayers(GPULayersString(got)); back != got {
				t.Errorf("GPULayersString(%d) = %q does not read back", got, GPULayersString(got))
			}
		}
	}
}

func TestKVCacheTypes(t *testing.T) {
	s := Summarize("", presetFile(Presets["13b"], TypeQ8_0, false))
	for _, tc := range []struct {
		in      string
		perCell int64 // one layer, one token, keys and values of that type
		err     bool
	}{
		// 13B: 40 KV heads of 128 = 5120 values each for K and V.
		{"", 2 * 5120 * 2, false}, {"f16", 2 * 5120 * 2, false}, {"f32", 2 * 5120 * 4, false},
		{"bf16", 2 * 5120 * 2, false}, {"q8_0", 2 * 5120 / 32 * 34, false}, {"q4_0", 2 * 5120 / 32 * 18, false},
		{"Q8_0", 2 * 5120 / 32 * 34, false},
		{"q4_K", 0, true}, {"q2_k", 0, true}, {"i8", 0, true}, {"int8", 0, true},
	} {
		typ, err := ParseKVCacheType(tc.in)
		if (err != nil) != tc.err {
			t.Errorf("ParseKVCacheType(%q): error %v, want error %t", tc.in, err, tc.err)
			continue
		}
		if tc.err {
			if !strings.Contains(err.Error(), "q8_0") {
				t.Errorf("ParseKVCacheType(%q): %v does not list the accepted types", tc.in, err)
			}
			continue
		}
		if got := s.KVBytesPerCell(typ, typ); got != tc.perCell {
			t.Errorf("KVBytesPerCell(%s) = %d, want %d", tc.in, got, tc.perCell)
		}
	}
	// DESIGN.md: 0.8 MB per token for the 13B shape in f16; 64 x 1024 tokens: 53 GB.
	if got := s.Layers * s.KVBytesPerCell(TypeF16, TypeF16) * 64 * 1024; got != 53_687_091_200 {
		t.Errorf("13B f16 KV cache for 64 x 1024 tokens = %d bytes, want 53687091200", got)
	}
	odd := Summary{HeadDimK: 48, HeadDimV: 64}
	if err := odd.CheckKVCacheTypes(TypeQ8_0, TypeF16); err == nil || !strings.Contains(err.Error(), "48") {
		t.Errorf("q8_0 keys with a head of 48: %v, want an error naming 48", err)
	}
	if err := odd.CheckKVCacheTypes(TypeF16, TypeQ4_0); err != nil {
		t.Errorf("q4_0 values with a head of 64: %v", err)
	}
}

const gib = int64(1) << 30

func TestPlanPlacement(t *testing.T) {
	p13 := Presets["13b"]
	f13 := presetFile(p13, TypeQ8_0, false)
	var total13 int64
	for _, tt := range f13.Tensors {
		total13 += tt.Bytes()
	}
	h200 := []GPU{{"CUDA0", 140 * gib}}
	cells := int64(64 * 1024)
	for _, tc := range []struct {
		name    string
		in      PlanInput
		n       int    // NGPULayers
		layers  []int  // repeating layers per device
		output  int    // device holding the output layer, -1: CPU
		err     error  // want errors.Is
		errText string // and a message containing
		maximal bool   // auto: one more layer would not fit
	}{
		{name: "all: every layer and the output", in: PlanInput{GPULayers: GPULayersAll, GPUs: h200, Cells: cells},
			n: 41, layers: []int{40}, output: 0},
		{name: "-1 is all (issue 17: -1 offloaded nothing)", in: PlanInput{GPULayers: mustLayers(t, "-1"), GPUs: h200, Cells: cells},
			n: 41, layers: []int{40}, output: 0},
		{name: "auto on an H200: 13B q8_0 and 64 x 1024 f16 KV fit", in: PlanInput{GPULayers: GPULayersAuto, GPUs: h200, Cells: cells},
			n: 41, layers: []int{40}, output: 0},
		{name: "auto without a GPU: CPU", in: PlanInput{GPULayers: GPULayersAuto, Cells: cells}, n: 0, output: -1},
		{name: "all without a GPU: CPU", in: PlanInput{GPULayers: GPULayersAll, Cells: cells}, n: 0, output: -1},
		{name: "auto: 53 GB of f16 KV on a 48 GiB GPU is refused", in: PlanInput{GPULayers: GPULayersAuto, GPUs: []GPU{{"CUDA0", 48 * gib}}, Cells: cells},
			err: ErrKVDoesNotFit, errText: "--parallel or --ctx"},
		{name: "auto: q8_0 KV on 36 GiB offloads what fits", in: PlanInput{GPULayers: GPULayersAuto, GPUs: []GPU{{"CUDA0", 36 * gib}}, Cells: cells, TypeK: TypeQ8_0, TypeV: TypeQ8_0},
			n: -1, maximal: true},
		{name: "a count: the last 10 layers", in: PlanInput{GPULayers: 10, GPUs: h200, Cells: cells},
			n: 10, layers: []int{10}, output: -1},
		{name: "40 of 40: the output stays on the CPU", in: PlanInput{GPULayers: 40, GPUs: h200, Cells: cells},
			n: 40, layers: []int{40}, output: -1},
		{name: "a count above the layers is all", in: PlanInput{GPULayers: 999, GPUs: h200, Cells: cells},
			n: 41, layers: []int{40}, output: 0},
		// llama.cpp: layer il goes to upper_bound(splits, il/41) with splits
		// {0.75, 1}: il/41 < 0.75 for il <= 30, so 31 layers, then 9 and the output.
		{name: "split 3,1 over two GPUs", in: PlanInput{GPULayers: GPULayersAll, GPUs: []GPU{{"CUDA0", 80 * gib}, {"CUDA1", 80 * gib}}, Split: []float32{3, 1}, Cells: cells},
			n: 41, layers: []int{31, 9}, output: 1},
		// By free memory: 60 and 20 GiB are 3,1 again.
		{name: "split by free memory", in: PlanInput{GPULayers: GPULayersAll, GPUs: []GPU{{"CUDA0", 60 * gib}, {"CUDA1", 20 * gib}}, Cells: 1024},
			n: 41, layers: []int{31, 9}, output: 1},
		{name: "split none: all on the main GPU", in: PlanInput{GPULayers: GPULayersAll, GPUs: []GPU{{"CUDA0", 80 * gib}, {"CUDA1", 80 * gib}}, SplitMode: "none", MainGPU: 1, Cells: 1024},
			n: 41, layers: []int{40}, output: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := PlanPlacement(f13, tc.in)
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("error %v, want %v naming %q", err, tc.err, tc.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.n >= 0 && p.NGPULayers != tc.n {
				t.Errorf("n_gpu_layers %d, want %d", p.NGPULayers, tc.n)
			}
			// Every byte is somewhere, once.
			var placed, kv int64 = p.CPUWeights, p.CPUKV
			for _, d := range p.Devices {
				placed += d.Weights
				kv += d.KV
			}
			if placed != total13 {
				t.Errorf("weights placed %d, the model has %d", placed, total13)
			}
			if kv != p.KVBytes || p.KVBytes != 40*tc.in.Cells*Summarize("", f13).KVBytesPerCell(tc.in.TypeK, tc.in.TypeV) {
				t.Errorf("KV placed %d of %d", kv, p.KVBytes)
			}
			if tc.maximal {
				if p.NGPULayers <= 0 || p.NGPULayers > 40 || !p.Fits() {
					t.Fatalf("auto gave %d layers, fits %t", p.NGPULayers, p.Fits())
				}
				in := tc.in
				in.GPULayers = p.NGPULayers + 1
				if more, _ := PlanPlacement(f13, in); more.Fits() {
					t.Errorf("auto stopped at %d layers, but %d fit", p.NGPULayers, in.GPULayers)
				}
				return
			}
			if tc.layers != nil {
				var got []int
				for _, d := range p.Devices {
					got = append(got, d.Layers)
				}
				if !equalInts(got[:len(tc.layers)], tc.layers) {
					t.Errorf("layers per device %v, want %v", got, tc.layers)
				}
			}
			out := -1
			for i, d := range p.Devices {
				if d.Output {
					out = i
				}
			}
			if tc.in.SplitMode == "none" && out == 0 && p.Devices[0].Name != "CUDA1" {
				t.Errorf("split none placed on %s, want the main GPU CUDA1", p.Devices[0].Name)
			}
			if out != tc.output {
				t.Errorf("output layer on device %d, want %d", out, tc.output)
			}
			// The offloaded layers are the last ones, as llama.cpp counts.
			if p.Offloaded > 0 && p.Devices[0].FirstLayer != 40-p.Offloaded {
				t.Errorf("first offloaded layer %d, want %d", p.Devices[0].FirstLayer, 40-p.Offloaded)
			}
			var buf bytes.Buffer
			if err := p.Print(&buf); err != nil || !strings.Contains(buf.String(), "n_gpu_layers") {
				t.Errorf("Print: %v\n%s", err, buf.String())
			}
		})
	}
}

// Tied embeddings: llama.cpp offloads a copy of token_embd as the output.
func TestPlanTiedOutput(t *testing.T) {
	f := presetFile(Presets["tiny"], TypeQ8_0, true)
	p, err := PlanPlacement(f, PlanInput{GPULayers: GPULayersAll, GPUs: []GPU{{"GPU0", 8 * gib}}, Cells: 512})
	if err != nil {
		t.Fatal(err)
	}
	embd, _ := f.Tensor("token_embd.weight")
	norm, _ := f.Tensor("output_norm.weight")
	var blocks int64
	for _, tt := range f.Tensors {
		if strings.HasPrefix(tt.Name, "blk.") {
			blocks += tt.Bytes()
		}
	}
	if d := p.Devices[0]; d.Weights != blocks+embd.Bytes()+norm.Bytes() || p.CPUWeights != embd.Bytes() {
		t.Errorf("GPU weights %d (want %d), CPU %d (want %d)", d.Weights, blocks+embd.Bytes()+norm.Bytes(), p.CPUWeights, embd.Bytes())
	}
}

func mustLayers(t *testing.T, s string) int {
	n, err := ParseGPULayers(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
