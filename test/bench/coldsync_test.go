// Package bench measures Dunlin against real components. Run with `make bench`; of this package,
// `make test` runs only TestContentCheck and TestPolicyContentCheck, the tests of the benchmarks'
// completion criterion.
package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

// sizes returns the cluster size: 100 nodes x 100 pods unless DUNLIN_BENCH_NODES and
// DUNLIN_BENCH_PODS_PER_NODE say otherwise (at most 250 pods per /24).
func sizes() (nodes, podsPerNode int) {
	nodes, podsPerNode = 100, 100
	if v, err := strconv.Atoi(os.Getenv("DUNLIN_BENCH_NODES")); err == nil && v > 0 && v <= 256 {
		nodes = v
	}
	if v, err := strconv.Atoi(os.Getenv("DUNLIN_BENCH_PODS_PER_NODE")); err == nil && v > 0 && v <= 250 {
		podsPerNode = v
	}
	return nodes, podsPerNode
}

// benchModes are the cold syncs of BenchmarkColdSync; each has a namespace of its own.
var benchModes = []string{"annotated", "fresh"}

// BenchmarkColdSync starts dunlin-controller against an apiserver holding 100 nodes and 10,000 pods
// and an empty NB, and measures the time until NB holds exactly the rows the translator's mapping
// gives for the API's objects: every row with every managed column, in its parent, with its
// references (see nbRows), and nothing else. "annotated" is a controller restart into an empty NB
// (subnets and addresses persisted, as after an NB rebuild); "fresh" also allocates every subnet and
// address and writes every annotation.
//
// Floors, in the same run: the NB floor is the same rows written into another empty NB by a minimal
// libovsdb writer in 1000-operation transactions, timed the same way. For "fresh", the patch floor is
// the apiserver's own rate for the controller's annotation patches: the same merge patch on the same
// pods, from as many concurrent workers as the controller has, through an unthrottled client. The
// controller runs with its client-side rate limit off (--kube-api-qps=-1), so what is compared is the
// controller with the apiserver, not with its own limiter.
func BenchmarkColdSync(b *testing.B) {
	dir, kube, bin := startKube(b)

	for _, mode := range benchModes {
		b.Run(mode, func(b *testing.B) {
			fresh := mode == "fresh"
			var ctrlTotal, floorTotal, patchTotal time.Duration
			var rows, pods int
			for i := range b.N {
				// Only this mode's objects are in the API: the controller syncs everything it finds.
				d := populate(b, kube.Client, "bench-"+mode, !fresh)
				want, err := d.rows()
				if err != nil {
					b.Fatal(err)
				}
				rows, pods = want.total(), len(d.pods)
				run := fmt.Sprintf("%s-%d", mode, i)
				floorTotal += floorWrite(b, startNB(b, filepath.Join(dir, "floor-"+run)), d, want)
				if fresh {
					patchTotal += patchFloor(b, kube, d, translator.DefaultConfig().Workers)
				}
				ctrlTotal += controllerSync(b, dir, run, bin, kube, want.count(nbmodel.LogicalSwitchPortTable))
			}
			n := float64(b.N)
			b.ReportMetric(ctrlTotal.Seconds()/n, "s/sync")
			b.ReportMetric(float64(rows)*n/ctrlTotal.Seconds(), "rows/s")
			b.ReportMetric(floorTotal.Seconds()/n, "floor-s/sync")
			b.ReportMetric(ctrlTotal.Seconds()/floorTotal.Seconds(), "x-floor")
			b.Logf("%s cold sync of %d rows: controller %.2fs, NB floor %.2fs, %.2fx the floor",
				mode, rows, ctrlTotal.Seconds()/n, floorTotal.Seconds()/n, ctrlTotal.Seconds()/floorTotal.Seconds())
			if fresh {
				ctrlRate := float64(pods) * n / ctrlTotal.Seconds()
				patchRate := float64(pods) * n / patchTotal.Seconds()
				b.ReportMetric(ctrlRate, "pods/s")
				b.ReportMetric(patchRate, "patch-floor-pods/s")
				b.ReportMetric(ctrlRate/patchRate, "rate/patch-floor")
				b.Logf("fresh allocation of %d pods: controller %.0f pods/s (whole sync), the apiserver's own annotation "+
					"patches %.0f pods/s: %.2f of the patch floor; with the default --kube-api-qps=200 a large backlog would go at about 200 pods/s",
					pods, ctrlRate, patchRate, ctrlRate/patchRate)
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// desired is what the benchmark cluster holds, as the translator's mapping functions take it.
type desired struct {
	nodes []translator.NodeNetwork
	pods  []translator.PodNetwork
}

// rows are the NB rows the mapping gives for d.
func (d desired) rows() (*nbRows, error) {
	db, err := nbDatabaseModel()
	if err != nil {
		return nil, err
	}
	return expectRows(db, d.nodes, d.pods)
}

// expectRows are the NB rows of the cluster, nodes and pods, from the translator's mapping functions.
func expectRows(db model.DatabaseModel, nodes []translator.NodeNetwork, pods []translator.PodNetwork) (*nbRows, error) {
	want := newNBRows(db, nil)
	if err := want.add(translator.ClusterOwner, append(translator.ClusterRows(), translator.GatewayClusterRows(gatewayEnv())...)); err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if err := want.add(translator.Owner(translator.KindNode, n.Name), translator.NodeRows(n)); err != nil {
			return nil, err
		}
	}
	for _, p := range pods {
		if err := want.add(translator.Owner(translator.KindPod, p.Namespace+"/"+p.Name), translator.PodRows(p)); err != nil {
			return nil, err
		}
	}
	return want, nil
}

// apiRows are the NB rows the API's current nodes and pods mean, from their subnet and address
// annotations; an error while any of them has none yet.
func apiRows(ctx context.Context, kube kubernetes.Interface, db model.DatabaseModel) (*nbRows, error) {
	d, _, err := apiDesired(ctx, kube)
	if err != nil {
		return nil, err
	}
	return expectRows(db, d.nodes, d.pods)
}

// apiDesired is the cluster the API holds now, from the nodes' subnet and the pods' address
// annotations, with the networked pods as NetworkPolicy's mapping takes them; an error while any of
// them has none yet.
func apiDesired(ctx context.Context, kube kubernetes.Interface) (desired, []translator.PolicyPod, error) {
	var d desired
	nodeList, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return d, nil, fmt.Errorf("list nodes: %w", err)
	}
	podList, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return d, nil, fmt.Errorf("list pods: %w", err)
	}
	for i := range nodeList.Items {
		n := &nodeList.Items[i]
		subnets, _, err := annotations.DeclaredNodeSubnets(n)
		if err != nil {
			return d, nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		subnet := annotations.IPv4Subnet(subnets)
		if !subnet.IsValid() {
			return d, nil, fmt.Errorf("node %s has no subnet yet", n.Name)
		}
		d.nodes = append(d.nodes, translator.NodeNetwork{Name: n.Name, Subnet: subnet})
	}
	var networked []translator.PolicyPod
	for i := range podList.Items {
		p := &podList.Items[i]
		if p.Spec.NodeName == "" || p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		s, ok := p.Annotations[annotations.PodNetwork]
		if !ok {
			return d, nil, fmt.Errorf("pod %s/%s has no address yet", p.Namespace, p.Name)
		}
		info, err := annotations.ParsePodNetwork(s)
		if err != nil {
			return d, nil, fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		addr, _ := info.IPv4()
		d.pods = append(d.pods, translator.PodNetwork{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID),
			Node: p.Spec.NodeName, Addr: addr.Addr()})
		networked = append(networked, translator.PolicyPod{Pod: p, Addr: addr.Addr()})
	}
	return d, networked, nil
}

// gatewayEnv is the gateway configuration of a controller with default flags.
func gatewayEnv() translator.GatewayEnv {
	cfg := translator.DefaultConfig()
	return translator.GatewayEnv{ClusterCIDR: cfg.ClusterCIDR, JoinSubnet: cfg.JoinSubnet, NodePortRange: cfg.NodePortRange}
}

func nbDatabaseModel() (model.DatabaseModel, error) {
	clientModel, schema, err := translator.NBModel()
	if err != nil {
		return model.DatabaseModel{}, err
	}
	db, errs := model.NewDatabaseModel(schema, clientModel)
	if len(errs) > 0 {
		return model.DatabaseModel{}, fmt.Errorf("NB database model: %v", errs)
	}
	return db, nil
}

func tempDir(b testing.TB) string {
	dir, err := os.MkdirTemp("", "dlb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startKube starts the control plane of a benchmark and builds the controller, in a directory of its
// own that holds their files and logs; the control plane stops when the benchmark ends.
func startKube(b *testing.B) (dir string, kube *harness.Kube, bin string) {
	dir = tempDir(b)
	kube, err := harness.StartKube(context.Background(), harness.KubeOptions{Dir: filepath.Join(dir, "kube")})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { kube.Stop() })
	return dir, kube, buildController(b, dir)
}

func buildController(b *testing.B, dir string) string {
	_, self, _, _ := runtime.Caller(0)
	bin := filepath.Join(dir, "dunlin-controller")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/dunlin-controller")
	cmd.Dir = filepath.Join(filepath.Dir(self), "..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// controllerArgs are the flags of every benchmarked controller. Its client-side rate limit is off:
// the benchmarks compare it with the apiserver, not with its own limiter.
func controllerArgs(kube *harness.Kube, nbAddr, metricsAddr string) []string {
	return []string{"--kubeconfig", kube.Kubeconfig, "--nb-address", nbAddr, "--metrics-bind-address", metricsAddr,
		"--leader-elect=false", "--kube-api-qps=-1"}
}

// parallel runs f for 0..n-1 on workers goroutines and returns the first error.
func parallel(n, workers int, f func(i int) error) error {
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				if err := f(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return firstErr
}

// populate leaves exactly the nodes and pods of namespace ns in the API (those of the other modes
// are deleted); annotated ones carry the subnet and addresses the controller would have chosen.
func populate(b *testing.B, kube kubernetes.Interface, ns string, annotated bool) desired {
	ctx := context.Background()
	resetBenchObjects(b, kube)
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		b.Fatal(err)
	}
	// No serviceaccount controller runs here; pods are refused without the default account.
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		b.Fatal(err)
	}
	benchNodes, benchPodsPerNode := sizes()
	var d desired
	for i := range benchNodes {
		d.nodes = append(d.nodes, translator.NodeNetwork{Name: fmt.Sprintf("%s-n%03d", ns, i),
			Subnet: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))})
	}
	for i, n := range d.nodes {
		for j := range benchPodsPerNode {
			d.pods = append(d.pods, translator.PodNetwork{Namespace: ns, Name: fmt.Sprintf("p%03d-%03d", i, j), Node: n.Name,
				Addr: netip.AddrFrom4([4]byte{10, 244, byte(i), byte(3 + j)})})
		}
	}
	err := parallel(len(d.nodes), 16, func(i int) error {
		n := d.nodes[i]
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"bench": ns}}}
		if annotated {
			node.Annotations = map[string]string{annotations.NodeSubnet: annotations.FormatNodeSubnets([]netip.Prefix{n.Subnet})}
		}
		_, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	subnets := map[string]netip.Prefix{}
	for _, n := range d.nodes {
		subnets[n.Name] = n.Subnet
	}
	err = parallel(len(d.pods), 16, func(i int) error {
		p := &d.pods[i]
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.Name},
			Spec:       corev1.PodSpec{NodeName: p.Node, Containers: []corev1.Container{{Name: "c", Image: "x"}}},
		}
		if annotated {
			pod.Annotations = map[string]string{annotations.PodNetwork: podNetworkValue(p.Addr, subnets[p.Node])}
		}
		created, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err == nil {
			p.UID = string(created.UID)
		}
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return d
}

// podNetworkValue is the pod annotation the controller writes for addr in subnet.
func podNetworkValue(addr netip.Addr, subnet netip.Prefix) string {
	return annotations.NewPodNetworkInfo([]netip.Prefix{netip.PrefixFrom(addr, subnet.Bits())},
		[]netip.Addr{conventions.GatewayIP(subnet)}, conventions.MACFromIP(addr)).Marshal()
}

// resetBenchObjects deletes the pods and nodes of every mode and waits until they are gone.
func resetBenchObjects(b *testing.B, kube kubernetes.Interface) {
	ctx := context.Background()
	zero := int64(0)
	for _, mode := range benchModes {
		if err := kube.CoreV1().Pods("bench-"+mode).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero},
			metav1.ListOptions{}); err != nil && !apierrors.IsNotFound(err) {
			b.Fatal(err)
		}
	}
	if err := kube.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "bench"}); err != nil {
		b.Fatal(err)
	}
	err := harness.Eventually(5*time.Minute, func() error {
		for _, mode := range benchModes {
			pods, err := kube.CoreV1().Pods("bench-"+mode).List(ctx, metav1.ListOptions{Limit: 1})
			if err != nil {
				return err
			}
			if len(pods.Items) > 0 {
				return fmt.Errorf("pods of bench-%s still exist", mode)
			}
		}
		nodes, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "bench", Limit: 1})
		if err != nil {
			return err
		}
		if len(nodes.Items) > 0 {
			return fmt.Errorf("bench nodes still exist")
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
}

