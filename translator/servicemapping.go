package translator

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// Service load balancer options.
const (
	// DefaultAffinityTimeout is Kubernetes' default sessionAffinityConfig.clientIP.timeoutSeconds.
	DefaultAffinityTimeout = 10800
	// maxAffinityTimeout is the largest affinity_timeout OVN can express (an OpenFlow idle timeout is
	// 16 bits). Longer timeouts (Kubernetes allows up to 86400) hash on the client address instead.
	maxAffinityTimeout = 65535
)

// EndpointRanges says which backend addresses can be real: pod addresses and node addresses. An
// address outside both is reported and left out, so it cannot black-hole a share of connections.
type EndpointRanges struct {
	Pods  []netip.Prefix
	Nodes map[netip.Addr]bool
}

func (r EndpointRanges) contains(a netip.Addr) bool {
	if r.Nodes[a] {
		return true
	}
	for _, p := range r.Pods {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ServiceEnv is what the mapping of every Service depends on besides the Service and its slices.
type ServiceEnv struct {
	Ranges EndpointRanges
	// AffinityByHash implements ClientIP session affinity by hashing the client and VIP addresses
	// (selection_fields) instead of OVN's affinity_timeout. OVN 23.03 drops the first packet of a
	// client's first connection under affinity_timeout (its learn flow does not continue the
	// pipeline); the kernel datapath recovers with a SYN retransmit, the userspace datapath stalls
	// the connection for seconds. Hashing has no such cost but no timeout: a client stays on its
	// backend while the backends do not change.
	AffinityByHash bool
	// Nodes are the nodes whose switches exist, for Services with internalTrafficPolicy Local.
	Nodes []string
	// NodePortRange is --service-node-port-range: node ports outside it are reported and not served.
	NodePortRange PortRange
	// Gateways are the nodes with a gateway router, for Services with externalTrafficPolicy Local.
	Gateways []GatewayAddr
}

// ServiceProblem is bad input found while mapping a Service; the rest of the Service is still mapped.
type ServiceProblem struct {
	Reason  string
	Message string
}

// Reasons of ServiceProblem, also the reasons of the Warning events.
const (
	reasonEndpointPortMissing = "EndpointPortMissing"
	reasonInvalidEndpoint     = "InvalidEndpointAddress"
	reasonInvalidServiceIP    = "InvalidServiceIP"
)

// ServiceRows maps a Service and its EndpointSlices to one load balancer per protocol, holding every
// VIP of that protocol (ClusterIPs, externalIPs, load balancer ingress IPs) with its backends, in the
// cluster's load balancer group. With internalTrafficPolicy Local the ClusterIPs move to one load
// balancer per node and protocol instead, on that node's switch. Headless and ExternalName Services
// have no rows. Problems are bad input that was skipped.
func ServiceRows(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, env ServiceEnv) ([]nbstore.Row, []ServiceProblem) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName || !hasClusterIP(svc) {
		return nil, nil
	}
	internal, external, problems := serviceVIPs(svc)

	ranges := env.Ranges
	if svc.Namespace == metav1.NamespaceDefault && svc.Name == "kubernetes" {
		// The API servers' own endpoints need not be nodes (an external control plane).
		ranges = EndpointRanges{Pods: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}
	}
	cands, bad := serviceBackends(svc, eps, ranges)
	problems = append(problems, bad...)

	// With internalTrafficPolicy Local, traffic to a ClusterIP stays on the client's node: each node
	// switch gets its own load balancer with the node's endpoints only. externalIPs and ingress IPs
	// follow externalTrafficPolicy and stay in the cluster-wide load balancer.
	clusterVIPs, localVIPs := append(slices.Clone(internal), external...), []netip.Addr(nil)
	if internalLocal(svc) {
		clusterVIPs, localVIPs = external, internal
	}
	var rows []nbstore.Row
	rows = append(rows, serviceLBRows(svc, env, cands, clusterVIPs, "", nbstore.In(ClusterOwner, ClusterLBGroup))...)
	if len(localVIPs) > 0 {
		for _, node := range env.Nodes {
			rows = append(rows, serviceLBRows(svc, env, cands, localVIPs, node, []nbstore.Parent{{
				Ref: nbstore.Ref{Owner: Owner(KindNode, node), Name: node}, Table: "Logical_Switch", Column: "load_balancer"}})...)
		}
	}
	gw, bad := gatewayLBRows(svc, env, cands, external)
	return append(rows, gw...), append(problems, bad...)
}

// serviceLBRows are the load balancers, one per protocol, holding vips with the backends on node
// ("" for all nodes), referenced by parents.
func serviceLBRows(svc *corev1.Service, env ServiceEnv, cands map[backendKey][]candidate, vips []netip.Addr, node string, parents []nbstore.Parent) []nbstore.Row {
	if len(vips) == 0 {
		return nil
	}
	lbs := map[corev1.Protocol]*nbmodel.LoadBalancer{}
	for _, sp := range svc.Spec.Ports {
		proto := protocolOf(sp.Protocol)
		lb := lbs[proto]
		if lb == nil {
			lb = newServiceLB(svc, proto, env.AffinityByHash)
			if node != "" {
				lb.Name = ServiceNodeLBName(svc.Namespace, svc.Name, string(proto), node)
				lb.ExternalIDs[extNode] = node
			}
			lbs[proto] = lb
		}
		for _, vip := range vips {
			key := netip.AddrPortFrom(vip, uint16(sp.Port)).String()
			lb.Vips[key] = strings.Join(pick(cands[backendKey{proto, sp.Name, family(vip)}], node), ",")
		}
	}
	var rows []nbstore.Row
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
		if lb := lbs[proto]; lb != nil {
			rows = append(rows, nbstore.Row{Model: lb, Parents: parents})
		}
	}
	return rows
}

