package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// A daemon that dies on its own, rather than through Stop or Kill, is reported by name, with the lines
// of its log that say why. The case this exists for: ovs-vswitchd of Debian's OVS 3.1 on the userspace
// datapath aborts on an assertion in lib/conntrack.c when a client reuses a source address and port on
// a connection OVN committed with NAT (see shared/notes/real-ovn-on-one-machine.md). Unreported, that
// crash looks like a flaky connectivity failure.

// DatapathTimeout bounds WaitDatapath: generous, since on a loaded machine northd and every
// ovn-controller recompute in turn.
const DatapathTimeout = 2 * time.Minute

// maxCrashLines is how many of a log's crash lines an error quotes.
const maxCrashLines = 4

// died describes the process's death, or is nil while it runs or after it was stopped on purpose.
func (p *process) died() error {
	if p == nil || !p.exited() || p.stopping.Load() {
		return nil
	}
	return fmt.Errorf("%s\n--- tail of %s ---\n%s", p.deathLine(), p.logPath, p.logTail())
}

// deathLine is one line naming the process, how it ended and, when its log tells, why.
func (p *process) deathLine() string {
	msg := fmt.Sprintf("%s DIED (%v)", p.name, p.waitErr)
	if crash := crashLines(p.logPath); len(crash) > 0 {
		msg += ": " + strings.Join(crash, " / ")
	}
	if strings.Contains(msg, "conntrack") && strings.Contains(p.name, "ovs-vswitchd") {
		msg += " [the OVS 3.1 userspace conntrack crash: a client reused a source address and port on a NATed connection]"
	}
	return msg
}

// reportDeath prints a daemon's unexpected death on stderr as soon as it happens, so that it shows in a
// test's output next to whatever failure it causes, even when the test never asks for Health.
func (p *process) reportDeath() {
	if !p.stopping.Load() {
		fmt.Fprintf(os.Stderr, "\nHARNESS: %s\n", p.deathLine())
	}
}

// crashLines returns the lines of a log that tell why a daemon died: OVS's emergency messages and
// failed assertions, the signal it ended with, Go's panics and fatal errors.
func crashLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "|EMER|") || strings.Contains(l, "assertion") ||
			strings.Contains(l, "terminating with signal") || strings.HasPrefix(l, "panic: ") ||
			strings.HasPrefix(l, "fatal error: ") {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	if len(lines) > maxCrashLines {
		lines = lines[len(lines)-maxCrashLines:]
	}
	return lines
}

// Died describes the process's death with the tail of its log, or is nil while it runs or after
// Stop or Kill.
func (p *Process) Died() error { return p.p.died() }

// Health is nil while every daemon of the node that was not stopped on purpose runs; otherwise it
// names the dead ones and why (an ovs-vswitchd crash included).
func (n *Node) Health() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return nil
	}
	return errors.Join(n.ovsdb.died(), n.vswitchd.died(), n.controller.died())
}

// Health is nil while NB (and SB and northd when started) run, unless stopped on purpose.
func (o *OVN) Health() error {
	return errors.Join(o.nb.died(), o.sb.died(), o.northd.died())
}

// Health is nil while etcd, kube-apiserver and kube-controller-manager (when started) run.
func (k *Kube) Health() error {
	return errors.Join(k.etcd.died(), k.apiserver.died(), k.kcm.died(), k.scheduler.died())
}

// Health is nil while every daemon of the cluster runs, unless stopped on purpose; otherwise it names
// each dead one and why. Tests call it when something fails, so that a crash is not mistaken for a
// connectivity problem.
func (c *Cluster) Health() error {
	var errs []error
	if c.OVN != nil {
		errs = append(errs, c.OVN.Health())
	}
	if c.Kube != nil {
		errs = append(errs, c.Kube.Health())
	}
	if c.Controller != nil {
		errs = append(errs, c.Controller.Died())
	}
	for _, n := range c.Nodes {
		errs = append(errs, n.Node.Health())
		if n.Agent != nil {
			errs = append(errs, n.Agent.Died())
		}
		if n.Containerd != nil {
			errs = append(errs, n.Containerd.proc.died())
		}
		if n.RealKubelet != nil {
			errs = append(errs, n.RealKubelet.proc.died())
		}
	}
	return errors.Join(errs...)
}

// WaitHV runs `ovn-nbctl --wait=hv sync`: it returns once every chassis's ovn-controller has processed
// NB as it is now and installed the flows for it (NB_Global hv_cfg has caught up with nb_cfg). A
// traffic test calls it once the NB rows it depends on exist, before its first packet: rows in NB are
// not yet flows on the nodes. It needs SB and northd, and an ovn-controller running for every chassis
// in SB. On a timeout the error says which chassis lag.
func (o *OVN) WaitHV(ctx context.Context, timeout time.Duration) error {
	secs := max(1, int(timeout.Seconds()))
	ctx, cancel := context.WithTimeout(ctx, timeout+10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ovn-nbctl", "--db="+o.NBAddr, "--timeout="+strconv.Itoa(secs), "--wait=hv", "sync")
	cmd.Env = append(os.Environ(), o.env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	cfg, _ := o.NBCtl("--columns=nb_cfg,sb_cfg,hv_cfg", "list", "NB_Global")
	var chassis string
	if o.SBAddr != "" {
		chassis, _ = o.SBCtl("--columns=name,nb_cfg", "list", "Chassis_Private")
	}
	return fmt.Errorf("ovn-nbctl --wait=hv sync (every chassis to install flows for NB): %w: %s\nNB_Global:\n%s\nChassis_Private:\n%s",
		err, strings.TrimSpace(string(out)), cfg, chassis)
}

// WaitDatapath waits until every node's ovn-controller has installed the flows for NB as it is now
// (see OVN.WaitHV), up to DatapathTimeout; it fails at once, naming the crash, when a daemon has died.
func (c *Cluster) WaitDatapath(ctx context.Context) error {
	if err := c.Health(); err != nil {
		return fmt.Errorf("wait for the datapath: %w", err)
	}
	if err := c.OVN.WaitHV(ctx, DatapathTimeout); err != nil {
		return errors.Join(err, c.Health())
	}
	return nil
}

// DataRacesIn returns the race detector's reports ("WARNING: DATA RACE" blocks) in the logs at paths,
// written by programs built with -race (GoBuildFlags), or nil when there are none.
func DataRacesIn(paths ...string) error {
	var reports []string
	for _, path := range paths {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		const sep = "=================="
		for _, block := range strings.Split(string(b), sep) {
			if strings.Contains(block, "WARNING: DATA RACE") {
				reports = append(reports, fmt.Sprintf("--- %s ---\n%s%s%s", path, sep, block, sep))
			}
		}
	}
	if len(reports) == 0 {
		return nil
	}
	return fmt.Errorf("%d data race reports:\n%s", len(reports), strings.Join(reports, "\n"))
}

// DataRaces returns the race detector's reports in the logs of dunlin-controller, every dunlin-node
// and every pod server, or nil when there are none (always, unless built with -race).
func (c *Cluster) DataRaces() error {
	paths := []string{filepath.Join(c.Dir, "controller.log")}
	for _, n := range c.Nodes {
		pods, _ := filepath.Glob(filepath.Join(n.Dir, "pods", "*.log"))
		paths = append(append(paths, n.AgentLog), pods...)
	}
	return DataRacesIn(paths...)
}
