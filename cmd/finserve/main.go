// Command finserve is an on-prem, OpenAI-compatible LLM inference server
// for banks, and the tools around it: model generation, inspection and
// benchmarks.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/finserve/finserve/pii"
)

func main() { os.Exit(run(os.Args[1:])) }

// run is the binary: SIGINT and SIGTERM cancel the command's context
// (serve drains), and the exit code is returned. Tests run it as a child
// process to send it real signals.
func run(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "finserve:", err)
		if errors.Is(err, context.Canceled) {
			return 130
		}
		return 1
	}
	return 0
}

func newRoot() *cobra.Command {
	var logLevel, logFormat string
	root := &cobra.Command{
		Use:           "finserve",
		Short:         "On-prem OpenAI-compatible LLM inference server for banks",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return setupLogging(logLevel, logFormat)
		},
	}
	logFlags(root.PersistentFlags(), &logLevel, &logFormat)
	root.SetFlagErrorFunc(flagHint)
	root.AddCommand(newServeCmd(), newBenchCmd(), newModelCmd(), newGenerateCmd(), newQuantCmd(), newEvalCmd(), newVersionCmd(), newAuditCmd(), newAMLCmd(), newKeysCmd(), newConfigCmd(), newSoakCmd())
	return root
}

// setupLogging installs the default logger: level and format (text or
// json), every string attribute passed through the PII masker. serve
// calls it again once its config file and environment are applied, so
// that log-format and log-level may come from either.
func setupLogging(level, format string) error {
	if err := checkLogSettings(level, format); err != nil {
		return err
	}
	var lvl slog.Level
	lvl.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lvl, ReplaceAttr: pii.ReplaceAttr}
	if format == "json" {
		slog.SetDefault(slog.New(slog.NewJSONHandler(os.Stderr, opts)))
	} else {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, opts)))
	}
	return nil
}

// logFlags registers --log-format and --log-level on f.
func logFlags(f *pflag.FlagSet, level, format *string) {
	f.StringVar(format, "log-format", "text", "log format: text, or json (one object per line, for log shippers)")
	f.StringVar(level, "log-level", "info", "log level: debug, info, warn or error (llama.cpp's own messages are debug)")
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

// startProcs is the Go runtime's own GOMAXPROCS before finserve changes
// it: what the GOMAXPROCS environment variable says, or the fewest of the
// CPUs, the affinity mask and the cgroup quota (at least 2).
var startProcs = runtime.GOMAXPROCS(0)

// cpuBudget is the CPUs this process may use, and why: GOMAXPROCS when
// the environment sets it, else the fewest of the CPUs, the affinity mask
// and the cgroup's CPU quota rounded up.
func cpuBudget() (n int, source string) {
	if os.Getenv("GOMAXPROCS") != "" {
		return startProcs, "GOMAXPROCS"
	}
	n, source = runtime.NumCPU(), "CPUs" // NumCPU honours the affinity mask
	if limit, ok := cgroupCPULimit(os.ReadFile); ok && int(math.Ceil(limit)) < n {
		n, source = max(1, int(math.Ceil(limit))), "cgroup CPU limit"
	}
	return n, source
}

// computeThreads is the default --threads: the CPU budget (cpuBudget's
// n and source), so that a pod limited to 4 CPUs on a 64-core node runs
// 4 compute threads, not 64 throttled ones.
func computeThreads(threads, budget int, source string, log *slog.Logger) int {
	if threads > 0 {
		log.Info("compute threads", "threads", threads, "source", "--threads")
		return threads
	}
	log.Info("compute threads", "threads", budget, "source", source, "cpus", runtime.NumCPU())
	return budget
}

// setGoProcs bounds the CPUs that run Go code. ggml's compute threads spin
// at barriers, and the Go scheduler's idle threads spin looking for work:
// with both on the same cores every token's HTTP work costs the decode
// step far more than its own CPU time (measured on 2 cores: 4-8% of
// single-stream decode with GOMAXPROCS=2, none with 1). The serving work
// needs little CPU, so it gets the CPUs of the budget the compute threads
// leave: budget (cpuBudget's) less threads.
func setGoProcs(n, threads, budget int, log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if n <= 0 {
		n = min(4, max(1, budget-threads))
	}
	runtime.GOMAXPROCS(n)
	log.Info("Go procs", "n", n)
}

// llamaServerFlags are llama-server's names for serve's settings, for
// the hint a user coming from it gets.
var llamaServerFlags = map[string]string{
	"--port": "--addr HOST:PORT", "--host": "--addr HOST:PORT", "-m": "--model", "--model-path": "--model",
	"-c": "--ctx (per sequence)", "--ctx-size": "--ctx (per sequence)", "-np": "--parallel", "--n-parallel": "--parallel",
	"-ngl": "--gpu-layers", "--n-gpu-layers": "--gpu-layers", "-t": "--threads", "-tb": "--threads-batch",
	"-b": "--batch", "--batch-size": "--batch", "-ub": "--ubatch", "--ubatch-size": "--ubatch", "-fa": "--flash-attn",
	"--api-key-file": "--api-keys (a file made with finserve keys add)", "-a": "--model-id", "--alias": "--model-id",
	"-ctk": "--cache-type-k", "-ctv": "--cache-type-v", "-sm": "--split-mode", "-ts": "--tensor-split", "-mg": "--main-gpu",
}

// flagHint adds, to an unknown-flag error, the finserve name of a
// llama-server flag.
func flagHint(cmd *cobra.Command, err error) error {
	msg := err.Error()
	name := ""
	switch {
	case strings.HasPrefix(msg, "unknown flag: "):
		name, _, _ = strings.Cut(strings.TrimPrefix(msg, "unknown flag: "), "=")
	case strings.HasPrefix(msg, "unknown shorthand flag: "):
		// "unknown shorthand flag: 'm' in -m": the argument as typed
		if i := strings.LastIndex(msg, " in "); i >= 0 {
			name, _, _ = strings.Cut(msg[i+4:], "=")
		}
	}
	if hint, ok := llamaServerFlags[name]; ok {
		return fmt.Errorf("%w (llama-server's %s is finserve's %s; see %s --help)", err, name, hint, cmd.CommandPath())
	}
	if name != "" {
		return fmt.Errorf("%w (see %s --help)", err, cmd.CommandPath())
	}
	return err
}
