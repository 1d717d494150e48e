package translator_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

// syncEnv is a controller on client-go's fake clientset and a real NB ovsdb-server, driven one sync at
// a time: API faults are injected with reactors, NB is read back with ovn-nbctl.
type syncEnv struct {
	t    *testing.T
	ctx  context.Context
	kube *fake.Clientset
	ovn  *harness.OVN
	c    *translator.Controller
	rec  *record.FakeRecorder
}

func newSyncEnv(t *testing.T, objs ...runtime.Object) *syncEnv {
	t.Helper()
	return newSyncEnvWith(t, func(*translator.Config) {}, objs...)
}

// newSyncEnvWith is newSyncEnv with the controller's configuration changed by configure.
func newSyncEnvWith(t *testing.T, configure func(*translator.Config), objs ...runtime.Object) *syncEnv {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ovn := harness.StartTestOVN(ctx, t)
	dbModel, _, err := translator.NBModel()
	if err != nil {
		t.Fatal(err)
	}
	nb, err := translator.ConnectNB(ctx, ovn.NBAddr, nil, dbModel)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nb.Close)
	e := &syncEnv{t: t, ctx: ctx, kube: fake.NewClientset(objs...), ovn: ovn, rec: record.NewFakeRecorder(1000)}
	cfg := translator.DefaultConfig()
	cfg.Identity = "sync-test"
	configure(&cfg)
	if e.c, err = translator.New(cfg, e.kube, nb, e.rec, prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

func newNode(name string, subnet string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)}}
	if subnet != "" {
		n.Annotations = map[string]string{annotations.NodeSubnet: subnet}
	}
	return n
}

func newPod(name, node, annotation string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
	if annotation != "" {
		p.Annotations = map[string]string{annotations.PodNetwork: annotation}
	}
	return p
}

func (e *syncEnv) nbctl(args ...string) string {
	e.t.Helper()
	out, err := e.ovn.NBCtl(args...)
	if err != nil {
		e.t.Fatalf("ovn-nbctl %v: %v", args, err)
	}
	return out
}

