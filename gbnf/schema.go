// Package gbnf turns a JSON Schema into a llama.cpp grammar (GBNF) whose
// every complete sentence is a JSON document that validates against the
// schema: what response_format json_schema promises. Where a schema asks
// for something a grammar cannot enforce (a pattern, a numeric range, an
// exclusive oneOf), the conversion fails with an UnsupportedError naming
// the keyword: a looser grammar would let the model write invalid output.
//
// The grammar may be stricter than the schema, never looser: properties
// come in the schema's order, only declared properties are written,
// output has no whitespace, numbers have at most 15 digits before and
// after the point, and February has 28 days in dates.
package gbnf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// UnsupportedError names a schema keyword the grammar cannot enforce, and
// where it is (a JSON pointer into the schema).
type UnsupportedError struct {
	Keyword, Path string
	Reason        string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("JSON Schema keyword %q at %s is not supported: %s", e.Keyword, pathOrRoot(e.Path), e.Reason)
}

// InvalidError is a schema that is not a JSON Schema finserve can read.
type InvalidError struct {
	Path, Reason string
}

func (e *InvalidError) Error() string {
	return fmt.Sprintf("invalid JSON Schema at %s: %s", pathOrRoot(e.Path), e.Reason)
}

func pathOrRoot(p string) string {
	if p == "" {
		return "the root"
	}
	return p
}

// Limits bound the work a schema may cause: its nesting, and the rules
// the grammar may hold.
const (
	maxDepth = 32
	maxRules = 2000
)

// FromSchema converts a JSON Schema (draft 2020-12 or 07 keywords) into a
// GBNF grammar with start rule "root".
func FromSchema(schema []byte) (string, error) {
	b := NewBuilder()
	expr, err := b.Schema(schema)
	if err != nil {
		return "", err
	}
	return b.Grammar(expr), nil
}

// Builder composes one grammar from several schemas and literal text:
// a reply made of JSON pieces (a tool call's name and its arguments, each
// tool's arguments by its own schema). Each schema resolves its own $refs.
type Builder struct {
	rules map[string]string
	n     int
}

// NewBuilder returns an empty Builder.
func NewBuilder() *Builder { return &Builder{rules: map[string]string{}} }

// Schema returns a grammar expression matching exactly the JSON documents
// that validate against schema, with FromSchema's errors.
func (b *Builder) Schema(schema []byte) (string, error) {
	root, err := parse(schema)
	if err != nil {
		return "", &InvalidError{Reason: err.Error()}
	}
	c := &converter{root: root, b: b, refs: map[string]string{}}
	return c.convert(root, "", 0)
}

// Grammar returns the grammar whose start rule "root" is expr.
func (b *Builder) Grammar(expr string) string {
	b.rules["root"] = expr
	var out strings.Builder
	for _, n := range slices.Sorted(maps.Keys(b.rules)) {
		fmt.Fprintf(&out, "%s ::= %s\n", n, b.rules[n])
	}
	return out.String()
}

// Literal returns a grammar expression matching s exactly.
func Literal(s string) string { return literal(s) }

// node is a parsed JSON value that keeps the order of object members
// (properties are written in the schema's order).
type node struct {
	kind    byte // 'o' object, 'a' array, 's' string, 'n' number, 'b' bool, 'z' null
	members []member
	items   []*node
	str     string
	num     json.Number
	boolean bool
}

type member struct {
	key string
	val *node
}

func (n *node) get(key string) *node {
	if n == nil || n.kind != 'o' {
		return nil
	}
	for _, m := range n.members {
		if m.key == key {
			return m.val
		}
	}
	return nil
}

// raw is n as compact JSON.
func (n *node) raw() string {
	var b bytes.Buffer
	n.write(&b)
	return b.String()
}

func (n *node) write(b *bytes.Buffer) {
	switch n.kind {
	case 'o':
		b.WriteByte('{')
		for i, m := range n.members {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, m.key)
			b.WriteByte(':')
			m.val.write(b)
		}
		b.WriteByte('}')
	case 'a':
		b.WriteByte('[')
		for i, it := range n.items {
			if i > 0 {
				b.WriteByte(',')
			}
			it.write(b)
		}
		b.WriteByte(']')
	case 's':
		writeString(b, n.str)
	case 'n':
		b.WriteString(n.num.String())
	case 'b':
		b.WriteString(strconv.FormatBool(n.boolean))
	default:
		b.WriteString("null")
	}
}

