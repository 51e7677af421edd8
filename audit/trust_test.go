package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func keyedLog(t *testing.T, n int) (path string, key []byte) {
	t.Helper()
	dir := t.TempDir()
	key, err := CreateKeyFile(filepath.Join(dir, "audit.key"))
	if err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "audit.jsonl")
	l, err := Open(path, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if _, err := l.Append(context.Background(), rec{CaseID: "case", Score: float64(i)}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	return path, key
}

// recompute rewrites a log's lines with plain SHA-256 or another key,
// after edit: what someone with write access but without the key can do.
func recompute(t *testing.T, data []byte, key []byte, edit func(*entry)) []byte {
	t.Helper()
	var out bytes.Buffer
	prev := Genesis
	for _, line := range bytes.SplitAfter(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var e entry
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		e.Prev = prev
		if edit != nil {
			edit(&e)
		}
		l, h := encode(e, key)
		out.Write(l)
		prev = h
	}
	return out.Bytes()
}

// TestTamperingWithoutTheKey: every way of rewriting history found in
// the review is detected: tail truncation, emptying, a chain recomputed
// after an edit (with SHA-256, or with a key of the editor's own), and a
// checkpoint edited or deleted.
func TestTamperingWithoutTheKey(t *testing.T) {
	path, key := keyedLog(t, 20)
	if sum, err := VerifyFile(path, key); err != nil || sum.Records != 20 || !sum.Keyed || sum.Checkpoint != 20 {
		t.Fatalf("intact log: %+v, %v", sum, err)
	}
	data, _ := os.ReadFile(path)
	head, _ := os.ReadFile(HeadPath(path))
	lines := bytes.SplitAfter(data, []byte("\n"))
	otherKey := bytes.Repeat([]byte{7}, KeySize)
	edit := func(e *entry) {
		if e.Seq == 5 {
			e.Record = json.RawMessage(`{"case_id":"case","score":0.01}`)
		}
	}
	for _, tc := range []struct {
		name       string
		log, cp    []byte // nil cp: no checkpoint file
		verifyKey  []byte
		wantReason string
	}{
		{"last 3 records deleted", bytes.Join(lines[:17], nil), head, key, "cut from its end"},
		{"emptied", []byte{}, head, key, "cut from its end"},
		{"edited, chain recomputed with SHA-256", recompute(t, data, nil, edit), head, key, "not keyed"},
		{"edited, chain recomputed with another key", recompute(t, data, otherKey, edit), head, key, "MAC mismatch"},
		{"edited, recomputed, verified with the editor's key", recompute(t, data, otherKey, edit), head, otherKey, "checkpoint"},
		{"checkpoint deleted", data, nil, key, "checkpoint file"},
		{"checkpoint lowered with the log cut", bytes.Join(lines[:17], nil), bytes.Replace(head, []byte(`"seq":20`), []byte(`"seq":17`), 1), key, "checkpoint"},
		{"no key given", data, head, nil, "needs its key"},
		// A checkpoint that names the right record at another length.
		{"checkpoint length edited", data, rehead(t, head, key, func(c *checkpoint) { c.Bytes-- }), key, "rewritten"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "audit.jsonl")
			os.WriteFile(p, tc.log, 0o600)
			if tc.cp != nil {
				os.WriteFile(HeadPath(p), tc.cp, 0o600)
			}
			_, err := VerifyFile(p, tc.verifyKey)
			if err == nil || !strings.Contains(err.Error(), tc.wantReason) {
				t.Fatalf("verify: %v, want an error about %q", err, tc.wantReason)
			}
			var ve *VerifyError
			if tc.name == "last 3 records deleted" && (!errors.As(err, &ve) || ve.Line != 18 || ve.Seq != 18) {
				t.Errorf("the break is placed at %+v, want line and record 18", ve)
			}
			if _, err := Open(p, Options{Key: tc.verifyKey}); err == nil {
				t.Fatal("Open appends to a tampered log")
			}
		})
	}
	// The editor's SHA-256 rewrite verifies as an unkeyed log on its own:
	// which is why serve always writes keyed logs.
	if _, err := Verify(bytes.NewReader(recompute(t, data, nil, edit)), nil); err != nil {
		t.Fatalf("a recomputed SHA-256 chain: %v", err)
	}
}

