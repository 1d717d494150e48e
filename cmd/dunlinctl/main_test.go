package main

import (
	"slices"
	"testing"
)

func TestFlagsAnywhere(t *testing.T) {
	o := newOptions()
	pos, err := parseInterleaved(o.flagSet(), []string{"show", "-o", "json", "pod", "web", "-n", "prod", "--timeout=2s"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(pos, []string{"show", "pod", "web"}) || o.output != "json" || o.namespace != "prod" || o.timeout.String() != "2s" {
		t.Errorf("positional %q, options %+v", pos, o)
	}
}

func TestSNATAction(t *testing.T) {
	for action, want := range map[string]string{
		"ct_snat(172.30.0.10);":           "172.30.0.10",
		"ct_snat_in_czone(172.30.0.10);":  "172.30.0.10",
		"ct_snat(ip4.src=172.18.0.2);":    "172.18.0.2",
		"ct_snat(172.30.0.10,1024-2048);": "172.30.0.10",
		"ct_snat;":                        "",
	} {
		got := ""
		if m := snatRe.FindStringSubmatch(action); m != nil {
			got = m[1]
		}
		if got != want {
			t.Errorf("%s: %q, want %q", action, got, want)
		}
	}
}

func TestVIPOfLoadBalancerFlow(t *testing.T) {
	for match, want := range map[string]string{
		"ct.new && ip4.dst == 10.96.0.10 && tcp.dst == 80":                               "10.96.0.10:80",
		"ct.new && !ct.rel && ip4 && reg0 == 172.18.0.2 && tcp && reg9[16..31] == 30081": "172.18.0.2:30081",
	} {
		ip, port := vipIPRe.FindStringSubmatch(match), vipPortRe.FindStringSubmatch(match)
		if ip == nil || port == nil || ip[1]+":"+port[1] != want {
			t.Errorf("%s: %v %v, want %s", match, ip, port, want)
		}
	}
}
