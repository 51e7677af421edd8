package engine

// #cgo LDFLAGS: -lm
// #include <stdlib.h>
// #include "helpers.h"
import "C"

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"runtime/cgo"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"

	"github.com/finserve/finserve/models"
)

// Token is a vocabulary id.
type Token = int32

var backendOnce sync.Once

// initBackend loads the ggml backends (a no-op for the bundled provider,
// whose CPU backend is linked in) and routes llama.cpp logs into slog.
func initBackend() {
	backendOnce.Do(func() {
		// Logs first: loading the backend modules logs which it chose.
		C.llama_log_set(C.ggml_log_callback(C.fs_log_trampoline), nil)
		loadBackends()
		C.llama_backend_init()
	})
}

var (
	logger  atomic.Pointer[slog.Logger]
	logMu   sync.Mutex
	logLine []byte
	logLvl  slog.Level
)

// SetLogger sets where llama.cpp's own log lines go. Its INFO lines (many,
// while loading) are logged at Debug; warnings and errors as such.
// nil restores slog.Default().
func SetLogger(l *slog.Logger) { logger.Store(l) }

//export goLog
func goLog(level C.int, text *C.char, _ C.uintptr_t) {
	s := C.GoString(text)
	logMu.Lock()
	defer logMu.Unlock()
	switch level {
	case C.GGML_LOG_LEVEL_CONT:
	case C.GGML_LOG_LEVEL_WARN:
		logLvl = slog.LevelWarn
	case C.GGML_LOG_LEVEL_ERROR:
		logLvl = slog.LevelError
	default:
		logLvl = slog.LevelDebug
	}
	logLine = append(logLine, s...)
	for {
		i := bytes.IndexByte(logLine, '\n')
		if i < 0 {
			break
		}
		if line := strings.TrimSpace(string(logLine[:i])); line != "" {
			if quantProgress != nil {
				quantProgress(line)
			}
			l := logger.Load()
			if l == nil {
				l = slog.Default()
			}
			lvl := logLvl
			if lvl == slog.LevelWarn && (strings.Contains(line, "< n_ctx_train") || strings.Contains(line, "removing memory module entries")) {
				// A context below the training length is a deliberate
				// setting (Options.Context), not a problem; cells removed
				// after a decode stopped are a step cut on purpose (a
				// failed decode is logged by the loop).
				lvl = slog.LevelDebug
			}
			l.Log(context.Background(), lvl, line, "source", "llama.cpp")
		}
		logLine = logLine[i+1:]
	}
	if len(logLine) == 0 {
		logLine = nil
	}
}

//export goProgress
func goProgress(progress C.float, handle C.uintptr_t) C.bool {
	fn := cgo.Handle(handle).Value().(func(float32) bool)
	return C.bool(fn(float32(progress)))
}

// ModelOptions tune how a model is loaded.
type ModelOptions struct {
	// GPULayers is how many layers to offload to GPUs (system provider
	// built with a GPU backend), counted from the last as llama.cpp counts
	// them: 0 keeps everything on the CPU, models.GPULayersAll (-1) offloads
	// every layer and the output layer, models.GPULayersAuto as many as the
	// GPUs' free memory holds beside the KV cache Serving describes.
	GPULayers int
	// Serving is the shape of the KV cache and batches the model will
	// serve, which the placement plan reserves GPU memory for.
	Serving ServingShape
	// MainGPU is the GPU (an index into GPUs) that holds the whole model
	// with SplitNone, or the small tensors and intermediate results with
	// SplitRow.
	MainGPU int
	// SplitMode says how the offloaded layers spread over several GPUs.
	SplitMode SplitMode
	// TensorSplit gives each GPU's share of the offloaded model, in
	// proportions ([3, 1]: three quarters on GPU 0); empty: by free memory.
	TensorSplit []float32
	// Progress, if set, receives the loading progress from 0 to 1.
	Progress func(float32)
	// cpuAsGPU is for tests on GPU-less machines: the CPU device is given
	// to llama.cpp as the one offload device (and planned for as a GPU with
	// ample memory), so that llama.cpp's own layer assignment shows in its
	// buffers: offloaded weights in the device's plain buffer, the others
	// in the CPU's repacked one.
	cpuAsGPU bool
	// DisableRepack keeps weights in their file layout instead of repacking
	// them for ggml's interleaved CPU kernels (which types depends on the
	// ggml version: Q4_0, Q4_K, Q2_K and IQ4_NL in the bundled one, also
	// Q8_0, Q6_K and MXFP4 in newer ones). Repacked kernels handle rows in
	// groups of four and the rest one by one, so a sequence's logits can
	// depend on its place in the batch; see Options.UnifiedKV.
	DisableRepack bool
}

