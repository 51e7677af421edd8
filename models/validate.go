package models

import (
	"errors"
	"fmt"
	"strings"
)

// Check reads path and validates it for loading: the result of ReadFile
// followed by Validate.
func Check(path string) (*File, error) {
	f, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := Validate(f); err != nil {
		return nil, err
	}
	return f, nil
}

// ValidationError lists every problem found in a structurally sound file
// whose contents are inconsistent or unsupported.
type ValidationError struct {
	Kind     error // ErrCorrupt or ErrUnsupported
	Problems []string
}

func (e *ValidationError) Error() string {
	const show = 5
	p := e.Problems
	more := ""
	if len(p) > show {
		more = fmt.Sprintf(" (and %d more)", len(p)-show)
		p = p[:show]
	}
	return fmt.Sprintf("%v: %s%s", e.Kind, strings.Join(p, "; "), more)
}

func (e *ValidationError) Unwrap() error { return e.Kind }

// Validate checks that a parsed file describes a model llama.cpp can load
// without tripping an assertion: the architecture and tokenizer metadata are
// present and consistent, special token ids are in range, and for the llama
// architecture every tensor has the shape the hyperparameters imply.
func Validate(f *File) error {
	v := &validator{f: f}
	arch := f.Architecture()
	if arch == "" {
		v.unsupported("general.architecture is missing")
		return v.result()
	}
	nVocab := v.tokenizer()
	if arch == "llama" {
		v.llama(nVocab)
	} else if _, ok := f.Tensor("token_embd.weight"); !ok {
		v.corrupt("tensor token_embd.weight is missing")
	}
	return v.result()
}

type validator struct {
	f      *File
	broken []string
	unsupp []string
}

func (v *validator) corrupt(format string, args ...any) {
	v.broken = append(v.broken, fmt.Sprintf(format, args...))
}

func (v *validator) unsupported(format string, args ...any) {
	v.unsupp = append(v.unsupp, fmt.Sprintf(format, args...))
}

func (v *validator) result() error {
	switch {
	case len(v.broken) > 0:
		return &ValidationError{Kind: ErrCorrupt, Problems: append(v.broken, v.unsupp...)}
	case len(v.unsupp) > 0:
		return &ValidationError{Kind: ErrUnsupported, Problems: v.unsupp}
	}
	return nil
}

// tokenizer checks the vocabulary and returns its size (0 if unusable).
func (v *validator) tokenizer() int64 {
	f := v.f
	if _, ok := f.String("tokenizer.ggml.model"); !ok {
		v.unsupported("tokenizer.ggml.model is missing (the model has no tokenizer)")
		return 0
	}
	raw, _ := f.Lookup("tokenizer.ggml.tokens")
	tokens, ok := raw.([]string)
	if !ok || len(tokens) == 0 {
		v.corrupt("tokenizer.ggml.tokens is missing or not a list of strings")
		return 0
	}
	n := int64(len(tokens))
	lengths := map[string]int{}
	if raw, ok := f.Lookup("tokenizer.ggml.scores"); ok {
		s, ok := raw.([]float32)
		lengths["tokenizer.ggml.scores"] = len(s)
		if !ok {
			v.corrupt("tokenizer.ggml.scores is not a list of float32")
		}
	}
	if raw, ok := f.Lookup("tokenizer.ggml.token_type"); ok {
		s, ok := raw.([]int32)
		lengths["tokenizer.ggml.token_type"] = len(s)
		if !ok {
			v.corrupt("tokenizer.ggml.token_type is not a list of int32")
		}
	}
	for key, l := range lengths {
		if int64(l) != n && l != 0 {
			v.corrupt("%s has %d entries for %d tokens", key, l, n)
		}
	}
	for _, name := range []string{"bos", "eos", "eot", "eom", "unknown", "separator", "padding", "mask", "cls"} {
		key := "tokenizer.ggml." + name + "_token_id"
		if _, present := f.Lookup(key); !present {
			continue
		}
		id, ok := f.Int(key)
		// llama.cpp treats -1 (as int32 or uint32) as "none".
		if ok && (id == -1 || id == 0xFFFFFFFF) {
			continue
		}
		if !ok || id < 0 || id >= n {
			val, _ := f.Lookup(key)
			v.corrupt("%s = %v is not a token id below %d", key, val, n)
		}
	}
	return n
}

