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
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

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
	expect   func(c cell) bool
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

// sel is a label selector matching the pairs k1, v1, k2, v2...; sel() selects everything.
func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

// selExpr is a label selector with one expression.
func selExpr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

type specOpt func(*networkingv1.NetworkPolicySpec)

func policy(ns, name string, pods *metav1.LabelSelector, opts ...specOpt) *networkingv1.NetworkPolicy {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *pods}}
	for _, o := range opts {
		o(&np.Spec)
	}
	return np
}

func addType(s *networkingv1.NetworkPolicySpec, pt networkingv1.PolicyType) {
	if !slices.Contains(s.PolicyTypes, pt) {
		s.PolicyTypes = append(s.PolicyTypes, pt)
	}
}

// isolateIngress and isolateEgress add the policy type without a rule: a default deny.
func isolateIngress(s *networkingv1.NetworkPolicySpec) { addType(s, networkingv1.PolicyTypeIngress) }
func isolateEgress(s *networkingv1.NetworkPolicySpec)  { addType(s, networkingv1.PolicyTypeEgress) }

// ingress adds an ingress rule: from any of peers (none: anywhere) on any of ports (none: all).
func ingress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) specOpt {
	return func(s *networkingv1.NetworkPolicySpec) {
		isolateIngress(s)
		s.Ingress = append(s.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	}
}

// egress adds an egress rule: to any of peers (none: anywhere) on any of ports (none: all).
func egress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) specOpt {
	return func(s *networkingv1.NetworkPolicySpec) {
		isolateEgress(s)
		s.Egress = append(s.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	}
}

func peers(p ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return p }

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func ipBlock(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto corev1.Protocol, p intstr.IntOrString) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &p}
}

func portRange(proto corev1.Protocol, from, to int32) networkingv1.NetworkPolicyPort {
	p := port(proto, intstr.FromInt32(from))
	p.EndPort = &to
	return p
}

// Expectation helpers: Kubernetes semantics in terms of the model.

func in(p *npPod, namespaces ...string) bool { return slices.Contains(namespaces, p.ns) }

