package server

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/finserve/finserve/engine"
	"github.com/finserve/finserve/pii"
)

// apiKind selects the response shapes of a generation.
type apiKind int

const (
	kindChat apiKind = iota
	kindCompletion
)

func (s *Server) chatCompletions(c *fiber.Ctx) error {
	start := time.Now()
	if _, err := s.ready(); err != nil && s.fleet.Load() == nil {
		return err // loading or draining: before reading the body
	}
	var req ChatRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return bodyError(err)
	}
	tier := s.tier(c)
	v, apiErr := s.validateChat(&req, tier)
	if apiErr != nil {
		return apiErr
	}
	b, release, err := s.acquire(c, req.Model, true)
	if err != nil {
		return err
	}
	// A model with its own tool syntax gets tools and tool history in it,
	// whatever tool_choice says.
	fam := (*toolFamily)(nil)
	if v.tools != nil || len(v.toolDefs) > 0 || v.toolHistory() {
		fam = s.toolFamily(b)
	}
	if v.tools != nil {
		if fam != nil {
			// the model's own syntax: its grammar when a call is required,
			// none when it may answer in text
			v.tools.fam = fam
			v.req.KeepSpecial = fam.keepSpecial
			v.req.Sampling.Grammar = ""
			if v.tools.required {
				v.req.Sampling.Grammar = v.tools.nativeGrammar(fam)
			}
		}
	}
	if apiErr := v.checkGrammar(b.model); apiErr != nil {
		release()
		return apiErr
	}
	var prompt []engine.Token
	if fam != nil {
		prompt, apiErr = s.nativePrompt(b, fam, v)
	} else {
		prompt, apiErr = s.chatPrompt(b, v.messages)
	}
	if apiErr != nil {
		release()
		return apiErr
	}
	return s.generate(c, &job{kind: kindChat, b: b, release: release, p: v.genParams, prompts: [][]engine.Token{prompt}, tenant: s.tenant(c),
		tier: tier, start: start, tools: v.tools})
}

// checkGrammar has llama.cpp check the request's grammar before its
// prompt is tokenized: one it refuses (a syntax error, too big, too deep)
// is the client's 400, on the field the grammar came from.
func (p *genParams) checkGrammar(m *engine.Model) *APIError {
	g := p.req.Sampling.Grammar
	if g == "" {
		return nil
	}
	if err := m.CheckGrammar(g); err != nil {
		what := map[string]string{"response_format": "the schema", "tools": "the tools' parameter schemas",
			"json_schema": "the schema"}[p.grammarFrom]
		if what == "" {
			return badRequest(p.grammarFrom, "the grammar is one this server cannot use: %v", err)
		}
		return badRequest(p.grammarFrom, "the grammar made from %s is one this server cannot use: %v", what, err)
	}
	return nil
}

func (s *Server) completions(c *fiber.Ctx) error {
	start := time.Now()
	if _, err := s.ready(); err != nil && s.fleet.Load() == nil {
		return err // loading or draining: before reading the body
	}
	var req CompletionRequest
	if err := decodeJSON(c.Body(), &req); err != nil {
		return bodyError(err)
	}
	tier := s.tier(c)
	v, apiErr := s.validateCompletion(&req, tier)
	if apiErr != nil {
		return apiErr
	}
	b, release, err := s.acquire(c, req.Model, true)
	if err != nil {
		return err
	}
	if apiErr := v.checkGrammar(b.model); apiErr != nil {
		release()
		return apiErr
	}
	prompts, apiErr := completionPrompts(b, v.prompts)
	if apiErr != nil {
		release()
		return apiErr
	}
	return s.generate(c, &job{kind: kindCompletion, b: b, release: release, p: v.genParams, prompts: prompts, tenant: s.tenant(c),
		tier: tier, start: start})
}

// job is one generation request: one engine stream per prompt.
type job struct {
	kind    apiKind
	m       *metrics
	b       *backend
	release func() // ends the job's use of b's model (acquire)
	p       genParams
	prompts [][]engine.Token
	tenant  string // whose prefixes the prompts may reuse (see Server.tenant)
	tier    engine.Tier
	start   time.Time
	tools   *toolPlan // a chat whose answer is tool calls or {"response":...}

	id string
	// requestID is the client's X-Request-Id (else id); traceID its W3C
	// trace, if any: both are logged.
	requestID, traceID string
	created            int64
	ctx                context.Context
	cancel             context.CancelFunc
	quit               chan struct{} // closed when the response is over
	quitOnce           sync.Once
	goneOnce           sync.Once
	left               atomic.Bool // the client disconnected
	streams            []*engine.Stream
	choices            []choiceState
}

