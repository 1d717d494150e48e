package translator

import (
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// NetworkPolicy, compiled to port groups, address sets and ACLs. The pure part: Kubernetes objects in,
// rows out.
//
// ACL priorities (OVN 23.03 has no ACL tiers, so all of Dunlin's ACLs share one range):
//   - PriorityPolicyDeny (1000): each namespace's default deny, per direction, on the port group of the
//     namespace's pods that some policy isolates in that direction.
//   - PriorityPolicyAllow (1001): what policies allow, and the sources always allowed (the nodes'
//     management ports, Dunlin's masquerade range), on the same port groups.
//
// Ingress ACLs are to-lport, so they see a Service backend's address and the client's own source.
// Egress ACLs are from-lport with apply-after-lb, so they too see the backend a Service VIP resolved to.
// allow-related admits replies; the drop ACLs match only IP, so ARP always passes.
const (
	PriorityPolicyDeny  = 1000
	PriorityPolicyAllow = 1001
)

// ACLLoggingAnnotation on a namespace turns on OVN ACL logging for its policies: "deny" logs the
// connections its default deny drops, "all" also those its policies allow. ovn-controller logs them
// (acl_log) with the ACL's name, the policy's namespace/name, rate-limited by the meter ACLLogMeter.
const ACLLoggingAnnotation = "dunlin.io/acl-logging"

// ACLLogMeter is the cluster's meter that rate-limits ACL logging.
const ACLLogMeter = "dunlin-acl-logging"

// AlwaysAllowedSet is the cluster's address set of sources no policy can block: every node's management
// port (kubelet probes, host-network clients) and Dunlin's masquerade range (hairpin).
const AlwaysAllowedSet = "dunlin.always_allowed"

// MasqueradeRange is Dunlin's IPv4 masquerade range (hairpin source HairpinSNATIPv4 among others).
const MasqueradeRange = "169.254.169.0/29"

// ovnName makes a Kubernetes name usable in an OVN match: port group and address set names may hold
// letters, digits, '_' and '.', and Kubernetes names hold lowercase letters, digits, '-' and '.', never
// '_', so replacing '-' with '_' keeps names distinct.
func ovnName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// PolicyPortGroupName is the port group of the pods a NetworkPolicy selects. A namespace has no '.', so
// the first '.' after the namespace ends it.
func PolicyPortGroupName(namespace, name string) string {
	return "np." + ovnName(namespace) + "." + ovnName(name)
}

// DenyPortGroupName is the port group of a namespace's pods isolated in one direction (ingress or
// egress) by some NetworkPolicy.
func DenyPortGroupName(namespace string, egress bool) string {
	if egress {
		return "deny_out." + ovnName(namespace)
	}
	return "deny_in." + ovnName(namespace)
}

// PolicyPeer is a pod-selecting peer of a NetworkPolicy rule: pods matching Pods in Namespace (when
// Namespaces is nil) or in the namespaces matching Namespaces. Identical peers share one address set.
type PolicyPeer struct {
	Namespace  string                // the policy's namespace, when Namespaces is nil
	Namespaces labels.Selector       // nil: only Namespace
	Pods       labels.Selector       // labels.Everything() for a nil podSelector
	key        string                // canonical form
	nsRaw      *metav1.LabelSelector // as written, for the description
}

// Key identifies the peer: equal for identical selectors.
func (p PolicyPeer) Key() string { return p.key }

// Hash is the peer's short, stable identifier.
func (p PolicyPeer) Hash() string { return hash16(p.key) }

// AddressSetName is the address set of the pods the peer matches.
func (p PolicyPeer) AddressSetName() string { return "peer." + p.Hash() }

// Owner is the owner of the peer's address set.
func (p PolicyPeer) Owner() string { return Owner(KindPolicyPeer, p.Hash()) }

// Matches reports whether the pod, in a namespace with nsLabels, is one of the peer's pods.
func (p PolicyPeer) Matches(pod *corev1.Pod, nsLabels labels.Set) bool {
	if p.Namespaces == nil {
		if pod.Namespace != p.Namespace {
			return false
		}
	} else if !p.Namespaces.Matches(nsLabels) {
		return false
	}
	return p.Pods.Matches(labels.Set(pod.Labels))
}

// MatchesNamespaces reports whether the peer selects namespaces by label (so namespace label changes
// concern it).
func (p PolicyPeer) MatchesNamespaces() bool { return p.Namespaces != nil }

func hash16(s string) string {
	h := fnv.New64a()
	h.Write([]byte(s))
	return fmt.Sprintf("%016x", h.Sum64())
}

// newPolicyPeer returns the peer of a rule's podSelector/namespaceSelector, or an error for an invalid
// selector.
func newPolicyPeer(namespace string, pods, namespaces *metav1.LabelSelector) (PolicyPeer, error) {
	p := PolicyPeer{Namespace: namespace, Pods: labels.Everything(), nsRaw: namespaces}
	var err error
	if pods != nil {
		if p.Pods, err = metav1.LabelSelectorAsSelector(pods); err != nil {
			return p, fmt.Errorf("podSelector: %w", err)
		}
	}
	if namespaces != nil {
		if p.Namespaces, err = metav1.LabelSelectorAsSelector(namespaces); err != nil {
			return p, fmt.Errorf("namespaceSelector: %w", err)
		}
		p.Namespace = ""
		p.key = "namespaces{" + p.Namespaces.String() + "} pods{" + p.Pods.String() + "}"
	} else {
		p.key = "namespace=" + namespace + " pods{" + p.Pods.String() + "}"
	}
	return p, nil
}

// PeerRows is the address set of a peer, holding the IPv4 addresses of its pods.
func PeerRows(p PolicyPeer, addrs []netip.Addr) []nbstore.Row {
	members := make([]string, 0, len(addrs))
	for _, a := range addrs {
		members = append(members, a.String())
	}
	slices.Sort(members)
	return []nbstore.Row{{Model: &nbmodel.AddressSet{Name: p.AddressSetName(), Addresses: members,
		ExternalIDs: map[string]string{"dunlin.io/peer": p.key}}}}
}

// PolicyPod is what a policy's mapping needs of a pod: its address, labels and container ports.
type PolicyPod struct {
	Pod  *corev1.Pod
	Addr netip.Addr // IPv4, from its network annotation; invalid while it has none
}

// PolicyEnv is what a NetworkPolicy's rows depend on besides the policy.
type PolicyEnv struct {
	// Pods are the networked pods of the policy's namespace (host-network pods are never selected).
	Pods []PolicyPod
	// PeerPods returns the networked pods a peer matches, for named ports of egress rules.
	PeerPods func(PolicyPeer) []PolicyPod
	// Logging is the policy namespace's ACLLoggingAnnotation.
	Logging string
	// PodNetwork is the cluster CIDR: an ipBlock overlapping it is reported.
	PodNetwork netip.Prefix
}

// PolicyProblem is bad input found while mapping a policy; the rest of it is still mapped.
type PolicyProblem struct {
	Reason  string
	Message string
}

// Reasons of PolicyProblem, also the reasons of the Warning events.
const (
	reasonInvalidSelector   = "InvalidPolicySelector"
	reasonInvalidIPBlock    = "InvalidPolicyIPBlock"
	reasonNamedPortNotFound = "PolicyNamedPortNotFound"
	reasonIPBlockPodNetwork = "PolicyIPBlockOverlapsPods"
	reasonInvalidPolicyPort = "InvalidPolicyPort"
)

// PolicyTypes are the directions a policy isolates: Ingress unless policyTypes says otherwise, and
// Egress when it says so or, policyTypes omitted, the policy has egress rules.
func PolicyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

// SelectedPods are the pods of env the policy applies to.
func SelectedPods(np *networkingv1.NetworkPolicy, pods []PolicyPod) ([]PolicyPod, error) {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		return nil, err
	}
	var out []PolicyPod
	for _, p := range pods {
		if p.Pod.Namespace == np.Namespace && sel.Matches(labels.Set(p.Pod.Labels)) {
			out = append(out, p)
		}
	}
	return out, nil
}

