package annotations

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodNetworkRoundTrip(t *testing.T) {
	good := NewPodNetworkInfo([]netip.Prefix{netip.MustParsePrefix("10.244.1.5/24")},
		[]netip.Addr{netip.MustParseAddr("10.244.1.1")}, "0a:58:0a:f4:01:05")
	good.MTU = 1400
	s := good.Marshal()
	// Format 1 readers (older dunlin-node) find their fields.
	for _, want := range []string{`"ip_address":"10.244.1.5/24"`, `"gateway_ip":"10.244.1.1"`, `"ip_addresses":["10.244.1.5/24"]`, `"gateway_ips":["10.244.1.1"]`} {
		if !strings.Contains(s, want) {
			t.Errorf("%s lacks %s", s, want)
		}
	}
	got, err := ParsePodNetwork(s)
	if err != nil || got.Addresses()[0].String() != "10.244.1.5/24" || got.MTU != 1400 || got.Gateways()[0].String() != "10.244.1.1" {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
}

func TestPodNetworkReadsFormat1(t *testing.T) {
	got, err := ParsePodNetwork(`{"ip_address":"10.244.1.5/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1"}`)
	if err != nil {
		t.Fatal(err)
	}
	if v4, ok := got.IPv4(); !ok || v4.String() != "10.244.1.5/24" || len(got.Gateways()) != 1 {
		t.Fatalf("format 1: %+v", got)
	}
}

func TestPodNetworkDualStack(t *testing.T) {
	got, err := ParsePodNetwork(`{"ip_addresses":["fd00:10:244:1::5/64","10.244.1.5/24"],"mac_address":"0a:58:0a:f4:01:05","gateway_ips":["fd00:10:244:1::1","10.244.1.1"]}`)
	if err != nil {
		t.Fatal(err)
	}
	if v4, _ := got.IPv4(); v4.String() != "10.244.1.5/24" || len(got.Addresses()) != 2 {
		t.Fatalf("dual stack: %+v", got)
	}
}

func TestParsePodNetworkRejects(t *testing.T) {
	for name, bad := range map[string]string{
		"not json":        `{"ip_address":`,
		"no address":      `{"mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1"}`,
		"bad ip":          `{"ip_address":"10.244.1.500/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1"}`,
		"no prefix":       `{"ip_address":"10.244.1.5","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1"}`,
		"bad mac":         `{"ip_address":"10.244.1.5/24","mac_address":"zz","gateway_ip":"10.244.1.1"}`,
		"gateway outside": `{"ip_address":"10.244.1.5/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.2.1"}`,
		"bad route":       `{"ip_address":"10.244.1.5/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1","routes":[{"dest":"x","nextHop":"10.244.1.1"}]}`,
		"bad mtu":         `{"ip_address":"10.244.1.5/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1","mtu":-1}`,
		"two v4":          `{"ip_addresses":["10.244.1.5/24","10.244.1.6/24"],"mac_address":"0a:58:0a:f4:01:05","gateway_ips":["10.244.1.1"]}`,
		"forms disagree":  `{"ip_addresses":["10.244.1.5/24"],"ip_address":"10.244.1.6/24","mac_address":"0a:58:0a:f4:01:05","gateway_ips":["10.244.1.1"]}`,
	} {
		if _, err := ParsePodNetwork(bad); err == nil {
			t.Errorf("%s: ParsePodNetwork(%s) succeeded", name, bad)
		}
	}
}

func TestParseNodeSubnets(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.3.0/24":                        "10.244.3.0/24",
		"10.244.3.0/24,fd00:10:244:3::/64":     "10.244.3.0/24,fd00:10:244:3::/64",
		" 10.244.3.0/24 , fd00:10:244:3::/64 ": "10.244.3.0/24,fd00:10:244:3::/64",
	} {
		p, err := ParseNodeSubnets(in)
		if err != nil || FormatNodeSubnets(p) != want {
			t.Errorf("ParseNodeSubnets(%q) = %v, %v", in, p, err)
		}
	}
	for _, bad := range []string{"", "10.244.3.0", "10.244.3.1/24", "banana", "10.244.3.0/24,10.244.4.0/24", "10.244.3.0/24,"} {
		if _, err := ParseNodeSubnets(bad); err == nil {
			t.Errorf("ParseNodeSubnets(%q) succeeded", bad)
		}
	}
}

