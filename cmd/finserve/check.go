package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/audit"
	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/models"
)

func newConfigCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Check serve configuration files"}
	cmd.AddCommand(&cobra.Command{
		Use:     "check FILE",
		Example: "  finserve config check /etc/finserve/finserve.yaml",
		Short:   "Check a `serve --config` file and every file it names, without starting the server",
		Long: `Check a serve configuration file: every key is a serve flag with a valid
value, the tier settings parse, and the files it names are usable: the
model (validated as GGUF, not loaded), the API key file, the TLS
certificate and key (and client CA), the AML configuration, and the audit
log (its hash chain verified). Environment variables are ignored: the file
is checked as written. Exits 1 listing every problem found.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			problems := checkServeConfig(args[0])
			for _, p := range problems {
				fmt.Fprintln(cmd.OutOrStdout(), "problem:", p)
			}
			if len(problems) > 0 {
				return fmt.Errorf("%s: %d problem(s)", args[0], len(problems))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s\n", args[0])
			return nil
		},
	})
	return cmd
}

// checkServeConfig returns every problem with a serve configuration file.
func checkServeConfig(path string) []error {
	var o serveOptions
	serve := newServeCmd()
	// The root's log flags are serve's settings too (log-format: json).
	var level, format string
	logFlags(serve.Flags(), &level, &format)
	// The file fills serve's flags as it would at start (without the
	// environment); the values are read back from them.
	if err := applySettings(serve, path, func(string) (string, bool) { return "", false }); err != nil {
		return []error{err}
	}
	f := serve.Flags()
	get := func(name string) string { return f.Lookup(name).Value.String() }
	o.models, _ = f.GetStringArray("model")
	o.keyFile, o.amlConfig, o.auditLog = get("api-keys"), get("aml-config"), get("audit-log")
	o.tlsCert, o.tlsKey, o.tlsClientCA = get("tls-cert"), get("tls-key"), get("tls-client-ca")
	var problems []error
	bad := func(err error) { problems = append(problems, err) }
	for t := range engine.Tier(engine.NumTiers) {
		o.tierSpecs[t] = get("tier-" + t.String())
	}
	if _, _, err := tiers(o.tierSpecs); err != nil {
		bad(err)
	}
	if _, err := engine.ParseTier(get("default-tier")); err != nil {
		bad(fmt.Errorf("default-tier: %w", err))
	}
	if err := checkLogSettings(level, format); err != nil {
		bad(err)
	}
	if _, err := parseFlashAttention(get("flash-attn")); err != nil {
		bad(err)
	}
	gpu := gpuFlags{layers: get("gpu-layers"), splitMode: get("split-mode"), tensorSplit: get("tensor-split"),
		cacheK: get("cache-type-k"), cacheV: get("cache-type-v")}
	gpu.mainGPU, _ = f.GetInt("main-gpu")
	if mo, err := gpu.options(engine.ServingShape{}); err != nil {
		bad(err)
	} else if err := mo.CheckGPU(); err != nil {
		bad(err)
	}
	if _, err := parseBytes(get("prefix-cache-host")); err != nil {
		bad(fmt.Errorf("prefix-cache-host: %w", err))
	}
	if len(o.models) == 0 {
		bad(errors.New("model: required"))
	}
	for _, spec := range o.models {
		m, err := parseModelSpec(spec)
		if err != nil {
			bad(err)
		} else if _, err := models.Check(m.path); err != nil {
			bad(fmt.Errorf("model %s: %w", m.id, err))
		}
	}
	if _, err := parseBytes(get("memory-budget")); err != nil {
		bad(fmt.Errorf("memory-budget: %w", err))
	}
	if _, err := gpuBudgets(get("gpu-memory-budget"), nil); err != nil {
		bad(err)
	}
	if o.keyFile != "" {
		if _, err := apikeys.Load(o.keyFile); err != nil {
			bad(err)
		}
	}
	if _, err := tlsConfig(o.tlsCert, o.tlsKey, o.tlsClientCA); err != nil {
		bad(err)
	}
	if o.amlConfig != "" {
		if _, err := aml.LoadConfig(o.amlConfig); err != nil {
			bad(err)
		}
	}
	if o.auditLog != "" {
		if err := checkAuditLog(o.auditLog, get("audit-key-file")); err != nil {
			bad(err)
		}
	}
	if pinned, _ := f.GetStringArray("pin-system-prompt"); len(pinned) > 0 && get("prefix-cache") == "false" {
		bad(errors.New("pin-system-prompt needs prefix-cache"))
	}
	return problems
}

// checkLogSettings validates log-level and log-format as setupLogging
// would, without installing a logger.
func checkLogSettings(level, format string) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return fmt.Errorf("log-level: %w", err)
	}
	if format != "text" && format != "json" {
		return fmt.Errorf("log-format: %q is not text or json", format)
	}
	return nil
}

// checkAuditLog refuses what serve's --audit-log would refuse at start,
// changing nothing: a directory that is missing or not writable (serve
// writes the log, its checkpoint and, on first start, its key there), a
// log it cannot append to, a key it cannot read or would have to invent
// for a log written without one, and a chain that fails verification. A
// last line cut before it was acknowledged passes: serve drops it.
func checkAuditLog(path, keyFile string) error {
	dir := filepath.Dir(path)
	if err := writableDir(dir); err != nil {
		return fmt.Errorf("audit-log: %w", err)
	}
	_, statErr := os.Stat(path)
	if statErr == nil {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("audit-log: serve could not append to it: %w", err)
		}
		f.Close()
	} else if !errors.Is(statErr, os.ErrNotExist) {
		return fmt.Errorf("audit-log: %w", statErr)
	}
	key, err := auditKey(path, keyFile, false)
	if err != nil {
		return fmt.Errorf("audit-key-file: %w", err)
	}
	if statErr != nil {
		return nil // serve starts a new log (and, without a key, makes one)
	}
	if key == nil {
		if st, err := os.Stat(path); err == nil && st.Size() > 0 {
			return fmt.Errorf("audit-log: %s exists but has no key (%s.key or audit-key-file): serve refuses to append to it", path, path)
		}
		return nil
	}
	if _, err := audit.VerifyFile(path, key); err != nil {
		// serve drops a last line cut before it was acknowledged.
		var ve *audit.VerifyError
		if !errors.As(err, &ve) || !ve.Incomplete || ve.Acknowledged {
			return fmt.Errorf("audit-log: %w", err)
		}
	}
	return nil
}

// writableDir says whether files can be created in dir, by creating one:
// permission bits do not tell for root, nor for read-only mounts.
func writableDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("its directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	f, err := os.CreateTemp(dir, ".finserve-check-*")
	if err != nil {
		return fmt.Errorf("its directory %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}
