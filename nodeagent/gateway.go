package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/nodeagent/ovs"
)

// The node gateway: dunlin-node moves the node's uplink into the OVS bridge GatewayBridge, which takes
// over the uplink's MAC, addresses and routes, so that OVN's gateway router (its localnet port mapped
// here through ovn-bridge-mappings) and the host share the uplink. Bridge flows (gatewayflows.go) send
// NodePort, externalIP and reply traffic of OVN's connections to OVN, the rest to the host.

// GatewayBridge is the OVS bridge that holds the uplink.
const GatewayBridge = "br-ex"

// extUplinkState is the key of GatewayBridge's external_ids holding the uplinkState: what the uplink
// had before it was moved. It is written with the bridge, before anything moves, so that a restart
// after a crash finishes the move and --cleanup can always put things back.
const extUplinkState = "dunlin.io/uplink"

// uplinkState is what the uplink had before dunlin-node moved it into the gateway bridge.
type uplinkState struct {
	Interface string        `json:"interface"`
	MAC       string        `json:"mac"`
	MTU       int           `json:"mtu"`
	Addresses []string      `json:"addresses"` // with prefix
	Routes    []savedRoute  `json:"routes"`
	Sysctls   []savedSysctl `json:"sysctls"`
}

// savedRoute is a route through the uplink, other than the ones its addresses imply.
type savedRoute struct {
	Dst      string `json:"dst,omitempty"` // empty: default route
	Gw       string `json:"gw,omitempty"`
	Src      string `json:"src,omitempty"`
	Family   int    `json:"family"`
	Table    int    `json:"table,omitempty"`
	Priority int    `json:"priority,omitempty"`
	Scope    int    `json:"scope,omitempty"`
	Protocol int    `json:"protocol,omitempty"`
}

type savedSysctl struct {
	Path  string `json:"path"` // under /proc/sys
	Value string `json:"value"`
}

// uplinkSysctls are set on the uplink once it is a port of a userspace (netdev) bridge: OVS reads such
// a port with a packet socket, which leaves the kernel processing every frame too. The kernel would
// then answer NodePort traffic meant for OVN with resets, and ARP on the uplink. Strict reverse-path
// filtering drops IPv4 frames the uplink delivers (their source routes through the bridge), arp_ignore 8
// stops ARP replies, and IPv6 is turned off there. The kernel datapath steals the frames itself.
func uplinkSysctls(ifname string) []savedSysctl {
	return []savedSysctl{
		{Path: "net/ipv4/conf/" + ifname + "/rp_filter", Value: "1"},
		{Path: "net/ipv4/conf/" + ifname + "/arp_ignore", Value: "8"},
		{Path: "net/ipv6/conf/" + ifname + "/disable_ipv6", Value: "1"},
	}
}

func readSysctl(path string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", path))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(path, value string) error {
	if cur, err := readSysctl(path); err == nil && cur == value {
		return nil
	}
	if err := os.WriteFile(filepath.Join("/proc/sys", path), []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", path, value, err)
	}
	return nil
}

// defaultRouteLink names the interface of the IPv4 (else IPv6) default route of the main table.
func defaultRouteLink() (string, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return "", fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if (r.Dst == nil || isDefault(r.Dst)) && r.LinkIndex > 0 {
				l, err := netlink.LinkByIndex(r.LinkIndex)
				if err != nil {
					return "", fmt.Errorf("interface of the default route: %w", err)
				}
				return l.Attrs().Name, nil
			}
		}
	}
	return "", errNoDefaultRoute
}

// errNoDefaultRoute: the uplink is the default route's interface, and there is none.
var errNoDefaultRoute = errors.New("no default route to find the uplink by: set --gateway-interface")

