// Package conventions holds what dunlin-controller and dunlin-node must agree on without talking to each
// other: the names of logical ports (which are also OVS iface-ids), the MAC derived from an address, and
// which addresses of a node subnet are the gateway and the management port. Both binaries import it;
// neither imports the other's packages.
package conventions

import (
	"fmt"
	"net/netip"
)

// IfaceIDVer is the key, in a pod port's NB options and on its OVS interface's external_ids, that holds
// the pod UID: ovn-controller binds an interface to the logical port only when both carry the same
// value, so a stale sandbox of a deleted pod cannot claim the port of a newer pod of the same name.
const IfaceIDVer = "iface-id-ver"

// PodPortName is the logical switch port of a pod, <namespace>_<name>; it is also the OVS iface-id.
func PodPortName(namespace, name string) string { return namespace + "_" + name }

// ManagementPortName is the logical switch port of a node's management port (host to pods).
func ManagementPortName(node string) string { return "k8s-" + node }

// MACFromIP derives a MAC address from an address: 0a:58 followed by the IPv4 address, or by the last
// four bytes of an IPv6 address. A pod's MAC never needs to be stored or learnt separately.
func MACFromIP(a netip.Addr) string {
	b := a.Unmap().AsSlice()
	b = b[len(b)-4:]
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// GatewayIP is the first host address of a node subnet: the cluster router's port, the pods' default
// gateway.
func GatewayIP(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// ManagementIP is the second host address of a node subnet, held for the node's management port.
func ManagementIP(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next().Next() }
