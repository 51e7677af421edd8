package engine

import "time"

// HandLoop is an engine whose loop a test turns by hand on a real
// llama.cpp executor, so that something can happen at a chosen point of
// a real decode (During). For the external tests, which hold the models.
type HandLoop struct {
	e *Engine
	l *loop
	x *hookExec
}

// hookExec runs during at the start of each decode of the executor it wraps.
type hookExec struct {
	device
	during func()
}

func (h *hookExec) decode(b *batch) int {
	if h.during != nil {
		h.during()
	}
	return h.device.decode(b)
}

// NewHandLoop makes a hand-driven engine on m.
func NewHandLoop(m *Model, o Options) (*HandLoop, error) {
	if err := o.fill(m); err != nil {
		return nil, err
	}
	e := handEngine(m, o, time.Now)
	x, err := newLlamaExec(e)
	if err != nil {
		return nil, err
	}
	hx := &hookExec{device: x}
	return &HandLoop{e: e, l: newLoop(e, hx, x.kvCells), x: hx}, nil
}

// handEngine is an engine on m with filled options o and the clock now,
// whose loop a test creates and turns itself.
func handEngine(m *Model, o Options, now func() time.Time) *Engine {
	return &Engine{model: m, opts: o, log: o.Logger, now: now,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// Engine is the engine requests are submitted to.
func (h *HandLoop) Engine() *Engine { return h.e }

// During sets what runs at the start of each decode.
func (h *HandLoop) During(f func()) { h.x.during = f }

// Turn is one turn of the loop.
func (h *HandLoop) Turn() bool {
	h.l.intake(h.e.take(false))
	return h.l.iterate()
}

// Stats is the loop's Stats.
func (h *HandLoop) Stats() Stats { return h.l.stats() }

// Close ends every request and frees the context.
func (h *HandLoop) Close() {
	h.l.shutdown()
	h.l.free()
}

// NeverUTF8 are the tokens grammar-constrained sampling bans.
func (m *Model) NeverUTF8() []Token { return m.neverUTF8 }
