package nbstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

func TestCommitterReportsWritesThatDidNothing(t *testing.T) {
	e := newEnv(t)
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	e.mustApply(t, "Node/n1", node("n1", "10.244.1.0/24"))
	pod := translator.PodNetwork{Namespace: "default", Name: "p", UID: "u1", Node: "n1", Addr: mustAddr("10.244.1.3")}
	e.mustApply(t, "Pod/default/p", translator.PodRows(pod))

	// An update planned from the cache, of a row deleted before it is committed, updates nothing.
	pod.Addr = mustAddr("10.244.1.4")
	txn := &nbstore.Txn{}
	if err := e.store.Plan(txn, "Pod/default/p", nbstore.Rows(translator.PodRows(pod)...)); err != nil {
		t.Fatal(err)
	}
	e.nbctl(t, "lsp-del", "default_p")
	e.sync(t)
	var stale *nbstore.StaleError
	if err := e.committer.Commit(context.Background(), txn); !errors.As(err, &stale) {
		t.Fatalf("commit of an update of a deleted row: err = %v, want a StaleError", err)
	}
	// Planning again converges.
	e.mustApply(t, "Pod/default/p", translator.PodRows(pod))
	if got := e.nbctl(t, "lsp-get-addresses", "default_p"); got != "0a:58:0a:f4:01:04 10.244.1.4" {
		t.Fatalf("addresses %q", got)
	}

	// An insert into a switch deleted meanwhile is collected by the server: reported at once, and it
	// holds up no other writer.
	other := translator.PodNetwork{Namespace: "default", Name: "q", UID: "u2", Node: "n1", Addr: mustAddr("10.244.1.5")}
	txn = &nbstore.Txn{}
	if err := e.store.Plan(txn, "Pod/default/q", nbstore.Rows(translator.PodRows(other)...)); err != nil {
		t.Fatal(err)
	}
	e.nbctl(t, "ls-del", "n1")
	e.sync(t)
	var wg sync.WaitGroup
	var otherErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, otherErr = e.apply(t, "Node/n2", node("n2", "10.244.2.0/24"))
	}()
	err := e.committer.Commit(context.Background(), txn)
	wg.Wait()
	if !errors.As(err, &stale) {
		t.Fatalf("insert into a deleted switch: err = %v, want a StaleError (not a timeout)", err)
	}
	if otherErr != nil {
		t.Fatalf("a concurrent writer failed: %v", otherErr)
	}
	if _, err := e.apply(t, "Pod/default/q", translator.PodRows(other)); !errors.Is(err, nbstore.ErrParentMissing) {
		t.Fatalf("re-plan without the switch: err = %v, want ErrParentMissing", err)
	}
	if got := e.nbctl(t, "--bare", "--columns=name", "find", "Logical_Switch_Port", "name=default_q"); got != "" {
		t.Fatalf("an orphan port survived: %q", got)
	}
}

func TestCommitterResultIsInTheCache(t *testing.T) {
	e := newEnv(t)
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	for i := range 20 {
		name := "n" + itoa(i)
		e.mustApply(t, "Node/"+name, node(name, "10.244."+itoa(i)+".0/24"))
		// The next plan must see what the commit wrote, without waiting.
		rows, err := e.store.OwnedRows("Node/" + name)
		if err != nil || len(rows["Logical_Switch"]) != 1 || len(rows["Logical_Switch_Port"]) != 2 {
			t.Fatalf("after commit %d the cache holds %v (%v)", i, rows, err)
		}
	}
}

// A deposed leader that still writes (its lease expired while it was stalled) and the new leader both
// plan the same Service's load balancer from caches that lack it. Load_Balancer has no unique index,
// so without fencing both inserts succeed and the Service has two load balancers.
func TestClaimFencesTheDeposedWriter(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.mustApply(t, translator.ClusterOwner, translator.ClusterRows())
	if err := e.committer.Claim(ctx, "old-leader"); err != nil {
		t.Fatal(err)
	}
	nb2, store2 := connectStore(ctx, t, e.ovn.NBAddr, translator.TableSpecs())
	c2 := nbstore.NewCommitter(nb2, 1000, 10*time.Second, nbstore.NewMetrics(prometheus.NewRegistry()))
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go c2.Run(cctx)

	proto := "tcp"
	lb := func() nbstore.Desired {
		return nbstore.Rows(nbstore.Row{Model: &nbmodel.LoadBalancer{Name: "Service_default/web_TCP", Protocol: &proto,
			Vips: map[string]string{"10.96.0.10:80": "10.244.1.5:8080"}}, Parents: nbstore.In(translator.ClusterOwner, translator.ClusterLBGroup)})
	}
	oldTxn, newTxn := &nbstore.Txn{}, &nbstore.Txn{}
	if err := e.store.Plan(oldTxn, "Service/default/web", lb()); err != nil {
		t.Fatal(err)
	}
	if err := store2.Plan(newTxn, "Service/default/web", lb()); err != nil {
		t.Fatal(err)
	}
	fenced := make(chan error, 1)
	go func() { fenced <- e.committer.WaitFenced(cctx) }()
	if err := c2.Claim(ctx, "new-leader"); err != nil {
		t.Fatal(err)
	}
	// An idle deposed writer learns it from the cache, before it writes anything.
	if err := <-fenced; err != nil {
		t.Fatalf("WaitFenced: %v", err)
	}
	if err := c2.Commit(ctx, newTxn); err != nil {
		t.Fatal(err)
	}
	if err := e.committer.Commit(ctx, oldTxn); !errors.Is(err, nbstore.ErrFenced) {
		t.Fatalf("the deposed writer's commit: err = %v, want ErrFenced", err)
	}
	if !e.committer.Fenced() {
		t.Fatal("the deposed committer does not know it was fenced")
	}
	if got := e.nbctl(t, "--bare", "--columns=name", "find", "Load_Balancer", "name=Service_default/web_TCP"); got != "Service_default/web_TCP" {
		t.Fatalf("load balancers of the Service: %q, want exactly one", got)
	}
	// The writer keys are Dunlin's only: NB_Global's other columns and keys are left alone.
	if got := e.nbctl(t, "get", "NB_Global", ".", "external_ids:\"dunlin.io/writer\""); !strings.HasPrefix(got, `"new-leader/`) {
		t.Fatalf("writer %s", got)
	}
}

// MarkSynced writes its key into NB_Global and leaves the other keys alone.
func TestCommitterMarkSynced(t *testing.T) {
	e := newEnv(t)
	e.nbctl(t, "set", "NB_Global", ".", "external_ids:other=kept")
	at := time.Date(2026, 12, 1, 5, 30, 0, 0, time.UTC)
	if err := e.committer.MarkSynced(context.Background(), at); err != nil {
		t.Fatal(err)
	}
	got := e.nbctl(t, "get", "NB_Global", ".", "external_ids")
	if !strings.Contains(got, `"dunlin.io/synced"="2026-12-01T05:30:00Z"`) || !strings.Contains(got, "other=kept") {
		t.Fatalf("NB_Global external_ids %s", got)
	}
}
