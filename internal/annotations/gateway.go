package annotations

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
)

// NodeGateway holds the node's NodeGatewayInfo as JSON. dunlin-node writes it once br-ex holds the
// uplink; the controller builds the node's gateway router (GR_<node>, ext_<node>) from it and leaves a
// node without it (or with an invalid one) without a gateway, warning, while every other node converges.
const NodeGateway = "dunlin.io/node-gateway"

// NodeGatewayFormat is the format this release writes. A reader accepts every format up to it and
// ignores fields it does not know (a newer agent may add some).
const NodeGatewayFormat = 1

// PhysicalNetwork is the network name of the ext_<node> localnet ports, mapped to the gateway bridge by
// the node's ovn-bridge-mappings ("physnet:br-ex").
const PhysicalNetwork = "physnet"

// NodeGatewayInfo is the value of the NodeGateway annotation: what the node's gateway router needs to
// share the node's uplink.
type NodeGatewayInfo struct {
	Format int `json:"format"`
	// ChassisID is the node's OVS system-id (its OVN chassis name), which pins GR_<node> to the node;
	// empty means the node name (dunlin-node's default system-id).
	ChassisID string `json:"chassis_id,omitempty"`
	// Bridge is the OVS bridge that holds the uplink and the node's addresses ("br-ex").
	Bridge string `json:"bridge"`
	// Interface is the uplink moved into Bridge ("eth0").
	Interface string `json:"interface"`
	// MACAddress is Bridge's MAC (the uplink's): the gateway router's external port uses it too.
	MACAddress string `json:"mac_address"`
	// IPAddresses are the node's addresses on Bridge, with prefix, at most one per family; the gateway
	// router's external port carries them and SNATs pod egress to them.
	IPAddresses []string `json:"ip_addresses"`
	// NextHops are the default gateways of the node, at most one per family.
	NextHops []string `json:"next_hops,omitempty"`
}

// Marshal encodes the annotation value.
func (g NodeGatewayInfo) Marshal() string {
	b, _ := json.Marshal(g) // strings and ints always encode
	return string(b)
}

// Addresses returns the node addresses, parsed (ParseNodeGateway validated them).
func (g NodeGatewayInfo) Addresses() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range g.IPAddresses {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// NextHopFor returns the next hop of addr's family, if any.
func (g NodeGatewayInfo) NextHopFor(addr netip.Addr) (netip.Addr, bool) {
	for _, s := range g.NextHops {
		if a := netip.MustParseAddr(s); a.Is4() == addr.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// ParseNodeGateway decodes and validates a NodeGateway annotation value.
func ParseNodeGateway(s string) (NodeGatewayInfo, error) {
	var g NodeGatewayInfo
	if err := json.Unmarshal([]byte(s), &g); err != nil {
		return g, fmt.Errorf("%s is not valid JSON: %w", NodeGateway, err)
	}
	if g.Format < 1 || g.Format > NodeGatewayFormat {
		return g, fmt.Errorf("%s format %d is not one this release reads (1..%d)", NodeGateway, g.Format, NodeGatewayFormat)
	}
	if g.Bridge == "" {
		return g, fmt.Errorf("%s has no bridge", NodeGateway)
	}
	if _, err := net.ParseMAC(g.MACAddress); err != nil {
		return g, fmt.Errorf("%s mac_address %q: %w", NodeGateway, g.MACAddress, err)
	}
	if len(g.IPAddresses) == 0 {
		return g, fmt.Errorf("%s has no ip_addresses", NodeGateway)
	}
	var addrs []netip.Prefix
	for _, s := range g.IPAddresses {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return g, fmt.Errorf("%s ip_addresses %q: %w", NodeGateway, s, err)
		}
		for _, o := range addrs {
			if o.Addr().Is4() == p.Addr().Is4() {
				return g, fmt.Errorf("%s has two addresses of one family (%s, %s)", NodeGateway, o, p)
			}
		}
		addrs = append(addrs, p)
	}
	seen := map[bool]bool{}
	for _, s := range g.NextHops {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return g, fmt.Errorf("%s next_hops %q: %w", NodeGateway, s, err)
		}
		if seen[a.Is4()] {
			return g, fmt.Errorf("%s has two next hops of one family", NodeGateway)
		}
		seen[a.Is4()] = true
		onLink := false
		for _, p := range addrs {
			onLink = onLink || (p.Masked().Contains(a) && p.Addr() != a)
		}
		if !onLink {
			return g, fmt.Errorf("%s next hop %s is not on the node's networks %v", NodeGateway, a, g.IPAddresses)
		}
	}
	return g, nil
}
