package integration

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// checkConverged returns nil when NB holds exactly the rows Dunlin's mapping gives for the nodes, pods,
// Services and EndpointSlices in the API, whole rows compared (each port's switch, addresses,
// port_security, options and external_ids; switches' other_config and load balancer groups; router
// ports; load balancers' VIPs, options and attachments) and no other row of Dunlin's; else the first
// difference (see harness.OVN.CheckConverged). nodes are exactly the nodes that must have a switch;
// nil leaves that to the API. Call it through c.eventually: NB converges after the API.
func (c *cluster) checkConverged(nodes []string) error {
	o, err := harness.ConvergeOptionsFromFlags(c.flags)
	if err != nil {
		return err
	}
	o.Nodes = nodes
	return c.ovn.CheckConverged(context.Background(), c.client, o)
}

// The convergence check itself: each kind of difference Dunlin's rows can have from the mapping is
// reported, by row and column or reference, and repairing it makes the check pass again.
func TestConvergeCheckSeesDifferences(t *testing.T) {
	c := newCluster(t)
	nodes := []string{"n1", "n2"}
	for _, n := range nodes {
		c.createNode(n)
	}
	label := func(v string) func(*corev1.Pod) {
		return func(p *corev1.Pod) { p.Labels = map[string]string{"pod": v} }
	}
	c.createPod("default", "p1", "n1", label("a"))
	c.createPod("default", "p2", "n2", label("b"))
	c.createPolicy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "allow-b"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}}}},
			}},
		}})
	c.createService("web")
	c.applySlice("web", "web-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, "10.244.0.5")
	c.createService("local", func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	})
	c.eventually(converge, "first convergence", func() error { return c.checkConverged(nodes) })
	// Nothing repairs NB behind the test's back from here.
	c.stopController()

	get := func(table, row, column string) string { return c.nbctl("get", table, row, column) }
	uuid := func(table, name string) string {
		return c.nbctl("--bare", "--columns=_uuid", "find", table, "name="+name)
	}
	p1, web, group := uuid("Logical_Switch_Port", "default_p1"), uuid("Load_Balancer", "Service_default/web_TCP"), uuid("Load_Balancer_Group", "dunlin-cluster")
	localN2 := uuid("Load_Balancer", "Service_default/local_TCP_node_n2")
	denyACL := c.nbctl("--bare", "--columns=_uuid", "find", "ACL", "external_ids:dunlin.io/owner=PolicyNamespace/default", "external_ids:dunlin.io/id=ingress/deny")
	var peerSet string
	for _, name := range strings.Fields(c.nbctl("--bare", "--columns=name", "list", "Address_Set")) {
		if strings.HasPrefix(name, "peer.") {
			peerSet = name
		}
	}
	peerAddrs := get("Address_Set", peerSet, "addresses")
	addresses, otherConfig, vips, networks := get("Logical_Switch_Port", "default_p1", "addresses"),
		get("Logical_Switch", "n1", "other_config"), get("Load_Balancer", web, "vips"), get("Logical_Router_Port", "rtos-n1", "networks")
	for _, tc := range []struct {
		what           string
		tamper, repair [][]string
		want           string
	}{
		{"a port's addresses",
			[][]string{{"set", "Logical_Switch_Port", "default_p1", `addresses="0a:58:0a:f4:00:63 10.244.0.99"`}},
			[][]string{{"set", "Logical_Switch_Port", "default_p1", "addresses=" + addresses}},
			"Logical_Switch_Port default_p1 (owner Pod/default/p1): column addresses: want"},
		{"a port's port_security",
			[][]string{{"clear", "Logical_Switch_Port", "default_p1", "port_security"}},
			[][]string{{"set", "Logical_Switch_Port", "default_p1", "port_security=" + addresses}},
			"Logical_Switch_Port default_p1 (owner Pod/default/p1): column port_security: want"},
		{"a port's options",
			[][]string{{"set", "Logical_Switch_Port", "default_p1", "options:requested-chassis=n2"}},
			[][]string{{"set", "Logical_Switch_Port", "default_p1", "options:requested-chassis=n1"}},
			`"requested-chassis":"n1"}, got {`},
		{"a port's owner",
			[][]string{{"set", "Logical_Switch_Port", "default_p1", "external_ids:dunlin.io/owner=Pod/default/p2"}},
			[][]string{{"set", "Logical_Switch_Port", "default_p1", "external_ids:dunlin.io/owner=Pod/default/p1"}},
			"Logical_Switch_Port default_p1 (owner Pod/default/p1): column external_ids"},
		{"a port on another switch",
			[][]string{{"remove", "Logical_Switch", "n1", "ports", p1, "--", "add", "Logical_Switch", "n2", "ports", p1}},
			[][]string{{"remove", "Logical_Switch", "n2", "ports", p1, "--", "add", "Logical_Switch", "n1", "ports", p1}},
			"Logical_Switch n1 (owner Node/n1): references in column ports"},
		{"a switch's other_config",
			[][]string{{"remove", "Logical_Switch", "n1", "other_config", "exclude_ips"}},
			[][]string{{"set", "Logical_Switch", "n1", "other_config=" + otherConfig}},
			"Logical_Switch n1 (owner Node/n1): column other_config"},
		{"a switch without the cluster's load balancer group",
			[][]string{{"clear", "Logical_Switch", "n1", "load_balancer_group"}},
			[][]string{{"add", "Logical_Switch", "n1", "load_balancer_group", group}},
			`Logical_Switch n1 (owner Node/n1): references in column load_balancer_group: want ["Load_Balancer_Group dunlin-cluster"], got []`},
		{"a load balancer out of its group",
			[][]string{{"remove", "Load_Balancer_Group", group, "load_balancer", web}},
			[][]string{{"add", "Load_Balancer_Group", group, "load_balancer", web}},
			"Load_Balancer_Group dunlin-cluster (owner Cluster/dunlin): references in column load_balancer"},
		{"a load balancer on a switch besides its group",
			[][]string{{"ls-lb-add", "n1", web}},
			[][]string{{"ls-lb-del", "n1", web}},
			`Logical_Switch n1 (owner Node/n1): references in column load_balancer: want ["Load_Balancer Service_default/local_TCP_node_n1"], ` +
				`got ["Load_Balancer Service_default/local_TCP_node_n1" "Load_Balancer Service_default/web_TCP"]`},
		{"a node-local load balancer on the wrong switch",
			[][]string{{"remove", "Logical_Switch", "n2", "load_balancer", localN2, "--", "add", "Logical_Switch", "n1", "load_balancer", localN2}},
			[][]string{{"remove", "Logical_Switch", "n1", "load_balancer", localN2, "--", "add", "Logical_Switch", "n2", "load_balancer", localN2}},
			"Logical_Switch n1 (owner Node/n1): references in column load_balancer"},
		{"a load balancer's VIPs",
			[][]string{{"clear", "Load_Balancer", web, "vips"}},
			[][]string{{"set", "Load_Balancer", web, "vips=" + vips}},
			"Load_Balancer Service_default/web_TCP (owner Service/default/web): column vips"},
		{"a load balancer's options",
			[][]string{{"remove", "Load_Balancer", web, "options", "reject"}},
			[][]string{{"set", "Load_Balancer", web, "options:reject=true"}},
			"Load_Balancer Service_default/web_TCP (owner Service/default/web): column options"},
		{"a router port's networks",
			[][]string{{"set", "Logical_Router_Port", "rtos-n1", `networks="10.244.9.1/24"`}},
			[][]string{{"set", "Logical_Router_Port", "rtos-n1", "networks=" + networks}},
			"Logical_Router_Port rtos-n1 (owner Node/n1): column networks"},
		{"a port out of a policy's port group",
			[][]string{{"remove", "Port_Group", "np.default.allow_b", "ports", p1}},
			[][]string{{"add", "Port_Group", "np.default.allow_b", "ports", p1}},
			"Port_Group np.default.allow_b (owner NetworkPolicy/default/allow-b): references in column ports"},
		{"a default deny's match",
			[][]string{{"set", "ACL", denyACL, `match="ip4"`}},
			[][]string{{"set", "ACL", denyACL, `match="outport == @deny_in.default && ip"`}},
			"ACL PolicyNamespace/default ingress/deny (owner PolicyNamespace/default): column match"},
		{"a peer's addresses",
			[][]string{{"clear", "Address_Set", peerSet, "addresses"}},
			[][]string{{"set", "Address_Set", peerSet, "addresses=" + peerAddrs}},
			"Address_Set " + peerSet + " (owner PolicyPeer/"},
		{"a row of Dunlin's that nothing maps to",
			[][]string{{"lsp-add", "n1", "default_ghost", "--", "set", "Logical_Switch_Port", "default_ghost", "external_ids:dunlin.io/owner=Pod/default/ghost"}},
			[][]string{{"lsp-del", "default_ghost"}},
			"Logical_Switch_Port default_ghost (owner Pod/default/ghost): exists, but nothing in the API maps to it"},
	} {
		for _, args := range tc.tamper {
			c.nbctl(args...)
		}
		err := c.checkConverged(nodes)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.what, err, tc.want)
		} else {
			t.Logf("%s: %v", tc.what, err)
		}
		for _, args := range tc.repair {
			c.nbctl(args...)
		}
		if err := c.checkConverged(nodes); err != nil {
			t.Fatalf("after repairing %s: %v", tc.what, err)
		}
	}

	// Rows that are not Dunlin's do not count.
	c.nbctl("ls-add", "foreign", "--", "lsp-add", "foreign", "vm1", "--", "lb-add", "foreign-lb", "192.0.2.1:80", "192.0.2.10:80")
	if err := c.checkConverged(nodes); err != nil {
		t.Fatalf("with foreign rows: %v", err)
	}
	// The node list is checked, and a missing row is one.
	if err := c.checkConverged([]string{"n1"}); err == nil || !strings.Contains(err.Error(), "nodes with a subnet: [n1 n2], want [n1]") {
		t.Errorf("with a node too many: %v", err)
	}
	c.nbctl("lsp-del", "default_p2")
	if err := c.checkConverged(nodes); err == nil || !strings.Contains(err.Error(), "Logical_Switch_Port default_p2 (owner Pod/default/p2): missing") {
		t.Errorf("with a port missing: %v", err)
	}
	c.startController()
	c.eventually(converge, "the controller restores the port", func() error { return c.checkConverged(nodes) })
}
