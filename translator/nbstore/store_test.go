package nbstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// env is a real NB ovsdb-server with a connected store.
type env struct {
	ovn       *harness.OVN
	nb        client.Client
	store     *nbstore.Store
	committer *nbstore.Committer
}

func newEnv(t *testing.T) *env {
	return newEnvWith(t, translator.TableSpecs())
}

// newEnvWith is newEnv managing the tables of specs.
func newEnvWith(t *testing.T, specs map[string]nbstore.TableSpec) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{ovn: harness.StartTestOVN(ctx, t)}
	e.nb, e.store = connectStore(ctx, t, e.ovn.NBAddr, specs)
	e.committer = nbstore.NewCommitter(e.nb, 1000, 10*time.Second, nbstore.NewMetrics(prometheus.NewRegistry()))
	go e.committer.Run(ctx)
	return e
}

// connectStore connects a client monitoring the tables of specs and returns it with its store.
func connectStore(ctx context.Context, t testing.TB, addr string, specs map[string]nbstore.TableSpec) (client.Client, *nbstore.Store) {
	t.Helper()
	base, err := nbmodel.FullDatabaseModel()
	if err != nil {
		t.Fatal(err)
	}
	schema := nbmodel.Schema()
	dbModel, err := nbstore.ClientDBModel(base, schema, specs)
	if err != nil {
		t.Fatal(err)
	}
	nb, err := translator.ConnectNBTables(ctx, addr, nil, dbModel, specs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nb.Close)
	store, err := nbstore.New(nb, dbModel, schema, specs)
	if err != nil {
		t.Fatal(err)
	}
	return nb, store
}

func (e *env) nbctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.ovn.NBCtl(args...)
	if err != nil {
		t.Fatalf("ovn-nbctl %v: %v", args, err)
	}
	return out
}

// apply plans and commits; it returns the number of operations it sent.
func (e *env) apply(t *testing.T, owner string, rows []nbstore.Row) (int, error) {
	t.Helper()
	return e.applyDesired(t, owner, nbstore.Rows(rows...))
}

// applyDesired plans and commits; it returns the number of operations it sent.
func (e *env) applyDesired(t *testing.T, owner string, want nbstore.Desired) (int, error) {
	t.Helper()
	txn := &nbstore.Txn{}
	if err := e.store.Plan(txn, owner, want); err != nil {
		return 0, err
	}
	return txn.Len(), e.committer.Commit(context.Background(), txn)
}

func (e *env) mustApply(t *testing.T, owner string, rows []nbstore.Row) int {
	t.Helper()
	n, err := e.apply(t, owner, rows)
	if err != nil {
		t.Fatalf("apply %s: %v", owner, err)
	}
	return n
}

func node(name, subnet string) []nbstore.Row {
	return translator.NodeRows(translator.NodeNetwork{Name: name, Subnet: mustPrefix(subnet)})
}