// startNB starts an empty NB.
func startNB(b testing.TB, dir string) *harness.OVN {
	ovn, err := harness.StartOVN(context.Background(), harness.OVNOptions{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ovn.Stop() })
	return ovn
}

// connectNB connects a client to NB that monitors the tables the controller manages, as the
// controller's own client does.
func connectNB(b testing.TB, addr string) client.Client {
	dbModel, _, err := translator.NBModel()
	if err != nil {
		b.Fatal(err)
	}
	nb, err := translator.ConnectNB(context.Background(), addr, nil, dbModel)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nb.Close)
	return nb
}

// watchNB connects a client of its own that monitors the tables the controller manages and notes
// when any of them changes: what is measured is what any NB reader (ovn-northd) would see, not the
// writer's cache.
func watchNB(b testing.TB, addr string) (client.Client, *changeClock) {
	nb := connectNB(b, addr)
	clock := &changeClock{}
	nb.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc:    func(string, model.Model) { clock.touch() },
		UpdateFunc: func(string, model.Model, model.Model) { clock.touch() },
		DeleteFunc: func(string, model.Model) { clock.touch() },
	})
	return nb, clock
}

// tableLen counts the rows of table in nb's cache.
func tableLen(nb client.Client, table string) func() int {
	return func() int {
		if tc := nb.Cache().Table(table); tc != nil {
			return tc.Len()
		}
		return 0
	}
}