// PolicyPeers returns every pod-selecting peer of the policy's rules (with problems for invalid ones).
func PolicyPeers(np *networkingv1.NetworkPolicy) ([]PolicyPeer, []PolicyProblem) {
	var peers []PolicyPeer
	var problems []PolicyProblem
	seen := map[string]bool{}
	add := func(dir string, i int, from []networkingv1.NetworkPolicyPeer) {
		for j, p := range from {
			if p.IPBlock != nil || (p.PodSelector == nil && p.NamespaceSelector == nil) {
				continue
			}
			peer, err := newPolicyPeer(np.Namespace, p.PodSelector, p.NamespaceSelector)
			if err != nil {
				problems = append(problems, PolicyProblem{reasonInvalidSelector, fmt.Sprintf("%s rule %d peer %d: %v; the peer matches nothing", dir, i, j, err)})
				continue
			}
			if !seen[peer.key] {
				seen[peer.key] = true
				peers = append(peers, peer)
			}
		}
	}
	for i, r := range np.Spec.Ingress {
		add("ingress", i, r.From)
	}
	for i, r := range np.Spec.Egress {
		add("egress", i, r.To)
	}
	return peers, problems
}

// PolicyRows maps a NetworkPolicy to the port group of the pods it selects, holding one ACL per rule,
// and the address sets its named ports need. The pods' isolation (the default deny) is the namespace's
// (NamespaceDenyRows); the peers' address sets are shared (PeerRows).
func PolicyRows(np *networkingv1.NetworkPolicy, env PolicyEnv) ([]nbstore.Row, []PolicyProblem) {
	owner := Owner(KindPolicy, np.Namespace+"/"+np.Name)
	pg := PolicyPortGroupName(np.Namespace, np.Name)
	selected, err := SelectedPods(np, env.Pods)
	var problems []PolicyProblem
	if err != nil {
		problems = append(problems, PolicyProblem{reasonInvalidSelector, fmt.Sprintf("podSelector: %v; the policy selects no pod", err)})
	}
	group := &nbmodel.PortGroup{Name: pg, ExternalIDs: map[string]string{extNamespace: np.Namespace, extPolicy: np.Name}}
	rows := []nbstore.Row{{Model: group, Refs: map[string][]nbstore.Ref{"ports": podPortRefs(selected)}}}
	ingress, egress := PolicyTypes(np)
	m := ruleMapper{np: np, owner: owner, pg: pg, selected: selected, env: env}
	if ingress {
		for i, r := range np.Spec.Ingress {
			m.rule(false, i, r.From, r.Ports)
		}
	}
	if egress {
		for i, r := range np.Spec.Egress {
			m.rule(true, i, r.To, r.Ports)
		}
	}
	rows = append(rows, m.rows...)
	return rows, append(problems, m.problems...)
}