// uplinkMissing reports whether the gateway set-up failed for want of the uplink: the interface named
// is not there (yet), or there is no default route to find it by.
func uplinkMissing(err error) bool {
	return errors.Is(err, errNoDefaultRoute) || isNotFound(err)
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// snapshotUplink records what link has now: MAC, MTU, addresses (not IPv6 link-local ones, which the
// kernel makes), routes (not the ones its addresses imply), and the sysctls about to change.
func snapshotUplink(link netlink.Link) (uplinkState, error) {
	name := link.Attrs().Name
	st := uplinkState{Interface: name, MAC: link.Attrs().HardwareAddr.String(), MTU: link.Attrs().MTU}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return st, fmt.Errorf("list addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() && a.IP.To4() == nil {
			continue
		}
		st.Addresses = append(st.Addresses, a.IPNet.String())
	}
	routes, err := linkRoutes(link)
	if err != nil {
		return st, err
	}
	for _, r := range routes {
		st.Routes = append(st.Routes, saveRoute(r))
	}
	for _, s := range uplinkSysctls(name) {
		v, err := readSysctl(s.Path)
		if errors.Is(err, os.ErrNotExist) { // e.g. no IPv6 in this kernel: nothing to change
			continue
		}
		if err != nil {
			return st, err
		}
		st.Sysctls = append(st.Sysctls, savedSysctl{Path: s.Path, Value: v})
	}
	return st, nil
}

// linkRoutes lists the routes of every table through link, except those the kernel derives from its
// addresses and IPv6 link-local and multicast ones.
func linkRoutes(link netlink.Link) ([]netlink.Route, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_UNSPEC},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", link.Attrs().Name, err)
	}
	var out []netlink.Route
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL || r.Table == unix.RT_TABLE_LOCAL || r.Type != unix.RTN_UNICAST {
			continue
		}
		if r.Dst != nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast()) {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func saveRoute(r netlink.Route) savedRoute {
	s := savedRoute{Family: r.Family, Table: r.Table, Priority: r.Priority, Scope: int(r.Scope), Protocol: int(r.Protocol)}
	if r.Dst != nil && !isDefault(r.Dst) {
		s.Dst = r.Dst.String()
	}
	if r.Gw != nil {
		s.Gw = r.Gw.String()
	}
	if r.Src != nil {
		s.Src = r.Src.String()
	}
	return s
}

// route rebuilds the saved route on link.
func (s savedRoute) route(link netlink.Link) (*netlink.Route, error) {
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Family: s.Family, Table: s.Table, Priority: s.Priority,
		Scope: netlink.Scope(s.Scope), Protocol: netlink.RouteProtocol(s.Protocol), Type: unix.RTN_UNICAST}
	dst := s.Dst
	if dst == "" {
		dst = "0.0.0.0/0"
		if s.Family == netlink.FAMILY_V6 {
			dst = "::/0"
		}
	}
	_, n, err := net.ParseCIDR(dst)
	if err != nil {
		return nil, fmt.Errorf("saved route %q: %w", dst, err)
	}
	r.Dst = n
	if s.Gw != "" {
		r.Gw = net.ParseIP(s.Gw)
	}
	if s.Src != "" {
		r.Src = net.ParseIP(s.Src)
	}
	return r, nil
}

// moveAddressing puts addrs and routes on to (up first, so that routes through a gateway resolve) and
// removes them from from. Adding before removing means the host always has each address on one of the
// two; replacing a route keyed like the old one moves it atomically.
func moveAddressing(from, to netlink.Link, addrs []string, routes []savedRoute, step func(string)) error {
	if err := netlink.LinkSetUp(to); err != nil {
		return fmt.Errorf("set %s up: %w", to.Attrs().Name, err)
	}
	for _, s := range addrs {
		a, err := netlink.ParseAddr(s)
		if err != nil {
			return fmt.Errorf("saved address %q: %w", s, err)
		}
		if err := netlink.AddrReplace(to, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", s, to.Attrs().Name, err)
		}
	}
	step("addresses-added")
	for _, s := range routes {
		r, err := s.route(to)
		if err != nil {
			return err
		}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via %s dev %s: %w", r.Dst, s.Gw, to.Attrs().Name, err)
		}
	}
	step("routes-moved")
	for _, s := range addrs {
		a, _ := netlink.ParseAddr(s) // parsed above
		if err := netlink.AddrDel(from, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("remove %s from %s: %w", s, from.Attrs().Name, err)
		}
	}
	// A route through from that the replacement did not displace (another key) goes too.
	left, err := linkRoutes(from)
	if err != nil {
		return err
	}
	for _, r := range left {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove route %s from %s: %w", r.Dst, from.Attrs().Name, err)
		}
	}
	return nil
}

