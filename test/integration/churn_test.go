package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// expectPortOn waits until the pod's port sits on node's switch with the pod's annotated address, the
// node as requested-chassis and the pod's UID as iface-id-ver.
func (c *cluster) expectPortOn(ns, name, node string) {
	c.t.Helper()
	info := c.expectPort(ns, name, node)
	port := ns + "_" + name
	uid := string(c.pod(ns, name).UID)
	c.eventually(converge, "options of "+port, func() error {
		got, err := c.ovn.NBCtl("get", "Logical_Switch_Port", port, "options:requested-chassis", "options:iface-id-ver")
		if err != nil {
			return err
		}
		if want := node + "\n" + `"` + uid + `"`; got != want {
			return fmt.Errorf("options %q, want %q", got, want)
		}
		return nil
	})
	if sub := c.nodeSubnet(node); !sub.Contains(podIPv4(info)) {
		c.t.Fatalf("port %s has %s outside node %s's subnet %s", port, podIPv4(info), node, sub)
	}
}

// recreateOn deletes the pod and creates one of the same name on node.
func (c *cluster) recreateOn(ns, name, node string) {
	c.t.Helper()
	c.deletePod(ns, name)
	c.eventually(converge, "pod "+name+" deleted", func() error {
		if _, err := c.client.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{}); err == nil {
			return fmt.Errorf("still there")
		}
		return nil
	})
	c.createPod(ns, name, node)
}

// A pod deleted and recreated under the same name on another node, while the controller could not
// see it happen, gets its port moved to the new node's switch.
func TestPodRecreatedOnAnotherNodeMovesItsPort(t *testing.T) {
	c := newCluster(t)
	// As their dunlin-node would, the nodes announce iface-id-ver, so ports carry the pod UID.
	withAgent := func(n *corev1.Node) {
		n.Annotations = map[string]string{annotations.NodeFeatures: annotations.AgentFeatures(false)}
	}
	c.createNode("a", withAgent)
	c.createNode("b", withAgent)
	c.createPod("default", "web-6", "a")
	c.expectPortOn("default", "web-6", "a")

	t.Run("controller stopped", func(t *testing.T) {
		c.stopController()
		c.recreateOn("default", "web-6", "b")
		c.startController()
		c.expectPortOn("default", "web-6", "b")
	})
	t.Run("NB down", func(t *testing.T) {
		if err := c.ovn.StopNB(); err != nil {
			t.Fatal(err)
		}
		c.recreateOn("default", "web-6", "a")
		c.warning("default", "web-6", "NBWriteFailed")
		if err := c.ovn.StartNB(context.Background()); err != nil {
			t.Fatal(err)
		}
		c.expectPortOn("default", "web-6", "a")
	})
	t.Run("leader hand-over", func(t *testing.T) {
		c.killController()
		c.recreateOn("default", "web-6", "b")
		c.startController()
		c.expectPortOn("default", "web-6", "b")
	})
	c.eventually(converge, "convergence", func() error { return c.checkConverged([]string{"a", "b"}) })
	if got := c.nbctl("lsp-list", "a"); strings.Contains(got, "web-6") {
		t.Fatalf("switch a still holds the port: %q", got)
	}
}

// The loser of an address conflict is retried as soon as the winner frees the address.
func TestConflictLoserGetsTheAddressWhenTheWinnerGoes(t *testing.T) {
	c := newCluster(t, "--resync-period=1h")
	c.createNode("n1")
	c.createPod("default", "winner", "n1")
	info := c.expectPort("default", "winner", "n1")
	c.createPod("default", "copycat", "n1", func(p *corev1.Pod) {
		p.Annotations = map[string]string{annotations.PodNetwork: info.Marshal()}
	})
	c.warning("default", "copycat", "PodAddressConflict")
	c.deletePod("default", "winner")
	c.expectPort("default", "copycat", "n1")
	if got, _ := c.podNetwork("default", "copycat"); podIPv4(got) != podIPv4(info) {
		t.Fatalf("copycat has %v, want %v", podIPv4(got), podIPv4(info))
	}
}