// podPortRefs are the logical switch ports of pods, for a port group's ports. Ports not written yet are
// left out by the store and added when the pod's sync writes them.
func podPortRefs(pods []PolicyPod) []nbstore.Ref {
	refs := make([]nbstore.Ref, 0, len(pods))
	for _, p := range pods {
		refs = append(refs, nbstore.Ref{Owner: Owner(KindPod, p.Pod.Namespace+"/"+p.Pod.Name),
			Name: conventions.PodPortName(p.Pod.Namespace, p.Pod.Name)})
	}
	return refs
}

// ruleMapper builds the ACLs of one policy's rules and the address sets of their named ports.
type ruleMapper struct {
	np       *networkingv1.NetworkPolicy
	owner    string
	pg       string
	selected []PolicyPod
	env      PolicyEnv
	rows     []nbstore.Row
	problems []PolicyProblem
}

func (m *ruleMapper) problem(reason, format string, args ...any) {
	m.problems = append(m.problems, PolicyProblem{reason, fmt.Sprintf(format, args...)})
}

// rule adds the ACL of one rule: traffic from (to) any of peers on any of ports. An empty peer list
// means every source (destination), an empty port list every port and protocol.
func (m *ruleMapper) rule(egress bool, i int, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) {
	dir := "ingress"
	if egress {
		dir = "egress"
	}
	field := "src"
	if egress {
		field = "dst"
	}
	// Peers as match clauses; each keeps what its named ports resolve against (pods, or nothing).
	type peerClause struct {
		match string
		pods  *PolicyPeer // what egress named ports resolve against; nil for ipBlocks
	}
	var clauses []peerClause
	if len(peers) == 0 {
		// Any destination: an egress named port resolves against every pod.
		everyPod := PolicyPeer{Namespaces: labels.Everything(), Pods: labels.Everything(), key: "namespaces{} pods{}"}
		clauses = append(clauses, peerClause{match: "", pods: &everyPod})
	}
	for j, p := range peers {
		switch {
		case p.IPBlock != nil:
			match, err := ipBlockMatch(p.IPBlock, field)
			if err != nil {
				m.problem(reasonInvalidIPBlock, "%s rule %d peer %d: %v; the peer matches nothing", dir, i, j, err)
				continue
			}
			if cidr, _ := netip.ParsePrefix(p.IPBlock.CIDR); m.env.PodNetwork.IsValid() && cidr.Overlaps(m.env.PodNetwork) {
				m.problem(reasonIPBlockPodNetwork, "%s rule %d peer %d: ipBlock %s overlaps the pod network %s; Dunlin applies it to pod addresses too (Kubernetes leaves this to the network plugin), use a podSelector to select pods",
					dir, i, j, p.IPBlock.CIDR, m.env.PodNetwork)
			}
			clauses = append(clauses, peerClause{match: match})
		case p.PodSelector != nil || p.NamespaceSelector != nil:
			peer, err := newPolicyPeer(m.np.Namespace, p.PodSelector, p.NamespaceSelector)
			if err != nil {
				continue // reported by PolicyPeers
			}
			clauses = append(clauses, peerClause{match: "ip4." + field + " == $" + peer.AddressSetName(), pods: &peer})
		}
	}
	if len(clauses) == 0 {
		return // every peer was invalid: the rule allows nothing
	}
	var alts []string
	numeric, named := m.splitPorts(dir, i, ports)
	// Ingress: the selected pods give a named port its number, once for the rule.
	var ingressNamed []string
	if !egress {
		for _, np := range named {
			ingressNamed = append(ingressNamed, m.resolve(dir, i, "", np, m.selected)...)
		}
	}
	for _, c := range clauses {
		if len(ports) == 0 {
			alts = append(alts, c.match)
			continue
		}
		if len(numeric) > 0 {
			alts = append(alts, and(c.match, or(numeric)))
		}
		for _, r := range ingressNamed {
			alts = append(alts, and(c.match, r))
		}
		if !egress || c.pods == nil || m.env.PeerPods == nil {
			continue // an egress named port cannot be resolved against an ipBlock
		}
		// Egress: the peer's pods give it its number.
		for _, np := range named {
			for _, r := range m.resolve(dir, i, c.pods.key, np, m.env.PeerPods(*c.pods)) {
				alts = append(alts, and(c.match, r))
			}
		}
	}
	if len(alts) == 0 {
		return // nothing resolved: the rule allows nothing
	}
	pgMatch := "outport == @" + m.pg
	direction := nbmodel.ACLDirectionToLport
	var options map[string]string
	if egress {
		pgMatch = "inport == @" + m.pg
		direction = nbmodel.ACLDirectionFromLport
		options = map[string]string{"apply-after-lb": "true"}
	}
	match := pgMatch
	if !slices.Contains(alts, "") {
		match = and(pgMatch, or(alts))
	} else {
		match = and(pgMatch, "ip")
	}
	m.rows = append(m.rows, aclRow(m.pg, m.owner, fmt.Sprintf("%s/%d", dir, i), policyACLName(m.np.Namespace, m.np.Name),
		direction, nbmodel.ACLActionAllowRelated, PriorityPolicyAllow, match, options, m.env.Logging == "all"))
}

