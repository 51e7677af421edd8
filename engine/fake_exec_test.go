package engine

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"
)

// fakeExec is a device over an imaginary model, for scheduling tests.
// A slot's KV cells are the tokens it was fed, by position, and a decode
// checks that each row continues its slot exactly (the scheduler's
// copies, trims and restores must leave every sequence whole). The next
// token is a pure function of the slot's tokens, as a greedy model's is,
// so that a sequence resumed or copied continues as one computed whole
// would. Each decode advances the clock by a step-time model; a unified
// cache of kv cells refuses a batch that does not fit, as llama.cpp does.
type fakeExec struct {
	t       *testing.T
	clock   *fakeClock
	cells   map[int32][]Token
	kv      int  // cells in all (unified) or per slot
	unified bool // one pool of cells for every slot
	vocab   int
	eog     Token // sampled when a sequence reaches eogAt tokens; -1 never
	eogAt   int
	// stepCost is how long a decode of n rows takes.
	stepCost func(n int) time.Duration
	// fail, if set, is the result of the next decode instead.
	fail int
	// during, if set, runs at the start of each decode: what arrives
	// while a step computes. A cut asked for by then (or before) stops
	// the decode: it returns 2 having computed nothing.
	during  func()
	cutFlag bool
	// arming, if set, runs when the loop clears the cut flag before a
	// decode: what arrives after intake and before the decode starts.
	arming func()

	// restoreFails makes every restore from the host tier fail.
	restoreFails bool
	// calls logs what the executor asked of the device, in order (KV
	// operations, decodes, samplers made and freed).
	calls []string

	rows     []fakeRow     // the last decode's rows
	steps    []fakeStep    // every decode, in order
	samplers map[*int]bool // live samplers
	cuts     int           // decodes cut
	closed   bool
}

type fakeRow struct {
	slot   int32
	pos    int
	logits bool
}