// TestAcknowledgedRecordIsNeverDropped: a last line cut short after its
// record was acknowledged (the checkpoint names it) stops Open, which
// names the repair command; Repair keeps the cut bytes aside. A line cut
// before acknowledgement (the checkpoint does not name it: a crash or a
// full disk mid-write) is dropped with a warning, as before.
func TestAcknowledgedRecordIsNeverDropped(t *testing.T) {
	path, key := keyedLog(t, 10)
	data, _ := os.ReadFile(path)
	// Acknowledged: the last record's line loses its end.
	os.WriteFile(path, data[:len(data)-20], 0o600)
	_, err := Open(path, Options{Key: key})
	if err == nil || !strings.Contains(err.Error(), RepairCommand) || !strings.Contains(err.Error(), "acknowledged") {
		t.Fatalf("Open on a cut acknowledged record: %v, want a refusal naming %q", err, RepairCommand)
	}
	sum, aside, err := Repair(path, key)
	if err != nil || sum.Records != 9 {
		t.Fatalf("Repair: %+v %v", sum, err)
	}
	if kept, _ := os.ReadFile(aside); !bytes.Equal(kept, data[sum.Bytes:len(data)-20]) {
		t.Fatalf("the cut bytes kept aside differ")
	}
	if s, err := VerifyFile(path, key); err != nil || s.Records != 9 {
		t.Fatalf("after repair: %+v %v", s, err)
	}
	if _, _, err := Repair(path, key); err == nil || !strings.Contains(err.Error(), "nothing to repair") {
		t.Fatalf("Repair of a whole log: %v", err)
	}

	// Not acknowledged: bytes after the checkpointed head.
	path, key = keyedLog(t, 10)
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"seq":11,"prev":"`)
	f.Close()
	var logs bytes.Buffer
	l, err := Open(path, Options{Key: key, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("Open after an unacknowledged cut write: %v", err)
	}
	r, err := l.Append(context.Background(), rec{CaseID: "next"})
	l.Close()
	if err != nil || r.Seq != 11 || !strings.Contains(logs.String(), "dropping an incomplete last record") {
		t.Fatalf("append: %+v %v; log %s", r, err, logs.String())
	}
	if !strings.Contains(logs.String(), "audit head") {
		t.Errorf("the head was not logged: %s", logs.String())
	}
}

// TestExclusiveLock: a second writer on the same log is refused while
// the first holds it, and may open it once the first closed it.
func TestExclusiveLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	key := bytes.Repeat([]byte{1}, KeySize)
	a, err := Open(path, Options{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{Key: key}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	if _, _, err := Repair(path, key); !errors.Is(err, ErrLocked) {
		t.Fatalf("Repair while open: %v, want ErrLocked", err)
	}
	a.Append(context.Background(), rec{CaseID: "a"})
	a.Close()
	b, err := Open(path, Options{Key: key})
	if err != nil {
		t.Fatalf("Open after the first closed: %v", err)
	}
	r, _ := b.Append(context.Background(), rec{CaseID: "b"})
	b.Close()
	if r.Seq != 2 {
		t.Fatalf("second writer's record %d, want 2", r.Seq)
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "k")
	key, err := CreateKeyFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if got, err := ReadKeyFile(p); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("ReadKeyFile: %v", err)
	}
	if _, err := CreateKeyFile(p); err == nil {
		t.Fatal("CreateKeyFile replaced a key")
	}
	for _, bad := range []string{"", "zz", strings.Repeat("ab", 16)} {
		os.WriteFile(p, []byte(bad), 0o600)
		if _, err := ReadKeyFile(p); err == nil {
			t.Errorf("ReadKeyFile(%q) accepted", bad)
		}
	}
	if _, err := Open(filepath.Join(dir, "a.jsonl"), Options{Key: []byte("short")}); err == nil {
		t.Error("Open with a short key")
	}
}

// rehead rewrites a checkpoint with edit applied, MACed with key.
func rehead(t *testing.T, data, key []byte, edit func(*checkpoint)) []byte {
	t.Helper()
	var c checkpoint
	if err := json.Unmarshal(data, &c); err != nil {
		t.Fatal(err)
	}
	edit(&c)
	c.MAC = c.mac(key)
	out, _ := json.Marshal(c)
	return out
}

// TestHeadAnchors: the head of the chain reaches the server's log at
// open, at every AnchorEvery-th record and at close; a log without a
// checkpoint reports none (-1).
func TestHeadAnchors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var logs bytes.Buffer
	l, err := Open(path, Options{NoSync: true, Key: bytes.Repeat([]byte{3}, KeySize), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var at1000 Receipt
	for i := range AnchorEvery + 1 {
		r, err := l.Append(context.Background(), rec{Score: float64(i)})
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq == AnchorEvery {
			at1000 = r
		}
	}
	l.Close()
	out := logs.String()
	for _, want := range []string{"seq=0 head=" + Genesis, fmt.Sprintf("seq=%d head=%s", AnchorEvery, at1000.Hash), fmt.Sprintf("seq=%d", AnchorEvery+1)} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks the anchor %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "audit head") != 3 {
		t.Errorf("%d head lines, want 3 (open, record %d, close):\n%s", strings.Count(out, "audit head"), AnchorEvery, out)
	}
	os.Remove(HeadPath(path))
	if sum, err := VerifyFile(path, nil); err == nil || sum.Checkpoint != -1 {
		t.Errorf("keyed log without its checkpoint: %+v %v", sum, err)
	}
}

// TestRecoversAfterFailedWrite: a write that fails (here its checkpoint,
// blocked by a directory where the temporary file goes) refuses that
// record and the next ones while the cause lasts, reports itself in Err,
// and recovers without a restart once the cause is gone, by a retry or by
// the next record: the unacknowledged bytes are dropped, so the chain
// goes on from the last acknowledged record and verifies.
func TestRecoversAfterFailedWrite(t *testing.T) {
	for _, byRetry := range []bool{true, false} {
		t.Run(fmt.Sprintf("by retry %v", byRetry), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			key := bytes.Repeat([]byte{3}, KeySize)
			every := time.Hour // the next record recovers it
			if byRetry {
				every = 5 * time.Millisecond
			}
			l, err := Open(path, Options{Key: key, RetryEvery: every})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			ctx := context.Background()
			if r, err := l.Append(ctx, "one"); err != nil || r.Seq != 1 || l.Err() != nil {
				t.Fatalf("first record: %+v %v %v", r, err, l.Err())
			}
			block := HeadPath(path) + ".tmp"
			os.Mkdir(block, 0o700)
			os.WriteFile(filepath.Join(block, "x"), nil, 0o600)
			for range 2 {
				if _, err := l.Append(ctx, "refused"); err == nil {
					t.Fatal("a record was acknowledged while its checkpoint could not be written")
				}
			}
			if l.Err() == nil {
				t.Fatal("Err is nil after a failed write")
			}
			// Each record tries to recover first: while the cause lasts, it
			// fails and the log stays failed.
			if _, err := l.Append(ctx, "still refused"); err == nil || l.Err() == nil {
				t.Fatalf("recovered while the cause lasts: %v %v", err, l.Err())
			}
			os.RemoveAll(block)
			if byRetry {
				deadline := time.Now().Add(10 * time.Second)
				for l.Err() != nil {
					if time.Now().After(deadline) {
						t.Fatal("no recovery by retry")
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			r, err := l.Append(ctx, "two")
			if err != nil || r.Seq != 2 || l.Err() != nil {
				t.Fatalf("after recovery: %+v %v %v", r, err, l.Err())
			}
			l.Close()
			sum, err := VerifyFile(path, key)
			if err != nil || sum.Records != 2 || sum.Checkpoint != 2 {
				t.Errorf("the log after recovery: %+v %v", sum, err)
			}
		})
	}
}
