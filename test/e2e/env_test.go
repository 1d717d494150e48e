// Package e2e runs the whole of Dunlin on one machine: OVN central, kube-apiserver, dunlin-controller,
// and two simulated nodes (network namespaces) each with OVS on the userspace datapath, ovn-controller,
// dunlin-node and a stand-in kubelet that invokes the installed CNI plugin through libcni. Tests send
// real packets between pods.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dunlinplugin/dunlin/test/harness"
)

var bins harness.Binaries

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: needs root (network namespaces, veths, OVS); run make test as root")
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "dle2ebin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	bins, err = harness.BuildBinaries(ctx, dir)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type env struct {
	t      *testing.T
	c      *harness.Cluster
	client kubernetes.Interface
}

func newEnv(t *testing.T, encap string) *env {
	t.Helper()
	return newClusterEnv(t, harness.ClusterOptions{EncapType: encap})
}

// newClusterEnv starts a cluster with o (Dir and Bins are filled in).
func newClusterEnv(t *testing.T, o harness.ClusterOptions) *env {
	t.Helper()
	encap := o.EncapType
	dir, err := os.MkdirTemp("/tmp", "dle")
	if err != nil {
		t.Fatal(err)
	}
	// Only a bound on a hang: real nodes also build their images, register, and roll out CoreDNS, all of
	// which a loaded machine slows down.
	limit := 3 * time.Minute
	if o.RealNodes {
		limit = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	start := time.Now()
	o.Dir = dir
	if o.Bins.Controller == "" {
		o.Bins = bins
	}
	c, err := harness.StartCluster(ctx, o)
	if err != nil {
		l := logs(dir)
		os.RemoveAll(dir)
		t.Fatalf("start cluster: %v\n%s", err, l)
	}
	t.Logf("cluster (%s) up in %s", encap, time.Since(start).Round(time.Millisecond))
	e := &env{t: t, c: c, client: c.Kube.Client}
	t.Cleanup(func() {
		// A daemon that died (an ovs-vswitchd crash above all) fails the test by name, whatever else
		// failed because of it.
		if err := c.Health(); err != nil {
			t.Errorf("a daemon died during the test:\n%v", err)
		}
		if t.Failed() {
			t.Logf("logs:\n%s", logs(dir))
		}
		if err := c.Stop(); err != nil {
			t.Logf("stop cluster: %v", err)
		}
		// With make test's -race, Dunlin's programs are race-built too (harness.GoBuildFlags).
		if err := c.DataRaces(); err != nil {
			t.Errorf("race detector in Dunlin's programs: %v", err)
		}
		os.RemoveAll(dir)
	})
	return e
}

// datapath waits until every node's ovn-controller has installed the flows for NB as it is now: a
// traffic step calls it after the NB rows it depends on exist and before its first packet. A packet
// sent earlier can be lost, or worse: a SYN to a Service VIP whose flows are not there yet is committed
// to conntrack without NAT, and every retransmission of it then misses the load balancer.
func (e *env) datapath() {
	e.t.Helper()
	if err := e.c.WaitDatapath(context.Background()); err != nil {
		e.t.Fatal(err)
	}
}

// converged waits until NB holds exactly the rows Dunlin's mapping gives for the API's objects.
func (e *env) converged() {
	e.t.Helper()
	e.eventually(60*time.Second, "NB converged", func() error { return e.c.CheckConverged(context.Background()) })
}

// logs gives the tails of the Dunlin logs under dir.
func logs(dir string) string {
	var b strings.Builder
	paths, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	more, _ := filepath.Glob(filepath.Join(dir, "node*", "*.log"))
	for _, p := range append(paths, more...) {
		if strings.Contains(p, "dunlin") || strings.Contains(p, "controller") {
			fmt.Fprintf(&b, "==> %s\n%s\n", p, tail(p, 25))
		}
	}
	return b.String()
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (e *env) node(name string) *harness.ClusterNode {
	for _, n := range e.c.Nodes {
		if n.Name == name {
			return n
		}
	}
	e.t.Fatalf("no node %s", name)
	return nil
}

// eventually retries f until it succeeds or timeout passes; it gives up at once, naming the daemon,
// when one has died, since nothing will change then.
func (e *env) eventually(timeout time.Duration, what string, f func() error) {
	e.t.Helper()
	if err := harness.EventuallyWhile(timeout, e.c.Health, f); err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

func (e *env) createPod(namespace, name, node string) {
	e.t.Helper()
	e.createPodWith(namespace, name, node, nil)
}

func (e *env) deletePod(namespace, name string) {
	e.t.Helper()
	if err := e.client.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		e.t.Fatalf("delete pod %s/%s: %v", namespace, name, err)
	}
}

// running waits until the pod is Running with an IP and its workload answers, and returns its sandbox.
func (e *env) running(namespace, name string) (*corev1.Pod, harness.Sandbox) {
	e.t.Helper()
	var pod *corev1.Pod
	var sb harness.Sandbox
	e.eventually(90*time.Second, "pod "+namespace+"/"+name+" running", func() error {
		var err error
		pod, err = e.client.CoreV1().Pods(namespace).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
			kerr := e.node(pod.Spec.NodeName).Kubelet.LastError(namespace, name)
			return fmt.Errorf("phase %q ip %q, kubelet: %v", pod.Status.Phase, pod.Status.PodIP, kerr)
		}
		var ok bool
		if sb, ok = e.node(pod.Spec.NodeName).Kubelet.Sandbox(namespace, name); !ok {
			return fmt.Errorf("no sandbox")
		}
		_, err = httpGet(sb, "http://127.0.0.1:8080/")
		return err
	})
	return pod, sb
}

// ping sends count echo requests from inside a pod; extra are ping flags.
func ping(sb harness.Sandbox, ip string, extra ...string) error {
	args := append([]string{"netns", "exec", sb.NetnsName, "ping", "-c", "2", "-i", "0.2", "-W", "5"}, extra...)
	out, err := exec.Command("ip", append(args, ip)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", ip, sb.NetnsName, err, out)
	}
	return nil
}

// httpGet fetches url from inside the pod's netns.
func httpGet(sb harness.Sandbox, url string) ([]byte, error) {
	return sb.HTTPGet(context.Background(), url, 30*time.Second)
}

// expectName checks that from reaches the pod at ip and it answers with its name.
func expectName(from harness.Sandbox, ip, name string) error {
	body, err := httpGet(from, "http://"+ip+":8080/")
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(body)); got != name {
		return fmt.Errorf("%s answered %q, want %q", ip, got, name)
	}
	return nil
}

