package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dunlinplugin/dunlin/internal/annotations"
)

func TestMalformedAnnotations(t *testing.T) {
	c := newCluster(t)
	c.createNode("n1")
	c.createNode("broken", func(n *corev1.Node) {
		n.Annotations = map[string]string{annotations.NodeSubnet: "10.244.300.0/24"}
	})
	c.createPod("default", "garbled", "n1", func(p *corev1.Pod) {
		p.Annotations = map[string]string{annotations.PodNetwork: `{"ip_address": 7`}
	})
	c.createPod("default", "fine", "n1")
	c.expectPort("default", "fine", "n1")
	if ev := c.warning("default", "garbled", "InvalidPodNetworkAnnotation"); !strings.Contains(ev.Message, "not valid JSON") {
		t.Fatalf("event %q", ev.Message)
	}
	c.warning("default", "broken", "InvalidNodeSubnet")
	// The controller keeps running and converging.
	c.createPod("default", "later", "n1")
	c.expectPort("default", "later", "n1")
	if got := c.nbctl("ls-list"); strings.Contains(got, "(broken)") {
		t.Fatalf("switch for a node with a malformed subnet: %q", got)
	}

	// Removing the bad annotation heals the pod; nothing was overwritten meanwhile.
	if v := c.pod("default", "garbled").Annotations[annotations.PodNetwork]; v != `{"ip_address": 7` {
		t.Fatalf("controller overwrote a malformed annotation with %q", v)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:null}}}`, annotations.PodNetwork)
	if _, err := c.client.CoreV1().Pods("default").Patch(context.Background(), "garbled", types.MergePatchType,
		[]byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	c.expectPort("default", "garbled", "n1")

	// An address outside the node's subnet and an address already in use are refused.
	fine, _ := c.podNetwork("default", "fine")
	c.createPod("default", "copycat", "n1", func(p *corev1.Pod) {
		p.Annotations = map[string]string{annotations.PodNetwork: fine.Marshal()}
	})
	c.warning("default", "copycat", "PodAddressConflict")
	stray := annotations.NewPodNetworkInfo([]netip.Prefix{netip.MustParsePrefix("10.99.0.5/24")},
		[]netip.Addr{netip.MustParseAddr("10.99.0.1")}, "0a:58:0a:63:00:05")
	c.createPod("default", "stray", "n1", func(p *corev1.Pod) {
		p.Annotations = map[string]string{annotations.PodNetwork: stray.Marshal()}
	})
	c.warning("default", "stray", "InvalidPodNetworkAnnotation")
	for _, p := range c.lspNames() {
		if p == "default_copycat" || p == "default_stray" {
			t.Fatalf("port %s was created", p)
		}
	}
}

func TestExhaustedNodeSubnet(t *testing.T) {
	// A /29 has 8 addresses: network, gateway, management and broadcast leave 4 for pods.
	c := newCluster(t, "--node-subnet-prefix=29", "--cluster-cidr=10.244.0.0/28")
	c.createNode("n1")
	c.createNode("n2")
	c.nodeSubnet("n1")
	c.nodeSubnet("n2")
	c.createNode("n3") // only two /29s fit in a /28
	for i := range 5 {
		c.createPod("default", fmt.Sprintf("p%d", i), "n1")
	}
	// The pods are allocated in whatever order the workers take them: any four get addresses.
	var waiting string
	var placed []string
	c.eventually(converge, "four of five pods addressed", func() error {
		waiting, placed = "", nil
		for i := range 5 {
			name := fmt.Sprintf("p%d", i)
			if _, ok := c.pod("default", name).Annotations[annotations.PodNetwork]; ok {
				placed = append(placed, name)
			} else {
				waiting = name
			}
		}
		if len(placed) != 4 {
			return fmt.Errorf("addressed: %v", placed)
		}
		return nil
	})
	for _, name := range placed {
		c.expectPort("default", name, "n1")
	}
	c.warning("default", waiting, "PodAddressesExhausted")
	c.warning("default", "n3", "NodeSubnetsExhausted")
	if _, ok := c.pod("default", waiting).Annotations[annotations.PodNetwork]; ok {
		t.Fatal("fifth pod in a /29 got an address")
	}
	// Freeing an address heals the waiting pod.
	c.deletePod("default", placed[0])
	c.expectPort("default", waiting, "n1")
	c.eventually(converge, "convergence", func() error { return c.checkConverged([]string{"n1", "n2"}) })
}

func TestNBDownAndBack(t *testing.T) {
	c := newCluster(t)
	c.createNode("n1")
	c.createPod("default", "before", "n1")
	c.expectPort("default", "before", "n1")

	if err := c.ovn.StopNB(); err != nil {
		t.Fatal(err)
	}
	c.createPod("default", "during", "n1")
	ev := c.warning("default", "during", "NBWriteFailed")
	t.Logf("event while NB is down: %s", ev.Message)
	// The address is allocated and persisted even though NB is down.
	if _, err := c.podNetwork("default", "during"); err != nil {
		t.Fatal(err)
	}
	if err := c.ovn.StartNB(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.expectPort("default", "during", "n1")
	c.createPod("default", "after", "n1")
	c.expectPort("default", "after", "n1")
	c.eventually(converge, "convergence", func() error { return c.checkConverged([]string{"n1"}) })
}

func TestControllerStartsBeforeNB(t *testing.T) {
	c := newCluster(t)
	c.stopController()
	if err := c.ovn.StopNB(); err != nil {
		t.Fatal(err)
	}
	c.startController()
	c.createNode("n1")
	c.createPod("default", "p", "n1")
	time.Sleep(2 * time.Second)
	if c.ctrl.Exited() {
		t.Fatal("controller exited while NB was down")
	}
	if err := c.ovn.StartNB(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.expectPort("default", "p", "n1")
}
