// Package bench measures Dunlin against real components. Run with `make bench`; nothing here runs in
// `make test` (benchmarks only run with -bench).
package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

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

// BenchmarkColdSync starts dunlin-controller against an apiserver holding 100 nodes and 10,000 pods
// and an empty NB, and measures the time until NB holds every row. "annotated" is a controller
// restart into an empty NB (subnets and addresses persisted, as after an NB rebuild); "fresh" also
// allocates every subnet and address and writes every annotation. The floor is the same rows written
// into another empty NB by a minimal libovsdb writer in 1000-operation transactions, in the same run.
func BenchmarkColdSync(b *testing.B) {
	ctx := context.Background()
	dir := tempDir(b)
	kube, err := harness.StartKube(ctx, harness.KubeOptions{Dir: filepath.Join(dir, "kube")})
	if err != nil {
		b.Fatal(err)
	}
	defer kube.Stop()
	bin := buildController(b, dir)

	for _, mode := range []string{"annotated", "fresh"} {
		b.Run(mode, func(b *testing.B) {
			ns := "bench-" + mode
			rows := populate(b, kube.Client, ns, mode == "annotated")
			var ctrlTotal, floorTotal time.Duration
			for i := range b.N {
				floor := floorWrite(b, dir, rows)
				took := controllerSync(b, dir, fmt.Sprintf("%s-%d", mode, i), bin, kube, rows, ns)
				ctrlTotal += took
				floorTotal += floor
				if mode == "fresh" && i+1 < b.N {
					b.StopTimer()
					populate(b, kube.Client, ns, false)
					b.StartTimer()
				}
			}
			n := float64(b.N)
			b.ReportMetric(ctrlTotal.Seconds()/n, "s/sync")
			b.ReportMetric(float64(rows.total())*n/ctrlTotal.Seconds(), "rows/s")
			b.ReportMetric(floorTotal.Seconds()/n, "floor-s/sync")
			b.ReportMetric(ctrlTotal.Seconds()/floorTotal.Seconds(), "x-floor")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// desired is the NB content the benchmark cluster means.
type desired struct {
	nodes []translator.NodeNetwork
	pods  []translator.PodNetwork
}

// total counts rows: the router, per node a switch, a router port and two ports, one port per pod.
func (d desired) total() int { return 1 + 4*len(d.nodes) + len(d.pods) }

func tempDir(b *testing.B) string {
	dir, err := os.MkdirTemp("", "dlb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
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

// populate (re)creates the benchmark's nodes and pods; annotated ones carry the subnet and addresses
// the controller would have chosen.
func populate(b *testing.B, kube kubernetes.Interface, ns string, annotated bool) desired {
	ctx := context.Background()
	var d desired
	zero := int64(0)
	_ = kube.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, metav1.ListOptions{})
	_ = kube.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "bench=" + ns})
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
	type job func() error
	jobs := make(chan job)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				if err := j(); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
			}
		}()
	}
	for i := range benchNodes {
		name := fmt.Sprintf("%s-n%03d", ns, i)
		subnet := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))
		d.nodes = append(d.nodes, translator.NodeNetwork{Name: name, Subnet: subnet})
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"bench": ns}}}
		if annotated {
			node.Annotations = map[string]string{annotations.NodeSubnet: subnet.String()}
		}
		jobs <- func() error {
			_, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
			return err
		}
	}
	for i, n := range d.nodes {
		for j := range benchPodsPerNode {
			name := fmt.Sprintf("p%03d-%03d", i, j)
			addr := netip.AddrFrom4([4]byte{10, 244, byte(i), byte(3 + j)})
			d.pods = append(d.pods, translator.PodNetwork{Namespace: ns, Name: name, Node: n.Name, Addr: addr})
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
				Spec:       corev1.PodSpec{NodeName: n.Name, Containers: []corev1.Container{{Name: "c", Image: "x"}}},
			}
			if annotated {
				pod.Annotations = map[string]string{annotations.PodNetwork: annotations.PodNetworkInfo{
					IPAddresses: []string{netip.PrefixFrom(addr, 24).String()},
					MACAddress:  conventions.MACFromIP(addr),
					GatewayIPs:  []string{conventions.GatewayIP(n.Subnet).String()},
				}.Marshal()}
			}
			jobs <- func() error {
				_, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
				return err
			}
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return d
}

