// Package audit keeps a tamper-evident decision log: JSON lines, each
// holding its sequence number, the previous line's MAC and a record, and
// ending with its own HMAC-SHA256 under a key the writer holds. Editing a
// byte, dropping or reordering lines breaks the chain, and Verify says
// where; without the key, nobody can recompute a chain that verifies.
// The head of the chain is also anchored outside the file: a checkpoint
// file (PATH.head, itself MACed) rewritten after every write, and a log
// line of the head every AnchorEvery records, so that a log cut short or
// emptied is detected too. (A log opened without a key uses plain SHA-256
// lines, as version 1 did: that detects accidents, not an editor.)
//
// One goroutine owns the file, opened with O_APPEND under an exclusive
// lock (a second process on the same log is refused). Appends are
// grouped: every record waiting when the writer is free goes out in one
// write and one fsync, so a decision is on disk before Append returns
// without an fsync per record. A record is acknowledged only after its
// write, its sync and the checkpoint that names it.
package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Genesis is the previous hash of the first record.
var Genesis = strings.Repeat("0", 64)

// A line ends with `,"mac":"<64 hex>"}` (keyed) or `,"hash":"<64 hex>"}`.
const (
	macSuffixLen  = len(`,"mac":""}`) + 64
	hashSuffixLen = len(`,"hash":""}`) + 64
)

// AnchorEvery is how often (in records) the writer logs the chain's head,
// so that the head also lives in the server's log stream, outside the
// file and its checkpoint.
const AnchorEvery = 1000

// KeySize is the size of an audit key in bytes.
const KeySize = 32

// RepairCommand is what an operator runs on a log whose last line was cut
// short after it was acknowledged, once the cause is understood.
const RepairCommand = "finserve audit repair"

// Options configure a Log.
type Options struct {
	// NoSync skips fsync: records reach the OS before Append returns but
	// a power loss may lose the last ones. The default syncs.
	NoSync bool
	// Key is the HMAC key of the chain (KeySize bytes; see ReadKeyFile).
	// nil writes plain SHA-256 lines, which an editor can recompute.
	Key    []byte
	Logger *slog.Logger
	// RetryEvery is how often a log whose write failed (a full disk, an
	// I/O error) tries to recover while no record arrives (default 2s);
	// each Append tries too.
	RetryEvery time.Duration
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
	// failure is the error of the last failed write while the log has
	// not recovered from it; nil when healthy.
	failure atomic.Pointer[error]
}

// Err reports the log's health: nil while it accepts records, else the
// write error that stopped it (Append then fails until it recovers).
func (l *Log) Err() error {
	if p := l.failure.Load(); p != nil {
		return *p
	}
	return nil
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

// ErrLocked says another process has the log open for writing.
var ErrLocked = errors.New("audit log is locked by another process")

// Open opens (or creates) the log at path under an exclusive lock,
// checks its whole chain against the checkpoint, and drops an incomplete
// last line only when the checkpoint proves it was never acknowledged (a
// crash or a full disk cut its write short before the reply). A broken
// chain, a log shorter than its checkpoint, or a cut record that was
// acknowledged is an error: the log must be investigated, not appended to.
func Open(path string, opts Options) (*Log, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RetryEvery <= 0 {
		opts.RetryEvery = 2 * time.Second
	}
	if opts.Key != nil && len(opts.Key) != KeySize {
		return nil, fmt.Errorf("audit key: %d bytes, want %d", len(opts.Key), KeySize)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("opening audit log: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s (another finserve serving with the same --audit-log? each process needs its own log)", ErrLocked, path)
		}
		return nil, fmt.Errorf("locking audit log %s: %w", path, err)
	}
	sum, err := verifyFile(f, path, opts.Key)
	var ve *VerifyError
	switch {
	case errors.As(err, &ve) && ve.Incomplete && !ve.Acknowledged:
		opts.Logger.Warn("audit log: dropping an incomplete last record (its write was cut short before it was acknowledged)",
			"path", path, "line", ve.Line, "seq", ve.Seq, "bytes", sum.Bytes)
		if err := f.Truncate(sum.Bytes); err != nil {
			f.Close()
			return nil, fmt.Errorf("truncating the audit log's incomplete last record: %w", err)
		}
	case errors.As(err, &ve) && ve.Incomplete:
		f.Close()
		return nil, fmt.Errorf("audit log %s: %w; an acknowledged decision is damaged: investigate, then `%s %s` keeps the cut bytes aside and truncates them",
			path, err, RepairCommand, path)
	case err != nil:
		f.Close()
		return nil, fmt.Errorf("audit log %s fails verification, refusing to append: %w", path, err)
	}
	l := &Log{path: path, opts: opts, reqs: make(chan *appendReq, 256), done: make(chan struct{})}
	if err := l.writeHead(sum.Records, sum.LastHash, sum.Bytes); err != nil {
		f.Close()
		return nil, err
	}
	opts.Logger.Info("audit head", "path", path, "seq", sum.Records, "head", sum.LastHash, "keyed", opts.Key != nil)
	go l.run(f, sum.Records, sum.LastHash, sum.Bytes)
	return l, nil
}

