package annotations

import "testing"

func TestParsePodNetwork(t *testing.T) {
	good := PodNetworkInfo{IPAddress: "10.244.1.5/24", MACAddress: "0a:58:0a:f4:01:05", GatewayIP: "10.244.1.1", MTU: 1400}
	got, err := ParsePodNetwork(good.Marshal())
	if err != nil || got.Prefix().String() != "10.244.1.5/24" || got.MTU != 1400 {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for name, bad := range map[string]string{
		"not json":        `{"ip_address":`,
		"bad ip":          `{"ip_address":"10.244.1.500/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1"}`,
		"no prefix":       `{"ip_address":"10.244.1.5","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1"}`,
		"bad mac":         `{"ip_address":"10.244.1.5/24","mac_address":"zz","gateway_ip":"10.244.1.1"}`,
		"gateway outside": `{"ip_address":"10.244.1.5/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.2.1"}`,
		"bad route":       `{"ip_address":"10.244.1.5/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1","routes":[{"dest":"x","nextHop":"10.244.1.1"}]}`,
		"bad mtu":         `{"ip_address":"10.244.1.5/24","mac_address":"0a:58:0a:f4:01:05","gateway_ip":"10.244.1.1","mtu":-1}`,
	} {
		if _, err := ParsePodNetwork(bad); err == nil {
			t.Errorf("%s: ParsePodNetwork(%s) succeeded", name, bad)
		}
	}
}

func TestParseNodeSubnet(t *testing.T) {
	if p, err := ParseNodeSubnet("10.244.3.0/24"); err != nil || p.String() != "10.244.3.0/24" {
		t.Fatalf("ParseNodeSubnet = %v, %v", p, err)
	}
	for _, bad := range []string{"", "10.244.3.0", "10.244.3.1/24", "banana"} {
		if _, err := ParseNodeSubnet(bad); err == nil {
			t.Errorf("ParseNodeSubnet(%q) succeeded", bad)
		}
	}
}
