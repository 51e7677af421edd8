package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/engine"
)

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the build, the llama.cpp provider, the CPU features it uses and the devices it sees",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			v := "devel"
			if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
				v = bi.Main.Version
			}
			fmt.Fprintf(w, "finserve %s\nllama.cpp provider: %s\n%s\n", v, engine.Provider, engine.SystemInfo())
			for _, d := range engine.Devices() {
				fmt.Fprintf(w, "device %s (%s): %s, %d MiB free of %d MiB\n", d.Name, d.Kind, d.Description, d.FreeBytes>>20, d.TotalBytes>>20)
			}
			return nil
		},
	}
}
