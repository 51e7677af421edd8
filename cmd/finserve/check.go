package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

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
		Use:   "check FILE",
		Short: "Check a `serve --config` file and every file it names, without starting the server",
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
	o.model, o.keyFile, o.amlConfig, o.auditLog = get("model"), get("api-keys"), get("aml-config"), get("audit-log")
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
	if o.model == "" {
		bad(errors.New("model: required"))
	} else if _, err := models.Check(o.model); err != nil {
		bad(fmt.Errorf("model: %w", err))
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
		if _, err := os.Stat(o.auditLog); err == nil {
			key, err := auditKey(o.auditLog, get("audit-key-file"), false)
			if err != nil {
				bad(fmt.Errorf("audit-key-file: %w", err))
			} else if _, err := audit.VerifyFile(o.auditLog, key); err != nil {
				// serve drops a last line cut before it was acknowledged.
				var ve *audit.VerifyError
				if !errors.As(err, &ve) || !ve.Incomplete || ve.Acknowledged {
					bad(fmt.Errorf("audit-log: %w", err))
				}
			}
		}
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
