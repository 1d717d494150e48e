package nbstore_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// BenchmarkMemberChange is one pod joining or leaving a set of 5,000 members, planned and committed:
// by element mutation (what the store does) and, in the same run, by rewriting the whole column (what a
// store without member columns would do). Reported: operations per change and time per change.
func BenchmarkMemberChange(b *testing.B) {
	for _, mode := range []string{"mutate", "rewrite"} {
		b.Run(mode, func(b *testing.B) {
			specs := shapeSpecs()
			if mode == "rewrite" {
				specs["Address_Set"] = nbstore.TableSpec{Columns: []string{"name", "addresses", "external_ids"}}
			}
			e := newBenchEnv(b, specs)
			addrs := addresses(5001)
			set := func(members []string) nbstore.Desired {
				return nbstore.Rows(nbstore.Row{Model: &nbmodel.AddressSet{Name: "a_peers", Addresses: members}})
			}
			if err := e.apply(b, "NetworkPolicy/ns/p", set(addrs[:5000])); err != nil {
				b.Fatal(err)
			}
			ops := 0
			b.ResetTimer()
			for i := range b.N {
				// Alternately swap the first and the extra member in and out.
				next := addrs[:5000]
				if i%2 == 0 {
					next = append(slices.Clone(addrs[1:5000]), addrs[5000])
				}
				txn := &nbstore.Txn{}
				if err := e.store.Plan(txn, "NetworkPolicy/ns/p", set(next)); err != nil {
					b.Fatal(err)
				}
				ops += txn.Len()
				if err := e.committer.Commit(context.Background(), txn); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(ops)/float64(b.N), "ops/change")
		})
	}
}

// BenchmarkLoadBalancerColdSync writes 5,000 Service load balancers into the cluster group from 32
// concurrent owners, as a controller's cold start does, three ways in one run: without any guard
// against a second writer, with the committer's fence (one wait on NB_Global per transaction), and with
// the insert guard Dunlin used to have (one wait on the load balancer's name per insert, which the
// server evaluates by scanning the table). Reported: seconds per cold sync of each.
func BenchmarkLoadBalancerColdSync(b *testing.B) {
	const services, workers = 5000, 32
	for _, mode := range []string{"unguarded", "fenced", "name-guard"} {
		b.Run(mode, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				e := newBenchEnv(b, translator.TableSpecs())
				if err := e.apply(b, translator.ClusterOwner, nbstore.Rows(translator.ClusterRows()...)); err != nil {
					b.Fatal(err)
				}
				if mode == "fenced" {
					if err := e.committer.Claim(context.Background(), "bench"); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				start := time.Now()
				jobs := make(chan int)
				var wg sync.WaitGroup
				errs := make(chan error, workers)
				for range workers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range jobs {
							guard := ""
							if mode == "name-guard" {
								guard = fmt.Sprintf("Service_ns/s%d_TCP", i)
							}
							if err := e.applyGuarded(fmt.Sprintf("Service/ns/s%d", i), lbRow(i), guard); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				for i := range services {
					jobs <- i
				}
				close(jobs)
				wg.Wait()
				close(errs)
				for err := range errs {
					b.Fatal(err)
				}
				b.ReportMetric(time.Since(start).Seconds(), "s/coldsync")
			}
		})
	}
}

// lbRow is Service i's load balancer.
func lbRow(i int) nbstore.Desired {
	proto := "tcp"
	return nbstore.Rows(nbstore.Row{Model: &nbmodel.LoadBalancer{Name: fmt.Sprintf("Service_ns/s%d_TCP", i), Protocol: &proto,
		Vips:    map[string]string{fmt.Sprintf("10.96.%d.%d:80", i/250, i%250): "10.244.1.5:8080,10.244.2.5:8080"},
		Options: map[string]string{"reject": "true"}}, Parents: nbstore.In(translator.ClusterOwner, translator.ClusterLBGroup)})
}

type benchEnv struct {
	store     *nbstore.Store
	committer *nbstore.Committer
}

func newBenchEnv(b *testing.B, specs map[string]nbstore.TableSpec) *benchEnv {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	ovn := harness.StartTestOVN(ctx, b)
	nb, store := connectStore(ctx, b, ovn.NBAddr, specs)
	e := &benchEnv{store: store, committer: nbstore.NewCommitter(nb, 1000, 30*time.Second, nbstore.NewMetrics(prometheus.NewRegistry()))}
	go e.committer.Run(ctx)
	return e
}

func (e *benchEnv) apply(_ *testing.B, owner string, want nbstore.Desired) error {
	return e.applyGuarded(owner, want, "")
}

// applyGuarded plans and commits, after the old name guard when guard names a load balancer.
func (e *benchEnv) applyGuarded(owner string, want nbstore.Desired, guard string) error {
	txn := &nbstore.Txn{}
	if guard != "" {
		txn.AddOp(nameGuard("Load_Balancer", guard))
	}
	if err := e.store.Plan(txn, owner, want); err != nil {
		return err
	}
	return e.committer.Commit(context.Background(), txn)
}

// nameGuard is the wait Dunlin once put before each insert into a table without a name index: it
// fails unless no row has that name.
func nameGuard(table, name string) ovsdb.Operation {
	timeout := 0
	return ovsdb.Operation{Op: ovsdb.OperationWait, Table: table, Timeout: &timeout,
		Where:   []ovsdb.Condition{{Column: "name", Function: ovsdb.ConditionEqual, Value: name}},
		Columns: []string{"name"}, Until: string(ovsdb.WaitConditionNotEqual), Rows: []ovsdb.Row{{"name": name}}}
}
