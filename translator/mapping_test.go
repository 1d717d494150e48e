package translator

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

func TestNodeRows(t *testing.T) {
	rows := NodeRows(NodeNetwork{Name: "n1", Subnet: netip.MustParsePrefix("10.244.1.0/24")})
	ls := rows[0].Model.(*nbmodel.LogicalSwitch)
	if ls.Name != "n1" || ls.OtherConfig["subnet"] != "10.244.1.0/24" || ls.OtherConfig["exclude_ips"] != "10.244.1.1..10.244.1.2" {
		t.Errorf("switch = %+v", ls)
	}
	lrp := rows[1].Model.(*nbmodel.LogicalRouterPort)
	if lrp.Name != "rtos-n1" || lrp.MAC != "0a:58:0a:f4:01:01" || !reflect.DeepEqual(lrp.Networks, []string{"10.244.1.1/24"}) {
		t.Errorf("router port = %+v", lrp)
	}
	if !reflect.DeepEqual(rows[1].Parents, nbstore.In(ClusterOwner, ClusterRouter)) {
		t.Errorf("router port parents = %+v", rows[1].Parents)
	}
	stor := rows[2].Model.(*nbmodel.LogicalSwitchPort)
	if stor.Name != "stor-n1" || stor.Type != "router" || stor.Options["router-port"] != "rtos-n1" ||
		!reflect.DeepEqual(stor.Addresses, []string{"router"}) {
		t.Errorf("stor port = %+v", stor)
	}
	mgmt := rows[3].Model.(*nbmodel.LogicalSwitchPort)
	if mgmt.Name != "k8s-n1" || !reflect.DeepEqual(mgmt.Addresses, []string{"0a:58:0a:f4:01:02 10.244.1.2"}) {
		t.Errorf("management port = %+v", mgmt)
	}
	for _, r := range rows[2:] {
		if !reflect.DeepEqual(r.Parents, nbstore.In("Node/n1", "n1")) {
			t.Errorf("%T parents = %+v", r.Model, r.Parents)
		}
	}
}

func TestPodRows(t *testing.T) {
	tests := []struct {
		name string
		in   PodNetwork
		port string
		addr string
	}{
		{"plain", PodNetwork{Namespace: "default", Name: "web", UID: "u1", Node: "n1", Addr: netip.MustParseAddr("10.244.1.3")},
			"default_web", "0a:58:0a:f4:01:03 10.244.1.3"},
		{"dotted name", PodNetwork{Namespace: "kube-system", Name: "coredns-5d.x", UID: "u2", Node: "n2", Addr: netip.MustParseAddr("10.244.2.200")},
			"kube-system_coredns-5d.x", "0a:58:0a:f4:02:c8 10.244.2.200"},
		{"iface-id-ver", PodNetwork{Namespace: "default", Name: "web", UID: "u3", Node: "n1", Addr: netip.MustParseAddr("10.244.1.4"), IfaceIDVer: true},
			"default_web", "0a:58:0a:f4:01:04 10.244.1.4"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rows := PodRows(tc.in)
			if len(rows) != 1 {
				t.Fatalf("%d rows", len(rows))
			}
			lsp := rows[0].Model.(*nbmodel.LogicalSwitchPort)
			if lsp.Name != tc.port || !reflect.DeepEqual(lsp.Addresses, []string{tc.addr}) ||
				!reflect.DeepEqual(lsp.PortSecurity, []string{tc.addr}) {
				t.Errorf("port = %+v", lsp)
			}
			if lsp.Options["requested-chassis"] != tc.in.Node || (lsp.Options["iface-id-ver"] == tc.in.UID) != tc.in.IfaceIDVer ||
				lsp.ExternalIDs["pod-uid"] != tc.in.UID ||
				lsp.ExternalIDs["namespace"] != tc.in.Namespace || lsp.ExternalIDs["pod"] != tc.in.Name {
				t.Errorf("port options/external_ids = %v / %v", lsp.Options, lsp.ExternalIDs)
			}
			if !reflect.DeepEqual(rows[0].Parents, nbstore.In("Node/"+tc.in.Node, tc.in.Node)) {
				t.Errorf("parents = %+v", rows[0].Parents)
			}
		})
	}
}
