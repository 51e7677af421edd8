package engine

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"

	"github.com/finserve/finserve/models"
)

// TestPlacementMatchesLlamaCPP checks the placement plan against
// llama.cpp's own assignment of layers to devices, on a machine without a
// GPU: the CPU is handed to llama.cpp as the offload device, so that the
// weights of offloaded layers land in that device's plain buffer while
// those of layers kept on the CPU are repacked for its interleaved
// kernels (q4_0 weights). The size of the CPU_REPACK (or AMX) buffer
// llama.cpp logs then counts the layers it kept. A setting passed through as llama.cpp
// reads it (-1 as a count: issue 17's bug, every layer on the CPU) fails.
func TestPlacementMatchesLlamaCPP(t *testing.T) {
	dir := t.TempDir()
	// Four layers of a width where every matrix repacks.
	p := models.Preset{Name: "placement", Embd: 256, Layers: 4, Heads: 4, HeadsKV: 4, FF: 512, Vocab: 2048, Context: 1024}
	f32 := filepath.Join(dir, "f32.gguf")
	if err := models.Generate(context.Background(), f32, models.GenOptions{Preset: p, Type: models.TypeF32, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	q4 := filepath.Join(dir, "q4_0.gguf")
	if _, err := Quantize(context.Background(), f32, q4, QuantizeOptions{Type: "q4_0", Threads: 2}); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var buf bytes.Buffer
	old := logger.Load()
	SetLogger(slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &buf}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	defer logger.Store(old)
	// The CPU's extra buffer: CPU_REPACK, or AMX where the CPU has it and
	// llama.cpp was built for it (Debian's 11669 on a Sapphire Rapids
	// host: AMX takes the q4_0 weights first).
	repack := regexp.MustCompile(`(?:CPU_REPACK|AMX) model buffer size = +([0-9.]+) MiB`)
	// repackMiB loads the model with the setting and returns the size of
	// llama.cpp's repacked CPU buffer (0 without one) and the plan.
	repackMiB := func(setting int) (float64, models.Plan) {
		t.Helper()
		mu.Lock()
		buf.Reset()
		mu.Unlock()
		m, err := LoadModel(context.Background(), q4, ModelOptions{GPULayers: setting, cpuAsGPU: true})
		if err != nil {
			t.Fatalf("gpu layers %s: %v", models.GPULayersString(setting), err)
		}
		plan := m.Plan()
		m.Close()
		mu.Lock()
		defer mu.Unlock()
		match := repack.FindSubmatch(buf.Bytes())
		if match == nil {
			return 0, plan
		}
		v, _ := strconv.ParseFloat(string(match[1]), 64)
		return v, plan
	}
	all, plan := repackMiB(0)
	if all == 0 || plan.NGPULayers != 0 {
		t.Fatalf("nothing offloaded: repacked %.2f MiB, n_gpu_layers %d; want every layer repacked on the CPU", all, plan.NGPULayers)
	}
	for _, tc := range []struct {
		setting string
		onCPU   int // layers llama.cpp must keep on the CPU
	}{
		{"all", 0}, {"-1", 0}, {"auto", 0}, {"5", 0}, {"4", 0}, {"3", 1}, {"1", 3}, {"0", 4},
	} {
		setting, err := models.ParseGPULayers(tc.setting)
		if err != nil {
			t.Fatal(err)
		}
		got, plan := repackMiB(setting)
		if kept := plan.Layers - plan.Offloaded; kept != tc.onCPU {
			t.Errorf("--gpu-layers %s: the plan keeps %d layers on the CPU, want %d", tc.setting, kept, tc.onCPU)
		}
		// llama.cpp's buffer against the plan's count (MiB to 2 decimals).
		want := all * float64(plan.Layers-plan.Offloaded) / float64(plan.Layers)
		if diff := got - want; diff > 0.02 || diff < -0.02 {
			t.Errorf("--gpu-layers %s (n_gpu_layers %d): llama.cpp repacked %.2f MiB on the CPU, the plan's %d CPU layers make %.2f",
				tc.setting, plan.NGPULayers, got, plan.Layers-plan.Offloaded, want)
		}
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