// gatewaySetup is what setUpGateway found or made.
type gatewaySetup struct {
	state  uplinkState
	uplink netlink.Link
	bridge netlink.Link
}

// setUpGateway moves the uplink into GatewayBridge, or finishes a move a crash interrupted, or checks
// that a finished one is still in place. Each step is idempotent and keeps the host reachable:
//  1. the bridge is created with the uplink's MAC and MTU and, in the same transaction, the record of
//     what the uplink had (nothing has moved yet);
//  2. the uplink becomes a port of the bridge (whose flows are NORMAL until step 3: the host's traffic
//     still passes);
//  3. the bridge's flows are installed (by the caller's flow sync, run here through installFlows);
//  4. each address, then each route, is added on the bridge and then removed from the uplink;
//  5. with the userspace datapath, the uplink's sysctls make the kernel ignore what it receives.
func (a *Agent) setUpGateway(ctx context.Context, installFlows func(context.Context, uplinkState) error) (gatewaySetup, error) {
	logger := klog.FromContext(ctx)
	var gs gatewaySetup
	ids, exists := a.ovs.Bridge(GatewayBridge)
	if raw, ok := ids[extUplinkState]; exists && ok {
		if err := json.Unmarshal([]byte(raw), &gs.state); err != nil {
			return gs, fmt.Errorf("%s external_ids:%s is not valid (run dunlin-node --cleanup after checking it): %w", GatewayBridge, extUplinkState, err)
		}
		if a.cfg.GatewayInterface != "" && a.cfg.GatewayInterface != gs.state.Interface {
			return gs, fmt.Errorf("%s already holds uplink %s, not --gateway-interface %s: run dunlin-node --cleanup first", GatewayBridge, gs.state.Interface, a.cfg.GatewayInterface)
		}
		logger.Info("Gateway bridge already set up, checking it", "bridge", GatewayBridge, "uplink", gs.state.Interface)
	} else {
		name := a.cfg.GatewayInterface
		if name == "" {
			var err error
			if name, err = defaultRouteLink(); err != nil {
				return gs, err
			}
		}
		if name == GatewayBridge {
			return gs, fmt.Errorf("the default route goes through %s, which records no uplink: set --gateway-interface", GatewayBridge)
		}
		link, err := netlink.LinkByName(name)
		if err != nil {
			return gs, fmt.Errorf("gateway interface %s (--gateway-interface, else the default route's): %w", name, err)
		}
		if p, ok := a.ovs.Port(name); ok && p.Bridge != GatewayBridge {
			return gs, fmt.Errorf("gateway interface %s is already a port of OVS bridge %s: set --gateway-interface to the physical uplink", name, p.Bridge)
		}
		if gs.state, err = snapshotUplink(link); err != nil {
			return gs, err
		}
		if len(gs.state.Addresses) == 0 {
			return gs, fmt.Errorf("gateway interface %s has no address to share with OVN", name)
		}
		logger.Info("Moving the uplink into the gateway bridge", "uplink", name, "bridge", GatewayBridge,
			"addresses", gs.state.Addresses, "routes", len(gs.state.Routes), "mac", gs.state.MAC)
	}
	raw, _ := json.Marshal(gs.state) // strings and ints always encode
	err := a.ovs.EnsureBridge(ctx, ovs.BridgeSpec{Name: GatewayBridge, DatapathType: a.cfg.DatapathType,
		MAC: gs.state.MAC, MTU: gs.state.MTU, ExternalIDs: map[string]string{extUplinkState: string(raw)}})
	if err != nil {
		return gs, err
	}
	a.crashPoint("bridge")
	if gs.bridge, err = waitLink(ctx, GatewayBridge, linkTimeout); err != nil {
		return gs, err
	}
	if gs.uplink, err = netlink.LinkByName(gs.state.Interface); err != nil {
		return gs, fmt.Errorf("uplink %s: %w", gs.state.Interface, err)
	}
	if err := a.prepareBridgeLink(gs.bridge, gs.state); err != nil {
		return gs, err
	}
	if err := a.ovs.AddPort(ctx, ovs.PortSpec{Bridge: GatewayBridge, Name: gs.state.Interface}); err != nil {
		return gs, fmt.Errorf("add uplink %s to %s: %w", gs.state.Interface, GatewayBridge, err)
	}
	a.crashPoint("port")
	if err := installFlows(ctx, gs.state); err != nil {
		return gs, err
	}
	if err := moveAddressing(gs.uplink, gs.bridge, gs.state.Addresses, gs.state.Routes, a.crashPoint); err != nil {
		return gs, err
	}
	if a.cfg.DatapathType == "netdev" {
		for _, s := range uplinkSysctls(gs.state.Interface) {
			// Only what the record holds: it can be put back.
			if !slices.ContainsFunc(gs.state.Sysctls, func(r savedSysctl) bool { return r.Path == s.Path }) {
				continue
			}
			if err := writeSysctl(s.Path, s.Value); err != nil {
				return gs, err
			}
		}
		if v, _ := readSysctl("net/ipv4/conf/all/rp_filter"); v == "2" {
			logger.Info("WARNING: net.ipv4.conf.all.rp_filter=2 (loose) overrides the strict filter on the uplink: the kernel may answer NodePort traffic meant for OVN with resets",
				"uplink", gs.state.Interface)
		}
	}
	// Re-read: the links' addresses and flags changed.
	if gs.bridge, err = netlink.LinkByName(GatewayBridge); err != nil {
		return gs, fmt.Errorf("gateway bridge device: %w", err)
	}
	if err := a.ovs.SetBridgeMapping(ctx, annotations.PhysicalNetwork, GatewayBridge); err != nil {
		return gs, err
	}
	return gs, nil
}

