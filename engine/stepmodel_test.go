package engine

import (
	"testing"
	"time"
)

// TestStepModel: the step-time model recovers a step's fixed cost and its
// cost per token from measured steps, and so how many tokens fit a budget.
func TestStepModel(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	cases := []struct {
		name   string
		steps  [][2]float64 // tokens, milliseconds
		budget time.Duration
		want   int
		known  bool
	}{
		{"nothing measured", nil, ms(50), 0, false},
		{"fixed plus per token", [][2]float64{{4, 38}, {40, 110}, {100, 230}, {4, 38}, {64, 158}}, ms(50), 10, true},
		{"one size of step only", [][2]float64{{32, 64}, {32, 64}}, ms(50), 25, true},
		{"budget of the fixed cost alone", [][2]float64{{4, 38}, {40, 110}, {100, 230}}, ms(30), 0, true},
	}
	for _, tc := range cases {
		var m stepModel
		for _, s := range tc.steps {
			m.add(int(s[0]), ms(s[1]))
		}
		got, ok := m.tokensWithin(tc.budget)
		if ok != tc.known || got != tc.want {
			t.Errorf("%s: tokensWithin(%v) = %d, %v; want %d, %v", tc.name, tc.budget, got, ok, tc.want, tc.known)
		}
	}
}

// TestMinChunk: the smallest chunk of a capped tier follows the measured
// step costs: the floor on a CPU-like machine, where a prompt token costs
// a good part of a decode step, and base/per on a GPU-like one, where a
// step's fixed cost is that of many prompt tokens.
func TestMinChunk(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	for _, tc := range []struct {
		name   string
		base   float64 // ms
		per    float64 // ms per token
		ubatch int
		want   int
	}{
		{"nothing measured", 0, 0, 512, 16},
		// 2-core CPU, bench model: 8 ms a decode step, 2 ms a prompt token.
		{"CPU", 8, 2, 512, 16},
		// H200, 13B q8_0 (DESIGN.md): 7 ms a decode step, pp512 at 6108 t/s.
		{"GPU", 7, 1000.0 / 6108, 512, 42},
		{"GPU, fixed cost above the micro-batch", 50, 0.01, 512, 512},
	} {
		var m stepModel
		if tc.per > 0 {
			for _, n := range []int{1, 8, 64, 512, 2, 128} {
				m.add(n, ms(tc.base+tc.per*float64(n)))
			}
		}
		if got := m.minChunk(tc.ubatch); got != tc.want {
			t.Errorf("%s: minChunk = %d, want %d", tc.name, got, tc.want)
		}
	}
}
