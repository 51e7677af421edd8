// Command finserve is an on-prem, OpenAI-compatible LLM inference server
// for banks, and the tools around it: model generation, inspection and
// benchmarks.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/pii"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRoot().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "finserve:", err)
		if errors.Is(err, context.Canceled) {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	var logLevel, logFormat string
	root := &cobra.Command{
		Use:           "finserve",
		Short:         "On-prem OpenAI-compatible LLM inference server for banks",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			// Every string a log line carries passes the PII masker.
			opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: pii.ReplaceAttr}
			switch logFormat {
			case "text":
				slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, opts)))
			case "json":
				slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, opts)))
			default:
				return fmt.Errorf("--log-format: %q is not text or json", logFormat)
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&logFormat, "log-format", "text", "log format: text, or json (one object per line, for log shippers)")
	root.PersistentFlags().StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error (llama.cpp's own messages are debug)")
	root.AddCommand(newServeCmd(), newBenchCmd(), newModelCmd(), newGenerateCmd(), newQuantCmd(), newEvalCmd(), newVersionCmd(), newAuditCmd(), newAMLCmd(), newKeysCmd(), newConfigCmd(), newSoakCmd())
	return root
}

// parseInts parses a comma-separated list such as "1,4,8,16".
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a list of positive integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// setGoProcs bounds the CPUs that run Go code. ggml's compute threads spin
// at barriers, and the Go scheduler's idle threads spin looking for work:
// with both on the same cores every token's HTTP work costs the decode
// step far more than its own CPU time (measured on 2 cores: 4-8% of
// single-stream decode with GOMAXPROCS=2, none with 1). The serving work
// needs little CPU, so it gets the cores the compute threads leave.
func setGoProcs(n, threads int, log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if n <= 0 {
		if threads <= 0 {
			threads = runtime.NumCPU()
		}
		n = min(4, max(1, runtime.NumCPU()-threads))
	}
	runtime.GOMAXPROCS(n)
	log.Debug("Go procs", "n", n)
}
