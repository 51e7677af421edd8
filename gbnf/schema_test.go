package gbnf

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

// Schemas the converter takes: each gives a grammar whose every rule
// reference is defined (llama.cpp parses and runs them in the server's
// end-to-end test, which validates the answers).
var supported = map[string]string{
	"object":         `{"type":"object","properties":{"name":{"type":"string","maxLength":8},"age":{"type":"integer","minimum":0}},"required":["name"],"additionalProperties":false}`,
	"all optional":   `{"type":"object","properties":{"a":{"type":"boolean"},"b":{"type":"null"},"c":{"type":"number"}}}`,
	"enum and const": `{"type":"object","properties":{"level":{"enum":["low","medium","high",1,null,{"x":[true]}]},"v":{"const":"a\"b\\c\n"}},"required":["level","v"]}`,
	"nullable":       `{"type":["string","null"],"maxLength":3}`,
	"array":          `{"type":"array","items":{"type":"integer"},"minItems":1,"maxItems":3}`,
	"formats":        `{"type":"object","properties":{"d":{"type":"string","format":"date"},"t":{"type":"string","format":"date-time"},"u":{"type":"string","format":"uuid"},"h":{"type":"string","format":"time"}},"required":["d","t","u","h"]}`,
	"anyOf":          `{"anyOf":[{"type":"integer"},{"type":"string","maxLength":2}]}`,
	"recursive $ref": `{"$defs":{"n":{"type":"object","properties":{"v":{"type":"integer"},"next":{"anyOf":[{"$ref":"#/$defs/n"},{"type":"null"}]}},"required":["v","next"]}},"$ref":"#/$defs/n"}`,
	"definitions":    `{"definitions":{"a/b":{"type":"boolean"}},"type":"object","properties":{"x":{"$ref":"#/definitions/a~1b"}},"required":["x"]}`,
	"any":            `{}`,
	"true":           `true`,
	"free object":    `{"type":"object","description":"anything"}`,
	"many props":     `{"type":"object","properties":{"p1":{"type":"integer"},"p2":{"type":"integer"},"p3":{"type":"integer"},"p4":{"type":"integer"},"p5":{"type":"integer"},"p6":{"type":"integer"},"p7":{"type":"integer"},"p8":{"type":"integer"},"p9":{"type":"integer"},"p10":{"type":"integer"}},"required":["p2","p9"]}`,
}

var ruleRef = regexp.MustCompile(`[a-z][a-z0-9-]*`)

// checkRules fails when the grammar refers to a rule it does not define
// (outside literals and character classes) or lacks root.
func checkRules(t *testing.T, g string) {
	t.Helper()
	defined := map[string]bool{}
	var bodies []string
	for _, line := range strings.Split(strings.TrimSpace(g), "\n") {
		name, body, ok := strings.Cut(line, " ::= ")
		if !ok {
			t.Fatalf("not a rule: %q", line)
		}
		defined[name] = true
		bodies = append(bodies, body)
	}
	if !defined["root"] {
		t.Fatal("no root rule")
	}
	for _, body := range bodies {
		for _, ref := range ruleRef.FindAllString(stripLiterals(body), -1) {
			if !defined[ref] {
				t.Errorf("undefined rule %q in %s", ref, body)
			}
		}
	}
}

// stripLiterals removes "..." literals and [...] classes from a rule body.
func stripLiterals(body string) string {
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		switch body[i] {
		case '"', '[':
			end := byte('"')
			if body[i] == '[' {
				end = ']'
			}
			for i++; i < len(body) && body[i] != end; i++ {
				if body[i] == '\\' {
					i++
				}
			}
			b.WriteByte(' ')
		default:
			b.WriteByte(body[i])
		}
	}
	return b.String()
}

func TestSupported(t *testing.T) {
	for name, schema := range supported {
		t.Run(name, func(t *testing.T) {
			g, err := FromSchema([]byte(schema))
			if err != nil {
				t.Fatal(err)
			}
			checkRules(t, g)
		})
	}
}

