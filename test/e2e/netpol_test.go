package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

// TestNetworkPolicy runs the NetworkPolicy truth table (netpol_matrix_test.go) on one two-node
// cluster: each case's expected matrix is written from Kubernetes semantics, then the kubelet probe
// exemption, ACL logging and bad input.
func TestNetworkPolicy(t *testing.T) {
	e := newEnv(t, "geneve")
	start := time.Now()
	m := newNPModel(t, e)
	t.Logf("namespaces x, y, z with 9 pods and kube-system/dns serving in %s", time.Since(start).Round(time.Millisecond))
	for _, p := range append(slices.Clone(m.pods), m.dns) {
		t.Logf("  %-14s %-15s on %s", p, p.ip, p.node)
	}
	m.subnets = map[string]netip.Prefix{}
	for _, n := range e.c.Nodes {
		node, err := e.client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
		mustOK(t, err)
		subnets, _, err := annotations.DeclaredNodeSubnets(node)
		mustOK(t, err)
		m.subnets[n.Name] = annotations.IPv4Subnet(subnets)
	}

	for _, c := range npCases(m) {
		t.Run(c.name, func(t *testing.T) { m.runCase(t, c) })
	}
	t.Run("Service traffic is seen after load balancing", m.serviceTraffic)
	t.Run("SCTP ports (INIT chunks over raw sockets)", m.sctpCase)
	t.Run("policy and label updates while traffic flows", m.updates)
	t.Run("kubelet-style probes from the node reach pods under default deny", m.kubeletProbes)
	t.Run("ACL logging names the dropping policy in ovn-controller's log", m.aclLogging)
	t.Run("bad input", m.badInput)
	m.flowParseErrors(t)
	if e.c.Controller.Exited() {
		t.Errorf("dunlin-controller exited:\n%s", e.c.Controller.LogTail(30))
	}
	t.Logf("truth table done in %s", time.Since(start).Round(time.Millisecond))
}

// npCase is one policy case: its policies, created together, and the matrix they give over the
// model's pods and its ports. more runs further checks while the policies are in place.
type npCase struct {
	name     string
	policies []*networkingv1.NetworkPolicy
	ports    []npPort // nil: npPorts
	expect   func(c npCell) bool
	more     func(t *testing.T)
}

// runCase applies a case, checks its matrix, and removes its policies again.
func (m *npModel) runCase(t *testing.T, c npCase) {
	defer m.removePolicies(t)
	m.apply(t, c.policies...)
	ports := c.ports
	if ports == nil {
		ports = npPorts
	}
	m.check(t, c.name, m.pods, m.pods, ports, c.expect)
	if c.more != nil {
		c.more(t)
	}
}

// apply creates (or replaces) the policies and waits for NB and the datapath.
func (m *npModel) apply(t *testing.T, policies ...*networkingv1.NetworkPolicy) {
	t.Helper()
	ctx := context.Background()
	for _, np := range policies {
		client := m.e.client.NetworkingV1().NetworkPolicies(np.Namespace)
		cur, err := client.Get(ctx, np.Name, metav1.GetOptions{})
		if err == nil {
			np = np.DeepCopy()
			np.ResourceVersion = cur.ResourceVersion
			_, err = client.Update(ctx, np, metav1.UpdateOptions{})
		} else {
			_, err = client.Create(ctx, np, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatalf("apply policy %s/%s: %v", np.Namespace, np.Name, err)
		}
	}
	m.settle(t)
}

// removePolicies deletes every NetworkPolicy and waits until their rows are gone and the datapath
// caught up.
func (m *npModel) removePolicies(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	list, err := m.e.client.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list policies: %v", err)
	}
	for _, np := range list.Items {
		if err := m.e.client.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete policy %s/%s: %v", np.Namespace, np.Name, err)
		}
	}
	m.settle(t)
	if out, err := m.e.c.OVN.NBCtl("--bare", "--columns=_uuid", "list", "ACL"); err != nil || out != "" {
		t.Fatalf("ACLs left after deleting every policy: %q %v", out, err)
	}
}