// named is the number the pod gives a named container port, or 0.
func named(p *npPod, name string, proto corev1.Protocol) int32 {
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
		expect: func(cell) bool { return true },
	}, {
		name:     "default deny ingress",
		policies: []*networkingv1.NetworkPolicy{policy("x", "deny-ingress", sel(), isolateIngress)},
		expect:   func(c cell) bool { return !in(c.to, "x") },
	}, {
		name:     "default deny egress",
		policies: []*networkingv1.NetworkPolicy{policy("x", "deny-egress", sel(), isolateEgress)},
		expect:   func(c cell) bool { return !in(c.from, "x") },
	}, {
		name:     "default deny ingress and egress",
		policies: []*networkingv1.NetworkPolicy{policy("x", "deny-all", sel(), isolateIngress, isolateEgress)},
		expect:   func(c cell) bool { return !in(c.to, "x") && !in(c.from, "x") },
	}, {
		name:     "allow from the same namespace",
		policies: []*networkingv1.NetworkPolicy{policy("x", "allow-same-ns", sel(), ingress(peers(podPeer(sel()))))},
		expect:   func(c cell) bool { return !in(c.to, "x") || in(c.from, "x") },
	}, {
		name: "allow from another namespace by label",
		policies: []*networkingv1.NetworkPolicy{policy("x", "allow-from-y", sel("pod", "a"),
			ingress(peers(nsPeer(sel("ns", "y")))))},
		expect: func(c cell) bool { return !c.to.is("x/a") || in(c.from, "y") },
	}, {
		name: "pod selector and namespace selector in one peer: both must match",
		policies: []*networkingv1.NetworkPolicy{policy("x", "allow-b-elsewhere", sel("pod", "a"),
			ingress(peers(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: selExpr(nsName, metav1.LabelSelectorOpNotIn, "x"),
				PodSelector:       sel("pod", "b"),
			})))},
		expect: func(c cell) bool { return !c.to.is("x/a") || (!in(c.from, "x") && c.from.name == "b") },
	}, {
		name: "pod selector and namespace selector as two peers: either matches",
		policies: []*networkingv1.NetworkPolicy{policy("x", "allow-elsewhere-or-b", sel("pod", "a"),
			ingress(peers(nsPeer(selExpr(nsName, metav1.LabelSelectorOpNotIn, "x")), podPeer(sel("pod", "b")))))},
		expect: func(c cell) bool { return !c.to.is("x/a") || !in(c.from, "x") || c.from.is("x/b") },
	}, {
		name: "ipBlock with except, ingress: node1's pod subnet but y/b",
		policies: []*networkingv1.NetworkPolicy{policy("x", "allow-node1-but-yb", sel("pod", "a"),
			ingress(peers(ipBlock(node1, yb.ip+"/32"))))},
		expect: func(c cell) bool { return !c.to.is("x/a") || (c.from.node == "node1" && !c.from.is("y/b")) },
	}, {
		name: "ipBlock with except, egress: everywhere but node1's pod subnet",
		policies: []*networkingv1.NetworkPolicy{policy("x", "deny-to-node1", sel("pod", "b"),
			egress(peers(ipBlock("0.0.0.0/0", node1))))},
		expect: func(c cell) bool { return !c.from.is("x/b") || c.to.node != "node1" },
	}, {
		// x/b gives serve-80-tcp the number 81 (and serve-81-tcp 80).
		name: "named ports resolve per destination pod, ingress",
		policies: []*networkingv1.NetworkPolicy{policy("x", "allow-serve-80", sel(),
			ingress(nil, port(tcp, intstr.FromString("serve-80-tcp")), port(udp, intstr.FromString("serve-80-udp"))))},
		expect: func(c cell) bool {
			return !in(c.to, "x") || c.port.port == named(c.to, "serve-80-"+strings.ToLower(string(c.port.proto)), c.port.proto)
		},
	}, {
		name: "named ports resolve per destination pod, egress",
		policies: []*networkingv1.NetworkPolicy{policy("y", "allow-to-serve-81", sel("pod", "a"),
			egress(nil, port(tcp, intstr.FromString("serve-81-tcp"))))},
		expect: func(c cell) bool {
			return !c.from.is("y/a") || (c.port.proto == tcp && c.port.port == named(c.to, "serve-81-tcp", tcp))
		},
	}, {
		name: "endPort ranges",
		policies: []*networkingv1.NetworkPolicy{
			policy("x", "allow-ranges", sel(), ingress(nil, portRange(tcp, 81, 90), portRange(udp, 70, 80))),
			policy("y", "allow-to-75-80", sel("pod", "a"), egress(nil, portRange(tcp, 75, 80))),
		},
		expect: func(c cell) bool {
			ingressOK := !in(c.to, "x") || c.port == tcp81 || c.port == udp80
			egressOK := !c.from.is("y/a") || c.port == tcp80
			return ingressOK && egressOK
		},
	}, {
		name: "multiple policies add up",
		policies: []*networkingv1.NetworkPolicy{
			policy("x", "deny-ingress", sel(), isolateIngress),
			policy("x", "a-from-y-on-80", sel("pod", "a"), ingress(peers(nsPeer(sel("ns", "y"))), port(tcp, intstr.FromInt32(80)))),
			policy("x", "a-from-b-on-81", sel("pod", "a"), ingress(peers(podPeer(sel("pod", "b"))), port(tcp, intstr.FromInt32(81)))),
		},
		expect: func(c cell) bool {
			switch {
			case c.to.is("x/a"):
				return (in(c.from, "y") && c.port == tcp80) || (c.from.is("x/b") && c.port == tcp81)
			case in(c.to, "x"):
				return false
			}
			return true
		},
	}, {
		name: "ingress of the destination and egress of the source must both allow",
		policies: []*networkingv1.NetworkPolicy{
			policy("x", "from-ya-yb", sel(), ingress(peers(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: sel("ns", "y"), PodSelector: selExpr("pod", metav1.LabelSelectorOpIn, "a", "b")}))),
			policy("y", "a-only-to-x", sel("pod", "a"), egress(peers(nsPeer(sel("ns", "x"))))),
		},
		expect: func(c cell) bool {
			ingressOK := !in(c.to, "x") || c.from.is("y/a", "y/b")
			egressOK := !c.from.is("y/a") || in(c.to, "x")
			return ingressOK && egressOK
		},
	}, {
		name: "egress with DNS allowed",
		policies: []*networkingv1.NetworkPolicy{policy("x", "dns-and-y-80", sel(),
			egress(peers(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(nsName, metav1.NamespaceSystem), PodSelector: sel("k8s-app", "kube-dns")}),
				port(udp, intstr.FromInt32(53)), port(tcp, intstr.FromInt32(53))),
			egress(peers(nsPeer(sel("ns", "y"))), port(tcp, intstr.FromInt32(80))))},
		expect: func(c cell) bool { return !in(c.from, "x") || (in(c.to, "y") && c.port == tcp80) },
		more: func(t *testing.T) {
			m.check(t, "egress with DNS allowed, to kube-system/dns", m.pods, []*npPod{m.dns}, []npPort{udp53, tcp53, tcp80},
				func(c cell) bool { return !in(c.from, "x") || c.port != tcp80 })
		},
	}, {
		name: "deleting the policies restores access",
		policies: []*networkingv1.NetworkPolicy{
			policy("x", "deny-all", sel(), isolateIngress, isolateEgress),
			policy("y", "deny-all", sel(), isolateIngress, isolateEgress),
		},
		expect: func(c cell) bool { return !in(c.to, "x", "y") && !in(c.from, "x", "y") },
		more: func(t *testing.T) {
			m.removePolicies(t)
			m.check(t, "after deleting them", m.pods, m.pods, npPorts, func(cell) bool { return true })
		},
	}}
}

