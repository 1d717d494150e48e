// Package harness starts real OVN and Kubernetes components as child processes for integration tests,
// benchmarks and demos. It does not import package testing: everything returns errors and everything
// started has a Stop method.
package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	stopGrace    = 5 * time.Second
	pollInterval = 50 * time.Millisecond
	logTailLines = 30
)

// process is a daemon running in the foreground as our child, in its own process group so that
// Stop reaches anything it forks and a terminal's Ctrl-C does not reach it before we can stop it.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has been reaped
	waitErr error         // valid after done is closed
	// stopping is set by Stop and Kill: an exit after it is expected, any other exit is a death.
	stopping atomic.Bool
}

// startProcess runs bin with args, appending stdout and stderr to logPath.
func startProcess(name, logPath string, env []string, bin string, args ...string) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log for %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid: true,
		// If the test binary dies without calling Stop, do not leave daemons behind. (Pdeathsig is
		// tied to the forking OS thread; Go only retires threads whose goroutine locked them.)
		Pdeathsig: syscall.SIGTERM,
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	// The child holds its own copy of the descriptor.
	logFile.Close()
	p := &process{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
		p.reportDeath()
	}()
	return p, nil
}

// exited reports whether the process has terminated.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the process group, waits up to stopGrace, then sends SIGKILL.
// Stopping an already stopped process is a no-op.
func (p *process) Stop() error {
	if p == nil || p.exited() {
		return nil
	}
	p.stopping.Store(true)
	pgid := p.cmd.Process.Pid
	// The leader is not reaped until done is closed, so its pid (= pgid) cannot have been reused yet.
	if err := syscall.Kill(-pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopGrace):
	}
	if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return fmt.Errorf("%s ignored SIGTERM for %s and was killed", p.name, stopGrace)
	case <-time.After(stopGrace):
		return fmt.Errorf("%s did not exit after SIGKILL", p.name)
	}
}

// logTail returns the last lines of the process's log, for error messages.
func (p *process) logTail() string {
	return fileTail(p.logPath, logTailLines)
}

func fileTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitReady polls check until it succeeds, the process exits, ctx ends or timeout passes.
// The error carries the last check error and the tail of the daemon's log.
func waitReady(ctx context.Context, p *process, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var last error
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited during startup (%v), last check: %w\n--- tail of %s ---\n%s",
				p.name, p.waitErr, last, p.logPath, p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %w\n--- tail of %s ---\n%s",
				p.name, time.Since(start).Round(time.Millisecond), last, p.logPath, p.logTail())
		case <-time.After(pollInterval):
		}
	}
}

// Eventually retries f every 100 ms until it returns nil or timeout passes, and then returns f's last
// error: the wait of tests that check a converging system.
func Eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %s: %w", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// EventuallyWhile is Eventually that gives up at once when alive returns an error (a daemon the
// check depends on has died), returning that error with f's last one.
func EventuallyWhile(timeout time.Duration, alive func() error, f func() error) error {
	var dead, last error
	err := Eventually(timeout, func() error {
		if dead = alive(); dead != nil {
			return nil
		}
		last = f()
		return last
	})
	if dead != nil {
		return fmt.Errorf("gave up: %w (last check: %v)", dead, last)
	}
	return err
}

// freePorts returns n distinct TCP ports on 127.0.0.1 that were free a moment ago. All listeners stay
// open until the end so that the kernel cannot hand out the same port twice.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// stopAll stops processes in the given order and joins their errors; nil entries are skipped.
func stopAll(ps ...*process) error {
	var errs []error
	for _, p := range ps {
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	return errors.Join(errs...)
}

// Process is a child process started for a test, such as dunlin-controller or a node agent.
type Process struct{ p *process }

// StartProcess runs bin with args in its own process group, appending its output to logPath.
func StartProcess(name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	p, err := startProcess(name, logPath, env, bin, args...)
	if err != nil {
		return nil, err
	}
	return &Process{p: p}, nil
}

// Stop ends the process gracefully (SIGTERM, then SIGKILL after a grace period).
func (p *Process) Stop() error { return p.p.Stop() }

// Kill ends the process group at once with SIGKILL, as a crash would, and waits for it.
func (p *Process) Kill() error {
	if p.p.exited() {
		return nil
	}
	p.p.stopping.Store(true)
	if err := syscall.Kill(-p.p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s: %w", p.p.name, err)
	}
	select {
	case <-p.p.done:
		return nil
	case <-time.After(stopGrace):
		return fmt.Errorf("%s did not exit after SIGKILL", p.p.name)
	}
}

// Exited reports whether the process has terminated.
func (p *Process) Exited() bool { return p.p.exited() }

// LogTail returns the last lines of the process's log.
func (p *Process) LogTail(n int) string { return fileTail(p.p.logPath, n) }

// FreeLoopbackAddr returns a 127.0.0.1:PORT address that was free a moment ago, for a metrics server.
func FreeLoopbackAddr() (string, error) {
	ports, err := freePorts(1)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0]), nil
}
