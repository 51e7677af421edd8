package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/audit"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Check, repair and key the AML decision audit log"}
	var keyFile string
	verify := &cobra.Command{
		Use:     "verify PATH",
		Example: "  finserve audit verify /var/lib/finserve/audit.jsonl\n  finserve audit verify audit.jsonl --key-file /etc/finserve/audit.key",
		Short:   "Verify an audit log's MAC chain and checkpoint; exit 1 at the first edited, dropped, reordered or cut record",
		Long: `Verify an audit log: every line's HMAC under the log's key, the sequence
numbers and links, and the checkpoint file (PATH.head) that names the last
acknowledged record, so that a log cut short, emptied or rewritten without
the key fails. An auditor also compares the head it prints with the
"audit head" lines of the server's log, which live outside the file.

  finserve audit verify /var/lib/finserve/audit.jsonl --key-file /etc/finserve/audit.key`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := auditKey(args[0], keyFile, false)
			if err != nil {
				return err
			}
			sum, err := audit.VerifyFile(args[0], key)
			var ve *audit.VerifyError
			if errors.As(err, &ve) {
				fmt.Fprintf(cmd.OutOrStdout(), "FAILED after %d good records: %v\n", sum.Records, ve)
				return fmt.Errorf("audit log %s does not verify", args[0])
			}
			if err != nil {
				return err
			}
			mode := "keyed (HMAC-SHA256)"
			if !sum.Keyed {
				mode = "unkeyed (SHA-256: detects accidents, not an editor)"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d records, %s, checkpoint at record %d, head %s\n", sum.Records, mode, sum.Checkpoint, sum.LastHash)
			return nil
		},
	}
	repair := &cobra.Command{
		Use:     "repair PATH",
		Example: "  systemctl stop finserve && finserve audit repair /var/lib/finserve/audit.jsonl",
		Short:   "Truncate a last record cut short after it was acknowledged (keeping its bytes aside), once the cause is known",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := auditKey(args[0], keyFile, false)
			if err != nil {
				return err
			}
			sum, aside, err := audit.Repair(args[0], key)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "repaired: %d whole records kept; the cut bytes are in %s\n", sum.Records, aside)
			return nil
		},
	}
	keygen := &cobra.Command{
		Use:     "keygen PATH",
		Example: "  finserve audit keygen /etc/finserve/audit.key && chgrp finserve /etc/finserve/audit.key && chmod 640 /etc/finserve/audit.key",
		Short:   "Write a new audit key (32 random bytes as hex, mode 0600) for serve --audit-key-file",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := audit.CreateKeyFile(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: keep it readable by the service only, apart from the log and its backups\n", args[0])
			return nil
		},
	}
	for _, c := range []*cobra.Command{verify, repair} {
		c.Flags().StringVar(&keyFile, "key-file", "", "the log's key (default: PATH.key when it exists)")
	}
	cmd.AddCommand(verify, repair, keygen)
	return cmd
}

// auditKey reads the key of the audit log at path: keyFile, or PATH.key
// by default. create makes the default key when there is none (serve);
// otherwise a missing default means an unkeyed log.
func auditKey(path, keyFile string, create bool) ([]byte, error) {
	if keyFile != "" {
		return readAuditKey(keyFile)
	}
	def := path + ".key"
	if _, err := os.Stat(def); err == nil {
		return readAuditKey(def)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	if !create {
		return nil, nil
	}
	if st, err := os.Stat(path); err == nil && st.Size() > 0 {
		return nil, fmt.Errorf("audit log %s exists but has no key (%s): it was written unkeyed by an older finserve; verify it with `finserve audit verify`, archive it, and start a new log", path, def)
	}
	return audit.CreateKeyFile(def)
}

// readAuditKey reads an audit key file, refusing one that others may
// read or that its group may write (apikeys.CheckMode): whoever reads the
// key can rewrite the log and its chain.
func readAuditKey(path string) ([]byte, error) {
	if err := apikeys.CheckMode(path); err != nil {
		return nil, fmt.Errorf("audit key: %w", err)
	}
	return audit.ReadKeyFile(path)
}

func newAMLCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "aml", Short: "AML scoring: configuration and the prompts a case is scored with"}
	cmd.AddCommand(&cobra.Command{
		Use:     "config",
		Example: "  finserve aml config > /etc/finserve/aml.yaml",
		Short:   "Print the built-in AML configuration (a starting point for --aml-config)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(aml.DefaultYAML())
			return err
		},
	}, &cobra.Command{
		Use:     "check FILE",
		Example: "  finserve aml check /etc/finserve/aml.yaml",
		Short:   "Validate an AML configuration file and print its versions and rule-set hash",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := aml.LoadConfig(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s; prompt %s; rules %s (%d rules, sha256 %s); fx %s\n",
				c.Version, c.Prompt.Version, c.Rules.Version, len(c.Rules.Rules), c.RulesHash(), c.FX.Version)
			for _, w := range c.Expired(time.Now().Format(time.DateOnly)) {
				fmt.Fprintf(cmd.OutOrStdout(), "warning: %s\n", w)
			}
			return nil
		},
	}, newAMLPromptsCmd())
	return cmd
}

func newAMLPromptsCmd() *cobra.Command {
	var configPath string
	prompts := &cobra.Command{
		Use:     "prompts CASE.json",
		Example: "  finserve aml prompts aml/testdata/structuring.json",
		Short:   "Print, one JSON object per line, the prompts scoring a case sends to the model (one per coalition)",
		Long: `Print the prompts an assessment of a case scores, one per coalition of its
active features, as JSON lines {"prompt": "..."}: what the model reads, for
review, and the input of a naive comparison (scripts/aml-bench.sh).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg := aml.DefaultConfig()
			if configPath != "" {
				var err error
				if cfg, err = aml.LoadConfig(configPath); err != nil {
					return err
				}
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			cases, _, err := aml.DecodeCases(data)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			for i := range cases {
				if err := cases[i].Validate(cfg, ""); err != nil {
					return err
				}
				ps, err := cfg.Prompts(&cases[i])
				if err != nil {
					return err
				}
				for _, p := range ps {
					if err := enc.Encode(map[string]string{"prompt": p}); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	prompts.Flags().StringVar(&configPath, "aml-config", "", "AML configuration file (default: the built-in one)")
	return prompts
}