// item is one event of one choice.
type item struct {
	i  int
	ev engine.Event
	at time.Time
}

// choiceState accumulates one choice.
type choiceState struct {
	text      strings.Builder
	tokens    int
	lastAt    time.Time
	firstAt   time.Time
	textBytes int // bytes of token pieces so far, for text_offset
	chat      []TokenLogprob
	legacy    *CompletionLogprobs
	final     engine.Event
	done      bool
	reply     replyStream // a streamed tool-using answer (job.tools)
	sent      int         // bytes of a native answer's text streamed as content
}

// generate starts the engine streams and answers, streamed or not. It
// releases the job's model when the response is over.
func (s *Server) generate(c *fiber.Ctx, j *job) error {
	streaming := false // the stream writer releases the model
	defer func() {
		if !streaming {
			j.release()
		}
	}()
	j.m = s.metrics
	j.created = time.Now().Unix()
	j.id = newID(j.kind)
	j.requestID, j.traceID = requestID(c), traceID(c)
	if !s.begin() {
		return errDraining
	}
	j.ctx, j.cancel = context.WithCancel(s.base)
	j.quit = make(chan struct{})
	j.choices = make([]choiceState, len(j.prompts))
	for _, prompt := range j.prompts {
		req := j.p.req
		req.Prompt, req.Tier, req.Tenant, req.ID = prompt, j.tier, j.tenant, cmp.Or(j.requestID, j.id)
		st, err := j.b.eng.Generate(j.ctx, req)
		if err != nil {
			j.cancel()
			s.done()
			apiErr := fromEngine(err)
			if apiErr.Param == "messages" && j.kind == kindCompletion {
				apiErr.Param = "prompt"
			}
			if apiErr.Status >= 500 && apiErr.Status != 503 {
				s.log.Error("starting generation", "err", err)
			}
			return apiErr
		}
		j.streams = append(j.streams, st)
	}
	s.metrics.started(j)
	if j.requestID == "" {
		j.requestID = j.id
		c.Locals(requestIDKey{}, j.id) // access sends it as X-Request-Id
	}

	conn := c.Context().Conn()
	stopWatch := s.watchClient(conn, func() { s.clientGone(j) })
	if j.p.stream {
		if err := s.awaitStart(j); err != nil {
			stopWatch()
			s.done()
			return err
		}
	}
	if !j.p.stream {
		defer s.done()
		defer stopWatch()
		defer j.finish()
		j.drain()
		s.ended(j)
		if err := j.err(); err != nil {
			if j.ctx.Err() != nil {
				if s.draining.Load() && !j.left.Load() {
					return errDraining // cut at the end of the shutdown grace
				}
				return nil // the client left: nobody to answer
			}
			s.log.Error("generation failed", "id", j.id, "err", err)
			return fromEngine(err)
		}
		c.Set("Server-Timing", j.serverTiming())
		return c.JSON(j.response())
	}

	events := j.events()
	c.Set(fiber.HeaderContentType, "text/event-stream")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set(fiber.HeaderConnection, "keep-alive")
	c.Set("X-Accel-Buffering", "no")
	// The writer runs after the handler returns, on fasthttp's goroutine:
	// it must not touch c.
	release := streamRelease(c)
	streaming = true
	c.Context().SetBodyStreamWriter(func(w *bufio.Writer) {
		defer j.release() // last: the streams have ended
		defer s.done()
		defer release() // before done: once the server is idle, the key's slot is free
		defer stopWatch()
		// A panic here is past the middleware (fasthttp runs the writer
		// after the handler): the stream is cut, the process lives.
		if s.safely("streaming a response", func() error {
			if !s.writeStream(w, j, events) {
				s.clientGone(j)
			}
			return nil
		}) != nil {
			j.cancel()
		}
		j.finish()
		s.ended(j)
	})
	return nil
}