func TestStoreCreateUpdateDelete(t *testing.T) {
	e := newEnv(t)
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	e.mustApply(t, "Node/n1", node("n1", "10.244.1.0/24"))
	pod := translator.PodNetwork{Namespace: "default", Name: "web", UID: "u1", Node: "n1", Addr: mustAddr("10.244.1.3")}
	e.mustApply(t, "Pod/default/web", translator.PodRows(pod))

	if got := e.nbctl(t, "lsp-get-addresses", "default_web"); got != "0a:58:0a:f4:01:03 10.244.1.3" {
		t.Fatalf("addresses = %q", got)
	}
	if got := e.nbctl(t, "lsp-get-ls", "default_web"); !strings.Contains(got, "(n1)") {
		t.Fatalf("pod port sits on %q, want switch n1", got)
	}
	if got := e.nbctl(t, "lrp-get-gateway-chassis", "rtos-n1"); got != "" {
		t.Fatalf("unexpected gateway chassis %q", got)
	}
	if got := e.nbctl(t, "get", "Logical_Router_Port", "rtos-n1", "networks"); got != `["10.244.1.1/24"]` {
		t.Fatalf("rtos-n1 networks = %s", got)
	}
	if got := e.nbctl(t, "--bare", "--columns=name", "find", "Logical_Router", "name=ovn_cluster_router"); got != "ovn_cluster_router" {
		t.Fatalf("cluster router = %q", got)
	}

	// Same desired state: nothing to send.
	if n := e.mustApply(t, "Node/n1", node("n1", "10.244.1.0/24")); n != 0 {
		t.Fatalf("idempotent node plan sent %d operations", n)
	}
	if n := e.mustApply(t, "Pod/default/web", translator.PodRows(pod)); n != 0 {
		t.Fatalf("idempotent pod plan sent %d operations", n)
	}
	// A changed address is one update of the changed columns.
	pod.Addr = mustAddr("10.244.1.9")
	if n := e.mustApply(t, "Pod/default/web", translator.PodRows(pod)); n != 1 {
		t.Fatalf("address change sent %d operations, want 1 update", n)
	}
	if got := e.nbctl(t, "lsp-get-port-security", "default_web"); got != "0a:58:0a:f4:01:09 10.244.1.9" {
		t.Fatalf("port_security = %q", got)
	}
	// Deleting the pod removes only its port.
	e.mustApply(t, "Pod/default/web", nil)
	if got := e.nbctl(t, "--bare", "--columns=name", "list", "Logical_Switch_Port"); strings.Contains(got, "default_web") {
		t.Fatalf("pod port survived its deletion: %q", got)
	}
	if got := e.nbctl(t, "lsp-list", "n1"); !strings.Contains(got, "stor-n1") || !strings.Contains(got, "k8s-n1") {
		t.Fatalf("node ports after pod deletion: %q", got)
	}
	// Deleting the node removes its switch, router port and ports.
	e.mustApply(t, "Node/n1", nil)
	if got := e.nbctl(t, "ls-list"); got != "" {
		t.Fatalf("switches left after node deletion: %q", got)
	}
	if got := e.nbctl(t, "lrp-list", translator.ClusterRouter); got != "" {
		t.Fatalf("router ports left after node deletion: %q", got)
	}
}

func TestStoreParentMissingAndConflicts(t *testing.T) {
	e := newEnv(t)
	pod := translator.PodNetwork{Namespace: "default", Name: "web", UID: "u1", Node: "n1", Addr: mustAddr("10.244.1.3")}
	if _, err := e.apply(t, "Pod/default/web", translator.PodRows(pod)); !errors.Is(err, nbstore.ErrParentMissing) {
		t.Fatalf("pod before its node switch: err = %v, want ErrParentMissing", err)
	}
	e.nbctl(t, "ls-add", "n2")
	e.nbctl(t, "lsp-add", "n2", "stor-n3")
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	var conflict *nbstore.ConflictError
	if _, err := e.apply(t, "Node/n2", node("n2", "10.244.2.0/24")); !errors.As(err, &conflict) || conflict.Owner != "" {
		t.Fatalf("node whose switch name is taken by a foreign switch: err = %v", err)
	}
	if _, err := e.apply(t, "Node/n3", node("n3", "10.244.3.0/24")); !errors.As(err, &conflict) {
		t.Fatalf("node whose port name is taken by a foreign port: err = %v", err)
	}
	if got := e.nbctl(t, "ls-list"); strings.Count(got, "\n") != 0 || !strings.Contains(got, "(n2)") {
		t.Fatalf("switches after refused plans: %q", got)
	}
}

