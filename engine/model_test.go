package engine_test

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// TestCorruptModelsAreRejected: damaged files are refused with a clear
// error before llama.cpp reads them; some of these would crash it (a zero
// dimension divides by zero in ggml's loader).
func TestCorruptModelsAreRejected(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(modelDir, "tiny-q8_0.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := models.ReadFile(filepath.Join(modelDir, "tiny-q8_0.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The first tensor's first dimension sits right after its name in the table.
	name := []byte(f.Tensors[0].Name)
	zeroDim := append([]byte(nil), good...)
	at := indexAfter(zeroDim, name, int(f.DataOffset)) + 4
	binary.LittleEndian.PutUint64(zeroDim[at:], 0)
	wrongShape := append([]byte(nil), good...)
	binary.LittleEndian.PutUint64(wrongShape[at:], uint64(f.Tensors[0].Dims[0]*2))

	for _, tc := range []struct {
		name string
		path string
	}{
		{"truncated", write("truncated.gguf", good[:len(good)/2])},
		{"garbage", write("garbage.gguf", []byte("this is not a model at all, just text"))},
		{"empty", write("empty.gguf", nil)},
		{"zero dimension", write("zero.gguf", zeroDim)},
		{"tensor table inconsistent", write("shape.gguf", wrongShape)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := engine.LoadModel(context.Background(), tc.path, engine.ModelOptions{})
			if err == nil {
				m.Close()
				t.Fatal("loaded a damaged model")
			}
			if !errors.Is(err, engine.ErrInvalidModel) {
				t.Fatalf("got %v, want ErrInvalidModel", err)
			}
			t.Log(err)
		})
	}
	if _, err := engine.LoadModel(context.Background(), filepath.Join(dir, "missing.gguf"), engine.ModelOptions{}); err == nil || errors.Is(err, engine.ErrInvalidModel) {
		t.Fatalf("missing file: %v, want a not-found error", err)
	}
	if _, err := engine.LoadModel(context.Background(), dir, engine.ModelOptions{}); err == nil {
		t.Fatal("loaded a directory")
	}
}

func indexAfter(b, sub []byte, limit int) int {
	for i := 0; i+len(sub) <= limit; i++ {
		if string(b[i:i+len(sub)]) == string(sub) {
			return i + len(sub)
		}
	}
	return -1
}

// TestLoadProgressAndCancel: loading reports progress up to 1, and a
// cancelled context aborts it.
func TestLoadProgressAndCancel(t *testing.T) {
	path := filepath.Join(modelDir, "tiny-f32.gguf")
	var last float32
	m, err := engine.LoadModel(context.Background(), path, engine.ModelOptions{Progress: func(p float32) { last = p }})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	m.Close() // idempotent
	if last != 1 {
		t.Fatalf("last progress %v, want 1", last)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := engine.LoadModel(ctx, path, engine.ModelOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled load: %v, want context.Canceled", err)
	}
	if _, err := m.Tokenize("x", true, false); !errors.Is(err, engine.ErrModelClosed) {
		t.Fatalf("Tokenize on a closed model: %v", err)
	}
}

// TestGPUOptionsOnThisMachine: placement options the devices here cannot
// satisfy are refused before llama.cpp sees them; the CPU is always listed.
func TestGPUOptionsOnThisMachine(t *testing.T) {
	var cpu bool
	for _, d := range engine.Devices() {
		cpu = cpu || d.Kind == "cpu" && d.TotalBytes > 0
	}
	if !cpu {
		t.Fatalf("no CPU device with memory among %+v", engine.Devices())
	}
	n := len(engine.GPUs())
	path := filepath.Join(modelDir, "tiny-q8_0.gguf")
	for _, opts := range []engine.ModelOptions{
		{MainGPU: max(n, 1), SplitMode: engine.SplitNone},
		{TensorSplit: make([]float32, n+1)},
	} {
		for i := range opts.TensorSplit {
			opts.TensorSplit[i] = 1
		}
		if m, err := engine.LoadModel(context.Background(), path, opts); !errors.Is(err, engine.ErrGPUOptions) {
			if m != nil {
				m.Close()
			}
			t.Errorf("%d GPUs, options %+v: %v, want ErrGPUOptions", n, opts, err)
		}
	}
	// All layers offloaded, to the GPUs there are (or none: the CPU).
	m, err := engine.LoadModel(context.Background(), path, engine.ModelOptions{GPULayers: -1, SplitMode: engine.SplitNone})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if toks, err := m.Tokenize("hello", true, false); err != nil || len(toks) == 0 {
		t.Fatalf("tokenize after an offloaded load: %v %v", toks, err)
	}
}
