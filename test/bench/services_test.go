package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

const (
	svcNamespace = "bench-svc"
	// maxServices keeps the initial backends (3 per Service from 10.244.0.16) below changeBase.
	maxServices = 16000
	// changeAddrs is the size of the range new backend addresses come from during the change stream.
	changeAddrs = 16384

	changeRate    = 100 // EndpointSlice updates per second
	changeFor     = 20 * time.Second
	changeTimeout = 10 * time.Second // a change not in NB by then counts as lost
)

var (
	svcIPBase  = netip.MustParseAddr("10.96.0.16") // 10.96.0.1 is the apiserver's own Service
	epBase     = netip.MustParseAddr("10.244.0.16")
	changeBase = netip.MustParseAddr("10.244.192.0")
	// ranges is what the controller accepts as backends with its default --cluster-cidr.
	ranges = translator.EndpointRanges{Pods: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}}
)

// serviceCount is DUNLIN_BENCH_SERVICES, default 5000.
func serviceCount() int {
	if v, err := strconv.Atoi(os.Getenv("DUNLIN_BENCH_SERVICES")); err == nil && v > 0 && v <= maxServices {
		return v
	}
	return 5000
}

// BenchmarkServices starts dunlin-controller against an apiserver holding 5,000 ClusterIP Services
// with one 3-endpoint EndpointSlice each and an empty NB, and measures the time until a separate NB
// client sees exactly the Service load balancers the translator's mapping gives (every managed
// column: name, protocol, vips, options, ...; membership of the cluster group; no other load balancer
// of these Services; see nbRows). The floor is the same Load_Balancer rows and their insertion into
// the cluster group, written by a minimal libovsdb writer in 1000-operation transactions, timed the
// same way, in the same run. With the controller synced, it then updates 100 EndpointSlices per
// second for 20 s (one backend each) and measures, per update, the time from the API call to the new
// backends in NB.
func BenchmarkServices(b *testing.B) {
	dir, kube, bin := startKube(b)
	n := serviceCount()
	t0 := time.Now()
	set := populateServices(b, kube.Client, n)
	b.Logf("created %d Services and EndpointSlices in %s", n, time.Since(t0).Round(time.Millisecond))
	want, err := set.rows()
	if err != nil {
		b.Fatal(err)
	}

	var syncTotal, floorTotal time.Duration
	var res changeResults
	for i := range b.N {
		floorTotal += floorServices(b, filepath.Join(dir, fmt.Sprintf("floor-%d", i)), set, want)
		run := startServices(b, dir, fmt.Sprintf("svc-%d", i), bin, kube, want)
		syncTotal += run.took
		b.Logf("controller metrics after cold sync:\n%s", scrapeMetrics(run.metricsURL))
		res.add(set.changeStream(b, kube.Client, run.watch, uint64(i)))
		b.Logf("controller metrics after the change stream:\n%s", scrapeMetrics(run.metricsURL))
		if err := run.proc.Stop(); err != nil {
			b.Logf("stop controller: %v", err)
		}
	}
	nf := float64(b.N)
	b.ReportMetric(syncTotal.Seconds()/nf, "s/sync")
	b.ReportMetric(float64(n)*nf/syncTotal.Seconds(), "services/s")
	b.ReportMetric(floorTotal.Seconds()/nf, "floor-s/sync")
	b.ReportMetric(syncTotal.Seconds()/floorTotal.Seconds(), "x-floor")
	b.Logf("cold sync of %d Services: controller %.2fs, floor %.2fs, %.1fx floor",
		n, syncTotal.Seconds()/nf, floorTotal.Seconds()/nf, syncTotal.Seconds()/floorTotal.Seconds())
	report(b, "endpoint_change", res.lat)
	report(b, "api_update", res.api)
	report(b, "after_reply", res.afterReply)
	b.ReportMetric(float64(res.sent), "changes")
	b.ReportMetric(float64(res.lost), "lost-changes")
	b.Logf("endpoint changes: %d sent, %d seen in NB, %d not seen within %s, %d seen before the API reply",
		res.sent, len(res.lat), res.lost, changeTimeout, res.early)
	b.ReportMetric(0, "ns/op")
}

