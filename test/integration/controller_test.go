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

	"github.com/dunlinplugin/dunlin/internal/annotations"
)

const converge = 30 * time.Second

// nodeSubnet waits for the node's dunlin.io/node-subnet annotation.
func (c *cluster) nodeSubnet(name string) netip.Prefix {
	c.t.Helper()
	var p netip.Prefix
	c.eventually(converge, "subnet of node "+name, func() error {
		n, err := c.client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		s, ok := n.Annotations[annotations.NodeSubnet]
		if !ok {
			return fmt.Errorf("no annotation yet")
		}
		ps, err := annotations.ParseNodeSubnets(s)
		p = annotations.IPv4Subnet(ps)
		return err
	})
	return p
}

// expectPort waits until the pod's port exists with the address of its annotation.
func (c *cluster) expectPort(ns, name, node string) annotations.PodNetworkInfo {
	c.t.Helper()
	var info annotations.PodNetworkInfo
	port := ns + "_" + name
	c.eventually(converge, "port "+port, func() error {
		var err error
		if info, err = c.podNetwork(ns, name); err != nil {
			return err
		}
		want := info.MACAddress + " " + podIPv4(info).String()
		got, err := c.ovn.NBCtl("lsp-get-addresses", port)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("addresses %q, want %q", got, want)
		}
		if sec, _ := c.ovn.NBCtl("lsp-get-port-security", port); sec != want {
			return fmt.Errorf("port_security %q, want %q", sec, want)
		}
		if ls, _ := c.ovn.NBCtl("lsp-get-ls", port); !strings.Contains(ls, "("+node+")") {
			return fmt.Errorf("port on %q, want switch %s", ls, node)
		}
		return nil
	})
	return info
}

func (c *cluster) expectNoPort(port string) {
	c.t.Helper()
	c.eventually(converge, "port "+port+" gone", func() error {
		for _, n := range c.lspNames() {
			if n == port {
				return fmt.Errorf("still there")
			}
		}
		return nil
	})
}

func TestNodesAndPods(t *testing.T) {
	c := newCluster(t)
	c.createNode("n1")
	c.createNode("n2")
	s1, s2 := c.nodeSubnet("n1"), c.nodeSubnet("n2")
	if s1.Overlaps(s2) || !netip.MustParsePrefix("10.244.0.0/16").Contains(s1.Addr()) || s1.Bits() != 24 {
		t.Fatalf("node subnets %s and %s", s1, s2)
	}
	c.eventually(converge, "node rows", func() error {
		for _, n := range []string{"n1", "n2"} {
			sub, err := c.ovn.NBCtl("get", "Logical_Switch", n, "other_config:subnet")
			if err != nil {
				return err
			}
			want := map[string]netip.Prefix{"n1": s1, "n2": s2}[n]
			if strings.Trim(sub, `"`) != want.String() {
				return fmt.Errorf("switch %s subnet %s, want %s", n, sub, want)
			}
			if _, err := c.ovn.NBCtl("lsp-get-addresses", "k8s-"+n); err != nil {
				return err
			}
			peer, err := c.ovn.NBCtl("lsp-get-options", "stor-"+n)
			if err != nil || !strings.Contains(peer, "router-port=rtos-"+n) {
				return fmt.Errorf("stor-%s options %q: %v", n, peer, err)
			}
		}
		return nil
	})
	if got := c.nbctl("get", "Logical_Router_Port", "rtos-n1", "networks"); got != fmt.Sprintf(`["%s/%d"]`, s1.Addr().Next(), s1.Bits()) {
		t.Fatalf("rtos-n1 networks %s for subnet %s", got, s1)
	}
	if got := c.nbctl("lrp-list", "ovn_cluster_router"); !strings.Contains(got, "rtos-n1") || !strings.Contains(got, "rtos-n2") {
		t.Fatalf("cluster router ports %q", got)
	}

	c.createPod("default", "a", "n1")
	c.createPod("default", "b", "n1")
	c.createPod("default", "c", "n2")
	c.createPod("default", "host", "n1", func(p *corev1.Pod) { p.Spec.HostNetwork = true })
	c.createPod("default", "pending", "")
	a := c.expectPort("default", "a", "n1")
	b := c.expectPort("default", "b", "n1")
	cc := c.expectPort("default", "c", "n2")
	if !s1.Contains(podIPv4(a)) || !s1.Contains(podIPv4(b)) || !s2.Contains(podIPv4(cc)) {
		t.Fatalf("addresses %s %s %s outside their node subnets %s %s", a.IPAddress, b.IPAddress, cc.IPAddress, s1, s2)
	}
	if a.IPAddress == b.IPAddress || a.GatewayIP != s1.Addr().Next().String() {
		t.Fatalf("pods a and b: %+v %+v", a, b)
	}
	if got := c.nbctl("get", "Logical_Switch_Port", "default_a", "options:requested-chassis"); got != "n1" {
		t.Fatalf("requested-chassis %s", got)
	}
	uid := string(c.pod("default", "a").UID)
	if got := c.nbctl("get", "Logical_Switch_Port", "default_a", "external_ids:pod-uid"); strings.Trim(got, `"`) != uid {
		t.Fatalf("pod-uid %s, want %s", got, uid)
	}
	for _, p := range []string{"host", "pending"} {
		if _, ok := c.pod("default", p).Annotations[annotations.PodNetwork]; ok {
			t.Fatalf("pod %s got an address", p)
		}
	}

	// A finished pod releases its port and address; the lowest-free allocator hands it out again.
	pa := c.pod("default", "a")
	pa.Status.Phase = corev1.PodSucceeded
	if _, err := c.client.CoreV1().Pods("default").UpdateStatus(context.Background(), pa, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.expectNoPort("default_a")
	c.createPod("default", "d", "n1")
	if d := c.expectPort("default", "d", "n1"); d.IPAddress != a.IPAddress {
		t.Fatalf("new pod got %s, want the freed %s", d.IPAddress, a.IPAddress)
	}

	c.deletePod("default", "b")
	c.expectNoPort("default_b")

	if err := c.client.CoreV1().Nodes().Delete(context.Background(), "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.eventually(converge, "switch n2 gone", func() error {
		if got := c.nbctl("ls-list"); strings.Contains(got, "(n2)") {
			return fmt.Errorf("switches %q", got)
		}
		if got := c.nbctl("lrp-list", "ovn_cluster_router"); strings.Contains(got, "rtos-n2") {
			return fmt.Errorf("router ports %q", got)
		}
		return nil
	})
}

