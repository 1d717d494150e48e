package nbstore_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// shapeSpecs are the production specs plus the row shapes the gateway and NetworkPolicy need: nameless
// rows (routes), big member sets (address sets, port groups), and keys held by several owners in one
// map column (template variables).
func shapeSpecs() map[string]nbstore.TableSpec {
	specs := translator.TableSpecs()
	specs["Logical_Router_Static_Route"] = nbstore.TableSpec{Keyed: true,
		Columns:     []string{"ip_prefix", "nexthop", "policy", "external_ids"},
		ParentTable: "Logical_Router", ParentColumn: "static_routes"}
	specs["Address_Set"] = nbstore.TableSpec{Columns: []string{"name", "external_ids"}, MemberColumns: []string{"addresses"}}
	specs["Port_Group"] = nbstore.TableSpec{Columns: []string{"name", "external_ids"}, MemberColumns: []string{"ports"}}
	specs["Chassis_Template_Var"] = nbstore.TableSpec{Keyed: true, Columns: []string{"chassis", "external_ids"},
		EntryColumns: []string{"variables"}}
	return specs
}

func TestStoreMovesPortToItsNewSwitch(t *testing.T) {
	e := newEnv(t)
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	e.mustApply(t, "Node/a", node("a", "10.244.1.0/24"))
	e.mustApply(t, "Node/b", node("b", "10.244.2.0/24"))
	pod := translator.PodNetwork{Namespace: "ns", Name: "web-6", UID: "u1", Node: "a", Addr: mustAddr("10.244.1.3"), IfaceIDVer: true}
	e.mustApply(t, "Pod/ns/web-6", translator.PodRows(pod))
	uuid := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Logical_Switch_Port", "name=ns_web-6")

	// The pod comes back on node b: its port moves, in one transaction of three operations (the
	// update of its columns, the drop from a, the insert into b).
	pod = translator.PodNetwork{Namespace: "ns", Name: "web-6", UID: "u2", Node: "b", Addr: mustAddr("10.244.2.3"), IfaceIDVer: true}
	if n := e.mustApply(t, "Pod/ns/web-6", translator.PodRows(pod)); n != 3 {
		t.Fatalf("moving the port sent %d operations, want 3", n)
	}
	if got := e.nbctl(t, "lsp-get-ls", "ns_web-6"); !strings.Contains(got, "(b)") {
		t.Fatalf("port on %q, want switch b", got)
	}
	if got := e.nbctl(t, "lsp-list", "a"); strings.Contains(got, "ns_web-6") {
		t.Fatalf("port still on a: %q", got)
	}
	if got := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Logical_Switch_Port", "name=ns_web-6"); got != uuid {
		t.Fatalf("port was recreated (%s -> %s), want moved", uuid, got)
	}
	if got := e.nbctl(t, "get", "Logical_Switch_Port", "ns_web-6", "options:requested-chassis", "options:iface-id-ver"); got != "b\nu2" {
		t.Fatalf("options %q", got)
	}
	if n := e.mustApply(t, "Pod/ns/web-6", translator.PodRows(pod)); n != 0 {
		t.Fatalf("idempotent plan after the move sent %d operations", n)
	}
}

