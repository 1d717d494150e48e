package translator

import (
	"net/netip"

	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// The pure part of the controller: Kubernetes facts in, desired NB rows out. No I/O, no clock.

// NodeNetwork is what the rows of a node depend on.
type NodeNetwork struct {
	Name   string
	Subnet netip.Prefix
}

// PodNetwork is what the row of a pod depends on.
type PodNetwork struct {
	Namespace, Name, UID string
	Node                 string
	Addr                 netip.Addr
	// IfaceIDVer requires the OVS interface to carry the pod's UID (the node's agent supports it).
	IfaceIDVer bool
}

// ClusterRows are the cluster-wide rows.
func ClusterRows() []nbstore.Row {
	return []nbstore.Row{
		{Model: &nbmodel.LogicalRouter{Name: ClusterRouter, ExternalIDs: map[string]string{}}},
		{Model: &nbmodel.LoadBalancerGroup{Name: ClusterLBGroup}},
	}
}

// NodeRows are a node's switch, its link to the cluster router, and its management port.
func NodeRows(n NodeNetwork) []nbstore.Row {
	gw, mgmt := conventions.GatewayIP(n.Subnet), conventions.ManagementIP(n.Subnet)
	ids := map[string]string{extNode: n.Name}
	nodeOwner := Owner(KindNode, n.Name)
	onSwitch := nbstore.In(nodeOwner, n.Name)
	return []nbstore.Row{
		{Model: &nbmodel.LogicalSwitch{
			Name: n.Name,
			OtherConfig: map[string]string{
				"subnet":      n.Subnet.String(),
				"exclude_ips": gw.String() + ".." + mgmt.String(),
			},
			ExternalIDs: ids,
		}, Refs: map[string][]nbstore.Ref{"load_balancer_group": {{Owner: ClusterOwner, Name: ClusterLBGroup}}}},
		{Model: &nbmodel.LogicalRouterPort{
			Name:        RouterPortName(n.Name),
			MAC:         conventions.MACFromIP(gw),
			Networks:    []string{netip.PrefixFrom(gw, n.Subnet.Bits()).String()},
			ExternalIDs: ids,
		}, Parents: nbstore.In(ClusterOwner, ClusterRouter)},
		{Model: &nbmodel.LogicalSwitchPort{
			Name:        SwitchRouterPortName(n.Name),
			Type:        "router",
			Addresses:   []string{"router"},
			Options:     map[string]string{"router-port": RouterPortName(n.Name)},
			ExternalIDs: ids,
		}, Parents: onSwitch},
		{Model: &nbmodel.LogicalSwitchPort{
			Name:        conventions.ManagementPortName(n.Name),
			Addresses:   []string{conventions.MACFromIP(mgmt) + " " + mgmt.String()},
			Options:     map[string]string{"requested-chassis": n.Name},
			ExternalIDs: ids,
		}, Parents: onSwitch},
	}
}

// PodRows is a pod's logical switch port on its node's switch.
func PodRows(p PodNetwork) []nbstore.Row {
	options := map[string]string{"requested-chassis": p.Node}
	if p.IfaceIDVer {
		// Only an OVS interface plumbed for this very pod (same UID) can claim the port.
		options[conventions.IfaceIDVer] = p.UID
	}
	addr := conventions.MACFromIP(p.Addr) + " " + p.Addr.String()
	return []nbstore.Row{{Model: &nbmodel.LogicalSwitchPort{
		Name:         conventions.PodPortName(p.Namespace, p.Name),
		Addresses:    []string{addr},
		PortSecurity: []string{addr},
		Options:      options,
		ExternalIDs: map[string]string{
			extNamespace: p.Namespace, extPod: p.Name, extPodUID: p.UID, extNode: p.Node,
		},
	}, Parents: nbstore.In(Owner(KindNode, p.Node), p.Node)}}
}
