// Package chattemplate renders a model's own chat template, the Jinja
// text a GGUF carries as tokenizer.chat_template, as Hugging Face's
// apply_chat_template renders it: messages (with tool calls and tool
// results), tools, add_generation_prompt and the model's BOS and EOS
// strings, through a Go Jinja engine (github.com/ardanlabs/jinja). JSON
// objects keep their key order (tools' parameter schemas are written into
// prompts with tojson, as Python dicts keep theirs), and a template that
// fails, by raise_exception or a bug, is an error rather than a crash.
package chattemplate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ardanlabs/jinja"
)

// Message is one message of a conversation, in OpenAI's shape.
type Message struct {
	Role    string
	Content string
	// ToolCalls are an assistant message's calls.
	ToolCalls []ToolCall
	// ToolCallID and Name tie a tool message to the call it answers.
	ToolCallID, Name string
}

// ToolCall is a call of a function; Arguments is a JSON object.
type ToolCall struct {
	ID, Name  string
	Arguments json.RawMessage
}

// Tool is a function the model may call; Parameters is a JSON Schema.
type Tool struct {
	Name, Description string
	Parameters        json.RawMessage
}

// Input is what a template is rendered with.
type Input struct {
	Messages            []Message
	Tools               []Tool
	AddGenerationPrompt bool
	BOS, EOS            string // bos_token and eos_token
	// Now is what strftime_now formats (templates date their system
	// prompts); zero is time.Now.
	Now time.Time
}

// Template is a compiled chat template, safe for concurrent use.
type Template struct {
	src string
	t   *jinja.Template
}

// Compile parses src.
func Compile(src string) (t *Template, err error) {
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("compiling the chat template: %v", r)
		}
	}()
	jt, err := jinja.Compile(src)
	if err != nil {
		return nil, fmt.Errorf("compiling the chat template: %w", err)
	}
	return &Template{src: src, t: jt}, nil
}

// Source is the template's text.
func (t *Template) Source() string { return t.src }

// Render renders in.
func (t *Template) Render(in Input) (out string, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = "", fmt.Errorf("rendering the chat template: %v", r)
		}
	}()
	data, err := values(in)
	if err != nil {
		return "", err
	}
	out, err = t.t.RenderValues(data)
	if err != nil {
		return "", fmt.Errorf("rendering the chat template: %w", err)
	}
	return out, nil
}

