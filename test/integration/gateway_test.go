package integration

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// gatewayInfo is the annotation dunlin-node would publish for node i: 172.18.0.(i+1) on br-ex.
func gatewayInfo(i int) annotations.NodeGatewayInfo {
	return annotations.NodeGatewayInfo{Format: 1, ChassisID: fmt.Sprintf("chassis-%d", i), Bridge: "br-ex", Interface: "eth0",
		MACAddress: fmt.Sprintf("0a:00:00:00:%02x:%02x", i/256, i%256), IPAddresses: []string{fmt.Sprintf("172.18.%d.%d/16", i/250, 1+i%250)},
		NextHops: []string{"172.18.0.1"}}
}

// createGatewayNode creates node name with pod subnet 10.244.<i>.0/24, InternalIP 172.18.x.y and,
// unless gw is "", the gateway annotation gw.
func (c *cluster) createGatewayNode(name string, i int, gw string) {
	c.t.Helper()
	subnet := fmt.Sprintf("10.244.%d.0/24", i)
	n := c.createNode(name, func(n *corev1.Node) {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = subnet, []string{subnet}
		if gw != "" {
			n.Annotations = map[string]string{annotations.NodeGateway: gw}
		}
	})
	ip, _, _ := strings.Cut(gatewayInfo(i).IPAddresses[0], "/")
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if _, err := c.client.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{}); err != nil {
		c.t.Fatalf("node %s status: %v", name, err)
	}
}

func (c *cluster) setGatewayAnnotation(node, value string) {
	c.t.Helper()
	v := "null"
	if value != "" {
		v = fmt.Sprintf("%q", value)
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%s}}}`, annotations.NodeGateway, v)
	if _, err := c.client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		c.t.Fatalf("annotate node %s: %v", node, err)
	}
}

// setFeatures sets the node's announced agent features, as its dunlin-node would.
func (c *cluster) setFeatures(node, features string) {
	c.t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotations.NodeFeatures, features)
	if _, err := c.client.CoreV1().Nodes().Patch(context.Background(), node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		c.t.Fatalf("features of node %s: %v", node, err)
	}
}

func (c *cluster) node(name string) *corev1.Node {
	c.t.Helper()
	n, err := c.client.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatalf("get node %s: %v", name, err)
	}
	return n
}

// events lists the events with reason on the named object.
func (c *cluster) events(name, reason string) []corev1.Event {
	c.t.Helper()
	sel := fmt.Sprintf("involvedObject.name=%s,reason=%s", name, reason)
	evs, err := c.client.CoreV1().Events("").List(context.Background(), metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		c.t.Fatal(err)
	}
	return evs.Items
}

// expectNB waits until ovn-nbctl args prints something matching every pattern (and, for patterns
// starting with "!", not matching it), and returns that output.
func (c *cluster) expectNB(what string, args []string, patterns ...string) string {
	c.t.Helper()
	var out string
	c.eventually(60*time.Second, what, func() error {
		o, err := c.ovn.NBCtl(args...)
		if err != nil {
			return err
		}
		out = o
		for _, p := range patterns {
			neg := strings.HasPrefix(p, "!")
			if regexp.MustCompile(strings.TrimPrefix(p, "!")).MatchString(o) == neg {
				return fmt.Errorf("ovn-nbctl %v: %q matched=%v in:\n%s", args, p, neg, o)
			}
		}
		return nil
	})
	return out
}

// joinIP is the address of GR_<node>'s port on the join switch.
func (c *cluster) joinIP(node string) string {
	c.t.Helper()
	return strings.Trim(strings.TrimSpace(c.nbctl("--bare", "--columns=networks", "find", "Logical_Router_Port", "name=rtoj-GR_"+node)), `"`)
}

func nodePortService(port int32, local bool) func(*corev1.Service) {
	return func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeNodePort
		s.Spec.Ports[0].NodePort = port
		if local {
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		}
	}
}

