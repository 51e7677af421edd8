package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/finserve/finserve/bench"
)

func newBenchCmd() *cobra.Command {
	var (
		cfg                   bench.Config
		targets               []string
		url, levels, rates    string
		workload, out         string
		asJSON, allowFailures bool
		perClient, requests   int
	)
	cmd := &cobra.Command{
		Use:     "bench",
		Example: "  finserve bench --url http://127.0.0.1:8080/v1 --concurrency 1,4,8 --requests 64",
		Short:   "Load-test OpenAI-compatible servers (finserve, llama-server, vLLM, Ollama) with streaming clients",
		Long: `Load-test one or more OpenAI-compatible servers with a seeded workload,
closed loop (--concurrency) or open loop (--rate, Poisson or gamma arrivals),
and report what LLM serving is measured by, with vLLM's definitions: TTFT,
TPOT ((latency - TTFT) / (output tokens - 1)), ITL (every gap between
streamed chunks) and end-to-end latency (mean, p50, p90, p99), output and
total tokens/s, requests/s, goodput (requests meeting --slo-ttft and
--slo-tpot per second) and errors by status. With several --target, the
same workload runs against each in turn and ratios to the first are given.

Workloads: short (one question, 128 tokens: the concurrency sweep), chat
(shared system prompt, 3-turn conversations), batch (long documents),
mixed (realtime chat beside batch streams; finserve's tier URLs are used
when the server has them), embed (/embeddings requests of 4 texts).
Explicit flags override a workload's settings.

--out DIR writes report.json (every figure and setting), report.md and
latency-throughput.svg. Point it at loopback or lab servers only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p := bench.Plan{Workload: workload, Base: cfg}
			if len(targets) == 0 {
				targets = []string{url}
			}
			for _, s := range targets {
				t, err := bench.ParseTarget(s)
				if err != nil {
					return err
				}
				p.Targets = append(p.Targets, t)
			}
			var err error
			if rates != "" {
				if p.Rates, err = parseFloats(rates); err != nil {
					return fmt.Errorf("--rate: %w", err)
				}
			} else if p.Concurrency, err = parseInts(levels); err != nil {
				return fmt.Errorf("--concurrency: %w", err)
			}
			p.Base.Requests, p.PerClient = requests, perClient
			p.Override = overrides(cmd.Flags(), cfg)
			if isTerminal(os.Stderr) {
				p.Progress = progressBar(cmd)
			}
			r, err := bench.RunPlan(cmd.Context(), p)
			if p.Progress != nil {
				fmt.Fprintln(cmd.ErrOrStderr())
			}
			if err != nil {
				return err
			}
			if out != "" {
				if err := r.WriteDir(out); err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return err
				}
				return failures(r, allowFailures)
			}
			r.Markdown(cmd.OutOrStdout())
			for _, t := range r.Targets {
				for _, l := range t.Levels {
					for k, d := range l.Result.TurnTTFT {
						fmt.Fprintf(cmd.OutOrStdout(), "%s %d: turn %d TTFT p50 %.1f ms, p90 %.1f ms\n", t.Name, l.Concurrency, k+1, 1000*d.P50, 1000*d.P90)
					}
					if b := l.Result.Background; b != nil {
						fmt.Fprintf(cmd.OutOrStdout(), "%s %d: background of %d clients: %d requests completed, %d failed, %.1f output tok/s\n",
							t.Name, l.Concurrency, b.Clients, b.Requests-b.Failed, b.Failed, b.OutputTPS)
					}
					for _, e := range l.Result.FirstErrors {
						fmt.Fprintf(cmd.ErrOrStderr(), "%s %d: error: %s\n", t.Name, l.Concurrency, e)
					}
				}
			}
			return failures(r, allowFailures)
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&targets, "target", nil, "server to measure, NAME=URL or URL (an OpenAI base URL); repeat to compare (default --url)")
	f.StringVar(&url, "url", "http://127.0.0.1:8080/v1", "API base URL when no --target is given")
	f.StringVar(&workload, "workload", "short", "short, chat, batch, mixed or embed")
	f.StringVar(&levels, "concurrency", "1,4,8,16", "closed-loop client counts, one run each")
	f.StringVar(&levels, "clients", "1,4,8,16", "alias of --concurrency")
	f.StringVar(&rates, "rate", "", "open-loop request rates per second, one run each (instead of --concurrency)")
	f.Float64Var(&cfg.Burstiness, "burstiness", 1, "gamma shape of open-loop arrival gaps: 1 Poisson, below 1 burstier")
	f.IntVar(&requests, "requests", 0, "requests per run (default: --requests-per-client per client; with --rate, 60 s of arrivals)")
	f.IntVar(&perClient, "requests-per-client", 4, "requests per client in each closed-loop run (when --requests is not given)")
	f.DurationVar(&cfg.Duration, "duration", 0, "stop sending new requests after this long in each run")
	f.DurationVar(&cfg.SLOTTFT, "slo-ttft", 0, "TTFT objective for goodput, e.g. 300ms")
	f.DurationVar(&cfg.SLOTPOT, "slo-tpot", 0, "TPOT objective for goodput, e.g. 50ms")
	f.BoolVar(&allowFailures, "allow-failures", false, "exit 0 even when requests failed (by default a run with failed requests exits 1, after writing its report)")
	f.StringVar(&out, "out", "", "directory for report.json, report.md and latency-throughput.svg")
	f.StringVar(&cfg.API, "api", "chat", "chat (/chat/completions), completions (/completions) or embeddings (/embeddings: TTFT and E2E are the response's time, throughput the inputs' tokens)")
	f.IntVar(&cfg.Inputs, "inputs", 1, "texts per request with --api embeddings (each --question-words long)")
	f.StringVar(&cfg.Model, "model", "", "model name to send (default: the first the server lists)")
	f.StringVar(&cfg.APIKey, "api-key", "", "bearer token")
	f.IntVar(&cfg.MaxTokens, "max-tokens", 128, "tokens per request (overrides the workload's)")
	f.BoolVar(&cfg.IgnoreEOS, "ignore-eos", true, "generate exactly --max-tokens (llama.cpp's ignore_eos)")
	f.StringVar(&cfg.Prompt, "prompt", "", "user message of the short workload")
	f.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "per-request timeout")
	f.BoolVar(&cfg.NoPromptCache, "no-prompt-cache", false, `send "cache_prompt": false (no prompt reuse in llama-server or finserve)`)
	f.Float64Var(&cfg.Temperature, "temperature", 0, "sampling temperature of the requests (0: greedy)")
	f.StringVar(&cfg.ResponseFormat, "response-format", "", `send response_format of this type (json_object), or this JSON object (a json_schema): grammar-constrained decoding; with --ignore-eos=false`)
	f.IntVar(&cfg.SystemWords, "system-words", 0, "send every request the same generated system message of this many words")
	f.IntVar(&cfg.QuestionWords, "question-words", 0, "ask distinct generated questions of this many words")
	f.Uint64Var(&cfg.Seed, "seed", 0, "vary the generated questions and arrivals (runs with different seeds ask different ones)")
	f.IntVar(&cfg.Turns, "turns", 1, "turns per conversation; each turn resends the history (TTFT is also reported per turn)")
	f.IntVar(&cfg.Background, "background", 0, "closed-loop streaming clients to run beside the measured ones, as a load")
	f.StringVar(&cfg.BackgroundURL, "background-url", "", "API base URL of the background load (default the target's)")
	f.IntVar(&cfg.BackgroundWords, "background-words", 200, "words of each background request's question")
	f.IntVar(&cfg.BackgroundMaxTokens, "background-max-tokens", 256, "tokens per background request")
	f.BoolVar(&asJSON, "json", false, "print the report as JSON instead of tables")
	return cmd
}

// overrides applies the request flags given on the command line over a
// workload's settings.
func overrides(fs *pflag.FlagSet, cfg bench.Config) func(*bench.Config) {
	return func(c *bench.Config) {
		set := func(name string, apply func()) {
			if fs.Changed(name) {
				apply()
			}
		}
		set("max-tokens", func() { c.MaxTokens = cfg.MaxTokens })
		set("api", func() { c.API = cfg.API })
		set("inputs", func() { c.Inputs = cfg.Inputs })
		set("prompt", func() { c.Prompt = cfg.Prompt })
		set("system-words", func() { c.SystemWords = cfg.SystemWords })
		set("question-words", func() { c.QuestionWords = cfg.QuestionWords })
		set("turns", func() { c.Turns = cfg.Turns })
		set("background", func() { c.Background = cfg.Background })
		set("background-url", func() { c.BackgroundURL = cfg.BackgroundURL })
		set("background-words", func() { c.BackgroundWords = cfg.BackgroundWords })
		set("background-max-tokens", func() { c.BackgroundMaxTokens = cfg.BackgroundMaxTokens })
	}
}

func parseFloats(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, v)
	}
	return out, nil
}

// isTerminal says whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressBar draws finished requests on stderr.
func progressBar(cmd *cobra.Command) func(done, total int) {
	return func(done, total int) {
		const width = 30
		n := 0
		if total > 0 {
			n = min(width, done*width/total)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "\r[%s%s] %d/%d requests", strings.Repeat("#", n), strings.Repeat(".", width-n), done, total)
	}
}

// failures is the bench command's verdict: an error naming how many
// requests failed and why (by status), unless allowed. A script that
// reads only the exit status must not take a run of 404s for a result.
func failures(r *bench.Report, allowed bool) error {
	failed, sent := 0, 0
	why := map[string]int{}
	for _, t := range r.Targets {
		for _, l := range t.Levels {
			failed += l.Result.Failed
			sent += l.Result.Requests
			for k, n := range l.Result.Errors {
				why[k] += n
			}
		}
	}
	if failed == 0 || allowed {
		return nil
	}
	kinds := make([]string, 0, len(why))
	for _, k := range slices.Sorted(maps.Keys(why)) {
		kinds = append(kinds, fmt.Sprintf("%d %s", why[k], k))
	}
	hint := ""
	if why["404"] > 0 {
		hint = "; 404: is the URL the API root, ending in /v1?"
	}
	return fmt.Errorf("%d of %d requests failed (%s)%s; --allow-failures exits 0 anyway", failed, sent, strings.Join(kinds, ", "), hint)
}