// ReadKeyFile reads an audit key: KeySize bytes as hex, on one line.
func ReadKeyFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading audit key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil || len(key) != KeySize {
		return nil, fmt.Errorf("audit key %s: want %d bytes as %d hex digits", path, KeySize, 2*KeySize)
	}
	return key, nil
}

// CreateKeyFile writes a new random key to path (mode 0600), refusing to
// replace one: a lost key makes the log unverifiable.
func CreateKeyFile(path string) ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("making audit key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("writing audit key: %w", err)
	}
	if _, err := f.WriteString(hex.EncodeToString(key) + "\n"); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing audit key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing audit key: %w", err)
	}
	return key, f.Close()
}

// HeadPath is the checkpoint file of the log at path.
func HeadPath(path string) string { return path + ".head" }

// checkpoint is the head of the chain as last acknowledged.
type checkpoint struct {
	Seq   uint64    `json:"seq"`
	Head  string    `json:"head"`
	Bytes int64     `json:"bytes"`
	Time  time.Time `json:"time"`
	MAC   string    `json:"mac,omitempty"`
}

func (c checkpoint) mac(key []byte) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "finserve-audit-head\n%d\n%s\n%d", c.Seq, c.Head, c.Bytes)
	return hex.EncodeToString(m.Sum(nil))
}

// writeHead replaces the checkpoint atomically (temporary file, fsync,
// rename), so that it never names a record that is not on disk.
func (l *Log) writeHead(seq uint64, head string, size int64) error {
	return writeHead(l.path, l.opts, seq, head, size)
}