// llama checks the hyperparameters and tensor shapes of the llama architecture.
func (v *validator) llama(nVocab int64) {
	f := v.f
	positive := func(key string) int64 {
		n, ok := f.Int(key)
		if !ok || n <= 0 {
			v.corrupt("%s is missing or not a positive integer", key)
			return 0
		}
		return n
	}
	nEmbd := positive("llama.embedding_length")
	nLayer := positive("llama.block_count")
	nFF := positive("llama.feed_forward_length")
	nHead := positive("llama.attention.head_count")
	positive("llama.context_length")
	if _, ok := f.Float("llama.attention.layer_norm_rms_epsilon"); !ok {
		v.corrupt("llama.attention.layer_norm_rms_epsilon is missing or not a float")
	}
	if nLayer > 4096 {
		v.unsupported("llama.block_count %d is implausibly large", nLayer)
		return
	}
	nHeadKV := nHead
	if _, ok := f.Lookup("llama.attention.head_count_kv"); ok {
		nHeadKV = positive("llama.attention.head_count_kv")
	}
	if nEmbd == 0 || nLayer == 0 || nHead == 0 || nHeadKV == 0 || nFF == 0 {
		return
	}
	if nHead%nHeadKV != 0 {
		v.corrupt("head_count %d is not a multiple of head_count_kv %d", nHead, nHeadKV)
		return
	}
	headK, headV := nEmbd/nHead, nEmbd/nHead
	if _, ok := f.Lookup("llama.attention.key_length"); ok {
		headK = positive("llama.attention.key_length")
	} else if nEmbd%nHead != 0 {
		v.corrupt("embedding_length %d is not a multiple of head_count %d", nEmbd, nHead)
	}
	if _, ok := f.Lookup("llama.attention.value_length"); ok {
		headV = positive("llama.attention.value_length")
	}
	if rot, ok := f.Int("llama.rope.dimension_count"); ok && (rot <= 0 || rot > headK || rot%2 != 0) {
		v.corrupt("llama.rope.dimension_count %d must be even and at most the head size %d", rot, headK)
	}
	experts, _ := f.Int("llama.expert_count")

	shape := func(name string, optional bool, want ...int64) {
		t, ok := f.Tensor(name)
		if !ok {
			if !optional {
				v.corrupt("tensor %s is missing", name)
			}
			return
		}
		if !sameShape(t.Dims, want) {
			v.corrupt("tensor %s has shape %v, want %v", name, t.Dims, want)
		}
	}
	if nVocab > 0 {
		shape("token_embd.weight", false, nEmbd, nVocab)
		shape("output.weight", true, nEmbd, nVocab)
	}
	shape("output_norm.weight", false, nEmbd)
	for i := int64(0); i < nLayer; i++ {
		p := fmt.Sprintf("blk.%d.", i)
		shape(p+"attn_norm.weight", false, nEmbd)
		shape(p+"attn_q.weight", false, nEmbd, nHead*headK)
		shape(p+"attn_k.weight", false, nEmbd, nHeadKV*headK)
		shape(p+"attn_v.weight", false, nEmbd, nHeadKV*headV)
		shape(p+"attn_output.weight", false, nHead*headV, nEmbd)
		shape(p+"ffn_norm.weight", false, nEmbd)
		if experts == 0 {
			shape(p+"ffn_gate.weight", false, nEmbd, nFF)
			shape(p+"ffn_up.weight", false, nEmbd, nFF)
			shape(p+"ffn_down.weight", false, nFF, nEmbd)
		}
	}
}

// sameShape compares ggml dimensions, ignoring trailing ones of size 1.
func sameShape(got, want []int64) bool {
	trim := func(d []int64) []int64 {
		for len(d) > 1 && d[len(d)-1] == 1 {
			d = d[:len(d)-1]
		}
		return d
	}
	got, want = trim(got), trim(want)
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// IsInvalid reports whether err says a model file is corrupt or unsupported
// (as opposed to, say, a permission error).
func IsInvalid(err error) bool {
	return errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsupported)
}
