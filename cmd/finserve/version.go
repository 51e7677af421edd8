package main

import (
	"crypto/fips140"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/server"
)

// Set by make (-ldflags -X) for builds from a tree without .git, such as
// the container's; a build in a git checkout has the revision stamped by
// the Go toolchain.
var buildVersion, buildRevision, buildDate string

// build describes this binary: version, VCS revision (with "-dirty" for
// uncommitted changes), the date it was built or, failing that, of its
// commit, its Go and its llama.cpp.
func build() (server.BuildInfo, string) {
	b := server.BuildInfo{Version: buildVersion, Revision: buildRevision, GoVersion: runtime.Version(), LlamaCpp: engine.LlamaCpp()}
	date := buildDate
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if b.Revision == "" && settings["vcs.revision"] != "" {
			b.Revision = settings["vcs.revision"]
			if settings["vcs.modified"] == "true" {
				b.Revision += "-dirty"
			}
		}
		if date == "" && settings["vcs.time"] != "" {
			date = settings["vcs.time"] + " (commit)"
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Revision == "" {
		b.Revision = "unknown"
	}
	if date == "" {
		date = "unknown"
	}
	return b, date
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Example: "  finserve version",
		Short:   "Print the build (version, revision, date, Go, llama.cpp), the CPU features it uses and the devices it sees",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			b, date := build()
			fmt.Fprintf(w, "finserve %s\nrevision: %s\nbuilt: %s\ngo: %s %s/%s\n%s\nllama.cpp provider: %s\n%s\n",
				b.Version, b.Revision, date, b.GoVersion, runtime.GOOS, runtime.GOARCH, b.LlamaCpp, engine.Provider, engine.SystemInfo())
			fmt.Fprintf(w, "fips140: %s\n", fipsMode())
			for _, d := range engine.Devices() {
				fmt.Fprintf(w, "device %s (%s): %s, %d MiB free of %d MiB\n", d.Name, d.Kind, d.Description, d.FreeBytes>>20, d.TotalBytes>>20)
			}
			return nil
		},
	}
}

// fipsMode says whether Go's cryptography runs in FIPS 140-3 mode (a
// build with GOFIPS140, or GODEBUG=fips140=on) and with which module.
func fipsMode() string {
	if !fips140.Enabled() {
		return "off"
	}
	return "on (Go Cryptographic Module " + fips140.Version() + ")"
}
