package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

// gpuFlags are the placement flags of every command that loads a model;
// they mean what llama-server's flags of the same names mean, except that
// --gpu-layers -1 and all really offload every layer (llama.cpp's C API
// reads the value as a count).
type gpuFlags struct {
	layers                 string
	mainGPU                int
	splitMode, tensorSplit string
	cacheK, cacheV         string
}

func (g *gpuFlags) register(f *pflag.FlagSet) {
	f.StringVar(&g.layers, "gpu-layers", "auto", "layers to offload to GPUs (system provider with a GPU backend): auto (as many as the GPUs' free memory holds beside the KV cache), all or -1, or a count from the last layer (0: CPU only)")
	f.IntVar(&g.mainGPU, "main-gpu", 0, "GPU for the whole model with --split-mode none, for intermediate results with row")
	f.StringVar(&g.splitMode, "split-mode", "layer", "how to spread the model over several GPUs: layer, row or none")
	f.StringVar(&g.tensorSplit, "tensor-split", "", "each GPU's share of the offloaded model, e.g. 3,1 (default: by free memory)")
	f.StringVar(&g.cacheK, "cache-type-k", "f16", "KV cache type of keys: f16, f32, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1 (q8_0 halves the cache)")
	f.StringVar(&g.cacheV, "cache-type-v", "f16", "KV cache type of values, as --cache-type-k; a quantized one needs flash attention")
}

// options returns the model options the flags ask for; shape is what the
// engine will allocate, which an automatic placement leaves room for.
// LoadModel checks the placement against the GPUs it sees; `config check`
// calls CheckGPU.
func (g gpuFlags) options(shape engine.ServingShape) (engine.ModelOptions, error) {
	layers, err := models.ParseGPULayers(g.layers)
	if err != nil {
		return engine.ModelOptions{}, fmt.Errorf("--gpu-layers: %w", err)
	}
	mode, err := engine.ParseSplitMode(g.splitMode)
	if err != nil {
		return engine.ModelOptions{}, fmt.Errorf("--split-mode: %w", err)
	}
	split, err := engine.ParseTensorSplit(g.tensorSplit)
	if err != nil {
		return engine.ModelOptions{}, fmt.Errorf("--tensor-split: %w", err)
	}
	if _, err := models.ParseKVCacheType(g.cacheK); err != nil {
		return engine.ModelOptions{}, fmt.Errorf("--cache-type-k: %w", err)
	}
	if _, err := models.ParseKVCacheType(g.cacheV); err != nil {
		return engine.ModelOptions{}, fmt.Errorf("--cache-type-v: %w", err)
	}
	shape.CacheTypeK, shape.CacheTypeV = g.cacheK, g.cacheV
	return engine.ModelOptions{GPULayers: layers, MainGPU: g.mainGPU, SplitMode: mode, TensorSplit: split, Serving: shape}, nil
}