// awaitStart holds a stream's response back until its requests are
// admitted, when the tier's queue timeout is short enough (at most the
// keep-alive interval): a queue timeout or a full engine is then answered
// with its HTTP status rather than inside a 200 event stream. Longer waits
// start the stream at once and keep it alive with comments instead.
func (s *Server) awaitStart(j *job) *APIError {
	limit := j.b.eng.Options().Tiers[j.tier].QueueTimeout
	if limit <= 0 || limit > s.cfg.KeepAlive {
		return nil
	}
	var failed error
	for _, st := range j.streams {
		if err := st.AwaitStart(limit + time.Second); err != nil {
			failed = err
			break
		}
	}
	if failed == nil {
		return nil
	}
	// Cancel the others and collect every final event, for the log and
	// the metrics.
	j.finish()
	j.drain()
	s.ended(j)
	return fromEngine(failed)
}

// drain reads every stream of the job to its end. Streams queue their
// events without waiting for a reader, so reading them one after another
// needs no goroutines.
func (j *job) drain() {
	for i, st := range j.streams {
		for {
			ev, err := st.Recv()
			if err != nil {
				break
			}
			j.add(item{i: i, ev: ev, at: time.Now()})
		}
	}
}

// eventSource yields a job's events in arrival order.
type eventSource interface {
	// next waits up to d for an event; got is false on timeout, more is
	// false once every stream has ended.
	next(d time.Duration) (it item, got, more bool)
}

// events returns the job's event source: the stream itself for one
// choice (no extra goroutine, so no extra wake-up per token), or the
// choices' streams merged.
func (j *job) events() eventSource {
	if len(j.streams) == 1 {
		return single{j.streams[0]}
	}
	return merged(j.pump())
}

type single struct{ st *engine.Stream }

func (s single) next(d time.Duration) (item, bool, bool) {
	ev, ok, err := s.st.RecvWithin(d)
	switch {
	case err != nil:
		return item{}, false, false
	case !ok:
		return item{}, false, true
	}
	return item{ev: ev, at: time.Now()}, true, true
}

type merged <-chan item

func (m merged) next(d time.Duration) (item, bool, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case it, ok := <-m:
		return it, ok, ok
	case <-t.C:
		return item{}, false, true
	}
}

// pump merges the choices' streams into one channel, stamped with arrival
// times. It ends when every stream has ended, or when the response is over.
func (j *job) pump() <-chan item {
	out := make(chan item, 64)
	remaining := make(chan struct{}, len(j.streams))
	for i, st := range j.streams {
		go func() {
			defer func() { remaining <- struct{}{} }()
			for {
				ev, err := st.Recv()
				if err != nil {
					return
				}
				select {
				case out <- item{i: i, ev: ev, at: time.Now()}:
				case <-j.quit:
					st.Close()
					return
				}
				if ev.Done {
					return
				}
			}
		}()
	}
	go func() {
		for range j.streams {
			<-remaining
		}
		close(out)
	}()
	return out
}

// ended records a finished job: metrics, and one log line without
// prompt or output text (prompts are not logged).
func (s *Server) ended(j *job) {
	s.metrics.finished(j)
	u, t := j.usage(), j.timings()
	outcome := "ok"
	if err := j.err(); err != nil {
		outcome = "error"
		if j.ctx.Err() != nil {
			outcome = "cancelled"
		}
	}
	preemptions := 0
	for i := range j.choices {
		preemptions += j.choices[i].final.Preemptions
	}
	attrs := []any{"id", j.id, "request_id", j.requestID, "tenant", j.tenant, "tier", j.tier.String(), "stream", j.p.stream, "choices", len(j.choices), "outcome", outcome,
		"prompt_tokens", u.PromptTokens, "cached_tokens", u.PromptTokensDetails.CachedTokens, "completion_tokens", u.CompletionTokens,
		"queue_ms", t.QueueMS, "ttft_ms", t.TTFTMS, "total_ms", t.TotalMS, "preemptions", preemptions}
	if j.traceID != "" {
		attrs = append(attrs, "trace_id", j.traceID)
	}
	if s.cfg.LogContent {
		// Only when enabled, and masked here whatever the log handler does.
		var prompt, completion strings.Builder
		for _, tok := range j.prompts[0] {
			if !j.b.model.IsSpecial(tok) {
				prompt.Write(j.b.model.Piece(tok))
			}
		}
		for i := range j.choices {
			completion.WriteString(j.choices[i].text.String())
		}
		attrs = append(attrs, "prompt", pii.Mask(prompt.String()), "completion", pii.Mask(completion.String()))
	}
	s.log.Info("request", attrs...)
}