// Policy builders.

// npSel is a label selector matching the pairs k1, v1, k2, v2...; npSel() selects everything.
func npSel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

// npSelExpr is a label selector with one expression.
func npSelExpr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

type npSpecOpt func(*networkingv1.NetworkPolicySpec)

func npPolicy(ns, name string, pods *metav1.LabelSelector, opts ...npSpecOpt) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *pods}}
	for _, o := range opts {
		o(&np.Spec)
	}
	return np
}

func npAddType(s *networkingv1.NetworkPolicySpec, pt networkingv1.PolicyType) {
	if !slices.Contains(s.PolicyTypes, pt) {
		s.PolicyTypes = append(s.PolicyTypes, pt)
	}
}

// npIsolateIngress and npIsolateEgress add the policy type without a rule: a default deny.
func npIsolateIngress(s *networkingv1.NetworkPolicySpec) {
	npAddType(s, networkingv1.PolicyTypeIngress)
}
func npIsolateEgress(s *networkingv1.NetworkPolicySpec) { npAddType(s, networkingv1.PolicyTypeEgress) }

// npIngress adds an ingress rule: from any of peers (none: anywhere) on any of ports (none: all).
func npIngress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) npSpecOpt {
	return func(s *networkingv1.NetworkPolicySpec) {
		npIsolateIngress(s)
		s.Ingress = append(s.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	}
}

// npEgress adds an egress rule: to any of peers (none: anywhere) on any of ports (none: all).
func npEgress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) npSpecOpt {
	return func(s *networkingv1.NetworkPolicySpec) {
		npIsolateEgress(s)
		s.Egress = append(s.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	}
}

func npPeers(p ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return p }

func npPodPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func npNSPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func npIPBlock(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func npRulePort(proto corev1.Protocol, p intstr.IntOrString) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func npRulePortRange(proto corev1.Protocol, from, to int32) networkingv1.NetworkPolicyPort {
	p := npRulePort(proto, intstr.FromInt32(from))
	p.EndPort = &to
	return p
}

// Expectation helpers: Kubernetes semantics in terms of the model.

func npIn(p *npPod, namespaces ...string) bool { return slices.Contains(namespaces, p.ns) }

// npNamed is the number the pod gives a named container port, or 0.
func npNamed(p *npPod, name string, proto corev1.Protocol) int32 {
	for _, cp := range p.ports {
		if cp.Name == name && cp.Protocol == proto {
			return cp.ContainerPort
		}
	}
	return 0
}

// npCases are the cases of one matrix each.
func npCases(m *npModel) []npCase {
	const (
		tcp = corev1.ProtocolTCP
		udp = corev1.ProtocolUDP
	)
	nsName := "kubernetes.io/metadata.name" // the label the apiserver gives every namespace
	node1 := m.subnets["node1"].String()
	yb := m.pod("y/b")
	return []npCase{{
		name:   "no policies: everything allowed",
		expect: func(npCell) bool { return true },
	}, {
		name:     "default deny ingress",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "deny-ingress", npSel(), npIsolateIngress)},
		expect:   func(c npCell) bool { return !npIn(c.to, "x") },
	}, {
		name:     "default deny egress",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "deny-egress", npSel(), npIsolateEgress)},
		expect:   func(c npCell) bool { return !npIn(c.from, "x") },
	}, {
		name:     "default deny ingress and egress",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "deny-all", npSel(), npIsolateIngress, npIsolateEgress)},
		expect:   func(c npCell) bool { return !npIn(c.to, "x") && !npIn(c.from, "x") },
	}, {
		name:     "allow from the same namespace",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "allow-same-ns", npSel(), npIngress(npPeers(npPodPeer(npSel()))))},
		expect:   func(c npCell) bool { return !npIn(c.to, "x") || npIn(c.from, "x") },
	}, {
		name: "allow from another namespace by label",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "allow-from-y", npSel("pod", "a"),
			npIngress(npPeers(npNSPeer(npSel("ns", "y")))))},
		expect: func(c npCell) bool { return !c.to.is("x/a") || npIn(c.from, "y") },
	}, {
		name: "pod selector and namespace selector in one peer: both must match",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "allow-b-elsewhere", npSel("pod", "a"),
			npIngress(npPeers(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: npSelExpr(nsName, metav1.LabelSelectorOpNotIn, "x"),
				PodSelector:       npSel("pod", "b"),
			})))},
		expect: func(c npCell) bool { return !c.to.is("x/a") || (!npIn(c.from, "x") && c.from.name == "b") },
	}, {
		name: "pod selector and namespace selector as two peers: either matches",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "allow-elsewhere-or-b", npSel("pod", "a"),
			npIngress(npPeers(npNSPeer(npSelExpr(nsName, metav1.LabelSelectorOpNotIn, "x")), npPodPeer(npSel("pod", "b")))))},
		expect: func(c npCell) bool { return !c.to.is("x/a") || !npIn(c.from, "x") || c.from.is("x/b") },
	}, {
		name: "ipBlock with except, ingress: node1's pod subnet but y/b",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "allow-node1-but-yb", npSel("pod", "a"),
			npIngress(npPeers(npIPBlock(node1, yb.ip+"/32"))))},
		expect: func(c npCell) bool { return !c.to.is("x/a") || (c.from.node == "node1" && !c.from.is("y/b")) },
	}, {
		name: "ipBlock with except, egress: everywhere but node1's pod subnet",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "deny-to-node1", npSel("pod", "b"),
			npEgress(npPeers(npIPBlock("0.0.0.0/0", node1))))},
		expect: func(c npCell) bool { return !c.from.is("x/b") || c.to.node != "node1" },
	}, {
		// x/b gives serve-80-tcp the number 81 (and serve-81-tcp 80).
		name: "named ports resolve per destination pod, ingress",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "allow-serve-80", npSel(),
			npIngress(nil, npRulePort(tcp, intstr.FromString("serve-80-tcp")), npRulePort(udp, intstr.FromString("serve-80-udp"))))},
		expect: func(c npCell) bool {
			return !npIn(c.to, "x") || c.port.port == npNamed(c.to, "serve-80-"+strings.ToLower(string(c.port.proto)), c.port.proto)
		},
	}, {
		name: "named ports resolve per destination pod, egress",
		policies: []*networkingv1.NetworkPolicy{npPolicy("y", "allow-to-serve-81", npSel("pod", "a"),
			npEgress(nil, npRulePort(tcp, intstr.FromString("serve-81-tcp"))))},
		expect: func(c npCell) bool {
			return !c.from.is("y/a") || (c.port.proto == tcp && c.port.port == npNamed(c.to, "serve-81-tcp", tcp))
		},
	}, {
		name: "endPort ranges",
		policies: []*networkingv1.NetworkPolicy{
			npPolicy("x", "allow-ranges", npSel(), npIngress(nil, npRulePortRange(tcp, 81, 90), npRulePortRange(udp, 70, 80))),
			npPolicy("y", "allow-to-75-80", npSel("pod", "a"), npEgress(nil, npRulePortRange(tcp, 75, 80))),
		},
		expect: func(c npCell) bool {
			ingressOK := !npIn(c.to, "x") || c.port == npTCP81 || c.port == npUDP80
			egressOK := !c.from.is("y/a") || c.port == npTCP80
			return ingressOK && egressOK
		},
	}, {
		name: "multiple policies add up",
		policies: []*networkingv1.NetworkPolicy{
			npPolicy("x", "deny-ingress", npSel(), npIsolateIngress),
			npPolicy("x", "a-from-y-on-80", npSel("pod", "a"), npIngress(npPeers(npNSPeer(npSel("ns", "y"))), npRulePort(tcp, intstr.FromInt32(80)))),
			npPolicy("x", "a-from-b-on-81", npSel("pod", "a"), npIngress(npPeers(npPodPeer(npSel("pod", "b"))), npRulePort(tcp, intstr.FromInt32(81)))),
		},
		expect: func(c npCell) bool {
			switch {
			case c.to.is("x/a"):
				return (npIn(c.from, "y") && c.port == npTCP80) || (c.from.is("x/b") && c.port == npTCP81)
			case npIn(c.to, "x"):
				return false
			}
			return true
		},
	}, {
		name: "ingress of the destination and egress of the source must both allow",
		policies: []*networkingv1.NetworkPolicy{
			npPolicy("x", "from-ya-yb", npSel(), npIngress(npPeers(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: npSel("ns", "y"), PodSelector: npSelExpr("pod", metav1.LabelSelectorOpIn, "a", "b")}))),
			npPolicy("y", "a-only-to-x", npSel("pod", "a"), npEgress(npPeers(npNSPeer(npSel("ns", "x"))))),
		},
		expect: func(c npCell) bool {
			ingressOK := !npIn(c.to, "x") || c.from.is("y/a", "y/b")
			egressOK := !c.from.is("y/a") || npIn(c.to, "x")
			return ingressOK && egressOK
		},
	}, {
		name: "egress with DNS allowed",
		policies: []*networkingv1.NetworkPolicy{npPolicy("x", "dns-and-y-80", npSel(),
			npEgress(npPeers(networkingv1.NetworkPolicyPeer{NamespaceSelector: npSel(nsName, metav1.NamespaceSystem), PodSelector: npSel("k8s-app", "kube-dns")}),
				npRulePort(udp, intstr.FromInt32(53)), npRulePort(tcp, intstr.FromInt32(53))),
			npEgress(npPeers(npNSPeer(npSel("ns", "y"))), npRulePort(tcp, intstr.FromInt32(80))))},
		expect: func(c npCell) bool { return !npIn(c.from, "x") || (npIn(c.to, "y") && c.port == npTCP80) },
		more: func(t *testing.T) {
			m.check(t, "egress with DNS allowed, to kube-system/dns", m.pods, []*npPod{m.dns}, []npPort{npUDP53, npTCP53, npTCP80},
				func(c npCell) bool { return !npIn(c.from, "x") || c.port != npTCP80 })
		},
	}, {
		name: "deleting the policies restores access",
		policies: []*networkingv1.NetworkPolicy{
			npPolicy("x", "deny-all", npSel(), npIsolateIngress, npIsolateEgress),
			npPolicy("y", "deny-all", npSel(), npIsolateIngress, npIsolateEgress),
		},
		expect: func(c npCell) bool { return !npIn(c.to, "x", "y") && !npIn(c.from, "x", "y") },
		more: func(t *testing.T) {
			m.removePolicies(t)
			m.check(t, "after deleting them", m.pods, m.pods, npPorts, func(npCell) bool { return true })
		},
	}}
}

