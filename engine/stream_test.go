package engine

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// TestTextAssembler feeds pieces as tokens would bring them and checks what
// may be sent after each, and at the end.
func TestTextAssembler(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stops   []string
		pieces  []string
		emitted []string // after each piece
		final   string
		stopped bool
	}{
		{"ascii", nil, []string{"a", "bc"}, []string{"a", "bc"}, "", false},
		{"split Chinese character", nil, []string{"\xe4", "\xbd", "\xa0好"}, []string{"", "", "你好"}, "", false},
		{"split emoji", nil, []string{"\xf0\x9f", "\x99\x82!"}, []string{"", "🙂!"}, "", false},
		{"stray continuation byte", nil, []string{"a\x80b"}, []string{"a\uFFFDb"}, "", false},
		{"invalid lead then ascii", nil, []string{"\xff", "x"}, []string{"\uFFFD", "x"}, "", false},
		{"truncated at the end", nil, []string{"ok\xe4\xbd"}, []string{"ok"}, "\uFFFD", false},
		{"stop inside a piece", []string{"END"}, []string{"abcENDxyz"}, []string{"abc"}, "", true},
		{"stop across pieces", []string{"END"}, []string{"ab", "cE", "N", "Dzz"}, []string{"ab", "c", "", ""}, "", true},
		{"held prefix released", []string{"END"}, []string{"abE", "Nx"}, []string{"ab", "ENx"}, "", false},
		{"held prefix at the end", []string{"END"}, []string{"abEN"}, []string{"ab"}, "EN", false},
		{"earliest of two stops", []string{"zz", "b"}, []string{"abzz"}, []string{"a"}, "", true},
		{"Chinese stop", []string{"结束"}, []string{"好的结", "束了"}, []string{"好的", ""}, "", true},
		{"stop split mid-character", []string{"结束"}, []string{"好\xe7\xbb", "\x93束"}, []string{"好", ""}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := textAssembler{stops: tc.stops}
			stopped := false
			for i, p := range tc.pieces {
				got, s := a.push([]byte(p))
				if !utf8.ValidString(got) {
					t.Fatalf("piece %d: emitted invalid UTF-8 %q", i, got)
				}
				if got != tc.emitted[i] {
					t.Fatalf("piece %d (%q): emitted %q, want %q", i, p, got, tc.emitted[i])
				}
				if s {
					stopped = true
					break
				}
			}
			if stopped != tc.stopped {
				t.Fatalf("stopped = %v, want %v", stopped, tc.stopped)
			}
			if !stopped {
				if got := a.flush(); got != tc.final {
					t.Fatalf("flush = %q, want %q", got, tc.final)
				}
			}
		})
	}
}

// FuzzTextAssembler: whatever bytes tokens bring, what is emitted is valid
// UTF-8, never contains a stop string, and without stops adds up to the
// input with invalid bytes replaced.
func FuzzTextAssembler(f *testing.F) {
	f.Add([]byte("abc\xe4\xbd\xa0"), "bc", uint8(2))
	f.Add([]byte("\xf0\x9f\x99\x82 END"), "END", uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, stop string, cut uint8) {
		var stops []string
		if stop != "" && utf8.ValidString(stop) {
			stops = []string{stop}
		}
		a := textAssembler{stops: stops}
		var out strings.Builder
		step := int(cut%7) + 1
		stopped := false
		for i := 0; i < len(data) && !stopped; i += step {
			s, st := a.push(data[i:min(i+step, len(data))])
			out.WriteString(s)
			stopped = st
		}
		if !stopped {
			out.WriteString(a.flush())
		}
		got := out.String()
		if !utf8.ValidString(got) {
			t.Fatalf("invalid UTF-8 emitted: %q", got)
		}
		if stops != nil && strings.Contains(got, stop) {
			t.Fatalf("stop %q emitted in %q", stop, got)
		}
		if stops == nil && got != strings.ToValidUTF8(string(data), "\uFFFD") && !sameModuloReplacement(got, string(data)) {
			t.Fatalf("output %q does not match input %q", got, data)
		}
	})
}

// sameModuloReplacement accepts one U+FFFD per invalid byte, where
// strings.ToValidUTF8 folds runs of them into one.
func sameModuloReplacement(got, in string) bool {
	var b strings.Builder
	for i := 0; i < len(in); {
		r, n := utf8.DecodeRuneInString(in[i:])
		if r == utf8.RuneError && n <= 1 {
			b.WriteRune(utf8.RuneError)
			i++
			continue
		}
		b.WriteString(in[i : i+n])
		i += n
	}
	return b.String() == got
}