func writeString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	b.Truncate(b.Len() - 1) // Encode's newline
}

func parse(data []byte) (*node, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	n, err := parseValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the schema")
	}
	return n, nil
}

func parseValue(dec *json.Decoder, depth int) (*node, error) {
	if depth > 2*maxDepth {
		return nil, errors.New("nested too deep")
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			n := &node{kind: 'o'}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				key, _ := k.(string)
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				if n.get(key) != nil {
					return nil, fmt.Errorf("duplicate key %q", key)
				}
				n.members = append(n.members, member{key, v})
			}
			_, err := dec.Token()
			return n, err
		case '[':
			n := &node{kind: 'a'}
			for dec.More() {
				v, err := parseValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				n.items = append(n.items, v)
			}
			_, err := dec.Token()
			return n, err
		}
	case string:
		return &node{kind: 's', str: t}, nil
	case json.Number:
		return &node{kind: 'n', num: t}, nil
	case bool:
		return &node{kind: 'b', boolean: t}, nil
	case nil:
		return &node{kind: 'z'}, nil
	}
	return nil, fmt.Errorf("unexpected %v", tok)
}

// Keywords that only annotate: they never change what validates.
var annotations = map[string]bool{"$schema": true, "$id": true, "$comment": true, "title": true, "description": true,
	"default": true, "examples": true, "deprecated": true, "readOnly": true, "writeOnly": true, "$defs": true, "definitions": true,
	// strict is OpenAI's; additionalProperties is honoured by writing only
	// the declared properties (stricter than any value it has)
	"strict": true, "additionalProperties": true}

// The keywords each conversion reads; any other keyword present is
// refused by name.
var handled = map[string]bool{"type": true, "enum": true, "const": true, "anyOf": true, "$ref": true, "properties": true,
	"required": true, "items": true, "minItems": true, "maxItems": true, "minLength": true, "maxLength": true,
	"format": true, "minimum": true, "prefixItems": true}

type converter struct {
	root *node
	b    *Builder
	refs map[string]string // $ref to its rule name
}

// rule adds a rule for expr and returns its name.
func (c *converter) rule(prefix, expr string) (string, error) {
	if len(c.b.rules) >= maxRules {
		return "", &InvalidError{Reason: fmt.Sprintf("the grammar would need more than %d rules", maxRules)}
	}
	c.b.n++
	name := fmt.Sprintf("%s-%d", prefix, c.b.n)
	c.b.rules[name] = expr
	return name, nil
}

func unsupportedAt(path, keyword, reason string) error {
	return &UnsupportedError{Keyword: keyword, Path: path, Reason: reason}
}

// convert returns a grammar expression for the schema s at path.
func (c *converter) convert(s *node, path string, depth int) (string, error) {
	if depth > maxDepth {
		return "", &InvalidError{Path: path, Reason: fmt.Sprintf("nested more than %d deep", maxDepth)}
	}
	switch s.kind {
	case 'b':
		if !s.boolean {
			return "", unsupportedAt(path, "false", "a schema no value satisfies")
		}
		return c.any(), nil
	case 'o':
	default:
		return "", &InvalidError{Path: path, Reason: "a schema is an object or a boolean"}
	}
	for _, m := range s.members {
		if !annotations[m.key] && !handled[m.key] {
			return "", unsupportedAt(path+"/"+m.key, m.key, "a grammar cannot enforce it")
		}
	}
	if ref := s.get("$ref"); ref != nil {
		if len(s.members) > 1 && !onlyAnnotations(s, "$ref") {
			return "", unsupportedAt(path, "$ref", "beside other assertions")
		}
		return c.ref(ref, path, depth)
	}
	if v := s.get("const"); v != nil {
		return literal(v.raw()), nil
	}
	if e := s.get("enum"); e != nil {
		if e.kind != 'a' || len(e.items) == 0 {
			return "", &InvalidError{Path: path + "/enum", Reason: "enum is a non-empty array"}
		}
		alts := make([]string, len(e.items))
		for i, v := range e.items {
			alts[i] = literal(v.raw())
		}
		return "(" + strings.Join(alts, " | ") + ")", nil
	}
	if a := s.get("anyOf"); a != nil {
		if a.kind != 'a' || len(a.items) == 0 {
			return "", &InvalidError{Path: path + "/anyOf", Reason: "anyOf is a non-empty array"}
		}
		if s.get("type") != nil {
			return "", unsupportedAt(path, "anyOf", "beside type (put the type in each alternative)")
		}
		alts := make([]string, len(a.items))
		for i, alt := range a.items {
			x, err := c.convert(alt, fmt.Sprintf("%s/anyOf/%d", path, i), depth+1)
			if err != nil {
				return "", err
			}
			alts[i] = x
		}
		return "(" + strings.Join(alts, " | ") + ")", nil
	}
	t := s.get("type")
	if t == nil {
		if s.get("properties") != nil {
			return c.object(s, path, depth)
		}
		if !onlyAnnotations(s) {
			return "", unsupportedAt(path, "type", "keywords without a type")
		}
		return c.any(), nil
	}
	var types []string
	switch t.kind {
	case 's':
		types = []string{t.str}
	case 'a':
		for _, it := range t.items {
			if it.kind != 's' {
				return "", &InvalidError{Path: path + "/type", Reason: "type names are strings"}
			}
			types = append(types, it.str)
		}
	default:
		return "", &InvalidError{Path: path + "/type", Reason: "type is a string or an array of strings"}
	}
	alts := make([]string, 0, len(types))
	for _, typ := range types {
		x, err := c.typed(s, typ, path, depth)
		if err != nil {
			return "", err
		}
		alts = append(alts, x)
	}
	if len(alts) == 1 {
		return alts[0], nil
	}
	return "(" + strings.Join(alts, " | ") + ")", nil
}

