package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
)

// hostIfPattern matches the host-side veth names HostIfName makes, so GC can find ours among the
// node's links without touching anyone else's.
var hostIfPattern = regexp.MustCompile(`^dl[0-9a-f]{13}$`)

// HostIfName is the host end of a container interface's veth: "dl" and 13 hex digits of a hash of the
// container id and interface name. It fits IFNAMSIZ (15), is the same on every retry of the same
// request, and differs for two interfaces of one container.
func HostIfName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return "dl" + hex.EncodeToString(sum[:])[:13]
}

// attachment is what ADD builds for one container interface.
type attachment struct {
	ContainerID string
	Netns       string
	IfName      string
	HostIf      string
	MAC         net.HardwareAddr
	Addr        netip.Prefix
	Gateway     netip.Addr
	Routes      []route
	MTU         int
	// TxChecksumOff is needed with the userspace (netdev) datapath: it does not fill in checksums the
	// kernel left to offload, so TCP from the pod would be dropped while ping works.
	TxChecksumOff bool
}

type route struct {
	Dst     netip.Prefix
	NextHop netip.Addr
}

// plumb creates the veth, configures the container end inside the netns and brings the host end up.
// A leftover veth of the same attachment (an earlier ADD) is replaced, so a repeated ADD converges.
func plumb(a attachment) (hostMAC net.HardwareAddr, err error) {
	netns, err := ns.GetNS(a.Netns)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", a.Netns, err)
	}
	defer netns.Close()

	if old, err := netlink.LinkByName(a.HostIf); err == nil {
		if err := netlink.LinkDel(old); err != nil {
			return nil, fmt.Errorf("remove leftover veth %s: %w", a.HostIf, err)
		}
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: a.HostIf, MTU: a.MTU},
		PeerName:         a.IfName,
		PeerHardwareAddr: a.MAC,
		PeerNamespace:    netlink.NsFd(int(netns.Fd())),
		PeerMTU:          uint32(a.MTU),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s with peer %s in %s: %w", a.HostIf, a.IfName, a.Netns, err)
	}
	defer func() {
		if err != nil {
			_ = netlink.LinkDel(veth) // takes the peer with it
		}
	}()
	host, err := netlink.LinkByName(a.HostIf)
	if err != nil {
		return nil, fmt.Errorf("find veth %s: %w", a.HostIf, err)
	}
	if err := quietHostEnd(a.HostIf); err != nil {
		return nil, err
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("set %s up: %w", a.HostIf, err)
	}
	if err := netns.Do(func(ns.NetNS) error { return configureContainerIf(a) }); err != nil {
		return nil, err
	}
	return host.Attrs().HardwareAddr, nil
}

// quietHostEnd keeps the host's own IP stack from talking to the pod through the host end of its
// veth, which has no address of its own. Without it the host answers the pod's ARP for the
// management address with the veth's MAC, and the pod's replies then reach the host directly,
// bypassing OVN: load-balanced replies arrive before OVN un-NATs them and the host resets the
// connection. (With the userspace datapath OVS reads the host end through a packet socket, which
// leaves frames to the host stack too.)
func quietHostEnd(ifName string) error {
	if _, err := sysctl.Sysctl("net/ipv4/conf/"+ifName+"/arp_ignore", "8"); err != nil {
		return fmt.Errorf("stop ARP replies on %s: %w", ifName, err)
	}
	// No IPv6 link-local address, so no neighbour discovery from the host into the pod either.
	if _, err := sysctl.Sysctl("net/ipv6/conf/"+ifName+"/disable_ipv6", "1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("disable IPv6 on %s: %w", ifName, err)
	}
	return nil
}