// CleanupGateway gives the uplink back what the gateway bridge's record says it had (addresses, routes,
// MAC, MTU, sysctls), deletes the bridge and removes this bridge's ovn-bridge-mappings entry. It is
// idempotent: without the bridge there is nothing but the mapping entry to remove. The uplink gets its
// addresses before the bridge loses them, so the host keeps each address throughout.
func CleanupGateway(ctx context.Context, cli *ovs.Client) error {
	logger := klog.FromContext(ctx)
	ids, exists := cli.Bridge(GatewayBridge)
	raw, ok := ids[extUplinkState]
	if exists && !ok {
		return fmt.Errorf("%s has no %s record: it was not made by dunlin-node, leaving it and its bridge mapping alone", GatewayBridge, extUplinkState)
	}
	if exists {
		var st uplinkState
		if err := json.Unmarshal([]byte(raw), &st); err != nil {
			return fmt.Errorf("%s external_ids:%s is not valid; restore the uplink by hand: %w", GatewayBridge, extUplinkState, err)
		}
		uplink, err := netlink.LinkByName(st.Interface)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", st.Interface, err)
		}
		for _, s := range st.Sysctls {
			if err := writeSysctl(s.Path, s.Value); err != nil {
				return err
			}
		}
		if hw, err := net.ParseMAC(st.MAC); err == nil && uplink.Attrs().HardwareAddr.String() != hw.String() {
			if err := netlink.LinkSetHardwareAddr(uplink, hw); err != nil {
				return fmt.Errorf("restore MAC of %s: %w", st.Interface, err)
			}
		}
		if uplink.Attrs().MTU != st.MTU && st.MTU > 0 {
			if err := netlink.LinkSetMTU(uplink, st.MTU); err != nil {
				return fmt.Errorf("restore MTU of %s: %w", st.Interface, err)
			}
		}
		if bridge, err := netlink.LinkByName(GatewayBridge); err == nil {
			if err := moveAddressing(bridge, uplink, st.Addresses, st.Routes, func(string) {}); err != nil {
				return err
			}
		} else if !isNotFound(err) {
			return fmt.Errorf("gateway bridge device: %w", err)
		} else if err := moveAddressing(uplink, uplink, nil, nil, func(string) {}); err != nil { // only sets it up
			return err
		}
		logger.Info("Gave the uplink its addresses and routes back", "uplink", st.Interface, "addresses", st.Addresses, "routes", len(st.Routes))
	}
	// The mapping goes before the bridge, so ovn-controller removes its patch port from a live bridge.
	if err := cli.RemoveBridgeMapping(ctx, annotations.PhysicalNetwork, GatewayBridge); err != nil {
		return err
	}
	return cli.DeleteBridge(ctx, GatewayBridge)
}