// transfer moves n bytes from the pod at ip to from over one TCP connection and checks them.
func transfer(from harness.Sandbox, ip string, n int) (time.Duration, error) {
	start := time.Now()
	body, err := httpGet(from, fmt.Sprintf("http://%s:8080/bytes?n=%d", ip, n))
	if err != nil {
		return 0, err
	}
	if len(body) != n {
		return 0, fmt.Errorf("got %d bytes, want %d", len(body), n)
	}
	pattern := []byte("dunlin-")
	for i := 0; i+7 <= 7*1024 && i+7 <= len(body); i += 7 {
		if !bytes.Equal(body[i:i+7], pattern) {
			return 0, fmt.Errorf("corrupt data at byte %d", i)
		}
	}
	return time.Since(start), nil
}

// ovsPorts lists the pod ports on a node's br-int.
func (e *env) ovsPorts(n *harness.ClusterNode) []string {
	e.t.Helper()
	out, err := n.VSCtl("list-ports", "br-int")
	if err != nil {
		e.t.Fatal(err)
	}
	var ports []string
	for _, p := range strings.Fields(out) {
		if strings.HasPrefix(p, "dl") { // not the tunnel ports
			ports = append(ports, p)
		}
	}
	sort.Strings(ports)
	return ports
}

// veths lists the node's veths Dunlin made (dl + 13 hex).
func (e *env) veths(n *harness.ClusterNode) []string {
	e.t.Helper()
	out, err := n.Exec(context.Background(), "ip", "-o", "link", "show", "type", "veth")
	if err != nil {
		e.t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, "dl") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