// configureContainerIf runs inside the container netns.
func configureContainerIf(a attachment) error {
	link, err := netlink.LinkByName(a.IfName)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", a.IfName, a.Netns, err)
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(a.Addr)}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("add address %s to %s: %w", a.Addr, a.IfName, err)
	}
	if a.TxChecksumOff {
		if err := disableTxChecksum(a.IfName); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", a.IfName, err)
	}
	gw := net.IP(a.Gateway.AsSlice())
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: nil, Gw: gw}); err != nil {
		return fmt.Errorf("add default route via %s: %w", a.Gateway, err)
	}
	for _, r := range a.Routes {
		nr := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixToIPNet(r.Dst)}
		if r.NextHop.IsValid() {
			nr.Gw = net.IP(r.NextHop.AsSlice())
		}
		if err := netlink.RouteReplace(nr); err != nil {
			return fmt.Errorf("add route %s via %s: %w", r.Dst, r.NextHop, err)
		}
	}
	return nil
}

// disableTxChecksum is `ethtool -K <if> tx off`. The ethtool socket must be opened inside the netns.
func disableTxChecksum(ifName string) error {
	et, err := ethtool.NewEthtool()
	if err != nil {
		return fmt.Errorf("ethtool: %w", err)
	}
	defer et.Close()
	names, err := et.FeatureNames(ifName)
	if err != nil {
		return fmt.Errorf("ethtool features of %s: %w", ifName, err)
	}
	off := map[string]bool{}
	for _, f := range []string{"tx-checksum-ip-generic", "tx-checksum-ipv4", "tx-checksum-ipv6", "tx-checksum-sctp"} {
		if _, ok := names[f]; ok {
			off[f] = false
		}
	}
	if err := et.Change(ifName, off); err != nil {
		return fmt.Errorf("turn TX checksum offload off on %s: %w", ifName, err)
	}
	return nil
}

// unplumb removes what plumb made. Everything missing (netns, veth) counts as removed.
func unplumb(hostIf, netnsPath, ifName string) error {
	if link, err := netlink.LinkByName(hostIf); err == nil {
		if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete veth %s: %w", hostIf, err)
		}
		return nil // the peer went with it
	} else if !isNotFound(err) {
		return fmt.Errorf("find veth %s: %w", hostIf, err)
	}
	if netnsPath == "" || ifName == "" {
		return nil
	}
	netns, err := ns.GetNS(netnsPath)
	if err != nil {
		return nil // the netns is gone, and our interface with it
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			return nil
		}
		if _, ok := link.(*netlink.Veth); !ok {
			return nil // not ours
		}
		if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s in %s: %w", ifName, netnsPath, err)
		}
		return nil
	})
}

// checkPlumbing verifies the container end: present, up, MAC, address and default route as ADD set them.
func checkPlumbing(a attachment) error {
	host, err := netlink.LinkByName(a.HostIf)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", a.HostIf, err)
	}
	if host.Attrs().OperState == netlink.OperDown {
		return fmt.Errorf("host veth %s is down", a.HostIf)
	}
	netns, err := ns.GetNS(a.Netns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", a.Netns, err)
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName(a.IfName)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", a.IfName, a.Netns, err)
		}
		if got := link.Attrs().HardwareAddr.String(); got != a.MAC.String() {
			return fmt.Errorf("%s has MAC %s, want %s", a.IfName, got, a.MAC)
		}
		if link.Attrs().MTU != a.MTU {
			return fmt.Errorf("%s has MTU %d, want %d", a.IfName, link.Attrs().MTU, a.MTU)
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("addresses of %s: %w", a.IfName, err)
		}
		found := false
		for _, ad := range addrs {
			if p, ok := ipNetToPrefix(ad.IPNet); ok && p == a.Addr {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("%s lacks address %s", a.IfName, a.Addr)
		}
		routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return fmt.Errorf("routes of %s: %w", a.IfName, err)
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && r.Gw.Equal(net.IP(a.Gateway.AsSlice())) {
				return nil
			}
		}
		return fmt.Errorf("%s has no default route via %s", a.IfName, a.Gateway)
	})
}

// ourHostLinks lists the node's veths that Dunlin made (by name pattern).
func ourHostLinks() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []string
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok && hostIfPattern.MatchString(l.Attrs().Name) {
			out = append(out, l.Attrs().Name)
		}
	}
	return out, nil
}

func deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

func prefixToIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipNetToPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