// controllerSync runs the controller against an empty NB until NB holds exactly what the API's
// objects mean, and returns how long that took. ports, the logical switch ports expected, is only
// the cheap first sign of completion.
func controllerSync(b *testing.B, dir, run, bin string, kube *harness.Kube, ports int) time.Duration {
	ovn := startNB(b, filepath.Join(dir, "nb-"+run))
	watcher, clock := watchNB(b, ovn.NBAddr)
	db := watcher.Cache().DatabaseModel()
	start := time.Now()
	p, err := harness.StartProcess("dunlin-controller", filepath.Join(dir, run+".log"), nil, bin,
		controllerArgs(kube, ovn.NBAddr, "")...)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Stop()
	done := syncDone{
		what:    "controller " + run,
		count:   tableLen(watcher, nbmodel.LogicalSwitchPortTable),
		atLeast: ports,
		content: func() error {
			want, err := apiRows(context.Background(), kube.Client, db)
			if err != nil {
				return err
			}
			return want.diff(cacheReader(watcher))
		},
		clock: clock,
		alive: func() bool { return !p.Exited() },
	}
	return done.wait(b, 10*time.Minute).Sub(start)
}

// floorWrite writes the rows of want (the cluster d) into the empty NB ovn with no translation, and
// times it as the controller is timed. It writes the cluster rows with every router port in one
// transaction, then whole switches with their ports, in 1000-operation transactions.
func floorWrite(b testing.TB, ovn *harness.OVN, d desired, want *nbRows) time.Duration {
	w := newFloorWriter(b, ovn, want)
	write := w.prepareNodes(d) // the rows, prepared before the clock starts
	start := time.Now()
	write()
	w.flush()
	return w.done("NB floor").wait(b, 5*time.Minute).Sub(start)
}