// ServingShape is what the engines on a model will allocate beside its
// weights: the placement plan (models.PlanPlacement) sizes GPUs for it.
type ServingShape struct {
	// Context is the tokens per sequence (default: the training context,
	// at most 4096, as Options.Context) and Sequences how many (default 1;
	// Options.Parallel plus pinned prefixes).
	Context, Sequences int
	// UBatch is the micro-batch, which sizes the compute buffers (default 512).
	UBatch int
	// CacheTypeK and CacheTypeV are the KV cache types ("": f16).
	CacheTypeK, CacheTypeV string
}

// Model is a loaded GGUF model: weights (memory-mapped) and vocabulary.
// Its methods are safe for concurrent use; inference goes through an Engine.
type Model struct {
	c      *C.struct_llama_model
	vocab  *C.struct_llama_vocab
	info   ModelInfo
	pieces [][]byte // token id -> text, special tokens rendered
	// neverUTF8 are the tokens whose text holds a byte no UTF-8 text
	// holds (C0, C1, F5-FF: byte-fallback tokens): grammar-constrained
	// sampling bans them, since llama.cpp's grammar decodes UTF-8 leniently
	// and would count such bytes as characters the answer then lacks.
	neverUTF8 []Token
	attrs     []uint32 // token id -> llama_token_attr
	eog       []bool

	maxPiece int // bytes of the longest piece
	plan     models.Plan
	head     [2]int64 // key and value head sizes, for KV cache type checks

	mu     sync.RWMutex // held for reading by users of c, for writing by Close
	closed bool

	// engines open on the model: Close closes them first, since llama.cpp
	// frees a context after its model only at the cost of a use-after-free.
	engMu   sync.Mutex
	engines map[*Engine]struct{}

	// parsed holds the hashes of grammars CheckGrammar accepted, so that
	// a request's grammar is parsed once however many layers check it
	// (the server before tokenizing, Generate after).
	parsedMu sync.Mutex
	parsed   map[[32]byte]bool
}

// ModelInfo describes a loaded model.
type ModelInfo struct {
	Path         string
	Description  string
	Architecture string
	Params       uint64
	SizeBytes    uint64
	VocabSize    int
	TrainContext int
	Embedding    int
	Layers       int
	ChatTemplate string // the model's own template, "" if none
	BOS, EOS     Token  // -1 if none
	AddBOS       bool
	// Pooling is how an embedding model pools its last hidden states into
	// one vector (mean, cls, last; rank for a reranker), from the file's
	// <architecture>.pooling_type; "" for a text-generation model.
	Pooling string
}

// poolingNames are llama_pooling_type's values by name (0 is none).
var poolingNames = map[int64]string{1: "mean", 2: "cls", 3: "last", 4: "rank"}

// Embeds reports whether the model is an embedding model.
func (i ModelInfo) Embeds() bool { return i.Pooling != "" }

// Errors returned by model loading.
var (
	ErrInvalidModel = errors.New("invalid model file")
	ErrModelClosed  = errors.New("model is closed")
)

