//go:build !linux

package server

import (
	"errors"
	"syscall"
)

// waitPeer cannot peek portably here; streams still notice a departed
// client when a write fails.
func waitPeer(syscall.RawConn) (peerState, error) {
	return peerPending, errors.New("disconnect detection needs Linux")
}