// splitPorts turns a rule's ports into match clauses for numeric ports, and the named ports left to
// resolve per pod.
func (m *ruleMapper) splitPorts(dir string, i int, ports []networkingv1.NetworkPolicyPort) ([]string, []networkingv1.NetworkPolicyPort) {
	var numeric []string
	var named []networkingv1.NetworkPolicyPort
	for _, p := range ports {
		proto := "tcp"
		if p.Protocol != nil {
			proto = strings.ToLower(string(*p.Protocol))
		}
		if proto != "tcp" && proto != "udp" && proto != "sctp" {
			m.problem(reasonInvalidPolicyPort, "%s rule %d: protocol %q is not TCP, UDP or SCTP; the port matches nothing", dir, i, proto)
			continue
		}
		switch {
		case p.Port == nil:
			numeric = append(numeric, proto)
		case p.Port.Type == intstr.String:
			named = append(named, p)
		case p.EndPort != nil && *p.EndPort > p.Port.IntVal:
			numeric = append(numeric, fmt.Sprintf("%s.dst >= %d && %s.dst <= %d", proto, p.Port.IntVal, proto, *p.EndPort))
		default:
			numeric = append(numeric, fmt.Sprintf("%s.dst == %d", proto, p.Port.IntVal))
		}
	}
	return numeric, named
}