func TestStoreKeyedRows(t *testing.T) {
	e := newEnvWith(t, shapeSpecs())
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	route := func(id, prefix, nexthop string) nbstore.Row {
		return nbstore.Row{ID: id, Model: &nbmodel.LogicalRouterStaticRoute{IPPrefix: prefix, Nexthop: nexthop},
			Parents: nbstore.In(translator.ClusterOwner, translator.ClusterRouter)}
	}
	rows := []nbstore.Row{route("default", "0.0.0.0/0", "100.64.0.2"), route("n1-subnet", "10.244.1.0/24", "100.64.0.3")}
	e.mustApply(t, "Node/n1", rows)
	if got := e.nbctl(t, "lr-route-list", translator.ClusterRouter); !strings.Contains(got, "0.0.0.0/0") || !strings.Contains(got, "10.244.1.0/24") {
		t.Fatalf("routes:\n%s", got)
	}
	if n := e.mustApply(t, "Node/n1", rows); n != 0 {
		t.Fatalf("idempotent plan sent %d operations", n)
	}
	// Identity is the ID, not the columns: a changed next hop is one update of the same row.
	rows[0] = route("default", "0.0.0.0/0", "100.64.0.9")
	if n := e.mustApply(t, "Node/n1", rows); n != 1 {
		t.Fatalf("next hop change sent %d operations, want 1", n)
	}
	if got := e.nbctl(t, "--bare", "--columns=nexthop", "find", "Logical_Router_Static_Route", "ip_prefix=\"0.0.0.0/0\""); got != "100.64.0.9" {
		t.Fatalf("next hop %q", got)
	}
	// Another owner's row with the same ID is its own; a foreign route is never touched.
	e.mustApply(t, "Node/n2", []nbstore.Row{route("default", "0.0.0.0/0", "100.64.0.4")})
	e.nbctl(t, "lr-route-add", translator.ClusterRouter, "192.0.2.0/24", "100.64.0.100")
	// A duplicate (a second writer's leftover) is deleted; the first row stays.
	dup := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Logical_Router_Static_Route", "ip_prefix=\"10.244.1.0/24\"")
	e.nbctl(t, "--id=@r", "create", "Logical_Router_Static_Route", "ip_prefix=10.244.1.0/24", "nexthop=100.64.0.3",
		`external_ids:"dunlin.io/owner"="Node/n1"`, `external_ids:"dunlin.io/id"="n1-subnet"`,
		"--", "add", "Logical_Router", translator.ClusterRouter, "static_routes", "@r")
	e.sync(t)
	e.mustApply(t, "Node/n1", rows[:1])
	if got := e.nbctl(t, "--bare", "--columns=ip_prefix", "find", "Logical_Router_Static_Route", `external_ids:"dunlin.io/owner"="Node/n1"`); got != "0.0.0.0/0" {
		t.Fatalf("n1 routes after dropping one and a duplicate: %q (first was %s)", got, dup)
	}
	e.mustApply(t, "Node/n1", nil)
	got := e.nbctl(t, "lr-route-list", translator.ClusterRouter)
	if !strings.Contains(got, "192.0.2.0/24") || !strings.Contains(got, "100.64.0.4") || strings.Count(got, "100.64.0.") != 2 {
		t.Fatalf("routes left:\n%s", got)
	}
}

// addresses returns n distinct IPv4 addresses.
func addresses(n int) []string {
	out := make([]string, n)
	for i := range n {
		out[i] = netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}).String()
	}
	return out
}

func TestStoreMemberSetOfFiveThousand(t *testing.T) {
	e := newEnvWith(t, shapeSpecs())
	set := func(addrs []string) []nbstore.Row {
		return []nbstore.Row{{Model: &nbmodel.AddressSet{Name: "a_policy_peers", Addresses: addrs}}}
	}
	addrs := addresses(5000)
	e.mustApply(t, "NetworkPolicy/ns/p", set(addrs))
	if n := e.mustApply(t, "NetworkPolicy/ns/p", set(addrs)); n != 0 {
		t.Fatalf("idempotent plan sent %d operations", n)
	}
	// One member more, one less, one swapped: each a single mutation.
	for name, next := range map[string][]string{
		"add":    append(slices.Clone(addrs), "10.245.0.1"),
		"remove": addrs[1:],
		"swap":   append(slices.Clone(addrs[1:]), "10.245.0.1"),
	} {
		e.mustApply(t, "NetworkPolicy/ns/p", set(addrs))
		txn := &nbstore.Txn{}
		if err := e.store.Plan(txn, "NetworkPolicy/ns/p", nbstore.Rows(set(next)...)); err != nil {
			t.Fatal(err)
		}
		if txn.Len() != 1 || txn.Ops[0].Op != "mutate" {
			t.Fatalf("%s: %d operations (%v), want one mutation", name, txn.Len(), txn.Ops)
		}
		if err := e.committer.Commit(context.Background(), txn); err != nil {
			t.Fatal(err)
		}
		got := e.nbctl(t, "--bare", "--columns=addresses", "list", "Address_Set", "a_policy_peers")
		if n := len(strings.Fields(got)); n != len(next) {
			t.Fatalf("%s: %d addresses in NB, want %d", name, n, len(next))
		}
	}
}