// finish ends the response: streams still running are cancelled.
func (j *job) finish() {
	j.cancel()
	j.quitOnce.Do(func() { close(j.quit) })
}

// clientGone cancels a job whose client disconnected, once.
func (s *Server) clientGone(j *job) {
	j.goneOnce.Do(func() {
		j.left.Store(true)
		s.metrics.disconnects.Inc()
		s.log.Info("client disconnected; cancelling", "id", j.id)
		j.cancel()
	})
}

func (j *job) add(it item) {
	ch := &j.choices[it.i]
	ev := it.ev
	if ev.Token >= 0 {
		if ch.tokens == 0 {
			ch.firstAt = it.at
		} else {
			j.m.itl.Observe(it.at.Sub(ch.lastAt).Seconds())
		}
		ch.tokens++
		ch.lastAt = it.at
		if ev.Logprob != nil {
			j.addLogprob(ch, ev)
		}
	}
	ch.text.WriteString(ev.Text)
	if ev.Done {
		ch.final = ev
		ch.done = true
	}
}

func (j *job) addLogprob(ch *choiceState, ev engine.Event) {
	piece := j.b.model.Piece(ev.Logprob.Token)
	if j.kind == kindChat {
		tl := TokenLogprob{Token: string(piece), Logprob: ev.Logprob.Logprob, Bytes: byteInts(piece), TopLogprobs: []TopLogprob{}}
		for _, alt := range ev.TopLogprobs {
			p := j.b.model.Piece(alt.Token)
			tl.TopLogprobs = append(tl.TopLogprobs, TopLogprob{Token: string(p), Logprob: alt.Logprob, Bytes: byteInts(p)})
		}
		ch.chat = append(ch.chat, tl)
		return
	}
	if ch.legacy == nil {
		ch.legacy = &CompletionLogprobs{}
	}
	l := ch.legacy
	l.Tokens = append(l.Tokens, string(piece))
	l.TokenLogprobs = append(l.TokenLogprobs, ev.Logprob.Logprob)
	l.TextOffset = append(l.TextOffset, ch.textBytes)
	top := map[string]float32{}
	for _, alt := range ev.TopLogprobs {
		top[string(j.b.model.Piece(alt.Token))] = alt.Logprob
	}
	l.TopLogprobs = append(l.TopLogprobs, top)
	ch.textBytes += len(piece)
}

// err is the first engine error of any choice.
func (j *job) err() error {
	for i := range j.choices {
		if e := j.choices[i].final.Err; e != nil {
			return e
		}
		if !j.choices[i].done {
			return errors.New("generation ended without a final event")
		}
	}
	return nil
}