// benchService is one Service with its only EndpointSlice, as last written to the apiserver.
type benchService struct {
	svc   *corev1.Service
	slice *discoveryv1.EndpointSlice
}

// lbName is the NB load balancer of the Service.
func (s *benchService) lbName() string {
	return translator.ServiceLBName(s.svc.Namespace, s.svc.Name, string(corev1.ProtocolTCP))
}

// lb is the load balancer the controller should write for the Service with slice, from the
// controller's own mapping: the change stream awaits its vips.
func (s *benchService) lb(slice *discoveryv1.EndpointSlice) (*nbmodel.LoadBalancer, error) {
	rows, problems := translator.ServiceRows(s.svc, []*discoveryv1.EndpointSlice{slice}, translator.ServiceEnv{Ranges: ranges})
	if len(problems) > 0 || len(rows) != 1 {
		return nil, fmt.Errorf("service %s/%s maps to %d rows, problems %v", s.svc.Namespace, s.svc.Name, len(rows), problems)
	}
	return rows[0].Model.(*nbmodel.LoadBalancer), nil
}

type serviceSet struct {
	svcs []*benchService
	// next numbers the new backend addresses, so every change sets an address not used before.
	next int
}

// rows are the NB rows of the benchmark's Services after a complete sync, from the translator's
// mapping; only the rows of these Services are compared (the apiserver's own kubernetes Service has a
// load balancer too).
func (s *serviceSet) rows() (*nbRows, error) {
	db, err := nbDatabaseModel()
	if err != nil {
		return nil, err
	}
	prefix := translator.Owner(translator.KindService, svcNamespace+"/")
	want := newNBRows(db, func(owner string) bool { return strings.HasPrefix(owner, prefix) })
	for _, bs := range s.svcs {
		rows, problems := translator.ServiceRows(bs.svc, []*discoveryv1.EndpointSlice{bs.slice}, translator.ServiceEnv{Ranges: ranges})
		if len(problems) > 0 {
			return nil, fmt.Errorf("service %s/%s: %v", bs.svc.Namespace, bs.svc.Name, problems)
		}
		if err := want.add(translator.Owner(translator.KindService, bs.svc.Namespace+"/"+bs.svc.Name), rows); err != nil {
			return nil, err
		}
	}
	return want, nil
}

func addrAt(base netip.Addr, off int) netip.Addr {
	a := base.As4()
	binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32(a[:])+uint32(off))
	return netip.AddrFrom4(a)
}

// populateServices creates two nodes and n Services, each with one EndpointSlice of three ready
// endpoints, as the endpointslice controller would (it does not run here).
func populateServices(b *testing.B, kube kubernetes.Interface, n int) *serviceSet {
	ctx := context.Background()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: svcNamespace}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		b.Fatal(err)
	}
	nodes := []string{svcNamespace + "-n0", svcNamespace + "-n1"}
	for i, name := range nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bench": svcNamespace}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("192.168.0.%d", 10+i)},
			}},
		}
		if _, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			b.Fatal(err)
		}
	}

	set := &serviceSet{svcs: make([]*benchService, n)}
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	// Concurrent creates: one at a time the apiserver would take minutes for 10,000 objects.
	for range 32 {
		wg.Go(func() {
			for i := range jobs {
				bs, err := createService(ctx, kube, i, nodes)
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					continue
				}
				set.svcs[i] = bs
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return set
}

func createService(ctx context.Context, kube kubernetes.Interface, i int, nodes []string) (*benchService, error) {
	name := fmt.Sprintf("svc-%05d", i)
	ip := addrAt(svcIPBase, i).String()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: svcNamespace, Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP,
			// An explicit address skips the allocator's search, which makes creation faster.
			ClusterIP:  ip,
			ClusterIPs: []string{ip},
			Selector:   map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80,
				TargetPort: intstr.FromInt32(8080)}},
		},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: svcNamespace, Name: name + "-bench", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "dunlin-bench",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP),
			Port: ptr.To[int32](8080)}},
	}
	for j := range 3 {
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{addrAt(epBase, 3*i+j).String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(nodes[(i+j)%len(nodes)]),
		})
	}
	var err error
	bs := &benchService{}
	if bs.svc, err = kube.CoreV1().Services(svcNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create service %s: %w", name, err)
	}
	if bs.slice, err = kube.DiscoveryV1().EndpointSlices(svcNamespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create endpointslice %s: %w", slice.Name, err)
	}
	return bs, nil
}

