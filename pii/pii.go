// Package pii finds and masks personal data in free text and
// identifiers: mainland China resident ID numbers (18 characters with a
// valid ISO 7064 MOD 11-2 check character), mobile numbers (with or
// without +86), any run of 15 or more digits (legacy 15-digit IDs, IDs
// with a wrong check character, bank cards and accounts: under PIPL
// Art. 28 financial accounts are sensitive personal information), Luhn-
// valid card numbers of 13-14 digits, passport-like words (one or two
// capitals and 7-9 digits) and e-mail addresses. Digits count wherever
// they stand: joined to letters (CUST13812345678), spaced or hyphenated
// (138 1234 5678, 6228 4804 ...), full-width (１３８...). What survives:
// amounts, dates, short references, and hexadecimal hashes (words of 16
// or more hex characters with a letter among them). Logs and the audit
// trail pass everything they keep about a request through Mask; fields
// that are personal by schema are dropped or masked whole by their owner,
// whatever their content.
package pii

import (
	"log/slog"
	"strings"
)

// Mask returns s with personal data masked, keeping the characters'
// positions (only full-width forms become ASCII):
//
//	110105199003070025   -> 110***********0025 (first 3, last 4)
//	13812341234          -> 138****1234
//	138 1234 5678        -> 138 **** 5678
//	6222020200112233446  -> 622202*********3446 (cards: first 6, last 4)
//	CUST13812345678      -> CUST138****5678
//	E12345678            -> E*******78
//	zhang.san@bank.cn    -> z***@bank.cn
func Mask(s string) string {
	s = foldWidth(s)
	if !mayHold(s) {
		return s
	}
	b := []byte(s)
	maskDigits(b)
	maskPassports(b)
	return maskEmails(string(b))
}

