package translator

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

var testGatewayEnv = GatewayEnv{ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), JoinSubnet: netip.MustParsePrefix("100.64.0.0/16")}

func testGatewayNode(g *annotations.NodeGatewayInfo) GatewayNode {
	return GatewayNode{Name: "n1", Subnet: netip.MustParsePrefix("10.244.1.0/24"),
		HostIPs: []netip.Addr{netip.MustParseAddr("172.18.0.2"), netip.MustParseAddr("fd00::2")},
		Gateway: g, JoinIP: netip.MustParseAddr("100.64.0.7")}
}

func testGatewayInfo() *annotations.NodeGatewayInfo {
	return &annotations.NodeGatewayInfo{Format: 1, ChassisID: "chassis-1", Bridge: "br-ex", Interface: "eth0",
		MACAddress: "0A:00:00:00:00:02", IPAddresses: []string{"172.18.0.2/24"}, NextHops: []string{"172.18.0.1"}}
}

// rowKey names a row by table and name, or by table and ID for the keyed tables.
func rowKey(r nbstore.Row) string {
	var table string
	base, _ := nbmodel.FullDatabaseModel()
	for t, typ := range base.Types() {
		if typ == reflect.TypeOf(r.Model) {
			table = t
		}
	}
	if r.ID != "" {
		return table + "#" + r.ID
	}
	return table + "/" + reflect.ValueOf(r.Model).Elem().FieldByName("Name").String()
}

func byKey(t *testing.T, rows []nbstore.Row) map[string]nbstore.Row {
	t.Helper()
	out := map[string]nbstore.Row{}
	for _, r := range rows {
		k := rowKey(r)
		if _, dup := out[k]; dup {
			t.Fatalf("%s twice", k)
		}
		out[k] = r
	}
	return out
}

