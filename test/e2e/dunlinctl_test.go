package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// ctl runs the dunlinctl binary as an operator would, with the cluster's kubeconfig: NB and SB come
// from the dunlin-config ConfigMap unless args say otherwise. It returns stdout, and an error with
// stderr when it failed.
func (e *env) ctl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.Ctl, append([]string{"--kubeconfig", e.c.Kube.Kubeconfig}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("dunlinctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (e *env) mustCtl(args ...string) string {
	e.t.Helper()
	out, err := e.ctl(args...)
	if err != nil {
		e.t.Fatalf("%v\n%s", err, out)
	}
	e.t.Logf("$ dunlinctl %s\n%s", strings.Join(args, " "), out)
	return out
}

func (e *env) ctlJSON(v any, args ...string) {
	e.t.Helper()
	out, err := e.ctl(append(args, "-o", "json")...)
	if err != nil {
		e.t.Fatalf("%v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		e.t.Fatalf("dunlinctl %v -o json: %v\n%s", args, err, out)
	}
}

func contains(t *testing.T, what, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("%s has no %q:\n%s", what, w, out)
		}
	}
}

// TestDunlinctl runs dunlinctl against a whole cluster with gateways: status, show, trace (pod to
// pod, to a Service, to a pod a NetworkPolicy isolates, to the outside), clear errors for unreachable
// databases and apiserver, and uninstall on an NB shared with another owner's rows.
func TestDunlinctl(t *testing.T) {
	e := newClusterEnv(t, harness.ClusterOptions{Nodes: 2, Gateway: true, ControllerManager: true})
	ctx := context.Background()
	n1, n2 := e.c.Nodes[0], e.c.Nodes[1]
	// The ConfigMap of deploy/dunlin-controller.yaml, where dunlinctl finds NB and SB by default.
	if _, err := e.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "dunlin-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CoreV1().ConfigMaps("dunlin-system").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "dunlin-config"},
		Data:       map[string]string{"nb-address": e.c.OVN.NBAddr, "sb-address": e.c.OVN.SBAddr, "nb-ca-cert": ""},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "locked"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	http := []corev1.ContainerPort{{ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}
	e.createPodWith("default", "client", n1.Name, map[string]string{"app": "client"}, http...)
	e.createPodWith("default", "web", n2.Name, map[string]string{"app": "web"}, http...)
	e.createPodWith("locked", "db", n2.Name, map[string]string{"app": "db"}, http...)
	e.createService("default", "web", map[string]string{"app": "web"},
		[]corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}, nil)
	e.createService("default", "front", map[string]string{"app": "web"},
		[]corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}, nil)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "locked", Name: "deny-all"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if _, err := e.client.NetworkingV1().NetworkPolicies("locked").Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range [][2]string{{"default", "client"}, {"default", "web"}, {"locked", "db"}} {
		e.running(p[0], p[1])
	}
	e.waitBackends("default", "web", "TCP", 1)
	e.waitBackends("default", "front", "TCP", 1)
	e.converged()
	// Traffic to the outside has GR_node1 learn the next hop's MAC (a MAC_Binding): ovn-trace cannot
	// resolve addresses, and stops at the ARP request without one.
	_, clientSB := e.running("default", "client")
	if err := ping(clientSB, harness.OutsideIP); err != nil {
		t.Fatal(err)
	}

	t.Run("status", func(t *testing.T) { e.ctlStatus(t) })
	t.Run("show", func(t *testing.T) { e.ctlShow(t, n1) })
	t.Run("trace", func(t *testing.T) { e.ctlTrace(t, n1) })
	t.Run("unreachable", func(t *testing.T) { e.ctlUnreachable(t) })
	t.Run("uninstall", func(t *testing.T) { e.ctlUninstall(t, n2) })
}

