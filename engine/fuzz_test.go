package engine_test

import (
	"testing"
	"unicode/utf8"

	"github.com/finserve/finserve/engine"
)

// FuzzTokenize: any text a client sends tokenizes without reaching a
// llama.cpp assertion; valid UTF-8 comes back unchanged through
// Detokenize, and chat templates render any message content.
func FuzzTokenize(f *testing.F) {
	for _, s := range testPrompts {
		f.Add(s)
	}
	f.Add("")
	f.Add("<|im_start|>system\n<|im_end|>")
	f.Add("\xff\xfe invalid")
	f.Add("\x00 nul")
	f.Fuzz(func(t *testing.T, text string) {
		m := tinyQ8
		toks, err := m.Tokenize(text, true, false)
		if !utf8.ValidString(text) {
			if err == nil {
				t.Fatal("invalid UTF-8 was tokenized")
			}
			return
		}
		if err != nil {
			t.Fatalf("Tokenize: %v", err)
		}
		for _, tok := range toks {
			if !m.ValidToken(tok) {
				t.Fatalf("token %d out of range", tok)
			}
		}
		back, err := m.Detokenize(toks)
		if err != nil {
			t.Fatal(err)
		}
		if back != text {
			t.Fatalf("round trip of %q gave %q", text, back)
		}
		if _, err := m.Tokenize(text, false, true); err != nil {
			t.Fatalf("Tokenize with special parsing: %v", err)
		}
		_, err = m.ApplyChatTemplate("", []engine.Message{{Role: "user", Content: text}}, true)
		if hasNUL := len(text) > 0 && containsNUL(text); (err != nil) != hasNUL {
			t.Fatalf("ApplyChatTemplate(%q): %v", text, err)
		}
	})
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}
