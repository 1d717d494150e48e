package translator

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

func testPod(ns, name, addr string, lbls map[string]string, ports ...corev1.ContainerPort) PolicyPod {
	return PolicyPod{Pod: &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}}}, Addr: netip.MustParseAddr(addr)}
}

func policy(ns, name string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

// acls returns the ACLs of rows by their ID, and the port group.
func acls(t *testing.T, rows []nbstore.Row) (map[string]*nbmodel.ACL, *nbmodel.PortGroup, []nbstore.Row) {
	t.Helper()
	out := map[string]*nbmodel.ACL{}
	var pg *nbmodel.PortGroup
	var sets []nbstore.Row
	for _, r := range rows {
		switch m := r.Model.(type) {
		case *nbmodel.ACL:
			out[r.ID] = m
		case *nbmodel.PortGroup:
			pg = m
		case *nbmodel.AddressSet:
			sets = append(sets, r)
		}
	}
	return out, pg, sets
}

func TestPolicyTypes(t *testing.T) {
	for _, tc := range []struct {
		spec        networkingv1.NetworkPolicySpec
		ingress, eg bool
	}{
		{networkingv1.NetworkPolicySpec{}, true, false},
		{networkingv1.NetworkPolicySpec{Egress: []networkingv1.NetworkPolicyEgressRule{{}}}, true, true},
		{networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}, false, true},
		{networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}, true, true},
	} {
		in, eg := PolicyTypes(policy("x", "p", tc.spec))
		if in != tc.ingress || eg != tc.eg {
			t.Errorf("%+v: ingress %v egress %v", tc.spec, in, eg)
		}
	}
}

func TestPolicyRowsPeersAndPorts(t *testing.T) {
	pods := []PolicyPod{
		testPod("x", "a", "10.244.1.3", map[string]string{"pod": "a"}, corev1.ContainerPort{Name: "serve-80", ContainerPort: 80}),
		testPod("x", "b", "10.244.1.4", map[string]string{"pod": "b"}, corev1.ContainerPort{Name: "serve-80", ContainerPort: 8080}),
		testPod("x", "c", "10.244.2.3", map[string]string{"pod": "c"}),
	}
	np := policy("x", "allow-web", networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "pod", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}}}},
		Ingress: []networkingv1.NetworkPolicyIngressRule{
			{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "c"}}},
				{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"ns": "y"}},
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}}},
				{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24", Except: []string{"192.0.2.128/25", "198.51.100.0/24"}}},
			}, Ports: []networkingv1.NetworkPolicyPort{
				{Port: ptr.To(intstr.FromInt32(81))},
				{Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(1000)), EndPort: ptr.To(int32(1010))},
				{Port: ptr.To(intstr.FromString("serve-80"))},
			}},
			{}, // allows everything
		},
	})
	rows, problems := PolicyRows(np, PolicyEnv{Pods: pods, Logging: "all"})
	if len(problems) != 0 {
		t.Fatalf("problems %v", problems)
	}
	byID, pg, sets := acls(t, rows)
	if pg == nil || pg.Name != "np.x.allow_web" {
		t.Fatalf("port group %+v", pg)
	}
	if refs := rows[0].Refs["ports"]; len(refs) != 2 || refs[0].Name != "x_a" || refs[1].Name != "x_b" {
		t.Fatalf("members %v", refs)
	}
	if len(byID) != 2 {
		t.Fatalf("ACLs %v", byID)
	}
	r0 := byID["ingress/0"]
	peers, _ := PolicyPeers(np)
	for _, want := range []string{
		"outport == @np.x.allow_web",
		"ip4.src == $" + peers[0].AddressSetName(),
		"ip4.src == $" + peers[1].AddressSetName(),
		"ip4.src == 192.0.2.0/24 && ip4.src != {192.0.2.128/25}",
		"tcp.dst == 81",
		"udp.dst >= 1000 && udp.dst <= 1010",
		"tcp.dst == 80", "tcp.dst == 8080",
	} {
		if !strings.Contains(r0.Match, want) {
			t.Errorf("ingress/0 match lacks %q:\n%s", want, r0.Match)
		}
	}
	if r0.Action != nbmodel.ACLActionAllowRelated || r0.Direction != nbmodel.ACLDirectionToLport ||
		r0.Priority != PriorityPolicyAllow || *r0.Name != "x/allow-web" || !r0.Log || *r0.Meter != ACLLogMeter {
		t.Errorf("ingress/0 = %+v", r0)
	}
	// The named port resolves per pod: 80 on a, 8080 on b, each with its pods' addresses.
	if len(sets) != 2 {
		t.Fatalf("named-port address sets %d, want 2", len(sets))
	}
	got := map[string]bool{}
	for _, s := range sets {
		as := s.Model.(*nbmodel.AddressSet)
		got[strings.Join(as.Addresses, ",")] = true
		if !strings.Contains(r0.Match, "$"+as.Name) {
			t.Errorf("match does not use %s", as.Name)
		}
	}
	if !got["10.244.1.3"] || !got["10.244.1.4"] {
		t.Errorf("named-port sets %v", got)
	}
	if m := byID["ingress/1"].Match; m != "outport == @np.x.allow_web && ip" {
		t.Errorf("allow-all rule %q", m)
	}
	if len(peers) != 2 || peers[0].Key() == peers[1].Key() {
		t.Errorf("peers %v", peers)
	}
}

