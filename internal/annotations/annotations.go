// Package annotations defines the Kubernetes annotations through which Dunlin persists its network
// state: the controller writes them, the node agent and a restarted controller read them. Each format
// is an API: a newer Dunlin reads every form an older one wrote.
package annotations

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

const (
	// NodeSubnet holds the node's pod subnets when Dunlin allocated them from --cluster-cidr: a
	// comma-separated list of CIDRs, at most one per address family ("10.244.3.0/24", or
	// "10.244.3.0/24,fd00:10:244:3::/64"). The single-CIDR value older releases wrote is a list of one.
	// Nodes with spec.podCIDRs do not get it.
	NodeSubnet = "dunlin.io/node-subnet"
	// PodNetwork holds the pod's PodNetworkInfo as JSON, written before any NB row refers to the address.
	PodNetwork = "dunlin.io/pod-network"
	// NodeFeatures lists, comma-separated, what the node's dunlin-node supports; dunlin-node writes it
	// when it starts. The controller turns a feature on for a node's pods only once the node's agent has
	// it, so that a rolling upgrade in either order keeps pods connected.
	NodeFeatures = "dunlin.io/node-features"
)

// Features in NodeFeatures.
const (
	// FeatureIfaceIDVer: the agent puts the pod UID in iface-id-ver on pod interfaces (and has added it
	// to the interfaces of pods plumbed before it), so the controller may require it on logical ports.
	FeatureIfaceIDVer = "iface-id-ver"
	// FeatureGateway: the agent runs the node gateway (it was not started with --gateway=false), so
	// the node is expected to get a NodeGateway annotation; the controller warns while it has none.
	// The agent announces it only once its first attempt to set the gateway up has published the
	// annotation or failed, so a starting node is not reported. Agents of releases before it, and
	// agents without a gateway, do not list it: no NodeGateway is expected of them.
	FeatureGateway = "gateway"
)

// AgentFeatures are the features this release's dunlin-node supports, as NodeFeatures holds them;
// gateway says whether it runs the node gateway.
func AgentFeatures(gateway bool) string {
	if gateway {
		return FeatureIfaceIDVer + "," + FeatureGateway
	}
	return FeatureIfaceIDVer
}

// WithoutFeature returns the NodeFeatures value features without feature, as dunlin-node --cleanup
// writes it when it takes the gateway down.
func WithoutFeature(features, feature string) string {
	var keep []string
	for _, f := range strings.Split(features, ",") {
		if f = strings.TrimSpace(f); f != "" && f != feature {
			keep = append(keep, f)
		}
	}
	return strings.Join(keep, ",")
}

// HasFeature reports whether the node's agent announced feature.
func HasFeature(node *corev1.Node, feature string) bool {
	for _, f := range strings.Split(node.Annotations[NodeFeatures], ",") {
		if strings.TrimSpace(f) == feature {
			return true
		}
	}
	return false
}

// Route is a route the pod gets besides its default route.
type Route struct {
	Dest    string `json:"dest"`
	NextHop string `json:"nextHop"`
}

// PodNetworkInfo is the value of the PodNetwork annotation.
//
// Format 2 (this one) lists the addresses and gateways, at most one per family. Format 1 had only
// ip_address and gateway_ip (one IPv4 address): it is still read when the lists are absent, and still
// written beside them, mirroring the IPv4 entries, for dunlin-node releases that read only format 1
// (a rolling upgrade updates the controller and the nodes at different times).
type PodNetworkInfo struct {
	IPAddresses []string `json:"ip_addresses,omitempty"` // with the subnet's prefix length, 10.244.1.5/24
	MACAddress  string   `json:"mac_address"`
	GatewayIPs  []string `json:"gateway_ips,omitempty"`
	Routes      []Route  `json:"routes,omitempty"`
	MTU         int      `json:"mtu,omitempty"`

	IPAddress string `json:"ip_address,omitempty"` // format 1
	GatewayIP string `json:"gateway_ip,omitempty"` // format 1
}

// NewPodNetworkInfo returns the annotation value for addrs (one per family) with their gateways, in
// the current format.
func NewPodNetworkInfo(addrs []netip.Prefix, gateways []netip.Addr, mac string) PodNetworkInfo {
	p := PodNetworkInfo{MACAddress: mac}
	for _, a := range addrs {
		p.IPAddresses = append(p.IPAddresses, a.String())
		if a.Addr().Is4() && p.IPAddress == "" {
			p.IPAddress = a.String()
		}
	}
	for _, g := range gateways {
		p.GatewayIPs = append(p.GatewayIPs, g.String())
		if g.Is4() && p.GatewayIP == "" {
			p.GatewayIP = g.String()
		}
	}
	return p
}

