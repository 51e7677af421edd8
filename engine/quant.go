package engine

// #include <stdlib.h>
// #include "helpers.h"
import "C"

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"github.com/finserve/finserve/models"
)

// quantTypes are the targets Quantize offers, by the names llama-quantize
// uses (lower case).
var quantTypes = map[string]C.enum_llama_ftype{
	"f32":    C.LLAMA_FTYPE_ALL_F32,
	"f16":    C.LLAMA_FTYPE_MOSTLY_F16,
	"bf16":   C.LLAMA_FTYPE_MOSTLY_BF16,
	"q8_0":   C.LLAMA_FTYPE_MOSTLY_Q8_0,
	"q4_0":   C.LLAMA_FTYPE_MOSTLY_Q4_0,
	"q4_1":   C.LLAMA_FTYPE_MOSTLY_Q4_1,
	"q5_0":   C.LLAMA_FTYPE_MOSTLY_Q5_0,
	"q5_1":   C.LLAMA_FTYPE_MOSTLY_Q5_1,
	"q2_k":   C.LLAMA_FTYPE_MOSTLY_Q2_K,
	"q3_k_s": C.LLAMA_FTYPE_MOSTLY_Q3_K_S,
	"q3_k_m": C.LLAMA_FTYPE_MOSTLY_Q3_K_M,
	"q3_k_l": C.LLAMA_FTYPE_MOSTLY_Q3_K_L,
	"q4_k_s": C.LLAMA_FTYPE_MOSTLY_Q4_K_S,
	"q4_k_m": C.LLAMA_FTYPE_MOSTLY_Q4_K_M,
	"q5_k_s": C.LLAMA_FTYPE_MOSTLY_Q5_K_S,
	"q5_k_m": C.LLAMA_FTYPE_MOSTLY_Q5_K_M,
	"q6_k":   C.LLAMA_FTYPE_MOSTLY_Q6_K,
}

// QuantTypes lists the types Quantize can write.
func QuantTypes() []string {
	names := make([]string, 0, len(quantTypes))
	for n := range quantTypes {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// QuantizeOptions configure Quantize.
type QuantizeOptions struct {
	Type    string // one of QuantTypes
	Threads int    // 0: the number of CPUs
	// AllowRequantize accepts an input whose weights are quantized
	// already: quantizing twice loses more than quantizing once from f16
	// or f32, so it is refused unless asked for.
	AllowRequantize bool
	// Progress, if set, receives the tensors done and their total.
	Progress func(done, total int)
}

// QuantizeResult summarises a quantization.
type QuantizeResult struct {
	InType, OutType   string // llama.cpp's file-type names
	InBytes, OutBytes int64
	Tensors           int
	Duration          time.Duration
}

// Ratio is the compression ratio, input bytes over output bytes.
func (r QuantizeResult) Ratio() float64 { return float64(r.InBytes) / float64(r.OutBytes) }

// quantMu serialises quantizations: progress comes from llama.cpp's log
// lines, which carry no handle to tell two apart.
var (
	quantMu       sync.Mutex
	quantProgress func(line string)
	quantLine     = regexp.MustCompile(`^\[\s*(\d+)/\s*(\d+)\]`)
)

// Quantize writes in's weights as opts.Type to out through llama.cpp's
// quantization (llama_model_quantize). The input is validated first; the
// output is written beside out and renamed into place only when complete
// and valid, so a failure leaves no partial file. ctx is checked before
// starting: llama.cpp's quantization cannot be interrupted.
func Quantize(ctx context.Context, in, out string, opts QuantizeOptions) (QuantizeResult, error) {
	var res QuantizeResult
	ftype, ok := quantTypes[opts.Type]
	if !ok {
		return res, fmt.Errorf("quantize: unknown type %q (one of %v)", opts.Type, QuantTypes())
	}
	f, err := models.Check(in)
	if err != nil {
		if models.IsInvalid(err) {
			return res, fmt.Errorf("quantize: %w %s: %w", ErrInvalidModel, in, err)
		}
		return res, fmt.Errorf("quantize: %w", err)
	}
	res.InType, res.InBytes, res.Tensors = models.Summarize(in, f).FileType, f.Size, len(f.Tensors)
	if q := quantizedWeights(f); q != "" && !opts.AllowRequantize {
		return res, fmt.Errorf("quantize: %s holds %s weights already; quantizing them again loses more than quantizing the f16 or f32 original (allow it explicitly to go on)", in, q)
	}
	if same, _ := sameFile(in, out); same {
		return res, fmt.Errorf("quantize: the output %s is the input", out)
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".*.part")
	if err != nil {
		return res, fmt.Errorf("quantize: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op

	initBackend()
	p := C.llama_model_quantize_default_params()
	p.nthread = C.int32_t(opts.Threads)
	p.ftype = ftype
	p.allow_requantize = C.bool(opts.AllowRequantize)
	cin, cout := C.CString(in), C.CString(tmp.Name())
	defer C.free(unsafe.Pointer(cin))
	defer C.free(unsafe.Pointer(cout))

	quantMu.Lock()
	defer quantMu.Unlock()
	if opts.Progress != nil {
		setQuantProgress(func(line string) {
			if m := quantLine.FindStringSubmatch(line); m != nil {
				done, _ := strconv.Atoi(m[1])
				total, _ := strconv.Atoi(m[2])
				opts.Progress(done, total)
			}
		})
		defer setQuantProgress(nil)
	}
	start := time.Now()
	rc := C.llama_model_quantize(cin, cout, &p)
	res.Duration = time.Since(start)
	if rc != 0 {
		return res, fmt.Errorf("quantize: llama.cpp failed (code %d; see its log lines)", int(rc))
	}
	g, err := models.Check(tmp.Name())
	if err != nil {
		return res, fmt.Errorf("quantize: the output is not a valid model: %w", err)
	}
	// CreateTemp made it 0600; a model is not a secret, and a server
	// running as another user of the group (a pod's arbitrary UID) must
	// read it.
	if err := os.Chmod(tmp.Name(), models.FileMode); err != nil {
		return res, fmt.Errorf("quantize: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return res, fmt.Errorf("quantize: %w", err)
	}
	res.OutType, res.OutBytes = models.Summarize(out, g).FileType, g.Size
	return res, nil
}

func setQuantProgress(fn func(string)) {
	logMu.Lock()
	defer logMu.Unlock()
	quantProgress = fn
}

// quantizedWeights names the quantized type of f's weight matrices, or ""
// when they are all f32, f16 or bf16.
func quantizedWeights(f *models.File) string {
	for _, t := range f.Tensors {
		switch t.Type {
		case models.TypeF32, models.TypeF16, models.TypeBF16:
		default:
			if len(t.Dims) >= 2 {
				return t.Type.String()
			}
		}
	}
	return ""
}

// sameFile says whether a and b name one existing file.
func sameFile(a, b string) (bool, error) {
	sa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	sb, err := os.Stat(b)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	return os.SameFile(sa, sb), nil
}