// lbWatch follows Load_Balancer through its own monitor, on a client of its own, so what is measured
// is what any NB reader (ovn-northd) would see, not the writer's cache.
type lbWatch struct {
	cli client.Client
	// clock is when the watch last saw a load balancer change.
	clock *changeClock

	mu sync.Mutex
	// pending are the changes awaited in NB, by load balancer name; seenAt when each change was
	// seen, by change number.
	pending map[string]pendingChange
	seenAt  map[int]time.Time
}

type pendingChange struct {
	id   int
	vips map[string]string
}

func newLBWatch(b *testing.B, addr string) *lbWatch {
	ctx := context.Background()
	dbModel, err := nbmodel.FullDatabaseModel()
	if err != nil {
		b.Fatal(err)
	}
	logger := logr.Discard()
	cli, err := client.NewOVSDBClient(dbModel, client.WithEndpoint(addr), client.WithLogger(&logger))
	if err != nil {
		b.Fatal(err)
	}
	if err := cli.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cli.Close)
	w := &lbWatch{cli: cli, clock: &changeClock{}, pending: map[string]pendingChange{}, seenAt: map[int]time.Time{}}
	// Events carry the time they are handled: that is when NB's content is known to this client.
	cli.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc:    func(_ string, m model.Model) { w.seen(m) },
		UpdateFunc: func(_ string, _, m model.Model) { w.seen(m) },
		DeleteFunc: func(string, model.Model) { w.clock.touch() },
	})
	// Only Load_Balancer: the group's 5,000-UUID set would cost this client more than the rows (the
	// group's membership is read once, when the rows are complete: see done).
	if _, err := cli.Monitor(ctx, cli.NewMonitor(client.WithTable(&nbmodel.LoadBalancer{}))); err != nil {
		b.Fatal(err)
	}
	return w
}

func (w *lbWatch) seen(m model.Model) {
	now := time.Now()
	w.clock.touch()
	lb, ok := m.(*nbmodel.LoadBalancer)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if p, ok := w.pending[lb.Name]; ok && maps.Equal(lb.Vips, p.vips) {
		w.seenAt[p.id] = now
		delete(w.pending, lb.Name)
	}
}

// done tells when NB holds exactly the wanted load balancers, in the cluster group. alive, if set,
// says whether the writer still runs.
func (w *lbWatch) done(what string, want *nbRows, alive func() bool) syncDone {
	return syncDone{
		what:    what,
		count:   tableLen(w.cli, nbmodel.LoadBalancerTable),
		atLeast: want.count(nbmodel.LoadBalancerTable),
		content: func() error { return want.diff(selectReader(w.cli, nbmodel.LoadBalancerGroupTable)) },
		clock:   w.clock,
		alive:   alive,
	}
}

// expect registers a change to await; it is registered before the API call, so that an NB update
// arriving before the call returns is not missed.
func (w *lbWatch) expect(name string, id int, vips map[string]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending[name] = pendingChange{id: id, vips: vips}
}

func (w *lbWatch) isPending(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.pending[name]
	return ok
}

// takeSeen returns when each change was seen, and forgets the changes.
func (w *lbWatch) takeSeen() map[int]time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	seen := w.seenAt
	w.seenAt, w.pending = map[int]time.Time{}, map[string]pendingChange{}
	return seen
}