// startNB starts an empty NB and a monitoring client that counts logical switch ports.
func startNB(b *testing.B, dir string) (*harness.OVN, client.Client) {
	ctx := context.Background()
	ovn, err := harness.StartOVN(ctx, harness.OVNOptions{Dir: dir})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ovn.Stop() })
	dbModel, _, err := translator.NBModel()
	if err != nil {
		b.Fatal(err)
	}
	nb, err := translator.ConnectNB(ctx, ovn.NBAddr, nil, dbModel)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nb.Close)
	return ovn, nb
}

// waitRows waits until the cache of nb holds want logical switch ports.
func waitRows(b *testing.B, nb client.Client, want int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		if tc := nb.Cache().Table("Logical_Switch_Port"); tc != nil && tc.Len() >= want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("NB did not reach %d ports in %s", want, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func controllerSync(b *testing.B, dir, run, bin string, kube *harness.Kube, d desired, ns string) time.Duration {
	ovn, watcher := startNB(b, filepath.Join(dir, "nb-"+run))
	start := time.Now()
	p, err := harness.StartProcess("dunlin-controller", filepath.Join(dir, run+".log"), nil, bin,
		"--kubeconfig", kube.Kubeconfig, "--nb-address", ovn.NBAddr,
		"--metrics-bind-address", "", "--leader-elect=false")
	if err != nil {
		b.Fatal(err)
	}
	defer p.Stop()
	waitRows(b, watcher, 2*len(d.nodes)+len(d.pods), 10*time.Minute)
	return time.Since(start)
}

// floorWrite writes the rows of d into an empty NB with no translation: whole switches with their
// ports in 1000-operation transactions.
func floorWrite(b *testing.B, dir string, d desired) time.Duration {
	_, nb := startNB(b, filepath.Join(dir, fmt.Sprintf("floor-%d", time.Now().UnixNano()%1e6)))
	ctx := context.Background()
	podsByNode := map[string][]translator.PodNetwork{}
	for _, p := range d.pods {
		podsByNode[p.Node] = append(podsByNode[p.Node], p)
	}
	start := time.Now()
	var ops []ovsdb.Operation
	named := 0
	create := func(m model.Model) string {
		named++
		id := fmt.Sprintf("r%d", named)
		setUUID(m, id)
		o, err := nb.Create(m)
		if err != nil {
			b.Fatal(err)
		}
		ops = append(ops, o...)
		return id
	}
	flush := func() {
		if len(ops) == 0 {
			return
		}
		res, err := nb.Transact(ctx, ops...)
		if err == nil {
			_, err = ovsdb.CheckOperationResults(res, ops)
		}
		if err != nil {
			b.Fatal(err)
		}
		ops = ops[:0]
	}
	var lrps []string
	for _, n := range d.nodes {
		rows := translator.NodeRows(n)
		lrps = append(lrps, create(rows[1].Model))
	}
	create(&nbmodel.LogicalRouter{Name: translator.ClusterRouter, Ports: lrps})
	flush()
	for _, n := range d.nodes {
		rows := translator.NodeRows(n)
		ports := []string{create(rows[2].Model), create(rows[3].Model)}
		for _, p := range podsByNode[n.Name] {
			ports = append(ports, create(translator.PodRows(p)[0].Model))
		}
		ls := rows[0].Model.(*nbmodel.LogicalSwitch)
		ls.Ports = ports
		create(ls)
		if len(ops) >= 1000 {
			flush()
		}
	}
	flush()
	waitRows(b, nb, 2*len(d.nodes)+len(d.pods), time.Minute)
	return time.Since(start)
}

func setUUID(m model.Model, id string) {
	switch v := m.(type) {
	case *nbmodel.LogicalSwitch:
		v.UUID = id
	case *nbmodel.LogicalSwitchPort:
		v.UUID = id
	case *nbmodel.LogicalRouterPort:
		v.UUID = id
	case *nbmodel.LogicalRouter:
		v.UUID = id
	}
}