func (e *env) ctlStatus(t *testing.T) {
	// A chassis of another cloud, removed again before anything waits for every chassis (--wait=hv).
	if _, err := e.c.OVN.SBCtl("chassis-add", "openstack-hv1", "geneve", "192.0.2.50"); err != nil {
		t.Fatal(err)
	}
	out := e.mustCtl("status")
	if _, err := e.c.OVN.SBCtl("chassis-del", "openstack-hv1"); err != nil {
		t.Fatal(err)
	}
	contains(t, "status", out, "ovn-northd: active", "node1", "node2", "geneve", "last full sync",
		"CHASSIS WITHOUT A NODE", "openstack-hv1")
	var s struct {
		NB, SB struct {
			Reachable     bool
			SchemaVersion string
		}
		Northd struct{ Active bool }
		Nodes  []struct {
			Name    string
			Chassis *struct {
				Name       string
				Encaps     []string
				BoundPorts int
			}
			Gateway bool
		}
		Problems []string
	}
	e.ctlJSON(&s, "status")
	if !s.NB.Reachable || !s.SB.Reachable || s.NB.SchemaVersion == "" || !s.Northd.Active || len(s.Problems) > 0 {
		t.Errorf("status: %+v", s)
	}
	if len(s.Nodes) != 2 {
		t.Fatalf("status nodes: %+v", s.Nodes)
	}
	for _, n := range s.Nodes {
		// Each node binds its management port and its pods.
		if n.Chassis == nil || n.Chassis.Name != n.Name || n.Chassis.BoundPorts < 2 || !n.Gateway ||
			len(n.Chassis.Encaps) != 1 || !strings.HasPrefix(n.Chassis.Encaps[0], "geneve ") {
			t.Errorf("status of node %s: %+v %+v", n.Name, n, n.Chassis)
		}
	}
}

func (e *env) ctlShow(t *testing.T, n1 *harness.ClusterNode) {
	out := e.mustCtl("show", "pod", "client", "--ovs", n1.OVSDB)
	contains(t, "show pod", out, "dunlin.io/pod-network", "Logical_Switch_Port", "default_client", "Pod/default/client",
		"SB PORT BINDING", n1.Name, "OVS INTERFACE", "iface-id=default_client")
	var p struct {
		NBRows []struct{ Table, Name, Owner string }
		SB     struct {
			Chassis string
			Up      bool
		}
		OVS struct{ ExternalIDs map[string]string }
	}
	e.ctlJSON(&p, "show", "pod", "default/client", "--ovs", n1.OVSDB)
	if len(p.NBRows) != 1 || p.NBRows[0].Table != "Logical_Switch_Port" || p.SB.Chassis != n1.Name || !p.SB.Up ||
		p.OVS.ExternalIDs["iface-id"] != "default_client" || p.OVS.ExternalIDs["ovn-installed"] != "true" {
		t.Errorf("show pod -o json: %+v", p)
	}
	out = e.mustCtl("show", "node", n1.Name)
	contains(t, "show node", out, "Logical_Switch ", "rtos-"+n1.Name, "GR_"+n1.Name, "Gateway/"+n1.Name, "SB CHASSIS", "dunlin.io/node-gateway")
	out = e.mustCtl("show", "service", "web")
	contains(t, "show service", out, "Service_default/web_TCP", "Service/default/web", ":8080", "SB LOAD BALANCERS")
}

func (e *env) ctlTrace(t *testing.T, n1 *harness.ClusterNode) {
	out := e.mustCtl("trace", "default/client", "default/web", "--port", "8080")
	contains(t, "trace pod to pod", out, "verdict: delivered to pod default/web (port default_web")
	out = e.mustCtl("trace", "default/client", "svc/default/web")
	contains(t, "trace pod to Service", out, "verdict: delivered to pod default/web", "load balancer",
		"Service default/web (Service_default/web_TCP)", "chose ", "(pod default/web)")
	// NS/NAME that is no pod is a Service.
	out = e.mustCtl("trace", "default/client", "default/front")
	contains(t, "trace pod to NS/NAME of a Service", out, "-> Service default/front", "Service default/front (Service_default/front_TCP)",
		"verdict: delivered to pod default/web")
	out = e.mustCtl("trace", "default/client", "locked/db", "--port", "8080")
	contains(t, "trace to an isolated pod", out, "verdict: dropped:", "NetworkPolicy", "namespace locked default deny",
		"pod locked/db isolated by NetworkPolicy locked/deny-all")
	out = e.mustCtl("trace", "default/client", harness.OutsideIP+":9/udp")
	contains(t, "trace to the outside", out, "gateway router", "GR_"+n1.Name, "SNAT", "source rewritten to "+n1.EncapIP,
		"verdict: leaves the cluster network through br-ex_"+n1.Name)
	contains(t, "show service", e.mustCtl("show", "service", "web"), "on 2 datapaths") // the node switches
	e.mustCtl("trace", "default/client", harness.OutsideIP+":9/udp", "--raw")
	e.mustCtl("trace", "default/client", "svc/default/web", "--raw")
	raw := e.mustCtl("trace", "default/client", "default/web", "--raw")
	contains(t, "trace --raw", raw, `ingress(dp="`+n1.Name+`", inport="default_client")`)
	var tr struct {
		Delivered bool
		Verdict   string
		Stages    []struct{ Kind, Detail string }
	}
	e.ctlJSON(&tr, "trace", "default/client", "svc/default/web")
	if !tr.Delivered || len(tr.Stages) == 0 || tr.Stages[0].Kind != "load balancer" {
		t.Errorf("trace -o json: %+v", tr)
	}
}