func onlyAnnotations(s *node, except ...string) bool {
	for _, m := range s.members {
		if !annotations[m.key] && !slices.Contains(except, m.key) {
			return false
		}
	}
	return true
}

// keywordsFor are the assertions each type reads; others beside it are
// refused (minLength on a number means the schema says something the
// grammar would not check).
var keywordsFor = map[string][]string{
	"object":  {"properties", "required"},
	"array":   {"items", "minItems", "maxItems", "prefixItems"},
	"string":  {"minLength", "maxLength", "format"},
	"integer": {"minimum"},
	"number":  {"minimum"},
	"boolean": nil,
	"null":    nil,
}

func (c *converter) typed(s *node, typ, path string, depth int) (string, error) {
	own, ok := keywordsFor[typ]
	if !ok {
		return "", &InvalidError{Path: path + "/type", Reason: fmt.Sprintf("unknown type %q", typ)}
	}
	for _, m := range s.members {
		if annotations[m.key] || m.key == "type" {
			continue
		}
		if !slices.Contains(own, m.key) && !multiTyped(s, m.key) {
			return "", unsupportedAt(path+"/"+m.key, m.key, fmt.Sprintf("does not apply to type %s", typ))
		}
	}
	switch typ {
	case "object":
		return c.object(s, path, depth)
	case "array":
		return c.array(s, path, depth)
	case "string":
		return c.str(s, path)
	case "integer", "number":
		return c.number(s, typ, path)
	case "boolean":
		return `("true" | "false")`, nil
	}
	return `"null"`, nil
}

// multiTyped says whether keyword applies to one of s's several types
// (["string", "null"] with maxLength).
func multiTyped(s *node, keyword string) bool {
	t := s.get("type")
	if t == nil || t.kind != 'a' {
		return false
	}
	for _, it := range t.items {
		if slices.Contains(keywordsFor[it.str], keyword) {
			return true
		}
	}
	return false
}

func (c *converter) ref(ref *node, path string, depth int) (string, error) {
	if ref.kind != 's' {
		return "", &InvalidError{Path: path + "/$ref", Reason: "$ref is a string"}
	}
	if name, ok := c.refs[ref.str]; ok {
		return name, nil
	}
	var target *node
	for _, prefix := range []string{"#/$defs/", "#/definitions/"} {
		if key, ok := strings.CutPrefix(ref.str, prefix); ok && !strings.Contains(key, "/") {
			target = c.root.get(strings.TrimSuffix(prefix[2:], "/")).get(strings.NewReplacer("~1", "/", "~0", "~").Replace(key))
		}
	}
	if ref.str == "#" {
		target = c.root
	}
	if target == nil {
		return "", unsupportedAt(path+"/$ref", "$ref", fmt.Sprintf("%q: only #, #/$defs/NAME and #/definitions/NAME are resolved", ref.str))
	}
	name, err := c.rule("ref", "") // named first: the definition may refer to itself
	if err != nil {
		return "", err
	}
	c.refs[ref.str] = name
	expr, err := c.convert(target, ref.str[1:], depth+1)
	if err != nil {
		return "", err
	}
	c.b.rules[name] = expr
	return name, nil
}