func mustJSON(t *testing.T, v any) []byte {
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
	patch := fmt.Appendf(nil, `{"metadata":{"labels":%s}}`, mustJSON(t, l))
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

// flow is a probe repeated in the background while policies and labels change.
type flow struct {
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
		rule := ingress(peers(nsPeer(sel("team", "blue")), podPeer(sel("role", "client"))), ports...)
		if len(ports) > 0 {
			rule = ingress(peers(nsPeer(sel("team", "blue"))), ports...)
		}
		return policy("x", "allow-blue", sel("target", "yes"), rule)
	}
	type step struct {
		what   string
		change func()
		expect func(c cell) bool
	}
	steps := []step{{
		what:   "x/a labelled target=yes, policy allow-blue selects it: nobody is blue yet",
		change: func() { m.label(t, "x", "a", "target", "yes"); m.apply(t, blue()) },
		expect: func(c cell) bool { return !c.to.is("x/a") },
	}, {
		what:   "namespace y labelled team=blue",
		change: func() { m.label(t, "y", "", "team", "blue") },
		expect: func(c cell) bool { return !c.to.is("x/a") || in(c.from, "y") },
	}, {
		what: "x/c and z/c labelled role=client: the pod selector is x's only",
		change: func() {
			m.label(t, "x", "c", "role", "client")
			m.label(t, "z", "c", "role", "client")
		},
		expect: func(c cell) bool { return !c.to.is("x/a") || in(c.from, "y") || c.from.is("x/c") },
	}, {
		what: "target moves from x/a to x/b",
		change: func() {
			m.label(t, "x", "a", "target", "")
			m.label(t, "x", "b", "target", "yes")
		},
		expect: func(c cell) bool { return !c.to.is("x/b") || in(c.from, "y") || c.from.is("x/c") },
	}, {
		what:   "policy updated: only the blue namespace, only on TCP 81",
		change: func() { m.apply(t, blue(port(corev1.ProtocolTCP, intstr.FromInt32(81)))) },
		expect: func(c cell) bool { return !c.to.is("x/b") || (in(c.from, "y") && c.port == tcp81) },
	}, {
		what:   "policy deleted",
		change: func() { m.removePolicies(t) },
		expect: func(c cell) bool { return true },
	}}
	flows := []flow{{"y/a", "x/a", tcp80}, {"x/c", "x/a", tcp80}, {"z/a", "x/a", udp80},
		{"y/b", "x/b", tcp81}, {"y/c", "x/b", tcp80}, {"z/c", "x/b", tcp80}}

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
				c := cell{from, to, f.port}
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
					wrong = append(wrong, fmt.Sprintf("step %d (%s): %s: want allowed=%v, got %v", k+1, steps[k].what, c, want, orAllowed(err)))
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
	m.apply(t, policy("x", "deny-all", sel(), isolateIngress, isolateEgress))
	for _, n := range m.e.c.Nodes {
		host := harness.Sandbox{NetnsName: n.Netns, Netns: "/var/run/netns/" + n.Netns}
		for _, p := range m.pods {
			if !in(p, "x") {
				continue
			}
			err := m.probe(host, p, tcp80, npRetryTimeout)
			if err != nil && p.node == n.Name {
				err = m.probe(host, p, tcp80, npRetryTimeout) // the one repeat
			}
			switch {
			case p.node == n.Name && err != nil:
				t.Errorf("%s's host to %s (on it) under default deny: %v", n.Name, p, err)
			case p.node == n.Name:
				t.Logf("%s's host reaches %s on it", n.Name, p)
			default:
				t.Logf("%s's host to %s on the other node: %s", n.Name, p, orAllowed(err))
			}
		}
	}
	// The pods' own traffic stays blocked: the exemption is the hosts'.
	m.check(t, "pods under the same policy", m.pods, m.pods, []npPort{tcp80},
		func(c cell) bool { return !in(c.to, "x") && !in(c.from, "x") })
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
	m.apply(t, policy("x", "deny-all", sel(), isolateIngress))
	xb := m.pod("x/b")
	// From a pod on x/b's node and from one on the other node: to-lport ACLs run on the destination's.
	var sameNode, otherNode *npPod
	for _, p := range m.pods {
		switch {
		case in(p, "x"):
		case p.node == xb.node && sameNode == nil:
			sameNode = p
		case p.node != xb.node && otherNode == nil:
			otherNode = p
		}
	}
	for _, from := range []*npPod{sameNode, otherNode} {
		if err := m.probe(from.sb, xb, tcp80, npProbeTimeout); err == nil {
			t.Errorf("%s reached %s under deny-all", from, xb)
		}
		m.expectLog(t, xb.node, `name="x/deny-all"`, "verdict=drop", "nw_src="+from.ip, "nw_dst="+xb.ip)
	}

	m.setAnnotation(t, "x", translator.ACLLoggingAnnotation, "all")
	m.apply(t, policy("x", "allow-from-y", sel("pod", "b"), ingress(peers(nsPeer(sel("ns", "y"))))))
	ya := m.pod("y/a")
	if err := m.probe(ya.sb, xb, tcp80, npRetryTimeout); err != nil {
		t.Errorf("%s to %s allowed by allow-from-y: %v", ya, xb, err)
	}
	m.expectLog(t, xb.node, `name="x/allow-from-y"`, "verdict=allow", "nw_src="+ya.ip, "nw_dst="+xb.ip)
	zb := m.pod("z/b")
	if err := m.probe(zb.sb, xb, tcp81, npProbeTimeout); err == nil {
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
	patch := fmt.Appendf(nil, `{"metadata":{"annotations":%s}}`, mustJSON(t, map[string]any{key: v}))
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
			if strings.Contains(line, "acl_log") && allIn(line, parts) {
				found = line
				return nil
			}
		}
		return fmt.Errorf("no acl_log line with %q", parts)
	})
	if err != nil {
		t.Errorf("%s's ovn-controller.log: %v\n--- acl_log lines ---\n%s", node, err, grepLines(path, "acl_log", 20))
		return
	}
	t.Logf("%s: %s", node, found)
}

func allIn(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// grepLines returns the last n lines of the file holding s.
func grepLines(path, s string, n int) string {
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
		expect func(c cell) bool
	}{{
		name:   "a policy that selects no pod isolates nothing",
		np:     policy("x", "selects-nothing", sel("pod", "nobody"), isolateIngress, isolateEgress),
		expect: func(cell) bool { return true },
	}, {
		name:   "a named port no pod has: the rule matches nothing, the pods stay isolated",
		np:     policy("x", "no-such-port", sel(), ingress(nil, port(tcp, intstr.FromString("no-such-port")))),
		reason: "PolicyNamedPortNotFound",
		expect: func(c cell) bool { return !in(c.to, "x") },
	}, {
		name:   "an ipBlock overlapping the pod network applies to pod addresses",
		np:     policy("x", "pod-network-block", sel(), ingress(peers(ipBlock(m.subnets["node1"].String())))),
		reason: "PolicyIPBlockOverlapsPods",
		expect: func(c cell) bool { return !in(c.to, "x") || c.from.node == "node1" },
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