// LoadModel validates path as GGUF (rejecting corrupt, truncated or
// unsupported files before llama.cpp reads them) and loads it. Cancelling
// ctx aborts a load in progress.
func LoadModel(ctx context.Context, path string, opts ModelOptions) (*Model, error) {
	f, err := models.Check(path)
	if err != nil {
		if models.IsInvalid(err) {
			return nil, fmt.Errorf("%w %s: %w", ErrInvalidModel, path, err)
		}
		return nil, fmt.Errorf("loading model: %w", err)
	}
	initBackend()
	devs := GPUs()
	if opts.cpuAsGPU {
		devs = []Device{{Name: "CPU", Kind: "gpu", FreeBytes: 1 << 40, TotalBytes: 1 << 40}}
	}
	gpus := len(devs)
	if err := opts.checkGPU(gpus); err != nil {
		return nil, fmt.Errorf("loading model %s: %w", path, err)
	}
	plan, err := opts.Plan(f, devs)
	if err != nil {
		return nil, fmt.Errorf("loading model %s: %w", path, err)
	}
	logPlan(plan, opts.GPULayers, gpus)

	params := C.llama_model_default_params()
	freeSplit := opts.applyGPU(&params, plan.NGPULayers, gpus)
	defer freeSplit()
	if opts.cpuAsGPU {
		devList := (*[2]C.ggml_backend_dev_t)(C.calloc(2, C.size_t(unsafe.Sizeof(C.ggml_backend_dev_t(nil)))))
		defer C.free(unsafe.Pointer(devList))
		devList[0] = C.ggml_backend_dev_by_type(C.GGML_BACKEND_DEVICE_TYPE_CPU)
		params.devices = &devList[0]
	}
	if opts.DisableRepack {
		params.use_extra_bufts = false
	}
	progress := cgo.NewHandle(func(p float32) bool {
		if opts.Progress != nil {
			opts.Progress(p)
		}
		return ctx.Err() == nil
	})
	defer progress.Delete()
	params.progress_callback = C.llama_progress_callback(C.fs_progress_trampoline)
	// The C side receives a pointer to C memory holding the handle: an
	// integer stored in a pointer field would confuse the Go garbage collector.
	hp := (*C.uintptr_t)(C.malloc(C.size_t(unsafe.Sizeof(C.uintptr_t(0)))))
	defer C.free(unsafe.Pointer(hp))
	*hp = C.uintptr_t(progress)
	params.progress_callback_user_data = unsafe.Pointer(hp)

	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	cm := C.llama_model_load_from_file(cpath, params)
	if cm == nil {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("loading model: %w", err)
		}
		return nil, fmt.Errorf("loading model %s: llama.cpp could not load it (see its log lines)", path)
	}
	m := &Model{c: cm, vocab: C.llama_model_get_vocab(cm), plan: plan}
	m.describe(path, f)
	sum := models.Summarize(path, f)
	m.head = [2]int64{sum.HeadDimK, sum.HeadDimV}
	return m, nil
}

// Plan resolves the GPU layer setting into a placement on the GPUs devs,
// as LoadModel does on the GPUs it sees (`model inspect` plans for others).
func (o ModelOptions) Plan(f *models.File, devs []Device) (models.Plan, error) {
	sh := o.Serving
	tk, err := models.ParseKVCacheType(sh.CacheTypeK)
	if err != nil {
		return models.Plan{}, err
	}
	tv, err := models.ParseKVCacheType(sh.CacheTypeV)
	if err != nil {
		return models.Plan{}, err
	}
	seqCtx := int64(sh.Context)
	if seqCtx <= 0 {
		train, _ := f.Int(f.Architecture() + ".context_length")
		seqCtx = min(max(train, 16), 4096)
	}
	// Each sequence's stream is padded to 256 cells (see newLoop).
	cells := (seqCtx + 255) / 256 * 256 * int64(max(sh.Sequences, 1))
	in := models.PlanInput{
		GPULayers: o.GPULayers, Split: o.TensorSplit, SplitMode: o.SplitMode.String(), MainGPU: o.MainGPU,
		Cells: cells, UBatch: int64(sh.UBatch), TypeK: tk, TypeV: tv,
	}
	for _, d := range devs {
		in.GPUs = append(in.GPUs, models.GPU{Name: d.Name, FreeBytes: int64(d.FreeBytes)})
	}
	return models.PlanPlacement(f, in)
}