// resolve gives, for a named port, one clause per number the pods give it: the pods' addresses (in an
// address set of the policy's) and that number.
func (m *ruleMapper) resolve(dir string, i int, peer string, port networkingv1.NetworkPolicyPort, pods []PolicyPod) []string {
	proto := corev1.ProtocolTCP
	if port.Protocol != nil {
		proto = *port.Protocol
	}
	name := port.Port.StrVal
	byNumber := map[int32][]string{}
	for _, p := range pods {
		if !p.Addr.IsValid() {
			continue
		}
		if n, ok := namedPort(p.Pod, name, proto); ok {
			byNumber[n] = append(byNumber[n], p.Addr.String())
		}
	}
	if len(byNumber) == 0 {
		m.problem(reasonNamedPortNotFound, "%s rule %d: no pod the port applies to has a %s port named %q; it matches nothing until one does", dir, i, proto, name)
		return nil
	}
	numbers := make([]int32, 0, len(byNumber))
	for n := range byNumber {
		numbers = append(numbers, n)
	}
	slices.Sort(numbers)
	lproto := strings.ToLower(string(proto))
	var out []string
	for _, n := range numbers {
		addrs := byNumber[n]
		slices.Sort(addrs)
		ident := fmt.Sprintf("%s/%s %s %d %s %s/%s/%d", m.np.Namespace, m.np.Name, dir, i, peer, proto, name, n)
		set := "np_port." + hash16(ident)
		m.rows = append(m.rows, nbstore.Row{Model: &nbmodel.AddressSet{Name: set, Addresses: addrs,
			ExternalIDs: map[string]string{extNamespace: m.np.Namespace, extPolicy: m.np.Name, "dunlin.io/named-port": ident}}})
		// Ingress: the destination is the selected pod; egress: the peer's pod.
		out = append(out, fmt.Sprintf("ip4.dst == $%s && %s.dst == %d", set, lproto, n))
	}
	return out
}

// namedPort is the number a pod gives a named container port of proto.
func namedPort(pod *corev1.Pod, name string, proto corev1.Protocol) (int32, bool) {
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			pp := p.Protocol
			if pp == "" {
				pp = corev1.ProtocolTCP
			}
			if p.Name == name && pp == proto {
				return p.ContainerPort, true
			}
		}
	}
	return 0, false
}

// ipBlockMatch is the match of an ipBlock peer on field (src or dst): the CIDR without its exceptions.
func ipBlockMatch(b *networkingv1.IPBlock, field string) (string, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return "", fmt.Errorf("ipBlock cidr %q: %w", b.CIDR, err)
	}
	family := "ip4"
	if cidr.Addr().Is6() {
		family = "ip6"
	}
	match := fmt.Sprintf("%s.%s == %s", family, field, cidr.Masked())
	var except []string
	for _, e := range b.Except {
		ep, err := netip.ParsePrefix(e)
		if err != nil {
			return "", fmt.Errorf("ipBlock except %q: %w", e, err)
		}
		if ep.Addr().Is6() != cidr.Addr().Is6() || !cidr.Overlaps(ep) {
			continue // outside the CIDR: nothing to take out
		}
		except = append(except, ep.Masked().String())
	}
	if len(except) > 0 {
		sort.Strings(except)
		match += fmt.Sprintf(" && %s.%s != {%s}", family, field, strings.Join(except, ", "))
	}
	return match, nil
}