// serviceTraffic checks policies against traffic to a ClusterIP: the backend's ingress policy sees the
// client pod's own address (no SNAT before the ACLs), and an egress policy that allows the backend pod
// allows reaching it through its ClusterIP (egress ACLs apply after load balancing).
func (m *npModel) serviceTraffic(t *testing.T) {
	ctx := context.Background()
	vip := m.e.createService("x", "web", map[string]string{"pod": "a"}, []corev1.ServicePort{
		{Name: "http", Port: 80, TargetPort: intstr.FromInt32(80), Protocol: corev1.ProtocolTCP}}, nil)
	defer func() {
		if err := m.e.client.CoreV1().Services("x").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete service x/web: %v", err)
		}
	}()
	// No kube-controller-manager runs in this cluster: write the Service's EndpointSlice as it would.
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "x", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](80), Protocol: ptr.To(corev1.ProtocolTCP)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{m.pod("x/a").ip}, NodeName: ptr.To(m.pod("x/a").node),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}}},
	}
	if _, err := m.e.client.DiscoveryV1().EndpointSlices("x").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create EndpointSlice x/web-1: %v", err)
	}
	m.e.waitBackends("x", "web", "TCP", 1)
	// The ClusterIP, answered by x/a. x/a itself is left out as a client: its own Service hairpins.
	web := &npPod{ns: "x", name: "a", ip: vip}
	var clients, yPods []*npPod
	for _, p := range m.pods {
		if !p.is("x/a") {
			clients = append(clients, p)
		}
		if npIn(p, "y") {
			yPods = append(yPods, p)
		}
	}
	defer m.removePolicies(t)
	m.apply(t, npPolicy("x", "web-from-b", npSel("pod", "a"),
		npIngress(npPeers(networkingv1.NetworkPolicyPeer{NamespaceSelector: npSel(), PodSelector: npSel("pod", "b")}))))
	m.check(t, "the backend's ingress policy, through the ClusterIP", clients, []*npPod{web}, []npPort{npTCP80},
		func(c npCell) bool { return c.from.name == "b" })
	m.removePolicies(t)
	m.apply(t, npPolicy("y", "egress-to-x-a", npSel(),
		npEgress(npPeers(networkingv1.NetworkPolicyPeer{NamespaceSelector: npSel("ns", "x"), PodSelector: npSel("pod", "a")}),
			npRulePort(corev1.ProtocolTCP, intstr.FromInt32(80)))))
	m.check(t, "an egress policy allowing the backend, through the ClusterIP", clients, []*npPod{web}, []npPort{npTCP80},
		func(npCell) bool { return true })
	m.check(t, "the same egress policy, to another pod", yPods, []*npPod{m.pod("x/b")}, []npPort{npTCP80},
		func(npCell) bool { return false })
}

func npJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// label sets (value non-empty) or removes labels of a pod or namespace with a merge patch.
func (m *npModel) label(t *testing.T, ns, pod string, kv ...string) {
	t.Helper()
	l := map[string]any{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "" {
			l[kv[i]] = nil
		} else {
			l[kv[i]] = kv[i+1]
		}
	}
	patch := fmt.Appendf(nil, `{"metadata":{"labels":%s}}`, npJSON(t, l))
	var err error
	ctx := context.Background()
	if pod == "" {
		_, err = m.e.client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{})
	} else {
		_, err = m.e.client.CoreV1().Pods(ns).Patch(ctx, pod, types.MergePatchType, patch, metav1.PatchOptions{})
	}
	if err != nil {
		t.Fatalf("label %s/%s %v: %v", ns, pod, kv, err)
	}
}

// npFlow is a probe repeated in the background while policies and labels change.
type npFlow struct {
	from, to string
	port     npPort
}

// updates changes a policy and the labels it selects by, step by step, each step checked with a whole
// matrix, while background flows probe without pause. A flow's probe counts when it ran entirely
// within one step's settled state, and must then agree with that step's expectation (repeated once).
func (m *npModel) updates(t *testing.T) {
	defer func() {
		m.label(t, "y", "", "team", "")
		for _, p := range []string{"x/a", "x/b", "x/c", "z/c"} {
			ns, name, _ := strings.Cut(p, "/")
			m.label(t, ns, name, "target", "", "role", "")
		}
		m.removePolicies(t)
	}()
	blue := func(ports ...networkingv1.NetworkPolicyPort) *networkingv1.NetworkPolicy {
		rule := npIngress(npPeers(npNSPeer(npSel("team", "blue")), npPodPeer(npSel("role", "client"))), ports...)
		if len(ports) > 0 {
			rule = npIngress(npPeers(npNSPeer(npSel("team", "blue"))), ports...)
		}
		return npPolicy("x", "allow-blue", npSel("target", "yes"), rule)
	}
	type step struct {
		what   string
		change func()
		expect func(c npCell) bool
	}
	steps := []step{{
		what:   "x/a labelled target=yes, policy allow-blue selects it: nobody is blue yet",
		change: func() { m.label(t, "x", "a", "target", "yes"); m.apply(t, blue()) },
		expect: func(c npCell) bool { return !c.to.is("x/a") },
	}, {
		what:   "namespace y labelled team=blue",
		change: func() { m.label(t, "y", "", "team", "blue") },
		expect: func(c npCell) bool { return !c.to.is("x/a") || npIn(c.from, "y") },
	}, {
		what: "x/c and z/c labelled role=client: the pod selector is x's only",
		change: func() {
			m.label(t, "x", "c", "role", "client")
			m.label(t, "z", "c", "role", "client")
		},
		expect: func(c npCell) bool { return !c.to.is("x/a") || npIn(c.from, "y") || c.from.is("x/c") },
	}, {
		what: "target moves from x/a to x/b",
		change: func() {
			m.label(t, "x", "a", "target", "")
			m.label(t, "x", "b", "target", "yes")
		},
		expect: func(c npCell) bool { return !c.to.is("x/b") || npIn(c.from, "y") || c.from.is("x/c") },
	}, {
		what:   "policy updated: only the blue namespace, only on TCP 81",
		change: func() { m.apply(t, blue(npRulePort(corev1.ProtocolTCP, intstr.FromInt32(81)))) },
		expect: func(c npCell) bool { return !c.to.is("x/b") || (npIn(c.from, "y") && c.port == npTCP81) },
	}, {
		what:   "policy deleted",
		change: func() { m.removePolicies(t) },
		expect: func(c npCell) bool { return true },
	}}
	flows := []npFlow{{"y/a", "x/a", npTCP80}, {"x/c", "x/a", npTCP80}, {"z/a", "x/a", npUDP80},
		{"y/b", "x/b", npTCP81}, {"y/c", "x/b", npTCP80}, {"z/c", "x/b", npTCP80}}

	var phase atomic.Int32 // the settled step, or -1 while changing
	phase.Store(-1)
	var mu sync.Mutex
	counted, allowed, wrong := 0, 0, []string{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, f := range flows {
		from, to := m.pod(f.from), m.pod(f.to)
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				k := phase.Load()
				err := m.probe(from.sb, to, f.port, npProbeTimeout)
				if k < 0 || phase.Load() != k {
					continue
				}
				c := npCell{from, to, f.port}
				want := steps[k].expect(c)
				if (err == nil) != want {
					err = m.probe(from.sb, to, f.port, npRetryTimeout)
					if phase.Load() != k {
						continue
					}
				}
				mu.Lock()
				counted++
				if err == nil {
					allowed++
				}
				if (err == nil) != want {
					wrong = append(wrong, fmt.Sprintf("step %d (%s): %s: want allowed=%v, got %v", k+1, steps[k].what, c, want, npOutcome(err)))
				}
				mu.Unlock()
			}
		})
	}
	for i, st := range steps {
		phase.Store(-1)
		st.change()
		m.settle(t)
		phase.Store(int32(i))
		m.check(t, fmt.Sprintf("step %d: %s", i+1, st.what), m.pods, m.pods, npPorts, st.expect)
	}
	close(stop)
	wg.Wait()
	t.Logf("background flows: %d probes counted within settled steps, %d allowed", counted, allowed)
	if len(wrong) > 0 {
		t.Errorf("background flows disagreed with the settled policy:\n  %s", strings.Join(wrong, "\n  "))
	}
	if counted == 0 {
		t.Errorf("no background probe ran within a settled step")
	}
}