func TestGatewayRows(t *testing.T) {
	rows := byKey(t, GatewayRows(testGatewayNode(testGatewayInfo()), testGatewayEnv))
	want := []string{
		"Chassis_Template_Var#chassis-1",
		"Logical_Router/GR_n1",
		"Logical_Router_Policy#hostnetwork", "Logical_Router_Policy#nodeport",
		"Logical_Router_Port/rtoe-GR_n1", "Logical_Router_Port/rtoj-GR_n1",
		"Logical_Router_Static_Route#cluster", "Logical_Router_Static_Route#default", "Logical_Router_Static_Route#egress",
		"Logical_Router_Static_Route#join",
		"Logical_Switch/ext_n1",
		"Logical_Switch_Port/br-ex_n1", "Logical_Switch_Port/etor-GR_n1", "Logical_Switch_Port/jtor-GR_n1",
		"NAT#snat",
	}
	if got := slices.Sorted(maps.Keys(rows)); !slices.Equal(got, want) {
		t.Fatalf("rows\n got %v\nwant %v", got, want)
	}
	gr := rows["Logical_Router/GR_n1"].Model.(*nbmodel.LogicalRouter)
	if gr.Options["chassis"] != "chassis-1" || gr.Options["lb_force_snat_ip"] != "router_ip" || gr.Options["dynamic_neigh_routers"] != "true" {
		t.Errorf("GR options %v", gr.Options)
	}
	if refs := rows["Logical_Router/GR_n1"].Refs["load_balancer_group"]; len(refs) != 1 || refs[0].Name != RouterLBGroup {
		t.Errorf("GR load balancer groups %v", refs)
	}
	rtoe := rows["Logical_Router_Port/rtoe-GR_n1"].Model.(*nbmodel.LogicalRouterPort)
	if rtoe.MAC != "0a:00:00:00:00:02" || !slices.Equal(rtoe.Networks, []string{"172.18.0.2/24"}) {
		t.Errorf("rtoe %s %v: want the host's MAC and address", rtoe.MAC, rtoe.Networks)
	}
	if rtoj := rows["Logical_Router_Port/rtoj-GR_n1"].Model.(*nbmodel.LogicalRouterPort); !slices.Equal(rtoj.Networks, []string{"100.64.0.7/16"}) {
		t.Errorf("rtoj networks %v", rtoj.Networks)
	}
	ln := rows["Logical_Switch_Port/br-ex_n1"]
	if m := ln.Model.(*nbmodel.LogicalSwitchPort); m.Type != "localnet" || m.Options["network_name"] != "physnet" ||
		!slices.Equal(m.Addresses, []string{"unknown"}) || ln.Parents[0].Name != "ext_n1" {
		t.Errorf("localnet port %+v parents %v", m, ln.Parents)
	}
	if p := rows["Logical_Switch_Port/jtor-GR_n1"].Parents; p[0].Owner != ClusterOwner || p[0].Name != JoinSwitch {
		t.Errorf("jtor parents %v", p)
	}
	egress := rows["Logical_Router_Static_Route#egress"]
	if m := egress.Model.(*nbmodel.LogicalRouterStaticRoute); m.IPPrefix != "10.244.1.0/24" || m.Nexthop != "100.64.0.7" ||
		m.Policy == nil || *m.Policy != "src-ip" || egress.Parents[0].Name != ClusterRouter {
		t.Errorf("egress route %+v on %v", m, egress.Parents)
	}
	// The router's join address beats every egress route (src-ip, the node subnets' length): replies
	// of force-SNATed load-balanced traffic from a backend on another node come back to this router.
	join := rows["Logical_Router_Static_Route#join"]
	if m := join.Model.(*nbmodel.LogicalRouterStaticRoute); m.IPPrefix != "100.64.0.7/32" || m.Nexthop != "100.64.0.7" ||
		(m.Policy != nil && *m.Policy != "dst-ip") || join.Parents[0].Name != ClusterRouter {
		t.Errorf("join route %+v on %v", m, join.Parents)
	}
	def := rows["Logical_Router_Static_Route#default"].Model.(*nbmodel.LogicalRouterStaticRoute)
	if def.IPPrefix != "0.0.0.0/0" || def.Nexthop != "172.18.0.1" || def.OutputPort == nil || *def.OutputPort != "rtoe-GR_n1" {
		t.Errorf("default route %+v", def)
	}
	if back := rows["Logical_Router_Static_Route#cluster"].Model.(*nbmodel.LogicalRouterStaticRoute); back.IPPrefix != "10.244.0.0/16" || back.Nexthop != "100.64.0.1" {
		t.Errorf("route back %+v", back)
	}
	if nat := rows["NAT#snat"].Model.(*nbmodel.NAT); nat.Type != "snat" || nat.LogicalIP != "10.244.0.0/16" || nat.ExternalIP != "172.18.0.2" {
		t.Errorf("SNAT %+v", nat)
	}
	pol := rows["Logical_Router_Policy#hostnetwork"].Model.(*nbmodel.LogicalRouterPolicy)
	if pol.Priority != 1004 || pol.Match != "ip4.src == 10.244.0.0/16 && ip4.dst == {172.18.0.2}" || !slices.Equal(pol.Nexthops, []string{"10.244.1.2"}) {
		t.Errorf("policy %+v", pol)
	}
	// Node ports of node addresses go to the node's gateway router, over the join switch.
	np := rows["Logical_Router_Policy#nodeport"].Model.(*nbmodel.LogicalRouterPolicy)
	if np.Priority != 1005 || np.Action != "reroute" || !slices.Equal(np.Nexthops, []string{"100.64.0.7"}) ||
		np.Match != "ip4.src == 10.244.0.0/16 && ip4.dst == {172.18.0.2} && "+
			"((tcp.dst >= 30000 && tcp.dst <= 32767) || (udp.dst >= 30000 && udp.dst <= 32767) || (sctp.dst >= 30000 && sctp.dst <= 32767))" {
		t.Errorf("node port policy %+v", np)
	}
	if v := rows["Chassis_Template_Var#chassis-1"].Model.(*nbmodel.ChassisTemplateVar); v.Chassis != "chassis-1" || v.Variables[NodeIPVar] != "172.18.0.2" {
		t.Errorf("template var %+v", v)
	}
	for _, r := range rows {
		if owner := r.Parents; len(owner) == 1 && owner[0].Owner != ClusterOwner && owner[0].Owner != "Gateway/n1" {
			t.Errorf("%s: parent %v", rowKey(r), owner)
		}
	}
}

