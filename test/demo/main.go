// Command demo runs Dunlin on one machine: OVN central (NB, SB, ovn-northd), etcd and kube-apiserver,
// and dunlin-controller built from this tree. It creates Nodes and pods through the Kubernetes API and
// shows what an operator would look at, with the commands that produced it. `make demo` runs it; with
// -keep everything stays up until Ctrl-C. Everything lives in one temporary directory, removed at the end.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/annotations"
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

// repoRoot finds the module root from this file's location (go run keeps absolute source paths), else
// by walking up from the working directory.
func repoRoot() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if dir := filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..")); isRepoRoot(dir) {
			return dir, nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isRepoRoot(dir) {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("no go.mod of %s above %s: run the demo from the repository", module, wd)
		}
	}
}

func isRepoRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == module
		}
	}
	return false
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

func heading(title string) { fmt.Printf("\n=== %s ===\n", title) }

// start builds the controller while the servers start (linking takes seconds), then runs it.
func (e *env) start(ctx context.Context, root string) error {
	buildCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	built := make(chan error, 1)
	go func() { built <- buildController(buildCtx, root, e.ctrlBin) }()
	fmt.Printf("--> Building dunlin-controller from %s in the background\n", root)

	serversErr := e.startServers(ctx)
	if serversErr != nil {
		cancel()
	}
	// Wait even after a failure, so that teardown does not remove the directory under the build.
	var buildErr error
	if serversErr == nil {
		buildErr = timed("Waiting for the dunlin-controller build", func() error { return <-built })
	} else {
		<-built
	}
	if err := errors.Join(serversErr, buildErr); err != nil {
		return err
	}
	return timed("Starting dunlin-controller (ready = startup sync done, NB connected)",
		func() error { return e.startController(ctx) })
}

func buildController(ctx context.Context, root, bin string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/dunlin-controller")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/dunlin-controller: %w\n%s", err, out)
	}
	return nil
}