// kubeletProbes: under a default deny of both directions in x, each node's host (its network
// namespace, through the management port) still reaches the x pods on it, as kubelet probes must.
// Kubernetes requires this of the pod's own node; Dunlin allows every node's management port, which
// the other node's probes show.
func (m *npModel) kubeletProbes(t *testing.T) {
	defer m.removePolicies(t)
	m.apply(t, npPolicy("x", "deny-all", npSel(), npIsolateIngress, npIsolateEgress))
	for _, n := range m.e.c.Nodes {
		host := harness.Sandbox{NetnsName: n.Netns, Netns: "/var/run/netns/" + n.Netns}
		for _, p := range m.pods {
			if !npIn(p, "x") {
				continue
			}
			err := m.probe(host, p, npTCP80, npRetryTimeout)
			if err != nil && p.node == n.Name {
				err = m.probe(host, p, npTCP80, npRetryTimeout) // the one repeat
			}
			switch {
			case p.node == n.Name && err != nil:
				t.Errorf("%s's host to %s (on it) under default deny: %v", n.Name, p, err)
			case p.node == n.Name:
				t.Logf("%s's host reaches %s on it", n.Name, p)
			default:
				t.Logf("%s's host to %s on the other node: %s", n.Name, p, npOutcome(err))
			}
		}
	}
	// The pods' own traffic stays blocked: the exemption is the hosts'.
	m.check(t, "pods under the same policy", m.pods, m.pods, []npPort{npTCP80},
		func(c npCell) bool { return !npIn(c.to, "x") && !npIn(c.from, "x") })
}