func TestGatewayRowsWithoutGateway(t *testing.T) {
	// No annotation: only the way to the node's host-network endpoints.
	rows := byKey(t, GatewayRows(testGatewayNode(nil), testGatewayEnv))
	if got := slices.Sorted(maps.Keys(rows)); !slices.Equal(got, []string{"Logical_Router_Policy#hostnetwork", "Logical_Router_Policy#nodeport"}) {
		t.Fatalf("rows %v", got)
	}
	// No next hop: no default route. The chassis defaults to the node name.
	g := testGatewayInfo()
	g.NextHops, g.ChassisID = nil, ""
	rows = byKey(t, GatewayRows(testGatewayNode(g), testGatewayEnv))
	if _, ok := rows["Logical_Router_Static_Route#default"]; ok {
		t.Error("default route without a next hop")
	}
	if _, ok := rows["Chassis_Template_Var#n1"]; !ok || rows["Logical_Router/GR_n1"].Model.(*nbmodel.LogicalRouter).Options["chassis"] != "n1" {
		t.Error("chassis is not the node name")
	}
	// A second node address (InternalIP differing from br-ex's) is reached the same way.
	n := testGatewayNode(testGatewayInfo())
	n.HostIPs = append(n.HostIPs, netip.MustParseAddr("192.168.5.4"))
	pol := byKey(t, GatewayRows(n, testGatewayEnv))["Logical_Router_Policy#hostnetwork"].Model.(*nbmodel.LogicalRouterPolicy)
	if pol.Match != "ip4.src == 10.244.0.0/16 && ip4.dst == {172.18.0.2, 192.168.5.4}" {
		t.Errorf("match %q", pol.Match)
	}
}

func TestGatewayClusterRows(t *testing.T) {
	rows := byKey(t, GatewayClusterRows(testGatewayEnv))
	if lrp := rows["Logical_Router_Port/rtoj-ovn_cluster_router"].Model.(*nbmodel.LogicalRouterPort); !slices.Equal(lrp.Networks, []string{"100.64.0.1/16"}) {
		t.Errorf("rtoj-ovn_cluster_router %v", lrp.Networks)
	}
	for _, k := range []string{"Logical_Switch/join", "Load_Balancer_Group/dunlin-routers", "Logical_Switch_Port/jtor-ovn_cluster_router"} {
		if _, ok := rows[k]; !ok {
			t.Errorf("no %s", k)
		}
	}
}

func nodePortService(opts ...svcOpt) *corev1.Service {
	return service(append([]svcOpt{func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = 30080
	}}, opts...)...)
}

func gatewayLBs(t *testing.T, svc *corev1.Service, env ServiceEnv, eps ...*discoveryv1.EndpointSlice) (map[string]nbstore.Row, []ServiceProblem) {
	t.Helper()
	env.Ranges = testRanges
	rows, problems := ServiceRows(svc, eps, env)
	out := map[string]nbstore.Row{}
	for _, r := range rows {
		if name := r.Model.(*nbmodel.LoadBalancer).Name; isGatewayLB(name) {
			out[name] = r
		}
	}
	return out, problems
}

func parentNames(r nbstore.Row) []string {
	var out []string
	for _, p := range r.Parents {
		out = append(out, p.Name)
	}
	return out
}