// values is in as the template's variables.
func values(in Input) (map[string]jinja.Value, error) {
	msgs := make([]jinja.Value, len(in.Messages))
	for i, m := range in.Messages {
		d := jinja.NewDict()
		dict := d.AsDict()
		dict.Set("role", jinja.NewString(m.Role))
		dict.Set("content", jinja.NewString(m.Content))
		if len(m.ToolCalls) > 0 {
			if m.Content == "" {
				dict.Set("content", jinja.None()) // as OpenAI sends a call without text
			}
			calls := make([]jinja.Value, len(m.ToolCalls))
			for k, c := range m.ToolCalls {
				args, err := fromJSON(c.Arguments)
				if err != nil {
					return nil, fmt.Errorf("messages[%d].tool_calls[%d].function.arguments: %w", i, k, err)
				}
				fn := jinja.NewDict()
				fn.AsDict().Set("name", jinja.NewString(c.Name))
				fn.AsDict().Set("arguments", args)
				call := jinja.NewDict()
				call.AsDict().Set("id", jinja.NewString(c.ID))
				call.AsDict().Set("type", jinja.NewString("function"))
				call.AsDict().Set("function", fn)
				calls[k] = call
			}
			dict.Set("tool_calls", jinja.NewList(calls))
		}
		if m.ToolCallID != "" {
			dict.Set("tool_call_id", jinja.NewString(m.ToolCallID))
		}
		if m.Name != "" {
			dict.Set("name", jinja.NewString(m.Name))
		}
		msgs[i] = d
	}
	data := map[string]jinja.Value{
		"messages":              jinja.NewList(msgs),
		"add_generation_prompt": jinja.NewBool(in.AddGenerationPrompt),
		"bos_token":             jinja.NewString(in.BOS),
		"eos_token":             jinja.NewString(in.EOS),
	}
	if len(in.Tools) > 0 {
		tools := make([]jinja.Value, len(in.Tools))
		for i, tl := range in.Tools {
			params := jinja.NewDict()
			if len(bytes.TrimSpace(tl.Parameters)) > 0 {
				var err error
				if params, err = fromJSON(tl.Parameters); err != nil {
					return nil, fmt.Errorf("tools[%d].function.parameters: %w", i, err)
				}
			}
			fn := jinja.NewDict()
			fn.AsDict().Set("name", jinja.NewString(tl.Name))
			if tl.Description != "" {
				fn.AsDict().Set("description", jinja.NewString(tl.Description))
			}
			fn.AsDict().Set("parameters", params)
			tool := jinja.NewDict()
			tool.AsDict().Set("type", jinja.NewString("function"))
			tool.AsDict().Set("function", fn)
			tools[i] = tool
		}
		data["tools"] = jinja.NewList(tools)
	}
	now := in.Now
	if now.IsZero() {
		now = time.Now()
	}
	data["strftime_now"] = jinja.NewCallable("strftime_now", func(args []jinja.Value, _ map[string]jinja.Value) (jinja.Value, error) {
		if len(args) != 1 || !args[0].IsString() {
			return jinja.Undefined(), errors.New("strftime_now takes one format string")
		}
		return jinja.NewString(strftime(now, args[0].AsString())), nil
	})
	return data, nil
}

// fromJSON decodes a JSON text into template values, objects keeping
// their key order.
func fromJSON(raw json.RawMessage) (jinja.Value, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := decodeValue(dec, 0)
	if err != nil {
		return jinja.Undefined(), err
	}
	if _, err := dec.Token(); err != io.EOF {
		return jinja.Undefined(), errors.New("data after the JSON value")
	}
	return v, nil
}

// maxDepth bounds the nesting of a JSON value decoded for a template.
const maxDepth = 64

func decodeValue(dec *json.Decoder, depth int) (jinja.Value, error) {
	if depth > maxDepth {
		return jinja.Undefined(), fmt.Errorf("nested deeper than %d", maxDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return jinja.Undefined(), err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			d := jinja.NewDict()
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return jinja.Undefined(), err
				}
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return jinja.Undefined(), err
				}
				d.AsDict().Set(k.(string), v)
			}
			_, err := dec.Token() // }
			return d, err
		case '[':
			var items []jinja.Value
			for dec.More() {
				v, err := decodeValue(dec, depth+1)
				if err != nil {
					return jinja.Undefined(), err
				}
				items = append(items, v)
			}
			_, err := dec.Token() // ]
			return jinja.NewList(items), err
		}
	case string:
		return jinja.NewString(t), nil
	case json.Number:
		if i, err := t.Int64(); err == nil {
			return jinja.NewInt(i), nil
		}
		f, err := t.Float64()
		return jinja.NewFloat(f), err
	case bool:
		return jinja.NewBool(t), nil
	case nil:
		return jinja.None(), nil
	}
	return jinja.Undefined(), fmt.Errorf("unexpected JSON token %v", tok)
}

// strftime formats t with the C directives chat templates use (Llama
// 3.x: "%d %b %Y").
func strftime(t time.Time, format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i+1 == len(format) {
			b.WriteByte(c)
			continue
		}
		i++
		switch format[i] {
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'Y':
			fmt.Fprintf(&b, "%d", t.Year())
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'b':
			b.WriteString(t.Month().String()[:3])
		case 'B':
			b.WriteString(t.Month().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(format[i])
		}
	}
	return b.String()
}
