package translator

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// Node gateways, the shared-gateway topology: every node with a valid dunlin.io/node-gateway annotation
// gets a gateway router GR_<node>, pinned to its chassis, between the join switch and an external
// switch ext_<node> whose localnet port is the node's br-ex. The router carries the node's own MAC and
// IP (the host shares them), SNATs pod egress to the node IP and holds the NodePort, externalIP and
// ingress load balancers through the dunlin-routers group.

// GatewayEnv is what every node's gateway rows depend on besides the node.
type GatewayEnv struct {
	ClusterCIDR netip.Prefix
	JoinSubnet  netip.Prefix
	// NodePortRange is --service-node-port-range (zero: the default).
	NodePortRange PortRange
}

// ClusterJoinIP is the cluster router's address on the join switch: its first address.
func ClusterJoinIP(join netip.Prefix) netip.Addr { return join.Masked().Addr().Next() }

// GatewayNode is what a node's gateway rows depend on.
type GatewayNode struct {
	Name string
	// Subnet is the node's pod subnet; its management address receives pod traffic for HostIPs.
	Subnet netip.Prefix
	// HostIPs are the node's IPv4 addresses (InternalIP, ExternalIP, the gateway annotation's), which
	// pods reach through the node's management port, so the host sees the pod's own address.
	HostIPs []netip.Addr
	// Gateway is the node's gateway annotation; nil means the node has no gateway router.
	Gateway *annotations.NodeGatewayInfo
	// JoinIP is the gateway router's address on the join switch (with Gateway).
	JoinIP netip.Addr
}

// GatewayRouterName and the port names around it follow ovn-kubernetes' shared gateway, which
// operators of OVN clusters know.
func GatewayRouterName(node string) string { return "GR_" + node }

// ExternalSwitchName is the switch between a node's gateway router and its br-ex.
func ExternalSwitchName(node string) string { return "ext_" + node }

// JoinRouterPortName is router's port on the join switch; JoinSwitchPortName its peer.
func JoinRouterPortName(router string) string { return "rtoj-" + router }

// JoinSwitchPortName is the join switch's port peering JoinRouterPortName(router).
func JoinSwitchPortName(router string) string { return "jtor-" + router }

// ExternalRouterPortName is a gateway router's port on ext_<node>; ExternalSwitchPortName its peer.
func ExternalRouterPortName(node string) string { return "rtoe-" + GatewayRouterName(node) }

// ExternalSwitchPortName is ext_<node>'s port peering ExternalRouterPortName(node).
func ExternalSwitchPortName(node string) string { return "etor-" + GatewayRouterName(node) }

// LocalnetPortName is ext_<node>'s localnet port: <bridge>_<node>, the bridge that holds the uplink.
func LocalnetPortName(bridge, node string) string { return bridge + "_" + node }

// Template variable and priorities of the gateway rows.
const (
	// NodeIPVar is the Chassis_Template_Var variable holding a chassis' node IPv4 address: NodePort
	// VIPs are "^NODEIP:<port>", one VIP for every node.
	NodeIPVar = "NODEIP"
	// HostNetworkPolicyPriority is the cluster router policy sending pod traffic for a node address to
	// that node's management port (ovn-kubernetes uses the same number).
	HostNetworkPolicyPriority = 1004
	// NodePortPolicyPriority sends pod traffic for a node address and a node port to that node's
	// gateway router over the join switch instead, since the host behind the management port has no
	// NodePort; that router balances it as it does outside clients, force-SNATed to its join address.
	// (Through the pod's own gateway router, SNATed to its node IP, and the underlay, the other node's
	// router took it for an outside client, and OVS 3.1's userspace conntrack aborted on the connection:
	// both routers' SNAT zone is 0.)
	NodePortPolicyPriority = 1005
)

// Keyed row IDs of a node's gateway (unique per owner and table).
const (
	idEgressRoute   = "egress"      // ovn_cluster_router: the node subnet's traffic goes to GR_<node>
	idJoinRoute     = "join"        // ovn_cluster_router: GR_<node>'s join address, over the egress routes
	idDefaultRoute  = "default"     // GR_<node>: 0.0.0.0/0 via the node's next hop
	idClusterRoute  = "cluster"     // GR_<node>: the cluster CIDR via the cluster router
	idSNAT          = "snat"        // GR_<node>: cluster CIDR -> node IP
	idHostNetPolicy = "hostnetwork" // ovn_cluster_router: pods -> node IPs via the management port
	idNodePortPol   = "nodeport"    // ovn_cluster_router: pods -> node IPs' node ports routed
)

