package engine

// #include <stdlib.h>
// #include <llama.h>
// #include <ggml-backend.h>
import "C"

import (
	"errors"
	"fmt"
	"math"
	"runtime/debug"
	"strconv"
	"strings"
	"unsafe"
)

// Device is a compute device of the ggml backends this binary loaded: the
// CPU always, GPUs where the llama.cpp provider has a GPU backend (the
// system provider built with CUDA=1 by scripts/build-llama.sh) and the
// driver finds them.
type Device struct {
	Name        string // backend's name, e.g. "CPU", "CUDA0"
	Description string // e.g. the GPU model
	Kind        string // "cpu", "gpu", "igpu" or "accel"
	FreeBytes   uint64
	TotalBytes  uint64
}

// Devices lists the devices in ggml's registry order.
func Devices() []Device {
	initBackend()
	n := int(C.ggml_backend_dev_count())
	out := make([]Device, 0, n)
	for i := 0; i < n; i++ {
		dev := C.ggml_backend_dev_get(C.size_t(i))
		var free, total C.size_t
		C.ggml_backend_dev_memory(dev, &free, &total)
		d := Device{
			Name:        C.GoString(C.ggml_backend_dev_name(dev)),
			Description: C.GoString(C.ggml_backend_dev_description(dev)),
			FreeBytes:   uint64(free),
			TotalBytes:  uint64(total),
		}
		switch C.ggml_backend_dev_type(dev) {
		case C.GGML_BACKEND_DEVICE_TYPE_CPU:
			d.Kind = "cpu"
		case C.GGML_BACKEND_DEVICE_TYPE_GPU:
			d.Kind = "gpu"
		case C.GGML_BACKEND_DEVICE_TYPE_IGPU:
			d.Kind = "igpu"
		default:
			d.Kind = "accel"
		}
		out = append(out, d)
	}
	return out
}

// GPUs lists the devices llama.cpp places layers on, in the order that
// ModelOptions.MainGPU and TensorSplit index: the discrete GPUs, or the
// integrated ones where there is no discrete GPU. (llama.cpp also drops a
// second backend's view of a GPU it already has, which only matters with
// two GPU backends for one card; LoadModel then reports its error.)
func GPUs() []Device {
	var gpus, igpus []Device
	for _, d := range Devices() {
		switch d.Kind {
		case "gpu":
			gpus = append(gpus, d)
		case "igpu":
			igpus = append(igpus, d)
		}
	}
	if len(gpus) == 0 {
		return igpus
	}
	return gpus
}

// SplitMode says how a model is spread over several GPUs.
type SplitMode int

// Split modes; the zero value is llama.cpp's default.
const (
	// SplitLayer gives each GPU whole layers (and their KV cache), in the
	// proportions of TensorSplit.
	SplitLayer SplitMode = iota
	// SplitRow splits the rows of each weight matrix across the GPUs
	// (tensor parallelism where the backend supports it); MainGPU keeps
	// the small tensors and intermediate results.
	SplitRow
	// SplitNone puts the whole offloaded model on MainGPU.
	SplitNone
)

var splitModeNames = [...]string{SplitLayer: "layer", SplitRow: "row", SplitNone: "none"}

func (m SplitMode) String() string {
	if m < 0 || int(m) >= len(splitModeNames) {
		return "SplitMode(" + strconv.Itoa(int(m)) + ")"
	}
	return splitModeNames[m]
}

// ParseSplitMode reads "layer", "row" or "none".
func ParseSplitMode(s string) (SplitMode, error) {
	for m, name := range splitModeNames {
		if s == name {
			return SplitMode(m), nil
		}
	}
	return 0, fmt.Errorf("split mode %q: want layer, row or none", s)
}

// ParseTensorSplit reads a comma-separated list of non-negative
// proportions, one per GPU ("3,1": three quarters on GPU 0).
func ParseTensorSplit(s string) ([]float32, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	parts := strings.Split(s, ",")
	out := make([]float32, len(parts))
	for i, p := range parts {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 32)
		if err != nil {
			return nil, fmt.Errorf("tensor split %q: entry %d is not a number", s, i)
		}
		out[i] = float32(v)
	}
	return out, nil
}

