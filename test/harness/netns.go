package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

func runIP(ctx context.Context, args ...string) error {
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// A test binary killed before its cleanups (SIGKILL, a -timeout panic) leaves its named network
// namespaces behind. Every namespace created here gets a marker naming its owner (pid and start time);
// StartUnderlay deletes namespaces whose owner is gone. Namespaces of live test binaries, including
// ones without any process inside (the underlay's), are left alone.
func netnsMarkerDir() string { return filepath.Join(os.TempDir(), "dunlin-harness-netns") }

func newOwnedNetns(ctx context.Context, name string) error {
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	if err := os.MkdirAll(netnsMarkerDir(), 0o755); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	marker := fmt.Sprintf("%d %s\n", os.Getpid(), start)
	if err := os.WriteFile(filepath.Join(netnsMarkerDir(), name), []byte(marker), 0o644); err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	if err := ipNetnsAdd(ctx, name); err != nil {
		os.Remove(filepath.Join(netnsMarkerDir(), name))
		return err
	}
	if out, err := exec.CommandContext(ctx, "ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up in %s: %v: %s", name, err, out)
	}
	return nil
}

func deleteOwnedNetns(name string) error {
	if err := ipNetnsDelete(name); err != nil {
		return err
	}
	os.Remove(filepath.Join(netnsMarkerDir(), name))
	return nil
}

// sweepStaleNetns deletes marked namespaces whose owner process has exited. Best effort.
func sweepStaleNetns() {
	entries, err := os.ReadDir(netnsMarkerDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(netnsMarkerDir(), e.Name()))
		if err != nil {
			continue
		}
		pidStr, start, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			continue
		}
		// A zombie counts as gone: PID 1 here reaps orphans only every few seconds.
		if got, err := procStartTime(pid); err == nil && got == start {
			continue
		}
		_ = deleteOwnedNetns(e.Name())
	}
}

// procStartTime returns field 22 of /proc/PID/stat (start time in clock ticks since boot), which
// together with the pid identifies a process. A zombie yields an error, as if it had gone.
func procStartTime(pid int) (string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", err
	}
	// The command name, field 2, is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 20 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	if fields[0] == "Z" || fields[0] == "X" {
		return "", fmt.Errorf("process %d has exited", pid)
	}
	return fields[19], nil // fields[0] is field 3 (state)
}

// NewNetns creates a named network namespace (as `ip netns add`) with lo up, as a runtime's pause
// sandbox has. A marker names this process, so that a later run removes it if this process dies.
func NewNetns(ctx context.Context, name string) error { return newOwnedNetns(ctx, name) }

// DeleteNetns removes a namespace made by NewNetns; a missing one is fine.
func DeleteNetns(name string) error { return deleteOwnedNetns(name) }

func ipNetnsAdd(ctx context.Context, name string) error {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	return nil
}

func ipNetnsDelete(name string) error {
	out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("ip netns delete %s: %v: %s", name, err, out)
	}
	return nil
}
