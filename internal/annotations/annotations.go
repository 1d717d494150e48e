// Package annotations defines the Kubernetes annotations through which Dunlin persists its network
// state: the controller writes them, the node agent and a restarted controller read them.
package annotations

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
)

const (
	// NodeSubnet holds the node's pod subnet (a CIDR such as 10.244.3.0/24) when Dunlin allocated it
	// from --cluster-cidr; nodes with spec.podCIDRs do not get it.
	NodeSubnet = "dunlin.io/node-subnet"
	// PodNetwork holds the pod's PodNetwork as JSON, written before any NB row refers to the address.
	PodNetwork = "dunlin.io/pod-network"
)

// Route is a route the pod gets besides its default route.
type Route struct {
	Dest    string `json:"dest"`
	NextHop string `json:"nextHop"`
}

// PodNetworkInfo is the value of the PodNetwork annotation.
type PodNetworkInfo struct {
	IPAddress  string  `json:"ip_address"` // address with the subnet's prefix length, 10.244.1.5/24
	MACAddress string  `json:"mac_address"`
	GatewayIP  string  `json:"gateway_ip"`
	Routes     []Route `json:"routes,omitempty"`
	MTU        int     `json:"mtu,omitempty"`
}

// Prefix returns the address with its prefix length.
func (p PodNetworkInfo) Prefix() netip.Prefix { return netip.MustParsePrefix(p.IPAddress) }

// Marshal encodes the annotation value.
func (p PodNetworkInfo) Marshal() string {
	b, _ := json.Marshal(p) // a struct of strings and ints always encodes
	return string(b)
}

// ParsePodNetwork decodes and validates a PodNetwork annotation value.
func ParsePodNetwork(s string) (PodNetworkInfo, error) {
	var p PodNetworkInfo
	if err := json.Unmarshal([]byte(s), &p); err != nil {
		return p, fmt.Errorf("%s is not valid JSON: %w", PodNetwork, err)
	}
	pfx, err := netip.ParsePrefix(p.IPAddress)
	if err != nil {
		return p, fmt.Errorf("%s ip_address %q: %w", PodNetwork, p.IPAddress, err)
	}
	if _, err := net.ParseMAC(p.MACAddress); err != nil {
		return p, fmt.Errorf("%s mac_address %q: %w", PodNetwork, p.MACAddress, err)
	}
	gw, err := netip.ParseAddr(p.GatewayIP)
	if err != nil {
		return p, fmt.Errorf("%s gateway_ip %q: %w", PodNetwork, p.GatewayIP, err)
	}
	if !pfx.Masked().Contains(gw) {
		return p, fmt.Errorf("%s gateway_ip %s is outside %s", PodNetwork, gw, pfx.Masked())
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

// ParseNodeSubnet decodes a NodeSubnet annotation value; it must be a network address (no host bits).
func ParseNodeSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%s %q: %w", NodeSubnet, s, err)
	}
	if p != p.Masked() {
		return p, fmt.Errorf("%s %q has host bits set (did you mean %s?)", NodeSubnet, s, p.Masked())
	}
	return p, nil
}

// DeclaredNodeSubnet returns the subnet a node already has and where it came from: the IPv4 entry of
// spec.podCIDRs when the cluster allocates them, else the NodeSubnet annotation, else a zero prefix.
// The controller and the node agent both read it, so they agree.
func DeclaredNodeSubnet(node *corev1.Node) (netip.Prefix, string, error) {
	for _, s := range node.Spec.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, "spec.podCIDRs", fmt.Errorf("node spec.podCIDRs %q: %w", s, err)
		}
		if p.Addr().Is4() {
			return p.Masked(), "spec.podCIDRs", nil
		}
	}
	if s, ok := node.Annotations[NodeSubnet]; ok {
		p, err := ParseNodeSubnet(s)
		return p, "annotation " + NodeSubnet, err
	}
	return netip.Prefix{}, "", nil
}