func TestGatewayServiceRows(t *testing.T) {
	tcp := corev1.ProtocolTCP
	sl := slice("web-a", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, tcp, readyEP("10.244.1.5"), readyEP("10.244.2.7"))
	sl.Endpoints[0].NodeName, sl.Endpoints[1].NodeName = ptr.To("n1"), ptr.To("n2")
	gws := []GatewayAddr{{"n1", netip.MustParseAddr("172.18.0.2")}, {"n2", netip.MustParseAddr("172.18.0.3")}, {"n3", netip.MustParseAddr("172.18.0.4")}}

	// Cluster policy: one template load balancer for every node, on switches and gateway routers.
	got, problems := gatewayLBs(t, nodePortService(func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.10", "2001:db8::1"} }),
		ServiceEnv{Gateways: gws}, sl)
	if len(problems) > 0 {
		t.Fatalf("problems %v", problems)
	}
	if got := slices.Sorted(maps.Keys(got)); !slices.Equal(got, []string{"Service_shop/web_TCP_external", "Service_shop/web_TCP_nodeport"}) {
		t.Fatalf("load balancers %v", got)
	}
	np := got["Service_shop/web_TCP_nodeport"]
	lb := np.Model.(*nbmodel.LoadBalancer)
	if !maps.Equal(lb.Vips, map[string]string{"^NODEIP:30080": "10.244.1.5:8080,10.244.2.7:8080"}) ||
		lb.Options["template"] != "true" || lb.Options["address-family"] != "ipv4" || lb.Options["reject"] != "true" {
		t.Errorf("nodeport LB vips %v options %v", lb.Vips, lb.Options)
	}
	if p := parentNames(np); !slices.Equal(p, []string{ClusterLBGroup, RouterLBGroup}) {
		t.Errorf("nodeport LB parents %v", p)
	}
	ext := got["Service_shop/web_TCP_external"]
	if lb := ext.Model.(*nbmodel.LoadBalancer); !maps.Equal(lb.Vips, map[string]string{"192.0.2.10:80": "10.244.1.5:8080,10.244.2.7:8080"}) {
		t.Errorf("external LB vips %v (IPv6 stays off the IPv4-only routers)", lb.Vips)
	}
	if p := parentNames(ext); !slices.Equal(p, []string{RouterLBGroup}) {
		t.Errorf("external LB parents %v", p)
	}

	// Local policy: the template only on switches (pods see every endpoint), one load balancer per
	// gateway router with the node's own endpoints, the client address kept, no answer without one.
	got, _ = gatewayLBs(t, nodePortService(func(s *corev1.Service) {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Spec.ExternalIPs = []string{"192.0.2.10"}
	}), ServiceEnv{Gateways: gws}, sl)
	want := map[string]map[string]string{
		"Service_shop/web_TCP_gateway_n1": {"172.18.0.2:30080": "10.244.1.5:8080", "192.0.2.10:80": "10.244.1.5:8080"},
		"Service_shop/web_TCP_gateway_n2": {"172.18.0.3:30080": "10.244.2.7:8080", "192.0.2.10:80": "10.244.2.7:8080"},
		"Service_shop/web_TCP_gateway_n3": {"172.18.0.4:30080": "", "192.0.2.10:80": ""},
		"Service_shop/web_TCP_nodeport":   {"^NODEIP:30080": "10.244.1.5:8080,10.244.2.7:8080"},
	}
	if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, slices.Sorted(maps.Keys(want))) {
		t.Fatalf("load balancers %v", names)
	}
	for name, vips := range want {
		lb := got[name].Model.(*nbmodel.LoadBalancer)
		if !maps.Equal(lb.Vips, vips) {
			t.Errorf("%s vips %v, want %v", name, lb.Vips, vips)
		}
		if name == "Service_shop/web_TCP_nodeport" {
			if p := parentNames(got[name]); !slices.Equal(p, []string{ClusterLBGroup}) {
				t.Errorf("%s parents %v", name, p)
			}
			continue
		}
		p := got[name].Parents
		node := lb.ExternalIDs[extNode]
		if len(p) != 1 || p[0].Table != "Logical_Router" || p[0].Column != "load_balancer" || p[0].Name != "GR_"+node || p[0].Owner != "Gateway/"+node {
			t.Errorf("%s parents %+v", name, p)
		}
		if lb.Options["skip_snat"] != "true" || lb.Options["reject"] != "" {
			t.Errorf("%s options %v", name, lb.Options)
		}
	}
}

func TestGatewayServiceBadNodePort(t *testing.T) {
	svc := nodePortService(func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "other", Protocol: corev1.ProtocolTCP, Port: 81, NodePort: 8080})
	})
	got, problems := gatewayLBs(t, svc, ServiceEnv{NodePortRange: PortRange{30000, 30100}})
	if len(problems) != 1 || problems[0].Reason != reasonInvalidNodePort {
		t.Fatalf("problems %v", problems)
	}
	if lb := got["Service_shop/web_TCP_nodeport"].Model.(*nbmodel.LoadBalancer); !maps.Equal(lb.Vips, map[string]string{"^NODEIP:30080": ""}) {
		t.Errorf("vips %v: the valid port stays", lb.Vips)
	}
}