func (e *env) startServers(ctx context.Context) error {
	err := timed("Starting OVN: NB and SB ovsdb-server, ovn-northd", func() error {
		var err error
		e.ovn, err = harness.StartOVN(ctx, harness.OVNOptions{Dir: filepath.Join(e.dir, "ovn"), WithSB: true})
		return err
	})
	if err != nil {
		return err
	}
	err = timed("Starting etcd and kube-apiserver", func() error {
		var err error
		e.kube, err = harness.StartKube(ctx, harness.KubeOptions{Dir: filepath.Join(e.dir, "kube"), ServiceCIDR: serviceCIDR})
		return err
	})
	if err != nil {
		return err
	}
	// kubectl only shows things; StartKube builds just the servers, `make demo` builds kubectl too.
	if k := filepath.Join(e.kube.BinDir, "kubectl"); fileExists(k) {
		e.kubectl = k
	} else {
		fmt.Printf("    (no kubectl in %s, skipping kubectl output; test/kubebin/build.sh kubectl builds it)\n", e.kube.BinDir)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (e *env) startController(ctx context.Context) error {
	addr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	e.metrics = addr
	e.ctrl, err = harness.StartProcess("dunlin-controller", e.ctrlLog, nil, e.ctrlBin,
		"--kubeconfig", e.kube.Kubeconfig,
		"--nb-address", e.ovn.NBAddr,
		"--metrics-bind-address", e.metrics,
		"--leader-elect=false",
		"--cluster-cidr", clusterCIDR,
		"--node-subnet-prefix", subnetBits,
		"--service-cidr", serviceCIDR,
	)
	if err != nil {
		return fmt.Errorf("start dunlin-controller: %w", err)
	}
	url := "http://" + e.metrics + "/readyz"
	return e.poll(ctx, readyTimeout, func() error { return httpOK(ctx, url) },
		func(last error) error { return fmt.Errorf("dunlin-controller not ready: %w", last) })
}

func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func httpOK(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// poll calls check until it returns nil. On timeout it returns fail(last check error); it stops early
// when the controller exits or ctx ends. Either way the error carries the controller's log tail,
// because that log is where the reason is.
func (e *env) poll(ctx context.Context, timeout time.Duration, check func() error, fail func(last error) error) error {
	deadline := time.Now().Add(timeout)
	for {
		last := check()
		if last == nil {
			return nil
		}
		switch {
		case e.ctrl != nil && e.ctrl.Exited():
			return fmt.Errorf("dunlin-controller exited (last check: %v)%s", last, e.ctrlLogTail())
		case time.Now().After(deadline):
			return fmt.Errorf("gave up after %s: %w%s", timeout, fail(last), e.ctrlLogTail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting stopped: %w", ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

func (e *env) ctrlLogTail() string {
	if e.ctrl == nil {
		return ""
	}
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", e.ctrlLog, e.ctrl.LogTail(logTailLines))
}

func (e *env) teardown() error {
	err := timed("Tearing down: dunlin-controller, kube-apiserver and etcd, OVN, "+e.dir, func() error {
		var errs []error
		// The controller first, so that it does not log its servers vanishing.
		if e.ctrl != nil {
			errs = append(errs, e.ctrl.Stop())
		}
		if e.kube != nil {
			errs = append(errs, e.kube.Stop())
		}
		if e.ovn != nil {
			errs = append(errs, e.ovn.Stop())
		}
		errs = append(errs, os.RemoveAll(e.dir))
		return errors.Join(errs...)
	})
	if err != nil {
		return &teardownError{err}
	}
	return nil
}

// teardownError is a failure to stop something or remove the directory: processes or files may be
// left behind, which the user must hear about even after an interruption.
type teardownError struct{ err error }

func (e *teardownError) Error() string { return "teardown: " + e.err.Error() }
func (e *teardownError) Unwrap() error { return e.err }

// demoPod is a pod the demo creates.
type demoPod struct {
	name, node  string
	hostNetwork bool
}

// portName is the pod's logical switch port (translator.PodPortName, not imported to keep the demo
// an outside view).
func (p demoPod) portName() string { return namespace + "_" + p.name }

// plan is the Nodes and pods the demo creates.
type plan struct {
	nodes []string
	pods  []demoPod
}

func newPlan(o options) plan {
	var p plan
	for i := range o.nodes {
		suffix := letters(i)
		node := "node-" + suffix
		p.nodes = append(p.nodes, node)
		for j := 1; j <= o.podsPerNode; j++ {
			p.pods = append(p.pods, demoPod{name: fmt.Sprintf("pod-%s-%d", suffix, j), node: node})
		}
	}
	// A host-network pod uses the node's own network: Dunlin gives it no address and no port.
	p.pods = append(p.pods, demoPod{name: "hostnet-a", node: p.nodes[0], hostNetwork: true})
	return p
}

// letters names index i as a, b, ..., z, aa, ab, ...
func letters(i int) string {
	s := ""
	for i++; i > 0; i = (i - 1) / 26 {
		s = string(rune('a'+(i-1)%26)) + s
	}
	return s
}

func (p plan) networked() []demoPod {
	var out []demoPod
	for _, pod := range p.pods {
		if !pod.hostNetwork {
			out = append(out, pod)
		}
	}
	return out
}

func (e *env) create(ctx context.Context, p plan) error {
	return timed(fmt.Sprintf("Creating namespace %s, %d Nodes and %d pods (one with hostNetwork)", namespace, len(p.nodes), len(p.pods)),
		func() error {
			if err := e.createNamespace(ctx); err != nil {
				return err
			}
			for _, n := range p.nodes {
				node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"kubernetes.io/hostname": n}}}
				if _, err := e.kube.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
					return fmt.Errorf("create node %s: %w", n, err)
				}
			}
			for _, pod := range p.pods {
				if err := e.createPod(ctx, pod); err != nil {
					return err
				}
			}
			return nil
		})
}

// createNamespace also creates its "default" ServiceAccount: ServiceAccount admission rejects pods
// without it, and there is no controller manager here to create it.
func (e *env) createNamespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := e.kube.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := e.kube.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service account %s/default: %w", namespace, err)
	}
	return nil
}

// createPod sets spec.nodeName itself: there is no scheduler (and no kubelet, so it never runs).
func (e *env) createPod(ctx context.Context, p demoPod) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: namespace},
		Spec: corev1.PodSpec{
			NodeName:    p.node,
			HostNetwork: p.hostNetwork,
			Containers:  []corev1.Container{{Name: "main", Image: podImage}},
		},
	}
	if _, err := e.kube.Client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod %s/%s: %w", namespace, p.name, err)
	}
	return nil
}

