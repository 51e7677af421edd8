package models

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// GPU layer settings beside a plain count (the value of --gpu-layers).
const (
	// GPULayersAll offloads every repeating layer and the output layer.
	GPULayersAll = -1
	// GPULayersAuto offloads as many layers as the GPUs' free memory holds
	// beside the KV cache and the compute buffers.
	GPULayersAuto = -2
)

// ParseGPULayers reads a --gpu-layers value: "auto", "all" (or -1, as
// llama-server spells it) or a count of layers, counted from the last as
// llama.cpp counts them (a count above the model's layers also offloads
// the output layer).
func ParseGPULayers(s string) (int, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "auto":
		return GPULayersAuto, nil
	case "all", "-1":
		return GPULayersAll, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("gpu layers %q: want auto, all, -1 (all) or a count >= 0", s)
	}
	return n, nil
}

// GPULayersString renders a setting as ParseGPULayers reads it.
func GPULayersString(n int) string {
	switch n {
	case GPULayersAuto:
		return "auto"
	case GPULayersAll:
		return "all"
	}
	return strconv.Itoa(n)
}

// kvCacheTypes are the KV cache types llama-server's --cache-type-k and
// --cache-type-v accept (common/arg.cpp, kv_cache_types), f16 first.
var kvCacheTypes = []TensorType{TypeF16, TypeF32, TypeBF16, TypeQ8_0, TypeQ4_0, TypeQ4_1, TypeIQ4_NL, TypeQ5_0, TypeQ5_1}

// ParseKVCacheType reads a KV cache type name; "" is f16, llama.cpp's default.
func ParseKVCacheType(s string) (TensorType, error) {
	if s == "" {
		return TypeF16, nil
	}
	t, err := ParseTensorType(s)
	if err != nil || !slices.Contains(kvCacheTypes, t) {
		names := make([]string, len(kvCacheTypes))
		for i, k := range kvCacheTypes {
			names[i] = k.String()
		}
		return 0, fmt.Errorf("KV cache type %q: want one of %s", s, strings.Join(names, ", "))
	}
	return t, nil
}

// Quantized reports whether t stores elements in blocks of more than one.
func (t TensorType) Quantized() bool { return t.BlockSize() > 1 }

// rowBytes is the size of n elements of type t (n a multiple of its block).
func (t TensorType) rowBytes(n int64) int64 { return n / t.BlockSize() * t.BlockBytes() }

// KVBytesPerCell is the KV cache size of one token in one layer with the
// given key and value types: llama.cpp keeps n_embd_k_gqa keys and
// n_embd_v_gqa values per layer and cell (llama-kv-cache.cpp).
func (s Summary) KVBytesPerCell(k, v TensorType) int64 {
	return k.rowBytes(s.HeadsKV*s.HeadDimK) + v.rowBytes(s.HeadsKV*s.HeadDimV)
}

// CheckKVCacheTypes refuses types whose blocks do not divide the model's
// head sizes, which llama.cpp refuses too (llama_init_from_model).
func (s Summary) CheckKVCacheTypes(k, v TensorType) error {
	if s.HeadDimK%k.BlockSize() != 0 {
		return fmt.Errorf("KV cache type %s: its blocks of %d do not divide the key head size %d", k, k.BlockSize(), s.HeadDimK)
	}
	if s.HeadDimV%v.BlockSize() != 0 {
		return fmt.Errorf("KV cache type %s: its blocks of %d do not divide the value head size %d", v, v.BlockSize(), s.HeadDimV)
	}
	return nil
}

// GPU is a device the planner may place layers on.
type GPU struct {
	Name      string
	FreeBytes int64
}

// PlanInput is what a placement is planned for.
type PlanInput struct {
	// GPULayers is a count, GPULayersAll or GPULayersAuto.
	GPULayers int
	GPUs      []GPU
	// Split gives each GPU's share (nil: by free memory, as llama.cpp).
	Split []float32
	// SplitMode is "layer" (default), "row" or "none" (all on MainGPU).
	SplitMode string
	MainGPU   int
	// Cells is the KV cache size in tokens (all sequences together).
	Cells        int64
	UBatch       int64
	TypeK, TypeV TensorType
	// Margin is left free on each GPU (default DefaultGPUMargin).
	Margin int64
}

// DefaultGPUMargin is the memory the planner leaves free on each GPU for
// what it does not model (CUDA context, cuBLAS workspace, fragmentation).
// llama.cpp's own fitting leaves 1 GiB by default (common/common.h,
// fit_params_target, December 2025).
const DefaultGPUMargin = 1 << 30

