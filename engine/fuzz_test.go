package engine_test

import (
	"strings"
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

// FuzzCheckGrammar: any GBNF text a client sends (the grammar field) is
// accepted or refused by CheckGrammar without reaching a llama.cpp abort,
// crash or runaway allocation (an empty grammar is no constraint).
func FuzzCheckGrammar(f *testing.F) {
	for _, g := range []string{
		`root ::= "yes" | "no"`,
		`root ::= [0-9]+ ("." [0-9]+)?`,
		`root ::= item (", " item)*` + "\nitem ::= [a-z]{1,8}",
		`root ::= (`, `root ::= undefined`, `root ::= root "a"`, `item ::= "x"`, ``, "root ::= \"\x00\"",
		`root ::= ((((((((((("a"))))))))))))`, `root ::= [^\x00-\x7f]*`, `root ::= "\u00e9" | [\U0001F600]`,
		`root ::= x{2,1}` + "\nx ::= \"a\"", `root ::= "a"{1000000}`,
	} {
		f.Add(g)
	}
	f.Fuzz(func(t *testing.T, g string) {
		_ = tinyQ8.CheckGrammar(g)
	})
}

// TestCheckGrammarRepetitions: a repetition whose maximum is below its
// minimum is refused before llama.cpp's parser, which loops for seconds
// and allocates without bound on it; well-formed ones and look-alikes in
// literals, classes and comments are llama.cpp's to judge.
func TestCheckGrammarRepetitions(t *testing.T) {
	for g, refused := range map[string]bool{
		"root ::= x{2,1}\nx ::= \"a\"": true,
		"root ::= \"a\"{ 5 , 3 }":      true,
		"root ::= \"a\"{1,2}":          false,
		"root ::= \"a\"{2,}":           false,
		"root ::= \"{2,1}\"":           false,
		"root ::= [{] \"a\" # {2,1}\n": false,
	} {
		err := tinyQ8.CheckGrammar(g)
		if got := err != nil && strings.Contains(err.Error(), "maximum below its minimum"); got != refused {
			t.Errorf("%q: %v; want refused for the repetition: %v", g, err, refused)
		}
	}
}