func logPlan(p models.Plan, setting, gpus int) {
	if gpus == 0 {
		if setting != 0 && setting != models.GPULayersAuto {
			slog.Warn("no GPU device: the model stays on the CPU", "gpu_layers", models.GPULayersString(setting), "provider", Provider)
		}
		return
	}
	slog.Info("placement", "gpu_layers", p.Setting, "n_gpu_layers", p.NGPULayers, "layers_on_gpu", p.Offloaded,
		"layers", p.Layers, "output_on_gpu", p.Output, "kv_mib", p.KVBytes>>20,
		"cpu_weights_mib", p.CPUWeights>>20, "cpu_kv_mib", p.CPUKV>>20)
	for _, d := range p.Devices {
		attrs := []any{"device", d.Name, "layers", d.Layers, "output", d.Output, "weights_mib", d.Weights >> 20,
			"kv_mib", d.KV >> 20, "compute_mib", d.Compute >> 20, "free_mib", d.Free >> 20, "headroom_mib", d.Headroom() >> 20}
		if d.Headroom() < 0 {
			slog.Warn("placement exceeds the device's free memory; lower --gpu-layers, --parallel or --ctx", attrs...)
			continue
		}
		slog.Info("placement device", attrs...)
	}
}

// Plan is where the model's layers and KV cache were placed.
func (m *Model) Plan() models.Plan { return m.plan }

func (m *Model) describe(path string, f *models.File) {
	c, v := m.c, m.vocab
	n := int(C.llama_vocab_n_tokens(v))
	buf := make([]byte, 256)
	desc := func() string {
		k := C.llama_model_desc(c, (*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)))
		return string(buf[:max(0, min(int(k), len(buf)-1))])
	}()
	m.info = ModelInfo{
		Path:         path,
		Description:  desc,
		Architecture: f.Architecture(),
		Params:       uint64(C.llama_model_n_params(c)),
		SizeBytes:    uint64(C.llama_model_size(c)),
		VocabSize:    n,
		TrainContext: int(C.llama_model_n_ctx_train(c)),
		Embedding:    int(C.llama_model_n_embd(c)),
		Layers:       int(C.llama_model_n_layer(c)),
		BOS:          Token(C.llama_vocab_bos(v)),
		EOS:          Token(C.llama_vocab_eos(v)),
		AddBOS:       bool(C.llama_vocab_get_add_bos(v)),
	}
	if t := C.llama_model_chat_template(c, nil); t != nil {
		m.info.ChatTemplate = C.GoString(t)
	}
	if p, ok := f.Int(m.info.Architecture + ".pooling_type"); ok {
		m.info.Pooling = poolingNames[p]
	}
	// Render every token once: detokenizing generated text is then a table
	// lookup, with no cgo call per token and no id ever out of range in C.
	m.pieces = make([][]byte, n)
	m.attrs = make([]uint32, n)
	m.eog = make([]bool, n)
	for id := 0; id < n; id++ {
		tok := C.llama_token(id)
		k := C.llama_token_to_piece(v, tok, (*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), 0, true)
		if k < 0 {
			big := make([]byte, -k)
			k = C.llama_token_to_piece(v, tok, (*C.char)(unsafe.Pointer(&big[0])), C.int32_t(len(big)), 0, true)
			m.pieces[id] = big[:max(0, int(k))]
		} else {
			m.pieces[id] = bytes.Clone(buf[:k])
		}
		m.maxPiece = max(m.maxPiece, len(m.pieces[id]))
		m.attrs[id] = uint32(C.llama_vocab_get_attr(v, tok))
		m.eog[id] = bool(C.llama_vocab_is_eog(v, tok))
		if !m.IsSpecial(Token(id)) && slices.ContainsFunc(m.pieces[id], func(b byte) bool { return b == 0xC0 || b == 0xC1 || b >= 0xF5 }) {
			m.neverUTF8 = append(m.neverUTF8, Token(id))
		}
	}
}

// Info describes the model.
func (m *Model) Info() ModelInfo { return m.info }