func (j *job) usage() *Usage {
	u := &Usage{}
	for i := range j.choices {
		u.PromptTokens += j.choices[i].final.Usage.PromptTokens
		u.CompletionTokens += j.choices[i].final.Usage.CompletionTokens
		u.PromptTokensDetails.CachedTokens += j.choices[i].final.Usage.CachedTokens
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	return u
}

// timings reports the request as a whole: the slowest choice's queue,
// prefill and decode, and the first token of any choice.
func (j *job) timings() *Timings {
	var t Timings
	for i := range j.choices {
		f := j.choices[i].final
		t.QueueMS = max(t.QueueMS, ms(f.Timings.Queue))
		t.PromptMS = max(t.PromptMS, ms(f.Timings.Prefill))
		t.DecodeMS = max(t.DecodeMS, ms(f.Timings.Decode))
		if ttft := ms(f.Timings.FirstByte); i == 0 || ttft < t.TTFTMS {
			t.TTFTMS = ttft
		}
		t.PromptN += f.Usage.PromptTokens
		t.DecodeN += f.Usage.CompletionTokens
	}
	t.TotalMS = ms(time.Since(j.start))
	if t.DecodeMS > 0 && t.DecodeN > len(j.choices) {
		// the first token of each choice belongs to the prefill
		t.DecodeTPS = float64(t.DecodeN-len(j.choices)) / (t.DecodeMS / 1000)
	}
	return &t
}

func (j *job) serverTiming() string {
	t := j.timings()
	return fmt.Sprintf("queue;dur=%.3f, prefill;dur=%.3f, decode;dur=%.3f, ttft;dur=%.3f, total;dur=%.3f",
		t.QueueMS, t.PromptMS, t.DecodeMS, t.TTFTMS, t.TotalMS)
}

func finishReason(ev engine.Event) *string {
	r := string(ev.Finish)
	if r == "" {
		r = string(engine.FinishStop)
	}
	return &r
}

// response builds a non-streamed response.
func (j *job) response() any {
	if j.kind == kindChat {
		ch := &j.choices[0]
		text := ch.text.String()
		choice := ChatChoice{Index: 0, Message: &AssistantOutput{Role: "assistant", Content: &text},
			FinishReason: finishReason(ch.final)}
		if j.tools != nil {
			var finish *string
			choice.Message.Content, choice.Message.ToolCalls, finish = j.toolAnswer(text)
			choice.FinishReason = cmp.Or(finish, choice.FinishReason)
		}
		if j.p.req.Logprobs {
			choice.Logprobs = &ChatLogprobs{Content: ch.chat, Refusal: nil}
			if choice.Logprobs.Content == nil {
				choice.Logprobs.Content = []TokenLogprob{}
			}
		}
		return ChatResponse{ResponseHeader: j.header("chat.completion"), Choices: []ChatChoice{choice},
			Usage: j.usage(), Timings: j.timings()}
	}
	resp := CompletionResponse{ResponseHeader: j.header("text_completion"), Usage: j.usage(), Timings: j.timings()}
	for i := range j.choices {
		ch := &j.choices[i]
		resp.Choices = append(resp.Choices, CompletionChoice{Index: i, Text: ch.text.String(),
			Logprobs: ch.legacy, FinishReason: finishReason(ch.final)})
	}
	return resp
}

// writeStream writes server-sent events as OpenAI does: a role delta
// first, one chunk per piece of text, a chunk with the finish reason per
// choice, an optional usage chunk, then [DONE]. A write or flush error
// means the client left: writeStream then returns false.
func (s *Server) writeStream(w *bufio.Writer, j *job, events eventSource) bool {
	send := func(v any) bool {
		data, err := json.Marshal(v)
		if err != nil {
			s.log.Error("encoding a stream chunk", "err", err)
			return true // skip it; the client is still there
		}
		w.WriteString("data: ")
		w.Write(data)
		w.WriteString("\n\n")
		return w.Flush() == nil
	}
	if j.kind == kindChat {
		empty := ""
		if !send(j.chatChunk(ChatChoice{Delta: &AssistantOutput{Role: "assistant", Content: &empty}})) {
			return false
		}
	}
	for {
		it, got, more := events.next(s.cfg.KeepAlive)
		if !more {
			break
		}
		if !got {
			w.WriteString(": keep-alive\n\n")
			if w.Flush() != nil {
				return false
			}
			continue
		}
		ch := &j.choices[it.i]
		before := len(ch.chat)
		var legacyBefore int
		if ch.legacy != nil {
			legacyBefore = len(ch.legacy.Tokens)
		}
		j.add(it)
		ev := it.ev
		if ev.Done && ev.Err != nil {
			var apiErr *APIError
			switch {
			case j.ctx.Err() == nil:
				s.log.Error("generation failed mid-stream", "id", j.id, "err", ev.Err)
				apiErr = fromEngine(ev.Err)
			case s.draining.Load() && !j.left.Load():
				apiErr = errDraining // cut at the end of the shutdown grace: say so
			default:
				return true // the watcher saw the client leave
			}
			if !send(apiErr.body()) {
				return false
			}
			w.WriteString("data: [DONE]\n\n")
			return w.Flush() == nil
		}
		if j.tools != nil {
			// The JSON of a tool-using answer stays in; a response's text
			// goes out as it decodes, calls once they are complete.
			if !j.sendReply(send, it.i, ch, ev) {
				return false
			}
			continue
		}
		if ev.Text != "" || len(ch.chat) > before || (ch.legacy != nil && len(ch.legacy.Tokens) > legacyBefore) {
			if !send(j.deltaChunk(it.i, ev.Text, ch, before, legacyBefore)) {
				return false
			}
		}
		if ev.Done {
			if !send(j.finishChunk(it.i, ev)) {
				return false
			}
		}
	}
	if j.p.includeUsage {
		if j.kind == kindChat {
			chunk := j.chatChunk()
			chunk.Choices = []ChatChoice{}
			chunk.Usage, chunk.Timings = j.usage(), j.timings()
			if !send(chunk) {
				return false
			}
		} else {
			chunk := j.completionChunk()
			chunk.Choices = []CompletionChoice{}
			chunk.Usage, chunk.Timings = j.usage(), j.timings()
			if !send(chunk) {
				return false
			}
		}
	}
	w.WriteString("data: [DONE]\n\n")
	return w.Flush() == nil
}

func (j *job) header(object string) ResponseHeader {
	return ResponseHeader{ID: j.id, Object: object, Created: j.created, Model: j.b.id, SystemFingerprint: fingerprint}
}

func (j *job) chatChunk(choices ...ChatChoice) ChatResponse {
	return ChatResponse{ResponseHeader: j.header("chat.completion.chunk"), Choices: choices}
}

func (j *job) completionChunk(choices ...CompletionChoice) CompletionResponse {
	return CompletionResponse{ResponseHeader: j.header("text_completion"), Choices: choices}
}

func (j *job) deltaChunk(i int, text string, ch *choiceState, before, legacyBefore int) any {
	if j.kind == kindChat {
		c := ChatChoice{Index: i, Delta: &AssistantOutput{Content: &text}}
		if j.p.req.Logprobs {
			c.Logprobs = &ChatLogprobs{Content: ch.chat[before:]}
		}
		return j.chatChunk(c)
	}
	c := CompletionChoice{Index: i, Text: text}
	if ch.legacy != nil {
		l := ch.legacy
		c.Logprobs = &CompletionLogprobs{Tokens: l.Tokens[legacyBefore:], TokenLogprobs: l.TokenLogprobs[legacyBefore:],
			TopLogprobs: l.TopLogprobs[legacyBefore:], TextOffset: l.TextOffset[legacyBefore:]}
	}
	return j.completionChunk(c)
}

// finishToolCalls is the finish reason of an answer that calls tools.
var finishToolCalls = "tool_calls"

// sendReply streams one event of a tool-using answer: the decoded text
// of a response, or, at the end, the calls (each a delta with its index,
// id, name and whole arguments) and the finish reason. An answer cut
// short of valid JSON (max_tokens, a stop string) goes out as it is.
func (j *job) sendReply(send func(any) bool, i int, ch *choiceState, ev engine.Event) bool {
	if fam := j.tools.fam; fam != nil {
		return j.sendNative(send, i, ch, ev, fam)
	}
	if text := ch.reply.feed(ev.Text); text != "" {
		if !send(j.chatChunk(ChatChoice{Index: i, Delta: &AssistantOutput{Content: &text}})) {
			return false
		}
	}
	if !ev.Done {
		return true
	}
	finish := j.finishChunk(i, ev).(ChatResponse)
	if !ch.reply.streaming() {
		content, calls, reason := j.toolAnswer(ch.text.String())
		for k := range calls {
			calls[k].Index = &k
		}
		finish.Choices[0].FinishReason = cmp.Or(reason, finish.Choices[0].FinishReason)
		if !send(j.chatChunk(ChatChoice{Index: i, Delta: &AssistantOutput{Content: content, ToolCalls: calls}})) {
			return false
		}
	}
	return send(finish)
}

// toolAnswer is what a client sees of a whole tool-using answer: its
// content, or its calls and the finish reason tool_calls (nil: the
// engine's reason stands).
func (j *job) toolAnswer(text string) (content *string, calls []ToolCall, finish *string) {
	c, calls, _ := j.tools.answer(text)
	if len(calls) > 0 {
		return nil, calls, &finishToolCalls
	}
	return &c, nil, nil
}

func (j *job) finishChunk(i int, ev engine.Event) any {
	single := len(j.choices) == 1
	if j.kind == kindChat {
		chunk := j.chatChunk(ChatChoice{Index: i, Delta: &AssistantOutput{}, FinishReason: finishReason(ev)})
		if single {
			chunk.Timings = j.timings()
		}
		return chunk
	}
	chunk := j.completionChunk(CompletionChoice{Index: i, FinishReason: finishReason(ev)})
	if single {
		chunk.Timings = j.timings()
	}
	return chunk
}

// fingerprint identifies the serving configuration in responses.
const fingerprint = "fp_finserve"

func newID(kind apiKind) string {
	if kind == kindCompletion {
		return randomID("cmpl")
	}
	return randomID("chatcmpl")
}

func byteInts(b []byte) []int {
	out := make([]int, len(b))
	for i, v := range b {
		out[i] = int(v)
	}
	return out
}
