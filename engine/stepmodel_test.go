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