// GatewayClusterRows are the cluster-wide rows of the gateways: the join switch, the cluster router's
// port on it, and the load balancer group every gateway router references.
func GatewayClusterRows(env GatewayEnv) []nbstore.Row {
	ip := ClusterJoinIP(env.JoinSubnet)
	rtoj := JoinRouterPortName(ClusterRouter)
	return []nbstore.Row{
		{Model: &nbmodel.LoadBalancerGroup{Name: RouterLBGroup}},
		{Model: &nbmodel.LogicalSwitch{Name: JoinSwitch, ExternalIDs: map[string]string{},
			OtherConfig: map[string]string{}}},
		{Model: &nbmodel.LogicalRouterPort{
			Name:        rtoj,
			MAC:         conventions.MACFromIP(ip),
			Networks:    []string{netip.PrefixFrom(ip, env.JoinSubnet.Bits()).String()},
			ExternalIDs: map[string]string{},
		}, Parents: nbstore.In(ClusterOwner, ClusterRouter)},
		routerPeer(JoinSwitchPortName(ClusterRouter), rtoj, map[string]string{}, nbstore.In(ClusterOwner, JoinSwitch)),
	}
}

// routerPeer is a switch's port of type router peering router port rp.
func routerPeer(name, rp string, ids map[string]string, parents []nbstore.Parent) nbstore.Row {
	return nbstore.Row{Model: &nbmodel.LogicalSwitchPort{
		Name:        name,
		Type:        "router",
		Addresses:   []string{"router"},
		Options:     map[string]string{"router-port": rp},
		ExternalIDs: ids,
	}, Parents: parents}
}

// GatewayRows are a node's gateway rows, owned by Gateway/<node>: the cluster router policy that sends
// pod traffic for the node's addresses to its management port, and, when the node has a gateway
// annotation, its gateway router with its ports, external switch, routes, SNAT and the chassis'
// template variables.
func GatewayRows(n GatewayNode, env GatewayEnv) []nbstore.Row {
	ids := map[string]string{extNode: n.Name}
	var rows []nbstore.Row
	if n.Gateway != nil {
		rows = gatewayRouterRows(n, env, ids)
	}
	if hosts := hostIPv4s(n); len(hosts) > 0 && n.Subnet.IsValid() {
		// Pods reach host-network endpoints (the API server, host-network pods) on every node through
		// that node's management port, unSNATed: the host routes the cluster CIDR back through it.
		set := make([]string, len(hosts))
		for i, a := range hosts {
			set[i] = a.String()
		}
		mgmt := conventions.ManagementIP(n.Subnet).String()
		toNode := fmt.Sprintf("ip4.src == %s && ip4.dst == {%s}", env.ClusterCIDR, strings.Join(set, ", "))
		rows = append(rows, nbstore.Row{Model: &nbmodel.LogicalRouterPolicy{
			Priority:    HostNetworkPolicyPriority,
			Match:       toNode,
			Action:      nbmodel.LogicalRouterPolicyActionReroute,
			Nexthops:    []string{mgmt},
			ExternalIDs: ids,
		}, ID: idHostNetPolicy, Parents: nbstore.In(ClusterOwner, ClusterRouter)})
		r := env.NodePortRange
		if r == (PortRange{}) {
			r = DefaultNodePortRange()
		}
		var ports []string
		for _, l4 := range []string{"tcp", "udp", "sctp"} {
			ports = append(ports, fmt.Sprintf("(%s.dst >= %d && %s.dst <= %d)", l4, r.Min, l4, r.Max))
		}
		np := &nbmodel.LogicalRouterPolicy{
			Priority:    NodePortPolicyPriority,
			Match:       toNode + " && (" + strings.Join(ports, " || ") + ")",
			Action:      nbmodel.LogicalRouterPolicyActionAllow,
			ExternalIDs: ids,
		}
		if n.Gateway != nil && n.JoinIP.IsValid() {
			np.Action, np.Nexthops = nbmodel.LogicalRouterPolicyActionReroute, []string{n.JoinIP.String()}
		}
		rows = append(rows, nbstore.Row{Model: np, ID: idNodePortPol, Parents: nbstore.In(ClusterOwner, ClusterRouter)})
	}
	return rows
}

// hostIPv4s are the node's distinct IPv4 addresses, sorted.
func hostIPv4s(n GatewayNode) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.HostIPs {
		if a.Is4() {
			out = append(out, a)
		}
	}
	if n.Gateway != nil {
		if p, ok := gatewayIPv4(*n.Gateway); ok {
			out = append(out, p.Addr())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out)
}

