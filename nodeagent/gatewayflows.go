package nodeagent

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// GatewayFlowCookie marks every flow dunlin-node installs on the gateway bridge.
const GatewayFlowCookie = "0x646c6777" // "dlgw"

// GatewayCTZone is the conntrack zone in which the gateway bridge commits the connections OVN opens
// through the uplink (SNATed pod egress, NodePort replies), to tell their replies from the host's own
// traffic. The userspace datapath shares conntrack zones with br-int, where ovn-controller allocates
// zones from 1 upwards, so a zone near the top is free.
const GatewayCTZone = 64000

// flowTarget is traffic the uplink delivers to OVN: to dst (an address of the node or a Service
// external address), protocol and port.
type flowTarget struct {
	Proto corev1.Protocol
	Addr  netip.Addr
	Port  int32
}

// gatewayFlowParams is what the bridge flows depend on.
type gatewayFlowParams struct {
	Uplink int // OpenFlow port of the uplink
	Patch  int // OpenFlow port of the patch port to br-int; 0 while ovn-controller has not created it
	// NodeAddrs are the node's addresses (on the bridge); tunnel traffic to them stays with the host.
	NodeAddrs []netip.Addr
	// EncapPort is the UDP port of the tunnels (6081 Geneve, 4789 VXLAN).
	EncapPort int
	Targets   []flowTarget
}

// gatewayFlows returns the flows of the gateway bridge, in ovs-ofctl syntax, sorted. Table 0 classifies
// by input port; table 1 sends the replies of OVN's connections to OVN and the rest to the host.
//
// The host and the gateway router share the uplink's MAC, so the bridge cannot learn where that MAC
// lives: traffic to the host goes to LOCAL explicitly, never through NORMAL's MAC learning.
func gatewayFlows(p gatewayFlowParams) []string {
	var flows []string
	add := func(table, prio int, match, actions string) {
		flows = append(flows, fmt.Sprintf("cookie=%s,table=%d,priority=%d,%s,actions=%s", GatewayFlowCookie, table, prio, match, actions))
	}
	up := fmt.Sprintf("in_port=%d", p.Uplink)
	// The host's own traffic leaves through the uplink.
	add(0, 100, "in_port=LOCAL", fmt.Sprintf("output:%d", p.Uplink))
	// Anything else from the uplink (non-IP, broadcast) is the host's.
	add(0, 10, up, "output:LOCAL")
	add(0, 0, "", "NORMAL")
	if p.Patch == 0 {
		// No gateway router on this node yet: the uplink is the host's alone.
		return sortFlows(flows)
	}
	patch := fmt.Sprintf("in_port=%d", p.Patch)
	commit := fmt.Sprintf("ct(commit,zone=%d,exec(load:0x1->NXM_NX_CT_MARK[])),output:%d", GatewayCTZone, p.Uplink)
	// OVN's traffic leaves through the uplink; IP connections are committed so replies find their way back.
	add(0, 500, patch+",ip", commit)
	add(0, 500, patch+",ipv6", commit)
	add(0, 450, patch, fmt.Sprintf("output:%d", p.Uplink))
	// Address resolution from the uplink concerns both sharers of the MAC.
	both := fmt.Sprintf("output:%d,output:LOCAL", p.Patch)
	add(0, 200, up+",arp", both)
	add(0, 200, up+",icmp6,icmp_type=135", both)
	add(0, 200, up+",icmp6,icmp_type=136", both)
	// NodePorts, externalIPs and load balancer IPs belong to OVN.
	for _, t := range p.Targets {
		proto := strings.ToLower(string(t.Proto))
		dst := "nw_dst"
		if t.Addr.Is6() {
			proto += "6"
			dst = "ipv6_dst"
		}
		add(0, 300, fmt.Sprintf("%s,%s,%s=%s,tp_dst=%d", up, proto, dst, t.Addr, t.Port), fmt.Sprintf("output:%d", p.Patch))
	}
	// Tunnel traffic to the node is the host's (its bridge terminates the tunnels): no conntrack.
	for _, a := range p.NodeAddrs {
		if a.Is4() {
			add(0, 150, fmt.Sprintf("%s,udp,nw_dst=%s,tp_dst=%d", up, a, p.EncapPort), "output:LOCAL")
		} else {
			add(0, 150, fmt.Sprintf("%s,udp6,ipv6_dst=%s,tp_dst=%d", up, a, p.EncapPort), "output:LOCAL")
		}
	}
	// Other IP from the uplink: replies to OVN's connections go to OVN, the rest to the host.
	add(0, 100, up+",ip", fmt.Sprintf("ct(zone=%d,table=1)", GatewayCTZone))
	add(0, 100, up+",ipv6", fmt.Sprintf("ct(zone=%d,table=1)", GatewayCTZone))
	add(1, 100, "ct_state=+trk+est,ct_mark=0x1", fmt.Sprintf("output:%d", p.Patch))
	add(1, 100, "ct_state=+trk+rel,ct_mark=0x1", fmt.Sprintf("output:%d", p.Patch))
	add(1, 0, "", "output:LOCAL")
	return sortFlows(flows)
}

func sortFlows(flows []string) []string {
	for i, f := range flows {
		flows[i] = strings.Replace(f, ",,", ",", 1) // an empty match
	}
	slices.Sort(flows)
	return slices.Compact(flows) // two Services may ask for the same port (one is refused by the API, or stale)
}

// replaceFlows makes the bridge's flows exactly flows in one OpenFlow bundle (atomically, so no packet
// sees a half-updated table); ovs-ofctl sends only the differences, so unchanged flows keep their
// counters. ovs-ofctl reaches ovs-vswitchd through the bridge's management socket in rundir.
func replaceFlows(ctx context.Context, rundir, bridge string, flows []string) error {
	target := "unix:" + filepath.Join(rundir, bridge+".mgmt")
	cmd := exec.CommandContext(ctx, "ovs-ofctl", "--bundle", "replace-flows", target, "-")
	cmd.Stdin = strings.NewReader(strings.Join(flows, "\n") + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ovs-ofctl replace-flows %s: %w: %s", target, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// serviceTargets returns what the uplink must deliver to OVN for svc: its node ports on every node
// address, its externalIPs and its load balancer ingress IPs on its ports.
func serviceTargets(svc *corev1.Service, nodeAddrs []netip.Addr) []flowTarget {
	var out []flowTarget
	var external []netip.Addr
	for _, s := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(s); err == nil {
			external = append(external, a.Unmap())
		}
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if a, err := netip.ParseAddr(ing.IP); err == nil {
			external = append(external, a.Unmap())
		}
	}
	for _, sp := range svc.Spec.Ports {
		proto := sp.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		if sp.NodePort != 0 && (svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer) {
			for _, a := range nodeAddrs {
				out = append(out, flowTarget{Proto: proto, Addr: a, Port: sp.NodePort})
			}
		}
		for _, a := range external {
			out = append(out, flowTarget{Proto: proto, Addr: a, Port: sp.Port})
		}
	}
	return out
}
