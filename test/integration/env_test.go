// Package integration runs dunlin-controller, built from this tree, against a real NB ovsdb-server and
// a real kube-apiserver + etcd, and checks NB through ovn-nbctl.
package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// controllerBin is the dunlin-controller binary built once for the package.
var controllerBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dlbin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	controllerBin = filepath.Join(dir, "dunlin-controller")
	if bin := os.Getenv("DUNLIN_CONTROLLER_BIN"); bin != "" {
		controllerBin = bin
		// Another build (an older release, to show a test failing before its fix, or to test upgrades).
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	// With make test's -race, the controller is race-built too; its reports fail the test (see cleanup).
	build := exec.Command("go", append(harness.GoBuildFlags(), "-o", controllerBin, "./cmd/dunlin-controller")...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build dunlin-controller: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is a real NB, a real apiserver, and a dunlin-controller process.
type cluster struct {
	t       *testing.T
	dir     string
	ovn     *harness.OVN
	kube    *harness.Kube
	client  kubernetes.Interface
	ctrl    *harness.Process
	flags   []string
	metrics string
}

func newCluster(t *testing.T, flags ...string) *cluster {
	t.Helper()
	return newClusterWith(t, harness.OVNOptions{}, flags...)
}

// newClusterWith is newCluster with OVN central as o says (WithSB: also SB and ovn-northd, for tests
// that read logical flows).
func newClusterWith(t *testing.T, o harness.OVNOptions, flags ...string) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "dl")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, flags: flags}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("controller log tail:\n%s", tail(filepath.Join(dir, "controller.log"), 40))
		}
		c.stopController()
		if err := harness.DataRacesIn(filepath.Join(dir, "controller.log")); err != nil {
			t.Errorf("dunlin-controller: %v", err)
		}
		if c.kube != nil {
			c.kube.Stop()
		}
		if c.ovn != nil {
			c.ovn.Stop()
		}
		os.RemoveAll(dir)
	})
	o.Dir = filepath.Join(dir, "ovn")
	if c.ovn, err = harness.StartOVN(ctx, o); err != nil {
		t.Fatal(err)
	}
	if c.kube, err = harness.StartKube(ctx, harness.KubeOptions{Dir: filepath.Join(dir, "kube")}); err != nil {
		t.Fatal(err)
	}
	c.client = c.kube.Client
	c.startController()
	return c
}

func (c *cluster) startController() {
	c.t.Helper()
	if c.metrics == "" {
		c.metrics = freeAddr(c.t)
	}
	args := append([]string{
		"--kubeconfig", c.kube.Kubeconfig,
		"--nb-address", c.ovn.NBAddr,
		"--metrics-bind-address", c.metrics,
		"--leader-elect=false",
		"-v=2",
	}, c.flags...)
	p, err := harness.StartProcess("dunlin-controller", filepath.Join(c.dir, "controller.log"), nil, controllerBin, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.ctrl = p
}

func (c *cluster) stopController() {
	if c.ctrl != nil {
		c.ctrl.Stop()
		c.ctrl = nil
	}
}

// killController ends the controller with SIGKILL, as a crash or an OOM kill would.
func (c *cluster) killController() {
	if c.ctrl != nil {
		c.ctrl.Kill()
		c.ctrl = nil
	}
}

func (c *cluster) nbctl(args ...string) string {
	c.t.Helper()
	out, err := c.ovn.NBCtl(args...)
	if err != nil {
		c.t.Fatalf("ovn-nbctl %v: %v", args, err)
	}
	return out
}

// eventually retries f until it returns nil or the timeout passes.
func (c *cluster) eventually(timeout time.Duration, what string, f func() error) {
	c.t.Helper()
	if err := harness.Eventually(timeout, f); err != nil {
		c.t.Fatalf("%s: %v", what, err)
	}
}

func (c *cluster) createNode(name string, mutate ...func(*corev1.Node)) *corev1.Node {
	c.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, m := range mutate {
		m(n)
	}
	n, err := c.client.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatalf("create node %s: %v", name, err)
	}
	return n
}

func (c *cluster) createPod(ns, name, node string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	c.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{NodeName: node,
			Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/pause:1"}}},
	}
	for _, m := range mutate {
		m(p)
	}
	p, err := c.client.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	return p
}

func (c *cluster) deletePod(ns, name string) {
	c.t.Helper()
	zero := int64(0)
	if err := c.client.CoreV1().Pods(ns).Delete(context.Background(), name,
		metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		c.t.Fatalf("delete pod %s/%s: %v", ns, name, err)
	}
}

func (c *cluster) pod(ns, name string) *corev1.Pod {
	c.t.Helper()
	p, err := c.client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatalf("get pod %s/%s: %v", ns, name, err)
	}
	return p
}

// podNetwork returns the pod's parsed annotation, or an error while it has none.
func (c *cluster) podNetwork(ns, name string) (annotations.PodNetworkInfo, error) {
	p := c.pod(ns, name)
	s, ok := p.Annotations[annotations.PodNetwork]
	if !ok {
		return annotations.PodNetworkInfo{}, fmt.Errorf("pod %s/%s has no %s", ns, name, annotations.PodNetwork)
	}
	return annotations.ParsePodNetwork(s)
}

// lspNames lists the names of all logical switch ports.
func (c *cluster) lspNames() []string {
	c.t.Helper()
	out := c.nbctl("--bare", "--columns=name", "list", "Logical_Switch_Port")
	var names []string
	for _, f := range strings.Fields(out) {
		names = append(names, f)
	}
	sort.Strings(names)
	return names
}

// warning waits for a Warning event with reason on the named object.
func (c *cluster) warning(ns, name, reason string) *corev1.Event {
	c.t.Helper()
	var found *corev1.Event
	c.eventually(30*time.Second, "Warning "+reason+" on "+name, func() error {
		sel := fields.Set{"involvedObject.name": name, "reason": reason, "type": corev1.EventTypeWarning}.AsSelector()
		evs, err := c.client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: sel.String()})
		if err != nil {
			return err
		}
		if len(evs.Items) == 0 {
			return fmt.Errorf("no event yet")
		}
		found = &evs.Items[0]
		return nil
	})
	return found
}

// podIPv4 is the IPv4 address of a parsed pod annotation.
func podIPv4(info annotations.PodNetworkInfo) netip.Addr {
	p, _ := info.IPv4()
	return p.Addr()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := harness.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
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