// A bad edit of a node's subnet annotation keeps the node's switch and pods on the last good subnet,
// across a restart too.
func TestBadNodeSubnetEditKeepsThePods(t *testing.T) {
	c := newCluster(t)
	c.createNode("n1")
	sub := c.nodeSubnet("n1")
	c.createPod("default", "p", "n1")
	c.expectPort("default", "p", "n1")
	edit := func(value string) {
		t.Helper()
		n, err := c.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Annotations[annotations.NodeSubnet] = value
		if _, err := c.client.CoreV1().Nodes().Update(context.Background(), n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	kept := func() {
		t.Helper()
		c.eventually(converge, "annotation restored", func() error {
			n, err := c.client.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if got := n.Annotations[annotations.NodeSubnet]; got != sub.String() {
				return fmt.Errorf("annotation %q", got)
			}
			return nil
		})
		if got := c.nbctl("get", "Logical_Switch", "n1", "other_config:subnet"); got != `"`+sub.String()+`"` {
			t.Fatalf("switch subnet %s, want %s", got, sub)
		}
		c.expectPort("default", "p", "n1")
	}
	edit("not-a-cidr")
	c.warning("", "n1", "InvalidNodeSubnet")
	kept()
	// While no controller runs, the last good subnet is in NB only.
	c.stopController()
	edit("10.1.0.0/24")
	c.startController()
	c.createPod("default", "q", "n1")
	c.expectPort("default", "q", "n1")
	kept()
	c.eventually(converge, "convergence", func() error { return c.checkConverged([]string{"n1"}) })
}

// Two controllers writing at once (a hand-over where the old leader has not noticed yet): the newer
// one fences the older, which stops, and every Service keeps exactly one load balancer per protocol.
func TestHandOverLeavesOneLoadBalancerPerService(t *testing.T) {
	c := newCluster(t)
	c.createNode("n1")
	for i := range 20 {
		c.createService(fmt.Sprintf("s%d", i), func(s *corev1.Service) { s.Spec.ClusterIP = fmt.Sprintf("10.96.1.%d", 10+i) })
	}
	// The first controller must have claimed NB before the second starts, or the second may claim first
	// and be the one fenced: a slow start of the first made the "newer" one lose.
	c.eventually(converge, "the first controller writes", func() error {
		if got := c.nbctl("--bare", "--columns=name", "find", "Load_Balancer", "name=Service_default/s19_TCP"); strings.TrimSpace(got) == "" {
			return fmt.Errorf("no load balancer of s19 yet")
		}
		return nil
	})
	second, err := harness.StartProcess("dunlin-controller-2", filepath.Join(c.dir, "controller2.log"), nil, controllerBin,
		"--kubeconfig", c.kube.Kubeconfig, "--nb-address", c.ovn.NBAddr, "--metrics-bind-address", "", "--leader-elect=false", "-v=2")
	if err != nil {
		t.Fatal(err)
	}
	defer second.Stop()
	for i := 20; i < 40; i++ {
		c.createService(fmt.Sprintf("s%d", i), func(s *corev1.Service) { s.Spec.ClusterIP = fmt.Sprintf("10.96.1.%d", 10+i) })
	}
	c.eventually(converge, "the fenced controller stops", func() error {
		if second.Exited() {
			return fmt.Errorf("the newer controller exited:\n%s", second.LogTail(30))
		}
		if !c.ctrl.Exited() {
			return fmt.Errorf("first controller still running")
		}
		return nil
	})
	if second.Exited() {
		t.Fatalf("the newer controller exited:\n%s", second.LogTail(20))
	}
	c.eventually(converge, "one load balancer per Service", func() error {
		names := strings.Fields(c.nbctl("--bare", "--columns=name", "list", "Load_Balancer"))
		seen := map[string]int{}
		for _, n := range names {
			seen[n]++
		}
		for i := range 40 {
			name := fmt.Sprintf("Service_default/s%d_TCP", i)
			if seen[name] != 1 {
				return fmt.Errorf("%s exists %d times", name, seen[name])
			}
		}
		return nil
	})
	time.Sleep(time.Second) // let a late writer show itself, if there were one
	n := 0
	for _, name := range strings.Fields(c.nbctl("--bare", "--columns=name", "list", "Load_Balancer")) {
		if strings.HasPrefix(name, "Service_default/s") {
			n++
		}
	}
	if n != 40 {
		t.Fatalf("%d load balancers of the test's Services, want 40", n)
	}
	c.ctrl = nil // already gone
}