func (w *lbWatch) nPending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// floorServices writes the load balancers of set into an empty NB with no translation: the group,
// then per load balancer an insert and a mutate of the group, in 1000-operation transactions, through
// a client that monitors the same tables as the controller's. It is timed as the controller is.
func floorServices(b *testing.B, dir string, set *serviceSet, want *nbRows) time.Duration {
	ovn := startNB(b, dir)
	nb := connectNB(b, ovn.NBAddr)
	w := newLBWatch(b, ovn.NBAddr)
	var lbs []*nbmodel.LoadBalancer
	for _, bs := range set.svcs {
		for _, m := range want.models(translator.Owner(translator.KindService, bs.svc.Namespace+"/"+bs.svc.Name)) {
			lbs = append(lbs, m.(*nbmodel.LoadBalancer))
		}
	}
	ctx := context.Background()
	transact := func(ops []ovsdb.Operation) []ovsdb.OperationResult {
		res, err := nb.Transact(ctx, ops...)
		if err == nil {
			_, err = ovsdb.CheckOperationResults(res, ops)
		}
		if err != nil {
			b.Fatal(err)
		}
		return res
	}

	start := time.Now()
	ops, err := nb.Create(&nbmodel.LoadBalancerGroup{UUID: "grp", Name: translator.ClusterLBGroup})
	if err != nil {
		b.Fatal(err)
	}
	group := transact(ops)[0].UUID.GoUUID
	ops = ops[:0]
	for i, lb := range lbs {
		lb.UUID = fmt.Sprintf("lb%d", i)
		ins, err := nb.Create(lb)
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, ins...)
		ops = append(ops, ovsdb.Operation{
			Op: ovsdb.OperationMutate, Table: "Load_Balancer_Group",
			Where: []ovsdb.Condition{{Column: "_uuid", Function: ovsdb.ConditionEqual, Value: ovsdb.UUID{GoUUID: group}}},
			Mutations: []ovsdb.Mutation{{Column: "load_balancer", Mutator: ovsdb.MutateOperationInsert,
				Value: ovsdb.OvsSet{GoSet: []any{ovsdb.UUID{GoUUID: lb.UUID}}}}},
		})
		if len(ops) >= 1000 {
			transact(ops)
			ops = ops[:0]
		}
	}
	if len(ops) > 0 {
		transact(ops)
	}
	return w.done("load balancer floor", want, nil).wait(b, 5*time.Minute).Sub(start)
}

type servicesRun struct {
	benchController
	took  time.Duration
	watch *lbWatch
}

// startServices starts the controller against an empty NB and returns once NB holds exactly the
// wanted load balancers; the controller keeps running.
func startServices(b *testing.B, dir, run, bin string, kube *harness.Kube, want *nbRows) servicesRun {
	ovn := startNB(b, filepath.Join(dir, "nb-"+run))
	w := newLBWatch(b, ovn.NBAddr)
	c := startController(b, dir, run, bin, kube, ovn)
	took := w.done("controller "+run, want, c.alive(b)).wait(b, 10*time.Minute).Sub(c.start)
	return servicesRun{benchController: c, took: took, watch: w}
}

// benchController is a controller a benchmark started, with its metrics endpoint.
type benchController struct {
	proc       *harness.Process
	start      time.Time
	metricsURL string
}

// startController starts the controller against ovn, with the extra flags, logging to run.log in dir;
// it is stopped when the benchmark ends.
func startController(b *testing.B, dir, run, bin string, kube *harness.Kube, ovn *harness.OVN, extra ...string) benchController {
	metricsAddr := freeAddr(b)
	start := time.Now()
	p, err := harness.StartProcess("dunlin-controller", filepath.Join(dir, run+".log"), nil, bin,
		append(controllerArgs(kube, ovn.NBAddr, metricsAddr), extra...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Stop() })
	return benchController{proc: p, start: start, metricsURL: "http://" + metricsAddr + "/metrics"}
}

// alive says whether the controller still runs, with its log's tail when it does not.
func (c benchController) alive(b *testing.B) func() bool {
	return func() bool {
		if c.proc.Exited() {
			b.Logf("controller log tail:\n%s", c.proc.LogTail(30))
			return false
		}
		return true
	}
}

// changeResults are the figures of change streams.
type changeResults struct {
	sent int
	// lat runs from just before the API call until the watch saw the new backends; afterReply from
	// the API reply (0 when NB was faster, counted in early); api is the API call alone.
	lat, afterReply, api []time.Duration
	lost, early          int
}