// DevicePlan is one GPU's share of a placement.
type DevicePlan struct {
	Name       string
	Layers     int  // repeating layers
	FirstLayer int  // the first of them (-1 with none)
	Output     bool // holds the output layer
	Weights    int64
	KV         int64
	Compute    int64 // compute buffer estimate
	Free       int64 // free memory before the load
	Margin     int64
}

// Headroom is what is left of the device's free memory after the plan and
// its margin; negative when the plan does not fit.
func (d DevicePlan) Headroom() int64 { return d.Free - d.Margin - d.Weights - d.KV - d.Compute }

// Plan is where a model's layers, KV cache and buffers go.
type Plan struct {
	Setting string // the setting planned for: auto, all or a count
	// NGPULayers is llama.cpp's n_gpu_layers for this plan: the last
	// NGPULayers layers go to the GPUs, the output layer counting as the
	// one after the last repeating layer.
	NGPULayers int
	Layers     int // the model's repeating layers
	Offloaded  int // repeating layers on GPUs
	Output     bool
	Devices    []DevicePlan
	CPUWeights int64 // weights left in host memory (the input layer always)
	CPUKV      int64
	KVBytes    int64 // the whole KV cache
}

// Fits reports whether every GPU keeps its margin.
func (p Plan) Fits() bool {
	for _, d := range p.Devices {
		if d.Headroom() < 0 {
			return false
		}
	}
	return true
}

// FullyOffloaded reports whether every layer and the output run on GPUs.
func (p Plan) FullyOffloaded() bool { return len(p.Devices) > 0 && p.Offloaded == p.Layers && p.Output }

// ErrKVDoesNotFit says that even the KV cache alone exceeds the GPUs'
// free memory: an automatic placement refuses rather than run a GPU host
// on the CPU.
var ErrKVDoesNotFit = errors.New("the KV cache does not fit the GPUs")

// layerBytes splits the tensor bytes into the input layer (token
// embeddings and anything outside a block), each repeating layer and the
// output layer, as llama.cpp assigns them to devices.
func layerBytes(f *File, layers int) (input int64, blocks []int64, output int64) {
	blocks = make([]int64, layers)
	var embd int64
	hasOutput := false
	for _, t := range f.Tensors {
		b := t.Bytes()
		switch {
		case strings.HasPrefix(t.Name, "blk."):
			rest := t.Name[len("blk."):]
			if i := strings.IndexByte(rest, '.'); i > 0 {
				if n, err := strconv.Atoi(rest[:i]); err == nil && n >= 0 && n < layers {
					blocks[n] += b
					continue
				}
			}
			input += b
		case t.Name == "output.weight":
			output += b
			hasOutput = true
		case strings.HasPrefix(t.Name, "output_norm."):
			output += b
		case t.Name == "token_embd.weight":
			embd = b
			input += b
		default:
			input += b
		}
	}
	if !hasOutput {
		// Tied embeddings: llama.cpp duplicates token_embd as the output
		// matrix so that the output layer can be offloaded.
		output += embd
	}
	return input, blocks, output
}

