//go:build llama_system

package engine

// The system provider: an installed llama.cpp found through pkg-config
// (Debian's libllama-dev, Homebrew, or one built by scripts/build-llama.sh,
// with CUDA or without). Its ggml backends may be loadable modules, which
// loadBackends registers.

// #cgo pkg-config: llama
// #include <llama.h>
// #include <ggml-backend.h>
//
// // Releases of llama.cpp disagree on llama_sampler_init_penalties: some
// // take the vocabulary size first (Debian's), others not (the ollama
// // module's, which scripts/build-llama.sh builds). _Generic picks the call
// // that matches the declaration in the installed header at compile time;
// // the other branch is never evaluated.
// typedef struct llama_sampler * (*fs_penalties_vocab)(int32_t, int32_t, float, float, float);
// typedef struct llama_sampler * (*fs_penalties_plain)(int32_t, float, float, float);
// static struct llama_sampler * fs_init_penalties(const struct llama_vocab * vocab, int32_t last_n, float repeat, float freq, float present) {
//     void (*fn)(void) = (void (*)(void))llama_sampler_init_penalties;
//     return _Generic(&llama_sampler_init_penalties,
//         fs_penalties_vocab: ((fs_penalties_vocab)fn)(llama_vocab_n_tokens(vocab), last_n, repeat, freq, present),
//         default: ((fs_penalties_plain)fn)(last_n, repeat, freq, present));
// }
import "C"

// Provider names the llama.cpp this binary was built against.
const Provider = "system"

// systemLlama is the llama.pc version the build linked against, set by
// make build-system (-ldflags -X).
var systemLlama = "unknown version"

// LlamaCpp says which llama.cpp is linked in.
func LlamaCpp() string { return "llama.cpp " + systemLlama + " (system library, pkg-config llama)" }

func loadBackends() { C.ggml_backend_load_all() }

func initPenalties(vocab *C.struct_llama_vocab, lastN C.int32_t, repeat, freq, present C.float) *C.struct_llama_sampler {
	return C.fs_init_penalties(vocab, lastN, repeat, freq, present)
}