// aclLogging: with dunlin.io/acl-logging=deny on x, a dropped connection shows up in the ovn-controller
// log of the destination's node under the name of the policy that isolates the pod; with "all", an
// allowed one under the allowing policy's name; with two policies isolating, the deny names the first
// and the count of the others.
func (m *npModel) aclLogging(t *testing.T) {
	defer func() {
		m.setAnnotation(t, "x", translator.ACLLoggingAnnotation, "")
		m.removePolicies(t)
	}()
	m.setAnnotation(t, "x", translator.ACLLoggingAnnotation, "deny")
	m.apply(t, npPolicy("x", "deny-all", npSel(), npIsolateIngress))
	xb := m.pod("x/b")
	// From a pod on x/b's node and from one on the other node: to-lport ACLs run on the destination's.
	var sameNode, otherNode *npPod
	for _, p := range m.pods {
		switch {
		case npIn(p, "x"):
		case p.node == xb.node && sameNode == nil:
			sameNode = p
		case p.node != xb.node && otherNode == nil:
			otherNode = p
		}
	}
	for _, from := range []*npPod{sameNode, otherNode} {
		if err := m.probe(from.sb, xb, npTCP80, npProbeTimeout); err == nil {
			t.Errorf("%s reached %s under deny-all", from, xb)
		}
		m.expectLog(t, xb.node, `name="x/deny-all"`, "verdict=drop", "nw_src="+from.ip, "nw_dst="+xb.ip)
	}

	m.setAnnotation(t, "x", translator.ACLLoggingAnnotation, "all")
	m.apply(t, npPolicy("x", "allow-from-y", npSel("pod", "b"), npIngress(npPeers(npNSPeer(npSel("ns", "y"))))))
	ya := m.pod("y/a")
	if err := m.probe(ya.sb, xb, npTCP80, npRetryTimeout); err != nil {
		t.Errorf("%s to %s allowed by allow-from-y: %v", ya, xb, err)
	}
	m.expectLog(t, xb.node, `name="x/allow-from-y"`, "verdict=allow", "nw_src="+ya.ip, "nw_dst="+xb.ip)
	zb := m.pod("z/b")
	if err := m.probe(zb.sb, xb, npTCP81, npProbeTimeout); err == nil {
		t.Errorf("%s reached %s under deny-all", zb, xb)
	}
	// deny-all and allow-from-y both isolate x/b: "<first>+<others>".
	m.expectLog(t, xb.node, `name="x/allow-from-y+1"`, "verdict=drop", "nw_src="+zb.ip, "nw_dst="+xb.ip, "tp_dst=81")
}