// Close closes the engines still open on the model, then frees it. It is
// safe to call more than once.
func (m *Model) Close() {
	m.engMu.Lock()
	open := make([]*Engine, 0, len(m.engines))
	for e := range m.engines {
		open = append(open, e)
	}
	m.engMu.Unlock()
	for _, e := range open {
		e.Close()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.closed {
		m.closed = true
		C.llama_model_free(m.c)
		m.c, m.vocab = nil, nil
	}
}

// ValidToken reports whether t is a token id of this model.
func (m *Model) ValidToken(t Token) bool { return t >= 0 && int(t) < m.info.VocabSize }

// IsEOG reports whether t ends generation (end of sequence or of turn).
func (m *Model) IsEOG(t Token) bool { return m.ValidToken(t) && m.eog[t] }

// IsSpecial reports whether t is a control or unknown token, which
// generated text leaves out.
func (m *Model) IsSpecial(t Token) bool {
	return m.ValidToken(t) && m.attrs[t]&(C.LLAMA_TOKEN_ATTR_CONTROL|C.LLAMA_TOKEN_ATTR_UNKNOWN) != 0
}

// MinTokens is a lower bound on the tokens text of n bytes tokenizes to:
// no token stands for more bytes than the vocabulary's longest piece, so a
// text can be judged too long from its size alone, before the tokenizer
// spends CPU on it.
func (m *Model) MinTokens(n int) int {
	if m.maxPiece == 0 {
		return 0
	}
	return (n + m.maxPiece - 1) / m.maxPiece
}

// IsMarker reports whether t is a control or user-defined token: the
// tokens templates mark turns with, which message content must never
// produce (llama.cpp matches user-defined tokens even with special-token
// parsing off).
func (m *Model) IsMarker(t Token) bool {
	return m.ValidToken(t) && m.attrs[t]&(C.LLAMA_TOKEN_ATTR_CONTROL|C.LLAMA_TOKEN_ATTR_USER_DEFINED|C.LLAMA_TOKEN_ATTR_UNKNOWN) != 0
}

// Piece returns the bytes token t renders to (special tokens included by
// name). A piece can end in the middle of a UTF-8 character.
func (m *Model) Piece(t Token) []byte {
	if !m.ValidToken(t) {
		return nil
	}
	return m.pieces[t]
}

// Tokenize converts text to tokens. addSpecial adds BOS (and EOS) as the
// model asks; parseSpecial lets text name special tokens such as
// "<|im_start|>" (use it only for text the server itself produced, such as
// a rendered chat template).
func (m *Model) Tokenize(text string, addSpecial, parseSpecial bool) ([]Token, error) {
	if !utf8.ValidString(text) {
		return nil, errors.New("tokenizing: text is not valid UTF-8")
	}
	if len(text) > 1<<30 {
		return nil, errors.New("tokenizing: text is too long")
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return nil, ErrModelClosed
	}
	if addSpecial && m.info.AddBOS && m.info.BOS < 0 {
		// llama.cpp asserts on this; refuse instead.
		return nil, errors.New("tokenizing: the model asks for a BOS token but has none")
	}
	var ctext *C.char
	if len(text) > 0 {
		ctext = (*C.char)(unsafe.Pointer(unsafe.StringData(text)))
	}
	out := make([]Token, len(text)+8)
	for {
		var p *C.llama_token
		if len(out) > 0 {
			p = (*C.llama_token)(unsafe.Pointer(&out[0]))
		}
		n := C.llama_tokenize(m.vocab, ctext, C.int32_t(len(text)), p, C.int32_t(len(out)), C.bool(addSpecial), C.bool(parseSpecial))
		if n == C.INT32_MIN {
			return nil, errors.New("tokenizing: too many tokens")
		}
		if n >= 0 {
			return out[:n], nil
		}
		out = make([]Token, -n)
	}
}

// Detokenize converts tokens to text the way llama.cpp does for a whole
// sequence: BOS dropped, the tokenizer's leading space removed, special
// tokens left out. It is the inverse of Tokenize(text, true, false).
func (m *Model) Detokenize(tokens []Token) (string, error) {
	for _, t := range tokens {
		if !m.ValidToken(t) {
			return "", fmt.Errorf("detokenizing: %d is not a token id (vocabulary %d)", t, m.info.VocabSize)
		}
	}
	if len(tokens) == 0 {
		return "", nil
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return "", ErrModelClosed
	}
	// llama.cpp keeps the tokenizer's leading space when it drops the BOS
	// itself; dropping the BOS here lets it remove the space as well.
	if tokens[0] == m.info.BOS {
		tokens = tokens[1:]
		if len(tokens) == 0 {
			return "", nil
		}
	}
	buf := make([]byte, 4*len(tokens)+16)
	for {
		n := C.llama_detokenize(m.vocab, (*C.llama_token)(unsafe.Pointer(&tokens[0])), C.int32_t(len(tokens)),
			(*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)), true, false)
		if n >= 0 {
			return string(buf[:n]), nil
		}
		buf = make([]byte, -n)
	}
}

