package server

import (
	"errors"
	"syscall"
)

// waitPeer blocks in the network poller until the socket is readable and
// then reports, by peeking without consuming, whether the peer closed it
// or sent bytes.
func waitPeer(raw syscall.RawConn) (peerState, error) {
	state := peerPending
	var buf [1]byte
	err := raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(err, syscall.EAGAIN), errors.Is(err, syscall.EINTR):
			return false // nothing yet: wait for readability
		case err != nil, n == 0:
			state = peerGone // reset, or an orderly shutdown by the peer
		}
		return true
	})
	return state, err
}
