package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/bench"
)

func newSoakCmd() *cobra.Command {
	var o bench.SoakOptions
	var amlCase, jsonOut string
	cmd := &cobra.Command{
		Use:     "soak",
		Example: "  finserve soak --url http://127.0.0.1:8080 --duration 2m",
		Short:   "Soak a finserve server: many clients mixing tiers, disconnects and over-rate keys, for a bounded time",
		Long: `Soak a finserve server on loopback: --clients clients for --duration, an
eighth sending as fast as they can with --rate-key (429s expected), an eighth
leaving their streams after the first chunks, the rest mixing realtime chat,
standard chat, batch streams and (with --aml-case) AML scoring. Reports every
outcome by behaviour, the outcomes that were not intended, the server's RSS
over time (from /metrics) and its KV cache once idle.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if amlCase != "" {
				data, err := os.ReadFile(amlCase)
				if err != nil {
					return err
				}
				o.AMLCase = data
			}
			r, err := bench.Soak(cmd.Context(), o)
			if err != nil {
				return err
			}
			r.WriteText(cmd.OutOrStdout())
			if jsonOut != "" {
				data, _ := json.MarshalIndent(r, "", "  ")
				if err := os.WriteFile(jsonOut, data, 0o644); err != nil {
					return err
				}
			}
			if r.Unintended > 0 {
				return fmt.Errorf("%d unintended outcomes", r.Unintended)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Root, "url", "http://127.0.0.1:8080", "server root URL (loopback)")
	f.IntVar(&o.Clients, "clients", 64, "concurrent clients")
	f.DurationVar(&o.Duration, "duration", 10*time.Minute, "how long clients send")
	f.StringVar(&o.Key, "key", "", "an API key allowed every tier (also reads /metrics)")
	f.StringVar(&o.RateKey, "rate-key", "", "a rate-limited realtime key for the over-rate clients")
	f.StringVar(&amlCase, "aml-case", "", "an AML case file some clients score")
	f.DurationVar(&o.Sample, "sample", 30*time.Second, "metrics sampling interval")
	f.StringVar(&jsonOut, "json", "", "also write the report as JSON to this file")
	return cmd
}
