package server

import (
	"context"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gofiber/fiber/v2"
)

// watchClient calls gone once if the client behind conn disconnects, and
// returns a function that stops watching.
//
// fasthttp gives a handler no signal when its client leaves, and a stream
// only notices on a failed write, which can take seconds on a real network
// and never happens while a long prompt is prefilled or a non-streamed
// answer is generated. So the socket itself is watched: the watcher waits
// in Go's network poller until the socket is readable, then peeks; zero
// bytes without error means the peer closed its side. The peek consumes
// nothing, so pipelined requests are left for fasthttp; while such bytes
// wait, readability says nothing and the watcher polls instead.
func (s *Server) watchClient(conn net.Conn, gone func()) (stop func()) {
	raw := rawConn(conn)
	if raw == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for {
			state, err := waitPeer(raw)
			select {
			case <-done:
				return
			default:
			}
			switch {
			case err != nil:
				return // the deadline set by stop, or the connection is closed
			case state == peerGone:
				gone()
				return
			}
			// Pipelined bytes wait: poll until they are gone or we stop.
			select {
			case <-done:
				return
			case <-time.After(s.cfg.DisconnectPoll):
			}
		}
	}()
	return func() {
		close(done)
		// Wake the watcher from the poller; fasthttp sets its own read
		// deadline before it reads the next request.
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		<-finished
		_ = conn.SetReadDeadline(time.Time{})
	}
}

type peerState int

const (
	peerGone    peerState = iota
	peerPending           // bytes are waiting to be read: the peer is there
)

func rawConn(conn net.Conn) syscall.RawConn {
	// Down to the socket, through our lingerConn and a *tls.Conn.
	for {
		w, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		conn = w.NetConn()
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// hold begins a request answered in one piece: it counts for the
// shutdown drain (a nil ctx: the server is draining), and its context is
// cancelled when the client leaves (gone then reports it), when cancel is
// called, or at the end of the shutdown grace. end releases it all.
func (s *Server) hold(c *fiber.Ctx) (ctx context.Context, cancel context.CancelFunc, gone *atomic.Bool, end func()) {
	if !s.begin() {
		return nil, nil, nil, nil
	}
	ctx, cancel = context.WithCancel(s.base)
	gone = new(atomic.Bool)
	stopWatch := s.watchClient(c.Context().Conn(), func() { gone.Store(true); cancel() })
	return ctx, cancel, gone, func() {
		stopWatch()
		cancel()
		s.done()
	}
}
