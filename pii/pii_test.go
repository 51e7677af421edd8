package pii

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestMask(t *testing.T) {
	cases := []struct{ in, want string }{
		// Resident IDs: valid check characters (digit and X) are masked.
		{"ID 110105199003070025 on file", "ID 110***********0025 on file"},
		{"身份证:11010519491231002X。", "身份证:110***********002X。"},
		{"id=11010519491231002x", "id=110***********002x"},
		// A wrong check character, a legacy 15-digit ID, a spaced ID:
		// 15 or more digits are masked whatever they are.
		{"ref 110105199003070023", "ref 110***********0023"},
		{"old id 110105490101002", "old id 110********1002"},
		{"id 110105 19900307 0025", "id 110*** ******** 0025"},
		// Joined to letters, spaced, hyphenated, full-width, +86.
		{"ID11010519491231002X", "ID110***********002X"},
		{"CUST13812345678", "CUST138****5678"},
		{"C110105199003070025 DEAD6222020200112233446", "C110***********0025 DEAD622202*********3446"},
		{"acct_13812341234", "acct_138****1234"},
		{"mobile 138 1234 5678.", "mobile 138 **** 5678."},
		{"+86 138-1234-5678", "+86 138-****-5678"},
		{"１３８１２３４５６７８", "138****5678"},
		{"６２２８ ４８０４ ０２５６ ４８９０ ０１８", "6228 48** **** ***0 018"},
		{"evidence 6228480402564890018-1", "evidence 622848*********0018-1"},
		// Boundaries: 7 digits reach the masker; a spaced span joins up to
		// 19 digits, not 20; hex words from 16 characters; passports with
		// 1-2 letters and 7-9 digits.
		{"P1234567", "P*****67"},
		{"6222 0202 0011 2233 446", "6222 02** **** ***3 446"},
		{"1381234567a8b9c0 13812345678a9c0", "1381234567a8b9c0 138****5678a9c0"},
		{"ABC1234567 E123456 E1234567890 e1234567", "ABC1234567 E123456 E1234567890 e1234567"},
		{"EA123456789", "EA*******89"},
		// Passport-like words.
		{"passport E12345678, EA1234567", "passport E******78, EA*****67"},
		// Mobile numbers, with and without +86.
		{"call 13812341234 now", "call 138****1234 now"},
		{"tel:+8613812341234", "tel:+86138****1234"},
		{"12812341234", "12812341234"}, // no mobile prefix 12
		// Cards: Luhn-valid 16 and 19 digits masked, invalid left.
		{"card 4111111111111111.", "card 411111******1111."},
		{"6222020200112233446", "622202*********3446"},
		{"4111111111111112", "411*********1112"},
		// E-mail.
		{"mail zhang.san@bank.example.cn.", "mail z***@bank.example.cn."},
		{"a@b and x@y.z", "a@b and x***@y.z"},
		// Amounts, dates, short references, ids and hashes survive.
		{"amount 49999.99 CNY on 2026-11-28T10:00:00Z", "amount 49999.99 CNY on 2026-11-28T10:00:00Z"},
		{"sha 4111111111111111abc", "sha 4111111111111111abc"},
		{"amldec-49728a038bf0289132694155 T1 T2 A-1", "amldec-49728a038bf0289132694155 T1 T2 A-1"},
		{"tel 010-12345678, 100 200 300", "tel 010-12345678, 100 200 300"},
		{"", ""},
	}
	for _, tc := range cases {
		if got := Mask(tc.in); got != tc.want {
			t.Errorf("Mask(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestChecksums(t *testing.T) {
	for _, id := range []string{"110105199003070025", "11010519491231002X", "440524188001010014"} {
		if !ValidResidentID(id) {
			t.Errorf("ValidResidentID(%s) = false", id)
		}
	}
	for _, id := range []string{"110105199003070022", "11010519491231002Y", "1101051990030700", "A10105199003070022"} {
		if ValidResidentID(id) {
			t.Errorf("ValidResidentID(%s) = true", id)
		}
	}
	for _, d := range []string{"4111111111111111", "79927398713", "6011000990139424"} {
		if !ValidLuhn(d) {
			t.Errorf("ValidLuhn(%s) = false", d)
		}
	}
	for _, d := range []string{"4111111111111112", "79927398710", "0", "12a4"} {
		if ValidLuhn(d) {
			t.Errorf("ValidLuhn(%s) = true", d)
		}
	}
}

// TestReplaceAttr: a JSON log line built through ReplaceAttr carries no
// unmasked ID, card or mobile number.
func TestReplaceAttr(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{ReplaceAttr: ReplaceAttr}))
	log.Info("request", "memo", "from 110105199003070025 card 4111111111111111", "phone", "13812341234", "amount", 5000,
		"err", errString("bad id 11010519491231002X"))
	out := buf.String()
	for _, s := range []string{"110105199003070025", "4111111111111111", "13812341234", "11010519491231002X"} {
		if strings.Contains(out, s) {
			t.Errorf("log line holds %s: %s", s, out)
		}
	}
	if !strings.Contains(out, `"amount":5000`) {
		t.Errorf("log line lost a number: %s", out)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// FuzzMask: masking never panics, is idempotent, keeps the length, and
// leaves no checksum-valid ID, Luhn-valid card run or mobile number that
// stands alone.
func FuzzMask(f *testing.F) {
	for _, s := range []string{"110105199003070025", "x 4111111111111111 y", "13812341234", "a.b@c.d", "+8613812341234", "11010519491231002X@x.y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		m := Mask(s)
		if len(m) != len(foldWidth(s)) && !strings.Contains(m, "***@") {
			t.Fatalf("Mask(%q) = %q changes the length", s, m)
		}
		if again := Mask(m); again != m {
			t.Fatalf("Mask is not idempotent: %q -> %q -> %q", s, m, again)
		}
		for _, run := range digitRuns(m) {
			if ValidResidentID(run) || IsMobile(run) || len(run) >= 15 || len(run) >= 13 && ValidLuhn(run) {
				t.Fatalf("Mask(%q) = %q leaves %s", s, m, run)
			}
		}
	})
}

// digitRuns returns the digit runs of s wherever they stand (an ID's X
// included), but those inside hexadecimal words (hashes).
func digitRuns(s string) []string {
	var runs []string
	b := []byte(s)
	for i := 0; i < len(s); {
		if !isDigit(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		end := j
		if j-i == 17 && j < len(s) && (s[j] == 'X' || s[j] == 'x') {
			end++
		}
		if !inHexWord(b, i, j) {
			runs = append(runs, s[i:end])
		}
		i = j
	}
	return runs
}
