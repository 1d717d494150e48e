package translator

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// The Service load balancers of the gateway routers (see GatewayRows). Per Service and protocol:
//   - a NodePort template load balancer, VIP "^NODEIP:<nodePort>", which each chassis expands with its
//     own Chassis_Template_Var: one row serves every node. It is in dunlin-cluster (node switches: a pod
//     reaching its own node's IP) and, with externalTrafficPolicy Cluster, in dunlin-routers (a change
//     to Local takes the same row out of dunlin-routers);
//   - with externalTrafficPolicy Cluster, one load balancer of the externalIPs and ingress IPs in
//     dunlin-routers;
//   - with externalTrafficPolicy Local, one load balancer per gateway router with the node's own
//     endpoints only and skip_snat, so the backend sees the client's address. Only such Services cost
//     rows per node.

// PortRange is an inclusive range of ports (--service-node-port-range).
type PortRange struct{ Min, Max int }

// DefaultNodePortRange is Kubernetes' default --service-node-port-range; a zero PortRange means it.
func DefaultNodePortRange() PortRange { return PortRange{Min: 30000, Max: 32767} }

// ParsePortRange reads "min-max".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(s, "-")
	var r PortRange
	var err1, err2 error
	r.Min, err1 = strconv.Atoi(strings.TrimSpace(lo))
	r.Max, err2 = strconv.Atoi(strings.TrimSpace(hi))
	if !ok || err1 != nil || err2 != nil || r.Min < 1 || r.Max > 65535 || r.Min > r.Max {
		return PortRange{}, fmt.Errorf("port range %q is not min-max within 1-65535", s)
	}
	return r, nil
}

// Contains reports whether p is in the range.
func (r PortRange) Contains(p int) bool { return p >= r.Min && p <= r.Max }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Min, r.Max) }

// GatewayAddr is a node with a gateway router, and its IPv4 address there.
type GatewayAddr struct {
	Node string
	IP   netip.Addr
}

const reasonInvalidNodePort = "InvalidNodePort"

// externalLocal is true for externalTrafficPolicy Local.
func externalLocal(svc *corev1.Service) bool {
	return svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
}

// nodePorts are the Service ports with a usable node port; ports outside the range are reported.
func nodePorts(svc *corev1.Service, r PortRange) ([]corev1.ServicePort, []ServiceProblem) {
	if svc.Spec.Type != corev1.ServiceTypeNodePort && svc.Spec.Type != corev1.ServiceTypeLoadBalancer {
		return nil, nil
	}
	if r == (PortRange{}) {
		r = DefaultNodePortRange()
	}
	var out []corev1.ServicePort
	var problems []ServiceProblem
	for _, sp := range svc.Spec.Ports {
		switch {
		case sp.NodePort == 0:
		case !r.Contains(int(sp.NodePort)):
			problems = append(problems, ServiceProblem{reasonInvalidNodePort, fmt.Sprintf(
				"node port %d of port %q is outside --service-node-port-range %s; it is not served", sp.NodePort, sp.Name, r)})
		default:
			out = append(out, sp)
		}
	}
	return out, problems
}

// gatewayLBRows are the Service's load balancers on the gateway routers and its NodePort template.
func gatewayLBRows(svc *corev1.Service, env ServiceEnv, cands map[backendKey][]candidate, external []netip.Addr) ([]nbstore.Row, []ServiceProblem) {
	nps, problems := nodePorts(svc, env.NodePortRange)
	var ext4 []netip.Addr
	for _, a := range external {
		if a.Is4() { // gateway routers are IPv4 only for now
			ext4 = append(ext4, a)
		}
	}
	clusterGroup := nbstore.Parent{Ref: nbstore.Ref{Owner: ClusterOwner, Name: ClusterLBGroup}}
	routerGroup := nbstore.Parent{Ref: nbstore.Ref{Owner: ClusterOwner, Name: RouterLBGroup}}
	local := externalLocal(svc)
	var rows []nbstore.Row
	if len(nps) > 0 {
		parents := []nbstore.Parent{clusterGroup, routerGroup}
		if local {
			parents = []nbstore.Parent{clusterGroup}
		}
		b := newLBSet(svc, env, func(proto string) string { return ServiceNodePortLBName(svc.Namespace, svc.Name, proto) })
		for _, sp := range nps {
			lb := b.lb(sp)
			lb.Options["template"] = "true"
			lb.Options["address-family"] = "ipv4"
			lb.Vips[fmt.Sprintf("^%s:%d", NodeIPVar, sp.NodePort)] = backendsOf(cands, sp, "")
		}
		rows = append(rows, b.rows(parents)...)
	}
	if !local && len(ext4) > 0 {
		b := newLBSet(svc, env, func(proto string) string { return ServiceExternalLBName(svc.Namespace, svc.Name, proto) })
		for _, sp := range svc.Spec.Ports {
			lb := b.lb(sp)
			for _, a := range ext4 {
				lb.Vips[netip.AddrPortFrom(a, uint16(sp.Port)).String()] = backendsOf(cands, sp, "")
			}
		}
		rows = append(rows, b.rows([]nbstore.Parent{routerGroup})...)
	}
	if local && (len(nps) > 0 || len(ext4) > 0) {
		for _, gw := range env.Gateways {
			b := newLBSet(svc, env, func(proto string) string {
				return ServiceGatewayLBName(svc.Namespace, svc.Name, proto, gw.Node)
			})
			for _, sp := range svc.Spec.Ports {
				lb := b.lb(sp)
				lb.ExternalIDs[extNode] = gw.Node
				// The client's address reaches the backend; the backend is on this node, so its
				// replies leave through this router, which undoes the DNAT.
				lb.Options["skip_snat"] = "true"
				// A node without a local endpoint does not answer (no reset): an external load
				// balancer's health check takes it out, as with kube-proxy.
				delete(lb.Options, "reject")
				backends := backendsOf(cands, sp, gw.Node)
				for _, a := range ext4 {
					lb.Vips[netip.AddrPortFrom(a, uint16(sp.Port)).String()] = backends
				}
				for _, np := range nps {
					if np.Name == sp.Name && protocolOf(np.Protocol) == protocolOf(sp.Protocol) {
						lb.Vips[netip.AddrPortFrom(gw.IP, uint16(np.NodePort)).String()] = backends
					}
				}
			}
			rows = append(rows, b.rows([]nbstore.Parent{{
				Ref:   nbstore.Ref{Owner: Owner(KindGateway, gw.Node), Name: GatewayRouterName(gw.Node)},
				Table: "Logical_Router", Column: "load_balancer"}})...)
		}
	}
	return rows, problems
}

