package server

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// TestLingerBounds: a marked connection is drained, but only so much: a
// client that sends without end is cut after maxBytes, one that sends
// nothing after maxWait, and when every slot lingers the next marked
// connection closes at once. (maxWait is a minute while the byte bound is
// tested, so that a slow machine cannot end the drain first.)
func TestLingerBounds(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := newLingerListener(raw, 1<<10)
	defer ln.Close()
	if ln.maxBytes != lingerMinBytes {
		t.Fatalf("maxBytes %d for a 1 KiB body limit, want the %d floor", ln.maxBytes, lingerMinBytes)
	}
	if got := newLingerListener(raw, 8<<20).maxBytes; got != 32<<20 {
		t.Fatalf("maxBytes %d for an 8 MiB body limit, want four bodies", got)
	}
	// pair returns a client connection and the server's marked, closed
	// side of it (draining).
	pair := func(ln *lingerListener) (net.Conn, *lingerConn) {
		t.Helper()
		client, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Close() })
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("answer")); err != nil {
			t.Fatal(err)
		}
		markLinger(c)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		return client, c.(*lingerConn)
	}

	ln.maxWait = time.Minute
	// Without end: the writes fail once the server stopped reading, after
	// it read maxBytes, and the answer was readable before.
	client, _ := pair(ln)
	got := make([]byte, 6)
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "answer" {
		t.Fatalf("answer %q %v", got, err)
	}
	chunk := bytes.Repeat([]byte("x"), 1<<20)
	sent := 0
	client.SetWriteDeadline(time.Now().Add(time.Minute))
	for sent <= 4*lingerMinBytes {
		n, err := client.Write(chunk)
		sent += n
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the server still held the connection after %d bytes", sent)
			}
			break
		}
	}
	if sent < lingerMinBytes || sent > 4*lingerMinBytes {
		t.Fatalf("the client could send %d bytes; the server drains %d", sent, lingerMinBytes)
	}

	// Silent: the server closes (EOF after the answer) once maxWait is over.
	// (Each case has a listener of its own: a drain reads its listener's
	// bounds.)
	silent := newLingerListener(raw, 1<<10)
	silent.maxWait = 50 * time.Millisecond
	client, _ = pair(silent)
	client.SetReadDeadline(time.Now().Add(time.Minute))
	if b, err := io.ReadAll(client); err != nil || string(b) != "answer" {
		t.Fatalf("a silent client read %q, %v; want the answer then EOF", b, err)
	}

	// Every slot taken (as if lingerConns were draining): closed at once,
	// although marked.
	full := newLingerListener(raw, 1<<10)
	for range lingerConns {
		full.slots <- struct{}{}
	}
	_, c := pair(full)
	if err := c.Conn.SetDeadline(time.Time{}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("with no slot free, the connection is open after Close (%v)", err)
	}
}
