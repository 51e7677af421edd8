package engine_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/finserve/finserve/engine"
)

// TestRequestCheck: each limit of Request.Check accepts its bound and
// refuses one step past it, naming the parameter. The server answers
// with these same checks (server.TestRequestErrors).
func TestRequestCheck(t *testing.T) {
	stops := func(n, size int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = strings.Repeat("x", size)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		req   engine.Request
		field string // "" accepted
	}{
		{"defaults", engine.Request{}, ""},
		{"max_tokens 0 is the context", engine.Request{MaxTokens: 0}, ""},
		{"max_tokens -1", engine.Request{MaxTokens: -1}, "max_tokens"},
		{"temperature 2", engine.Request{Sampling: engine.Sampling{Temperature: engine.MaxTemperature}}, ""},
		{"temperature 2.01", engine.Request{Sampling: engine.Sampling{Temperature: 2.01}}, "temperature"},
		{"temperature -0.01", engine.Request{Sampling: engine.Sampling{Temperature: -0.01}}, "temperature"},
		{"top_k at its limit", engine.Request{Sampling: engine.Sampling{TopK: engine.MaxTopK}}, ""},
		{"top_k past it", engine.Request{Sampling: engine.Sampling{TopK: engine.MaxTopK + 1}}, "top_k"},
		{"top_p 1", engine.Request{Sampling: engine.Sampling{TopP: 1}}, ""},
		{"top_p 1.01", engine.Request{Sampling: engine.Sampling{TopP: 1.01}}, "top_p"},
		{"min_p -0.1", engine.Request{Sampling: engine.Sampling{MinP: -0.1}}, "min_p"},
		{"repeat_penalty 10", engine.Request{Sampling: engine.Sampling{RepeatPenalty: engine.MaxRepeatPenalty}}, ""},
		{"repeat_penalty 10.5", engine.Request{Sampling: engine.Sampling{RepeatPenalty: 10.5}}, "repeat_penalty"},
		{"frequency_penalty -2", engine.Request{Sampling: engine.Sampling{FrequencyPenalty: -2}}, ""},
		{"frequency_penalty 2.1", engine.Request{Sampling: engine.Sampling{FrequencyPenalty: 2.1}}, "frequency_penalty"},
		{"presence_penalty 2", engine.Request{Sampling: engine.Sampling{PresencePenalty: 2}}, ""},
		{"presence_penalty -2.1", engine.Request{Sampling: engine.Sampling{PresencePenalty: -2.1}}, "presence_penalty"},
		{"penalty_last_n at its limit", engine.Request{Sampling: engine.Sampling{PenaltyLastN: engine.MaxPenaltyLastN}}, ""},
		{"penalty_last_n past it", engine.Request{Sampling: engine.Sampling{PenaltyLastN: engine.MaxPenaltyLastN + 1}}, "penalty_last_n"},
		{"top_logprobs 20", engine.Request{TopLogprobs: engine.MaxTopLogprobs}, ""},
		{"top_logprobs 21", engine.Request{TopLogprobs: engine.MaxTopLogprobs + 1}, "top_logprobs"},
		{"top_logprobs -1", engine.Request{TopLogprobs: -1}, "top_logprobs"},
		{"16 stops of 256 bytes", engine.Request{Stop: stops(engine.MaxStops, engine.MaxStopBytes)}, ""},
		{"17 stops", engine.Request{Stop: stops(engine.MaxStops+1, 1)}, "stop"},
		{"a stop of 257 bytes", engine.Request{Stop: stops(1, engine.MaxStopBytes+1)}, "stop"},
		{"an empty stop", engine.Request{Stop: []string{"a", ""}}, "stop"},
		{"a stop that is not UTF-8", engine.Request{Stop: []string{"\xff"}}, "stop"},
		{"a grammar with ignore_eos", engine.Request{IgnoreEOS: true, Sampling: engine.Sampling{Grammar: `root ::= "a"`}}, "grammar"},
		{"batch tier", engine.Request{Tier: engine.TierBatch}, ""},
		{"an unknown tier", engine.Request{Tier: engine.TierBatch + 1}, "tier"},
	} {
		err := tc.req.Check()
		var ir *engine.InvalidRequestError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.field != "" && (!errors.As(err, &ir) || ir.Field != tc.field):
			t.Errorf("%s: %v, want an error on %s", tc.name, err, tc.field)
		}
	}
}
