package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/quality"
)

func newQuantCmd() *cobra.Command {
	var (
		in, out string
		o       engine.QuantizeOptions
	)
	cmd := &cobra.Command{
		Use:     "quant",
		Example: "  finserve quant --in model-f16.gguf --out model-q4_k_m.gguf --type q4_k_m",
		Short:   "Quantize a GGUF model with llama.cpp's quantization",
		Long: `Quantize a GGUF model (best from its f16 or f32 original) with llama.cpp's
own quantization, as llama-quantize does. The input is validated first; the
output appears only when it is complete and valid. Then measure what the
quantization kept with ` + "`finserve eval`" + `.

Types: ` + strings.Join(engine.QuantTypes(), ", "),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if in == "" || out == "" || o.Type == "" {
				return fmt.Errorf("--in, --out and --type are required")
			}
			w := cmd.ErrOrStderr()
			o.Progress = func(done, total int) { fmt.Fprintf(w, "\rquantizing tensor %d/%d", done, total) }
			res, err := engine.Quantize(cmd.Context(), in, out, o)
			fmt.Fprintln(w)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (%s, %.1f MiB) -> %s (%s, %.1f MiB): %.2fx smaller, %d tensors in %.1fs\n",
				in, res.InType, mib(res.InBytes), out, res.OutType, mib(res.OutBytes), res.Ratio(), res.Tensors, res.Duration.Seconds())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&in, "in", "", "GGUF model to quantize (f32, f16 or bf16 weights)")
	f.StringVar(&out, "out", "", "GGUF file to write")
	f.StringVar(&o.Type, "type", "", "target type: "+strings.Join(engine.QuantTypes(), ", "))
	f.IntVar(&o.Threads, "threads", 0, "threads (0: all CPUs)")
	f.BoolVar(&o.AllowRequantize, "allow-requantize", false, "quantize weights that are quantized already (loses more than starting from f16)")
	return cmd
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func newEvalCmd() *cobra.Command {
	var (
		ref, cand, corpus string
		o                 quality.Options
		asJSON            bool
	)
	cmd := &cobra.Command{
		Use:     "eval",
		Example: "  finserve eval --reference model-f16.gguf --candidate model-q4_k_m.gguf --corpus testdata/corpus/finance-zh-en.txt",
		Short:   "Measure how much of a reference model a candidate (its quantization) keeps",
		Long: `Compare a candidate model with its reference on a text corpus, as llama.cpp's
llama-perplexity --kl-divergence does: the corpus is cut into chunks of --ctx
tokens, and at every position of each chunk's second half both models'
next-token distributions give perplexity, the KL divergence
KL(reference || candidate) (mean, p99, max), and top-1 agreement. Retention
is defined as top-1 agreement: the share of positions where the candidate's
most likely next token is the reference's. Prefill and decode speeds of both
are measured too.

Use the bank's own text as the corpus (a few thousand tokens of chat logs,
case notes or reports, UTF-8, any language the model reads);
testdata/corpus/finance-zh-en.txt is a small bilingual example.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if ref == "" || cand == "" || corpus == "" {
				return fmt.Errorf("--reference, --candidate and --corpus are required")
			}
			text, err := os.ReadFile(corpus)
			if err != nil {
				return fmt.Errorf("reading the corpus: %w", err)
			}
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			engine.SetLogger(quiet)
			o.Logger = quiet
			var ms []*engine.Model
			for _, path := range []string{ref, cand} {
				m, err := engine.LoadModel(cmd.Context(), path, engine.ModelOptions{})
				if err != nil {
					return err
				}
				defer m.Close()
				ms = append(ms, m)
			}
			r, err := quality.Evaluate(cmd.Context(), ms[0], ms[1], string(text), o)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			printReport(cmd.OutOrStdout(), r)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&ref, "reference", "", "the reference model (typically f16 or f32)")
	f.StringVar(&cand, "candidate", "", "the model to compare with it (typically its quantization)")
	f.StringVar(&corpus, "corpus", "", "UTF-8 text file to score (at least two chunks of --ctx tokens)")
	f.IntVar(&o.Context, "ctx", 512, "chunk length in tokens; the second half of each chunk is scored")
	f.IntVar(&o.Chunks, "chunks", 0, "score at most this many chunks (0: all)")
	f.IntVar(&o.Threads, "threads", 0, "threads (0: all CPUs)")
	f.BoolVar(&o.SkipSpeed, "no-speed", false, "skip the prefill and decode speed measurements")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

func printReport(w io.Writer, r *quality.Report) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\treference\tcandidate\n")
	fmt.Fprintf(tw, "model\t%s\t%s\n", r.Reference.Path, r.Candidate.Path)
	fmt.Fprintf(tw, "type\t%s\t%s\n", r.Reference.Type, r.Candidate.Type)
	fmt.Fprintf(tw, "size MiB\t%.1f\t%.1f\n", mib(r.Reference.Bytes), mib(r.Candidate.Bytes))
	fmt.Fprintf(tw, "perplexity\t%.4f\t%.4f\n", r.Reference.Perplexity, r.Candidate.Perplexity)
	if r.Reference.PrefillTPS > 0 {
		fmt.Fprintf(tw, "prefill tok/s\t%.1f\t%.1f\n", r.Reference.PrefillTPS, r.Candidate.PrefillTPS)
		fmt.Fprintf(tw, "decode tok/s\t%.1f\t%.1f\n", r.Reference.DecodeTPS, r.Candidate.DecodeTPS)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d chunks of %d tokens (%d in the corpus), %d positions scored\n", r.Chunks, r.Context, r.Tokens, r.Positions)
	fmt.Fprintf(w, "KL(reference || candidate): mean %.6f, p99 %.6f, max %.6f nats\n", r.KLMean, r.KLP99, r.KLMax)
	fmt.Fprintf(w, "top-1 agreement %.2f%%, perplexity ratio %.4f\n", 100*r.Top1Agreement, r.PerplexityRatio)
	fmt.Fprintf(w, "retention %.2f%% (defined as top-1 agreement) in %.1fs\n", 100*r.Retention, r.Duration.Seconds())
}
