package nodeagent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestGatewayFlowsWithoutPatchPort(t *testing.T) {
	got := gatewayFlows(gatewayFlowParams{Uplink: 1, NodeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}, EncapPort: 6081,
		Targets: []flowTarget{{Proto: corev1.ProtocolTCP, Addr: netip.MustParseAddr("192.0.2.10"), Port: 30080}}})
	want := []string{
		"cookie=0x646c6777,table=0,priority=0,actions=NORMAL",
		"cookie=0x646c6777,table=0,priority=10,in_port=1,actions=output:LOCAL",
		"cookie=0x646c6777,table=0,priority=100,in_port=LOCAL,actions=output:1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("flows without a patch port:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestGatewayFlows(t *testing.T) {
	p := gatewayFlowParams{Uplink: 1, Patch: 2, EncapPort: 6081,
		NodeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")},
		Targets: []flowTarget{
			{Proto: corev1.ProtocolUDP, Addr: netip.MustParseAddr("192.0.2.10"), Port: 30053},
			{Proto: corev1.ProtocolSCTP, Addr: netip.MustParseAddr("2001:db8::10"), Port: 30132},
			{Proto: corev1.ProtocolTCP, Addr: netip.MustParseAddr("198.51.100.7"), Port: 443},
		}}
	got := gatewayFlows(p)
	for _, want := range []string{
		"priority=500,in_port=2,ip,actions=ct(commit,zone=64000,exec(load:0x1->NXM_NX_CT_MARK[])),output:1",
		"priority=450,in_port=2,actions=output:1",
		"priority=300,in_port=1,udp,nw_dst=192.0.2.10,tp_dst=30053,actions=output:2",
		"priority=300,in_port=1,sctp6,ipv6_dst=2001:db8::10,tp_dst=30132,actions=output:2",
		"priority=300,in_port=1,tcp,nw_dst=198.51.100.7,tp_dst=443,actions=output:2",
		"priority=200,in_port=1,arp,actions=output:2,output:LOCAL",
		"priority=200,in_port=1,icmp6,icmp_type=136,actions=output:2,output:LOCAL",
		"priority=150,in_port=1,udp,nw_dst=192.0.2.10,tp_dst=6081,actions=output:LOCAL",
		"priority=150,in_port=1,udp6,ipv6_dst=2001:db8::10,tp_dst=6081,actions=output:LOCAL",
		"priority=100,in_port=1,ip,actions=ct(zone=64000,table=1)",
		"table=1,priority=100,ct_state=+trk+est,ct_mark=0x1,actions=output:2",
		"table=1,priority=0,actions=output:LOCAL",
	} {
		if !slices.ContainsFunc(got, func(f string) bool { return strings.HasSuffix(f, want) }) {
			t.Errorf("no flow ending in %q in\n%s", want, strings.Join(got, "\n"))
		}
	}
	if !slices.IsSorted(got) || !slices.Equal(got, gatewayFlows(p)) {
		t.Error("flows are not sorted and deterministic")
	}
}

func TestServiceTargets(t *testing.T) {
	node := []netip.Addr{netip.MustParseAddr("192.0.2.10")}
	svc := func(typ corev1.ServiceType, ports []corev1.ServicePort, external ...string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "s"},
			Spec: corev1.ServiceSpec{Type: typ, Ports: ports, ExternalIPs: external}}
	}
	ports := []corev1.ServicePort{{Port: 80, NodePort: 30080}, {Protocol: corev1.ProtocolUDP, Port: 53, NodePort: 30053}}
	lb := svc(corev1.ServiceTypeLoadBalancer, ports)
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.5"}, {Hostname: "lb.example"}}
	for _, tc := range []struct {
		name string
		svc  *corev1.Service
		want []flowTarget
	}{
		{"NodePort", svc(corev1.ServiceTypeNodePort, ports), []flowTarget{
			{corev1.ProtocolTCP, node[0], 30080}, {corev1.ProtocolUDP, node[0], 30053}}},
		{"ClusterIP with a stale nodePort and an externalIP", svc(corev1.ServiceTypeClusterIP, ports[:1], "198.51.100.7", "bogus"), []flowTarget{
			{corev1.ProtocolTCP, netip.MustParseAddr("198.51.100.7"), 80}}},
		{"LoadBalancer", lb, []flowTarget{
			{corev1.ProtocolTCP, node[0], 30080}, {corev1.ProtocolTCP, netip.MustParseAddr("203.0.113.5"), 80},
			{corev1.ProtocolUDP, node[0], 30053}, {corev1.ProtocolUDP, netip.MustParseAddr("203.0.113.5"), 53}}},
	} {
		if got := serviceTargets(tc.svc, node); !slices.Equal(got, tc.want) {
			t.Errorf("%s: targets %v, want %v", tc.name, got, tc.want)
		}
	}
}