// and joins match clauses; an empty clause is "true". OVN does not mix && and || without parentheses.
func and(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return wrapIf(a, "||") + " && " + wrapIf(b, "||")
}

// or joins alternatives.
func or(alts []string) string {
	if len(alts) == 1 {
		return alts[0]
	}
	parts := make([]string, len(alts))
	for i, a := range alts {
		parts[i] = wrapIf(wrapIf(a, "&&"), "||")
	}
	return strings.Join(parts, " || ")
}

// wrapIf parenthesizes s when it holds op outside parentheses it already has.
func wrapIf(s, op string) string {
	if strings.Contains(s, op) && !(strings.HasPrefix(s, "(") && strings.HasSuffix(s, ")") && balanced(s[1:len(s)-1])) {
		return "(" + s + ")"
	}
	return s
}

// balanced reports whether s's parentheses pair up, so "(s)" is one group.
func balanced(s string) bool {
	depth := 0
	for _, r := range s {
		switch r {
		case '(':
			depth++
		case ')':
			if depth--; depth < 0 {
				return false
			}
		}
	}
	return depth == 0
}

// policyACLName is an ACL's name, which ovn-controller's ACL log shows: the policy's namespace/name, cut
// to the 63 characters OVN allows.
func policyACLName(namespace, name string) string {
	s := namespace + "/" + name
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

// aclRow is one ACL in the port group pg.
func aclRow(pg, pgOwner, id, name string, direction nbmodel.ACLDirection, action nbmodel.ACLAction, priority int,
	match string, options map[string]string, log bool) nbstore.Row {
	acl := &nbmodel.ACL{Direction: direction, Action: action, Priority: priority, Match: match, Name: &name,
		Options: options, ExternalIDs: map[string]string{}}
	if log {
		sev := nbmodel.ACLSeverityInfo
		if action == nbmodel.ACLActionDrop {
			sev = nbmodel.ACLSeverityWarning
		}
		meter := ACLLogMeter
		acl.Log, acl.Severity, acl.Meter = true, &sev, &meter
	}
	return nbstore.Row{ID: id, Model: acl, Parents: nbstore.In(pgOwner, pg)}
}

// NamespaceDenyRows are a namespace's default deny: per direction, the port group of its pods isolated
// in that direction (selected by a policy of that type), with a drop ACL and the ACL that always allows
// the nodes' management ports and Dunlin's masquerade range. isolated lists the pods per direction;
// policies name, per direction, the policies isolating them (for the ACL's name in logs).
func NamespaceDenyRows(namespace string, ingress, egress []PolicyPod, ingressPolicies, egressPolicies []string, logging string) []nbstore.Row {
	owner := Owner(KindPolicyNamespace, namespace)
	var rows []nbstore.Row
	for _, d := range []struct {
		egress   bool
		pods     []PolicyPod
		policies []string
	}{{false, ingress, ingressPolicies}, {true, egress, egressPolicies}} {
		if len(d.policies) == 0 {
			continue
		}
		pg := DenyPortGroupName(namespace, d.egress)
		dir, port, field := "ingress", "outport", "src"
		direction := nbmodel.ACLDirectionToLport
		var options map[string]string
		if d.egress {
			dir, port, field = "egress", "inport", "dst"
			direction = nbmodel.ACLDirectionFromLport
			options = map[string]string{"apply-after-lb": "true"}
		}
		rows = append(rows, nbstore.Row{Model: &nbmodel.PortGroup{Name: pg, ExternalIDs: map[string]string{extNamespace: namespace, "dunlin.io/direction": dir}},
			Refs: map[string][]nbstore.Ref{"ports": podPortRefs(d.pods)}})
		name := denyACLName(namespace, d.policies)
		rows = append(rows, aclRow(pg, owner, dir+"/deny", name, direction, nbmodel.ACLActionDrop, PriorityPolicyDeny,
			port+" == @"+pg+" && ip", options, logging == "deny" || logging == "all"))
		if !d.egress {
			rows = append(rows, aclRow(pg, owner, dir+"/always", namespace+"/always-allowed", direction, nbmodel.ACLActionAllowRelated,
				PriorityPolicyAllow, fmt.Sprintf("%s == @%s && ip4.%s == $%s", port, pg, field, AlwaysAllowedSet), options, false))
		}
	}
	return rows
}

// NamespaceIsolationRows are a namespace's default deny (NamespaceDenyRows) from its policies and its
// networked pods: per direction, the pods some policy of that type selects, and those policies.
func NamespaceIsolationRows(namespace string, policies []*networkingv1.NetworkPolicy, pods []PolicyPod, logging string) []nbstore.Row {
	isolated := [2]map[string]PolicyPod{{}, {}}
	var names [2][]string
	for _, np := range policies {
		selected, err := SelectedPods(np, pods)
		if err != nil {
			continue // reported by the policy's sync; it selects nothing
		}
		in, out := PolicyTypes(np)
		for d, on := range []bool{in, out} {
			if !on {
				continue
			}
			names[d] = append(names[d], np.Name)
			for _, p := range selected {
				isolated[d][p.Pod.Name] = p
			}
		}
	}
	byName := func(m map[string]PolicyPod) []PolicyPod {
		out := make([]PolicyPod, 0, len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			out = append(out, m[k])
		}
		return out
	}
	return NamespaceDenyRows(namespace, byName(isolated[0]), byName(isolated[1]), names[0], names[1], logging)
}

// EgressNamedPorts is true when the policy's egress rules use named ports, which resolve against the
// peers' pods: changes of those pods change the policy's rows.
func EgressNamedPorts(np *networkingv1.NetworkPolicy) bool {
	for _, r := range np.Spec.Egress {
		for _, p := range r.Ports {
			if p.Port != nil && p.Port.StrVal != "" {
				return true
			}
		}
	}
	return false
}

// EgressNamedPortsAnyDest is true when an egress rule without peers (any destination) uses named
// ports: they resolve against every pod, so every pod's changes concern the policy. Rules with peers
// resolve against their peers' pods only.
func EgressNamedPortsAnyDest(np *networkingv1.NetworkPolicy) bool {
	for _, r := range np.Spec.Egress {
		if len(r.To) > 0 {
			continue
		}
		for _, p := range r.Ports {
			if p.Port != nil && p.Port.StrVal != "" {
				return true
			}
		}
	}
	return false
}

// denyACLName names a default deny after the policies isolating the pods, for ACL logs:
// "<namespace>/<policy>", or "<namespace>/<first policy>+<n more>".
func denyACLName(namespace string, policies []string) string {
	sorted := slices.Sorted(slices.Values(policies))
	name := sorted[0]
	if len(sorted) > 1 {
		name += "+" + strconv.Itoa(len(sorted)-1)
	}
	return policyACLName(namespace, name)
}

// ClusterPolicyRows are the cluster-wide rows of NetworkPolicy: the always-allowed address set (the
// nodes' management addresses and the masquerade range) and the ACL log meter.
func ClusterPolicyRows(managementIPs []netip.Addr, logRate int) []nbstore.Row {
	addrs := []string{MasqueradeRange}
	for _, a := range managementIPs {
		addrs = append(addrs, a.String())
	}
	slices.Sort(addrs)
	fair := true
	return []nbstore.Row{
		{Model: &nbmodel.AddressSet{Name: AlwaysAllowedSet, Addresses: addrs, ExternalIDs: map[string]string{}}},
		{ID: "acl-logging", Model: &nbmodel.MeterBand{Action: nbmodel.MeterBandActionDrop, Rate: logRate, BurstSize: logRate,
			ExternalIDs: map[string]string{}}},
		{Model: &nbmodel.Meter{Name: ACLLogMeter, Unit: nbmodel.MeterUnitPktps, Fair: &fair, ExternalIDs: map[string]string{}},
			Refs: map[string][]nbstore.Ref{"bands": {{Owner: ClusterOwner, Name: "acl-logging"}}}},
	}
}
