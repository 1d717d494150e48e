package conventions

import (
	"net/netip"
	"testing"
)

func TestConventions(t *testing.T) {
	for addr, want := range map[string]string{
		"10.244.1.5":         "0a:58:0a:f4:01:05",
		"fd00:10:244:1::a0b": "0a:58:00:00:0a:0b",
		"::ffff:10.244.1.5":  "0a:58:0a:f4:01:05",
		"fd00::ff01:203:405": "0a:58:02:03:04:05",
	} {
		if got := MACFromIP(netip.MustParseAddr(addr)); got != want {
			t.Errorf("MACFromIP(%s) = %s, want %s", addr, got, want)
		}
	}
	subnet := netip.MustParsePrefix("10.244.3.0/24")
	if g, m := GatewayIP(subnet), ManagementIP(subnet); g.String() != "10.244.3.1" || m.String() != "10.244.3.2" {
		t.Fatalf("gateway %s management %s", g, m)
	}
	if got := PodPortName("kube-system", "coredns-1"); got != "kube-system_coredns-1" {
		t.Fatalf("PodPortName = %s", got)
	}
	if got := ManagementPortName("n1"); got != "k8s-n1" {
		t.Fatalf("ManagementPortName = %s", got)
	}
}