// foldWidth turns full-width ASCII forms (U+FF01-FF5E) into ASCII and
// the ideographic space into a space, so that "１３８ １２３４ ５６７８" is
// seen as the number it is.
func foldWidth(s string) string {
	if !strings.Contains(s, "\xef\xbc") && !strings.Contains(s, "\xef\xbd") && !strings.Contains(s, "\u3000") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for _, r := range s {
		switch {
		case r >= 0xFF01 && r <= 0xFF5E:
			b.WriteRune(r - 0xFEE0)
		case r == 0x3000:
			b.WriteByte(' ')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// mayHold is a quick filter: text with fewer than 7 digits and no '@'
// holds nothing to mask.
func mayHold(s string) bool {
	digits := 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '@':
			return true
		case isDigit(s[i]):
			if digits++; digits >= 7 {
				return true
			}
		}
	}
	return false
}

// group is a run of digits at b[start:end].
type group struct{ start, end int }

// maskDigits masks, in place, every span of digit groups (joined by single
// spaces or hyphens) whose digits form personal data, preferring the
// longest such span of up to 19 digits from each group.
func maskDigits(b []byte) {
	var gs []group
	for i := 0; i < len(b); {
		if !isDigit(b[i]) {
			i++
			continue
		}
		j := i
		for j < len(b) && isDigit(b[j]) {
			j++
		}
		if !inHexWord(b, i, j) {
			gs = append(gs, group{i, j})
		}
		i = j
	}
	for i := 0; i < len(gs); {
		best, bestX := -1, false
		digits := make([]byte, 0, 32)
		for j := i; j < len(gs); j++ {
			if j > i {
				gap := gs[j].start - gs[j-1].end
				if gap != 1 || (b[gs[j-1].end] != ' ' && b[gs[j-1].end] != '-') {
					break
				}
			}
			digits = append(digits, b[gs[j].start:gs[j].end]...)
			if j > i && len(digits) > 19 {
				break
			}
			// A 17-digit span may end with the ID check character X.
			x := len(digits) == 17 && gs[j].end < len(b) && (b[gs[j].end] == 'X' || b[gs[j].end] == 'x')
			if x && ValidResidentID(string(digits)+"X") || personal(digits) {
				best, bestX = j, x && ValidResidentID(string(digits)+"X")
			}
		}
		if best < 0 {
			i++
			continue
		}
		span := make([]byte, 0, 32)
		for k := i; k <= best; k++ {
			span = append(span, b[gs[k].start:gs[k].end]...)
		}
		if bestX {
			span = append(span, b[gs[best].end])
		}
		masked := maskNumber(string(span))
		// Write the masked characters back over the digits (and the X),
		// leaving the separators where they were.
		n := 0
		for k := i; k <= best; k++ {
			for p := gs[k].start; p < gs[k].end; p++ {
				b[p] = masked[n]
				n++
			}
		}
		if bestX {
			b[gs[best].end] = masked[n]
		}
		i = best + 1
	}
}

// personal says whether a digit string is a mobile number (with or without
// 86), a run of 15 or more digits, or a Luhn-valid card of 13-14 digits.
func personal(d []byte) bool {
	s := string(d)
	switch {
	case IsMobile(s), len(s) == 13 && s[:2] == "86" && IsMobile(s[2:]):
		return true
	case len(s) >= 15:
		return true
	case len(s) >= 13 && ValidLuhn(s):
		return true
	}
	return false
}

// maskNumber masks a personal digit string (an ID's X included).
func maskNumber(d string) string {
	switch {
	case ValidResidentID(d):
		return d[:3] + strings.Repeat("*", len(d)-7) + d[len(d)-4:]
	case IsMobile(d):
		return d[:3] + "****" + d[7:]
	case len(d) == 13 && d[:2] == "86" && IsMobile(d[2:]):
		return "86" + maskNumber(d[2:])
	case len(d) <= 19 && ValidLuhn(d):
		return d[:6] + strings.Repeat("*", len(d)-10) + d[len(d)-4:]
	}
	return d[:3] + strings.Repeat("*", len(d)-7) + d[len(d)-4:]
}

// inHexWord reports whether the digits b[i:j] lie in a word of 16 or more
// hexadecimal characters with letters among its digits: a hash or a random
// id, not a number. Letters only in front ("C110105199003070025", "DE"
// and a number) make an identifier that wraps a number, which is masked.
func inHexWord(b []byte, i, j int) bool {
	s, e := i, j
	for s > 0 && isAlnum(b[s-1]) {
		s--
	}
	for e < len(b) && isAlnum(b[e]) {
		e++
	}
	if e-s < 16 {
		return false
	}
	digitSeen, interleaved := false, false
	for _, c := range b[s:e] {
		switch {
		case isDigit(c):
			digitSeen = true
		case c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
			interleaved = interleaved || digitSeen
		default:
			return false
		}
	}
	return interleaved
}

// maskPassports masks words of one or two capitals and 7-9 digits (the
// shape of Chinese passport numbers such as E12345678 or EA1234567, and of
// many others), keeping the letters and the last two digits.
func maskPassports(b []byte) {
	for i := 0; i < len(b); {
		if !isAlnum(b[i]) {
			i++
			continue
		}
		j := i
		for j < len(b) && isAlnum(b[j]) {
			j++
		}
		letters := 0
		for letters < j-i && b[i+letters] >= 'A' && b[i+letters] <= 'Z' {
			letters++
		}
		digits := j - i - letters
		if letters >= 1 && letters <= 2 && digits >= 7 && digits <= 9 && allDigits(b[i+letters:j]) {
			for p := i + letters; p < j-2; p++ {
				b[p] = '*'
			}
		}
		i = j
	}
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool { return isDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

// ValidResidentID reports whether id is an 18-character resident
// identity number whose last character is its ISO 7064 MOD 11-2 check
// character (GB 11643).
func ValidResidentID(id string) bool {
	if len(id) != 18 {
		return false
	}
	sum := 0
	for i := 0; i < 17; i++ {
		if !isDigit(id[i]) {
			return false
		}
		// Weights are 2^(17-i) mod 11.
		sum += int(id[i]-'0') * idWeights[i]
	}
	check := (12 - sum%11) % 11
	last := id[17]
	if check == 10 {
		return last == 'X' || last == 'x'
	}
	return last == byte('0'+check)
}

var idWeights = [17]int{7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2}

// IsMobile reports whether d is a mainland mobile number: 11 digits
// starting 13-19.
func IsMobile(d string) bool {
	if len(d) != 11 || d[0] != '1' || d[1] < '3' {
		return false
	}
	for i := 0; i < len(d); i++ {
		if !isDigit(d[i]) {
			return false
		}
	}
	return true
}

// ValidLuhn reports whether the digit string d ends with a valid Luhn
// check digit.
func ValidLuhn(d string) bool {
	if len(d) < 2 {
		return false
	}
	sum := 0
	for i := 0; i < len(d); i++ {
		c := d[len(d)-1-i]
		if !isDigit(c) {
			return false
		}
		n := int(c - '0')
		if i%2 == 1 {
			if n *= 2; n > 9 {
				n -= 9
			}
		}
		sum += n
	}
	return sum%10 == 0
}

// maskEmails keeps the first character of each address's local part and
// its domain.
func maskEmails(s string) string {
	at := strings.IndexByte(s, '@')
	if at < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	start := 0 // s[:start] is written
	for at >= 0 {
		i := at
		for i > start && isEmailLocal(s[i-1]) {
			i--
		}
		j := at + 1
		dot := false
		for j < len(s) && isDomain(s[j]) {
			dot = dot || s[j] == '.'
			j++
		}
		for j > at+1 && s[j-1] == '.' {
			j-- // a sentence's full stop is not part of the domain
		}
		if i < at && dot && j > at+1 && !strings.HasPrefix(s[i:at], "***") {
			b.WriteString(s[start : i+1])
			b.WriteString("***")
			start = at
		}
		next := strings.IndexByte(s[at+1:], '@')
		if next < 0 {
			break
		}
		at += 1 + next
	}
	b.WriteString(s[start:])
	return b.String()
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isWordByte(c byte) bool {
	return isDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_'
}

func isEmailLocal(c byte) bool {
	return isWordByte(c) || c == '.' || c == '+' || c == '-' || c == '%'
}

func isDomain(c byte) bool { return isWordByte(c) || c == '.' || c == '-' }

// ReplaceAttr masks string attribute values; use it as the ReplaceAttr
// of a slog handler so that nothing a log line carries leaks personal
// data. (The message itself is the program's own text.)
func ReplaceAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); mayHold(s) {
			a.Value = slog.StringValue(Mask(s))
		}
	case slog.KindAny:
		if err, ok := a.Value.Any().(error); ok {
			if s := err.Error(); mayHold(s) {
				a.Value = slog.StringValue(Mask(s))
			}
		}
	}
	return a
}

// MaskName keeps a personal name's first character: "张三丰" -> "张**",
// "Zhang San" -> "Z********".
func MaskName(name string) string {
	r := []rune(name)
	if len(r) <= 1 {
		return name
	}
	return string(r[0]) + strings.Repeat("*", len(r)-1)
}
