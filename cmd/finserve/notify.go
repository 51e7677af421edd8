package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
)

// sdNotify sends state to systemd's notification socket ($NOTIFY_SOCKET,
// set for Type=notify units), as sd_notify(3) does: READY=1 once the
// model serves, STOPPING=1 when draining, STATUS=... for systemctl
// status. Outside systemd it does nothing.
func sdNotify(log *slog.Logger, state ...string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if strings.HasPrefix(path, "@") {
		path = "\x00" + path[1:] // an abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err == nil {
		_, err = conn.Write([]byte(strings.Join(state, "\n")))
		conn.Close()
	}
	if err != nil {
		log.Warn("notifying systemd", "state", fmt.Sprint(state), "err", err)
	}
}