func (r *changeResults) add(o changeResults) {
	r.sent += o.sent
	r.lat = append(r.lat, o.lat...)
	r.afterReply = append(r.afterReply, o.afterReply...)
	r.api = append(r.api, o.api...)
	r.lost += o.lost
	r.early += o.early
}

// changeStream updates changeRate EndpointSlices per second for changeFor, each time replacing the
// third endpoint of a random Service with a new address, and times each change until the watch sees
// the new backends; a change not seen within changeTimeout is lost.
func (s *serviceSet) changeStream(b *testing.B, kube kubernetes.Interface, w *lbWatch, seed uint64) changeResults {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, seed))
	var wg sync.WaitGroup
	var mu sync.Mutex // guards inFlight, replied, firstErr and the slices in s.svcs
	inFlight := map[int]bool{}
	var starts, replied []time.Time // by change number
	var firstErr error

	// A Service with a change still unseen is not picked again: the controller would rightly coalesce
	// both changes, and the first could never be observed.
	pick := func() int {
		for tries := 1; ; tries++ {
			if tries%(4*len(s.svcs)) == 0 {
				time.Sleep(time.Millisecond) // every Service busy: only at tiny sizes
			}
			i := rng.IntN(len(s.svcs))
			mu.Lock()
			busy := inFlight[i]
			mu.Unlock()
			if !busy && !w.isPending(s.svcs[i].lbName()) {
				return i
			}
		}
	}
	tick := time.NewTicker(time.Second / changeRate)
	defer tick.Stop()
	begin := time.Now()
	for time.Since(begin) < changeFor {
		<-tick.C
		i := pick()
		bs := s.svcs[i]
		mu.Lock()
		slice := bs.slice.DeepCopy()
		inFlight[i] = true
		id := len(starts)
		starts, replied = append(starts, time.Time{}), append(replied, time.Time{})
		mu.Unlock()
		slice.Endpoints[2].Addresses = []string{addrAt(changeBase, s.next%changeAddrs).String()}
		s.next++
		lb, err := bs.lb(slice)
		if err != nil {
			b.Fatal(err)
		}
		// Awaited before the call: NB may show the change before the API reply arrives.
		w.expect(lb.Name, id, lb.Vips)
		start := time.Now()
		wg.Go(func() {
			got, err := kube.DiscoveryV1().EndpointSlices(svcNamespace).Update(ctx, slice, metav1.UpdateOptions{})
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			delete(inFlight, i)
			starts[id], replied[id] = start, now
			if err != nil && firstErr == nil {
				firstErr = err
			}
			if err == nil {
				bs.slice = got
			}
		})
	}
	elapsed := time.Since(begin)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	// Let the last changes arrive, then count what never did.
	for deadline := time.Now().Add(changeTimeout); time.Now().Before(deadline) && w.nPending() > 0; {
		time.Sleep(10 * time.Millisecond)
	}
	seen := w.takeSeen()
	r := changeResults{sent: len(starts)}
	for id, start := range starts {
		r.api = append(r.api, replied[id].Sub(start))
		at, ok := seen[id]
		if !ok || at.Sub(start) > changeTimeout {
			r.lost++
			continue
		}
		r.lat = append(r.lat, at.Sub(start))
		if at.Before(replied[id]) {
			r.early++
		}
		r.afterReply = append(r.afterReply, max(0, at.Sub(replied[id])))
	}
	b.Logf("change stream: %d updates in %s (%.1f/s)", r.sent, elapsed.Round(time.Millisecond), float64(r.sent)/elapsed.Seconds())
	return r
}

// freeAddr returns a loopback address with a port free right now, for the controller's metrics.
func freeAddr(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// scrapeMetrics returns the controller's own figures and its CPU time: enough to tell where a slow
// sync spent its time (transactions, their size and duration, reconcile time).
func scrapeMetrics(url string) string {
	resp, err := http.Get(url)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.Contains(line, "_bucket{") {
			continue
		}
		if strings.HasPrefix(line, "dunlin_") || strings.HasPrefix(line, "process_cpu_seconds_total") ||
			strings.HasPrefix(line, "process_resident_memory_bytes") {
			out = append(out, "  "+line)
		}
	}
	return strings.Join(out, "\n")
}
