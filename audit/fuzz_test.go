package audit

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzVerify: audit verify's reader, on any bytes and with or without a
// key, returns a summary or an error naming a line, never panics, and
// agrees with itself; a log it accepts holds exactly the records it
// counts.
func FuzzVerify(f *testing.F) {
	key := bytes.Repeat([]byte{7}, KeySize)
	dir := f.TempDir()
	for _, k := range [][]byte{nil, key} {
		path := filepath.Join(dir, "seed"+string(rune('a'+len(k)%26)))
		l, err := Open(path, Options{NoSync: true, Key: k})
		if err != nil {
			f.Fatal(err)
		}
		for i := range 3 {
			if _, err := l.Append(context.Background(), map[string]int{"decision": i}); err != nil {
				f.Fatal(err)
			}
		}
		l.Close()
		data, _ := os.ReadFile(path)
		f.Add(data, k != nil)
		f.Add(data[:len(data)-5], k != nil)
		f.Add(bytes.Replace(data, []byte(`"decision":1`), []byte(`"decision":9`), 1), k != nil)
	}
	f.Add([]byte("{}\n"), false)
	f.Add([]byte("not json\n\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, keyed bool) {
		var k []byte
		if keyed {
			k = key
		}
		sum, err := Verify(bytes.NewReader(data), k)
		sum2, err2 := Verify(bytes.NewReader(data), k)
		if sum != sum2 || (err == nil) != (err2 == nil) {
			t.Fatal("two verifications of the same bytes disagree")
		}
		if err != nil {
			if ve, ok := err.(*VerifyError); ok && ve.Line < 1 {
				t.Fatalf("error without a line: %v", err)
			}
			return
		}
		if n := bytes.Count(data, []byte("\n")); uint64(n) != sum.Records {
			t.Fatalf("accepted %d lines as %d records", n, sum.Records)
		}
		if sum.Bytes != int64(len(data)) {
			t.Fatalf("accepted %d bytes, counted %d", len(data), sum.Bytes)
		}
	})
}