// internalLocal is true for internalTrafficPolicy Local.
func internalLocal(svc *corev1.Service) bool {
	p := svc.Spec.InternalTrafficPolicy
	return p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal
}

func hasClusterIP(svc *corev1.Service) bool {
	ip := svc.Spec.ClusterIP
	return ip != "" && ip != corev1.ClusterIPNone
}

func protocolOf(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func newServiceLB(svc *corev1.Service, proto corev1.Protocol, affinityByHash bool) *nbmodel.LoadBalancer {
	lbProto := strings.ToLower(string(proto))
	lb := &nbmodel.LoadBalancer{
		Name:     ServiceLBName(svc.Namespace, svc.Name, string(proto)),
		Protocol: &lbProto,
		Vips:     map[string]string{},
		Options: map[string]string{
			// A VIP without backends refuses connections (TCP RST, ICMP unreachable) at once.
			"reject":          "true",
			"hairpin_snat_ip": HairpinSNATIPv4 + " " + HairpinSNATIPv6,
		},
		ExternalIDs: map[string]string{extNamespace: svc.Namespace, extService: svc.Name},
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		timeout := DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			timeout = int(*c.ClientIP.TimeoutSeconds)
		}
		if affinityByHash || timeout > maxAffinityTimeout {
			lb.SelectionFields = []string{nbmodel.LoadBalancerSelectionFieldsIPSrc, nbmodel.LoadBalancerSelectionFieldsIPDst}
		} else {
			lb.Options["affinity_timeout"] = strconv.Itoa(timeout)
		}
	}
	return lb
}

// serviceVIPs are the Service's ClusterIPs (internal) and its externalIPs and load balancer ingress IPs
// (external), each deduplicated. Ingress IPs in Proxy mode are skipped: the load balancer proxies,
// traffic never arrives for its IP.
func serviceVIPs(svc *corev1.Service) (internal, external []netip.Addr, problems []ServiceProblem) {
	clusterIPs := svc.Spec.ClusterIPs
	if len(clusterIPs) == 0 {
		clusterIPs = []string{svc.Spec.ClusterIP}
	}
	externalIPs := slices.Clone(svc.Spec.ExternalIPs)
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode == corev1.LoadBalancerIPModeProxy) {
			continue
		}
		externalIPs = append(externalIPs, ing.IP)
	}
	seen := map[netip.Addr]bool{}
	parse := func(raw []string) []netip.Addr {
		var out []netip.Addr
		for _, s := range raw {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				problems = append(problems, ServiceProblem{reasonInvalidServiceIP, fmt.Sprintf("address %q is not an IP address; skipped", s)})
				continue
			}
			if a = a.Unmap(); !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
		return out
	}
	internal = parse(clusterIPs)
	external = parse(externalIPs)
	return internal, external, problems
}

