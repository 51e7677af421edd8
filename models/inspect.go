package models

import (
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
)

// Summary is what an operator needs to know about a model file before
// serving it.
type Summary struct {
	Path          string
	FileBytes     int64
	Version       uint32
	Architecture  string
	Name          string
	FileType      string // llama.cpp's ftype name, e.g. "Q8_0"
	Params        int64
	TensorBytes   int64
	TensorTypes   []TypeCount // by bytes, largest first
	ContextLength int64       // training context
	Embedding     int64
	Layers        int64
	Heads         int64
	HeadsKV       int64
	HeadDimK      int64
	HeadDimV      int64
	FeedForward   int64
	VocabSize     int64
	ChatTemplate  bool
}

// TypeCount is how many tensors of one type a model has and their bytes.
type TypeCount struct {
	Type    TensorType
	Tensors int
	Bytes   int64
}

// ftypeNames are llama.cpp's llama_ftype values for general.file_type.
var ftypeNames = map[int64]string{
	0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
	10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
	16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
	22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
	28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}

// Summarize describes a parsed file.
func Summarize(path string, f *File) Summary {
	s := Summary{Path: path, FileBytes: f.Size, Version: f.Version, Architecture: f.Architecture()}
	s.Name, _ = f.String("general.name")
	if ft, ok := f.Int("general.file_type"); ok {
		s.FileType = ftypeNames[ft]
		if s.FileType == "" {
			s.FileType = fmt.Sprintf("ftype %d", ft)
		}
	}
	byType := map[TensorType]*TypeCount{}
	for _, t := range f.Tensors {
		s.Params += t.Elements()
		s.TensorBytes += t.Bytes()
		c := byType[t.Type]
		if c == nil {
			c = &TypeCount{Type: t.Type}
			byType[t.Type] = c
		}
		c.Tensors++
		c.Bytes += t.Bytes()
	}
	for _, c := range byType {
		s.TensorTypes = append(s.TensorTypes, *c)
	}
	sort.Slice(s.TensorTypes, func(i, j int) bool { return s.TensorTypes[i].Bytes > s.TensorTypes[j].Bytes })

	a := s.Architecture + "."
	s.ContextLength, _ = f.Int(a + "context_length")
	s.Embedding, _ = f.Int(a + "embedding_length")
	s.Layers, _ = f.Int(a + "block_count")
	s.Heads, _ = f.Int(a + "attention.head_count")
	s.FeedForward, _ = f.Int(a + "feed_forward_length")
	s.HeadsKV = s.Heads
	if n, ok := f.Int(a + "attention.head_count_kv"); ok {
		s.HeadsKV = n
	}
	if s.Heads > 0 {
		s.HeadDimK, s.HeadDimV = s.Embedding/s.Heads, s.Embedding/s.Heads
	}
	if n, ok := f.Int(a + "attention.key_length"); ok {
		s.HeadDimK = n
	}
	if n, ok := f.Int(a + "attention.value_length"); ok {
		s.HeadDimV = n
	}
	if raw, ok := f.Lookup("tokenizer.ggml.tokens"); ok {
		if toks, ok := raw.([]string); ok {
			s.VocabSize = int64(len(toks))
		}
	}
	_, s.ChatTemplate = f.String("tokenizer.chat_template")
	return s
}

// Memory is an estimate of the memory a model needs when served.
type Memory struct {
	Weights int64 // tensor data, mapped from the file
	KVCache int64 // f16 keys and values for every cell
	Outputs int64 // logits buffer: one row per sequence per step
	Compute int64 // scratch for one micro-batch (approximate)
}

// Total is the sum of the parts.
func (m Memory) Total() int64 { return m.Weights + m.KVCache + m.Outputs + m.Compute }

// MemoryFor estimates the memory for serving parallel sequences of up to
// ctx tokens each (a KV cache of ctx*parallel cells, f16 keys and values)
// with micro-batches of ubatch tokens. The KV cache and weights are exact;
// the compute scratch is an approximation of ggml's graph allocation.
func (s Summary) MemoryFor(ctx, parallel, ubatch int64) Memory {
	cells := ctx * parallel
	kvPerCell := s.Layers * s.HeadsKV * (s.HeadDimK + s.HeadDimV) * 2
	outRows := max(parallel, 1)
	return Memory{
		Weights: s.TensorBytes,
		KVCache: cells * kvPerCell,
		Outputs: outRows * s.VocabSize * 4,
		Compute: ubatch * (s.VocabSize + 6*s.Embedding + 3*s.FeedForward) * 4,
	}
}

// Print writes the summary and a memory estimate as an aligned table.
func (s Summary) Print(w io.Writer, ctx, parallel, ubatch int64) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
	row("file", s.Path)
	row("size", HumanBytes(s.FileBytes))
	row("gguf version", s.Version)
	row("architecture", s.Architecture)
	if s.Name != "" {
		row("name", s.Name)
	}
	if s.FileType != "" {
		row("file type", s.FileType)
	}
	row("parameters", fmt.Sprintf("%d (%s)", s.Params, humanCount(s.Params)))
	for _, c := range s.TensorTypes {
		row("tensors "+c.Type.String(), fmt.Sprintf("%d tensors, %s", c.Tensors, HumanBytes(c.Bytes)))
	}
	row("context length (trained)", s.ContextLength)
	row("embedding", s.Embedding)
	row("layers", s.Layers)
	row("heads / kv heads", fmt.Sprintf("%d / %d", s.Heads, s.HeadsKV))
	row("feed-forward", s.FeedForward)
	row("vocabulary", s.VocabSize)
	row("chat template", s.ChatTemplate)
	m := s.MemoryFor(ctx, parallel, ubatch)
	row(fmt.Sprintf("memory at ctx %d x %d sequences", ctx, parallel), HumanBytes(m.Total()))
	row("  weights", HumanBytes(m.Weights))
	row("  kv cache (f16)", HumanBytes(m.KVCache))
	row("  logits", HumanBytes(m.Outputs))
	row(fmt.Sprintf("  compute (~, ubatch %d)", ubatch), HumanBytes(m.Compute))
	return tw.Flush()
}

// HumanBytes renders a byte count in binary units, such as "1.50 GiB".
func HumanBytes(n int64) string {
	if n < 0 {
		return "-" + HumanBytes(-n)
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func humanCount(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.2fB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1fK", float64(n)/1e3)
	}
	return fmt.Sprint(n)
}
