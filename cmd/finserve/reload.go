package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/finserve/finserve/aml"
	"github.com/finserve/finserve/apikeys"
	"github.com/finserve/finserve/server"
)

// reloads are the files serve reads again while running: the API key
// file, the TLS certificate, key and client CA, and the AML
// configuration. Each is reloaded on SIGHUP and when its file changes
// (polled: a Kubernetes Secret or ConfigMap update swaps the ..data link
// under the mount, which no inotify watch on the file itself sees). A file
// that fails to load leaves the one in force, and the log says which.
type reloads struct {
	keyFile                string
	tlsCert, tlsKey, tlsCA string
	amlConfig              string
	srv                    *server.Server
	tls                    *atomic.Pointer[tls.Config] // nil without TLS
	log                    *slog.Logger
	every                  time.Duration // 0: on SIGHUP only
}

// run reloads until ctx ends. SIGHUP is always handled: its default
// action ends the process, and systemd counts that exit as clean.
func (r *reloads) run(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var tick <-chan time.Time
	if r.every > 0 {
		t := time.NewTicker(r.every)
		defer t.Stop()
		tick = t.C
	}
	seen := r.stamps()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			seen = r.stamps()
			r.reload("SIGHUP", true, true, true)
		case <-tick:
			now := r.stamps()
			changed := func(files ...string) bool {
				for _, f := range files {
					if f != "" && now[f] != seen[f] {
						return true
					}
				}
				return false
			}
			keys, cert, amlc := changed(r.keyFile), changed(r.tlsCert, r.tlsKey, r.tlsCA), changed(r.amlConfig)
			seen = now
			if keys || cert || amlc {
				r.reload("file changed", keys, cert, amlc)
			}
		}
	}
}

// stamps identifies each file's content as the poll sees it: size,
// modification time and inode of what the path resolves to.
func (r *reloads) stamps() map[string]string {
	m := map[string]string{}
	for _, f := range []string{r.keyFile, r.tlsCert, r.tlsKey, r.tlsCA, r.amlConfig} {
		if f == "" {
			continue
		}
		st, err := os.Stat(f)
		if err != nil {
			m[f] = "error: " + err.Error()
			continue
		}
		var ino uint64
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			ino = sys.Ino
		}
		m[f] = fmt.Sprint(st.Size(), st.ModTime().UnixNano(), ino)
	}
	return m
}

// reload loads what why calls for; an absent setting has nothing to
// reload.
func (r *reloads) reload(why string, keys, cert, amlc bool) {
	if r.keyFile == "" && r.tlsCert == "" && r.amlConfig == "" {
		r.log.Info(why + ": nothing to reload (no --api-keys file, TLS certificate or --aml-config)")
		return
	}
	if keys && r.keyFile != "" {
		set, err := apikeys.Load(r.keyFile)
		if err == nil {
			err = r.srv.SetKeys(set)
		}
		if err != nil {
			r.log.Error("reloading API keys failed; the previous keys stay in force", "why", why, "err", err)
		} else {
			r.log.Info(why+": API keys reloaded", "file", r.keyFile, "keys", len(set.Keys))
		}
	}
	if cert && r.tls != nil {
		cfg, err := tlsConfig(r.tlsCert, r.tlsKey, r.tlsCA)
		if err != nil {
			r.log.Error("reloading the TLS certificate failed; the previous one stays in force", "why", why, "err", err)
		} else {
			r.tls.Store(cfg)
			r.log.Info(why+": TLS certificate reloaded", "cert", r.tlsCert, "not_after", notAfter(cfg))
		}
	}
	if amlc && r.amlConfig != "" {
		cfg, err := aml.LoadConfig(r.amlConfig)
		if err != nil {
			r.log.Error("reloading the AML configuration failed; the previous one stays in force", "why", why, "err", err)
		} else {
			r.srv.SetAML(cfg)
			r.log.Info(why+": AML configuration reloaded", "file", r.amlConfig, "version", cfg.Version, "rules", cfg.Rules.Version, "fx", cfg.FX.Version)
			for _, w := range cfg.Expired(time.Now().Format(time.DateOnly)) {
				r.log.Warn("AML reference data out of date: " + w)
			}
		}
	}
}

// notAfter is the expiry of cfg's certificate, for the reload's log line.
func notAfter(cfg *tls.Config) string {
	if len(cfg.Certificates) == 0 || cfg.Certificates[0].Leaf == nil {
		return ""
	}
	return cfg.Certificates[0].Leaf.NotAfter.UTC().Format(time.RFC3339)
}

// reloadableTLS wraps the configuration in force so that each handshake
// takes the latest one.
func reloadableTLS(cur *atomic.Pointer[tls.Config]) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return cur.Load(), nil
		},
	}
}
