// Command demo runs the whole of Dunlin on one machine and shows pods talking: OVN central (NB, SB,
// ovn-northd), etcd and kube-apiserver, dunlin-controller, and simulated nodes (network namespaces),
// each with OVS on the userspace datapath, ovn-controller, dunlin-node and a stand-in kubelet that
// creates pod sandboxes through the installed CNI plugin. Everything is built from this tree. The demo
// creates pods, shows what an operator would look at (with the commands that produced it), sends HTTP
// and ping between every pair of pods, deletes and replaces a pod, puts a ClusterIP Service (an OVN
// load balancer) in front of the pods and sends requests to it, shows pods reaching a server outside the
// cluster through their node's gateway router and the outside reaching a NodePort on each node, resolves
// the Service's name through CoreDNS (a pod behind kube-dns) from a pod on each node, and isolates the
// pods with a default-deny NetworkPolicy and then an allow, probing after each. `make demo` runs it; with -keep
// everything stays up until Ctrl-C. Everything lives in one temporary directory, removed at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

const (
	namespace = "demo"
	podImage  = "dunlin/podserver" // never pulled: the stand-in kubelet runs test/podserver instead
	podPort   = 8080               // where podserver answers GET / with its pod name

	// Each node is a netns with its own ovsdb-server, ovs-vswitchd and ovn-controller: on a small machine
	// more than a few make startup slow without showing anything new.
	maxNodes       = 4
	maxPodsPerNode = 10

	runningTimeout = 90 * time.Second
	deleteTimeout  = 30 * time.Second
	pollInterval   = 200 * time.Millisecond
	maxListed      = 10 // pending pods or failed pairs listed in full
	logTailLines   = 20
)

type options struct {
	keep        bool
	nodes       int
	podsPerNode int
	encap       string
}

func (o options) validate() error {
	if o.nodes < 1 || o.nodes > maxNodes {
		return fmt.Errorf("-nodes %d: want 1 to %d", o.nodes, maxNodes)
	}
	if o.podsPerNode < 1 || o.podsPerNode > maxPodsPerNode {
		return fmt.Errorf("-pods-per-node %d: want 1 to %d", o.podsPerNode, maxPodsPerNode)
	}
	if o.encap != "geneve" && o.encap != "vxlan" {
		return fmt.Errorf("-encap %q: want geneve or vxlan", o.encap)
	}
	return nil
}

func main() {
	var o options
	flag.BoolVar(&o.keep, "keep", false, "keep everything running after the demo, print how to reach it, and wait for Ctrl-C")
	flag.IntVar(&o.nodes, "nodes", 2, fmt.Sprintf("number of nodes to run (1 to %d)", maxNodes))
	flag.IntVar(&o.podsPerNode, "pods-per-node", 2, fmt.Sprintf("number of pods to create on each node (1 to %d)", maxPodsPerNode))
	flag.StringVar(&o.encap, "encap", "geneve", "tunnel type between nodes: geneve or vxlan")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: run as root (network namespaces, OVS)")
		os.Exit(2)
	}
	// The daemons run in their own process groups, so a terminal's Ctrl-C reaches only us and we can
	// stop them in order.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	interrupted := ctx.Err() != nil
	stop()
	var te *teardownError
	switch {
	case err != nil && interrupted:
		// What failed because of the interruption is noise; a failed teardown is not.
		fmt.Fprintln(os.Stderr, "demo: interrupted")
		if errors.As(err, &te) {
			fmt.Fprintln(os.Stderr, "demo:", te)
		}
		os.Exit(130)
	case err != nil:
		fmt.Fprintf(os.Stderr, "demo failed: %v\n", err)
		os.Exit(1)
	}
}

// demo is what the demo started and created; teardown stops whatever is set.
type demo struct {
	o         options
	dir       string
	cluster   *harness.Cluster
	kubectl   string // path of kubectl, empty when it is not built
	pods      []*pod // grouped by node, in node order: the matrices rely on it
	serviceIP string // ClusterIP of the demo's Service, once created
	failures  []string
}

func run(ctx context.Context, o options) (err error) {
	// Short and under /tmp whatever TMPDIR says: unix socket paths inside must stay under 108 bytes.
	dir, err := os.MkdirTemp("/tmp", "dld")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	d := &demo{o: o, dir: dir}
	defer func() {
		if err != nil && ctx.Err() == nil {
			d.printLogTails()
		}
		err = errors.Join(err, d.teardown())
	}()
	fmt.Printf("Dunlin demo in %s: %d nodes, %d pods per node, %s tunnels\n", dir, o.nodes, o.podsPerNode, o.encap)

	if err := d.start(ctx); err != nil {
		return err
	}
	if err := d.createPods(ctx); err != nil {
		return err
	}
	if err := d.show(ctx); err != nil {
		return err
	}
	if err := d.connectivity(ctx); err != nil {
		return err
	}
	if err := d.replacePod(ctx); err != nil {
		return err
	}
	if err := d.service(ctx); err != nil {
		return err
	}
	if err := d.gateways(ctx); err != nil {
		return err
	}
	if err := d.dns(ctx); err != nil {
		return err
	}
	if err := d.policies(ctx); err != nil {
		return err
	}
	if len(d.failures) == 0 {
		fmt.Printf("\nAll pods reached each other, Service %s/%s from a pod and from a host, the outside from each node "+
			"and each node's NodePort from outside, and pods on every node resolved %s/%s through CoreDNS.\n", namespace, serviceName, namespace, serviceName)
	} else {
		fmt.Printf("\n%d connectivity checks failed.\n", len(d.failures))
	}
	// Kept after failures too: a running cluster is where to look for the cause.
	if o.keep {
		d.printAccess()
		<-ctx.Done()
		fmt.Println()
	}
	if len(d.failures) > 0 {
		return fmt.Errorf("%d connectivity checks failed:\n  %s", len(d.failures), strings.Join(firstN(d.failures, maxListed), "\n  "))
	}
	return nil
}

// timed prints what is being done, runs f and prints how it went.
func timed(what string, f func() error) error {
	fmt.Printf("--> %s ... ", what)
	start := time.Now()
	if err := f(); err != nil {
		fmt.Println("failed")
		return err
	}
	fmt.Printf("ok (%s)\n", time.Since(start).Round(10*time.Millisecond))
	return nil
}

func firstN(items []string, n int) []string {
	if len(items) <= n {
		return items
	}
	return append(items[:n:n], fmt.Sprintf("... and %d more", len(items)-n))
}
