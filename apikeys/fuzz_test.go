package apikeys

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzParse: any key file is refused with an error or yields entries
// that each pass the checks, with unique names, that survive a round
// trip; matching an arbitrary presented key never panics.
func FuzzParse(f *testing.F) {
	good := `{"name":"a","sha256":"` + strings.Repeat("ab", 32) + `","tiers":["batch"],"rate":2,"concurrency":1,"created":"2026-12-01T00:00:00Z"}`
	rotated := `{"name":"b","sha256":"` + strings.Repeat("cd", 32) + `","tiers":["realtime","standard"],"previous":[{"sha256":"` + strings.Repeat("ef", 32) + `","hint":"fsk_x","expires":"2027-01-01T00:00:00Z"}]}`
	for _, s := range []string{`{"version":1,"keys":[` + good + `]}`, `{"version":1,"keys":[` + good + `,` + rotated + `]}`,
		`{"version":1,"keys":[]}`, `{"version":2}`, `{`, `null`, `{"version":1,"keys":[{"name":"","sha256":"zz"}]}`} {
		f.Add([]byte(s), "fsk_presented")
	}
	f.Fuzz(func(t *testing.T, data []byte, presented string) {
		s, err := Parse(data)
		if err != nil {
			if s != nil {
				t.Fatal("a set with an error")
			}
			return
		}
		names := map[string]bool{}
		for i := range s.Keys {
			e := &s.Keys[i]
			if err := e.check(); err != nil {
				t.Fatalf("accepted entry %q: %v", e.Name, err)
			}
			if names[e.Name] {
				t.Fatalf("accepted name %q twice", e.Name)
			}
			names[e.Name] = true
		}
		again, err := json.Marshal(File{Version: 1, Keys: s.Keys})
		if err != nil {
			t.Fatal(err)
		}
		if s2, err := Parse(again); err != nil || len(s2.Keys) != len(s.Keys) {
			t.Fatalf("round trip: %v", err)
		}
		s.Match(presented)
	})
}
