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

// bundledCommit is the llama.cpp commit the ollama module in go.mod
// vendors (its Makefile.sync's FETCH_HEAD; a test checks the two agree).
const bundledCommit = "ec98e2002"

// LlamaCpp says which llama.cpp is linked in.
func LlamaCpp() string {
	return "llama.cpp " + bundledCommit + " (bundled from github.com/ollama/ollama " + moduleVersion("github.com/ollama/ollama") + ")"
}

// loadBackends has nothing to do: the CPU backend is linked in.
func loadBackends() {}

func initPenalties(_ *C.struct_llama_vocab, lastN C.int32_t, repeat, freq, present C.float) *C.struct_llama_sampler {
	return C.llama_sampler_init_penalties(lastN, repeat, freq, present)
}
