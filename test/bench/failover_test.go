package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

// failoverRuns is how many leader deaths BenchmarkNBFailover measures (DUNLIN_BENCH_FAILOVER_RUNS,
// default 5), and failoverPods the pods created and deleted right after each (DUNLIN_BENCH_FAILOVER_PODS,
// default 30).
func failoverSizes() (runs, pods int) {
	runs, pods = 5, 30
	if v, err := strconv.Atoi(os.Getenv("DUNLIN_BENCH_FAILOVER_RUNS")); err == nil && v > 0 {
		runs = v
	}
	if v, err := strconv.Atoi(os.Getenv("DUNLIN_BENCH_FAILOVER_PODS")); err == nil && v > 0 && v <= 200 {
		pods = v
	}
	return runs, pods
}

// BenchmarkNBFailover runs dunlin-controller against a 3-member RAFT NB given all three addresses, and
// kills the RAFT leader (SIGKILL) while the controller is idle and converged; at once a batch of pods is
// created and as many deleted. It reports, over several runs (each with a fresh cluster), the time from
// the leader's death to the controller's first committed write, and to NB holding exactly what the API
// means again (p50 and max). The floor is the same batch without a death, in the same run.
//
// NB is watched through a member that is not killed (a follower), so the watcher does not reconnect
// itself; the first write is the first change of the controller's commit marker there (nothing else
// writes NB_Global: no ovn-northd runs).
func BenchmarkNBFailover(b *testing.B) {
	ctx := context.Background()
	dir, kube, bin := startKube(b)
	runs, batch := failoverSizes()
	nodes := []string{"f1", "f2", "f3"}
	for _, n := range nodes {
		if _, err := kube.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}},
			metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	pods := &podBatches{kube: kube, nodes: nodes, size: batch}
	pods.next(b) // the pods the first cold sync starts with

	var firstWrite, converged, floor []time.Duration
	for range b.N {
		for run := range runs {
			f, c, fl := failoverRun(b, dir, fmt.Sprintf("r%d", len(firstWrite)), bin, kube, pods)
			b.Logf("run %d: first write %s after the leader's death, converged after %s (without a death: %s)",
				run, f.Round(time.Millisecond), c.Round(time.Millisecond), fl.Round(time.Millisecond))
			firstWrite, converged, floor = append(firstWrite, f), append(converged, c), append(floor, fl)
		}
	}
	for _, m := range []struct {
		name string
		ds   []time.Duration
	}{{"first-write", firstWrite}, {"converged", converged}, {"floor-converged", floor}} {
		b.ReportMetric(pct(m.ds, 50).Seconds(), m.name+"-p50-s")
		b.ReportMetric(slices.Max(m.ds).Seconds(), m.name+"-max-s")
	}
	b.ReportMetric(float64(len(firstWrite)), "deaths")
	b.ReportMetric(0, "ns/op")
}

// podBatches replaces the benchmark's pods a batch at a time: create size new ones, delete the
// previous batch.
type podBatches struct {
	kube  *harness.Kube
	nodes []string
	size  int
	n     int // batches made
}