// fakeStep records one decode: the rows each slot fed, and when.
// byFirst counts the rows by the first token of their sequence, which
// tells the requests of a test apart across slots.
type fakeStep struct {
	at      time.Time
	rows    int
	bySeq   map[int32]int
	byFirst map[Token]int
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func (x *fakeExec) seqRemove(slot int32, p0, p1 int) {
	x.calls = append(x.calls, fmt.Sprintf("remove %d [%d,%d)", slot, p0, p1))
	if p1 >= 0 {
		x.t.Fatalf("seqRemove(%d, %d, %d): the scheduler only trims tails", slot, p0, p1)
	}
	c := x.cells[slot]
	if p0 < 0 {
		p0 = 0
	}
	if p0 < len(c) {
		x.cells[slot] = c[:p0]
	}
}

func (x *fakeExec) seqCopy(src, dst int32, p0, p1 int) {
	x.calls = append(x.calls, fmt.Sprintf("copy %d to %d", src, dst))
	if len(x.cells[dst]) > 0 {
		x.t.Fatalf("seqCopy(%d, %d): the destination holds %d cells", src, dst, len(x.cells[dst]))
	}
	c := x.cells[src]
	if p1 >= 0 && p1 < len(c) {
		c = c[:p1]
	}
	if p0 > 0 {
		x.t.Fatalf("seqCopy(%d, %d, %d, %d): copies start at 0", src, dst, p0, p1)
	}
	x.cells[dst] = slices.Clone(c)
}

func (x *fakeExec) seqPosMax(slot int32) int { return len(x.cells[slot]) - 1 }

func (x *fakeExec) saveSeq(slot int32) ([]byte, error) {
	x.calls = append(x.calls, fmt.Sprintf("save %d", slot))
	c := x.cells[slot]
	if len(c) == 0 {
		return nil, nil
	}
	b := make([]byte, 4*len(c))
	for i, t := range c {
		binary.LittleEndian.PutUint32(b[4*i:], uint32(t))
	}
	return b, nil
}

func (x *fakeExec) restoreSeq(slot int32, st []byte) error {
	x.calls = append(x.calls, fmt.Sprintf("restore %d", slot))
	if x.restoreFails {
		return fmt.Errorf("restore into slot %d: failing as the test asked", slot)
	}
	if len(x.cells[slot]) > 0 || len(st)%4 != 0 {
		return fmt.Errorf("restore into slot %d: %d cells, %d bytes", slot, len(x.cells[slot]), len(st))
	}
	c := make([]Token, len(st)/4)
	for i := range c {
		c[i] = Token(binary.LittleEndian.Uint32(st[4*i:]))
	}
	x.cells[slot] = c
	return nil
}

// used is the number of cells held in all.
func (x *fakeExec) used() int {
	n := 0
	for _, c := range x.cells {
		n += len(c)
	}
	return n
}

func (x *fakeExec) decode(b *batch) int {
	if x.closed {
		x.t.Fatal("decode after close")
	}
	if rc := x.fail; rc != 0 {
		x.fail = 0
		return rc
	}
	n := b.len()
	x.calls = append(x.calls, fmt.Sprintf("decode %d", n))
	if x.during != nil {
		x.during()
	}
	if x.cutFlag {
		// As llama.cpp: the ubatches before the one it stopped in stay
		// (here the first half of the rows, a ubatch of its own).
		x.cuts++
		for i := range n / 2 {
			slot := b.seq[i]
			x.cells[slot] = append(x.cells[slot], b.tok[i])
		}
		x.clock.advance(time.Millisecond) // a graph node's time
		return 2
	}
	if x.unified && x.used()+n > x.kv {
		return 1 // no room: nothing changed
	}
	st := fakeStep{at: x.clock.now(), rows: n, bySeq: map[int32]int{}, byFirst: map[Token]int{}}
	x.rows = x.rows[:0]
	for i := range n {
		slot, pos := b.seq[i], int(b.pos[i])
		if c := x.cells[slot]; pos != len(c) {
			x.t.Fatalf("step %d row %d: slot %d fed position %d but holds %d cells", len(x.steps), i, slot, pos, len(c))
		}
		if !x.unified && pos >= x.kv {
			return 1
		}
		x.cells[slot] = append(x.cells[slot], b.tok[i])
		x.rows = append(x.rows, fakeRow{slot: slot, pos: pos, logits: b.logits[i]})
		st.bySeq[slot]++
		st.byFirst[x.cells[slot][0]]++
	}
	x.steps = append(x.steps, st)
	x.clock.advance(x.stepCost(n))
	return 0
}

// next is the imaginary model's greedy token after tokens.
func (x *fakeExec) next(tokens []Token) Token {
	if x.eog >= 0 && len(tokens) >= x.eogAt {
		return x.eog
	}
	h := fnv.New32a()
	for _, t := range tokens {
		binary.Write(h, binary.LittleEndian, int32(t))
	}
	// Tokens 0..9 are kept out: 0 may be the end of generation.
	return Token(10 + int(h.Sum32()%uint32(x.vocab-10)))
}

func (x *fakeExec) sample(samplers []sampler, rows []int32, out []Token) {
	for i, r := range rows {
		if s := samplers[i]; s != nil && !x.samplers[s.(*int)] {
			x.t.Fatalf("sampling with a freed sampler")
		}
		row := x.rows[r]
		out[i] = x.next(x.cells[row.slot][:row.pos+1])
	}
}

func (x *fakeExec) logprobs(row int32, targets []Token, k int) ([]float32, []TokenLogprob) {
	lp := make([]float32, len(targets))
	for i, t := range targets {
		lp[i] = -float32(t%7) - float32(row%3)
	}
	var top []TokenLogprob
	for i := range k {
		top = append(top, TokenLogprob{Token: Token(i), Logprob: -float32(i)})
	}
	return lp, top
}

func (x *fakeExec) logSoftmax(row int32, out []float32) {
	for i := range out {
		out[i] = -float32(i)
	}
}

// embedding pools like llama.cpp: only a sequence the last decode fed
// whole, every row an output, has one. The imaginary model's vector is
// the mean of a pseudo-random vector per (token, position).
func (x *fakeExec) embedding(slot int32, out []float32) bool {
	n := 0
	for _, r := range x.rows {
		if r.slot == slot {
			if !r.logits {
				x.t.Fatalf("embedding of slot %d: row at position %d was no output", slot, r.pos)
			}
			n++
		}
	}
	c := x.cells[slot]
	if n == 0 || n != len(c) {
		x.t.Fatalf("embedding of slot %d: the last decode fed %d of its %d cells", slot, n, len(c))
	}
	clear(out)
	for pos, t := range c {
		for j := range out {
			out[j] += float32(int32(fnvOf(int32(t), int32(pos), int32(j))%2001)-1000) / float32(len(c))
		}
	}
	return true
}

func fnvOf(v ...int32) uint32 {
	h := fnv.New32a()
	binary.Write(h, binary.LittleEndian, v)
	return h.Sum32()
}

func (x *fakeExec) newSampler(s *Sampling) sampler {
	if s.greedy() {
		return nil
	}
	p := new(int)
	x.samplers[p] = true
	x.calls = append(x.calls, "new sampler")
	return p
}

func (x *fakeExec) freeSampler(s sampler) {
	p := s.(*int)
	if !x.samplers[p] {
		x.t.Fatal("a sampler freed twice")
	}
	delete(x.samplers, p)
	x.calls = append(x.calls, "free sampler")
}

func (x *fakeExec) armCut() {
	x.cutFlag = false
	if x.arming != nil {
		x.arming()
	}
}
func (x *fakeExec) cut() { x.cutFlag = true }

func (x *fakeExec) close() { x.closed = true }

// sim is an engine whose loop the test turns by hand, on a fake executor
// and a fake clock: requests go through Generate and Score as in
// production, and each turn is the production loop's intake and iterate.
type sim struct {
	t     *testing.T
	e     *Engine
	l     *loop
	x     *fakeExec
	clock *fakeClock
}

// simVocab is the fake model's vocabulary; token 0 ends a generation.
const simVocab = 1000

func fakeModel() *Model {
	m := &Model{info: ModelInfo{VocabSize: simVocab, TrainContext: 4096}}
	m.eog = make([]bool, simVocab)
	m.eog[0] = true
	m.attrs = make([]uint32, simVocab)
	m.pieces = make([][]byte, simVocab)
	for i := range m.pieces {
		m.pieces[i] = fmt.Appendf(nil, " t%d", i)
	}
	return m
}

// newSim makes an engine with o (defaults filled as New fills them) on a
// fake executor with the step-time model cost (default: 20 ms plus 1 ms
// per row, a small CPU's shape).
func newSim(t *testing.T, o Options, cost func(n int) time.Duration) *sim {
	t.Helper()
	return newSimOf(t, fakeModel(), o, cost)
}

// newSimOf is newSim on the fake model m.
func newSimOf(t *testing.T, m *Model, o Options, cost func(n int) time.Duration) *sim {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := o.fill(m); err != nil {
		t.Fatal(err)
	}
	if cost == nil {
		cost = func(n int) time.Duration { return 20*time.Millisecond + time.Duration(n)*time.Millisecond }
	}
	clock := &fakeClock{t: time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)}
	x := &fakeExec{t: t, clock: clock, cells: map[int32][]Token{}, kv: o.KVCells, unified: o.UnifiedKV,
		vocab: simVocab, eog: -1, stepCost: cost, samplers: map[*int]bool{}}
	total := o.KVCells
	if !o.UnifiedKV {
		x.kv = o.Context // per slot
		total = o.Context * (o.Parallel + len(o.PrefixCache.Pinned))
	}
	e := handEngine(m, o, clock.now)
	s := &sim{t: t, e: e, l: newLoop(e, x, total), x: x, clock: clock}
	if err := s.l.prefillPinned(o.PrefixCache.Pinned); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.l.shutdown()
		s.l.free()
		if len(x.samplers) > 0 {
			t.Errorf("%d samplers never freed", len(x.samplers))
		}
	})
	return s
}