func writeHead(path string, opts Options, seq uint64, head string, size int64) error {
	c := checkpoint{Seq: seq, Head: head, Bytes: size, Time: time.Now().UTC()}
	if opts.Key != nil {
		c.MAC = c.mac(opts.Key)
	}
	data, _ := json.Marshal(c)
	p := HeadPath(path)
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err == nil {
		_, err = f.Write(append(data, '\n'))
		if err == nil && !opts.NoSync {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err == nil && !opts.NoSync {
		if d, derr := os.Open(filepath.Dir(p)); derr == nil {
			err = d.Sync()
			d.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("writing the audit checkpoint %s: %w", p, err)
	}
	return nil
}

// readHead reads the checkpoint of the log at path; ok is false when
// there is none.
func readHead(path string, key []byte) (c checkpoint, ok bool, err error) {
	data, err := os.ReadFile(HeadPath(path))
	if errors.Is(err, os.ErrNotExist) {
		return c, false, nil
	}
	if err != nil {
		return c, false, fmt.Errorf("reading the audit checkpoint: %w", err)
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, false, fmt.Errorf("audit checkpoint %s is not valid: %w", HeadPath(path), err)
	}
	if key != nil && !hmac.Equal([]byte(c.MAC), []byte(c.mac(key))) {
		return c, false, fmt.Errorf("audit checkpoint %s: its MAC does not match the key: edited, or another key", HeadPath(path))
	}
	return c, true, nil
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

func (l *Log) run(f *os.File, seq uint64, prev string, size int64) {
	defer close(l.done)
	defer f.Close()
	// After a failed write the file may hold a partial batch past size,
	// never acknowledged: recovery truncates it and rewrites the
	// checkpoint, and only then are records accepted again.
	var failed error
	tryRecover := func() {
		err := f.Truncate(size)
		if err == nil && !l.opts.NoSync {
			err = f.Sync()
		}
		if err == nil {
			err = l.writeHead(seq, prev, size)
		}
		if err != nil {
			return
		}
		l.opts.Logger.Warn("audit log recovered; accepting records again", "path", l.path, "seq", seq, "after", failed)
		failed = nil
		l.failure.Store(nil)
	}
	var buf bytes.Buffer
	for {
		var retry <-chan time.Time
		if failed != nil {
			retry = time.After(l.opts.RetryEvery)
		}
		var req *appendReq
		select {
		case r, ok := <-l.reqs:
			if !ok {
				l.opts.Logger.Info("audit head", "path", l.path, "seq", seq, "head", prev, "closed", true)
				return
			}
			req = r
		case <-retry:
			tryRecover()
			continue
		}
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
			tryRecover()
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
			line, h := encode(entry{Seq: s, Prev: p, Time: r.at, Record: r.record}, l.opts.Key)
			buf.Write(line)
			receipts[i], p = Receipt{Seq: s, Hash: h}, h
		}
		_, err := f.Write(buf.Bytes())
		if err == nil && !l.opts.NoSync {
			err = f.Sync()
		}
		if err == nil {
			err = l.writeHead(s, p, size+int64(buf.Len()))
		}
		if err != nil {
			failed = fmt.Errorf("writing the audit log: %w", err)
			stored := failed
			l.failure.Store(&stored)
			l.opts.Logger.Error("audit log write failed; decisions are refused until a retry succeeds", "path", l.path, "err", err, "retry_every", l.opts.RetryEvery)
			for _, r := range batch {
				r.reply <- appendResult{err: failed}
			}
			continue
		}
		if seq/AnchorEvery != s/AnchorEvery {
			l.opts.Logger.Info("audit head", "path", l.path, "seq", s, "head", p)
		}
		seq, prev, size = s, p, size+int64(buf.Len())
		for i, r := range batch {
			r.reply <- appendResult{r: receipts[i]}
		}
	}
}

// lineMAC is the MAC (keyed) or hash of a line's body.
func lineMAC(body, key []byte) string {
	var h hash.Hash
	if key != nil {
		h = hmac.New(sha256.New, key)
	} else {
		h = sha256.New()
	}
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))
}

// encode returns the line of e (newline included) and its MAC (or hash).
func encode(e entry, key []byte) ([]byte, string) {
	body, err := json.Marshal(e)
	if err != nil {
		panic("audit: encoding an entry of valid JSON: " + err.Error())
	}
	h := lineMAC(body, key)
	field := `,"hash":"`
	if key != nil {
		field = `,"mac":"`
	}
	line := make([]byte, 0, len(body)+hashSuffixLen+1)
	line = append(line, body[:len(body)-1]...)
	line = append(line, field...)
	line = append(line, h...)
	line = append(line, "\"}\n"...)
	return line, h
}

// Summary describes a verified log.
type Summary struct {
	Records  uint64
	LastHash string // the last line's MAC (keyed) or hash
	Bytes    int64  // length of the verified part
	Keyed    bool   // the lines carry MACs
	// Checkpoint is the record count the checkpoint file names (-1: no
	// checkpoint file).
	Checkpoint int64
}

// VerifyError locates the first break in a log's chain.
type VerifyError struct {
	Line       int // 1-based
	Seq        uint64
	Reason     string
	Incomplete bool // the last line has no newline: a write cut short
	// Acknowledged: the checkpoint names the incomplete record (or one
	// after it), so it was acknowledged; or there is no checkpoint to
	// tell (a log of version 1), which counts as acknowledged.
	Acknowledged bool
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("line %d (record %d): %s", e.Line, e.Seq, e.Reason)
}

// Verify reads a log from r and checks every line's MAC (with key) or
// hash (without), its sequence number and its link to the previous line.
// It returns the first break as a *VerifyError, with the Summary of what
// came before it. A keyed log needs its key: without it, or with another,
// the first line fails. VerifyFile also checks the checkpoint.
func Verify(r io.Reader, key []byte) (Summary, error) {
	sum, _, err := verify(r, key, 0)
	return sum, err
}

// verify is Verify that also returns the MAC of record at and the log's
// length up to its end, as "MAC@BYTES" (at 0: none).
func verify(r io.Reader, key []byte, at uint64) (Summary, string, error) {
	sum := Summary{LastHash: Genesis, Checkpoint: -1}
	var atMAC string
	br := bufio.NewReaderSize(r, 1<<20)
	for line := 1; ; line++ {
		raw, err := br.ReadBytes('\n')
		if err == io.EOF && len(raw) == 0 {
			return sum, atMAC, nil
		}
		if err != nil && err != io.EOF {
			return sum, atMAC, fmt.Errorf("reading the audit log: %w", err)
		}
		want := sum.Records + 1
		bad := func(format string, args ...any) (Summary, string, error) {
			return sum, atMAC, &VerifyError{Line: line, Seq: want, Reason: fmt.Sprintf(format, args...)}
		}
		if err == io.EOF {
			return sum, atMAC, &VerifyError{Line: line, Seq: want, Reason: "incomplete last record (no newline): its write was cut short", Incomplete: true}
		}
		text := raw[:len(raw)-1]
		keyed := len(text) >= macSuffixLen+2 && bytes.HasPrefix(text[len(text)-macSuffixLen:], []byte(`,"mac":"`))
		suffix := hashSuffixLen
		switch {
		case keyed:
			suffix = macSuffixLen
		case len(text) < hashSuffixLen+2 || !bytes.HasPrefix(text[len(text)-hashSuffixLen:], []byte(`,"hash":"`)):
			return bad("not an audit record (no trailing MAC or hash)")
		}
		switch {
		case line == 1:
			sum.Keyed = keyed
		case keyed != sum.Keyed:
			return bad("a keyed log holds an unkeyed line, or the reverse: lines were inserted")
		}
		if keyed && key == nil {
			return bad("the log is keyed (HMAC): verifying it needs its key (--key-file)")
		}
		if !keyed && key != nil {
			return bad("the log is not keyed, but a key was given: it was rewritten without the key, or the key is for another log")
		}
		body := append(bytes.Clone(text[:len(text)-suffix]), '}')
		got := string(text[len(text)-66 : len(text)-2]) // 64 hex digits before `"}`
		if !hmac.Equal([]byte(lineMAC(body, key)), []byte(got)) {
			if keyed {
				return bad("MAC mismatch: the record was edited or its chain recomputed, or this is not the log's key")
			}
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
			return bad("previous MAC does not match line %d: a record was dropped, inserted or moved", line-1)
		}
		sum.Records, sum.LastHash = e.Seq, got
		sum.Bytes += int64(len(raw))
		if e.Seq == at {
			// The MAC and, after it, the length of the log up to here.
			atMAC = got + "@" + strconv.FormatInt(sum.Bytes, 10)
		}
	}
}

// VerifyFile verifies the log at path (see Verify) against its
// checkpoint (HeadPath): a log with fewer records than the checkpoint
// names, or whose record there has another MAC, was cut short or
// rewritten. A keyed log must have a checkpoint.
func VerifyFile(path string, key []byte) (Summary, error) {
	f, err := os.Open(path)
	if err != nil {
		return Summary{}, fmt.Errorf("opening audit log: %w", err)
	}
	defer f.Close()
	return verifyFile(f, path, key)
}

func verifyFile(f *os.File, path string, key []byte) (Summary, error) {
	cp, hasCP, err := readHead(path, key)
	if err != nil {
		return Summary{}, err
	}
	sum, atMAC, err := verify(f, key, cp.Seq)
	if hasCP {
		sum.Checkpoint = int64(cp.Seq)
	}
	var ve *VerifyError
	if errors.As(err, &ve) {
		if ve.Incomplete {
			ve.Acknowledged = !hasCP || cp.Seq >= ve.Seq
			if ve.Acknowledged {
				ve.Reason += "; it had been acknowledged"
				if hasCP {
					ve.Reason += " (the checkpoint names record " + strconv.FormatUint(cp.Seq, 10) + ")"
				} else {
					ve.Reason += " as far as anyone can tell (no checkpoint file)"
				}
			}
		}
		return sum, err
	}
	if err != nil {
		return sum, err
	}
	line := int(sum.Records) + 1
	switch {
	case !hasCP && sum.Keyed:
		return sum, &VerifyError{Line: line, Seq: sum.Records + 1, Reason: "the checkpoint file " + HeadPath(path) + " is missing: a cut or emptied log cannot be ruled out"}
	case !hasCP:
	case sum.Records < cp.Seq:
		return sum, &VerifyError{Line: line, Seq: sum.Records + 1, Reason: fmt.Sprintf("the log ends after record %d, but the checkpoint names record %d: records were cut from its end", sum.Records, cp.Seq)}
	case cp.Seq > 0 && atMAC != cp.Head+"@"+strconv.FormatInt(cp.Bytes, 10):
		return sum, &VerifyError{Line: int(cp.Seq), Seq: cp.Seq, Reason: "record differs from the one the checkpoint names: the log was rewritten"}
	}
	return sum, nil
}

// Repair truncates an incomplete last line of the log at path (after an
// operator has looked into why an acknowledged record was cut), keeping
// the cut bytes in PATH.cut-UNIXTIME, and rewrites the checkpoint to the
// verified head. Any other break is refused: it is tampering or damage to
// investigate, not to repair.
func Repair(path string, key []byte) (Summary, string, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return Summary{}, "", fmt.Errorf("opening audit log: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return Summary{}, "", fmt.Errorf("%w: %s: stop the server first", ErrLocked, path)
	}
	sum, _, err := verify(f, key, 0)
	var ve *VerifyError
	if !errors.As(err, &ve) || !ve.Incomplete {
		if err == nil {
			return sum, "", errors.New("nothing to repair: the log ends with a whole record")
		}
		return sum, "", fmt.Errorf("not repairable (only a cut last line is): %w", err)
	}
	cut := make([]byte, 0)
	if _, err := f.Seek(sum.Bytes, io.SeekStart); err == nil {
		cut, _ = io.ReadAll(f)
	}
	aside := fmt.Sprintf("%s.cut-%d", path, time.Now().Unix())
	if err := os.WriteFile(aside, cut, 0o600); err != nil {
		return sum, "", fmt.Errorf("keeping the cut bytes: %w", err)
	}
	if err := f.Truncate(sum.Bytes); err != nil {
		return sum, "", fmt.Errorf("truncating: %w", err)
	}
	if err := f.Sync(); err != nil {
		return sum, "", fmt.Errorf("syncing: %w", err)
	}
	return sum, aside, writeHead(path, Options{Key: key}, sum.Records, sum.LastHash, sum.Bytes)
}
