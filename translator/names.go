package translator

import "github.com/dunlinplugin/dunlin/translator/nbstore"

// NB names, in one place (see "NB naming" in shared/DESIGN.md).
const (
	// ClusterRouter connects every node switch.
	ClusterRouter = "ovn_cluster_router"
	// ClusterOwner owns the cluster-wide rows.
	ClusterOwner = "Cluster/dunlin"
	// ClusterLBGroup holds every cluster-wide Service load balancer and is attached to every node
	// switch, so a Service costs the same number of NB rows whatever the number of nodes.
	ClusterLBGroup = "dunlin-cluster"
	// RouterLBGroup holds the load balancers every gateway router serves (NodePort templates,
	// externalIPs and ingress IPs of Services with externalTrafficPolicy Cluster).
	RouterLBGroup = "dunlin-routers"
	// JoinSwitch links the cluster router with every node's gateway router.
	JoinSwitch = "join"

	// HairpinSNATIPv4 and HairpinSNATIPv6 are the source addresses a pod sees when it reaches itself
	// through a Service VIP. They come from Dunlin's masquerade ranges 169.254.169.0/29 and
	// fd69::/125 (.1-.4 are kept for the gateway), so NetworkPolicy can recognise hairpin traffic.
	HairpinSNATIPv4 = "169.254.169.5"
	HairpinSNATIPv6 = "fd69::5"

	routerToSwitchPrefix = "rtos-"
	switchToRouterPrefix = "stor-"
)

// Kinds of owner, the first part of an owner value and the name of a work queue.
const (
	KindCluster = "Cluster"
	KindNode    = "Node"
	KindPod     = "Pod"
	KindService = "Service"
	// KindGateway owns a node's gateway rows (GR_<node> and what hangs off it), apart from its switch,
	// so that a bad gateway annotation leaves the node's pods alone.
	KindGateway = "Gateway"
	// KindPolicy owns a NetworkPolicy's port group, ACLs and named-port address sets.
	KindPolicy = "NetworkPolicy"
	// KindPolicyNamespace owns a namespace's default-deny port groups and ACLs.
	KindPolicyNamespace = "PolicyNamespace"
	// KindPolicyPeer owns the address set shared by identical policy peers.
	KindPolicyPeer = "PolicyPeer"
)

// external_ids keys Dunlin sets besides nbstore.OwnerKey, for operators' ovn-nbctl find.
const (
	extNode      = "dunlin.io/node"
	extNamespace = "namespace"
	extPod       = "pod"
	extPodUID    = "pod-uid"
	extService   = "service"
	extPolicy    = "policy"
)

// Owner is the owner value of a queue key of kind (namespace/name or name).
func Owner(kind, key string) string { return kind + "/" + key }

// RouterPortName is the cluster router's port towards a node switch.
func RouterPortName(node string) string { return routerToSwitchPrefix + node }

// SwitchRouterPortName is the node switch's peer of RouterPortName.
func SwitchRouterPortName(node string) string { return switchToRouterPrefix + node }

// ServiceLBName is the load balancer of a Service for one protocol (TCP, UDP or SCTP).
func ServiceLBName(namespace, name, protocol string) string {
	return "Service_" + namespace + "/" + name + "_" + protocol
}

// ServiceNodeLBName is a Service's load balancer on one node's switch, for internalTrafficPolicy Local.
func ServiceNodeLBName(namespace, name, protocol, node string) string {
	return ServiceLBName(namespace, name, protocol) + "_node_" + node
}

// ServiceNodePortLBName is a Service's NodePort template load balancer for one protocol.
func ServiceNodePortLBName(namespace, name, protocol string) string {
	return ServiceLBName(namespace, name, protocol) + "_nodeport"
}

// ServiceExternalLBName is a Service's load balancer of externalIPs and ingress IPs on every gateway
// router (externalTrafficPolicy Cluster).
func ServiceExternalLBName(namespace, name, protocol string) string {
	return ServiceLBName(namespace, name, protocol) + "_external"
}

// ServiceGatewayLBName is a Service's load balancer on one node's gateway router, for
// externalTrafficPolicy Local.
func ServiceGatewayLBName(namespace, name, protocol, node string) string {
	return ServiceLBName(namespace, name, protocol) + "_gateway_" + node
}

// TableSpecs is what Dunlin manages in NB and how (see nbstore.TableSpec).
func TableSpecs() map[string]nbstore.TableSpec {
	return map[string]nbstore.TableSpec{
		"Logical_Router": {Columns: []string{"name", "options", "load_balancer_group", "external_ids"}},
		"Logical_Router_Port": {Columns: []string{"name", "mac", "networks", "external_ids"},
			ParentTable: "Logical_Router", ParentColumn: "ports"},
		"Logical_Switch": {Columns: []string{"name", "other_config", "load_balancer_group", "external_ids"}},
		"Load_Balancer": {Columns: []string{"name", "protocol", "vips", "options", "selection_fields", "external_ids"},
			ParentTable: "Load_Balancer_Group", ParentColumn: "load_balancer"},
		"Load_Balancer_Group": {Columns: []string{"name"}, NameOwned: true},
		"Logical_Switch_Port": {Columns: []string{"name", "type", "addresses", "port_security", "options", "external_ids"},
			ParentTable: "Logical_Switch", ParentColumn: "ports"},
		// Gateways: rows without a name, identified by dunlin.io/id within their owner.
		"Logical_Router_Static_Route": {Keyed: true, Columns: []string{"ip_prefix", "nexthop", "output_port", "policy", "external_ids"},
			ParentTable: "Logical_Router", ParentColumn: "static_routes"},
		"Logical_Router_Policy": {Keyed: true, Columns: []string{"priority", "match", "action", "nexthops", "external_ids"},
			ParentTable: "Logical_Router", ParentColumn: "policies"},
		"NAT": {Keyed: true, Columns: []string{"type", "logical_ip", "external_ip", "external_ids"},
			ParentTable: "Logical_Router", ParentColumn: "nat"},
		// One row per chassis (schema-unique), identified by the chassis name.
		"Chassis_Template_Var": {Keyed: true, Columns: []string{"chassis", "variables", "external_ids"}},
		// NetworkPolicy: port groups and address sets change one member at a time.
		"Port_Group":  {Columns: []string{"name", "external_ids"}, MemberColumns: []string{"ports"}},
		"Address_Set": {Columns: []string{"name", "external_ids"}, MemberColumns: []string{"addresses"}},
		"ACL": {Keyed: true, Columns: []string{"action", "direction", "match", "priority", "name", "log", "severity",
			"meter", "options", "external_ids"}, ParentTable: "Port_Group", ParentColumn: "acls"},
		"Meter": {Columns: []string{"name", "unit", "fair", "external_ids"}},
		// A meter needs its band when it is created: the band is held through the meter's Refs.
		"Meter_Band": {Keyed: true, Columns: []string{"action", "rate", "burst_size", "external_ids"}},
	}
}
