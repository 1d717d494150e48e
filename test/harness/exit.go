package harness

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// errStillRunning is what WaitExit returns when the process outlives the wait.
var errStillRunning = errors.New("still running")

// Signal sends sig to the process group, as a container runtime or a terminal would, and does not wait.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.p.exited() {
		return fmt.Errorf("signal %s: %s has already exited", sig, p.p.name)
	}
	// The exit a signal from the test causes is expected, not a death (see Died).
	p.p.stopping.Store(true)
	if err := syscall.Kill(-p.p.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, p.p.name, err)
	}
	return nil
}

// WaitExit waits up to timeout for the process to end and returns how it ended: nil for exit status 0,
// the *exec.ExitError otherwise (death by a signal included), or an error saying it still runs.
func (p *Process) WaitExit(timeout time.Duration) error {
	select {
	case <-p.p.done:
		return p.p.waitErr
	case <-time.After(timeout):
		return fmt.Errorf("%s after %s: %w", p.p.name, timeout, errStillRunning)
	}
}