// gen submits a generation.
func (s *sim) gen(req Request) *Stream {
	s.t.Helper()
	st, err := s.e.Generate(context.Background(), req)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

// turn is one turn of the production loop: take what was submitted, then
// drop, admit, decode and age. It reports whether anything was decoded.
func (s *sim) turn() bool {
	s.l.intake(s.e.take(false))
	return s.l.iterate()
}

// runUntil turns the loop until done holds, at most max turns.
func (s *sim) runUntil(max int, done func() bool) {
	s.t.Helper()
	for i := 0; !done(); i++ {
		if i == max {
			s.t.Fatalf("not done after %d turns", max)
		}
		s.turn()
	}
}

// finish turns the loop until every stream ended (at most max turns) and
// returns their events.
func (s *sim) finish(max int, streams ...*Stream) [][]Event {
	s.t.Helper()
	evs := make([][]Event, len(streams))
	done := make([]bool, len(streams))
	s.runUntil(max, func() bool {
		all := true
		for i, st := range streams {
			if !done[i] {
				var got []Event
				got, done[i] = drain(st)
				evs[i] = append(evs[i], got...)
			}
			all = all && done[i]
		}
		return all
	})
	return evs
}

// prompt is n tokens from seed, none of them the end of generation.
func prompt(seed, n int) []Token {
	p := make([]Token, n)
	for i := range p {
		p[i] = Token(10 + (seed*7919+i*31)%(simVocab-10))
	}
	return p
}

// drain reads every event a stream has so far; done reports its end.
func drain(st *Stream) (events []Event, done bool) {
	for {
		ev, ok, err := st.RecvWithin(0)
		if err != nil || !ok {
			return events, false
		}
		events = append(events, ev)
		if ev.Done {
			return events, true
		}
	}
}

// TestSimGenerates: the harness itself. Two generations run to their
// length on the fake executor, each equal to what the imaginary model
// gives its prompt alone.
func TestSimGenerates(t *testing.T) {
	s := newSim(t, Options{Parallel: 2, Context: 128}, nil)
	a := s.gen(Request{Prompt: prompt(1, 20), MaxTokens: 5})
	b := s.gen(Request{Prompt: prompt(2, 30), MaxTokens: 4})
	evs := s.finish(100, a, b)
	evA, evB := evs[0], evs[1]
	for i, c := range []struct {
		evs    []Event
		prompt []Token
		n      int
	}{{evA, prompt(1, 20), 5}, {evB, prompt(2, 30), 4}} {
		toks := slices.Clone(c.prompt)
		for _, ev := range c.evs[:len(c.evs)-1] {
			if want := s.x.next(toks); ev.Token != want {
				t.Fatalf("stream %d token %d: %d, want %d", i, len(toks)-len(c.prompt), ev.Token, want)
			}
			toks = append(toks, ev.Token)
		}
		last := c.evs[len(c.evs)-1]
		if last.Err != nil || last.Finish != FinishLength || last.Usage.CompletionTokens != c.n {
			t.Fatalf("stream %d ended with %+v", i, last)
		}
	}
}