// Message is one turn of a chat.
type Message struct {
	Role    string // system, user or assistant
	Content string
}

// ErrNoChatTemplate means the model has no chat template and none was named.
var ErrNoChatTemplate = errors.New("the model has no chat template; name one (for example chatml or llama3)")

// BuiltinTemplates lists the chat template names llama.cpp knows.
func BuiltinTemplates() []string {
	initBackend()
	n := C.llama_chat_builtin_templates(nil, 0)
	if n <= 0 {
		return nil
	}
	names := make([]*C.char, n)
	C.llama_chat_builtin_templates(&names[0], C.size_t(n))
	out := make([]string, n)
	for i, p := range names {
		out[i] = C.GoString(p)
	}
	return out
}

// ApplyChatTemplate renders messages into a prompt with template, which is
// a builtin name (see BuiltinTemplates), a Jinja template llama.cpp
// recognises, or "" for the model's own. addAssistant appends the opening
// of the assistant's turn.
func (m *Model) ApplyChatTemplate(template string, messages []Message, addAssistant bool) (string, error) {
	if template == "" {
		template = m.info.ChatTemplate
		if template == "" {
			return "", ErrNoChatTemplate
		}
	}
	if len(messages) == 0 {
		return "", errors.New("applying chat template: no messages")
	}
	if strings.IndexByte(template, 0) >= 0 {
		return "", errors.New("applying chat template: template contains a NUL byte")
	}
	total := 0
	for i, msg := range messages {
		// C strings end at NUL: refuse rather than silently truncate.
		if strings.IndexByte(msg.Role, 0) >= 0 || strings.IndexByte(msg.Content, 0) >= 0 {
			return "", fmt.Errorf("applying chat template: message %d contains a NUL byte", i)
		}
		total += len(msg.Role) + len(msg.Content)
	}
	ctmpl := C.CString(template)
	defer C.free(unsafe.Pointer(ctmpl))
	cmsgs := unsafe.Slice((*C.struct_llama_chat_message)(C.malloc(C.size_t(len(messages))*C.size_t(unsafe.Sizeof(C.struct_llama_chat_message{})))), len(messages))
	defer C.free(unsafe.Pointer(&cmsgs[0]))
	for i, msg := range messages {
		cmsgs[i].role = C.CString(msg.Role)
		cmsgs[i].content = C.CString(msg.Content)
	}
	defer func() {
		for i := range cmsgs {
			C.free(unsafe.Pointer(cmsgs[i].role))
			C.free(unsafe.Pointer(cmsgs[i].content))
		}
	}()
	buf := make([]byte, 2*total+256)
	for {
		n := C.llama_chat_apply_template(ctmpl, &cmsgs[0], C.size_t(len(cmsgs)), C.bool(addAssistant),
			(*C.char)(unsafe.Pointer(&buf[0])), C.int32_t(len(buf)))
		if n < 0 {
			return "", fmt.Errorf("applying chat template: llama.cpp does not support this template; builtin names: %s",
				strings.Join(BuiltinTemplates(), ", "))
		}
		if int(n) <= len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, n)
	}
}

// SystemInfo is llama.cpp's description of the CPU features and backends
// it was built with.
func SystemInfo() string {
	initBackend()
	return C.GoString(C.llama_print_system_info())
}