// setAnnotation sets (value non-empty) or removes a namespace annotation.
func (m *npModel) setAnnotation(t *testing.T, ns, key, value string) {
	t.Helper()
	var v any = value
	if value == "" {
		v = nil
	}
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":%s}}`, npJSON(t, map[string]any{key: v}))
	if _, err := m.e.client.CoreV1().Namespaces().Patch(context.Background(), ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("annotate namespace %s: %v", ns, err)
	}
}

// expectLog waits for a line of the node's ovn-controller log holding every one of parts.
func (m *npModel) expectLog(t *testing.T, node string, parts ...string) {
	t.Helper()
	var path string
	for _, n := range m.e.c.Nodes {
		if n.Name == node {
			path = filepath.Join(n.Dir, "ovn-controller.log")
		}
	}
	var found string
	err := harness.Eventually(30*time.Second, func() error {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, "acl_log") && npAllIn(line, parts) {
				found = line
				return nil
			}
		}
		return fmt.Errorf("no acl_log line with %q", parts)
	})
	if err != nil {
		t.Errorf("%s's ovn-controller.log: %v\n--- acl_log lines ---\n%s", node, err, npGrepLines(path, "acl_log", 20))
		return
	}
	t.Logf("%s: %s", node, found)
}

func npAllIn(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// npGrepLines returns the last n lines of the file holding s.
func npGrepLines(path, s string, n int) string {
	data, _ := os.ReadFile(path)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}

// badInput: policies that select nothing, name a port no pod has, or give an ipBlock overlapping the
// pod network have a defined outcome, the controller keeps running, and the last two, where the user
// must act, carry a Warning event.
func (m *npModel) badInput(t *testing.T) {
	const tcp = corev1.ProtocolTCP
	cases := []struct {
		name   string
		np     *networkingv1.NetworkPolicy
		reason string // the Warning expected on the policy; "" none
		expect func(c npCell) bool
	}{{
		name:   "a policy that selects no pod isolates nothing",
		np:     npPolicy("x", "selects-nothing", npSel("pod", "nobody"), npIsolateIngress, npIsolateEgress),
		expect: func(npCell) bool { return true },
	}, {
		name:   "a named port no pod has: the rule matches nothing, the pods stay isolated",
		np:     npPolicy("x", "no-such-port", npSel(), npIngress(nil, npRulePort(tcp, intstr.FromString("no-such-port")))),
		reason: "PolicyNamedPortNotFound",
		expect: func(c npCell) bool { return !npIn(c.to, "x") },
	}, {
		name:   "an ipBlock overlapping the pod network applies to pod addresses",
		np:     npPolicy("x", "pod-network-block", npSel(), npIngress(npPeers(npIPBlock(m.subnets["node1"].String())))),
		reason: "PolicyIPBlockOverlapsPods",
		expect: func(c npCell) bool { return !npIn(c.to, "x") || c.from.node == "node1" },
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			defer m.removePolicies(t)
			m.apply(t, c.np)
			m.check(t, c.name, m.pods, m.pods, npPorts, c.expect)
			events := m.warnings(t, c.np)
			switch {
			case c.reason == "" && len(events) > 0:
				t.Errorf("Warning events on %s, where the user need not act: %v", c.np.Name, events)
			case c.reason != "":
				err := harness.Eventually(30*time.Second, func() error {
					if events = m.warnings(t, c.np); !slices.ContainsFunc(events, func(s string) bool { return strings.HasPrefix(s, c.reason+":") }) {
						return fmt.Errorf("events %v", events)
					}
					return nil
				})
				if err != nil {
					t.Errorf("no Warning %s on policy %s: %v", c.reason, c.np.Name, err)
				}
				t.Logf("events: %v", events)
			}
			if m.e.c.Controller.Exited() {
				t.Fatalf("dunlin-controller exited:\n%s", m.e.c.Controller.LogTail(30))
			}
		})
	}
}

// warnings lists "reason: message" of the Warning events on a policy.
func (m *npModel) warnings(t *testing.T, np *networkingv1.NetworkPolicy) []string {
	t.Helper()
	sel := fields.Set{"involvedObject.name": np.Name, "involvedObject.kind": "NetworkPolicy", "type": corev1.EventTypeWarning}.AsSelector()
	evs, err := m.e.client.CoreV1().Events(np.Namespace).List(context.Background(), metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		t.Fatalf("list events: %v", err)
	}
	var out []string
	for _, ev := range evs.Items {
		out = append(out, ev.Reason+": "+ev.Message)
	}
	return out
}
