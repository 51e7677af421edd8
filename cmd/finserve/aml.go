package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/audit"
)

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "audit", Short: "Check the AML decision audit log"}
	cmd.AddCommand(&cobra.Command{
		Use:   "verify PATH",
		Short: "Verify an audit log's hash chain; exit 1 at the first edited, dropped or reordered record",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sum, err := audit.VerifyFile(args[0])
			var ve *audit.VerifyError
			if errors.As(err, &ve) {
				fmt.Fprintf(cmd.OutOrStdout(), "FAILED after %d good records: %v\n", sum.Records, ve)
				return fmt.Errorf("audit log %s does not verify", args[0])
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d records, last hash %s\n", sum.Records, sum.LastHash)
			return nil
		},
	})
	return cmd
}

func newAMLCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "aml", Short: "AML scoring: configuration and the prompts a case is scored with"}
	cmd.AddCommand(&cobra.Command{
		Use:   "config",
		Short: "Print the built-in AML configuration (a starting point for --aml-config)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := cmd.OutOrStdout().Write(aml.DefaultYAML())
			return err
		},
	}, &cobra.Command{
		Use:   "check FILE",
		Short: "Validate an AML configuration file and print its versions and rule-set hash",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := aml.LoadConfig(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s; prompt %s; rules %s (%d rules, sha256 %s); fx %s\n",
				c.Version, c.Prompt.Version, c.Rules.Version, len(c.Rules.Rules), c.RulesHash(), c.FX.Version)
			return nil
		},
	}, newAMLPromptsCmd())
	return cmd
}

func newAMLPromptsCmd() *cobra.Command {
	var configPath string
	prompts := &cobra.Command{
		Use:   "prompts CASE.json",
		Short: "Print, one JSON object per line, the prompts scoring a case sends to the model (one per coalition)",
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