// NodePort Services with externalTrafficPolicy Cluster cost the same rows on any number of nodes.
func TestGatewayServiceRowsIndependentOfNodes(t *testing.T) {
	svc := nodePortService()
	var gws []GatewayAddr
	few, _ := ServiceRows(svc, nil, ServiceEnv{Ranges: testRanges, Gateways: gws})
	for i := range 500 {
		gws = append(gws, GatewayAddr{Node: "n" + string(rune('a'+i%26)) + string(rune('a'+i/26)), IP: netip.AddrFrom4([4]byte{172, 18, byte(i / 250), byte(1 + i%250)})})
	}
	many, _ := ServiceRows(svc, nil, ServiceEnv{Ranges: testRanges, Gateways: gws})
	if !reflect.DeepEqual(few, many) {
		t.Errorf("rows differ with 500 gateways: %d vs %d", len(few), len(many))
	}
}

func TestParsePortRange(t *testing.T) {
	if r, err := ParsePortRange("30000-32767"); err != nil || r != (PortRange{30000, 32767}) {
		t.Errorf("%v %v", r, err)
	}
	for _, bad := range []string{"", "30000", "3-2", "0-10", "1-70000", "a-b"} {
		if _, err := ParsePortRange(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// The gateway routers' load balancers pick backends by a hash of the connection's addresses and ports
// (ovs-vswitchd computes it while translating): OVN's default dp_hash costs the recirculation that put
// the first packet of a NodePort connection from outside past the userspace datapath's limit.
func TestGatewayLBSelectionFields(t *testing.T) {
	sl := slice("web-a", discoveryv1.AddressTypeIPv4, map[string]int32{"http": 8080}, corev1.ProtocolTCP, readyEP("10.244.1.5"))
	sl.Endpoints[0].NodeName = ptr.To("n1")
	gws := []GatewayAddr{{"n1", netip.MustParseAddr("172.18.0.2")}}
	fourTuple := []string{"ip_src", "ip_dst", "tp_src", "tp_dst"}
	for _, tc := range []struct {
		name string
		opt  svcOpt
		env  ServiceEnv
		want []string
	}{
		{"cluster", func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.10"} }, ServiceEnv{}, fourTuple},
		{"local", func(s *corev1.Service) {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Spec.ExternalIPs = []string{"192.0.2.10"}
		}, ServiceEnv{}, fourTuple},
		{"affinity by hash", func(s *corev1.Service) {
			s.Spec.ExternalIPs = []string{"192.0.2.10"}
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		}, ServiceEnv{AffinityByHash: true}, []string{"ip_src", "ip_dst"}},
		// Regression: with the default affinity_timeout mode the gateway load balancers hashed the
		// ports too and kept affinity_timeout, and NodePort affinity did not hold (upstream
		// "should have session affinity work for NodePort service [Conformance]").
		{"affinity by timeout", func(s *corev1.Service) {
			s.Spec.ExternalIPs = []string{"192.0.2.10"}
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		}, ServiceEnv{}, []string{"ip_src", "ip_dst"}},
	} {
		tc.env.Gateways = gws
		got, _ := gatewayLBs(t, nodePortService(tc.opt), tc.env, sl)
		if len(got) < 2 {
			t.Fatalf("%s: load balancers %v", tc.name, slices.Sorted(maps.Keys(got)))
		}
		for name, r := range got {
			lb := r.Model.(*nbmodel.LoadBalancer)
			if !slices.Equal(lb.SelectionFields, tc.want) {
				t.Errorf("%s: %s selection_fields %v, want %v", tc.name, name, lb.SelectionFields, tc.want)
			}
			if _, ok := lb.Options["affinity_timeout"]; ok {
				t.Errorf("%s: %s has affinity_timeout %s", tc.name, name, lb.Options["affinity_timeout"])
			}
		}
	}
	// Load balancers of the node switches only (ClusterIPs) keep OVN's default.
	rows, _ := ServiceRows(nodePortService(), []*discoveryv1.EndpointSlice{sl}, ServiceEnv{Gateways: gws, Ranges: testRanges})
	for _, r := range rows {
		if lb := r.Model.(*nbmodel.LoadBalancer); !isGatewayLB(lb.Name) && len(lb.SelectionFields) != 0 {
			t.Errorf("%s selection_fields %v", lb.Name, lb.SelectionFields)
		}
	}
}
