// Package pii finds and masks personal data in free text: mainland China
// resident ID numbers (with a valid ISO 7064 MOD 11-2 check character),
// mobile numbers, bank card numbers (with a valid Luhn digit) and e-mail
// addresses. Digit strings that fail the checksums are left alone, so
// amounts, account numbers and timestamps survive. Logs and the audit
// trail pass everything they keep about a request through Mask.
package pii

import (
	"log/slog"
	"strings"
)

// Mask returns s with every resident ID, mobile number, bank card and
// e-mail address masked:
//
//	110105199003070025 -> 110***********0025 (first 3, last 4)
//	13812341234        -> 138****1234
//	6222020200112233446 (Luhn) -> 622202*********3446 (first 6, last 4)
//	zhang.san@bank.cn  -> z***@bank.cn
func Mask(s string) string {
	if !mayHold(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		switch c := s[i]; {
		case isDigit(c) && (i == 0 || !isWordByte(s[i-1])):
			j := i
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			// A 17-digit run may end with the ID check character X.
			if j-i == 17 && j < len(s) && (s[j] == 'X' || s[j] == 'x') {
				j++
			}
			if j < len(s) && isWordByte(s[j]) {
				// Part of a longer word (an identifier, a hex hash): leave it.
				for j < len(s) && isWordByte(s[j]) {
					j++
				}
				b.WriteString(s[i:j])
			} else {
				b.WriteString(maskNumber(s[i:j]))
			}
			i = j
		default:
			b.WriteByte(c)
			i++
		}
	}
	return maskEmails(b.String())
}

// mayHold is a quick filter: text without a run of 11 digits or an '@'
// holds nothing to mask.
func mayHold(s string) bool {
	run := 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '@':
			return true
		case isDigit(s[i]):
			if run++; run >= 11 {
				return true
			}
		default:
			run = 0
		}
	}
	return false
}

// maskNumber masks one whole digit run if it is a resident ID, a mobile
// number or a card number.
func maskNumber(d string) string {
	switch {
	case ValidResidentID(d):
		return d[:3] + strings.Repeat("*", len(d)-7) + d[len(d)-4:]
	case IsMobile(d):
		return d[:3] + "****" + d[7:]
	case len(d) == 13 && d[:2] == "86" && IsMobile(d[2:]): // +86 written without a separator
		return "86" + maskNumber(d[2:])
	case len(d) >= 13 && len(d) <= 19 && ValidLuhn(d):
		return d[:6] + strings.Repeat("*", len(d)-10) + d[len(d)-4:]
	}
	return d
}

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
