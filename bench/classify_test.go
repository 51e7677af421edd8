package bench

import "testing"

// TestClassify: what a soak counts as intended, shed by design, or a
// failure.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		beh, outcome string
		want         int
	}{
		{behStandard, "200", outcomeIntended},
		{behDisconnect, "disconnected", outcomeIntended},
		{behRate, "429 rate_limit_exceeded", outcomeIntended},
		{behStandard, "429 rate_limit_exceeded", outcomeUnintended},
		{behStandard, "disconnected", outcomeUnintended},
		{behBatch, "503 queue_timeout", outcomeShed},
		{behStandard, "429 queue_full", outcomeShed},
		{behBatch, "400 context_length_exceeded", outcomeUnintended},
		{behAML, "503 audit_unavailable", outcomeUnintended},
		{behAML, "500", outcomeUnintended},
		{behStandard, "transport", outcomeUnintended},
		{behStandard, "stream-error", outcomeUnintended},
	} {
		if got := classify(c.beh, c.outcome); got != c.want {
			t.Errorf("classify(%s, %q) = %d, want %d", c.beh, c.outcome, got, c.want)
		}
	}
}