func (c *converter) object(s *node, path string, depth int) (string, error) {
	props := s.get("properties")
	if props == nil {
		if s.get("required") != nil {
			return "", unsupportedAt(path+"/required", "required", "without properties")
		}
		return c.anyObject(), nil
	}
	if props.kind != 'o' {
		return "", &InvalidError{Path: path + "/properties", Reason: "properties is an object"}
	}
	required := map[string]bool{}
	if r := s.get("required"); r != nil {
		if r.kind != 'a' {
			return "", &InvalidError{Path: path + "/required", Reason: "required is an array"}
		}
		for _, it := range r.items {
			if it.kind != 's' || props.get(it.str) == nil {
				return "", unsupportedAt(path+"/required", "required", fmt.Sprintf("%s is not among the properties", it.raw()))
			}
			required[it.str] = true
		}
	}
	// kv[i] is member i written as "key":value.
	kv := make([]string, len(props.members))
	for i, m := range props.members {
		v, err := c.convert(m.val, path+"/properties/"+m.key, depth+1)
		if err != nil {
			return "", err
		}
		var key bytes.Buffer
		writeString(&key, m.key)
		kv[i] = literal(key.String()+":") + " " + v
	}
	// first(i): the members from i on, none written yet; after(i): the
	// same once one was (each then starts with a comma). Optional members
	// may be left out; the order is the schema's.
	n := len(kv)
	first, after := make([]string, n+1), make([]string, n+1)
	for i := n - 1; i >= 0; i-- {
		req := required[props.members[i].key]
		rest := after[i+1]
		withThis := strings.TrimSpace(kv[i] + " " + rest)
		if req {
			first[i] = withThis
			after[i] = strings.TrimSpace(`"," ` + withThis)
		} else {
			after[i] = strings.TrimSpace(`( "," ` + kv[i] + ` )? ` + rest)
			if first[i+1] == "" {
				first[i] = "( " + withThis + " )?"
			} else {
				first[i] = "( " + withThis + " | " + first[i+1] + " )"
			}
		}
		// name long tails: rules keep the grammar linear in the properties
		if len(after[i]) > 200 {
			name, err := c.rule("after", after[i])
			if err != nil {
				return "", err
			}
			after[i] = name
		}
		if len(first[i]) > 200 {
			name, err := c.rule("first", first[i])
			if err != nil {
				return "", err
			}
			first[i] = name
		}
	}
	return c.rule("object", strings.TrimSpace(`"{" `+first[0]+` "}"`))
}

func (c *converter) array(s *node, path string, depth int) (string, error) {
	if s.get("prefixItems") != nil {
		return "", unsupportedAt(path+"/prefixItems", "prefixItems", "tuples are not supported")
	}
	item := c.any()
	if it := s.get("items"); it != nil {
		var err error
		if item, err = c.convert(it, path+"/items", depth+1); err != nil {
			return "", err
		}
	}
	lo, hi, err := bounds(s, "minItems", "maxItems", path)
	if err != nil {
		return "", err
	}
	name, err := c.rule("item", item)
	if err != nil {
		return "", err
	}
	return c.rule("array", `"[" `+list(name, lo, hi)+` "]"`)
}

// list is lo to hi (-1: unbounded) comma-separated items.
func list(item string, lo, hi int) string {
	switch {
	case hi == 0:
		return ""
	case lo == 0 && hi < 0:
		return fmt.Sprintf(`( %s ( "," %s )* )?`, item, item)
	case lo == 0:
		return fmt.Sprintf(`( %s ( "," %s ){0,%d} )?`, item, item, hi-1)
	case hi < 0:
		return fmt.Sprintf(`%s ( "," %s ){%d,}`, item, item, lo-1)
	}
	return fmt.Sprintf(`%s ( "," %s ){%d,%d}`, item, item, lo-1, hi-1)
}

