package engine

import (
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// FinishReason says why a generation ended.
type FinishReason string

// Finish reasons, as OpenAI names them.
const (
	FinishStop   FinishReason = "stop"   // end-of-generation token or a stop string
	FinishLength FinishReason = "length" // max tokens or the context reached
)

// TokenLogprob is a token with its log-probability under the model's raw
// distribution (before temperature and other sampling transforms).
type TokenLogprob struct {
	Token   Token
	Logprob float32
}

// Usage counts the tokens of a request.
type Usage struct {
	PromptTokens     int
	CompletionTokens int
	CachedTokens     int // prompt tokens reused from the prefix cache, not computed
}

// Timings of one request, measured by the engine loop.
type Timings struct {
	Queue     time.Duration // submitted until admitted into a sequence slot
	Prefill   time.Duration // admitted until the first token was sampled
	Decode    time.Duration // first token until the end
	FirstByte time.Duration // submitted until the first token (TTFT)
	// QueueSteps counts the engine steps that ran while the request
	// waited for admission: 0 when it was admitted at the first step
	// boundary after it arrived.
	QueueSteps uint64
}

// Event is one step of a generation: normally one token. The last event of
// a stream has Done set, and Err if the generation failed or was cancelled.
type Event struct {
	// Text is new output text: always valid UTF-8 and never part of a stop
	// string. It can be empty while a character or a possible stop string
	// is incomplete; the text is then carried by a later event.
	Text string
	// Token is the sampled token (-1 on a final event that carries no token).
	Token Token
	// Logprob and TopLogprobs are set when the request asked for them.
	Logprob     *TokenLogprob
	TopLogprobs []TokenLogprob

	Done    bool
	Finish  FinishReason // set when Done and Err is nil
	Err     error
	Usage   Usage   // set when Done
	Timings Timings // set when Done
	// Preemptions counts the times a higher tier preempted the generation
	// (set when Done); it resumed each time where it was.
	Preemptions int
}

// Stream delivers the events of one generation. The engine never waits
// for a reader: events queue up in the stream.
type Stream struct {
	mu      sync.Mutex
	queue   []Event
	ended   bool // the final event has been queued
	drained bool // the final event has been returned
	signal  chan struct{}
	cancel  func()

	// started is closed when the request is admitted or ends; startErr is
	// the error it ended with, if it ended first.
	started  chan struct{}
	admitted bool
	startErr error
}

func newStream(cancel func()) *Stream {
	return &Stream{signal: make(chan struct{}, 1), cancel: cancel, started: make(chan struct{})}
}

// admit marks the request admitted into a sequence.
func (s *Stream) admit() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.admitted && !s.ended {
		s.admitted = true
		close(s.started)
	}
}

func (s *Stream) push(ev Event) {
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, ev)
	s.ended = ev.Done
	if s.ended && !s.admitted {
		s.startErr = ev.Err
		close(s.started)
	}
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// Recv returns the next event, waiting for it. After the final event
// (Done), it returns io.EOF. Every stream ends: on completion, on error, when
// the request's context is cancelled (the final event then carries
// ctx.Err()) and when the engine closes.
func (s *Stream) Recv() (Event, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			ev := s.queue[0]
			s.queue[0] = Event{}
			s.queue = s.queue[1:]
			if ev.Done {
				s.drained = true
			}
			s.mu.Unlock()
			return ev, nil
		}
		if s.drained {
			s.mu.Unlock()
			return Event{}, io.EOF
		}
		s.mu.Unlock()
		<-s.signal
	}
}

// RecvWithin is Recv with a time limit: ok is false if no event arrived
// within d. Streams that send keep-alives while a prompt is prefilled use
// it. Like Recv, it is for one reader at a time.
func (s *Stream) RecvWithin(d time.Duration) (ev Event, ok bool, err error) {
	var timer *time.Timer
	for {
		s.mu.Lock()
		if len(s.queue) > 0 || s.drained {
			s.mu.Unlock()
			if timer != nil {
				timer.Stop()
			}
			ev, err := s.Recv()
			return ev, true, err
		}
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(d)
		}
		select {
		case <-s.signal:
		case <-timer.C:
			return Event{}, false, nil
		}
	}
}

// AwaitStart waits up to d for the request to be admitted. It returns
// the error the request ended with if it ended before that (a queue
// timeout, a cancellation), and nil when it was admitted or d passed. The
// events stay in the stream either way. A server uses it to answer queue
// errors with an HTTP status before it commits to a 200 event stream.
func (s *Stream) AwaitStart(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.started:
	case <-t.C:
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.startErr
}

// Close cancels the generation if it is still running. It does not wait.
func (s *Stream) Close() { s.cancel() }

// Collect reads the stream to its end and returns the whole text and the
// final event.
func (s *Stream) Collect() (string, Event, error) {
	var b strings.Builder
	for {
		ev, err := s.Recv()
		if err != nil {
			return b.String(), Event{}, err
		}
		b.WriteString(ev.Text)
		if ev.Done {
			return b.String(), ev, ev.Err
		}
	}
}

// textAssembler turns token pieces into text that is safe to send: only
// whole UTF-8 characters, with invalid bytes replaced by U+FFFD, and never
// any part of a stop string.
type textAssembler struct {
	partial []byte // an incomplete UTF-8 character
	held    string // a suffix that may be the start of a stop string
	stops   []string
}

// push adds a piece; it returns the text now safe to emit and whether a
// stop string was found (the text then ends before it).
func (a *textAssembler) push(piece []byte) (string, bool) {
	a.partial = append(a.partial, piece...)
	var b strings.Builder
	b.WriteString(a.held)
	p := a.partial
	for len(p) > 0 {
		r, size := utf8.DecodeRune(p)
		if r == utf8.RuneError && size <= 1 {
			if !utf8.FullRune(p) {
				break // wait for the rest of the character
			}
			b.WriteRune(utf8.RuneError)
			p = p[1:]
			continue
		}
		b.Write(p[:size])
		p = p[size:]
	}
	a.partial = append(a.partial[:0], p...)
	text := b.String()
	a.held = ""
	if len(a.stops) == 0 {
		return text, false
	}
	if i := firstStop(text, a.stops); i >= 0 {
		return text[:i], true
	}
	keep := stopPrefixLen(text, a.stops)
	a.held = text[len(text)-keep:]
	return text[:len(text)-keep], false
}

// flush returns what is left at the end of a generation.
func (a *textAssembler) flush() string {
	s := a.held
	if len(a.partial) > 0 {
		s += string(utf8.RuneError)
	}
	a.held, a.partial = "", nil
	return s
}

func firstStop(text string, stops []string) int {
	best := -1
	for _, s := range stops {
		if i := strings.Index(text, s); i >= 0 && (best < 0 || i < best) {
			best = i
		}
	}
	return best
}

// stopPrefixLen is the length of the longest suffix of text that is a
// proper prefix of some stop string.
func stopPrefixLen(text string, stops []string) int {
	best := 0
	for _, s := range stops {
		for k := min(len(s)-1, len(text)); k > best; k-- {
			if strings.HasSuffix(text, s[:k]) {
				best = k
				break
			}
		}
	}
	return best
}
