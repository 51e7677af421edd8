package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/shared"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/finserve/finserve/engine"
)

// Schemas an AML or KYC extraction asks for, each with the features the
// grammar supports; strings are bounded so that a random model finishes.
var extractionSchemas = map[string]string{
	"kyc": `{"type":"object","additionalProperties":false,
		"properties":{"customer_id":{"type":"string","maxLength":10},"risk":{"enum":["low","medium","high"]},
		"pep":{"type":"boolean"},"born":{"type":"string","format":"date"},"accounts":{"type":"integer","minimum":0},
		"note":{"type":["string","null"],"maxLength":6}},
		"required":["customer_id","risk","pep","born"]}`,
	"transactions": `{"type":"object","properties":{"items":{"type":"array","maxItems":2,"items":{"$ref":"#/$defs/tx"}},
		"reported":{"type":"string","format":"date-time"}},"required":["items","reported"],
		"$defs":{"tx":{"type":"object","properties":{"amount":{"type":"number"},"currency":{"enum":["CNY","USD","HKD"]},
		"id":{"type":"string","format":"uuid"}},"required":["amount","currency","id"]}}}`,
	"chain":  `{"$defs":{"n":{"type":"object","properties":{"v":{"type":"integer"},"next":{"anyOf":[{"$ref":"#/$defs/n"},{"type":"null"}]}},"required":["v","next"]}},"$ref":"#/$defs/n"}`,
	"scalar": `{"anyOf":[{"type":"integer"},{"const":"none"}]}`,
}

// TestJSONSchemaResponses: through the OpenAI SDK, every answer to a
// response_format json_schema request is a JSON document that validates
// against the schema (formats asserted), whatever the seed; the answer
// ends because the grammar completed, not because of max_tokens.
func TestJSONSchemaResponses(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{Parallel: 4, Context: 1024})
	client := ts.client()
	for name, raw := range extractionSchemas {
		t.Run(name, func(t *testing.T) {
			t.Parallel() // one request per slot: the engine batches them
			doc, err := jsonschema.UnmarshalJSON(strings.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			c := jsonschema.NewCompiler()
			c.AssertFormat()
			if err := c.AddResource("schema.json", doc); err != nil {
				t.Fatal(err)
			}
			validator, err := c.Compile("schema.json")
			if err != nil {
				t.Fatal(err)
			}
			var schema any
			if err := json.Unmarshal([]byte(raw), &schema); err != nil {
				t.Fatal(err)
			}
			for seed := range 5 { // 4 schemas x 5 seeds: 20 seeded prompts
				params := chatParams(700, openai.UserMessage("Extract the record from: customer 88 is a low risk PEP born in 1970."))
				params.Temperature = openai.Float(1)
				params.Seed = openai.Int(int64(seed))
				params.ResponseFormat = openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
					JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: name, Schema: schema, Strict: openai.Bool(true)}}}
				out, err := client.Chat.Completions.New(context.Background(), params)
				if err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				text, finish := out.Choices[0].Message.Content, out.Choices[0].FinishReason
				if finish != "stop" {
					t.Fatalf("seed %d: finish_reason %s after %d tokens: %.300s", seed, finish, out.Usage.CompletionTokens, text)
				}
				value, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
				if err != nil {
					t.Fatalf("seed %d: not JSON: %v\n%s", seed, err, text)
				}
				if err := validator.Validate(value); err != nil {
					t.Fatalf("seed %d: %s\ndoes not validate: %v", seed, text, err)
				}
				if seed == 0 {
					t.Logf("%s", text)
				}
			}
		})
	}
}

// TestJSONSchemaRefusals: a schema the grammar cannot enforce is a 400
// naming the keyword and where it is, through the SDK as an API error.
func TestJSONSchemaRefusals(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{Parallel: 1, Context: 512})
	for keyword, schema := range map[string]string{
		"pattern": `{"type":"object","properties":{"iban":{"type":"string","pattern":"^[A-Z]{2}[0-9]{2}"}}}`,
		"oneOf":   `{"oneOf":[{"type":"string"},{"type":"integer"}]}`,
		"maximum": `{"type":"integer","maximum":100}`,
		"format":  `{"type":"string","format":"email"}`,
		"$ref":    `{"$ref":"https://schemas.bank.internal/kyc.json"}`,
	} {
		body := fmt.Sprintf(`{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":%s}}}`, schema)
		resp, text := ts.post(t, "/chat/completions", body)
		checkError(t, resp, text, 400, "response_format.json_schema.schema", "unsupported_parameter")
		if !strings.Contains(text, `\"`+keyword+`\"`) {
			t.Errorf("%s: the error does not name the keyword: %s", keyword, text)
		}
	}
	// ignore_eos would let the model write past a complete document.
	resp, text := ts.post(t, "/chat/completions", `{"messages":[{"role":"user","content":"x"}],"ignore_eos":true,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"boolean"}}}}`)
	checkError(t, resp, text, 400, "ignore_eos", "")
}