// TestGatewayTopology checks a two-node gateway topology as ovn-nbctl and ovn-northd see it, and with
// ovn-trace that a pod's packet to the outside is SNATed to its node's IP and a NodePort packet from the
// outside is DNATed to a pod.
func TestGatewayTopology(t *testing.T) {
	c := newClusterWith(t, harness.OVNOptions{WithSB: true})
	for i, n := range []string{"n1", "n2"} {
		c.createGatewayNode(n, i+1, gatewayInfo(i+1).Marshal())
	}
	c.createService("web", nodePortService(30080, false), func(s *corev1.Service) { s.Spec.ExternalIPs = []string{"192.0.2.10"} })
	c.createService("local", nodePortService(30081, true))
	c.applySlice("web", "web-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, "10.244.1.5", "10.244.2.5")
	c.applySlice("local", "local-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, "10.244.1.6")
	setNode := func(slice string, i int, node string) {
		s, err := c.client.DiscoveryV1().EndpointSlices("default").Get(context.Background(), slice, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.Endpoints[i].NodeName = ptr.To(node)
		if _, err := c.client.DiscoveryV1().EndpointSlices("default").Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setNode("local-a", 0, "n1")

	show := c.expectNB("gateway topology", []string{"show"},
		`router \S+ \(GR_n1\)`, `router \S+ \(GR_n2\)`, `switch \S+ \(join\)`, `switch \S+ \(ext_n1\)`,
		`port br-ex_n1\n\s+type: localnet`, `port rtoe-GR_n1\n\s+mac: "0a:00:00:00:00:01"\n\s+networks: \["172.18.0.2/16"\]`,
		`port rtoj-ovn_cluster_router\n\s+mac: "[0-9a-f:]+"\n\s+networks: \["100.64.0.1/16"\]`)
	t.Logf("ovn-nbctl show:\n%s", show)
	c.expectNB("GR_n1 options", []string{"get", "Logical_Router", "GR_n1", "options"},
		`chassis=chassis-1`, `lb_force_snat_ip=router_ip`, `dynamic_neigh_routers="true"`)
	gr1 := c.expectNB("GR_n1 routes", []string{"lr-route-list", "GR_n1"},
		`0.0.0.0/0\s+172.18.0.1 dst-ip rtoe-GR_n1`, `10.244.0.0/16\s+100.64.0.1 dst-ip`)
	j1, j2 := c.joinIP("n1"), c.joinIP("n2")
	if j1 == j2 || !strings.HasPrefix(j1, "100.64.0.") || !strings.HasPrefix(j2, "100.64.0.") {
		t.Fatalf("join addresses %q %q", j1, j2)
	}
	ip1, ip2 := strings.TrimSuffix(j1, "/16"), strings.TrimSuffix(j2, "/16")
	routes := c.expectNB("cluster router routes", []string{"lr-route-list", "ovn_cluster_router"},
		`10.244.1.0/24\s+`+ip1+` src-ip`, `10.244.2.0/24\s+`+ip2+` src-ip`,
		regexp.QuoteMeta(ip1)+`\s+`+regexp.QuoteMeta(ip1)+` dst-ip`, regexp.QuoteMeta(ip2)+`\s+`+regexp.QuoteMeta(ip2)+` dst-ip`)
	policies := c.expectNB("host-network policies", []string{"lr-policy-list", "ovn_cluster_router"},
		`1004 ip4.src == 10.244.0.0/16 && ip4.dst == \{172.18.0.2\}\s+reroute\s+10.244.1.2`,
		`1004 ip4.src == 10.244.0.0/16 && ip4.dst == \{172.18.0.3\}\s+reroute\s+10.244.2.2`)
	nat := c.expectNB("GR_n2 NAT", []string{"lr-nat-list", "GR_n2"}, `snat\s+172.18.0.3\s+10.244.0.0/16`)
	c.expectVIPs("Service_default/web_TCP_nodeport", `{"^NODEIP:30080"="10.244.1.5:8080,10.244.2.5:8080"}`)
	c.expectVIPs("Service_default/web_TCP_external", `{"192.0.2.10:80"="10.244.1.5:8080,10.244.2.5:8080"}`)
	c.expectVIPs("Service_default/local_TCP_gateway_n1", `{"172.18.0.2:30081"="10.244.1.6:8080"}`)
	c.expectVIPs("Service_default/local_TCP_gateway_n2", `{"172.18.0.3:30081"=""}`)
	lbs := c.nbctl("lb-list")
	c.expectNB("template variables", []string{"--columns=chassis,variables", "list", "Chassis_Template_Var"},
		`chassis\s+: chassis-1\nvariables\s+: \{NODEIP="172.18.0.2"\}`, `chassis\s+: chassis-2\nvariables\s+: \{NODEIP="172.18.0.3"\}`)
	c.expectNB("GR load balancers", []string{"lr-lb-list", "GR_n1"}, `172.18.0.2:30081\s+10.244.1.6:8080`, `\^NODEIP:30080`, `192.0.2.10:80`, `!172.18.0.3:30081`)
	t.Logf("lr-route-list GR_n1:\n%s\nlr-route-list ovn_cluster_router:\n%s\nlr-policy-list:\n%s\nlr-nat-list GR_n2:\n%s\nlb-list:\n%s",
		gr1, routes, policies, nat, lbs)

	// ovn-northd compiles it: the routers' flows exist and its log has no errors.
	var flows string
	c.eventually(60*time.Second, "GR_n1 logical flows", func() error {
		out, err := c.ovn.SBCtl("lflow-list", "GR_n1")
		if err != nil {
			return err
		}
		for _, want := range []string{"ct_snat(172.18.0.2)", "30080", "172.18.0.2 && tcp && tcp.dst == 30081"} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("no %q in GR_n1's flows", want)
			}
		}
		flows = out
		return nil
	})
	_ = flows
	// externalTrafficPolicy Local on a node without a local endpoint: the VIP without backends and
	// without reject compiles to a drop (no reset), so that node does not answer.
	c.eventually(60*time.Second, "GR_n2 drops its local VIP without endpoints", func() error {
		out, err := c.ovn.SBCtl("lflow-list", "GR_n2")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "ip4.dst == 172.18.0.3 && tcp && tcp.dst == 30081") && strings.Contains(line, "drop;") {
				return nil
			}
		}
		return fmt.Errorf("no drop flow for 172.18.0.3:30081 in GR_n2")
	})
	log, err := os.ReadFile(filepath.Join(c.ovn.Dir, "northd.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(log), "\n") {
		// Known and not the gateways': ports pinned to chassis that do not run here, and the node
		// switches' exclude_ips naming the management address their port also has.
		if strings.Contains(line, "Unknown chassis") || strings.Contains(line, "Duplicate IP set") {
			continue
		}
		if strings.Contains(line, "|ERR|") || strings.Contains(line, "|WARN|") {
			t.Errorf("ovn-northd: %s", line)
		}
	}

	// ovn-trace cannot answer ARP: give it the next hops' MACs as SB MAC_Binding rows, as
	// ovn-controller would learn them (rows of the test, not Dunlin's).
	dp, err := c.ovn.SBCtl("--bare", "--columns=_uuid", "find", "Datapath_Binding", "external_ids:name=GR_n1")
	if err != nil {
		t.Fatal(err)
	}
	for port, ipmac := range map[string][2]string{"rtoe-GR_n1": {"172.18.0.1", "0a:00:00:00:00:fe"}, "rtoj-GR_n1": {"100.64.0.1", "0a:58:64:40:00:01"}} {
		if _, err := c.ovn.SBCtl("create", "MAC_Binding", "logical_port="+port, "ip="+ipmac[0], fmt.Sprintf("mac=%q", ipmac[1]), "datapath="+dp); err != nil {
			t.Fatal(err)
		}
	}
	// A pod's packet to the outside leaves GR_n1 towards the next hop with the node's address.
	rtoj := strings.Trim(strings.TrimSpace(c.nbctl("get", "Logical_Router_Port", "rtoj-GR_n1", "mac")), `"`)
	egress := trace(t, c, "GR_n1", fmt.Sprintf(`inport == "rtoj-GR_n1" && eth.src == 0a:58:64:40:00:01 && eth.dst == %s && ip4.src == 10.244.1.5 && ip4.dst == 8.8.8.8 && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == 53`, rtoj))
	for _, want := range []string{"ct_snat(ip4.src=172.18.0.2)", "0a:00:00:00:00:fe", `output to "br-ex_n1", type "localnet"`} {
		if !strings.Contains(egress, want) {
			t.Errorf("egress trace has no %q:\n%s", want, egress)
		}
	}
	// A NodePort packet from the outside is DNATed to the node's local endpoint, the bucket chosen by a
	// hash of addresses and ports (no dp_hash recirculation: see translator.GatewayLBSelectionFields).
	ingress := trace(t, c, "GR_n1", `inport == "rtoe-GR_n1" && eth.src == 0a:00:00:00:99:99 && eth.dst == 0a:00:00:00:00:01 && ip4.src == 172.18.0.100 && ip4.dst == 172.18.0.2 && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == 30081`)
	if !strings.Contains(ingress, `ct_lb_mark(backends=10.244.1.6:8080; hash_fields="ip_dst,ip_src,tcp_dst,tcp_src"; skip_snat)`) || !strings.Contains(ingress, `output to "rtoj-GR_n1"`) {
		t.Errorf("NodePort trace has no DNAT to 10.244.1.6:8080:\n%s", ingress)
	}
	t.Logf("ovn-trace egress:\n%s\novn-trace NodePort:\n%s", egress, ingress)

	// A pod on n1 reaching n2's address: a node port goes to GR_n2 over the join switch (which balances
	// it), anything else to n2's management port.
	rtos := strings.Trim(strings.TrimSpace(c.nbctl("get", "Logical_Router_Port", "rtos-n1", "mac")), `"`)
	toNode := func(port int) string {
		return trace(t, c, "ovn_cluster_router", fmt.Sprintf(`inport == "rtos-n1" && eth.src == 0a:58:0a:f4:01:05 && eth.dst == %s && ip4.src == 10.244.1.5 && ip4.dst == 172.18.0.3 && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == %d`, rtos, port))
	}
	nodePort, apiPort := toNode(30080), toNode(6443)
	if !strings.Contains(nodePort, `ingress(dp="GR_n2", inport="rtoj-GR_n2")`) || strings.Contains(nodePort, `dp="GR_n1"`) {
		t.Errorf("pod to n2's node port does not go to GR_n2 over join:\n%s", nodePort)
	}
	if !strings.Contains(apiPort, `reg0 = 10.244.2.2`) || strings.Contains(apiPort, `dp="GR_n1"`) {
		t.Errorf("pod to n2's port 6443 is not rerouted to n2's management port:\n%s", apiPort)
	}
	t.Logf("ovn-trace pod to n2's node port:\n%s\novn-trace pod to n2's port 6443:\n%s", nodePort, apiPort)

	// A backend on n2 answering GR_n1's force-SNATed connection (to GR_n1's join address) reaches GR_n1
	// straight over join: n2's subnet egress route (src-ip, /24) would send it through GR_n2, which
	// SNATs it to n2's address, and GR_n1 could not match it.
	rtos2 := strings.Trim(strings.TrimSpace(c.nbctl("get", "Logical_Router_Port", "rtos-n2", "mac")), `"`)
	reply := trace(t, c, "ovn_cluster_router", fmt.Sprintf(`inport == "rtos-n2" && eth.src == 0a:58:0a:f4:02:05 && eth.dst == %s && ip4.src == 10.244.2.5 && ip4.dst == %s && ip.ttl == 64 && tcp && tcp.src == 8080 && tcp.dst == 40000`, rtos2, ip1))
	if !strings.Contains(reply, `ingress(dp="GR_n1", inport="rtoj-GR_n1")`) || strings.Contains(reply, `dp="GR_n2"`) {
		t.Errorf("a reply from n2's pod to GR_n1's join address does not go straight to GR_n1:\n%s", reply)
	}
	t.Logf("ovn-trace reply to GR_n1's join address:\n%s", reply)

	// Switching a Service to externalTrafficPolicy Local takes its template off the gateway routers:
	// the same row leaves the routers' group.
	template := func() string {
		return strings.TrimSpace(c.nbctl("--bare", "--columns=_uuid", "find", "Load_Balancer", "name=Service_default/web_TCP_nodeport"))
	}
	before := template()
	setNode("web-a", 0, "n1")
	setNode("web-a", 1, "n2")
	svc := c.service("web")
	svc.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	if _, err := c.client.CoreV1().Services("default").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.expectNB("GR_n1 after the policy change", []string{"lr-lb-list", "GR_n1"}, `172.18.0.2:30080\s+10.244.1.5:8080\n`,
		`!\^NODEIP:30080`, `!192.0.2.10:80\s+10.244.1.5:8080,`)
	c.expectNB("n1's switch after the policy change", []string{"ls-lb-list", "n1"}, `\^NODEIP:30080\s+10.244.1.5:8080,10.244.2.5:8080`)
	if after := template(); after != before || before == "" {
		t.Errorf("the template load balancer was replaced by the policy change: %q -> %q", before, after)
	}
	if got := c.nbctl("--bare", "--columns=load_balancer", "list", "Load_Balancer_Group", "dunlin-routers"); strings.Contains(got, before) {
		t.Errorf("dunlin-routers still holds the template: %s", got)
	}
}

// trace runs ovn-trace on datapath against the SB database.
func trace(t *testing.T, c *cluster, datapath, flow string) string {
	t.Helper()
	out, err := c.ovn.Trace("--summary", "--ct=new", "--ct=new", datapath, flow)
	if err != nil {
		t.Fatalf("ovn-trace %s: %v\n%s", flow, err, out)
	}
	return out
}

// gatewayRowCount counts the NB rows a node's gateway owns, in every table.
func (c *cluster) ownedRows(owner string) int {
	c.t.Helper()
	n := 0
	for _, table := range []string{"Logical_Router", "Logical_Router_Port", "Logical_Switch", "Logical_Switch_Port",
		"Logical_Router_Static_Route", "Logical_Router_Policy", "NAT", "Chassis_Template_Var", "Load_Balancer"} {
		out := c.nbctl("--bare", "--columns=_uuid", "find", table, fmt.Sprintf(`external_ids:"dunlin.io/owner"="%s"`, owner))
		n += len(strings.Fields(out))
	}
	return n
}

// noWarning fails if node has a Warning with reason.
func (c *cluster) noWarning(name, reason string) {
	c.t.Helper()
	if evs := c.events(name, reason); len(evs) > 0 {
		c.t.Errorf("%s has a %s event: %s", name, reason, evs[0].Message)
	}
}

// TestGatewayLifecycle: nodes without or with a bad annotation (reported only when the node's agent
// runs the gateway), a restart, a deleted node, a foreign router and a node port outside the range;
// every other node converges meanwhile.
func TestGatewayLifecycle(t *testing.T) {
	c := newCluster(t, "--service-node-port-range=30000-30999")
	// A router of someone else's with the name a node's gateway would get.
	c.nbctl("lr-add", "GR_foreign", "--", "set", "Logical_Router", "GR_foreign", "options:chassis=elsewhere")
	c.createGatewayNode("n1", 1, gatewayInfo(1).Marshal())
	c.createGatewayNode("bare", 2, "")
	bad := gatewayInfo(3)
	bad.NextHops = []string{"10.9.9.9"} // not on the node's network
	c.createGatewayNode("n3", 3, bad.Marshal())
	c.createGatewayNode("foreign", 4, gatewayInfo(4).Marshal())
	c.createService("web", nodePortService(30080, false))
	c.createService("wide", nodePortService(32000, false)) // valid for the apiserver, outside Dunlin's range

	c.expectNB("n1's gateway", []string{"show"}, `\(GR_n1\)`, `\(ext_n1\)`, `!GR_bare`, `!GR_n3`)
	c.warning("", "n3", "InvalidNodeGateway")
	c.warning("", "foreign", "NBNameConflict")
	c.warning("default", "wide", "InvalidNodePort")
	c.expectVIPs("Service_default/web_TCP_nodeport", `{"^NODEIP:30080"=""}`)
	c.expectVIPs("Service_default/wide_TCP_nodeport", "")
	// A node without the annotation gets no router and no event, but pods still reach its addresses.
	c.expectNB("bare node's host-network policy", []string{"lr-policy-list", "ovn_cluster_router"}, `ip4.dst == \{172.18.0.3\}\s+reroute\s+10.244.2.2`)
	c.noWarning("bare", "InvalidNodeGateway")

	// A node whose dunlin-node runs the gateway but published none (its uplink is missing) is
	// reported, once: a later sync of the node (its address changed) does not repeat it. A node whose
	// agent runs with --gateway=false, or predates the gateway feature (bare), is not reported.
	c.createGatewayNode("n7", 7, "")
	c.setFeatures("n7", annotations.AgentFeatures(true))
	c.createGatewayNode("n8", 8, "")
	c.setFeatures("n8", annotations.AgentFeatures(false))
	missing := c.warning("", "n7", "NodeGatewayMissing")
	if !strings.Contains(missing.Message, annotations.NodeGateway) || missing.Source.Component != "dunlin-controller" {
		t.Errorf("NodeGatewayMissing from %q: %s", missing.Source.Component, missing.Message)
	}
	n7 := c.node("n7")
	n7.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "172.18.0.77"}}
	if _, err := c.client.CoreV1().Nodes().UpdateStatus(context.Background(), n7, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.expectNB("n7's and n8's host-network policies", []string{"lr-policy-list", "ovn_cluster_router"},
		`ip4.dst == \{172.18.0.77\}\s+reroute\s+10.244.7.2`, `ip4.dst == \{172.18.0.9\}\s+reroute\s+10.244.8.2`)
	if evs := c.events("n7", "NodeGatewayMissing"); len(evs) != 1 || evs[0].Count != 1 {
		t.Errorf("NodeGatewayMissing on n7 was repeated by a later sync: %+v", evs)
	}
	c.noWarning("n8", "NodeGatewayMissing")
	c.noWarning("bare", "NodeGatewayMissing")
	// Publishing the annotation heals it.
	c.setGatewayAnnotation("n7", gatewayInfo(7).Marshal())
	c.expectNB("n7's gateway", []string{"show"}, `\(GR_n7\)`, `\(ext_n7\)`)
	// The foreign router is left as it was.
	if got := strings.TrimSpace(c.nbctl("get", "Logical_Router", "GR_foreign", "options")); got != `{chassis=elsewhere}` {
		t.Errorf("foreign router options %s", got)
	}
	if n := c.ownedRows("Gateway/foreign"); n != 2 { // only its host-network policies
		t.Errorf("foreign node owns %d gateway rows, want its policies only", n)
	}

	// A good annotation heals n3; the bare node gets one later.
	c.setGatewayAnnotation("n3", gatewayInfo(3).Marshal())
	c.setGatewayAnnotation("bare", gatewayInfo(2).Marshal())
	c.expectNB("healed gateways", []string{"show"}, `\(GR_n3\)`, `\(GR_bare\)`)
	c.eventually(60*time.Second, "gateway rows", func() error {
		for _, n := range []string{"n1", "bare", "n3"} {
			if got := c.ownedRows("Gateway/" + n); got != 15 {
				return fmt.Errorf("%s owns %d gateway rows, want 15", n, got)
			}
		}
		return nil
	})
	join := map[string]string{}
	for _, n := range []string{"n1", "bare", "n3"} {
		join[n] = c.joinIP(n)
	}

	// A restart (SIGKILL) keeps every join address and row; a node added after it gets a new address.
	uuids := func() string {
		return c.nbctl("--bare", "--columns=_uuid", "find", "Logical_Router", `external_ids:"dunlin.io/owner"="Gateway/n1"`) +
			c.nbctl("--bare", "--columns=_uuid", "find", "NAT", `external_ids:"dunlin.io/owner"="Gateway/n1"`)
	}
	before := uuids()
	c.killController()
	c.startController()
	c.createGatewayNode("n5", 5, gatewayInfo(5).Marshal())
	c.expectNB("n5's gateway", []string{"show"}, `\(GR_n5\)`)
	if after := uuids(); after != before {
		t.Errorf("n1's router and NAT rows were replaced over a restart: %q -> %q", before, after)
	}
	for n, ip := range join {
		if got := c.joinIP(n); got != ip {
			t.Errorf("%s's join address changed over a restart: %s -> %s", n, ip, got)
		}
		if c.joinIP("n5") == ip {
			t.Errorf("n5 got %s's join address %s", n, ip)
		}
	}

	// An invalid edit keeps the router it has; removing the annotation removes it.
	c.setGatewayAnnotation("n3", `{"format":1}`)
	c.eventually(30*time.Second, "InvalidNodeGateway on n3 for the edit", func() error {
		evs, err := c.client.CoreV1().Events("").List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=n3,reason=InvalidNodeGateway"})
		if err != nil {
			return err
		}
		for _, ev := range evs.Items {
			if strings.Contains(ev.Message, "has no bridge") {
				return nil
			}
		}
		return fmt.Errorf("%d events, none about the missing bridge", len(evs.Items))
	})
	if got := c.ownedRows("Gateway/n3"); got != 15 {
		t.Errorf("n3 owns %d gateway rows after a bad edit, want its 15", got)
	}
	c.setGatewayAnnotation("n3", "")
	c.eventually(60*time.Second, "n3's router gone", func() error {
		if got := c.ownedRows("Gateway/n3"); got != 2 {
			return fmt.Errorf("n3 owns %d gateway rows, want its policies only", got)
		}
		return nil
	})

	// Deleting a node removes its router, ports, external switch, routes, NAT, policy and template
	// variable, and frees its join address for the next node.
	freed := join["n1"]
	if err := c.client.CoreV1().Nodes().Delete(context.Background(), "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.eventually(60*time.Second, "n1's gateway gone", func() error {
		if got := c.ownedRows("Gateway/n1"); got != 0 {
			return fmt.Errorf("n1 still owns %d gateway rows", got)
		}
		if out := c.nbctl("--bare", "--columns=chassis", "list", "Chassis_Template_Var"); strings.Contains(out, "chassis-1") {
			return fmt.Errorf("template variables %q", out)
		}
		return nil
	})
	c.expectNB("no n1 in NB", []string{"show"}, `!GR_n1`, `!ext_n1`, `!jtor-GR_n1`)
	c.createGatewayNode("n6", 6, gatewayInfo(6).Marshal())
	// The lowest free address goes first: n1's or n3's (released when its annotation went).
	c.eventually(60*time.Second, "n6 reuses a freed join address", func() error {
		if got := c.joinIP("n6"); got != freed && got != join["n3"] {
			return fmt.Errorf("n6 has %q, want one of the freed %s, %s", got, freed, join["n3"])
		}
		return nil
	})
	if a, b := c.joinIP("n6"), c.joinIP("bare"); a == b {
		t.Errorf("n6 and bare share %s", a)
	}
	c.noWarning("n5", "InvalidNodeGateway")
}

