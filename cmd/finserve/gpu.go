package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/finserve/finserve/engine"
)

// gpuFlags are the GPU placement flags of every command that loads a
// model; they mean what llama-server's flags of the same names mean.
type gpuFlags struct {
	layers, mainGPU        int
	splitMode, tensorSplit string
}

func (g *gpuFlags) register(f *pflag.FlagSet) {
	f.IntVar(&g.layers, "gpu-layers", 0, "layers to offload to GPUs (system provider with a GPU backend; -1: all)")
	f.IntVar(&g.mainGPU, "main-gpu", 0, "GPU for the whole model with --split-mode none, for intermediate results with row")
	f.StringVar(&g.splitMode, "split-mode", "layer", "how to spread the model over several GPUs: layer, row or none")
	f.StringVar(&g.tensorSplit, "tensor-split", "", "each GPU's share of the offloaded model, e.g. 3,1 (default: by free memory)")
}

// options returns the model options the flags ask for. LoadModel checks
// the placement against the GPUs it sees; `config check` calls CheckGPU.
func (g gpuFlags) options() (engine.ModelOptions, error) {
	mode, err := engine.ParseSplitMode(g.splitMode)
	if err != nil {
		return engine.ModelOptions{}, fmt.Errorf("--split-mode: %w", err)
	}
	split, err := engine.ParseTensorSplit(g.tensorSplit)
	if err != nil {
		return engine.ModelOptions{}, fmt.Errorf("--tensor-split: %w", err)
	}
	return engine.ModelOptions{GPULayers: g.layers, MainGPU: g.mainGPU, SplitMode: mode, TensorSplit: split}, nil
}
