// Package audit keeps a tamper-evident decision log: JSON lines, each
// holding its sequence number, the previous line's hash and a record, and
// ending with its own SHA-256 over all of that. Editing a byte, dropping
// or reordering lines breaks the chain, and Verify says where.
//
// One goroutine owns the file. Appends are grouped: every record waiting
// when the writer is free goes out in one write and one fsync, so a
// decision is on disk before Append returns without an fsync per record.
package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// Genesis is the previous hash of the first record.
var Genesis = strings.Repeat("0", 64)

// hashSuffix is how every line ends: `,"hash":"<64 hex>"}`.
const hashSuffixLen = len(`,"hash":""}`) + 64

// Options configure a Log.
type Options struct {
	// NoSync skips fsync: records reach the OS before Append returns but
	// a power loss may lose the last ones. The default syncs.
	NoSync bool
	Logger *slog.Logger
}

// Receipt identifies an appended record.
type Receipt struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// Log is an open audit log.
type Log struct {
	path  string
	opts  Options
	reqs  chan *appendReq
	done  chan struct{}
	close sync.Once
	mu    sync.Mutex // guards closed
	shut  bool
}

type appendReq struct {
	record json.RawMessage
	at     time.Time
	reply  chan appendResult
}

type appendResult struct {
	r   Receipt
	err error
}

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("audit log closed")

// Open opens (or creates) the log at path, checks its whole chain, and
// drops an incomplete last line: a record whose write a crash cut short
// was never acknowledged. A broken chain is an error: the log must be
// investigated, not appended to.
func Open(path string, opts Options) (*Log, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	sum, err := Verify(f)
	var ve *VerifyError
	switch {
	case errors.As(err, &ve) && ve.Incomplete:
		opts.Logger.Warn("audit log: dropping an incomplete last record (a crash cut its write short; it was never acknowledged)",
			"path", path, "line", ve.Line, "bytes", sum.Bytes)
		if err := f.Truncate(sum.Bytes); err != nil {
			f.Close()
			return nil, fmt.Errorf("truncating the audit log's incomplete last record: %w", err)
		}
	case err != nil:
		f.Close()
		return nil, fmt.Errorf("audit log %s fails verification, refusing to append: %w", path, err)
	}
	if _, err := f.Seek(sum.Bytes, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("seeking the audit log's end: %w", err)
	}
	l := &Log{path: path, opts: opts, reqs: make(chan *appendReq, 256), done: make(chan struct{})}
	go l.run(f, sum.Records, sum.LastHash)
	return l, nil
}

// Append writes record (any JSON-encodable value) as the next entry and
// returns once it is written (and synced, unless NoSync). It honours ctx
// only while waiting for the writer: once handed over, a record is
// written.
func (l *Log) Append(ctx context.Context, record any) (Receipt, error) {
	data, err := json.Marshal(record)
	if err != nil {
		return Receipt{}, fmt.Errorf("encoding audit record: %w", err)
	}
	req := &appendReq{record: data, at: time.Now().UTC(), reply: make(chan appendResult, 1)}
	l.mu.Lock()
	if l.shut {
		l.mu.Unlock()
		return Receipt{}, ErrClosed
	}
	select {
	case l.reqs <- req:
	case <-ctx.Done():
		l.mu.Unlock()
		return Receipt{}, ctx.Err()
	}
	l.mu.Unlock()
	res := <-req.reply
	return res.r, res.err
}

// Close writes what was handed over and closes the file.
func (l *Log) Close() error {
	l.close.Do(func() {
		l.mu.Lock()
		l.shut = true
		close(l.reqs)
		l.mu.Unlock()
	})
	<-l.done
	return nil
}

// entry is the hashed part of a line.
type entry struct {
	Seq    uint64          `json:"seq"`
	Prev   string          `json:"prev"`
	Time   time.Time       `json:"time"`
	Record json.RawMessage `json:"record"`
}