func (p *podBatches) next(b *testing.B) {
	ctx := context.Background()
	zero := int64(0)
	gen := p.n
	p.n++
	err := parallel(p.size, 8, func(i int) error {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d-%d", gen, i)},
			Spec: corev1.PodSpec{NodeName: p.nodes[i%len(p.nodes)], Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
		if _, err := p.kube.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			return err
		}
		if gen == 0 {
			return nil
		}
		return p.kube.Client.CoreV1().Pods("default").Delete(ctx, fmt.Sprintf("p%d-%d", gen-1, i),
			metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	if err != nil {
		b.Fatal(err)
	}
}

// failoverRun brings up a fresh clustered NB and a controller, lets it converge, replaces a batch of
// pods without a failure (the floor), then kills the leader and replaces another batch.
func failoverRun(b *testing.B, dir, run, bin string, kube *harness.Kube, pods *podBatches) (firstWrite, converged, floor time.Duration) {
	ctx := context.Background()
	ovn, err := harness.StartOVN(ctx, harness.OVNOptions{Dir: filepath.Join(dir, run), Clustered: true})
	if err != nil {
		b.Fatal(err)
	}
	defer ovn.Stop()
	leader, err := ovn.RaftLeader(ctx, false)
	if err != nil {
		b.Fatal(err)
	}
	follower, err := ovn.RaftMemberAddr(false, (leader+1)%3)
	if err != nil {
		b.Fatal(err)
	}
	w := watchMember(b, follower, kube)
	defer w.nb.Close()
	p, err := harness.StartProcess("dunlin-controller", filepath.Join(dir, run+".log"), nil, bin,
		controllerArgs(kube, ovn.NBAddr, "")...)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Stop()
	w.done(b, p, "cold sync "+run)
	w.clock.settled()

	start := time.Now()
	pods.next(b)
	floor = w.done(b, p, "batch "+run).Sub(start)
	w.clock.settled() // idle: nothing of the batch is still in flight

	w.since.Store(0)
	start = time.Now()
	w.from.Store(start.UnixNano())
	if err := ovn.KillRaftMember(false, leader); err != nil {
		b.Fatal(err)
	}
	pods.next(b)
	converged = w.done(b, p, "failover "+run).Sub(start)
	first := w.since.Load()
	if first == 0 {
		b.Fatalf("%s: NB converged but the watcher saw no commit after the leader's death", run)
	}
	return time.Duration(first - start.UnixNano()), converged, floor
}

// memberWatch is a client of one RAFT member (not leader-only) that monitors what the controller
// writes, notes when anything changes, and when the commit marker first changed after from.
type memberWatch struct {
	nb    client.Client
	clock *changeClock
	kube  *harness.Kube
	from  atomic.Int64 // unix nanoseconds
	since atomic.Int64 // first NB_Global change at or after from, unix nanoseconds
}

func watchMember(b *testing.B, addr string, kube *harness.Kube) *memberWatch {
	dbModel, _, err := translator.NBModel()
	if err != nil {
		b.Fatal(err)
	}
	nb, err := client.NewOVSDBClient(dbModel, client.WithEndpoint(addr))
	if err != nil {
		b.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := nb.Connect(cctx); err != nil {
		b.Fatal(err)
	}
	w := &memberWatch{nb: nb, clock: &changeClock{}, kube: kube}
	touch := func(table string) {
		w.clock.touch()
		if from := w.from.Load(); table == nbmodel.NBGlobalTable && from != 0 {
			if now := time.Now().UnixNano(); now >= from {
				w.since.CompareAndSwap(0, now)
			}
		}
	}
	nb.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc:    func(t string, _ model.Model) { touch(t) },
		UpdateFunc: func(t string, _, _ model.Model) { touch(t) },
		DeleteFunc: func(t string, _ model.Model) { touch(t) },
	})
	tables := []client.MonitorOption{client.WithTable(&nbmodel.NBGlobal{})}
	for table := range translator.TableSpecs() {
		m := reflect.New(dbModel.Types()[table].Elem()).Interface().(model.Model)
		tables = append(tables, client.WithTable(m))
	}
	if _, err := nb.Monitor(cctx, nb.NewMonitor(tables...)); err != nil {
		b.Fatal(err)
	}
	return w
}

// done waits until the member's copy of NB holds exactly what the API's objects mean, and returns the
// time of the last change before that.
func (w *memberWatch) done(b *testing.B, p *harness.Process, what string) time.Time {
	db := w.nb.Cache().DatabaseModel()
	return syncDone{
		what:  what,
		count: func() int { return 1 },
		content: func() error {
			want, err := apiRows(context.Background(), w.kube.Client, db)
			if err != nil {
				return err
			}
			return want.diff(cacheReader(w.nb))
		},
		clock: w.clock,
		alive: func() bool { return !p.Exited() },
		quiet: true,
	}.wait(b, 5*time.Minute)
}