func (e *env) ctlUnreachable(t *testing.T) {
	// Nothing listens there: a refused connection, named in one line.
	start := time.Now()
	_, err := e.ctl("status", "--nb", "tcp:127.0.0.1:1", "--timeout", "2s")
	if err == nil || !strings.Contains(err.Error(), "NB tcp:127.0.0.1:1 unreachable") || strings.Count(err.Error(), "\n") > 0 {
		t.Errorf("status with NB unreachable: %v", err)
	}
	t.Logf("NB unreachable reported in %s: %v", time.Since(start).Round(time.Millisecond), err)
	_, err = e.ctl("trace", "default/client", "default/web", "--sb", "unix:/nonexistent/sb.sock", "--timeout", "2s")
	if err == nil || !strings.Contains(err.Error(), "SB unix:/nonexistent/sb.sock unreachable") {
		t.Errorf("trace with SB unreachable: %v", err)
	}
	kubeconfig := filepath.Join(e.c.Dir, "unreachable.kubeconfig")
	cfg := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\n" +
		"contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {token: x}}]\n"
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = e.ctl("show", "pod", "client", "--kubeconfig", kubeconfig, "--timeout", "2s")
	if err == nil || !strings.Contains(err.Error(), "apiserver https://127.0.0.1:1 unreachable") {
		t.Errorf("show with the apiserver unreachable: %v", err)
	}
}

// nbDump is every row of some NB tables as `ovn-nbctl --format=json list` prints it, by table and
// UUID, each row its JSON text.
func (e *env) nbDump(tables ...string) map[string]map[string]string {
	e.t.Helper()
	out := map[string]map[string]string{}
	for _, table := range tables {
		var l struct {
			Headings []string
			Data     [][]json.RawMessage
		}
		if err := json.Unmarshal([]byte(e.nbctl("--format=json", "list", table)), &l); err != nil {
			e.t.Fatal(err)
		}
		out[table] = map[string]string{}
		for _, row := range l.Data {
			var uuid []string
			if err := json.Unmarshal(row[0], &uuid); err != nil || l.Headings[0] != "_uuid" {
				e.t.Fatalf("%s: unexpected row %s", table, row[0])
			}
			b, _ := json.Marshal(row)
			out[table][uuid[1]] = string(b)
		}
	}
	return out
}

// owned reports whether a dumped row carries external_ids:dunlin.io/owner.
func owned(row string) bool { return strings.Contains(row, `["dunlin.io/owner",`) }

var uninstallTables = []string{"Logical_Switch", "Logical_Switch_Port", "Logical_Router", "Logical_Router_Port",
	"Logical_Router_Static_Route", "Logical_Router_Policy", "NAT", "Load_Balancer", "Load_Balancer_Group", "ACL",
	"Address_Set", "Port_Group", "Meter", "Meter_Band", "Chassis_Template_Var"}