func TestStoreLeavesForeignRowsAlone(t *testing.T) {
	e := newEnv(t)
	e.nbctl(t, "lr-add", "neutron-router")
	e.nbctl(t, "lrp-add", "neutron-router", "lrp-ext", "00:00:00:00:ff:01", "192.0.2.1/24")
	e.nbctl(t, "ls-add", "neutron-net")
	e.nbctl(t, "lsp-add", "neutron-net", "vm1")
	e.nbctl(t, "lsp-set-addresses", "vm1", "fa:16:3e:00:00:01 192.0.2.10")
	e.nbctl(t, "set", "Logical_Switch", "neutron-net", "external_ids:neutron-network=private")
	dump := func() string {
		return e.nbctl(t, "list", "Logical_Router", "neutron-router") + e.nbctl(t, "list", "Logical_Router_Port", "lrp-ext") +
			e.nbctl(t, "list", "Logical_Switch", "neutron-net") + e.nbctl(t, "list", "Logical_Switch_Port", "vm1")
	}
	before := dump()
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	e.mustApply(t, "Node/n1", node("n1", "10.244.1.0/24"))
	e.mustApply(t, "Node/n1", nil)
	e.mustApply(t, translator.ClusterOwner, nil)
	if after := dump(); after != before {
		t.Fatalf("foreign rows changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	owners, _ := e.store.Owners()
	if len(owners) != 0 {
		t.Fatalf("owners left: %v", owners)
	}
}

func TestCommitterBatchesAndIsolatesFailures(t *testing.T) {
	e := newEnv(t)
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	e.mustApply(t, "Node/n1", node("n1", "10.244.1.0/24"))
	e.nbctl(t, "ls-add", "foreign")
	e.nbctl(t, "lsp-add", "foreign", "default_p7")

	var wg sync.WaitGroup
	errs := make([]error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := "p" + itoa(i)
			pod := translator.PodNetwork{Namespace: "default", Name: name, UID: "u", Node: "n1", Addr: mustAddr("10.244.1." + itoa(10+i))}
			txn := &nbstore.Txn{}
			if err := e.store.Plan(txn, "Pod/default/"+name, nbstore.Rows(translator.PodRows(pod)...)); err != nil {
				errs[i] = err
				return
			}
			errs[i] = e.committer.Commit(context.Background(), txn)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if (err != nil) != (i == 7) {
			t.Errorf("pod p%d: err = %v", i, err)
		}
	}
	if got := strings.Count(e.nbctl(t, "lsp-list", "n1"), "\n") + 1; got != 2+49 {
		t.Fatalf("n1 has %d ports, want 51", got)
	}
	var lsps []nbmodel.LogicalSwitchPort
	if err := e.nb.List(context.Background(), &lsps); err != nil || len(lsps) != 52 {
		t.Fatalf("cache has %d ports (%v), want 52", len(lsps), err)
	}
}

func TestStoreLoadBalancersInGroup(t *testing.T) {
	e := newEnv(t)
	if _, err := e.apply(t, "Node/n1", node("n1", "10.244.1.0/24")); !errors.Is(err, nbstore.ErrParentMissing) {
		t.Fatalf("node switch before the cluster's load balancer group: err = %v, want ErrParentMissing", err)
	}
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	e.mustApply(t, "Node/n1", node("n1", "10.244.1.0/24"))
	group := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Load_Balancer_Group", "name="+translator.ClusterLBGroup)
	if got := e.nbctl(t, "--bare", "--columns=load_balancer_group", "list", "Logical_Switch", "n1"); got != group || group == "" {
		t.Fatalf("n1 load_balancer_group = %q, want the cluster group %q", got, group)
	}
	proto := "tcp"
	lb := func(backends string) []nbstore.Row {
		return []nbstore.Row{{Model: &nbmodel.LoadBalancer{Name: "Service_default/web_TCP", Protocol: &proto,
			Vips: map[string]string{"10.96.0.10:80": backends}, Options: map[string]string{"reject": "true"}},
			Parents: nbstore.In(translator.ClusterOwner, translator.ClusterLBGroup)}}
	}
	e.mustApply(t, "Service/default/web", lb("10.244.1.5:8080"))
	if got := e.nbctl(t, "ls-lb-list", "n1"); !strings.Contains(got, "10.96.0.10:80") || !strings.Contains(got, "10.244.1.5:8080") {
		t.Fatalf("ls-lb-list n1:\n%s", got)
	}
	if n := e.mustApply(t, "Service/default/web", lb("10.244.1.5:8080")); n != 0 {
		t.Fatalf("idempotent load balancer plan sent %d operations", n)
	}
	if n := e.mustApply(t, "Service/default/web", lb("10.244.1.5:8080,10.244.1.6:8080")); n != 1 {
		t.Fatalf("backend change sent %d operations, want 1 update", n)
	}
	// A load balancer that lost its group membership gets it back.
	uuid := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Load_Balancer", "name=Service_default/web_TCP")
	e.nbctl(t, "remove", "Load_Balancer_Group", translator.ClusterLBGroup, "load_balancer", uuid)
	e.sync(t)
	if n := e.mustApply(t, "Service/default/web", lb("10.244.1.5:8080,10.244.1.6:8080")); n != 1 {
		t.Fatalf("restoring group membership sent %d operations, want 1", n)
	}
	if got := e.nbctl(t, "--bare", "--columns=load_balancer", "list", "Load_Balancer_Group", translator.ClusterLBGroup); got != uuid {
		t.Fatalf("group load_balancer = %q, want %q", got, uuid)
	}
	// A foreign load balancer with the name of a Service's is left alone and reported.
	e.nbctl(t, "lb-add", "Service_default/db_TCP", "10.96.0.20:5432", "192.0.2.1:5432", "tcp")
	e.sync(t)
	var conflict *nbstore.ConflictError
	db := []nbstore.Row{{Model: &nbmodel.LoadBalancer{Name: "Service_default/db_TCP", Protocol: &proto,
		Vips: map[string]string{"10.96.0.20:5432": ""}}, Parents: nbstore.In(translator.ClusterOwner, translator.ClusterLBGroup)}}
	if _, err := e.apply(t, "Service/default/db", db); !errors.As(err, &conflict) || conflict.Owner != "" {
		t.Fatalf("load balancer named like a foreign one: err = %v, want a conflict", err)
	}
	// Deleting the Service deletes its row; the group and the foreign row stay.
	e.mustApply(t, "Service/default/web", nil)
	if got := e.nbctl(t, "--bare", "--columns=name", "list", "Load_Balancer"); got != "Service_default/db_TCP" {
		t.Fatalf("load balancers after deletion: %q", got)
	}
	if got := e.nbctl(t, "--bare", "--columns=load_balancer", "list", "Load_Balancer_Group", translator.ClusterLBGroup); got != "" {
		t.Fatalf("group still references %q", got)
	}
}

func TestStoreRowWithItsOwnParent(t *testing.T) {
	e := newEnv(t)
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	e.mustApply(t, "Node/n1", node("n1", "10.244.1.0/24"))
	proto := "tcp"
	local := []nbstore.Row{{Model: &nbmodel.LoadBalancer{Name: "Service_default/web_TCP_node_n1", Protocol: &proto,
		Vips: map[string]string{"10.96.0.10:80": "10.244.1.5:8080"}},
		Parents: []nbstore.Parent{{Ref: nbstore.Ref{Owner: "Node/n1", Name: "n1"}, Table: "Logical_Switch", Column: "load_balancer"}}}}
	e.mustApply(t, "Service/default/web", local)
	uuid := e.nbctl(t, "--bare", "--columns=_uuid", "find", "Load_Balancer", "name=Service_default/web_TCP_node_n1")
	if got := e.nbctl(t, "--bare", "--columns=load_balancer", "list", "Logical_Switch", "n1"); got != uuid {
		t.Fatalf("n1 load_balancer = %q, want %q", got, uuid)
	}
	if got := e.nbctl(t, "--bare", "--columns=load_balancer", "list", "Load_Balancer_Group", translator.ClusterLBGroup); got != "" {
		t.Fatalf("the node load balancer went into the group too: %q", got)
	}
	// The node's own plan leaves the reference alone; a lost one is restored by the Service's.
	if n := e.mustApply(t, "Node/n1", node("n1", "10.244.1.0/24")); n != 0 {
		t.Fatalf("node plan sent %d operations", n)
	}
	e.nbctl(t, "clear", "Logical_Switch", "n1", "load_balancer")
	e.sync(t)
	if n := e.mustApply(t, "Service/default/web", local); n != 1 {
		t.Fatalf("restoring the reference sent %d operations, want 1", n)
	}
	e.mustApply(t, "Service/default/web", nil)
	if got := e.nbctl(t, "--bare", "--columns=name", "list", "Load_Balancer"); got != "" {
		t.Fatalf("load balancers left: %q", got)
	}
	// Only root rows may choose their parent; a non-root row has exactly one.
	for _, parents := range [][]nbstore.Parent{
		{{Ref: nbstore.Ref{Owner: "Node/n1", Name: "n1"}, Table: "Logical_Switch", Column: "load_balancer"}},
		append(nbstore.In("Node/n1", "n1"), nbstore.In("Node/n1", "n1")...),
		nil,
	} {
		port := []nbstore.Row{{Model: &nbmodel.LogicalSwitchPort{Name: "x"}, Parents: parents}}
		if _, err := e.apply(t, "Pod/default/x", port); err == nil {
			t.Fatalf("a port with parents %+v was accepted", parents)
		}
	}
}

// nbctl changes NB behind the store's back; sync waits until the store's cache has seen them.
func (e *env) sync(t *testing.T) {
	t.Helper()
	if err := e.committer.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (e *env) mustApplyDesired(t *testing.T, owner string, want nbstore.Desired) int {
	t.Helper()
	n, err := e.applyDesired(t, owner, want)
	if err != nil {
		t.Fatalf("apply %s: %v", owner, err)
	}
	return n
}

func asConflict(err error, target **nbstore.ConflictError) bool { return errors.As(err, target) }
