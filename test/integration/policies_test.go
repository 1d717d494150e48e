package integration

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/dunlinplugin/dunlin/test/harness"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

func (c *cluster) createNamespace(name string, lbls map[string]string) {
	c.t.Helper()
	_, err := c.client.CoreV1().Namespaces().Create(context.Background(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatalf("create namespace %s: %v", name, err)
	}
	// No serviceaccount controller runs here, and pods need their namespace's default account.
	if _, err := c.client.CoreV1().ServiceAccounts(name).Create(context.Background(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create the default service account of %s: %v", name, err)
	}
}

func (c *cluster) createPolicy(np *networkingv1.NetworkPolicy) {
	c.t.Helper()
	if _, err := c.client.NetworkingV1().NetworkPolicies(np.Namespace).Create(context.Background(), np, metav1.CreateOptions{}); err != nil {
		c.t.Fatalf("create policy %s/%s: %v", np.Namespace, np.Name, err)
	}
}

// pgPorts are the names of the logical ports in a port group, sorted.
func (c *cluster) pgPorts(pg string) ([]string, error) {
	uuids, err := c.ovn.NBCtl("--bare", "--columns=ports", "find", "Port_Group", "name="+pg)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, u := range strings.Fields(uuids) {
		n, err := c.ovn.NBCtl("--bare", "--columns=name", "list", "Logical_Switch_Port", u)
		if err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func (c *cluster) expectPGPorts(pg string, want ...string) {
	c.t.Helper()
	slices.Sort(want)
	c.eventually(converge, "ports of "+pg, func() error {
		got, err := c.pgPorts(pg)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want) {
			return fmt.Errorf("ports %v, want %v", got, want)
		}
		return nil
	})
}

// aclMatches are the matches of a port group's ACLs.
func (c *cluster) aclMatches(pg string) string {
	c.t.Helper()
	out, err := c.ovn.NBCtl("acl-list", pg)
	if err != nil {
		return ""
	}
	return out
}

// traceParses runs ovn-trace over the node switch's logical flows and fails on any match the OVN
// parser rejects (ovn-northd copies ACL matches into flows without checking them; ovn-controller would
// drop them).
func (c *cluster) traceParses(sw string) {
	c.t.Helper()
	if _, err := c.ovn.NBCtl("--wait=sb", "sync"); err != nil {
		c.t.Fatal(err)
	}
	out, err := exec.Command("ovn-trace", "--db="+c.ovn.SBAddr, sw,
		`inport == "stor-`+sw+`" && eth.src == 0a:58:00:00:00:01 && eth.dst == 0a:58:00:00:00:02 && ip4.src == 192.0.2.1 && ip4.dst == 10.244.0.3 && ip.ttl == 64 && tcp.dst == 80`).CombinedOutput()
	if err != nil {
		c.t.Fatalf("ovn-trace: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "parsing expression failed") {
		c.t.Fatalf("a logical flow does not parse:\n%s", out)
	}
}

func TestNetworkPolicyRows(t *testing.T) {
	c := newClusterWith(t, harness.OVNOptions{WithSB: true}, "--resync-period=1h")
	c.createNode("n1")
	c.createNamespace("x", map[string]string{"ns": "x"})
	c.createNamespace("y", map[string]string{"ns": "y"})
	web := func(port int32) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "web", ContainerPort: port}}
		}
	}
	label := func(v string) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Labels = map[string]string{"pod": v} }
	}
	c.createPod("x", "a", "n1", label("a"), web(80))
	c.createPod("x", "b", "n1", label("b"), web(8080))
	c.createPod("y", "a", "n1", label("a"))
	ya := c.expectPort("y", "a", "n1")
	c.expectPort("x", "a", "n1")
	c.expectPort("x", "b", "n1")

	c.createPolicy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow-from-y"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"ns": "y"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromString("web"))}},
			}},
		}})
	c.expectPGPorts("np.x.allow_from_y", "x_a")
	c.expectPGPorts("deny_in.x", "x_a")
	c.eventually(converge, "ACLs", func() error {
		acls := c.aclMatches("np.x.allow_from_y")
		if !strings.Contains(acls, "to-lport  1001 (outport == @np.x.allow_from_y && ip4.src == $peer.") ||
			!strings.Contains(acls, " && ip4.dst == $np_port.") || !strings.Contains(acls, " && tcp.dst == 80) allow-related") {
			return fmt.Errorf("acl-list np.x.allow_from_y:\n%s", acls)
		}
		if deny := c.aclMatches("deny_in.x"); !strings.Contains(deny, "to-lport  1000 (outport == @deny_in.x && ip) drop") {
			return fmt.Errorf("acl-list deny_in.x:\n%s", deny)
		}
		return nil
	})
	c.eventually(converge, "peer address set", func() error {
		got := c.nbctl("--bare", "--columns=addresses", "find", "Address_Set", `external_ids:"dunlin.io/peer"="namespaces{ns=y} pods{}"`)
		if got != podIPv4(ya).String() {
			return fmt.Errorf("peer addresses %q, want %s", got, podIPv4(ya))
		}
		return nil
	})
	c.traceParses("n1")

	// A peer set lost while no controller ran (a cold start into an empty NB, or an operator's mistake)
	// is written again by the next controller, although no pod, namespace or policy changed.
	c.stopController()
	c.nbctl("--if-exists", "destroy", "Address_Set",
		c.nbctl("--bare", "--columns=_uuid", "find", "Address_Set", `external_ids:"dunlin.io/peer"="namespaces{ns=y} pods{}"`))
	c.startController()
	c.eventually(converge, "peer address set after a restart", func() error {
		got := c.nbctl("--bare", "--columns=addresses", "find", "Address_Set", `external_ids:"dunlin.io/peer"="namespaces{ns=y} pods{}"`)
		if got != podIPv4(ya).String() {
			return fmt.Errorf("peer addresses %q, want %s", got, podIPv4(ya))
		}
		return nil
	})

	// A label change moves a pod into the policy: one member more, and the named port now also resolves
	// to b's 8080.
	p := c.pod("x", "b")
	p.Labels["pod"] = "a"
	if _, err := c.client.CoreV1().Pods("x").Update(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.expectPGPorts("np.x.allow_from_y", "x_a", "x_b")
	c.eventually(converge, "named port of b", func() error {
		if acls := c.aclMatches("np.x.allow_from_y"); !strings.Contains(acls, "tcp.dst == 8080") {
			return fmt.Errorf("acl-list:\n%s", acls)
		}
		return nil
	})

	// A named port no pod has is reported.
	c.createPolicy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "nope"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromString("nope"))}}}}}})
	c.warning("x", "nope", "PolicyNamedPortNotFound")
	c.expectPGPorts("deny_in.x", "x_a", "x_b")

	// A restart with the policy deleted meanwhile removes all it had; the rest converges.
	c.stopController()
	if err := c.client.NetworkingV1().NetworkPolicies("x").Delete(context.Background(), "allow-from-y", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.startController()
	c.eventually(converge, "rows of the deleted policy gone", func() error {
		if got := c.nbctl("--bare", "--columns=name", "find", "Port_Group", "name=np.x.allow_from_y"); got != "" {
			return fmt.Errorf("port group left: %q", got)
		}
		if got := c.nbctl("--bare", "--columns=name", "find", "Address_Set", `external_ids:"dunlin.io/peer"="namespaces{ns=y} pods{}"`); got != "" {
			return fmt.Errorf("peer address set left: %q", got)
		}
		return nil
	})
	c.expectPGPorts("deny_in.x", "x_a", "x_b")
	if err := c.client.NetworkingV1().NetworkPolicies("x").Delete(context.Background(), "nope", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.eventually(converge, "default deny gone with the last policy", func() error {
		if got := c.nbctl("--bare", "--columns=name", "find", "Port_Group", "name=deny_in.x"); got != "" {
			return fmt.Errorf("port group left: %q", got)
		}
		if got := c.nbctl("--bare", "--columns=name", "list", "ACL"); got != "" {
			return fmt.Errorf("ACLs left: %q", got)
		}
		return nil
	})
}