func TestStorePortGroupOfFiveThousandPorts(t *testing.T) {
	e := newEnvWith(t, shapeSpecs())
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	e.mustApply(t, "Node/n1", node("n1", "10.244.0.0/16"))
	var refs []nbstore.Ref
	txn := &nbstore.Txn{}
	for i := range 5001 {
		name := fmt.Sprintf("p%d", i)
		pod := translator.PodNetwork{Namespace: "ns", Name: name, UID: "u", Node: "n1",
			Addr: netip.AddrFrom4([4]byte{10, 244, byte(1 + i/250), byte(1 + i%250)})}
		if err := e.store.Plan(txn, "Pod/ns/"+name, nbstore.Rows(translator.PodRows(pod)...)); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, nbstore.Ref{Owner: "Pod/ns/" + name, Name: "ns_" + name})
		if txn.Len() >= 1000 {
			if err := e.committer.Commit(context.Background(), txn); err != nil {
				t.Fatal(err)
			}
			txn = &nbstore.Txn{}
		}
	}
	if err := e.committer.Commit(context.Background(), txn); err != nil {
		t.Fatal(err)
	}
	group := func(members []nbstore.Ref) []nbstore.Row {
		return []nbstore.Row{{Model: &nbmodel.PortGroup{Name: "pg_ns_p"}, Refs: map[string][]nbstore.Ref{"ports": members}}}
	}
	e.mustApply(t, "NetworkPolicy/ns/p", group(refs[:5000]))
	// A pod selected more or less is one mutation of the group, whatever its size.
	start := time.Now()
	if n := e.mustApply(t, "NetworkPolicy/ns/p", group(refs[1:])); n != 1 {
		t.Fatalf("swapping one member sent %d operations, want 1", n)
	}
	t.Logf("one member change of a 5,000-port group: planned and committed in %v", time.Since(start))
	if got := len(strings.Fields(e.nbctl(t, "--bare", "--columns=ports", "list", "Port_Group", "pg_ns_p"))); got != 5000 {
		t.Fatalf("port group has %d ports, want 5000", got)
	}
	// A member whose port is deleted leaves the group with it (a weak reference).
	e.mustApply(t, "Pod/ns/p1", nil)
	if got := len(strings.Fields(e.nbctl(t, "--bare", "--columns=ports", "list", "Port_Group", "pg_ns_p"))); got != 4999 {
		t.Fatalf("port group has %d ports after a port's deletion, want 4999", got)
	}
}

func TestStoreRowWithSeveralParents(t *testing.T) {
	e := newEnv(t)
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	proto := "tcp"
	parents := append(nbstore.In(translator.ClusterOwner, translator.ClusterLBGroup),
		nbstore.Parent{Ref: nbstore.Ref{Owner: translator.ClusterOwner, Name: translator.ClusterRouter}, Table: "Logical_Router", Column: "load_balancer"})
	lb := []nbstore.Row{{Model: &nbmodel.LoadBalancer{Name: "Service_default/web_TCP", Protocol: &proto,
		Vips: map[string]string{"10.96.0.10:80": "10.244.1.5:8080"}}, Parents: parents}}
	e.mustApply(t, "Service/default/web", lb)
	uuid := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Load_Balancer", "name=Service_default/web_TCP")
	if got := e.nbctl(t, "--bare", "--columns=load_balancer", "list", "Logical_Router", translator.ClusterRouter); got != uuid {
		t.Fatalf("router load_balancer %q, want %s", got, uuid)
	}
	if got := e.nbctl(t, "--bare", "--columns=load_balancer", "list", "Load_Balancer_Group", translator.ClusterLBGroup); got != uuid {
		t.Fatalf("group load_balancer %q, want %s", got, uuid)
	}
	e.nbctl(t, "clear", "Logical_Router", translator.ClusterRouter, "load_balancer")
	e.sync(t)
	if n := e.mustApply(t, "Service/default/web", lb); n != 1 {
		t.Fatalf("restoring one lost reference sent %d operations, want 1", n)
	}
	e.mustApply(t, "Service/default/web", nil)
	if got := e.nbctl(t, "--bare", "--columns=load_balancer", "list", "Logical_Router", translator.ClusterRouter); got != "" {
		t.Fatalf("router still references %q", got)
	}
}

