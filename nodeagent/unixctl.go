package nodeagent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ovnControllerStatus asks the local ovn-controller, through its unixctl socket in rundir, whether it
// is connected to the southbound database ("connection-status", as `ovn-appctl -t ovn-controller
// connection-status` does).
func ovnControllerStatus(ctx context.Context, rundir string) (string, error) {
	sock, err := newestControlSocket(rundir, "ovn-controller")
	if err != nil {
		return "", err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return "", fmt.Errorf("ovn-controller control socket %s: %w", sock, err)
	}
	defer conn.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(5 * time.Second)
	}
	_ = conn.SetDeadline(deadline)
	req := map[string]any{"id": 0, "method": "connection-status", "params": []string{}}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return "", fmt.Errorf("ask ovn-controller for connection-status: %w", err)
	}
	var resp struct {
		Result *string `json:"result"`
		Error  any     `json:"error"`
	}
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return "", fmt.Errorf("read ovn-controller connection-status: %w", err)
	}
	if resp.Error != nil || resp.Result == nil {
		return "", fmt.Errorf("ovn-controller connection-status failed: %v", resp.Error)
	}
	return strings.TrimSpace(*resp.Result), nil
}

// newestControlSocket finds <rundir>/<daemon>.<pid>.ctl; after restarts old sockets may linger, so the
// one of the live pid in <daemon>.pid wins, else the newest.
func newestControlSocket(rundir, daemon string) (string, error) {
	if b, err := os.ReadFile(filepath.Join(rundir, daemon+".pid")); err == nil {
		p := filepath.Join(rundir, fmt.Sprintf("%s.%s.ctl", daemon, strings.TrimSpace(string(b))))
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	matches, _ := filepath.Glob(filepath.Join(rundir, daemon+".*.ctl"))
	var best string
	var bestTime time.Time
	for _, m := range matches {
		if st, err := os.Stat(m); err == nil && st.ModTime().After(bestTime) {
			best, bestTime = m, st.ModTime()
		}
	}
	if best == "" {
		return "", fmt.Errorf("no %s control socket in %s: is %s running (set --ovn-rundir to its OVN_RUNDIR)?", daemon, rundir, daemon)
	}
	return best, nil
}
