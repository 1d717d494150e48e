// Command demo runs Dunlin on one machine: OVN central (NB, SB, ovn-northd), etcd and kube-apiserver,
// and dunlin-controller built from this tree. It creates Nodes and pods through the Kubernetes API and
// shows what an operator would look at, with the commands that produced it. `make demo` runs it; with
// -keep everything stays up until Ctrl-C. Everything lives in one temporary directory, removed at the end.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

const (
	module      = "github.com/dunlinplugin/dunlin"
	namespace   = "demo"
	clusterCIDR = "10.244.0.0/16"
	subnetBits  = "24"
	serviceCIDR = "10.96.0.0/16"
	podImage    = "registry.k8s.io/pause:3.10" // never pulled: there is no kubelet

	readyTimeout    = 30 * time.Second
	convergeTimeout = 60 * time.Second
	pollInterval    = 200 * time.Millisecond
	maxPending      = 10 // pending items listed in a convergence error
	logTailLines    = 15
)

type options struct {
	keep        bool
	nodes       int
	podsPerNode int
}

func (o options) validate() error {
	if o.nodes < 1 || o.nodes > 100 {
		return fmt.Errorf("-nodes %d: want 1 to 100", o.nodes)
	}
	if o.podsPerNode < 1 || o.podsPerNode > 100 {
		return fmt.Errorf("-pods-per-node %d: want 1 to 100", o.podsPerNode)
	}
	return nil
}

func main() {
	var o options
	flag.BoolVar(&o.keep, "keep", false, "keep everything running after the demo, print how to reach it, and wait for Ctrl-C")
	flag.IntVar(&o.nodes, "nodes", 2, "number of Nodes to create")
	flag.IntVar(&o.podsPerNode, "pods-per-node", 3, "number of pods to create on each Node")
	flag.Parse()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
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

// env is what the demo started; teardown stops whatever is set.
type env struct {
	dir     string
	ctrlBin string
	ctrlLog string
	metrics string // host:port of the controller's /metrics
	kubectl string // path of kubectl, empty when it is not built
	ovn     *harness.OVN
	kube    *harness.Kube
	ctrl    *harness.Process
}

func run(ctx context.Context, o options) (err error) {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	// Short, because the OVN unix socket paths inside must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "dunlin-demo")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	e := &env{dir: dir, ctrlBin: filepath.Join(dir, "dunlin-controller"), ctrlLog: filepath.Join(dir, "controller.log")}
	defer func() { err = errors.Join(err, e.teardown()) }()
	fmt.Printf("Dunlin demo in %s\n", dir)

	if err := e.start(ctx, root); err != nil {
		return err
	}
	p := newPlan(o)
	if err := e.create(ctx, p); err != nil {
		return err
	}
	if err := timed(fmt.Sprintf("Waiting for node subnets, pod annotations and NB ports of %d pods", len(p.networked())),
		func() error { return e.waitConverged(ctx, p) }); err != nil {
		return err
	}
	if err := e.show(ctx, p); err != nil {
		return err
	}
	if err := e.deletePodDemo(ctx, p); err != nil {
		return err
	}
	if o.keep {
		e.printAccess()
		<-ctx.Done()
		fmt.Println()
	}
	return nil
}

func (e *env) printCommand(argv []string) { fmt.Println("$ " + shellJoin(argv)) }

func printIndented(s string) {
	if s == "" {
		fmt.Println("  (empty)")
		return
	}
	for _, line := range strings.Split(s, "\n") {
		fmt.Println("  " + line)
	}
}

// shellJoin quotes argv so that it can be pasted into a shell.
func shellJoin(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}

func shellQuote(s string) string {
	safe := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r)
	}
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool { return !safe(r) }) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (e *env) printAccess() {
	heading("Everything keeps running until Ctrl-C; in another shell:")
	fmt.Printf("  export OVN_NB_DB=%s\n", e.ovn.NBAddr)
	fmt.Printf("  export OVN_SB_DB=%s\n", e.ovn.SBAddr)
	fmt.Printf("  export KUBECONFIG=%s\n", e.kube.Kubeconfig)
	if e.kubectl != "" {
		fmt.Printf("  export PATH=%s:$PATH   # kubectl %s\n", filepath.Dir(e.kubectl), e.kubectl)
	}
	fmt.Println("  ovn-nbctl show; ovn-sbctl show; kubectl get nodes,pods -A")
	fmt.Println()
	fmt.Printf("  NB over TCP:      %s\n", e.ovn.NBTCPAddr)
	fmt.Printf("  controller log:   %s\n", e.ctrlLog)
	fmt.Printf("  metrics:          http://%s/metrics  (also /healthz, /readyz)\n", e.metrics)
	fmt.Printf("  other logs:       %s/ovn/*.log, %s/kube/*.log\n", e.dir, e.dir)
	fmt.Println("\nPress Ctrl-C to tear everything down.")
}
