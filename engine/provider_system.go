//go:build llama_system

package engine

// The system provider: an installed llama.cpp found through pkg-config
// (Debian's libllama-dev, Homebrew, or a local CUDA build). Its ggml
// backends may be loadable modules, which loadBackends registers.

// #cgo pkg-config: llama
// #include <llama.h>
// #include <ggml-backend.h>
import "C"

// Provider names the llama.cpp this binary was built against.
const Provider = "system"

func loadBackends() { C.ggml_backend_load_all() }

func initPenalties(vocab *C.struct_llama_vocab, lastN C.int32_t, repeat, freq, present C.float) *C.struct_llama_sampler {
	return C.llama_sampler_init_penalties(C.llama_vocab_n_tokens(vocab), lastN, repeat, freq, present)
}