// ErrGPUOptions marks GPU placement options the devices cannot satisfy.
var ErrGPUOptions = errors.New("invalid GPU options")

// CheckGPU validates the GPU placement options against the GPUs this
// process sees (see GPUs), so that a bad value is a clear error before a
// load rather than a failed load (or an out-of-bounds read of
// tensor_split) inside llama.cpp. LoadModel calls it.
func (o ModelOptions) CheckGPU() error { return o.checkGPU(len(GPUs())) }

func (o ModelOptions) checkGPU(gpus int) error {
	if o.SplitMode < SplitLayer || o.SplitMode > SplitNone {
		return fmt.Errorf("%w: split mode %d", ErrGPUOptions, int(o.SplitMode))
	}
	if o.MainGPU < 0 {
		return fmt.Errorf("%w: main GPU %d: must be 0 or more", ErrGPUOptions, o.MainGPU)
	}
	if o.MainGPU > 0 && o.MainGPU >= gpus {
		return fmt.Errorf("%w: main GPU %d: %s", ErrGPUOptions, o.MainGPU, gpuCount(gpus))
	}
	if len(o.TensorSplit) == 0 {
		return nil
	}
	if len(o.TensorSplit) > gpus {
		return fmt.Errorf("%w: tensor split has %d entries: %s", ErrGPUOptions, len(o.TensorSplit), gpuCount(gpus))
	}
	if max := int(C.llama_max_devices()); len(o.TensorSplit) > max {
		return fmt.Errorf("%w: tensor split has %d entries, llama.cpp takes at most %d", ErrGPUOptions, len(o.TensorSplit), max)
	}
	var sum float64
	for i, v := range o.TensorSplit {
		if v < 0 || math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("%w: tensor split entry %d is %v: want a finite number >= 0", ErrGPUOptions, i, v)
		}
		sum += float64(v)
	}
	if sum == 0 {
		return fmt.Errorf("%w: tensor split gives no GPU a share", ErrGPUOptions)
	}
	return nil
}

func gpuCount(n int) string {
	switch n {
	case 0:
		return "no GPU device found (provider " + Provider + "; a GPU needs the system provider built with a GPU backend, and its driver)"
	case 1:
		return "1 GPU device found (index 0)"
	}
	return fmt.Sprintf("%d GPU devices found (indexes 0-%d)", n, n-1)
}

// applyGPU sets the placement fields of params for a machine with gpus
// GPUs. The tensor split array lives in C memory that the caller frees
// after the load (llama.cpp reads llama_max_devices() entries while
// loading).
func (o ModelOptions) applyGPU(params *C.struct_llama_model_params, nGPULayers, gpus int) (free func()) {
	// A count, never -1: llama.cpp offloads layers n_layer-n_gpu_layers
	// and up, so -1 would keep every layer on the CPU (models.Plan).
	params.n_gpu_layers = C.int32_t(nGPULayers)
	params.main_gpu = C.int32_t(o.MainGPU)
	switch {
	case o.SplitMode == SplitRow:
		params.split_mode = C.LLAMA_SPLIT_MODE_ROW
	case o.SplitMode == SplitNone && gpus > 0:
		// Without a GPU llama.cpp would refuse main GPU 0 in this mode;
		// the model stays on the CPU as in the others.
		params.split_mode = C.LLAMA_SPLIT_MODE_NONE
	default:
		params.split_mode = C.LLAMA_SPLIT_MODE_LAYER
	}
	if len(o.TensorSplit) == 0 {
		return func() {}
	}
	n := int(C.llama_max_devices())
	p := (*C.float)(C.calloc(C.size_t(n), C.size_t(unsafe.Sizeof(C.float(0)))))
	split := unsafe.Slice(p, n)
	for i, v := range o.TensorSplit {
		split[i] = C.float(v)
	}
	params.tensor_split = p
	return func() { C.free(unsafe.Pointer(p)) }
}

// moduleVersion is the version of the Go module path in this binary's
// build information ("unknown" in binaries built without it).
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				if d.Replace != nil {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	return "unknown"
}