// serviceLBContent is every Service-owned load balancer as ovn-nbctl prints it, by name.
func (c *cluster) serviceLBContent() map[string]string {
	c.t.Helper()
	out := c.nbctl("--format=csv", "--data=bare", "--no-headings", "--columns=name,protocol,vips,options,external_ids", "list", "Load_Balancer")
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, _, ok := strings.Cut(line, ","); ok && strings.Contains(line, "dunlin.io/owner=Service/") {
			got[name] = line
		}
	}
	return got
}

// tableCounts counts the rows of the tables a gateway writes.
func (c *cluster) tableCounts() map[string]int {
	c.t.Helper()
	out := map[string]int{}
	for _, table := range []string{"Logical_Router", "Logical_Router_Port", "Logical_Switch", "Logical_Switch_Port",
		"Logical_Router_Static_Route", "Logical_Router_Policy", "NAT", "Chassis_Template_Var", "Load_Balancer", "Load_Balancer_Group"} {
		out[table] = len(strings.Fields(c.nbctl("--bare", "--columns=_uuid", "list", table)))
	}
	return out
}

// TestGatewayNodePortRowsIndependentOfNodes: the NB rows of 100 NodePort Services are the same with 2
// nodes and with 50; only the per-node rows grow.
func TestGatewayNodePortRowsIndependentOfNodes(t *testing.T) {
	c := newCluster(t)
	for i := 1; i <= 2; i++ {
		c.createGatewayNode(fmt.Sprintf("n%d", i), i, gatewayInfo(i).Marshal())
	}
	const services = 100
	for i := range services {
		name := fmt.Sprintf("np%d", i)
		c.createService(name, nodePortService(int32(30100+i), false))
		c.applySlice(name, name+"-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, fmt.Sprintf("10.244.1.%d", 10+i))
	}
	settled := func(nodes int) map[string]string {
		var lbs map[string]string
		c.eventually(3*time.Minute, fmt.Sprintf("%d Services on %d nodes", services, nodes), func() error {
			if got := len(strings.Fields(c.nbctl("--bare", "--columns=_uuid", "find", "Logical_Router", "options:lb_force_snat_ip=router_ip"))); got != nodes {
				return fmt.Errorf("%d gateway routers", got)
			}
			lbs = c.serviceLBContent()
			filled := 0
			for _, l := range lbs {
				if strings.Contains(l, ":8080") {
					filled++
				}
			}
			if filled != 2*services { // the ClusterIP and the NodePort template load balancer each
				return fmt.Errorf("%d of %d Service load balancers have their backend", filled, 2*services)
			}
			return nil
		})
		return lbs
	}
	few := settled(2)
	countsFew := c.tableCounts()
	for i := 3; i <= 50; i++ {
		c.createGatewayNode(fmt.Sprintf("n%d", i), i, gatewayInfo(i).Marshal())
	}
	many := settled(50)
	countsMany := c.tableCounts()
	if len(few) != 2*services+1 || !maps.Equal(few, many) { // and default/kubernetes
		t.Errorf("Service rows differ: %d with 2 nodes, %d with 50", len(few), len(many))
		for name, l := range few {
			if many[name] != l {
				t.Errorf("%s:\n  2 nodes: %s\n 50 nodes: %s", name, l, many[name])
				break
			}
		}
	}
	// Per node: GR, 2 router ports, ext switch, 3 ports, 4 routes, 2 policies, 1 NAT, 1 template variable,
	// plus the node's own switch, router port and 2 ports. Nothing else grows.
	perNode := map[string]int{"Logical_Router": 1, "Logical_Router_Port": 3, "Logical_Switch": 2, "Logical_Switch_Port": 5,
		"Logical_Router_Static_Route": 4, "Logical_Router_Policy": 2, "NAT": 1, "Chassis_Template_Var": 1}
	for table, n := range countsMany {
		if want := countsFew[table] + 48*perNode[table]; n != want {
			t.Errorf("%s: %d rows with 50 nodes, %d with 2, want %d", table, n, countsFew[table], want)
		}
	}
	t.Logf("rows with 2 nodes: %v\nrows with 50 nodes: %v", countsFew, countsMany)
}