// TestLlamaServerConstraints: llama-server's ways of constraining an
// answer work as they do there, and are enforced, not ignored: a GBNF
// grammar (chat and completions), a top-level json_schema, and
// response_format json_object with a schema beside it; n_predict is
// max_tokens. Several seeds at temperature 1, so that the grammar, not
// the model, decides.
func TestLlamaServerConstraints(t *testing.T) {
	ts := startServer(t, Config{}, engine.Options{Parallel: 1, Context: 1024})
	schema := extractionSchemas["kyc"]
	validate := func(t *testing.T, text string) {
		t.Helper()
		doc, err := jsonschema.UnmarshalJSON(strings.NewReader(schema))
		if err != nil {
			t.Fatal(err)
		}
		c := jsonschema.NewCompiler()
		c.AssertFormat()
		if err := c.AddResource("schema.json", doc); err != nil {
			t.Fatal(err)
		}
		v, err := c.Compile("schema.json")
		if err != nil {
			t.Fatal(err)
		}
		answer, err := jsonschema.UnmarshalJSON(strings.NewReader(text))
		if err != nil {
			t.Fatalf("not JSON: %q: %v", text, err)
		}
		if err := v.Validate(answer); err != nil {
			t.Fatalf("%q does not validate: %v", text, err)
		}
	}
	msg := `"messages":[{"role":"user","content":"extract the customer"}],"temperature":1,"max_tokens":400`
	for seed := range 3 {
		s := fmt.Sprint(seed)
		// A grammar on completions: the answer is one of its two words.
		resp, body := ts.post(t, "/completions", `{"prompt":"approve?","grammar":"root ::= \"yes\" | \"no\"","temperature":1,"seed":`+s+`}`)
		var c struct {
			Choices []struct {
				Text         string `json:"text"`
				FinishReason string `json:"finish_reason"`
			} `json:"choices"`
		}
		if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &c) != nil || len(c.Choices) != 1 {
			t.Fatalf("grammar on completions: %d %s", resp.StatusCode, body)
		}
		if got := c.Choices[0]; (got.Text != "yes" && got.Text != "no") || got.FinishReason != "stop" {
			t.Errorf("seed %d: grammar answer %q (%s), want yes or no", seed, got.Text, got.FinishReason)
		}
		// A top-level json_schema and json_object with a schema, on chat.
		for name, constraint := range map[string]string{
			"json_schema":            `"json_schema":` + schema,
			"json_object and schema": `"response_format":{"type":"json_object","schema":` + schema + `}`,
		} {
			resp, body := ts.post(t, "/chat/completions", `{`+msg+`,"seed":`+s+`,`+constraint+`}`)
			var out struct {
				Choices []struct {
					Message      struct{ Content string } `json:"message"`
					FinishReason string                   `json:"finish_reason"`
				} `json:"choices"`
			}
			if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &out) != nil || len(out.Choices) != 1 {
				t.Fatalf("%s: %d %s", name, resp.StatusCode, body)
			}
			if out.Choices[0].FinishReason != "stop" {
				t.Errorf("%s seed %d: finished by %s, not by the grammar", name, seed, out.Choices[0].FinishReason)
			}
			validate(t, out.Choices[0].Message.Content)
		}
	}
	// n_predict is max_tokens, on both endpoints.
	for path, body := range map[string]string{
		"/completions":      `{"prompt":"x","n_predict":3,"ignore_eos":true}`,
		"/chat/completions": `{"messages":[{"role":"user","content":"x"}],"n_predict":3,"ignore_eos":true}`,
	} {
		resp, out := ts.post(t, path, body)
		var u struct {
			Usage struct {
				CompletionTokens int `json:"completion_tokens"`
			} `json:"usage"`
		}
		if resp.StatusCode != 200 || json.Unmarshal([]byte(out), &u) != nil || u.Usage.CompletionTokens != 3 {
			t.Errorf("%s with n_predict 3: %d %s", path, resp.StatusCode, out)
		}
	}
	ts.waitIdle(t)
}