// backendsOf is the IPv4 backends of a Service port on node ("" for every node), as a VIP's value.
func backendsOf(cands map[backendKey][]candidate, sp corev1.ServicePort, node string) string {
	return strings.Join(pick(cands[backendKey{protocolOf(sp.Protocol), sp.Name, discoveryv1.AddressTypeIPv4}], node), ",")
}

// lbSet builds one load balancer per protocol.
type lbSet struct {
	svc  *corev1.Service
	env  ServiceEnv
	name func(proto string) string
	lbs  map[corev1.Protocol]*nbmodel.LoadBalancer
}

func newLBSet(svc *corev1.Service, env ServiceEnv, name func(string) string) *lbSet {
	return &lbSet{svc: svc, env: env, name: name, lbs: map[corev1.Protocol]*nbmodel.LoadBalancer{}}
}

// lb is the load balancer of sp's protocol.
func (b *lbSet) lb(sp corev1.ServicePort) *nbmodel.LoadBalancer {
	proto := protocolOf(sp.Protocol)
	if lb := b.lbs[proto]; lb != nil {
		return lb
	}
	// ClientIP affinity on the gateway routers is always by hash: affinity_timeout did not hold there
	// (the upstream NodePort session affinity [Conformance] spec saw every backend from one client),
	// since the per-connection hash below picked a backend before OVN's learned affinity could, and
	// the NodePort VIP is a template, for which OVN builds no affinity flows.
	lb := newServiceLB(b.svc, proto, true)
	lb.Name = b.name(string(proto))
	if len(lb.SelectionFields) == 0 {
		lb.SelectionFields = slices.Clone(GatewayLBSelectionFields)
	}
	b.lbs[proto] = lb
	return lb
}

// GatewayLBSelectionFields pick the backend of a gateway router's load balancers by a hash that
// ovs-vswitchd computes while translating the flow, instead of OVN's default dp_hash, which costs a
// recirculation of its own (hash, then recirc). The userspace datapath recirculates a packet at most
// 6 times (dpif-netdev's MAX_RECIRC_DEPTH) and drops it beyond, counting datapath_drop_recirc_error.
// The first packet of a NodePort connection from outside needs, on the gateway router: unSNAT (the
// node IP is also the SNAT address), DNAT lookup, the dp_hash bucket, the load balancer's commit,
// unDNAT, the lb_force_snat_ip commit, then the backend switch's conntrack: 7 with dp_hash, so every
// SYN was dropped there and only its retransmission, which finds the DNAT entry and skips the load
// balancer (and with it the force SNAT), reached the backend, from the client's address: the backend's
// answer went the wrong way and the connection was reset. Affinity by hash (ip_src, ip_dst) already
// avoids dp_hash and is kept.
var GatewayLBSelectionFields = []string{nbmodel.LoadBalancerSelectionFieldsIPSrc, nbmodel.LoadBalancerSelectionFieldsIPDst,
	nbmodel.LoadBalancerSelectionFieldsTpSrc, nbmodel.LoadBalancerSelectionFieldsTpDst}

// rows are the load balancers that have VIPs, in protocol order.
func (b *lbSet) rows(parents []nbstore.Parent) []nbstore.Row {
	var rows []nbstore.Row
	for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
		if lb := b.lbs[proto]; lb != nil && len(lb.Vips) > 0 {
			rows = append(rows, nbstore.Row{Model: lb, Parents: parents})
		}
	}
	return rows
}