// bounds reads a pair of non-negative integer bounds (hi -1: none).
func bounds(s *node, min, max, path string) (lo, hi int, err error) {
	hi = -1
	read := func(key string) (int, bool, error) {
		v := s.get(key)
		if v == nil {
			return 0, false, nil
		}
		n, err := strconv.Atoi(v.num.String())
		if v.kind != 'n' || err != nil || n < 0 || n > 10000 {
			return 0, false, &InvalidError{Path: path + "/" + key, Reason: "a whole number from 0 to 10000"}
		}
		return n, true, nil
	}
	if lo, _, err = read(min); err != nil {
		return
	}
	if n, ok, err2 := read(max); err2 != nil {
		return 0, 0, err2
	} else if ok {
		hi = n
	}
	if hi >= 0 && lo > hi {
		return 0, 0, &InvalidError{Path: path + "/" + min, Reason: fmt.Sprintf("%s %d is above %s %d", min, lo, max, hi)}
	}
	return lo, hi, nil
}

// JSON's string characters: any but the quote, backslash and controls,
// or an escape. Surrogates and values past U+10FFFF are excluded too:
// llama.cpp's grammar decodes UTF-8 leniently and would accept the bytes
// of one, which are no character (the answer would hold U+FFFD for each
// byte and break maxLength).
const char = `( [^"\\\x00-\x1f\uD800-\uDFFF\U00110000-\U001FFFFF] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )`

// Formats as RFC 3339 writes them (JSON Schema's date, time, date-time),
// with February's days at most 28 and no leap second: stricter, never
// invalid.
const (
	dateExpr = `[0-9]{4} "-" ( ( "0" [13578] | "1" [02] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] ) | ( "0" [469] | "11" ) "-" ( "0" [1-9] | [12] [0-9] | "30" ) | "02" "-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] ) )`
	timeExpr = `( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,9} )? ( "Z" | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )`
	uuidExpr = `[0-9a-f]{8} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{4} "-" [0-9a-f]{12}`
)

func (c *converter) str(s *node, path string) (string, error) {
	if f := s.get("format"); f != nil {
		if s.get("minLength") != nil || s.get("maxLength") != nil {
			return "", unsupportedAt(path, "maxLength", "beside format")
		}
		var expr string
		switch f.str {
		case "date":
			expr = dateExpr
		case "time":
			expr = timeExpr
		case "date-time":
			expr = dateExpr + ` "T" ` + timeExpr
		case "uuid":
			expr = uuidExpr
		default:
			return "", unsupportedAt(path+"/format", "format", fmt.Sprintf("%q (date, time, date-time and uuid are)", f.str))
		}
		return c.rule("format", `"\"" `+expr+` "\""`)
	}
	lo, hi, err := bounds(s, "minLength", "maxLength", path)
	if err != nil {
		return "", err
	}
	reps := "*"
	switch {
	case hi >= 0:
		reps = fmt.Sprintf("{%d,%d}", lo, hi)
	case lo > 0:
		reps = fmt.Sprintf("{%d,}", lo)
	}
	return c.rule("string", `"\"" `+char+reps+` "\""`)
}

func (c *converter) number(s *node, typ, path string) (string, error) {
	sign := `"-"? `
	if m := s.get("minimum"); m != nil {
		f, err := strconv.ParseFloat(m.num.String(), 64)
		if m.kind != 'n' || err != nil || f != 0 {
			return "", unsupportedAt(path+"/minimum", "minimum", "only minimum 0 (no sign) is enforced")
		}
		sign = ""
	}
	integral := sign + `( "0" | [1-9] [0-9]{0,14} )`
	if typ == "integer" {
		return c.rule("integer", integral)
	}
	return c.rule("number", integral+` ( "." [0-9]{1,15} )? ( [eE] [-+]? [0-9]{1,3} )?`)
}

// any is a rule for any JSON value, as compact JSON.
func (c *converter) any() string {
	if _, ok := c.b.rules["value"]; !ok {
		c.b.rules["value"] = `object | array | string | number | "true" | "false" | "null"`
		c.b.rules["object"] = `"{" ( string ":" value ( "," string ":" value )* )? "}"`
		c.b.rules["array"] = `"[" ( value ( "," value )* )? "]"`
		c.b.rules["string"] = `"\"" ` + char + `* "\""`
		c.b.rules["number"] = `"-"? ( "0" | [1-9] [0-9]{0,14} ) ( "." [0-9]{1,15} )? ( [eE] [-+]? [0-9]{1,3} )?`
	}
	return "value"
}

func (c *converter) anyObject() string {
	c.any()
	return "object"
}

// literal is a GBNF string literal matching s exactly.
func literal(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20:
			fmt.Fprintf(&b, `\x%02X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
