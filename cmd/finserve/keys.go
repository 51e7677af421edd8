package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/apikeys"
)

func newKeysCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Manage the API key file (serve --api-keys)",
		Long: `Manage the API key file that serve --api-keys reads. The file holds each
key's name, allowed tiers and limits, and only a hash of the key: a key is
shown once, when it is made. A running server takes changes on SIGHUP
(systemctl reload finserve). A rewrite keeps the file's owner, group and
mode, so that root may edit the file the service reads (0640, group of
the service).`,
		Example: `  finserve keys add teller-app --file /etc/finserve/keys.json --tiers realtime,standard --rate 20
  finserve keys list --file /etc/finserve/keys.json
  finserve keys rotate teller-app --file /etc/finserve/keys.json --overlap 24h
  finserve keys revoke teller-app --file /etc/finserve/keys.json`,
	}
	cmd.PersistentFlags().StringVar(&file, "file", "", "API key file (required)")
	needFile := func(*cobra.Command, []string) error {
		if file == "" {
			return errors.New("--file is required: the API key file (serve --api-keys), e.g. --file /etc/finserve/keys.json")
		}
		return nil
	}
	var tiers, modelList string
	var rate float64
	var concurrency int
	add := &cobra.Command{
		Use:     "add NAME",
		Short:   "Create a key; print it once (only its hash is stored)",
		Example: "  finserve keys add aml-batch --file keys.json --tiers batch --concurrency 2",
		Args:    cobra.ExactArgs(1),
		PreRunE: needFile,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, statErr := os.Stat(file)
			var allowed []string
			if modelList != "" {
				allowed = strings.Split(modelList, ",")
			}
			key, err := apikeys.AddKey(file, args[0], apikeys.Limits{Tiers: strings.Split(tiers, ","), Rate: rate,
				Concurrency: concurrency, Models: allowed})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), key)
			fmt.Fprintf(cmd.ErrOrStderr(), "added key %q (tiers %s, rate %g/s; 0 is unlimited) to %s; it is shown only now. "+
				"A running server takes it on SIGHUP.\n", args[0], tiers, rate, file)
			if statErr != nil && os.Geteuid() == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s is new, owned by root with mode 0600; the service reads it as its own user: "+
					"chgrp finserve %s && chmod 640 %s (later rewrites keep that)\n", file, file, file)
			}
			return nil
		},
	}
	add.Flags().StringVar(&modelList, "models", "", "model ids the key may use, comma-separated, on a server of several models (default: all)")
	add.Flags().StringVar(&tiers, "tiers", "standard", "tiers the key may use, comma-separated (the first is its default on /v1 unless the server's default tier is among them)")
	add.Flags().Float64Var(&rate, "rate", 0, "requests per second the key may send (0: unlimited)")
	add.Flags().IntVar(&concurrency, "concurrency", 0, "requests the key may have in flight at once (0: unlimited), so that one client cannot hold every slot")
	list := &cobra.Command{
		Use:     "list",
		Example: "  finserve keys list --file /etc/finserve/keys.json",
		Short:   "List the keys: names, hints, tiers, rates (never the keys)",
		Args:    cobra.NoArgs,
		PreRunE: needFile,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := apikeys.Load(file)
			if err != nil {
				return err
			}
			now := time.Now()
			for _, e := range s.Keys {
				old := ""
				for _, p := range e.Previous {
					if now.Before(p.Expires) {
						old += fmt.Sprintf("\tand %s… until %s", p.Hint, p.Expires.Format(time.RFC3339))
					}
				}
				if len(e.Models) > 0 {
					old += "\tmodels " + strings.Join(e.Models, ",")
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s…\t%s\t%g/s\t%s%s\n", e.Name, e.Hint, strings.Join(e.Tiers, ","), e.Rate, e.Created.Format("2006-01-02"), old)
			}
			return nil
		},
	}
	var overlap time.Duration
	rotate := &cobra.Command{
		Use:   "rotate NAME",
		Short: "Give a key a new value; the old one keeps working for --overlap",
		Long: `Give a key a new value, printed once, keeping its name, tiers and limits
(its tenant and cached prefixes stay its own). The old value is accepted
for --overlap more, so that clients can switch without an outage; 0 stops
it at once. A running server takes the change on SIGHUP.`,
		Example: "  finserve keys rotate teller-app --file keys.json --overlap 24h && systemctl reload finserve",
		Args:    cobra.ExactArgs(1),
		PreRunE: needFile,
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := apikeys.Rotate(file, args[0], overlap, time.Now())
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), key)
			until := "no longer accepted"
			if overlap > 0 {
				until = "accepted until " + time.Now().Add(overlap).UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "rotated key %q in %s: the new value is shown only now; the old one is %s. "+
				"A running server takes it on SIGHUP.\n", args[0], file, until)
			return nil
		},
	}
	rotate.Flags().DurationVar(&overlap, "overlap", 24*time.Hour, "how long the old value stays valid (0: not at all)")
	revoke := &cobra.Command{
		Use:     "revoke NAME",
		Short:   "Remove a key (a running server drops it on SIGHUP)",
		Example: "  finserve keys revoke teller-app --file keys.json && systemctl reload finserve",
		Args:    cobra.ExactArgs(1),
		PreRunE: needFile,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := apikeys.Revoke(file, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "revoked key %q in %s; a running server drops it on SIGHUP (systemctl reload finserve)\n", args[0], file)
			return nil
		},
	}
	cmd.AddCommand(add, list, rotate, revoke)
	return cmd
}

// tlsConfig builds the server's TLS configuration: none without a
// certificate; client certificates required when a client CA is given.
func tlsConfig(certFile, keyFile, clientCA string) (*tls.Config, error) {
	switch {
	case certFile == "" && keyFile == "" && clientCA == "":
		return nil, nil
	case certFile == "" || keyFile == "":
		return nil, errors.New("--tls-cert and --tls-key go together (and --tls-client-ca needs them)")
	}
	if err := apikeys.CheckMode(keyFile); err != nil {
		return nil, fmt.Errorf("--tls-key: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading the TLS certificate: %w", err)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// TLS 1.2 suites with forward secrecy and AEAD only (no CBC, no
		// RSA key exchange, no SHA-1 MACs); TLS 1.3's are all so.
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
	}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, fmt.Errorf("reading --tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-client-ca %s holds no PEM certificate", clientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}
