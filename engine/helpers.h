// Small C helpers that keep the engine's per-step work inside one cgo call.
#ifndef FINSERVE_HELPERS_H
#define FINSERVE_HELPERS_H

#include <stdint.h>
#include <llama.h>

// fs_sample_batch picks the next token for n outputs of the last decode.
// A NULL sampler means greedy: the arg-max of the raw logits (lowest id on
// ties, as llama.cpp's greedy sampler). Others run their llama.cpp chain;
// grammars[i], when not NULL, constrains output i: the chain picks a
// token, the grammar checks that one token, and only when it refuses is
// every candidate run through the grammar and the chain picks again
// (llama.cpp's common_sampler does the same: checking the whole
// vocabulary against a grammar at every token costs more than the model's
// step on a small model). Both samplers accept the token picked.
void fs_sample_batch(struct llama_context * ctx, int32_t n_vocab, int32_t n,
                     struct llama_sampler ** samplers, struct llama_sampler ** grammars,
                     const int32_t * idxs, int32_t * out);

// fs_logprobs computes log-softmax statistics of one row of logits:
// the log-probabilities of n_targets given tokens, and the top k tokens by
// probability (ids and log-probabilities, best first; ties by lower id).
void fs_logprobs(const float * logits, int32_t n_vocab,
                 const int32_t * targets, int32_t n_targets, float * target_lp,
                 int32_t k, int32_t * top_ids, float * top_lp);

// fs_log_softmax writes the log-softmax of one row of n_vocab logits.
void fs_log_softmax(const float * logits, int32_t n_vocab, float * out);

// fs_threadpool_new creates a ggml CPU thread pool through the CPU backend's
// registry (the only way that works when the backend is a loadable module),
// attaches it to ctx and returns it; NULL if the backend does not offer one.
struct ggml_threadpool * fs_threadpool_attach(struct llama_context * ctx, int32_t n_threads);
void fs_threadpool_free(struct ggml_threadpool * tp);

// fs_set_cut makes ctx's decodes stop between graph nodes once *flag is
// non-zero (read atomically; the loop's owner sets it from any thread).
// llama_decode then returns 2, having removed the cells of the ubatch it
// stopped in.
void fs_set_cut(struct llama_context * ctx, int32_t * flag);

// fs_log_trampoline forwards llama.cpp and ggml log lines to Go.
void fs_log_trampoline(enum ggml_log_level level, const char * text, void * user_data);

// fs_progress_trampoline forwards model load progress to Go; user_data
// points to a uintptr_t holding a runtime/cgo.Handle.
bool fs_progress_trampoline(float progress, void * user_data);

#endif
