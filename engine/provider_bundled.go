//go:build !llama_system

package engine

// The bundled provider: llama.cpp and the ggml CPU backend compiled from the
// cgo packages in github.com/ollama/ollama (see third_party/README.md). The
// headers are staged by `make headers` into third_party/include.

// #cgo CPPFLAGS: -I${SRCDIR}/../third_party/include
// #include <llama.h>
import "C"

import (
	_ "github.com/ollama/ollama/llama/llama.cpp/src"
)

// Provider names the llama.cpp this binary was built against.
const Provider = "bundled"

// loadBackends has nothing to do: the CPU backend is linked in.
func loadBackends() {}

func initPenalties(_ *C.struct_llama_vocab, lastN C.int32_t, repeat, freq, present C.float) *C.struct_llama_sampler {
	return C.llama_sampler_init_penalties(lastN, repeat, freq, present)
}
