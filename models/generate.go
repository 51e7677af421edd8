package models

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
)

// Preset is the shape of a synthetic model.
type Preset struct {
	Name string
	// Arch is the llama.cpp architecture: "llama" (the default, for "") or
	// "qwen3", llama's layers with a norm on each head's queries and keys,
	// whose loader reads a pooling type (Qwen3-Embedding's architecture).
	Arch string
	// Pooling makes an embedding model: mean, cls or last (the
	// <arch>.pooling_type llama.cpp pools the final hidden states by);
	// "" for a text-generation model. Only the qwen3 architecture has it.
	Pooling string
	Embd    int64 // embedding length
	Layers  int64
	Heads   int64
	HeadsKV int64
	FF      int64 // feed-forward length
	Vocab   int64
	Context int64 // training context length written to the metadata
}

// Presets are the synthetic model shapes: tiny for unit tests (a few MB),
// bench for speed measurements (the 134M-parameter shape of DESIGN.md) and
// 13b for capacity tests (the shape of a 13B llama).
var Presets = map[string]Preset{
	"tiny":  {Name: "tiny", Embd: 128, Layers: 2, Heads: 4, HeadsKV: 2, FF: 256, Vocab: 2048, Context: 4096},
	"bench": {Name: "bench", Embd: 768, Layers: 12, Heads: 12, HeadsKV: 12, FF: 2048, Vocab: 32000, Context: 4096},
	"13b":   {Name: "13b", Embd: 5120, Layers: 40, Heads: 40, HeadsKV: 40, FF: 13824, Vocab: 32000, Context: 4096},
	// embed is tiny's shape as an embedding model (Qwen3-Embedding's
	// architecture, mean pooling), for /v1/embeddings.
	"embed": {Name: "embed", Arch: "qwen3", Pooling: "mean", Embd: 128, Layers: 2, Heads: 4, HeadsKV: 2, FF: 256, Vocab: 2048, Context: 4096},
}

// PoolingTypes maps a pooling name to llama.cpp's llama_pooling_type.
var PoolingTypes = map[string]uint32{"mean": 1, "cls": 2, "last": 3}

// arch is the preset's architecture name.
func (p Preset) arch() string { return cmp.Or(p.Arch, "llama") }