// floorWriter writes expected rows straight into NB, in batched transactions, through a client that
// monitors the tables the controller's does; a second client watches as the controller is watched.
type floorWriter struct {
	b       testing.TB
	nb      client.Client
	watcher client.Client
	clock   *changeClock
	want    *nbRows
	ops     []ovsdb.Operation
	named   int
	// created are the rows of ops not committed yet (named UUID -> operation index); uuids the real
	// UUIDs of committed ones, by named UUID.
	created map[string]int
	uuids   map[string]string
	// ids are the named UUIDs of created rows by table and identity (see nbRows.identity).
	ids map[string]string
}

func newFloorWriter(b testing.TB, ovn *harness.OVN, want *nbRows) *floorWriter {
	w := &floorWriter{b: b, nb: connectNB(b, ovn.NBAddr), want: want, created: map[string]int{},
		uuids: map[string]string{}, ids: map[string]string{}}
	w.watcher, w.clock = watchNB(b, ovn.NBAddr)
	return w
}

// create adds the insert of m and returns its named UUID, which other rows of the same transaction
// may reference (ref resolves it in later ones).
func (w *floorWriter) create(m model.Model) string {
	w.named++
	id := fmt.Sprintf("r%d", w.named)
	table := w.want.db.FindTable(reflect.TypeOf(m))
	info, err := w.want.db.NewModelInfo(m)
	if err == nil {
		err = info.SetField("_uuid", id)
	}
	var identity string
	if err == nil {
		identity, err = w.want.identity(table, info)
	}
	if err != nil {
		w.b.Fatal(err)
	}
	w.ids[table+"/"+identity] = id
	o, err := w.nb.Create(m)
	if err != nil {
		w.b.Fatal(err)
	}
	w.ops = append(w.ops, o...)
	w.created[id] = len(w.ops) - 1
	return id
}