func (l *Log) run(f *os.File, seq uint64, prev string) {
	defer close(l.done)
	defer f.Close()
	var failed error // after a failed write the chain's tail is unknown: refuse more
	var buf bytes.Buffer
	for req := range l.reqs {
		batch := []*appendReq{req}
		for more := true; more; {
			select {
			case r, ok := <-l.reqs:
				if !ok {
					more = false
					break
				}
				batch = append(batch, r)
			default:
				more = false
			}
		}
		if failed != nil {
			for _, r := range batch {
				r.reply <- appendResult{err: failed}
			}
			continue
		}
		buf.Reset()
		receipts := make([]Receipt, len(batch))
		s, p := seq, prev
		for i, r := range batch {
			s++
			line, h := encode(entry{Seq: s, Prev: p, Time: r.at, Record: r.record})
			buf.Write(line)
			receipts[i], p = Receipt{Seq: s, Hash: h}, h
		}
		_, err := f.Write(buf.Bytes())
		if err == nil && !l.opts.NoSync {
			err = f.Sync()
		}
		if err != nil {
			failed = fmt.Errorf("writing the audit log: %w", err)
			l.opts.Logger.Error("audit log write failed; decisions are refused until restart", "path", l.path, "err", err)
			for _, r := range batch {
				r.reply <- appendResult{err: failed}
			}
			continue
		}
		seq, prev = s, p
		for i, r := range batch {
			r.reply <- appendResult{r: receipts[i]}
		}
	}
}

// encode returns the line of e (newline included) and its hash.
func encode(e entry) ([]byte, string) {
	body, err := json.Marshal(e)
	if err != nil {
		panic("audit: encoding an entry of valid JSON: " + err.Error())
	}
	sum := sha256.Sum256(body)
	h := hex.EncodeToString(sum[:])
	line := make([]byte, 0, len(body)+hashSuffixLen+1)
	line = append(line, body[:len(body)-1]...)
	line = append(line, `,"hash":"`...)
	line = append(line, h...)
	line = append(line, "\"}\n"...)
	return line, h
}

// Summary describes a verified log.
type Summary struct {
	Records  uint64
	LastHash string
	Bytes    int64 // length of the verified part
}

// VerifyError locates the first break in a log's chain.
type VerifyError struct {
	Line       int // 1-based
	Seq        uint64
	Reason     string
	Incomplete bool // the last line has no newline: a write cut short
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("line %d (record %d): %s", e.Line, e.Seq, e.Reason)
}

// Verify reads a log from r and checks every line's hash, sequence number
// and link to the previous line. It returns the first break as a
// *VerifyError, with the Summary of what came before it.
func Verify(r io.Reader) (Summary, error) {
	sum := Summary{LastHash: Genesis}
	br := bufio.NewReaderSize(r, 1<<20)
	for line := 1; ; line++ {
		raw, err := br.ReadBytes('\n')
		if err == io.EOF && len(raw) == 0 {
			return sum, nil
		}
		if err != nil && err != io.EOF {
			return sum, fmt.Errorf("reading the audit log: %w", err)
		}
		want := sum.Records + 1
		bad := func(format string, args ...any) (Summary, error) {
			return sum, &VerifyError{Line: line, Seq: want, Reason: fmt.Sprintf(format, args...)}
		}
		if err == io.EOF {
			return sum, &VerifyError{Line: line, Seq: want, Reason: "incomplete last record (no newline): its write was cut short", Incomplete: true}
		}
		text := raw[:len(raw)-1]
		if len(text) < hashSuffixLen+2 || !bytes.HasPrefix(text[len(text)-hashSuffixLen:], []byte(`,"hash":"`)) {
			return bad("not an audit record (no trailing hash)")
		}
		body := append(bytes.Clone(text[:len(text)-hashSuffixLen]), '}')
		got := string(text[len(text)-hashSuffixLen+len(`,"hash":"`) : len(text)-2])
		h := sha256.Sum256(body)
		if hex.EncodeToString(h[:]) != got {
			return bad("hash mismatch: the record was edited")
		}
		var e entry
		if err := json.Unmarshal(body, &e); err != nil {
			return bad("malformed record: %v", err)
		}
		switch {
		case e.Seq != want:
			return bad("sequence number %d, want %d: a record was dropped, inserted or moved", e.Seq, want)
		case e.Prev != sum.LastHash:
			return bad("previous hash does not match line %d: a record was dropped, inserted or moved", line-1)
		}
		sum.Records, sum.LastHash = e.Seq, got
		sum.Bytes += int64(len(raw))
	}
}

// VerifyFile verifies the log at path.
func VerifyFile(path string) (Summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return Summary{}, fmt.Errorf("opening audit log: %w", err)
	}
	defer f.Close()
	return Verify(f)
}