// A root row dropped from one of its parents leaves that parent's reference column (it is not
// collected by the server) and keeps its other parents and its UUID; a foreign row holding it is left
// alone.
func TestStoreRootRowLeavesAParent(t *testing.T) {
	e := newEnv(t)
	e.mustApply(t, translator.ClusterOwner, append(translator.ClusterRows(), nbstore.Row{Model: &nbmodel.LoadBalancerGroup{Name: translator.RouterLBGroup}}))
	proto := "tcp"
	group := func(name string) nbstore.Parent {
		return nbstore.Parent{Ref: nbstore.Ref{Owner: translator.ClusterOwner, Name: name}}
	}
	router := nbstore.Parent{Ref: nbstore.Ref{Owner: translator.ClusterOwner, Name: translator.ClusterRouter}, Table: "Logical_Router", Column: "load_balancer"}
	lb := func(parents ...nbstore.Parent) []nbstore.Row {
		return []nbstore.Row{{Model: &nbmodel.LoadBalancer{Name: "Service_default/web_TCP_nodeport", Protocol: &proto,
			Vips: map[string]string{"10.96.0.10:80": "10.244.1.5:8080"}}, Parents: parents}}
	}
	e.mustApply(t, "Service/default/web", lb(group(translator.ClusterLBGroup), group(translator.RouterLBGroup), router))
	uuid := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Load_Balancer", "name=Service_default/web_TCP_nodeport")
	e.nbctl(t, "lr-add", "foreign", "--", "add", "Logical_Router", "foreign", "load_balancer", uuid)
	holds := func(table, row string) bool {
		return strings.Contains(e.nbctl(t, "--bare", "--columns=load_balancer", "list", table, row), uuid)
	}
	for _, h := range [][2]string{{"Load_Balancer_Group", translator.ClusterLBGroup}, {"Load_Balancer_Group", translator.RouterLBGroup}, {"Logical_Router", translator.ClusterRouter}} {
		if !holds(h[0], h[1]) {
			t.Fatalf("%s %s does not hold the load balancer", h[0], h[1])
		}
	}
	e.sync(t)

	// Out of the router group and the cluster router: one operation each, nothing else changes.
	if n := e.mustApply(t, "Service/default/web", lb(group(translator.ClusterLBGroup))); n != 2 {
		t.Errorf("leaving two parents sent %d operations, want 2", n)
	}
	if holds("Load_Balancer_Group", translator.RouterLBGroup) || holds("Logical_Router", translator.ClusterRouter) {
		t.Errorf("the load balancer is still in a parent it left")
	}
	if !holds("Load_Balancer_Group", translator.ClusterLBGroup) {
		t.Errorf("the load balancer left the group it kept")
	}
	if !holds("Logical_Router", "foreign") {
		t.Errorf("a foreign router's reference was removed")
	}
	if got := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Load_Balancer", "name=Service_default/web_TCP_nodeport"); got != uuid {
		t.Errorf("the load balancer was replaced: %s -> %s", uuid, got)
	}
	e.sync(t)
	if n := e.mustApply(t, "Service/default/web", lb(group(translator.ClusterLBGroup))); n != 0 {
		t.Errorf("planning again sent %d operations, want 0", n)
	}
	// And back into the router group.
	e.mustApply(t, "Service/default/web", lb(group(translator.ClusterLBGroup), group(translator.RouterLBGroup)))
	if !holds("Load_Balancer_Group", translator.RouterLBGroup) {
		t.Errorf("the load balancer did not come back into the router group")
	}
}

