package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/bench"
)

func newBenchCmd() *cobra.Command {
	var (
		cfg       bench.Config
		clients   string
		asJSON    bool
		perClient int
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test an OpenAI-compatible server (finserve or a peer) with streaming chat clients",
		Long: `Load-test an OpenAI-compatible server with concurrent streaming chat clients.

For each client count it sends clients x --requests-per-client requests and
reports time to first token (TTFT), time per output token (TPOT), end-to-end
latency and aggregate output tokens/s. Point it at loopback servers only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			counts, err := parseInts(clients)
			if err != nil {
				return fmt.Errorf("--clients: %w", err)
			}
			var results []bench.Result
			for _, n := range counts {
				c := cfg
				c.Clients, c.Requests = n, n*perClient
				r, err := bench.Run(cmd.Context(), c)
				if err != nil {
					return err
				}
				results = append(results, r)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(results)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "clients\trequests\tfailed\toutput tok/s\treq/s\tTTFT p50 ms\tTTFT p90 ms\tTTFT p99 ms\tTPOT p50 ms\tE2E p50 s\tprompt tok\tcached tok\t")
			for _, r := range results {
				fmt.Fprintf(tw, "%d\t%d\t%d\t%.1f\t%.2f\t%.1f\t%.1f\t%.1f\t%.2f\t%.2f\t%d\t%d\t\n", r.Clients, r.Requests, r.Failed,
					r.OutputTPS, r.RequestsPS, 1000*r.TTFT.P50, 1000*r.TTFT.P90, 1000*r.TTFT.P99, 1000*r.TPOT.P50, r.E2E.P50,
					r.PromptTokens, r.CachedTokens)
			}
			tw.Flush()
			for _, r := range results {
				if b := r.Background; b != nil {
					fmt.Fprintf(cmd.OutOrStdout(), "clients %d: background of %d clients: %d requests completed, %d failed, %.1f output tok/s, TTFT p50 %.1f ms\n",
						r.Clients, b.Clients, b.Requests-b.Failed, b.Failed, b.OutputTPS, 1000*b.TTFT.P50)
				}
				for k, d := range r.TurnTTFT {
					fmt.Fprintf(cmd.OutOrStdout(), "clients %d: turn %d TTFT p50 %.1f ms, p90 %.1f ms\n", r.Clients, k+1, 1000*d.P50, 1000*d.P90)
				}
			}
			for _, r := range results {
				for _, e := range r.FirstErrors {
					fmt.Fprintf(cmd.ErrOrStderr(), "clients %d: error: %s\n", r.Clients, e)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.BaseURL, "url", "http://127.0.0.1:8080/v1", "API base URL")
	f.StringVar(&cfg.Model, "model", "", "model name to send")
	f.StringVar(&cfg.APIKey, "api-key", "", "bearer token")
	f.StringVar(&clients, "clients", "1,8", "comma-separated concurrent client counts, one run each")
	f.IntVar(&perClient, "requests-per-client", 4, "requests per client in each run")
	f.IntVar(&cfg.MaxTokens, "max-tokens", 128, "tokens per request")
	f.BoolVar(&cfg.IgnoreEOS, "ignore-eos", true, "generate exactly --max-tokens (llama.cpp's ignore_eos)")
	f.StringVar(&cfg.Prompt, "prompt", "Summarise the bank's policy on overdraft fees for a new customer.", "user message")
	f.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "per-request timeout")
	f.BoolVar(&cfg.NoPromptCache, "no-prompt-cache", false, `send "cache_prompt": false (no prompt reuse in llama-server or finserve)`)
	f.IntVar(&cfg.SystemWords, "system-words", 0, "send every request the same generated system message of this many words (0: none)")
	f.IntVar(&cfg.QuestionWords, "question-words", 0, "ask distinct generated questions of this many words instead of --prompt (0: --prompt)")
	f.Uint64Var(&cfg.Seed, "seed", 0, "vary the generated questions (runs with different seeds ask different ones)")
	f.IntVar(&cfg.Turns, "turns", 1, "turns per conversation; each turn resends the history (TTFT is also reported per turn)")
	f.IntVar(&cfg.Background, "background", 0, "closed-loop streaming clients to run beside the measured ones, as a load (0: none)")
	f.StringVar(&cfg.BackgroundURL, "background-url", "", "API base URL of the background load (default --url), e.g. http://127.0.0.1:8080/tiers/batch/v1")
	f.IntVar(&cfg.BackgroundWords, "background-words", 200, "words of each background request's question")
	f.IntVar(&cfg.BackgroundMaxTokens, "background-max-tokens", 256, "tokens per background request")
	f.BoolVar(&asJSON, "json", false, "print results as JSON")
	return cmd
}