// TestRefused: a keyword the grammar cannot enforce is refused by name,
// at its place; a schema that is not one is invalid.
func TestRefused(t *testing.T) {
	for _, c := range []struct {
		schema, keyword, path string
	}{
		{`{"type":"string","pattern":"^[A-Z]+$"}`, "pattern", "/pattern"},
		{`{"type":"object","properties":{"iban":{"type":"string","pattern":"x"}}}`, "pattern", "/properties/iban/pattern"},
		{`{"oneOf":[{"type":"string"},{"type":"integer"}]}`, "oneOf", "/oneOf"},
		{`{"allOf":[{"type":"string"}]}`, "allOf", "/allOf"},
		{`{"type":"integer","maximum":10}`, "maximum", "/maximum"},
		{`{"type":"integer","minimum":1}`, "minimum", "/minimum"},
		{`{"type":"number","exclusiveMinimum":0}`, "exclusiveMinimum", "/exclusiveMinimum"},
		{`{"type":"string","format":"email"}`, "format", "/format"},
		{`{"type":"integer","maxLength":3}`, "maxLength", "/maxLength"},
		{`{"type":"array","uniqueItems":true}`, "uniqueItems", "/uniqueItems"},
		{`{"type":"array","prefixItems":[{"type":"string"}]}`, "prefixItems", "/prefixItems"},
		{`{"$ref":"https://example.com/s.json"}`, "$ref", "/$ref"},
		{`{"$ref":"#/$defs/missing"}`, "$ref", "/$ref"},
		{`{"type":"object","properties":{"a":{}},"required":["b"]}`, "required", "/required"},
		{`{"type":"object","patternProperties":{"^x":{}}}`, "patternProperties", "/patternProperties"},
		{`false`, "false", ""},
		{`{"not":{"type":"string"}}`, "not", "/not"},
	} {
		_, err := FromSchema([]byte(c.schema))
		var un *UnsupportedError
		if !errors.As(err, &un) || un.Keyword != c.keyword || un.Path != c.path || !strings.Contains(err.Error(), c.keyword) {
			t.Errorf("%s: %v, want keyword %s at %q", c.schema, err, c.keyword, c.path)
		}
	}
	for _, bad := range []string{`[1]`, `{"type":5}`, `{"type":"strin"}`, `{"enum":[]}`, `{"type":"string","maxLength":-1}`,
		`{"type":"array","minItems":3,"maxItems":2}`, `{"a":1,"a":2}`, `{"type":"string"} x`, `not json`, strings.Repeat(`{"type":"array","items":`, 40) + `{}` + strings.Repeat(`}`, 40)} {
		var inv *InvalidError
		if _, err := FromSchema([]byte(bad)); !errors.As(err, &inv) {
			t.Errorf("%s: %v, want an InvalidError", bad, err)
		}
	}
}

// TestLiteral: GBNF literals escape quotes, backslashes and controls.
func TestLiteral(t *testing.T) {
	for in, want := range map[string]string{`a"b`: `"a\"b"`, `\`: `"\\"`, "x\ny\t\x01": `"x\ny\t\x01"`, "日本": `"日本"`} {
		if got := literal(in); got != want {
			t.Errorf("literal(%q) = %s, want %s", in, got, want)
		}
	}
}

// FuzzFromSchema: any input converts to a grammar whose references are
// defined, or fails with an UnsupportedError or InvalidError; nothing
// panics.
func FuzzFromSchema(f *testing.F) {
	for _, s := range supported {
		f.Add(s)
	}
	f.Add(`{"oneOf":[]}`)
	f.Fuzz(func(t *testing.T, schema string) {
		g, err := FromSchema([]byte(schema))
		if err != nil {
			var un *UnsupportedError
			var inv *InvalidError
			if !errors.As(err, &un) && !errors.As(err, &inv) {
				t.Fatalf("%T: %v", err, err)
			}
			return
		}
		checkRules(t, g)
	})
}