type backendKey struct {
	proto    corev1.Protocol
	portName string
	family   discoveryv1.AddressType
}

func family(a netip.Addr) discoveryv1.AddressType {
	if a.Is4() {
		return discoveryv1.AddressTypeIPv4
	}
	return discoveryv1.AddressTypeIPv6
}

// candidate is a usable endpoint address with its port: ready, or serving while terminating.
type candidate struct {
	backend string // ip:port
	node    string
	ready   bool
}

// serviceBackends resolves, per Service port and address family, the endpoints of all slices that
// may take traffic. A port is matched by name and protocol in each slice, since a named targetPort
// may map to different numbers in different slices.
func serviceBackends(svc *corev1.Service, eps []*discoveryv1.EndpointSlice, ranges EndpointRanges) (map[backendKey][]candidate, []ServiceProblem) {
	out := map[backendKey][]candidate{}
	var problems []ServiceProblem
	reported := map[string]bool{}
	report := func(reason, msg string) {
		if !reported[msg] {
			reported[msg] = true
			problems = append(problems, ServiceProblem{reason, msg})
		}
	}
	// Slices in name order, so that problems come out the same for the same input.
	eps = slices.Clone(eps)
	slices.SortFunc(eps, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	for _, sp := range svc.Spec.Ports {
		proto := protocolOf(sp.Protocol)
		for _, slice := range eps {
			if slice.AddressType != discoveryv1.AddressTypeIPv4 && slice.AddressType != discoveryv1.AddressTypeIPv6 {
				continue // FQDN slices cannot be load balancer backends
			}
			port, ok := slicePort(slice, sp.Name, proto)
			if !ok {
				if len(slice.Endpoints) > 0 {
					report(reasonEndpointPortMissing, fmt.Sprintf("EndpointSlice %s has no %s port named %q for Service port %d; its endpoints get no traffic on that port",
						slice.Name, proto, sp.Name, sp.Port))
				}
				continue
			}
			key := backendKey{proto, sp.Name, slice.AddressType}
			for _, ep := range slice.Endpoints {
				ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
				serving := ready
				if ep.Conditions.Serving != nil {
					serving = *ep.Conditions.Serving
				}
				terminating := ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
				if !ready && !(serving && terminating) {
					continue
				}
				node := ""
				if ep.NodeName != nil {
					node = *ep.NodeName
				}
				for _, s := range ep.Addresses {
					a, err := netip.ParseAddr(s)
					if err == nil {
						a = a.Unmap()
					}
					if err != nil || family(a) != slice.AddressType {
						report(reasonInvalidEndpoint, fmt.Sprintf("EndpointSlice %s: %q is not an %s address; skipped", slice.Name, s, slice.AddressType))
						continue
					}
					if !ranges.contains(a) {
						report(reasonInvalidEndpoint, fmt.Sprintf("EndpointSlice %s: endpoint %s is neither in the pod network nor a node address; skipped", slice.Name, a))
						continue
					}
					out[key] = append(out[key], candidate{netip.AddrPortFrom(a, port).String(), node, ready})
				}
			}
		}
	}
	return out, problems
}

// pick returns the sorted backends among cands on node ("" for any node): the ready ones, or when
// none is ready the serving terminating ones, as kube-proxy does, so connections drain gracefully.
func pick(cands []candidate, node string) []string {
	var ready, terminating []string
	for _, c := range cands {
		if node != "" && c.node != node {
			continue
		}
		if c.ready {
			ready = append(ready, c.backend)
		} else {
			terminating = append(terminating, c.backend)
		}
	}
	use := ready
	if len(use) == 0 {
		use = terminating
	}
	slices.Sort(use)
	return slices.Compact(use)
}

// slicePort finds the slice's port for a Service port: same name ("" for an unnamed port) and protocol.
func slicePort(slice *discoveryv1.EndpointSlice, name string, proto corev1.Protocol) (uint16, bool) {
	for _, p := range slice.Ports {
		pname := ""
		if p.Name != nil {
			pname = *p.Name
		}
		pproto := corev1.ProtocolTCP
		if p.Protocol != nil {
			pproto = *p.Protocol
		}
		if pname == name && pproto == proto && p.Port != nil && *p.Port > 0 && *p.Port < 65536 {
			return uint16(*p.Port), true
		}
	}
	return 0, false
}