// waitConverged waits until every Node has a subnet and every networked pod has its annotation and a
// port in NB with the annotation's addresses.
func (e *env) waitConverged(ctx context.Context, p plan) error {
	var pending []string
	check := func() error {
		var err error
		pending, err = e.notConverged(ctx, p)
		if err != nil {
			return err
		}
		if len(pending) > 0 {
			return errors.New(pending[0])
		}
		return nil
	}
	return e.poll(ctx, convergeTimeout, check, func(last error) error {
		if len(pending) == 0 {
			return fmt.Errorf("cannot check convergence: %w", last)
		}
		return fmt.Errorf("%d items did not converge:\n  %s", len(pending), strings.Join(firstN(pending, maxPending), "\n  "))
	})
}

func firstN(items []string, n int) []string {
	if len(items) <= n {
		return items
	}
	return append(slices.Clone(items[:n]), fmt.Sprintf("... and %d more", len(items)-n))
}

// notConverged lists, in words, what is not there yet.
func (e *env) notConverged(ctx context.Context, p plan) ([]string, error) {
	nodes, err := e.nodeSubnets(ctx)
	if err != nil {
		return nil, err
	}
	pods, err := e.podNetworks(ctx)
	if err != nil {
		return nil, err
	}
	ports, err := e.portAddresses()
	if err != nil {
		return nil, err
	}
	var pending []string
	for _, n := range p.nodes {
		if nodes[n] == "" {
			pending = append(pending, fmt.Sprintf("node %s: no %s annotation", n, annotations.NodeSubnet))
		}
	}
	for _, pod := range p.networked() {
		if msg := podPending(pod, pods, ports); msg != "" {
			pending = append(pending, fmt.Sprintf("pod %s/%s: %s", namespace, pod.name, msg))
		}
	}
	return pending, nil
}

func podPending(pod demoPod, pods map[string]podNetwork, ports map[string]string) string {
	pn := pods[pod.name]
	switch {
	case pn.raw == "":
		return "no " + annotations.PodNetwork + " annotation"
	case pn.err != nil:
		return pn.err.Error()
	}
	want := pn.info.MACAddress + " " + pn.info.Prefix().Addr().String()
	got, ok := ports[pod.portName()]
	switch {
	case !ok:
		return "no logical switch port " + pod.portName() + " in NB"
	case got != want:
		return fmt.Sprintf("port %s has addresses %q, the annotation says %q", pod.portName(), got, want)
	}
	return ""
}

// nodeSubnets returns each Node's dunlin.io/node-subnet annotation ("" if none).
func (e *env) nodeSubnets(ctx context.Context) (map[string]string, error) {
	list, err := e.kube.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := make(map[string]string, len(list.Items))
	for _, n := range list.Items {
		out[n.Name] = n.Annotations[annotations.NodeSubnet]
	}
	return out, nil
}

// podNetwork is a pod as the demo reports it: its node and its parsed annotation.
type podNetwork struct {
	node string
	raw  string // the annotation, "" if none
	info annotations.PodNetworkInfo
	err  error // from parsing raw
}

func (e *env) podNetworks(ctx context.Context) (map[string]podNetwork, error) {
	list, err := e.kube.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	out := make(map[string]podNetwork, len(list.Items))
	for _, p := range list.Items {
		pn := podNetwork{node: p.Spec.NodeName, raw: p.Annotations[annotations.PodNetwork]}
		if pn.raw != "" {
			pn.info, pn.err = annotations.ParsePodNetwork(pn.raw)
		}
		out[p.Name] = pn
	}
	return out, nil
}

// portAddresses returns the addresses column of every logical switch port by name, in one ovn-nbctl
// call rather than an lsp-get-addresses per pod.
func (e *env) portAddresses() (map[string]string, error) {
	out, err := e.ovn.NBCtl("--format=csv", "--data=bare", "--no-headings", "--columns=name,addresses", "list", "Logical_Switch_Port")
	if err != nil {
		return nil, err
	}
	ports := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, addrs, ok := strings.Cut(line, ","); ok {
			ports[name] = addrs
		}
	}
	return ports, nil
}

