package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// start builds Dunlin's programs and brings the cluster up.
func (d *demo) start(ctx context.Context) error {
	var bins harness.Binaries
	err := timed("Building dunlin-controller, dunlin-node, dunlin-cni and podserver from this tree", func() error {
		var err error
		bins, err = harness.BuildBinaries(ctx, filepath.Join(d.dir, "bin"))
		return err
	})
	if err != nil {
		return err
	}
	if err := timed("Finding CoreDNS (built once from its Go module by test/coredns/build.sh)", func() error {
		_, err := harness.CoreDNSBinary()
		return err
	}); err != nil {
		return err
	}
	what := fmt.Sprintf("Starting OVN central (NB, SB, ovn-northd), etcd and kube-apiserver, dunlin-controller, "+
		"%d nodes, each a netns with OVS (userspace datapath), ovn-controller, dunlin-node (which moves the node's uplink into br-ex) "+
		"and a stand-in kubelet, an outside netns on the nodes' underlay, and CoreDNS as a pod", d.o.nodes)
	err = timed(what, func() error {
		// StartCluster stops what it started when it fails, so only a running cluster is kept.
		c, err := harness.StartCluster(ctx, harness.ClusterOptions{Dir: d.dir, Bins: bins, Nodes: d.o.nodes, EncapType: d.o.encap,
			ControllerManager: true, Gateway: true, DNS: true})
		if err != nil {
			return fmt.Errorf("start cluster: %w", err)
		}
		d.cluster = c
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range d.cluster.Nodes {
		fmt.Printf("    %s: netns %s, node IP %s (%s), OVS database %s\n", n.Name, n.Netns, n.EncapIP, n.UnderlayIf, n.OVSDB)
	}
	fmt.Printf("    outside: netns %s, IP %s, the nodes' default next hop\n", d.cluster.Outside.Netns, d.cluster.Outside.IP)
	// kubectl only shows things; the cluster needs just the servers, `make demo` builds kubectl too.
	if k := filepath.Join(d.cluster.Kube.BinDir, "kubectl"); fileExists(k) {
		d.kubectl = k
	} else {
		fmt.Printf("    (no kubectl in %s, showing pods from the API instead; test/kubebin/build.sh kubectl builds it)\n", d.cluster.Kube.BinDir)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// waitFor calls check until it returns nil. It gives up after timeout with fail(last check error), and
// early when dunlin-controller or a dunlin-node exits, because then nothing will change.
func (d *demo) waitFor(ctx context.Context, timeout time.Duration, check func() error, fail func(last error) error) error {
	deadline := time.Now().Add(timeout)
	for {
		last := check()
		if last == nil {
			return nil
		}
		if err := d.daemonExited(); err != nil {
			return fmt.Errorf("%w (last check: %v)", err, last)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s: %w", timeout, fail(last))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting stopped: %w", ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

func (d *demo) daemonExited() error {
	if d.cluster.Controller.Exited() {
		return errors.New("dunlin-controller exited")
	}
	for _, n := range d.cluster.Nodes {
		if n.Agent != nil && n.Agent.Exited() {
			return fmt.Errorf("dunlin-node on %s exited", n.Name)
		}
	}
	return nil
}

// printLogTails shows the ends of Dunlin's logs after a failure, since teardown removes them.
func (d *demo) printLogTails() {
	logs := []string{filepath.Join(d.dir, "controller.log")}
	more, _ := filepath.Glob(filepath.Join(d.dir, "node*", "dunlin-node.log"))
	for _, path := range append(logs, more...) {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "\n--- last lines of %s ---\n%s\n", path, lastLines(string(b), logTailLines))
	}
}

func (d *demo) teardown() error {
	err := timed("Tearing down: the pods (CNI DEL), each node's kubelet, dunlin-node, ovn-controller and OVS, "+
		"dunlin-controller, kube-apiserver and etcd, OVN, "+d.dir, func() error {
		var errs []error
		if d.cluster != nil {
			errs = append(errs, d.cluster.Stop())
		}
		errs = append(errs, os.RemoveAll(d.dir))
		return errors.Join(errs...)
	})
	if err != nil {
		return &teardownError{err}
	}
	return nil
}

// teardownError is a failure to stop something or remove the directory: processes, network namespaces
// or files may be left behind, which the user must hear about even after an interruption.
type teardownError struct{ err error }

func (e *teardownError) Error() string { return "teardown: " + e.err.Error() }
func (e *teardownError) Unwrap() error { return e.err }
