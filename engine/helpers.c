#include "helpers.h"

#include <math.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdlib.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>

// Defined in Go (//export).
extern void goLog(int level, char * text, uintptr_t handle);
extern bool goProgress(float progress, uintptr_t handle);

static int32_t argmax(const float * x, int32_t n) {
    int32_t best = 0;
    float v = x[0];
    for (int32_t i = 1; i < n; i++) {
        if (x[i] > v) {
            v = x[i];
            best = i;
        }
    }
    return best;
}

// fill_candidates makes cur every token with its logit.
static void fill_candidates(llama_token_data_array * cur, llama_token_data * data, const float * logits, int32_t n_vocab) {
    for (int32_t t = 0; t < n_vocab; t++) {
        data[t].id = t;
        data[t].logit = logits[t];
        data[t].p = 0.0f;
    }
    cur->data = data;
    cur->size = (size_t) n_vocab;
    cur->selected = -1;
    cur->sorted = false;
}

// sample_constrained is one token of chain under grammar (fs_sample_batch).
static int32_t sample_constrained(struct llama_sampler * chain, struct llama_sampler * grammar,
                                  const float * logits, int32_t n_vocab, llama_token_data * data) {
    llama_token_data_array cur;
    fill_candidates(&cur, data, logits, n_vocab);
    llama_sampler_apply(chain, &cur);
    if (cur.selected < 0 || cur.selected >= (int64_t) cur.size) {
        return -1;
    }
    llama_token id = cur.data[cur.selected].id;
    llama_token_data one = { id, 1.0f, 0.0f };
    llama_token_data_array single = { &one, 1, -1, false };
    llama_sampler_apply(grammar, &single);
    if (single.data[0].logit == -INFINITY) {
        // refused: the grammar over every candidate, then the chain
        fill_candidates(&cur, data, logits, n_vocab);
        llama_sampler_apply(grammar, &cur);
        bool any = false;
        for (size_t t = 0; t < cur.size && !any; t++) {
            any = cur.data[t].logit != -INFINITY;
        }
        if (!any) {
            // the grammar allows no token (one the chain bans): llama.cpp's
            // samplers would assert on an empty distribution
            return -1;
        }
        llama_sampler_apply(chain, &cur);
        if (cur.selected < 0 || cur.selected >= (int64_t) cur.size || cur.data[cur.selected].logit == -INFINITY) {
            return -1;
        }
        id = cur.data[cur.selected].id;
    }
    llama_sampler_accept(grammar, id);
    llama_sampler_accept(chain, id);
    return id;
}

void fs_sample_batch(struct llama_context * ctx, int32_t n_vocab, int32_t n,
                     struct llama_sampler ** samplers, struct llama_sampler ** grammars,
                     const int32_t * idxs, int32_t * out) {
    llama_token_data * data = NULL;
    for (int32_t i = 0; i < n; i++) {
        const float * logits = llama_get_logits_ith(ctx, idxs[i]);
        if (samplers[i] == NULL) {
            out[i] = logits ? argmax(logits, n_vocab) : -1;
        } else if (grammars[i] == NULL) {
            out[i] = llama_sampler_sample(samplers[i], ctx, idxs[i]);
        } else {
            if (data == NULL) {
                data = malloc(sizeof(llama_token_data) * (size_t) n_vocab);
            }
            out[i] = (logits && data) ? sample_constrained(samplers[i], grammars[i], logits, n_vocab, data) : -1;
        }
    }
    free(data);
}

// log_sum_exp is log(sum(exp(logits))), computed stably.
static float log_sum_exp(const float * logits, int32_t n_vocab) {
    float mx = logits[0];
    for (int32_t i = 1; i < n_vocab; i++) {
        mx = logits[i] > mx ? logits[i] : mx;
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++) {
        sum += exp((double) (logits[i] - mx));
    }
    return mx + (float) log(sum);
}

void fs_log_softmax(const float * logits, int32_t n_vocab, float * out) {
    const float lse = log_sum_exp(logits, n_vocab);
    for (int32_t i = 0; i < n_vocab; i++) {
        out[i] = logits[i] - lse;
    }
}

void fs_logprobs(const float * logits, int32_t n_vocab,
                 const int32_t * targets, int32_t n_targets, float * target_lp,
                 int32_t k, int32_t * top_ids, float * top_lp) {
    const float lse = log_sum_exp(logits, n_vocab);
    for (int32_t t = 0; t < n_targets; t++) {
        const int32_t id = targets[t];
        target_lp[t] = (id >= 0 && id < n_vocab) ? logits[id] - lse : -INFINITY;
    }
    if (k <= 0) {
        return;
    }
    // Insertion into a sorted list of k: n_vocab * small k.
    int32_t have = 0;
    for (int32_t i = 0; i < n_vocab; i++) {
        const float v = logits[i];
        if (have == k && v <= top_lp[k - 1]) {
            continue;
        }
        int32_t j = have < k ? have++ : k - 1;
        while (j > 0 && top_lp[j - 1] < v) {
            top_lp[j] = top_lp[j - 1];
            top_ids[j] = top_ids[j - 1];
            j--;
        }
        top_lp[j] = v;
        top_ids[j] = i;
    }
    for (int32_t j = 0; j < have; j++) {
        top_lp[j] -= lse;
    }
}

static bool fs_cut_requested(void * data) {
    return __atomic_load_n((int32_t *) data, __ATOMIC_RELAXED) != 0;
}

void fs_set_cut(struct llama_context * ctx, int32_t * flag) {
    llama_set_abort_callback(ctx, fs_cut_requested, flag);
}

struct ggml_threadpool * fs_threadpool_attach(struct llama_context * ctx, int32_t n_threads) {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (dev == NULL) {
        return NULL;
    }
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    typedef struct ggml_threadpool * (*new_fn_t)(struct ggml_threadpool_params *);
    new_fn_t new_fn = (new_fn_t) ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new");
    if (new_fn == NULL) {
        return NULL;
    }
    struct ggml_threadpool_params params = ggml_threadpool_params_default(n_threads);
    struct ggml_threadpool * tp = new_fn(&params);
    if (tp != NULL) {
        llama_attach_threadpool(ctx, tp, NULL);
    }
    return tp;
}

void fs_threadpool_free(struct ggml_threadpool * tp) {
    if (tp == NULL) {
        return;
    }
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (dev == NULL) {
        return;
    }
    typedef void (*free_fn_t)(struct ggml_threadpool *);
    free_fn_t free_fn = (free_fn_t) ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_threadpool_free");
    if (free_fn != NULL) {
        free_fn(tp);
    }
}

void fs_log_trampoline(enum ggml_log_level level, const char * text, void * user_data) {
    goLog((int) level, (char *) text, (uintptr_t) user_data);
}

bool fs_progress_trampoline(float progress, void * user_data) {
    return goProgress(progress, *(const uintptr_t *) user_data);
}