// PlanPlacement plans where llama.cpp puts the model's layers for the
// setting in in.GPULayers, mirroring llama_model::load_tensors: the last
// n layers go to the GPUs (the output layer is the (n_layer+1)th), spread
// over them by the cumulative split; the input layer stays on the CPU;
// each offloaded layer's KV cells live beside it. With GPULayersAuto it
// picks the largest count that keeps every GPU's margin, and fails with
// ErrKVDoesNotFit when the KV cache alone cannot fit.
func PlanPlacement(f *File, in PlanInput) (Plan, error) {
	s := Summarize("", f)
	n := int(s.Layers)
	if n <= 0 {
		return Plan{}, errors.New("placement: the model declares no layers")
	}
	if in.Margin == 0 {
		in.Margin = DefaultGPUMargin
	}
	if in.UBatch <= 0 {
		in.UBatch = 512
	}
	input, blocks, output := layerBytes(f, n)
	kvLayer := in.Cells * s.KVBytesPerCell(in.TypeK, in.TypeV)
	computeLayer := in.UBatch * (6*s.Embedding + 3*s.FeedForward) * 4
	computeOut := in.UBatch * s.VocabSize * 4

	devs := in.GPUs
	if strings.EqualFold(in.SplitMode, "none") && len(devs) > 0 {
		if in.MainGPU < 0 || in.MainGPU >= len(devs) {
			return Plan{}, fmt.Errorf("placement: main GPU %d of %d", in.MainGPU, len(devs))
		}
		devs = devs[in.MainGPU : in.MainGPU+1]
	}
	build := func(count int) Plan {
		p := Plan{Setting: GPULayersString(in.GPULayers), NGPULayers: count, Layers: n, KVBytes: int64(n) * kvLayer}
		p.CPUWeights = input
		if len(devs) == 0 {
			p.NGPULayers = 0
			p.CPUWeights += output
			for _, b := range blocks {
				p.CPUWeights += b
			}
			p.CPUKV = p.KVBytes
			return p
		}
		p.Devices = make([]DevicePlan, len(devs))
		for i, d := range devs {
			p.Devices[i] = DevicePlan{Name: d.Name, Free: d.FreeBytes, Margin: in.Margin, FirstLayer: -1}
		}
		splits := cumulativeSplits(devs, in.Split)
		start := max(n-count, 0)
		act := min(count, n+1)
		for il := 0; il <= n; il++ { // il == n: the output layer
			w, kv, comp := output, int64(0), computeOut
			if il < n {
				w, kv, comp = blocks[il], kvLayer, computeLayer
			}
			if il < start || il-start >= act {
				p.CPUWeights += w
				p.CPUKV += kv
				continue
			}
			// the device llama.cpp picks: upper_bound over the splits
			g := sort.Search(len(splits), func(j int) bool { return splits[j] > float32(il-start)/float32(act) })
			g = min(g, len(devs)-1)
			d := &p.Devices[g]
			d.Weights += w
			d.KV += kv
			d.Compute = max(d.Compute, comp)
			if il == n {
				d.Output, p.Output = true, true
				continue
			}
			if d.FirstLayer < 0 {
				d.FirstLayer = il
			}
			d.Layers++
			p.Offloaded++
		}
		return p
	}
	count := in.GPULayers
	switch {
	case count == GPULayersAll:
		count = n + 1
	case count == GPULayersAuto:
		if len(devs) == 0 {
			count = 0
			break
		}
		var room int64
		for _, d := range devs {
			room += max(0, d.FreeBytes-in.Margin-computeLayer)
		}
		if kv := int64(n) * kvLayer; kv > room {
			return build(0), fmt.Errorf("%w: %s of KV cache (%d cells of %s keys and %s values) against %s free on %d GPU(s) after margins and compute buffers: "+
				"lower --parallel or --ctx, use --cache-type-k/--cache-type-v q8_0, or --gpu-layers 0 to run on the CPU",
				ErrKVDoesNotFit, HumanBytes(kv), in.Cells, in.TypeK, in.TypeV, HumanBytes(room), len(devs))
		}
		count = n + 1
		for count > 0 && !build(count).Fits() {
			count--
		}
	case count < 0:
		return Plan{}, fmt.Errorf("placement: gpu layers %d", count)
	}
	return build(min(count, n+1)), nil
}

// cumulativeSplits are llama.cpp's split points: each GPU's share (by
// free memory without an explicit split), summed and normalized.
func cumulativeSplits(devs []GPU, split []float32) []float32 {
	out := make([]float32, len(devs))
	explicit := false
	for _, v := range split {
		explicit = explicit || v != 0
	}
	var sum float32
	for i, d := range devs {
		v := float32(d.FreeBytes)
		if explicit {
			v = 0
			if i < len(split) {
				v = split[i]
			}
		}
		sum += v
		out[i] = sum
	}
	for i := range out {
		if sum > 0 {
			out[i] /= sum
		}
	}
	return out
}

// Print writes the plan as a table.
func (p Plan) Print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "gpu layers %s\tn_gpu_layers %d: %d of %d layers on GPUs, output layer on %s\n",
		p.Setting, p.NGPULayers, p.Offloaded, p.Layers, map[bool]string{true: "GPU", false: "CPU"}[p.Output])
	fmt.Fprintf(tw, "  CPU\tweights %s, KV %s\n", HumanBytes(p.CPUWeights), HumanBytes(p.CPUKV))
	for _, d := range p.Devices {
		layers := "no layers"
		if d.Layers > 0 {
			layers = fmt.Sprintf("layers %d-%d", d.FirstLayer, d.FirstLayer+d.Layers-1)
		}
		if d.Output {
			layers += " + output"
		}
		fmt.Fprintf(tw, "  %s\t%s: weights %s, KV %s, compute ~%s; free %s, margin %s, headroom %s\n",
			d.Name, layers, HumanBytes(d.Weights), HumanBytes(d.KV), HumanBytes(d.Compute),
			HumanBytes(d.Free), HumanBytes(d.Margin), HumanBytes(d.Headroom()))
	}
	if !p.Fits() {
		fmt.Fprintf(tw, "  does not fit\ta GPU lacks memory for this plan: use --gpu-layers auto, or lower --parallel or --ctx\n")
	}
	return tw.Flush()
}