func (e *env) show(ctx context.Context, p plan) error {
	heading("The OVN northbound database, as dunlin-controller wrote it")
	if err := e.runNBCtl("show"); err != nil {
		return err
	}
	heading("Pods (from their " + annotations.PodNetwork + " annotation, read through the Kubernetes API)")
	if err := e.podTable(ctx, p); err != nil {
		return err
	}
	fmt.Println("# the same data with kubectl:")
	e.printCommand(e.kubectlCommand("-n", namespace, "get", "pods", "-o",
		`custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,NETWORK:.metadata.annotations.dunlin\.io/pod-network`))
	heading("Node subnets: the Node annotation and the node's logical switch")
	if e.kubectl != "" {
		if err := e.runKubectl(ctx, "get", "nodes", "-o",
			`custom-columns=NAME:.metadata.name,SUBNET:.metadata.annotations.dunlin\.io/node-subnet`); err != nil {
			return err
		}
	}
	return e.runNBCtl("--format=table", "--columns=name,other_config", "list", "Logical_Switch")
}

func (e *env) podTable(ctx context.Context, p plan) error {
	pods, err := e.podNetworks(ctx)
	if err != nil {
		return err
	}
	ports, err := e.portAddresses()
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  POD\tNODE\tIP\tMAC\tNB PORT")
	for _, pod := range p.pods {
		pn := pods[pod.name]
		ip, mac := "-", "-"
		if pn.raw != "" && pn.err == nil {
			ip, mac = pn.info.IPAddress, pn.info.MACAddress
		}
		port := "-"
		if _, ok := ports[pod.portName()]; ok {
			port = pod.portName()
		}
		// A host-network pod should have no annotation; show one if it has.
		if pod.hostNetwork && pn.raw == "" {
			ip, mac = "(hostNetwork)", "(hostNetwork)"
		}
		fmt.Fprintf(w, "  %s/%s\t%s\t%s\t%s\t%s\n", namespace, pod.name, pn.node, ip, mac, port)
	}
	return w.Flush()
}

// deletePodDemo deletes the last pod of the first node and shows its port going away.
func (e *env) deletePodDemo(ctx context.Context, p plan) error {
	victim := p.networked()[0]
	for _, pod := range p.networked() {
		if pod.node == victim.node {
			victim = pod
		}
	}
	heading(fmt.Sprintf("Deleting pod %s/%s removes its port from switch %s", namespace, victim.name, victim.node))
	if err := e.runNBCtl("lsp-list", victim.node); err != nil {
		return err
	}
	// Grace period 0: without a kubelet, a graceful delete would never complete.
	fmt.Println("# deleting through the Kubernetes API, as this kubectl command would:")
	e.printCommand(e.kubectlCommand("-n", namespace, "delete", "pod", victim.name, "--grace-period=0", "--force"))
	zero := int64(0)
	if err := e.kube.Client.CoreV1().Pods(namespace).Delete(ctx, victim.name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, victim.name, err)
	}
	start := time.Now()
	err := e.poll(ctx, convergeTimeout, func() error {
		ports, err := e.portAddresses()
		if err != nil {
			return err
		}
		if _, ok := ports[victim.portName()]; ok {
			return fmt.Errorf("port %s is still in NB", victim.portName())
		}
		return nil
	}, func(last error) error { return fmt.Errorf("pod %s/%s deleted: %w", namespace, victim.name, last) })
	if err != nil {
		return err
	}
	fmt.Printf("# port %s left NB %s after the delete:\n", victim.portName(), time.Since(start).Round(10*time.Millisecond))
	return e.runNBCtl("lsp-list", victim.node)
}

// nbctlCommand is the ovn-nbctl command line a user can run to see the same (harness.OVN.NBCtl adds
// the same --db, and a --timeout).
func (e *env) nbctlCommand(args ...string) []string {
	return append([]string{"ovn-nbctl", "--db=" + e.ovn.NBAddr}, args...)
}

func (e *env) kubectlCommand(args ...string) []string {
	kubectl := e.kubectl
	if kubectl == "" {
		kubectl = "kubectl"
	}
	return append([]string{kubectl, "--kubeconfig", e.kube.Kubeconfig}, args...)
}

func (e *env) runNBCtl(args ...string) error {
	e.printCommand(e.nbctlCommand(args...))
	out, err := e.ovn.NBCtl(args...)
	if err != nil {
		return err
	}
	printIndented(out)
	return nil
}

func (e *env) runKubectl(ctx context.Context, args ...string) error {
	argv := e.kubectlCommand(args...)
	e.printCommand(argv)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	printIndented(strings.TrimRight(string(out), "\n"))
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
