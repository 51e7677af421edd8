package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/engine/enginebench"
	"github.com/finserve/finserve/models"
)

func newModelCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "model",
		Short: "Generate, inspect and benchmark GGUF models",
	}
	cmd.AddCommand(newModelGenCmd(), newModelInspectCmd(), newModelBenchCmd())
	return cmd
}

func newModelGenCmd() *cobra.Command {
	var (
		preset, typ, out, pooling, template string
		seed                                uint64
	)
	cmd := &cobra.Command{
		Use:     "gen",
		Example: "  finserve model gen --preset tiny --type q8_0 --out demo.gguf",
		Short:   "Write a synthetic model with seeded random weights",
		Long: `Write a GGUF model with seeded random weights, a byte-fallback
SentencePiece vocabulary (any UTF-8 text tokenizes, Chinese included) and,
for text generation, a ChatML chat template. Presets:
  tiny   128 x 2 layers, 2k vocabulary (unit tests, a few MB)
  bench  768 x 12 layers, 32k vocabulary (about 134M parameters)
  13b    5120 x 40 layers, 13824 feed-forward, 32k vocabulary (13B shape)
  embed  tiny's shape as an embedding model (Qwen3-Embedding's qwen3
         architecture, mean pooling), for /v1/embeddings
--pooling mean, cls or last makes an embedding model of any preset's shape
(--preset bench --pooling mean: a 134M-parameter one to measure with).
Random weights write gibberish and embeddings without meaning: use these
models to test and measure, not to chat or search.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, ok := models.Presets[preset]
			if !ok {
				return fmt.Errorf("--preset %q: want one of %s", preset, strings.Join(models.PresetNames(), ", "))
			}
			t, err := models.ParseTensorType(typ)
			if err != nil || (t != models.TypeF32 && t != models.TypeF16 && t != models.TypeQ8_0) {
				return fmt.Errorf("--type %q: want f32, f16 or q8_0", typ)
			}
			if out == "" {
				return fmt.Errorf("--out is required")
			}
			var chatTemplate string
			if template != "" {
				b, err := os.ReadFile(template)
				if err != nil {
					return fmt.Errorf("--chat-template: %w", err)
				}
				chatTemplate = string(b)
			}
			w := cmd.ErrOrStderr()
			start := time.Now()
			last := time.Time{}
			err = models.Generate(cmd.Context(), out, models.GenOptions{
				Preset: p, Type: t, Seed: seed, Pooling: pooling, ChatTemplate: chatTemplate,
				Progress: func(done, total int64) {
					if time.Since(last) > 500*time.Millisecond || done == total {
						last = time.Now()
						fmt.Fprintf(w, "\rwriting %s: %5.1f%% of %.1f MiB", out, 100*float64(done)/float64(total), mib(total))
					}
				},
			})
			fmt.Fprintln(w)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s (%s, %s, %d parameters) in %s\n", out, p.Name, t, p.Params(), time.Since(start).Round(time.Millisecond))
			return nil
		},
	}
	cmd.Flags().StringVar(&preset, "preset", "tiny", "model shape: "+strings.Join(models.PresetNames(), ", "))
	cmd.Flags().StringVar(&typ, "type", "f32", "weight type: f32, f16 or q8_0 (norms stay f32)")
	cmd.Flags().StringVar(&out, "out", "", "output path (written atomically)")
	cmd.Flags().Uint64Var(&seed, "seed", 1, "random seed; the same seed gives the same weights in every type")
	cmd.Flags().StringVar(&template, "chat-template", "", "a file whose Jinja chat template the model carries instead of ChatML (a family's, to test its rendering and tool syntax)")
	cmd.Flags().StringVar(&pooling, "pooling", "", "make an embedding model of the preset's shape pooling mean, cls or last (the qwen3 architecture)")
	return cmd
}

func newModelInspectCmd() *cobra.Command {
	var (
		ctx, parallel, ubatch int64
		asJSON                bool
		gpu                   gpuFlags
		gpuFree               string
	)
	cmd := &cobra.Command{
		Use:     "inspect PATH",
		Example: "  finserve model inspect demo.gguf --parallel 8 --ctx 4096",
		Short:   "Validate a GGUF model and describe it, with the memory it needs to serve and where its layers would go",
		Long: `Validate a GGUF model and describe it: shape, tensor types, the memory
it needs for --parallel sequences of --ctx tokens, and the placement plan
that serve makes for the same settings (layers per GPU, KV cache, compute
buffers, headroom). --gpu-free sizes GPUs this machine does not have, so
that a GPU can be chosen before it is bought:

  finserve model inspect 13b-q8_0.gguf --parallel 64 --ctx 1024 --gpu-free 141GiB
  finserve model inspect 13b-q8_0.gguf --parallel 64 --ctx 1024 --gpu-free 80GB,80GB --cache-type-k q8_0 --cache-type-v q8_0`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ctx <= 0 || parallel <= 0 || ubatch <= 0 {
				return fmt.Errorf("--ctx, --parallel and --ubatch must be positive")
			}
			f, err := models.Check(args[0])
			if err != nil {
				return err
			}
			s := models.Summarize(args[0], f)
			plan, planErr := inspectPlan(f, gpu, gpuFree, ctx, parallel, ubatch)
			if asJSON {
				out := struct {
					models.Summary
					Memory    models.Memory
					Placement *models.Plan `json:",omitempty"`
					Error     string       `json:",omitempty"`
				}{Summary: s, Memory: s.MemoryFor(ctx, parallel, ubatch)}
				if planErr != nil {
					out.Error = planErr.Error()
				} else {
					out.Placement = &plan
				}
				if err := writeJSON(cmd.OutOrStdout(), out); err != nil {
					return err
				}
				return planErr
			}
			w := cmd.OutOrStdout()
			if err := s.Print(w, ctx, parallel, ubatch); err != nil {
				return err
			}
			if planErr != nil {
				return planErr
			}
			fmt.Fprintln(w)
			if len(plan.Devices) == 0 {
				fmt.Fprintln(w, "placement: CPU only (no GPU here; --gpu-free 80GiB plans for one)")
				if warn := memoryWarning(s.MemoryFor(ctx, parallel, ubatch), hostMemory()); warn != "" {
					fmt.Fprintln(w, warn)
				}
				return nil
			}
			fmt.Fprintf(w, "placement (KV cache %s, %s keys, %s values):\n", models.HumanBytes(plan.KVBytes), gpu.cacheK, gpu.cacheV)
			return plan.Print(w)
		},
	}
	cmd.Flags().Int64Var(&ctx, "ctx", 4096, "tokens per sequence for the memory estimate")
	cmd.Flags().Int64Var(&parallel, "parallel", 1, "concurrent sequences for the memory estimate")
	cmd.Flags().Int64Var(&ubatch, "ubatch", 512, "micro-batch size for the memory estimate")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().StringVar(&gpuFree, "gpu-free", "", "plan for GPUs with this much free memory each, e.g. 141GiB or 80GB,80GB (default: the GPUs this machine sees)")
	gpu.register(cmd.Flags())
	return cmd
}

// inspectPlan is the placement serve would make for these settings, on
// this machine's GPUs or on GPUs of the sizes in gpuFree.
func inspectPlan(f *models.File, g gpuFlags, gpuFree string, ctx, parallel, ubatch int64) (models.Plan, error) {
	mo, err := g.options(engine.ServingShape{Context: int(ctx), Sequences: int(parallel), UBatch: int(ubatch)})
	if err != nil {
		return models.Plan{}, err
	}
	devs := engine.GPUs()
	if gpuFree != "" {
		devs = nil
		for i, part := range strings.Split(gpuFree, ",") {
			n, err := parseBytes(part)
			if err != nil || n == 0 {
				return models.Plan{}, fmt.Errorf("--gpu-free: entry %d %q is not a positive byte size", i+1, part)
			}
			devs = append(devs, engine.Device{Name: fmt.Sprintf("GPU%d", i), Kind: "gpu", FreeBytes: uint64(n), TotalBytes: uint64(n)})
		}
	}
	return mo.Plan(f, devs)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newModelBenchCmd() *cobra.Command {
	var (
		threads, pp, tg, npp, ntg, reps, batch, ubatch int
		gpu                                            gpuFlags
		npl                                            string
		unifiedKV                                      bool
		fa                                             string
		asJSON, noRepack                               bool
	)
	cmd := &cobra.Command{
		Use:     "bench PATH",
		Example: "  finserve model bench demo.gguf",
		Short:   "Measure the engine as llama-bench (pp, tg) and llama-batched-bench (aggregate decode) do",
		Long: `Measure the engine on a model the way llama.cpp's tools measure llama.cpp:
prompt processing (--pp) and single-stream decode (--tg) as llama-bench does,
then aggregate decode throughput at each --npl concurrency level as
llama-batched-bench does. Run the peers on the same file and threads to
compare; scripts/peer-bench.sh does both.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var levels []int
			if npl != "" {
				var err error
				if levels, err = parseInts(npl); err != nil {
					return fmt.Errorf("--npl: %w", err)
				}
			}
			maxNPL := 1
			for _, n := range levels {
				maxNPL = max(maxNPL, n)
			}
			fam, err := parseFlashAttention(fa)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			budget, _ := cpuBudget()
			setGoProcs(0, threads, budget, slog.Default()) // as `serve` does
			mo, err := gpu.options(engine.ServingShape{Context: max(pp+1, tg+2, npp+ntg+1), Sequences: maxNPL, UBatch: ubatch})
			if err != nil {
				return err
			}
			mo.DisableRepack = noRepack
			m, err := engine.LoadModel(ctx, args[0], mo)
			if err != nil {
				return err
			}
			defer m.Close()
			// As the peers do: one sequence for pp and tg, npl for the
			// aggregate test.
			newEngine := func(parallel, seqCtx int) (*engine.Engine, error) {
				return engine.New(m, engine.Options{
					Parallel: parallel, Context: seqCtx, Batch: max(batch, parallel), UBatch: ubatch,
					Threads: threads, UnifiedKV: unifiedKV, FlashAttention: fam,
					CacheTypeK: gpu.cacheK, CacheTypeV: gpu.cacheV,
				})
			}
			var results []enginebench.Result
			report := func(r enginebench.Result, err error) error {
				if err != nil {
					return err
				}
				results = append(results, r)
				if !asJSON {
					fmt.Fprintln(cmd.OutOrStdout(), r)
				}
				return nil
			}
			if !asJSON {
				fmt.Fprintf(cmd.OutOrStdout(), "model %s, provider %s, threads %d, batch %d/%d, flash-attn %s\n",
					args[0], engine.Provider, max(threads, 0), batch, ubatch, fa)
			}
			if pp > 0 || tg > 0 {
				e, err := newEngine(1, max(pp+1, tg+2))
				if err != nil {
					return err
				}
				if pp > 0 {
					err = report(enginebench.Prefill(ctx, e, pp, reps))
				}
				if err == nil && tg > 0 {
					err = report(enginebench.Decode(ctx, e, tg, reps))
				}
				e.Close()
				if err != nil {
					return err
				}
			}
			if len(levels) > 0 {
				e, err := newEngine(maxNPL, npp+ntg+1)
				if err != nil {
					return err
				}
				defer e.Close()
				for _, n := range levels {
					if err := report(enginebench.Batched(ctx, e, n, npp, ntg, reps)); err != nil {
						return err
					}
				}
			}
			if asJSON {
				type row struct {
					Test   string
					Mean   float64
					StdDev float64
					Rates  []float64
				}
				var rows []row
				for _, r := range results {
					rows = append(rows, row{r.Test, r.Mean(), r.StdDev(), r.Rates})
				}
				return writeJSON(cmd.OutOrStdout(), rows)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&threads, "threads", 0, "CPU threads (default: all)")
	gpu.register(f)
	f.IntVar(&pp, "pp", 512, "prompt tokens for the prefill test (0 skips it)")
	f.IntVar(&tg, "tg", 128, "tokens for the single-stream decode test (0 skips it)")
	f.StringVar(&npl, "npl", "1,4,8,16", "concurrency levels for the aggregate decode test (empty skips it)")
	f.IntVar(&npp, "npp", 128, "prompt tokens per sequence in the aggregate test")
	f.IntVar(&ntg, "ntg", 128, "generated tokens per sequence in the aggregate test")
	f.IntVar(&reps, "reps", 5, "timed repetitions of each test (after one warm-up)")
	f.IntVar(&batch, "batch", 2048, "token budget per step (llama.cpp's n_batch)")
	f.IntVar(&ubatch, "ubatch", 512, "micro-batch (llama.cpp's n_ubatch)")
	f.BoolVar(&unifiedKV, "unified-kv", false, "one KV cache shared by all sequences instead of a stream each")
	f.StringVar(&fa, "flash-attn", "auto", "flash attention: auto, on or off")
	f.BoolVar(&noRepack, "no-repack", false, "keep weights in their file layout (see engine.ModelOptions.DisableRepack)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func parseFlashAttention(s string) (engine.FlashAttention, error) {
	switch s {
	case "auto":
		return engine.FlashAttentionAuto, nil
	case "on", "1", "true":
		return engine.FlashAttentionOn, nil
	case "off", "0", "false":
		return engine.FlashAttentionOff, nil
	}
	return 0, fmt.Errorf("--flash-attn %q: want auto, on or off", s)
}

// memoryWarning says when serving on the CPU would need more memory than
// the machine has available (0: unknown), naming what to lower.
func memoryWarning(m models.Memory, avail int64) string {
	switch {
	case avail <= 0 || m.Total() <= avail:
		return ""
	case m.KVCache > avail/2:
		return fmt.Sprintf("warning: serving needs about %s but %s is available here, and the KV cache alone takes %s: "+
			"lower --parallel or --ctx (the cache is their product), or use --cache-type-k/--cache-type-v q8_0",
			models.HumanBytes(m.Total()), models.HumanBytes(avail), models.HumanBytes(m.KVCache))
	default:
		return fmt.Sprintf("warning: serving needs about %s but %s is available here: the weights take %s; "+
			"use a smaller quantization (finserve quant), or lower --parallel or --ctx",
			models.HumanBytes(m.Total()), models.HumanBytes(avail), models.HumanBytes(m.Weights))
	}
}

// hostMemory is the memory available to this process: MemAvailable, or
// the cgroup's limit when lower (a container's); 0 when unknown.
func hostMemory() int64 {
	var avail int64
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemAvailable:"); ok {
				var kib int64
				fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kib)
				avail = kib << 10
			}
		}
	}
	if data, err := os.ReadFile("/sys/fs/cgroup/memory.max"); err == nil {
		var limit int64
		if _, err := fmt.Sscan(strings.TrimSpace(string(data)), &limit); err == nil && limit > 0 && (avail == 0 || limit < avail) {
			avail = limit
		}
	}
	return avail
}