// flush commits the pending operations in one transaction.
func (w *floorWriter) flush() {
	if len(w.ops) == 0 {
		return
	}
	res, err := w.nb.Transact(context.Background(), w.ops...)
	if err == nil {
		_, err = ovsdb.CheckOperationResults(res, w.ops)
	}
	if err != nil {
		w.b.Fatal(err)
	}
	for id, i := range w.created {
		w.uuids[id] = res[i].UUID.GoUUID
	}
	w.ops, w.created = w.ops[:0], map[string]int{}
}

// flushIfFull commits once a transaction holds 1000 operations.
func (w *floorWriter) flushIfFull() {
	if len(w.ops) >= 1000 {
		w.flush()
	}
}

// ref is what references the created row of table with identity: its named UUID while it is in
// the pending transaction, its real UUID after.
func (w *floorWriter) ref(table, identity string) string {
	id, ok := w.ids[table+"/"+identity]
	if !ok {
		w.b.Fatalf("floor: %s %q was not created", table, identity)
	}
	if _, pending := w.created[id]; pending {
		return id
	}
	return w.uuids[id]
}

// done tells when the watcher sees exactly the expected rows.
func (w *floorWriter) done(what string) syncDone {
	return syncDone{
		what:    what,
		count:   tableLen(w.watcher, nbmodel.LogicalSwitchPortTable),
		atLeast: w.want.count(nbmodel.LogicalSwitchPortTable),
		content: func() error { return w.want.diff(cacheReader(w.watcher)) },
		clock:   w.clock,
	}
}

// prepareNodes prepares the cluster, node and pod rows of d and returns what writes them: the cluster
// rows with every router port in one transaction, then whole switches with their ports.
func (w *floorWriter) prepareNodes(d desired) func() {
	podsByNode := map[string][]translator.PodNetwork{}
	for _, p := range d.pods {
		podsByNode[p.Node] = append(podsByNode[p.Node], p)
	}
	var router *nbmodel.LogicalRouter
	var join *nbmodel.LogicalSwitch
	var groups, routerPorts, joinPorts []model.Model
	for _, m := range w.want.models(translator.ClusterOwner) {
		switch m := m.(type) {
		case *nbmodel.LogicalRouter:
			router = m
		case *nbmodel.LoadBalancerGroup:
			groups = append(groups, m)
		case *nbmodel.LogicalSwitch: // join, to the gateway routers
			join = m
		case *nbmodel.LogicalRouterPort: // the cluster router's port on join
			routerPorts = append(routerPorts, m)
		case *nbmodel.LogicalSwitchPort: // its peer
			joinPorts = append(joinPorts, m)
		}
	}
	type nodeRows struct {
		ls    *nbmodel.LogicalSwitch
		lrp   *nbmodel.LogicalRouterPort
		ports []model.Model
	}
	nodes := make([]nodeRows, len(d.nodes))
	for i, n := range d.nodes {
		for _, m := range w.want.models(translator.Owner(translator.KindNode, n.Name)) {
			switch m := m.(type) {
			case *nbmodel.LogicalSwitch:
				nodes[i].ls = m
			case *nbmodel.LogicalRouterPort:
				nodes[i].lrp = m
			default:
				nodes[i].ports = append(nodes[i].ports, m)
			}
		}
		for _, p := range podsByNode[n.Name] {
			nodes[i].ports = append(nodes[i].ports, w.want.models(translator.Owner(translator.KindPod, p.Namespace+"/"+p.Name))...)
		}
	}
	return func() {
		for _, g := range groups {
			w.create(g)
		}
		for _, p := range routerPorts {
			router.Ports = append(router.Ports, w.create(p))
		}
		for _, n := range nodes {
			router.Ports = append(router.Ports, w.create(n.lrp))
		}
		w.create(router)
		if join != nil {
			for _, p := range joinPorts {
				join.Ports = append(join.Ports, w.create(p))
			}
			w.create(join)
		}
		w.flush()
		groupUUID := w.ref(nbmodel.LoadBalancerGroupTable, translator.ClusterLBGroup)
		for _, n := range nodes {
			for _, p := range n.ports {
				n.ls.Ports = append(n.ls.Ports, w.create(p))
			}
			n.ls.LoadBalancerGroup = []string{groupUUID}
			w.create(n.ls)
			w.flushIfFull()
		}
	}
}
