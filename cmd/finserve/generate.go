package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/finserve/finserve/engine"
)

func newGenerateCmd() *cobra.Command {
	var (
		model, prompt, system, template string
		chat                            bool
		maxTokens, threads, ctxLen      int
		gpu                             gpuFlags
		temperature                     float32
		seed                            int64
	)
	cmd := &cobra.Command{
		Use:     "generate",
		Example: `  finserve generate --model demo.gguf --prompt "Our branch opening hours are" --max-tokens 32`,
		Short:   "Generate text for one prompt on the engine (a smoke test without the server)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if model == "" || prompt == "" {
				return fmt.Errorf("--model and --prompt are required")
			}
			ctx := cmd.Context()
			errw := cmd.ErrOrStderr()
			mo, err := gpu.options(engine.ServingShape{Context: ctxLen, Sequences: 1})
			if err != nil {
				return err
			}
			mo.Progress = func(p float32) { fmt.Fprintf(errw, "\rloading %3.0f%%", 100*p) }
			m, err := engine.LoadModel(ctx, model, mo)
			fmt.Fprintln(errw)
			if err != nil {
				return err
			}
			defer m.Close()
			e, err := engine.New(m, engine.Options{Parallel: 1, Context: ctxLen, Threads: threads,
				CacheTypeK: gpu.cacheK, CacheTypeV: gpu.cacheV})
			if err != nil {
				return err
			}
			defer e.Close()

			text, special := prompt, false
			if chat {
				var msgs []engine.Message
				if system != "" {
					msgs = append(msgs, engine.Message{Role: "system", Content: system})
				}
				msgs = append(msgs, engine.Message{Role: "user", Content: prompt})
				if text, err = m.ApplyChatTemplate(template, msgs, true); err != nil {
					return err
				}
				special = true // the template's own markers are special tokens
			}
			tokens, err := m.Tokenize(text, true, special)
			if err != nil {
				return err
			}
			req := engine.Request{Prompt: tokens, MaxTokens: maxTokens, Sampling: engine.Sampling{Temperature: temperature}}
			if seed >= 0 {
				s := uint32(seed)
				req.Sampling.Seed = &s
			}
			st, err := e.Generate(ctx, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for {
				ev, err := st.Recv()
				if err != nil {
					return err
				}
				fmt.Fprint(out, ev.Text)
				if ev.Done {
					fmt.Fprintln(out)
					if ev.Err != nil {
						return ev.Err
					}
					t := ev.Timings
					fmt.Fprintf(errw, "finish=%s prompt=%d completion=%d ttft=%s decode=%.1f tok/s\n",
						ev.Finish, ev.Usage.PromptTokens, ev.Usage.CompletionTokens, t.FirstByte.Round(time.Microsecond),
						float64(max(ev.Usage.CompletionTokens-1, 0))/max(t.Decode.Seconds(), 1e-9))
					return nil
				}
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&model, "model", "", "GGUF model path")
	f.StringVar(&prompt, "prompt", "", "prompt text")
	f.BoolVar(&chat, "chat", false, "wrap the prompt in the chat template as a user message")
	f.StringVar(&system, "system", "", "system message (with --chat)")
	f.StringVar(&template, "template", "", "chat template name (default: the model's own)")
	f.IntVar(&maxTokens, "max-tokens", 64, "tokens to generate")
	f.IntVar(&ctxLen, "ctx", 2048, "context length")
	f.IntVar(&threads, "threads", 0, "CPU threads (default: all)")
	gpu.register(f)
	f.Float32Var(&temperature, "temperature", 0, "sampling temperature (0: greedy)")
	f.Int64Var(&seed, "seed", -1, "sampling seed (-1: random)")
	return cmd
}
