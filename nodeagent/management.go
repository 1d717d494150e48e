package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/nodeagent/ovs"
)

// ManagementIfName is the host device of the node's management port. The logical port is named after
// the node (k8s-<node>), which may be longer than an interface name can be.
const ManagementIfName = "dunlin-mp0"

// runManagementPort keeps the management port in place: an OVS internal port bound to the node's
// k8s-<node> logical switch port, holding the node subnet's second address, with a route to the cluster
// CIDR through the node switch's gateway. It is how the host (kubelet probes, host-network pods) reaches
// pods on this node and the others. It retries until it works and re-checks now and then, so a port or
// address removed by hand comes back.
func (a *Agent) runManagementPort(ctx context.Context) {
	logger := klog.FromContext(ctx)
	delay, healthy := time.Second, false
	for {
		err := a.ensureManagementPort(ctx)
		switch {
		case err == nil && !healthy:
			healthy, delay = true, time.Minute
			logger.Info("Management port ready", "device", ManagementIfName)
		case err != nil && ctx.Err() == nil:
			healthy = false
			logger.Error(err, "Management port not ready, retrying", "retryIn", delay)
			delay = min(2*delay, 30*time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func (a *Agent) ensureManagementPort(ctx context.Context) error {
	node, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read node %s: %w", a.cfg.NodeName, err)
	}
	subnets, source, err := annotations.DeclaredNodeSubnets(node)
	if err != nil {
		return fmt.Errorf("node %s subnet from %s: %w", a.cfg.NodeName, source, err)
	}
	subnet := annotations.IPv4Subnet(subnets)
	if !subnet.IsValid() {
		return fmt.Errorf("node %s has no pod subnet yet (dunlin-controller allocates it)", a.cfg.NodeName)
	}
	mgmt, gw := conventions.ManagementIP(subnet), conventions.GatewayIP(subnet)
	mac := conventions.MACFromIP(mgmt)
	err = a.ovs.AddPort(ctx, ovs.PortSpec{
		Bridge: a.cfg.Bridge, Name: ManagementIfName, Type: "internal", MAC: mac,
		ExternalIDs: map[string]string{ExtIfaceID: conventions.ManagementPortName(a.cfg.NodeName)},
	})
	if err != nil {
		return fmt.Errorf("add management port to %s: %w", a.cfg.Bridge, err)
	}
	link, err := waitLink(ctx, ManagementIfName, 10*time.Second)
	if err != nil {
		return err
	}
	hw, _ := net.ParseMAC(mac)
	if link.Attrs().HardwareAddr.String() != hw.String() {
		if err := netlink.LinkSetHardwareAddr(link, hw); err != nil {
			return fmt.Errorf("set MAC of %s: %w", ManagementIfName, err)
		}
	}
	if link.Attrs().MTU != a.cfg.MTU {
		if err := netlink.LinkSetMTU(link, a.cfg.MTU); err != nil {
			return fmt.Errorf("set MTU of %s: %w", ManagementIfName, err)
		}
	}
	if a.cfg.DatapathType == "netdev" {
		if err := disableTxChecksum(ManagementIfName); err != nil {
			return err
		}
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(mgmt, subnet.Bits()))}); err != nil {
		return fmt.Errorf("add %s to %s: %w", mgmt, ManagementIfName, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set %s up: %w", ManagementIfName, err)
	}
	for _, dst := range []netip.Prefix{a.cfg.ClusterCIDR, a.cfg.ServiceCIDR} {
		if !dst.IsValid() {
			continue
		}
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixToIPNet(dst), Gw: net.IP(gw.AsSlice())}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s via %s dev %s: %w", dst, gw, ManagementIfName, err)
		}
	}
	return nil
}

// waitLink waits for OVS to create an internal port's device.
func waitLink(ctx context.Context, name string, timeout time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(timeout)
	for {
		link, err := netlink.LinkByName(name)
		if err == nil {
			return link, nil
		}
		if !isNotFound(err) {
			return nil, fmt.Errorf("find %s: %w", name, err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("OVS did not create device %s within %s: %w", name, timeout, errors.Join(err, ctx.Err()))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
