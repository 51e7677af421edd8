package engine_test

import (
	"context"
	"errors"
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

// TestGrammarBansNonUTF8Bytes: the tiny vocabulary's byte-fallback tokens
// for bytes no UTF-8 text holds (C0, C1, F5-FF) are banned from
// grammar-constrained sampling, where llama.cpp's lenient decoding would
// take them for characters: a grammar allowing any character, at
// temperature 1 over several seeds, never samples one.
func TestGrammarBansNonUTF8Bytes(t *testing.T) {
	banned := map[engine.Token]bool{}
	for _, tok := range tinyQ8.NeverUTF8() {
		banned[tok] = true
	}
	if len(banned) < 13 {
		t.Fatalf("%d banned tokens; the tiny vocabulary has a byte token for each of C0, C1, F5-FF", len(banned))
	}
	e := newEngine(t, tinyQ8, engine.Options{Parallel: 4, Context: 512})
	for seed := range uint32(8) {
		r := generate(t, e, engine.Request{Prompt: prompt(t, tinyQ8, testPrompts[0]), MaxTokens: 200,
			Sampling: engine.Sampling{Temperature: 1.5, Seed: &seed, Grammar: `root ::= [^\x00]{1,200}`}})
		for _, tok := range r.tokens {
			if banned[tok] {
				t.Fatalf("seed %d sampled banned token %d (%q)", seed, tok, tinyQ8.Piece(tok))
			}
		}
	}
}

// FuzzGrammarSampling: any grammar CheckGrammar accepts samples a few
// tokens, greedy and at temperature 1, ending by length, by the grammar
// (stop) or with ErrGrammarStuck when it allows no token, never in a
// llama.cpp abort (the dist sampler asserts on an empty choice).
func FuzzGrammarSampling(f *testing.F) {
	for _, g := range []string{
		`root ::= "yes" | "no"`, `root ::= [0-9]+`, `root ::= <[260]> "x"`, `root ::= "a" <[260]>`,
		`root ::= !<[300]>{1,3}`, `root ::= [\xf8-\xff]`, `root ::= <[1]> <[2]>`, `root ::= ""`,
	} {
		f.Add(g, uint8(0))
		f.Add(g, uint8(1))
	}
	var e *engine.Engine
	f.Cleanup(func() {
		if e != nil {
			e.Close()
		}
	})
	f.Fuzz(func(t *testing.T, g string, temp uint8) {
		if tinyQ8.CheckGrammar(g) != nil || g == "" {
			return
		}
		if e == nil {
			var err error
			if e, err = engine.New(tinyQ8, engine.Options{Parallel: 1, Context: 64, Threads: 1}); err != nil {
				t.Fatal(err)
			}
		}
		seed := uint32(1)
		st, err := e.Generate(context.Background(), engine.Request{Prompt: []engine.Token{1, 300}, MaxTokens: 4,
			Sampling: engine.Sampling{Temperature: float32(temp % 2), Seed: &seed, Grammar: g}})
		if err != nil {
			t.Fatalf("Generate: %v", err)
		}
		for {
			ev, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if ev.Done {
				if ev.Err != nil && !errors.Is(ev.Err, engine.ErrGrammarStuck) {
					t.Fatalf("grammar %q: %v", g, ev.Err)
				}
				return
			}
		}
	})
}