func (e *env) ctlUninstall(t *testing.T, n2 *harness.ClusterNode) {
	// Another owner's rows, as OpenStack's Neutron would have them, one port on a Dunlin node switch.
	e.nbctl("--wait=sb",
		"ls-add", "neutron-net1", "--", "set", "Logical_Switch", "neutron-net1", `external_ids:"neutron:network_name"=net1`, "other_config:mcast_snoop=true",
		"--", "lsp-add", "neutron-net1", "neutron-port1", "--", "lsp-set-addresses", "neutron-port1", "fa:16:3e:00:00:01 192.168.10.5",
		"--", "set", "Logical_Switch_Port", "neutron-port1", `external_ids:"neutron:device_owner"="compute:nova"`,
		"--", "lr-add", "neutron-router1", "--", "set", "Logical_Router", "neutron-router1", `external_ids:"neutron:router_name"=r1`,
		"--", "lrp-add", "neutron-router1", "lrp-neutron1", "fa:16:3e:00:00:02", "192.168.10.1/24",
		"--", "acl-add", "neutron-net1", "from-lport", "1001", `inport == "neutron-port1" && ip4`, "allow-related",
		"--", "pg-add", "neutron_pg_drop", "neutron-port1",
		"--", "--type=port-group", "acl-add", "neutron_pg_drop", "to-lport", "1001", "outport == @neutron_pg_drop && ip4", "drop",
		"--", "create", "Address_Set", "name=neutron_as1", "addresses=192.168.10.5", `external_ids:"neutron:security_group_id"=sg1`,
		"--", "lsp-add", n2.Name, "neutron-on-dunlin",
		"--", "set", "NB_Global", ".", `external_ids:"neutron:liveness_check_at"=2026-01-01`, "options:foreign=1")
	e.nbctl("lb-add", "neutron-lb1", "192.168.10.100:80", "192.168.10.5:80", "tcp")
	e.nbctl("--wait=sb", "ls-lb-add", "neutron-net1", "neutron-lb1")
	// Uninstall is for a stopped controller (it would write its rows again).
	if err := e.c.Controller.Stop(); err != nil {
		t.Fatal(err)
	}
	before := e.nbDump(uninstallTables...)
	global := e.nbDump("NB_Global")
	// Keys an owner holds in a row of another (nbstore Entries), added after the dump: they must go.
	e.nbctl("set", "Logical_Switch", "neutron-net1", "other_config:dunlin-held=1",
		`external_ids:"dunlin.io/entries:other_config:Service/default/web"=dunlin-held`)

	var plan struct {
		Delete, Kept []struct{ Table, Name string }
	}
	e.ctlJSON(&plan, "uninstall")
	if len(plan.Delete) < 20 || len(plan.Kept) != 1 || plan.Kept[0].Table != "Logical_Switch" || plan.Kept[0].Name != n2.Name {
		t.Errorf("uninstall dry run: %d to delete, kept %+v", len(plan.Delete), plan.Kept)
	}
	mid := e.nbDump(uninstallTables...)
	out := e.mustCtl("uninstall")
	contains(t, "uninstall dry run", out, "would delete", "dry run: nothing was changed")
	if got := e.nbDump(uninstallTables...); fmt.Sprint(got) != fmt.Sprint(mid) {
		t.Errorf("the dry run changed NB")
	}

	out = e.mustCtl("uninstall", "--yes")
	contains(t, "uninstall", out, fmt.Sprintf("deleted %d NB rows", len(plan.Delete)))
	after := e.nbDump(uninstallTables...)
	for table, rows := range before {
		for uuid, row := range rows {
			if owned(row) || (table == "Load_Balancer_Group" && strings.Contains(row, `"dunlin-`)) {
				continue
			}
			if after[table][uuid] != row {
				t.Errorf("%s %s changed:\nbefore %s\nafter  %s", table, uuid, row, after[table][uuid])
			}
		}
	}
	for table, rows := range after {
		for uuid, row := range rows {
			if table == "Logical_Switch" && strings.Contains(row, `"`+n2.Name+`"`) {
				// Kept: it holds neutron-on-dunlin, and now nothing else.
				if !strings.Contains(row, `["dunlin.io/owner","Node/`+n2.Name+`"]`) || strings.Count(row, `["uuid",`) != 2 {
					t.Errorf("kept switch %s: %s", n2.Name, row)
				}
				continue
			}
			if owned(row) || (table == "Load_Balancer_Group" && strings.Contains(row, `"dunlin-`)) {
				t.Errorf("Dunlin's %s %s is left: %s", table, uuid, row)
			}
		}
	}
	globalAfter := e.nbDump("NB_Global")["NB_Global"]
	for uuid, row := range global["NB_Global"] {
		if strings.Contains(globalAfter[uuid], "dunlin.io/") || !strings.Contains(globalAfter[uuid], `["neutron:liveness_check_at","2026-01-01"]`) ||
			!strings.Contains(globalAfter[uuid], `["foreign","1"]`) {
			t.Errorf("NB_Global:\nbefore %s\nafter  %s", row, globalAfter[uuid])
		}
	}
	out = e.mustCtl("uninstall", "--yes")
	contains(t, "uninstall again", out, "deleted 0 NB rows")
}