// Bounds on a grammar's text and on how deep its groups nest.
const (
	maxGrammarBytes = 64 << 10
	maxGrammarDepth = 64
	// maxParsedGrammars bounds the memory of accepted grammars' hashes.
	maxParsedGrammars = 256
)

// scanGrammar reads a grammar outside its string literals, character
// classes and comments: the deepest nesting of parentheses, and the first
// repetition llama.cpp mishandles, if any: {m,n} with n below m, on which
// its parser loops for seconds and allocates without bound (found by
// FuzzCheckGrammar: the fuzzer's process was killed for its memory).
func scanGrammar(g string) (deepest int, badRep string) {
	depth := 0
	var quote byte // '"' or ']' while inside a literal or a class
	for i := 0; i < len(g); i++ {
		c := g[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"':
			quote = '"'
		case c == '[':
			quote = ']'
		case c == '#':
			for i < len(g) && g[i] != '\n' {
				i++
			}
		case c == '(':
			depth++
			deepest = max(deepest, depth)
		case c == ')':
			depth--
		case c == '{' && badRep == "":
			lo, j := grammarCount(g, i+1)
			if j < len(g) && g[j] == ',' {
				hi, k := grammarCount(g, j+1)
				if k < len(g) && g[k] == '}' && k > j+1 && lo > hi {
					badRep = g[i : k+1]
				}
			}
		}
	}
	return deepest, badRep
}

// grammarCount reads the decimal number (spaces around it allowed) at
// g[i:], and returns it (saturated) and the index after it.
func grammarCount(g string, i int) (n, j int) {
	for i < len(g) && g[i] == ' ' {
		i++
	}
	for i < len(g) && g[i] >= '0' && g[i] <= '9' {
		n = min(n*10+int(g[i]-'0'), 1<<30)
		i++
	}
	for i < len(g) && g[i] == ' ' {
		i++
	}
	return n, i
}

// grammarSampler parses a GBNF grammar into a llama.cpp sampler, or
// returns nil if llama.cpp rejects it. The vocabulary is only read.
func (m *Model) grammarSampler(grammar string) *C.struct_llama_sampler {
	cg := C.CString(grammar)
	defer C.free(unsafe.Pointer(cg))
	root := C.CString("root")
	defer C.free(unsafe.Pointer(root))
	return C.llama_sampler_init_grammar(m.vocab, cg, root)
}

// CheckGrammar reports whether llama.cpp accepts a grammar, so that a bad
// one is a request error rather than a failure inside the loop.
func (m *Model) CheckGrammar(grammar string) error {
	switch {
	case len(grammar) > maxGrammarBytes:
		return invalid("grammar", "is longer than %d bytes", maxGrammarBytes)
	case strings.IndexByte(grammar, 0) >= 0:
		return invalid("grammar", "contains a NUL byte")
	case !utf8.ValidString(grammar):
		return invalid("grammar", "is not valid UTF-8")
	}
	depth, badRep := scanGrammar(grammar)
	switch {
	case depth > maxGrammarDepth:
		// llama.cpp's parser recurses once per level
		return invalid("grammar", "nests groups more than %d deep", maxGrammarDepth)
	case badRep != "":
		return invalid("grammar", "repetition %s has a maximum below its minimum", badRep)
	}
	sum := sha256.Sum256([]byte(grammar))
	m.parsedMu.Lock()
	ok := m.parsed[sum]
	m.parsedMu.Unlock()
	if ok {
		return nil
	}
	g := m.grammarSampler(grammar)
	if g == nil {
		return invalid("grammar", "llama.cpp cannot parse it (start rule \"root\"; see llama.cpp's GBNF syntax)")
	}
	C.llama_sampler_free(g)
	m.parsedMu.Lock()
	if len(m.parsed) >= maxParsedGrammars || m.parsed == nil {
		m.parsed = map[[32]byte]bool{} // bounded: start over
	}
	m.parsed[sum] = true
	m.parsedMu.Unlock()
	return nil
}