// Addresses returns the pod's addresses with their prefix lengths. The value must have been parsed
// by ParsePodNetwork or built by NewPodNetworkInfo.
func (p PodNetworkInfo) Addresses() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(p.IPAddresses))
	for _, s := range p.IPAddresses {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// Gateways returns the pod's default gateways, one per family.
func (p PodNetworkInfo) Gateways() []netip.Addr {
	out := make([]netip.Addr, 0, len(p.GatewayIPs))
	for _, s := range p.GatewayIPs {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// IPv4 returns the pod's IPv4 address, if it has one.
func (p PodNetworkInfo) IPv4() (netip.Prefix, bool) {
	for _, a := range p.Addresses() {
		if a.Addr().Is4() {
			return a, true
		}
	}
	return netip.Prefix{}, false
}

// Marshal encodes the annotation value.
func (p PodNetworkInfo) Marshal() string {
	b, _ := json.Marshal(p) // a struct of strings and ints always encodes
	return string(b)
}

// ParsePodNetwork decodes and validates a PodNetwork annotation value of either format; the result
// always has the lists filled.
func ParsePodNetwork(s string) (PodNetworkInfo, error) {
	var p PodNetworkInfo
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return p, fmt.Errorf("%s is not valid JSON: %w", PodNetwork, err)
	}
	if len(p.IPAddresses) == 0 && p.IPAddress != "" {
		p.IPAddresses = []string{p.IPAddress}
	}
	if len(p.GatewayIPs) == 0 && p.GatewayIP != "" {
		p.GatewayIPs = []string{p.GatewayIP}
	}
	if len(p.IPAddresses) == 0 {
		return p, fmt.Errorf("%s has no ip_addresses", PodNetwork)
	}
	var addrs []netip.Prefix
	for _, s := range p.IPAddresses {
		pfx, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("%s ip_addresses %q: %w", PodNetwork, s, err)
		}
		for _, o := range addrs {
			if o.Addr().Is4() == pfx.Addr().Is4() {
				return p, fmt.Errorf("%s has two addresses of one family (%s, %s)", PodNetwork, o, pfx)
			}
		}
		addrs = append(addrs, pfx)
	}
	if p.IPAddress != "" && !containsString(p.IPAddresses, p.IPAddress) {
		return p, fmt.Errorf("%s ip_address %q is not in ip_addresses %v", PodNetwork, p.IPAddress, p.IPAddresses)
	}
	if p.GatewayIP != "" && !containsString(p.GatewayIPs, p.GatewayIP) {
		return p, fmt.Errorf("%s gateway_ip %q is not in gateway_ips %v", PodNetwork, p.GatewayIP, p.GatewayIPs)
	}
	if _, err := net.ParseMAC(p.MACAddress); err != nil {
		return p, fmt.Errorf("%s mac_address %q: %w", PodNetwork, p.MACAddress, err)
	}
	for _, s := range p.GatewayIPs {
		gw, err := netip.ParseAddr(s)
		if err != nil {
			return p, fmt.Errorf("%s gateway_ips %q: %w", PodNetwork, s, err)
		}
		inside := false
		for _, a := range addrs {
			inside = inside || a.Masked().Contains(gw)
		}
		if !inside {
			return p, fmt.Errorf("%s gateway %s is outside the pod's subnets %v", PodNetwork, gw, p.IPAddresses)
		}
	}
	for _, r := range p.Routes {
		if _, err := netip.ParsePrefix(r.Dest); err != nil {
			return p, fmt.Errorf("%s route dest %q: %w", PodNetwork, r.Dest, err)
		}
		if _, err := netip.ParseAddr(r.NextHop); err != nil {
			return p, fmt.Errorf("%s route nextHop %q: %w", PodNetwork, r.NextHop, err)
		}
	}
	if p.MTU < 0 || p.MTU > 65535 {
		return p, fmt.Errorf("%s mtu %d is out of range", PodNetwork, p.MTU)
	}
	return p, nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ParseNodeSubnets decodes a NodeSubnet annotation value: CIDRs separated by commas, each a network
// address (no host bits), at most one per family.
func ParseNodeSubnets(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", NodeSubnet, s, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("%s %q: %s has host bits set (did you mean %s?)", NodeSubnet, s, p, p.Masked())
		}
		if err := addOnePerFamily(&out, p); err != nil {
			return nil, fmt.Errorf("%s %q: %w", NodeSubnet, s, err)
		}
	}
	return out, nil
}

// FormatNodeSubnets encodes subnets as a NodeSubnet annotation value.
func FormatNodeSubnets(subnets []netip.Prefix) string {
	parts := make([]string, len(subnets))
	for i, p := range subnets {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

func addOnePerFamily(list *[]netip.Prefix, p netip.Prefix) error {
	for _, o := range *list {
		if o.Addr().Is4() == p.Addr().Is4() {
			return fmt.Errorf("two subnets of one family (%s, %s)", o, p)
		}
	}
	*list = append(*list, p)
	return nil
}

// DeclaredNodeSubnets returns the subnets a node already has and where they came from: spec.podCIDRs
// when the cluster allocates them, else the NodeSubnet annotation, else none. The controller and the
// node agent both read it, so they agree.
func DeclaredNodeSubnets(node *corev1.Node) ([]netip.Prefix, string, error) {
	if len(node.Spec.PodCIDRs) > 0 {
		var out []netip.Prefix
		for _, s := range node.Spec.PodCIDRs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, "spec.podCIDRs", fmt.Errorf("node spec.podCIDRs %q: %w", s, err)
			}
			if err := addOnePerFamily(&out, p.Masked()); err != nil {
				return nil, "spec.podCIDRs", fmt.Errorf("node spec.podCIDRs: %w", err)
			}
		}
		return out, "spec.podCIDRs", nil
	}
	if s, ok := node.Annotations[NodeSubnet]; ok {
		p, err := ParseNodeSubnets(s)
		return p, "annotation " + NodeSubnet, err
	}
	return nil, "", nil
}

// IPv4Subnet returns the IPv4 entry of subnets, or a zero prefix.
func IPv4Subnet(subnets []netip.Prefix) netip.Prefix {
	for _, p := range subnets {
		if p.Addr().Is4() {
			return p
		}
	}
	return netip.Prefix{}
}