// gatewayIPv4 is the node's IPv4 address on its gateway bridge, with prefix.
func gatewayIPv4(g annotations.NodeGatewayInfo) (netip.Prefix, bool) {
	for _, p := range g.Addresses() {
		if p.Addr().Is4() {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// GatewayChassis is the chassis a node's gateway router is pinned to: the annotation's chassis_id, else
// the node name (dunlin-node's default system-id).
func GatewayChassis(node string, g annotations.NodeGatewayInfo) string {
	if g.ChassisID != "" {
		return g.ChassisID
	}
	return node
}

func gatewayRouterRows(n GatewayNode, env GatewayEnv, ids map[string]string) []nbstore.Row {
	g := *n.Gateway
	gr := GatewayRouterName(n.Name)
	ext := ExternalSwitchName(n.Name)
	owner := Owner(KindGateway, n.Name)
	onGR := nbstore.In(owner, gr)
	chassis := GatewayChassis(n.Name, g)
	nodeIP, _ := gatewayIPv4(g)
	clusterJoin := ClusterJoinIP(env.JoinSubnet)

	rows := []nbstore.Row{
		{Model: &nbmodel.LogicalRouter{
			Name: gr,
			Options: map[string]string{
				"chassis": chassis,
				// Load-balanced traffic leaves towards the pods from the router's join address, so
				// replies come back through this router, whichever node the backend is on.
				"lb_force_snat_ip": "router_ip",
				// SNAT in the host's zone 0 (kernel datapath): the kernel then picks source ports that
				// do not collide with the host's own connections from the same address.
				"snat-ct-zone": "0",
				// Hundreds of routers share the join switch: learn neighbours on demand instead of
				// O(routers²) static bindings, and do not learn from every ARP request on br-ex.
				"always_learn_from_arp_request": "false",
				"dynamic_neigh_routers":         "true",
			},
			ExternalIDs: ids,
		}, Refs: map[string][]nbstore.Ref{"load_balancer_group": {{Owner: ClusterOwner, Name: RouterLBGroup}}}},
		{Model: &nbmodel.LogicalRouterPort{
			Name:        JoinRouterPortName(gr),
			MAC:         conventions.MACFromIP(n.JoinIP),
			Networks:    []string{netip.PrefixFrom(n.JoinIP, env.JoinSubnet.Bits()).String()},
			ExternalIDs: ids,
		}, Parents: onGR},
		{Model: &nbmodel.LogicalRouterPort{
			Name:        ExternalRouterPortName(n.Name),
			MAC:         strings.ToLower(g.MACAddress),
			Networks:    []string{nodeIP.String()},
			ExternalIDs: ids,
		}, Parents: onGR},
		{Model: &nbmodel.LogicalSwitch{Name: ext, OtherConfig: map[string]string{}, ExternalIDs: ids}},
		routerPeer(JoinSwitchPortName(gr), JoinRouterPortName(gr), ids, nbstore.In(ClusterOwner, JoinSwitch)),
		routerPeer(ExternalSwitchPortName(n.Name), ExternalRouterPortName(n.Name), ids, nbstore.In(owner, ext)),
		{Model: &nbmodel.LogicalSwitchPort{
			Name:        LocalnetPortName(g.Bridge, n.Name),
			Type:        "localnet",
			Addresses:   []string{"unknown"},
			Options:     map[string]string{"network_name": annotations.PhysicalNetwork},
			ExternalIDs: ids,
		}, Parents: nbstore.In(owner, ext)},
		// Pod traffic of the node's subnet that no other route claims leaves through its own router.
		{Model: &nbmodel.LogicalRouterStaticRoute{
			IPPrefix:    n.Subnet.Masked().String(),
			Nexthop:     n.JoinIP.String(),
			Policy:      ptr.To(nbmodel.LogicalRouterStaticRoutePolicySrcIP),
			ExternalIDs: ids,
		}, ID: idEgressRoute, Parents: nbstore.In(ClusterOwner, ClusterRouter)},
		// Replies of load-balanced traffic go to the join address of the router that SNATed it
		// (lb_force_snat_ip), whichever node the backend is on. OVN ranks routes by prefix length
		// alone, so the egress route of the backend's subnet (src-ip, /24) would beat the join switch's
		// connected /16 and send the reply through the backend's own gateway router, which SNATs it to
		// its node IP: the router that opened the connection could not match it. A /32 per router wins.
		{Model: &nbmodel.LogicalRouterStaticRoute{
			IPPrefix:    netip.PrefixFrom(n.JoinIP, n.JoinIP.BitLen()).String(),
			Nexthop:     n.JoinIP.String(),
			ExternalIDs: ids,
		}, ID: idJoinRoute, Parents: nbstore.In(ClusterOwner, ClusterRouter)},
		{Model: &nbmodel.LogicalRouterStaticRoute{
			IPPrefix:    env.ClusterCIDR.Masked().String(),
			Nexthop:     clusterJoin.String(),
			ExternalIDs: ids,
		}, ID: idClusterRoute, Parents: onGR},
		// Pod-to-pod traffic never crosses a gateway router, so only egress is SNATed.
		{Model: &nbmodel.NAT{
			Type:        nbmodel.NATTypeSNAT,
			LogicalIP:   env.ClusterCIDR.Masked().String(),
			ExternalIP:  nodeIP.Addr().String(),
			ExternalIDs: ids,
		}, ID: idSNAT, Parents: onGR},
	}
	if hop, ok := g.NextHopFor(nodeIP.Addr()); ok {
		port := ExternalRouterPortName(n.Name)
		rows = append(rows, nbstore.Row{Model: &nbmodel.LogicalRouterStaticRoute{
			IPPrefix:    "0.0.0.0/0",
			Nexthop:     hop.String(),
			OutputPort:  &port,
			ExternalIDs: ids,
		}, ID: idDefaultRoute, Parents: onGR})
	}
	rows = append(rows, nbstore.Row{Model: &nbmodel.ChassisTemplateVar{
		Chassis:     chassis,
		Variables:   map[string]string{NodeIPVar: nodeIP.Addr().String()},
		ExternalIDs: ids,
	}, ID: chassis})
	return rows
}