// PresetNames lists the preset names in a stable order.
func PresetNames() []string {
	names := make([]string, 0, len(Presets))
	for n := range Presets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Params is the number of weights the preset's model has.
func (p Preset) Params() int64 {
	var n int64
	for _, t := range p.tensors(TypeF32) {
		n += t.Elements()
	}
	return n
}

func (p Preset) validate() error {
	switch {
	case p.Embd <= 0 || p.Layers <= 0 || p.Heads <= 0 || p.HeadsKV <= 0 || p.FF <= 0 || p.Context <= 0:
		return fmt.Errorf("preset %q: every dimension must be positive", p.Name)
	case p.Embd%p.Heads != 0 || p.Heads%p.HeadsKV != 0:
		return fmt.Errorf("preset %q: embedding %d, heads %d and kv heads %d do not divide", p.Name, p.Embd, p.Heads, p.HeadsKV)
	case p.Embd%32 != 0 || p.FF%32 != 0 || (p.Embd/p.Heads*p.HeadsKV)%32 != 0:
		return fmt.Errorf("preset %q: dimensions must be multiples of 32 for q8_0", p.Name)
	case p.Vocab < 300:
		return fmt.Errorf("preset %q: vocabulary of %d is below the minimum 300", p.Name, p.Vocab)
	case p.arch() != "llama" && p.arch() != "qwen3":
		return fmt.Errorf("preset %q: architecture %q is not llama or qwen3", p.Name, p.Arch)
	case p.Pooling != "" && p.arch() != "qwen3":
		return fmt.Errorf("preset %q: pooling needs the qwen3 architecture (llama.cpp's llama loader ignores it)", p.Name)
	}
	if _, ok := PoolingTypes[p.Pooling]; p.Pooling != "" && !ok {
		return fmt.Errorf("preset %q: pooling %q is not mean, cls or last", p.Name, p.Pooling)
	}
	return nil
}

// tensors lists the llama tensor table with matrices of type typ and
// norms in f32, in the order llama.cpp's converter writes them; qwen3 adds
// a norm of each head's queries and keys to every layer.
func (p Preset) tensors(typ TensorType) []TensorInfo {
	kv := p.Embd / p.Heads * p.HeadsKV
	head := p.Embd / p.Heads
	ts := []TensorInfo{{Name: "token_embd.weight", Type: typ, Dims: []int64{p.Embd, p.Vocab}}}
	for i := int64(0); i < p.Layers; i++ {
		b := fmt.Sprintf("blk.%d.", i)
		ts = append(ts,
			TensorInfo{Name: b + "attn_norm.weight", Type: TypeF32, Dims: []int64{p.Embd}},
			TensorInfo{Name: b + "attn_q.weight", Type: typ, Dims: []int64{p.Embd, p.Embd}},
			TensorInfo{Name: b + "attn_k.weight", Type: typ, Dims: []int64{p.Embd, kv}},
			TensorInfo{Name: b + "attn_v.weight", Type: typ, Dims: []int64{p.Embd, kv}},
			TensorInfo{Name: b + "attn_output.weight", Type: typ, Dims: []int64{p.Embd, p.Embd}},
			TensorInfo{Name: b + "ffn_norm.weight", Type: TypeF32, Dims: []int64{p.Embd}},
			TensorInfo{Name: b + "ffn_gate.weight", Type: typ, Dims: []int64{p.Embd, p.FF}},
			TensorInfo{Name: b + "ffn_down.weight", Type: typ, Dims: []int64{p.FF, p.Embd}},
			TensorInfo{Name: b + "ffn_up.weight", Type: typ, Dims: []int64{p.Embd, p.FF}},
		)
		if p.arch() == "qwen3" {
			ts = append(ts,
				TensorInfo{Name: b + "attn_q_norm.weight", Type: TypeF32, Dims: []int64{head}},
				TensorInfo{Name: b + "attn_k_norm.weight", Type: TypeF32, Dims: []int64{head}})
		}
	}
	return append(ts,
		TensorInfo{Name: "output_norm.weight", Type: TypeF32, Dims: []int64{p.Embd}},
		TensorInfo{Name: "output.weight", Type: typ, Dims: []int64{p.Embd, p.Vocab}},
	)
}

// GenOptions says what Generate writes.
type GenOptions struct {
	Preset Preset
	Type   TensorType // f32, f16 or q8_0 for the weight matrices
	Seed   uint64
	// ChatTemplate, if set, is written as tokenizer.chat_template instead
	// of ChatML (a family's template, to test its rendering and tool
	// syntax on a generated model).
	ChatTemplate string
	// Pooling, if set, makes an embedding model of the preset's shape
	// (mean, cls or last pooling), in the qwen3 architecture.
	Pooling string
	// ControlTokens are added to the vocabulary as control tokens after
	// the turn markers (a family's own, such as [TOOL_CALLS] or
	// <|channel|>, for its chat template).
	ControlTokens []string
	// UserDefinedMarkers types the turn markers <|im_start|> and
	// <|im_end|> user-defined rather than control tokens (gpt-oss marks
	// its turns so), for tests of what content may spell.
	UserDefinedMarkers bool
	// Progress, if set, is called as tensor data is written.
	Progress Progress
}

// fileTypes maps a weight type to llama.cpp's general.file_type (llama_ftype).
var fileTypes = map[TensorType]uint32{TypeF32: 0, TypeF16: 1, TypeQ8_0: 7}

// Generate writes a llama-architecture GGUF model with seeded random weights
// to path (atomically: a temporary file renamed into place). The same preset,
// type and seed always give the same bytes; the same preset and seed with
// another type give the same weights in another precision.
func Generate(ctx context.Context, path string, opts GenOptions) (err error) {
	p := opts.Preset
	if opts.Pooling != "" {
		p.Arch, p.Pooling = "qwen3", opts.Pooling
		opts.Preset = p
	}
	if err := p.validate(); err != nil {
		return err
	}
	if _, ok := fileTypes[opts.Type]; !ok {
		return fmt.Errorf("generating model: weight type %s is not one of f32, f16, q8_0", opts.Type)
	}
	vocab, err := buildVocab(int(p.Vocab), opts.UserDefinedMarkers, opts.ControlTokens)
	if err != nil {
		return fmt.Errorf("generating model: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".gen-*.gguf")
	if err != nil {
		return fmt.Errorf("generating model: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err = WriteModel(ctx, tmp, opts, vocab); err != nil {
		return err
	}
	if err = tmp.Chmod(FileMode); err != nil { // CreateTemp made it 0600
		return fmt.Errorf("generating model: %w", err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("generating model: %w", err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("generating model: %w", err)
	}
	return nil
}

// FileMode is the mode of the model files finserve writes (model gen,
// quant): readable by all, as a model is not a secret and the server may
// run as another user than the one who made it (a container's arbitrary
// UID).
const FileMode os.FileMode = 0o644

// WriteModel streams the model described by opts to w.
func WriteModel(ctx context.Context, w io.Writer, opts GenOptions, vocab *Vocab) error {
	p := opts.Preset
	if opts.Pooling != "" {
		p.Arch, p.Pooling = "qwen3", opts.Pooling
	}
	a := p.arch()
	kvs := []KV{
		{"general.architecture", a},
		{"general.name", "finserve-synthetic-" + p.Name},
		{"general.file_type", fileTypes[opts.Type]},
		{"general.quantization_version", uint32(2)},
		{"finserve.synthetic.preset", p.Name},
		{"finserve.synthetic.seed", opts.Seed},
		{a + ".vocab_size", uint32(p.Vocab)},
		{a + ".context_length", uint32(p.Context)},
		{a + ".embedding_length", uint32(p.Embd)},
		{a + ".block_count", uint32(p.Layers)},
		{a + ".feed_forward_length", uint32(p.FF)},
		{a + ".attention.head_count", uint32(p.Heads)},
		{a + ".attention.head_count_kv", uint32(p.HeadsKV)},
		{a + ".rope.dimension_count", uint32(p.Embd / p.Heads)},
		{a + ".rope.freq_base", float32(10000)},
		{a + ".attention.layer_norm_rms_epsilon", float32(1e-5)},
	}
	if p.Pooling != "" {
		kvs = append(kvs, KV{a + ".pooling_type", PoolingTypes[p.Pooling]})
	}
	kvs = append(kvs, []KV{
		{"tokenizer.ggml.model", "llama"},
		{"tokenizer.ggml.tokens", vocab.Tokens},
		{"tokenizer.ggml.scores", vocab.Scores},
		{"tokenizer.ggml.token_type", vocab.Types},
		{"tokenizer.ggml.bos_token_id", uint32(BOSID)},
		{"tokenizer.ggml.eos_token_id", uint32(ImEndID)},
		{"tokenizer.ggml.unknown_token_id", uint32(UnkID)},
		{"tokenizer.ggml.add_bos_token", true},
		{"tokenizer.ggml.add_eos_token", false},
	}...)
	if p.Pooling == "" {
		// An embedding model has no chat.
		kvs = append(kvs, KV{"tokenizer.chat_template", cmp.Or(opts.ChatTemplate, ChatMLTemplate)})
	}
	infos := p.tensors(opts.Type)
	srcs := make([]TensorSource, len(infos))
	for i, t := range infos {
		srcs[i] = TensorSource{Info: t, Write: func(w io.Writer) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			return writeRandomTensor(w, t, opts.Seed, initScale(t))
		}}
	}
	return Write(w, kvs, srcs, opts.Progress)
}

// initScale is the half-width of the uniform distribution of a tensor's
// weights: norms are 1, projections keep unit variance, and the output
// layer spreads logits wide enough that greedy decoding has clear winners.
func initScale(t TensorInfo) float32 {
	switch {
	case len(t.Dims) == 1:
		return 0 // constant 1, see writeRandomTensor
	case t.Name == "token_embd.weight":
		return float32(math.Sqrt(3))
	case t.Name == "output.weight":
		return float32(3 * math.Sqrt(3) / math.Sqrt(float64(t.Dims[0])))
	}
	return float32(math.Sqrt(3) / math.Sqrt(float64(t.Dims[0])))
}

// chunkElems is the unit of deterministic parallel generation: chunk k of a
// tensor always comes from the same PCG stream, whatever the worker count.
const chunkElems = 1 << 16

func writeRandomTensor(w io.Writer, t TensorInfo, seed uint64, scale float32) error {
	n := t.Elements()
	if scale == 0 { // norm weights
		buf := make([]byte, 4*n)
		for i := int64(0); i < n; i++ {
			binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(1))
		}
		_, err := w.Write(buf)
		return err
	}
	h := fnv.New64a()
	h.Write([]byte(t.Name))
	tseed := h.Sum64() ^ seed

	workers := runtime.GOMAXPROCS(0)
	window := int64(workers) * chunkElems * 4
	vals := make([]float32, min(window, n))
	bytesPer := func(k int64) int64 { return k / t.Type.BlockSize() * t.Type.BlockBytes() }
	out := make([]byte, bytesPer(int64(len(vals))))
	for start := int64(0); start < n; start += window {
		cnt := min(window, n-start)
		var wg sync.WaitGroup
		for c := int64(0); c*chunkElems < cnt; c++ {
			lo, hi := c*chunkElems, min((c+1)*chunkElems, cnt)
			idx := uint64((start + lo) / chunkElems)
			wg.Add(1)
			go func() {
				defer wg.Done()
				fillUniform(vals[lo:hi], rand.NewPCG(tseed, idx), scale)
				encode(out[bytesPer(lo):bytesPer(hi)], vals[lo:hi], t.Type)
			}()
		}
		wg.Wait()
		if _, err := w.Write(out[:bytesPer(cnt)]); err != nil {
			return err
		}
	}
	return nil
}

func fillUniform(dst []float32, src *rand.PCG, scale float32) {
	k := scale / (1 << 31)
	for i := 0; i < len(dst); i += 2 {
		u := src.Uint64()
		dst[i] = float32(int32(uint32(u))) * k
		if i+1 < len(dst) {
			dst[i+1] = float32(int32(u>>32)) * k
		}
	}
}

func encode(dst []byte, x []float32, t TensorType) {
	switch t {
	case TypeF32:
		for i, v := range x {
			binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
		}
	case TypeF16:
		for i, v := range x {
			binary.LittleEndian.PutUint16(dst[2*i:], Float32ToFloat16(v))
		}
	case TypeQ8_0:
		QuantizeQ8_0(dst, x)
	default:
		panic("models: encode of unsupported type " + t.String())
	}
}