func TestDeclaredNodeSubnets(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{NodeSubnet: "10.244.3.0/24"}}}
	if p, src, err := DeclaredNodeSubnets(n); err != nil || IPv4Subnet(p).String() != "10.244.3.0/24" || !strings.Contains(src, "annotation") {
		t.Fatalf("annotation: %v %s %v", p, src, err)
	}
	n.Spec.PodCIDRs = []string{"fd00::/64", "10.244.9.0/24"}
	if p, src, err := DeclaredNodeSubnets(n); err != nil || IPv4Subnet(p).String() != "10.244.9.0/24" || len(p) != 2 || src != "spec.podCIDRs" {
		t.Fatalf("podCIDRs: %v %s %v", p, src, err)
	}
	n.Spec.PodCIDRs = []string{"fd00::/64"}
	if p, _, _ := DeclaredNodeSubnets(n); IPv4Subnet(p).IsValid() {
		t.Fatalf("IPv6-only podCIDRs gave an IPv4 subnet %v", p)
	}
}

func TestNodeGateway(t *testing.T) {
	good := NodeGatewayInfo{Format: 1, Bridge: "br-ex", Interface: "eth0", MACAddress: "02:00:00:00:00:01",
		IPAddresses: []string{"172.30.0.10/24"}, NextHops: []string{"172.30.0.1"}}
	g, err := ParseNodeGateway(good.Marshal())
	if err != nil {
		t.Fatalf("ParseNodeGateway: %v", err)
	}
	if nh, ok := g.NextHopFor(g.Addresses()[0].Addr()); !ok || nh.String() != "172.30.0.1" {
		t.Errorf("NextHopFor = %v %v", nh, ok)
	}
	if _, err := ParseNodeGateway(`{"format":1,"bridge":"br-ex","mac_address":"02:00:00:00:00:01","ip_addresses":["172.30.0.10/24"],"future":true}`); err != nil {
		t.Errorf("unknown fields must be ignored: %v", err)
	}
	for _, bad := range []string{
		`nope`,
		`{"format":2,"bridge":"br-ex","mac_address":"02:00:00:00:00:01","ip_addresses":["172.30.0.10/24"]}`,
		`{"format":1,"mac_address":"02:00:00:00:00:01","ip_addresses":["172.30.0.10/24"]}`,
		`{"format":1,"bridge":"br-ex","mac_address":"zz","ip_addresses":["172.30.0.10/24"]}`,
		`{"format":1,"bridge":"br-ex","mac_address":"02:00:00:00:00:01"}`,
		`{"format":1,"bridge":"br-ex","mac_address":"02:00:00:00:00:01","ip_addresses":["172.30.0.10"]}`,
		`{"format":1,"bridge":"br-ex","mac_address":"02:00:00:00:00:01","ip_addresses":["172.30.0.10/24"],"next_hops":["10.0.0.1"]}`,
		`{"format":1,"bridge":"br-ex","mac_address":"02:00:00:00:00:01","ip_addresses":["172.30.0.10/24"],"next_hops":["172.30.0.10"]}`,
	} {
		if _, err := ParseNodeGateway(bad); err == nil {
			t.Errorf("ParseNodeGateway(%s) accepted", bad)
		}
	}
}

// The gateway feature: announced only by agents running the gateway; the form without it (older
// agents, --gateway=false) means no gateway is expected; --cleanup takes it out and keeps the rest.
func TestGatewayFeature(t *testing.T) {
	node := func(features string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{NodeFeatures: features}}}
	}
	if !HasFeature(node(AgentFeatures(true)), FeatureGateway) || !HasFeature(node(AgentFeatures(true)), FeatureIfaceIDVer) {
		t.Errorf("AgentFeatures(true) = %q", AgentFeatures(true))
	}
	for _, old := range []string{AgentFeatures(false), "iface-id-ver", ""} {
		if HasFeature(node(old), FeatureGateway) {
			t.Errorf("%q announces the gateway", old)
		}
	}
	if got := WithoutFeature("iface-id-ver, gateway,future", FeatureGateway); got != "iface-id-ver,future" {
		t.Errorf("WithoutFeature = %q", got)
	}
}