func TestPolicyRowsIsolationOnly(t *testing.T) {
	// An empty ingress list isolates without allowing: a port group, no ACL.
	np := policy("x", "deny", networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}})
	rows, _ := PolicyRows(np, PolicyEnv{Pods: []PolicyPod{testPod("x", "a", "10.244.1.3", nil)}})
	byID, pg, _ := acls(t, rows)
	if pg == nil || len(byID) != 0 {
		t.Fatalf("rows %v", rows)
	}
}

func TestPolicyRowsEgress(t *testing.T) {
	dns := testPod("kube-system", "dns", "10.244.9.9", map[string]string{"k8s-app": "dns"},
		corev1.ContainerPort{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP})
	np := policy("x", "egress", networkingv1.NetworkPolicySpec{
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		Egress: []networkingv1.NetworkPolicyEgressRule{{
			To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{},
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "dns"}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromString("dns"))}},
		}, {
			To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "fd00::/64"}}},
		}},
	})
	env := PolicyEnv{Pods: []PolicyPod{testPod("x", "a", "10.244.1.3", nil)},
		PeerPods: func(PolicyPeer) []PolicyPod { return []PolicyPod{dns} }}
	rows, problems := PolicyRows(np, env)
	if len(problems) != 0 {
		t.Fatalf("problems %v", problems)
	}
	byID, _, sets := acls(t, rows)
	e0 := byID["egress/0"]
	if e0 == nil || e0.Direction != nbmodel.ACLDirectionFromLport || e0.Options["apply-after-lb"] != "true" ||
		!strings.HasPrefix(e0.Match, "inport == @np.x.egress") || !strings.Contains(e0.Match, "udp.dst == 5353") {
		t.Fatalf("egress/0 = %+v", e0)
	}
	if len(sets) != 1 || !slices.Equal(sets[0].Model.(*nbmodel.AddressSet).Addresses, []string{"10.244.9.9"}) {
		t.Fatalf("named-port sets %v", sets)
	}
	if m := byID["egress/1"].Match; m != "inport == @np.x.egress && ip6.dst == fd00::/64" {
		t.Errorf("egress/1 %q", m)
	}
}

func TestPolicyProblems(t *testing.T) {
	np := policy("x", "bad", networkingv1.NetworkPolicySpec{
		Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{
				{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/33"}},
				{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}},
			},
		}, {
			Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromString("nope"))}},
		}},
	})
	rows, problems := PolicyRows(np, PolicyEnv{Pods: []PolicyPod{testPod("x", "a", "10.244.1.3", nil)}})
	_, peerProblems := PolicyPeers(np)
	reasons := map[string]bool{}
	for _, p := range append(problems, peerProblems...) {
		reasons[p.Reason] = true
	}
	for _, want := range []string{reasonInvalidIPBlock, reasonInvalidSelector, reasonNamedPortNotFound} {
		if !reasons[want] {
			t.Errorf("no %s among %v", want, reasons)
		}
	}
	// Both rules allow nothing: no ACL.
	if byID, _, _ := acls(t, rows); len(byID) != 0 {
		t.Errorf("ACLs %v", byID)
	}
}

func TestNamespaceDenyRows(t *testing.T) {
	pods := []PolicyPod{testPod("x", "a", "10.244.1.3", nil)}
	rows := NamespaceDenyRows("x-1", pods, nil, []string{"p2", "p1"}, nil, "deny")
	byID, pg, _ := acls(t, rows)
	if pg == nil || pg.Name != "deny_in.x_1" || len(byID) != 2 {
		t.Fatalf("rows %+v", rows)
	}
	deny := byID["ingress/deny"]
	if deny.Action != nbmodel.ACLActionDrop || deny.Priority != PriorityPolicyDeny || deny.Match != "outport == @deny_in.x_1 && ip" ||
		*deny.Name != "x-1/p1+1" || !deny.Log {
		t.Errorf("deny = %+v", deny)
	}
	if m := byID["ingress/always"].Match; m != "outport == @deny_in.x_1 && ip4.src == $"+AlwaysAllowedSet {
		t.Errorf("always-allowed %q", m)
	}
	if rows := NamespaceDenyRows("x", nil, nil, nil, nil, ""); len(rows) != 0 {
		t.Errorf("a namespace without policies has rows %v", rows)
	}
}

// A pod concerns a policy with egress named ports only when the named ports resolve against it: the
// rule's peers' pods, or every pod for a rule without peers. (Every pod of the cluster used to concern
// every such policy, which made pod churn cost a sync of each.)
func TestPeerRegistryEgressNamedPorts(t *testing.T) {
	named := []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromString("web"))}}
	toDB := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "to-db"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: named, To: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}}}}}}
	anywhere := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "anywhere"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: named}}}}
	r := newPeerRegistry()
	for _, np := range []*networkingv1.NetworkPolicy{toDB, anywhere} {
		peers, _ := PolicyPeers(np)
		r.set(np.Namespace+"/"+np.Name, peers, EgressNamedPorts(np), EgressNamedPortsAnyDest(np))
	}
	ns := labels.Set{"kubernetes.io/metadata.name": "x"}
	pod := func(app string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: app, Labels: map[string]string{"app": app}}}
	}
	_, users := r.matching(pod("db"), ns)
	if slices.Sort(users); !slices.Equal(users, []string{"x/anywhere", "x/to-db"}) {
		t.Errorf("a db pod concerns %v, want both policies", users)
	}
	if _, users := r.matching(pod("web"), ns); !slices.Equal(users, []string{"x/anywhere"}) {
		t.Errorf("a web pod concerns %v, want only x/anywhere", users)
	}
}