func TestStoreEntriesInASharedMap(t *testing.T) {
	e := newEnvWith(t, shapeSpecs())
	chassis := func(node string) nbstore.Row {
		return nbstore.Row{ID: "chassis", Model: &nbmodel.ChassisTemplateVar{Chassis: node}}
	}
	vars := func(owner, node string, values map[string]string) nbstore.Entries {
		return nbstore.Entries{Table: "Chassis_Template_Var", Column: "variables",
			Target: nbstore.Ref{Owner: "Node/" + node, Name: "chassis"}, Values: values}
	}
	// The node's own row, and its own variable, in one plan.
	e.mustApplyDesired(t, "Node/n1", nbstore.Desired{Rows: []nbstore.Row{chassis("n1")},
		Entries: []nbstore.Entries{vars("Node/n1", "n1", map[string]string{"NODEIP": "192.0.2.11"})}})
	// Services hold keys of their own in it.
	e.mustApplyDesired(t, "Service/default/a", nbstore.Desired{Entries: []nbstore.Entries{vars("", "n1", map[string]string{"A_BACKENDS": "10.244.1.5:80"})}})
	e.mustApplyDesired(t, "Service/default/b", nbstore.Desired{Entries: []nbstore.Entries{vars("", "n1", map[string]string{"B_BACKENDS": "10.244.1.6:80"})}})
	variables := func() string {
		return e.nbctl(t, "--bare", "--columns=variables", "find", "Chassis_Template_Var", "chassis=n1")
	}
	if got := variables(); got != "A_BACKENDS=10.244.1.5:80 B_BACKENDS=10.244.1.6:80 NODEIP=192.0.2.11" {
		t.Fatalf("variables %q", got)
	}
	// The row owner's own plan keeps the others' keys and records.
	if n := e.mustApplyDesired(t, "Node/n1", nbstore.Desired{Rows: []nbstore.Row{chassis("n1")},
		Entries: []nbstore.Entries{vars("Node/n1", "n1", map[string]string{"NODEIP": "192.0.2.11"})}}); n != 0 {
		t.Fatalf("idempotent plan of the row's owner sent %d operations", n)
	}
	// A changed value is one mutation, and touches no other key.
	if n := e.mustApplyDesired(t, "Service/default/a", nbstore.Desired{Entries: []nbstore.Entries{vars("", "n1", map[string]string{"A_BACKENDS": "10.244.1.7:80"})}}); n != 1 {
		t.Fatalf("value change sent %d operations, want 1", n)
	}
	// A key nobody recorded (an operator's) is not overwritten.
	e.nbctl(t, "set", "Chassis_Template_Var", e.nbctl(t, "--bare", "--columns=_uuid", "find", "Chassis_Template_Var", "chassis=n1"), "variables:MANUAL=1")
	e.sync(t)
	var conflict *nbstore.ConflictError
	if _, err := e.applyDesired(t, "Service/default/c", nbstore.Desired{Entries: []nbstore.Entries{vars("", "n1", map[string]string{"MANUAL": "2"})}}); err == nil || !asConflict(err, &conflict) {
		t.Fatalf("overwriting an unowned key: err = %v, want a conflict", err)
	}
	// A Service gone while no controller ran is found by the owner scan, and its keys removed.
	owners, _ := e.store.Owners()
	if !owners["Service/default/b"] {
		t.Fatalf("owners %v lack the holder of entries", owners)
	}
	e.mustApplyDesired(t, "Service/default/b", nbstore.Desired{})
	if got := variables(); got != "A_BACKENDS=10.244.1.7:80 MANUAL=1 NODEIP=192.0.2.11" {
		t.Fatalf("variables after a holder left: %q", got)
	}
	if ids := e.nbctl(t, "--bare", "--columns=external_ids", "find", "Chassis_Template_Var", "chassis=n1"); strings.Contains(ids, "default/b") {
		t.Fatalf("record of a holder that left: %q", ids)
	}
}