// eventually waits for the informers to catch up with what the fake clientset holds.
func (e *syncEnv) eventually(what string, f func() error) {
	e.t.Helper()
	if err := harness.Eventually(10*time.Second, f); err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// apiPod is the pod as the API holds it.
func (e *syncEnv) apiPod(name string) *corev1.Pod {
	e.t.Helper()
	p, err := e.kube.CoreV1().Pods("default").Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// podIP is the IPv4 address the API holds in the pod's annotation, or an invalid address.
func (e *syncEnv) podIP(name string) netip.Addr {
	e.t.Helper()
	info, err := annotations.ParsePodNetwork(e.apiPod(name).Annotations[annotations.PodNetwork])
	if err != nil {
		return netip.Addr{}
	}
	v4, _ := info.IPv4()
	return v4.Addr()
}

// seen waits until the informer shows the pod's annotation as the API holds it.
func (e *syncEnv) seen(name string) {
	e.t.Helper()
	want := e.apiPod(name).Annotations[annotations.PodNetwork]
	e.eventually("informer sees pod "+name, func() error {
		p, err := e.c.CachedPod("default", name)
		if err != nil {
			return err
		}
		if p.Annotations[annotations.PodNetwork] != want {
			return fmt.Errorf("annotation %q, want %q", p.Annotations[annotations.PodNetwork], want)
		}
		return nil
	})
}

// syncPod syncs the pod and fails the test on error.
func (e *syncEnv) syncPod(name string) {
	e.t.Helper()
	if err := e.c.SyncPod(e.ctx, "default/"+name); err != nil {
		e.t.Fatalf("sync pod %s: %v", name, err)
	}
}

// updateNode changes the node through the API and waits until the informer has the change.
func (e *syncEnv) updateNode(name string, mutate func(*corev1.Node)) {
	e.t.Helper()
	n, err := e.kube.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	mutate(n)
	if n, err = e.kube.CoreV1().Nodes().Update(e.ctx, n, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.eventually("informer sees node "+name, func() error {
		// The fake clientset keeps no resource versions: compare what was changed.
		if c, err := e.c.CachedNode(name); err != nil || !maps.Equal(c.Annotations, n.Annotations) {
			return fmt.Errorf("not yet")
		}
		return nil
	})
}

// updatePodAnnotation sets the pod's network annotation through the API and waits for the informer.
func (e *syncEnv) updatePodAnnotation(name, value string) {
	e.t.Helper()
	p := e.apiPod(name)
	p.Annotations[annotations.PodNetwork] = value
	if _, err := e.kube.CoreV1().Pods("default").Update(e.ctx, p, metav1.UpdateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.seen(name)
}

func (e *syncEnv) createPod(p *corev1.Pod) {
	e.t.Helper()
	if _, err := e.kube.CoreV1().Pods(p.Namespace).Create(e.ctx, p, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.seen(p.Name)
}

// syncNode runs the node's sync until it no longer waits on its informer.
func (e *syncEnv) syncNode(name string) {
	e.t.Helper()
	e.eventually("node "+name+" in the informer", func() error { _, err := e.c.CachedNode(name); return err })
	if err := e.c.SyncNode(e.ctx, name); err != nil {
		e.t.Fatalf("sync node %s: %v", name, err)
	}
}

// patchFault makes the next patch of a pod (or node) fail with err; applied says whether the API server
// applied it anyway, as it may when a request times out.
func patchFault(kube *fake.Clientset, resource string, applied bool, err error) {
	pending := true
	kube.PrependReactor("patch", resource, func(action k8stesting.Action) (bool, runtime.Object, error) {
		if !pending {
			return false, nil, nil
		}
		pending = false
		if applied {
			if _, _, aerr := k8stesting.ObjectReaction(kube.Tracker())(action); aerr != nil {
				return true, nil, aerr
			}
		}
		return true, nil, err
	})
}

func timeoutErr() error {
	return apierrors.NewTimeoutError("request did not complete within requested timeout", 0)
}

func TestAmbiguousPatchErrorKeepsTheAddress(t *testing.T) {
	for _, applied := range []bool{true, false} {
		t.Run(fmt.Sprintf("applied=%v", applied), func(t *testing.T) {
			e := newSyncEnv(t, newNode("n1", "10.244.1.0/24"))
			e.syncNode("n1")
			e.createPod(newPod("a", "n1", ""))
			patchFault(e.kube, "pods", applied, timeoutErr())
			err := e.c.SyncPod(e.ctx, "default/a")
			if applied && err != nil {
				t.Fatalf("sync after an applied patch that timed out: %v", err)
			}
			if !applied && err == nil {
				t.Fatal("sync after a lost patch succeeded")
			}
			// Another pod must not be given the address a holds (or may hold).
			e.createPod(newPod("b", "n1", ""))
			if err := e.c.SyncPod(e.ctx, "default/b"); err != nil {
				t.Fatal(err)
			}
			if !applied {
				if err := e.c.SyncPod(e.ctx, "default/a"); err != nil {
					t.Fatalf("retry of a: %v", err)
				}
			}
			a, b := e.podIP("a"), e.podIP("b")
			if !a.IsValid() || !b.IsValid() || a == b {
				t.Fatalf("addresses a=%v b=%v", a, b)
			}
			if got := e.nbctl("lsp-get-addresses", "default_a"); !strings.HasSuffix(got, " "+a.String()) {
				t.Fatalf("port of a: %q, annotation %s", got, a)
			}
		})
	}
}

func TestRefusedPatchFreesTheAddress(t *testing.T) {
	e := newSyncEnv(t, newNode("n1", "10.244.1.0/24"))
	e.syncNode("n1")
	e.createPod(newPod("a", "n1", ""))
	patchFault(e.kube, "pods", false, apierrors.NewInvalid(schema.GroupKind{Kind: "Pod"}, "a", nil))
	if err := e.c.SyncPod(e.ctx, "default/a"); err == nil {
		t.Fatal("sync after a refused patch succeeded")
	}
	e.createPod(newPod("b", "n1", ""))
	e.syncPod("b")
	if got := e.podIP("b"); got.String() != "10.244.1.3" {
		t.Fatalf("b got %v, want the first address, freed by the refusal", got)
	}
}

func TestAmbiguousNodePatchKeepsTheSubnet(t *testing.T) {
	e := newSyncEnv(t, newNode("n1", ""), newNode("n2", ""))
	e.eventually("nodes in the informer", func() error {
		if _, err := e.c.CachedNode("n2"); err != nil {
			return err
		}
		_, err := e.c.CachedNode("n1")
		return err
	})
	patchFault(e.kube, "nodes", true, apierrors.NewInternalError(errors.New("etcdserver: request timed out")))
	if err := e.c.SyncNode(e.ctx, "n1"); err == nil {
		t.Fatal("sync after a node patch error succeeded")
	}
	if err := e.c.SyncNode(e.ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	n1, _ := e.kube.CoreV1().Nodes().Get(e.ctx, "n1", metav1.GetOptions{})
	n2, _ := e.kube.CoreV1().Nodes().Get(e.ctx, "n2", metav1.GetOptions{})
	s1, s2 := n1.Annotations[annotations.NodeSubnet], n2.Annotations[annotations.NodeSubnet]
	if s1 == "" || s2 == "" || s1 == s2 {
		t.Fatalf("node subnets n1=%q n2=%q", s1, s2)
	}
}

func TestBadPodAnnotationKeepsTheRunningPodsAddress(t *testing.T) {
	e := newSyncEnv(t, newNode("n1", "10.244.1.0/24"))
	e.syncNode("n1")
	e.createPod(newPod("a", "n1", ""))
	e.syncPod("a")
	a := e.podIP("a")
	// An edit that breaks the annotation of a running pod.
	e.updatePodAnnotation("a", `{"ip_address": 7`)
	e.syncPod("a")
	if got := e.nbctl("lsp-get-addresses", "default_a"); !strings.HasSuffix(got, " "+a.String()) {
		t.Fatalf("port of a after a bad edit: %q, want it to keep %s", got, a)
	}
	// The address stays taken: a new pod gets another one, and NB never holds it twice.
	e.createPod(newPod("b", "n1", ""))
	e.syncPod("b")
	if b := e.podIP("b"); b == a || !b.IsValid() {
		t.Fatalf("b got %v while a keeps %v", b, a)
	}
	// An address outside the node's subnet is refused the same way.
	e.updatePodAnnotation("a", annotations.NewPodNetworkInfo([]netip.Prefix{netip.MustParsePrefix("10.99.0.5/24")},
		[]netip.Addr{netip.MustParseAddr("10.99.0.1")}, "0a:58:0a:63:00:05").Marshal())
	e.syncPod("a")
	if got := e.nbctl("lsp-get-addresses", "default_a"); !strings.HasSuffix(got, " "+a.String()) {
		t.Fatalf("port of a after an outside address: %q", got)
	}
	// A pod created with a bad annotation has nothing to keep: no port, no address.
	e.createPod(newPod("c", "n1", `{"ip_address": 7`))
	e.syncPod("c")
	if got := e.nbctl("--bare", "--columns=name", "find", "Logical_Switch_Port", "name=default_c"); got != "" {
		t.Fatalf("a pod with a bad annotation got port %q", got)
	}
	reasons := drain(e.rec)
	if !strings.Contains(reasons, "InvalidPodNetworkAnnotation") {
		t.Fatalf("events: %s", reasons)
	}
}

func TestBadNodeSubnetEditKeepsTheSwitch(t *testing.T) {
	e := newSyncEnv(t, newNode("n1", "10.244.1.0/24"))
	e.syncNode("n1")
	e.createPod(newPod("a", "n1", ""))
	e.syncPod("a")
	for _, bad := range []string{"10.244.300.0/24", "10.245.0.0/24", "10.244.9.0/24"} {
		e.updateNode("n1", func(n *corev1.Node) { n.Annotations[annotations.NodeSubnet] = bad })
		e.syncNode("n1")
		if got := e.nbctl("get", "Logical_Switch", "n1", "other_config:subnet"); got != `"10.244.1.0/24"` {
			t.Fatalf("%s: switch subnet %s, want the last good 10.244.1.0/24", bad, got)
		}
		if got := e.nbctl("lsp-list", "n1"); !strings.Contains(got, "default_a") {
			t.Fatalf("%s: pod port gone: %q", bad, got)
		}
		// The annotation, which dunlin-node reads too, is put back.
		n, _ := e.kube.CoreV1().Nodes().Get(e.ctx, "n1", metav1.GetOptions{})
		if got := n.Annotations[annotations.NodeSubnet]; got != "10.244.1.0/24" {
			t.Fatalf("%s: annotation %q, want it restored", bad, got)
		}
	}
	if reasons := drain(e.rec); !strings.Contains(reasons, "InvalidNodeSubnet") {
		t.Fatalf("events: %s", reasons)
	}
}

// iface-id-ver goes on a node's pod ports only once the node's agent announced it, so that an agent
// that does not set it on interfaces (an older release, mid-upgrade) keeps its pods bound.
func TestIfaceIDVerFollowsTheNodeAgent(t *testing.T) {
	e := newSyncEnv(t, newNode("n1", "10.244.1.0/24"))
	e.syncNode("n1")
	e.createPod(newPod("a", "n1", ""))
	e.syncPod("a")
	if got := e.nbctl("get", "Logical_Switch_Port", "default_a", "options"); strings.Contains(got, "iface-id-ver") {
		t.Fatalf("options before the agent announced it: %s", got)
	}
	e.updateNode("n1", func(n *corev1.Node) { n.Annotations[annotations.NodeFeatures] = annotations.AgentFeatures(false) })
	e.c.DrainPodQueue()
	e.syncNode("n1")
	if queued := e.c.DrainPodQueue(); !slices.Contains(queued, "default/a") {
		t.Fatalf("queued %v: the node's pods were not queued when its agent announced a feature", queued)
	}
	e.syncPod("a")
	if got := e.nbctl("get", "Logical_Switch_Port", "default_a", "options:iface-id-ver"); got != "uid-a" {
		t.Fatalf("iface-id-ver %s, want the pod UID", got)
	}
}

// drain returns the events recorded so far, one per line.
func drain(rec *record.FakeRecorder) string {
	var b strings.Builder
	for {
		select {
		case ev := <-rec.Events:
			b.WriteString(ev + "\n")
		default:
			return b.String()
		}
	}
}

// withPodCIDR gives the node spec.podCIDRs, as kube-controller-manager's nodeipam does.
func withPodCIDR(n *corev1.Node, cidr string) *corev1.Node {
	n.Spec.PodCIDR, n.Spec.PodCIDRs = cidr, []string{cidr}
	return n
}

// nodeSubnetAnnotation is the node's dunlin.io/node-subnet as the API holds it.
func (e *syncEnv) nodeSubnetAnnotation(name string) string {
	e.t.Helper()
	n, err := e.kube.CoreV1().Nodes().Get(e.ctx, name, metav1.GetOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return n.Annotations[annotations.NodeSubnet]
}

// A node that registers without spec.podCIDRs in a cluster whose nodes have them (nodeipam runs, as
// in kubeadm clusters) waits for its own instead of getting a subnet from Dunlin that nodeipam then
// contradicts (the node kept Dunlin's subnet, warned InvalidNodeSubnet, and its pods failed).
func TestNewNodeWaitsForItsPodCIDRs(t *testing.T) {
	fresh := newNode("n2", "")
	fresh.CreationTimestamp = metav1.Now()
	e := newSyncEnv(t, withPodCIDR(newNode("n1", ""), "10.244.0.0/24"), fresh)
	e.syncNode("n1")
	e.syncNode("n2")
	if got := e.nodeSubnetAnnotation("n2"); got != "" {
		t.Fatalf("a new node of a nodeipam cluster got subnet %q from Dunlin before its spec.podCIDRs", got)
	}
	if got := e.nbctl("ls-list"); strings.Contains(got, "(n2)") {
		t.Fatalf("switch of n2 written without a subnet: %s", got)
	}
	n, err := e.kube.CoreV1().Nodes().Get(e.ctx, "n2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.kube.CoreV1().Nodes().Update(e.ctx, withPodCIDR(n, "10.244.5.0/24"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("informer sees n2's podCIDRs", func() error {
		if c, err := e.c.CachedNode("n2"); err != nil || len(c.Spec.PodCIDRs) == 0 {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	e.syncNode("n2")
	if got := e.nbctl("get", "Logical_Switch", "n2", "other_config:subnet"); got != `"10.244.5.0/24"` {
		t.Fatalf("switch subnet %s, want spec.podCIDRs 10.244.5.0/24", got)
	}
	if reasons := drain(e.rec); strings.Contains(reasons, "InvalidNodeSubnet") {
		t.Fatalf("events: %s", reasons)
	}
}

// The other sources: without nodeipam (no node has spec.podCIDRs) a new node gets a subnet at once;
// pod-cidrs waits however old the node is; dunlin never waits.
func TestNodeSubnetSources(t *testing.T) {
	fresh := func(name string) *corev1.Node {
		n := newNode(name, "")
		n.CreationTimestamp = metav1.Now()
		return n
	}
	t.Run("auto without nodeipam", func(t *testing.T) {
		e := newSyncEnv(t, fresh("n1"))
		e.syncNode("n1")
		if got := e.nodeSubnetAnnotation("n1"); got == "" {
			t.Fatal("no subnet allocated")
		}
	})
	t.Run("pod-cidrs", func(t *testing.T) {
		e := newSyncEnvWith(t, func(c *translator.Config) { c.NodeSubnetSource = translator.SubnetSourcePodCIDRs }, newNode("old", ""))
		e.syncNode("old")
		if got := e.nodeSubnetAnnotation("old"); got != "" {
			t.Fatalf("subnet %q allocated", got)
		}
	})
	t.Run("dunlin", func(t *testing.T) {
		e := newSyncEnvWith(t, func(c *translator.Config) { c.NodeSubnetSource = translator.SubnetSourceDunlin },
			withPodCIDR(newNode("n1", ""), "10.244.0.0/24"), fresh("n2"))
		e.syncNode("n1")
		e.syncNode("n2")
		if got := e.nodeSubnetAnnotation("n2"); got == "" {
			t.Fatal("no subnet allocated")
		}
	})
}
