package server

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// A request refused before its body or headers were read (413 body too
// large, 431 headers too large) is answered at once and the connection
// closed. Closed with the rest of the request unread, the kernel sends a
// reset, and a client still writing gets "connection reset by peer"
// instead of the answer: a bank's client sending a 10 MB document would
// never learn why. So such a connection is closed as net/http closes one
// (its closeWriteAndWait): end our side, read and drop what the client
// still sends, for a bounded time and size, then close.
const (
	lingerTime     = 2 * time.Second
	lingerConns    = 64       // connections lingering at once; more close at once
	lingerMinBytes = 16 << 20 // at least this much is read; four bodies' worth if larger
)

// lingerListener hands out connections that can be marked to linger.
type lingerListener struct {
	net.Listener
	slots    chan struct{} // one per lingering connection
	maxBytes int64
	maxWait  time.Duration
}

func newLingerListener(ln net.Listener, bodyLimit int) *lingerListener {
	return &lingerListener{
		Listener: ln,
		slots:    make(chan struct{}, lingerConns),
		maxBytes: max(lingerMinBytes, 4*int64(bodyLimit)),
		maxWait:  lingerTime,
	}
}

// Accept wraps the next connection.
func (l *lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lingerConn{Conn: c, l: l}, nil
}

// lingerConn is a connection that, once marked, drains before it closes.
type lingerConn struct {
	net.Conn
	l      *lingerListener
	linger atomic.Bool
	once   sync.Once
	err    error
}

// markLinger asks for a gentle close of c's connection, if it is one of
// ours (the probe port's are not: they refuse nothing for its size).
func markLinger(c net.Conn) {
	if lc, ok := c.(*lingerConn); ok {
		lc.linger.Store(true)
	}
}

// NetConn returns the connection c wraps (as tls.Conn's does), for the
// disconnect watch that needs the socket.
func (c *lingerConn) NetConn() net.Conn { return c.Conn }

// Close closes at once, or, when marked and a slot is free, returns at
// once and drains in the background: the server's worker is not held.
func (c *lingerConn) Close() error {
	c.once.Do(func() {
		if !c.linger.Load() {
			c.err = c.Conn.Close()
			return
		}
		select {
		case c.l.slots <- struct{}{}:
		default:
			c.err = c.Conn.Close()
			return
		}
		go func() {
			defer func() { <-c.l.slots }()
			c.drain()
		}()
	})
	return c.err
}

func (c *lingerConn) drain() {
	defer c.Conn.Close()
	// The answer is flushed; a FIN after it tells the client it is all.
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() != nil {
			return
		}
	}
	if c.Conn.SetReadDeadline(time.Now().Add(c.l.maxWait)) != nil {
		return
	}
	_, _ = io.CopyN(io.Discard, c.Conn, c.l.maxBytes)
}