// gatewayInfo reads the annotation's content off the bridge device: its addresses (global scope, the
// first of each family) and the gateways of its default routes.
func gatewayInfo(bridge netlink.Link, uplink, chassisID string) (annotations.NodeGatewayInfo, error) {
	info := annotations.NodeGatewayInfo{Format: annotations.NodeGatewayFormat, ChassisID: chassisID, Bridge: GatewayBridge,
		Interface: uplink, MACAddress: bridge.Attrs().HardwareAddr.String()}
	addrs, err := netlink.AddrList(bridge, netlink.FAMILY_ALL)
	if err != nil {
		return info, fmt.Errorf("list addresses of %s: %w", GatewayBridge, err)
	}
	seen := map[bool]bool{}
	for _, ad := range addrs {
		p, ok := ipNetToPrefix(ad.IPNet)
		if !ok || ad.Scope != int(netlink.SCOPE_UNIVERSE) || p.Addr().IsLinkLocalUnicast() || seen[p.Addr().Is4()] {
			continue
		}
		seen[p.Addr().Is4()] = true
		info.IPAddresses = append(info.IPAddresses, p.String())
	}
	routes, err := linkRoutes(bridge)
	if err != nil {
		return info, err
	}
	seen = map[bool]bool{}
	for _, r := range routes {
		if (r.Dst != nil && !isDefault(r.Dst)) || r.Gw == nil || r.Table != unix.RT_TABLE_MAIN {
			continue
		}
		gw, ok := netip.AddrFromSlice(r.Gw)
		if !ok || seen[gw.Unmap().Is4()] {
			continue
		}
		seen[gw.Unmap().Is4()] = true
		info.NextHops = append(info.NextHops, gw.Unmap().String())
	}
	return info, nil
}

// Cleanup is dunlin-node --cleanup: it undoes the node gateway (CleanupGateway) and, with a client,
// removes the node's gateway annotation. Running it again, or on a node without a gateway, is harmless.
func Cleanup(ctx context.Context, cfg Config, client kubernetes.Interface) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return err
	}
	cli, err := ovs.ConnectTLS(cctx, cfg.OVSDB, tlsCfg)
	if err != nil {
		return fmt.Errorf("connect to OVS at %s: %w", cfg.OVSDB, err)
	}
	defer cli.Close()
	if err := CleanupGateway(ctx, cli); err != nil {
		return err
	}
	if client != nil && cfg.NodeName != "" {
		if err := RemoveGatewayAnnotation(ctx, client, cfg.NodeName); err != nil {
			klog.FromContext(ctx).Error(err, "Cannot remove the node's gateway annotation", "node", cfg.NodeName)
		}
	}
	klog.FromContext(ctx).Info("Node gateway removed", "bridge", GatewayBridge)
	return nil
}

// crashPoint exits the process at once when step is cfg.GatewayCrashAfter (tests of crash recovery).
func (a *Agent) crashPoint(step string) {
	if a.cfg.GatewayCrashAfter == step {
		klog.InfoS("Exiting as asked, as if crashed", "after", step)
		klog.Flush()
		os.Exit(3)
	}
}

// prepareBridgeLink gives the bridge device the uplink's MAC and MTU (OVS sets them from hwaddr and
// mtu_request too, maybe not yet) and, on the userspace datapath, turns TX checksum offload off: OVS
// does not complete checksums the kernel leaves to the device, and the host's TCP through the bridge
// would stall (ping works).
func (a *Agent) prepareBridgeLink(bridge netlink.Link, st uplinkState) error {
	if hw, err := net.ParseMAC(st.MAC); err == nil && bridge.Attrs().HardwareAddr.String() != hw.String() {
		if err := netlink.LinkSetHardwareAddr(bridge, hw); err != nil {
			return fmt.Errorf("set MAC of %s: %w", GatewayBridge, err)
		}
	}
	if a.cfg.DatapathType == "netdev" {
		if err := disableTxChecksum(GatewayBridge); err != nil {
			return err
		}
	}
	if st.MTU > 0 && bridge.Attrs().MTU != st.MTU {
		if err := netlink.LinkSetMTU(bridge, st.MTU); err != nil {
			return fmt.Errorf("set MTU of %s: %w", GatewayBridge, err)
		}
	}
	return nil
}