func TestPodsWaitForTheirNode(t *testing.T) {
	c := newCluster(t)
	c.createPod("default", "early", "late")
	time.Sleep(time.Second)
	if _, ok := c.pod("default", "early").Annotations[annotations.PodNetwork]; ok {
		t.Fatal("pod on a node that does not exist got an address")
	}
	c.createNode("late")
	c.expectPort("default", "early", "late")
}

func TestNodePodCIDRs(t *testing.T) {
	c := newCluster(t)
	c.createNode("kubeadm", func(n *corev1.Node) {
		n.Spec.PodCIDR = "10.244.7.0/24"
		n.Spec.PodCIDRs = []string{"10.244.7.0/24"}
	})
	c.createNode("outside", func(n *corev1.Node) {
		n.Spec.PodCIDR = "192.168.7.0/24"
		n.Spec.PodCIDRs = []string{"192.168.7.0/24"}
	})
	c.createNode("other")
	c.createPod("default", "p", "kubeadm")
	info := c.expectPort("default", "p", "kubeadm")
	if !strings.HasPrefix(info.IPAddress, "10.244.7.") {
		t.Fatalf("pod on a node with podCIDR 10.244.7.0/24 got %s", info.IPAddress)
	}
	if got := c.nbctl("get", "Logical_Switch", "kubeadm", "other_config:subnet"); strings.Trim(got, `"`) != "10.244.7.0/24" {
		t.Fatalf("switch subnet %s", got)
	}
	ev := c.warning("default", "outside", "InvalidNodeSubnet")
	if !strings.Contains(ev.Message, "outside the cluster CIDR") {
		t.Fatalf("event message %q", ev.Message)
	}
	if got := c.nbctl("ls-list"); strings.Contains(got, "(outside)") {
		t.Fatalf("a switch was made for a node outside the cluster CIDR: %q", got)
	}
	if s := c.nodeSubnet("other"); s.Overlaps(netip.MustParsePrefix("10.244.7.0/24")) {
		t.Fatalf("allocated %s overlaps a podCIDR", s)
	}
}
