package bench

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

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

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

const gwNamespace = "bench-gw"

// The gateway benchmark's cluster CIDR is wide enough for 1,000 /24 node subnets.
var gwClusterCIDR = netip.MustParsePrefix("10.128.0.0/9")

// gwSizes are DUNLIN_BENCH_GW_NODES (default 50, at most 1000) and DUNLIN_BENCH_GW_SERVICES (default
// 1000, at most 2700: each takes a node port).
func gwSizes() (nodes, services int) {
	size := func(name string, def, most int) int {
		if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 && v <= most {
			return v
		}
		return def
	}
	return size("DUNLIN_BENCH_GW_NODES", 50, 1000), size("DUNLIN_BENCH_GW_SERVICES", 1000, 2700)
}

// gwCluster is the benchmark's API content: nodes with gateway annotations, NodePort Services.
type gwCluster struct {
	nodes    []*corev1.Node
	services []*corev1.Service
	slices   []*discoveryv1.EndpointSlice
}

func gwNodeSubnet(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(128 + i/256), byte(i % 256), 0}), 24)
}

func gwNodeIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 18, byte(1 + i/250), byte(1 + i%250)})
}

// gwNode is node i as dunlin-node and the kubelet would leave it: pod subnet, InternalIP, gateway.
func gwNode(i int) *corev1.Node {
	subnet, ip := gwNodeSubnet(i), gwNodeIP(i)
	g := annotations.NodeGatewayInfo{Format: 1, Bridge: "br-ex", Interface: "eth0",
		MACAddress: fmt.Sprintf("0a:00:00:00:%02x:%02x", i/256, i%256), IPAddresses: []string{netip.PrefixFrom(ip, 16).String()},
		NextHops: []string{"172.18.0.1"}}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-n%03d", gwNamespace, i), Labels: map[string]string{"bench": gwNamespace},
			Annotations: map[string]string{annotations.NodeGateway: g.Marshal()}},
		Spec:   corev1.NodeSpec{PodCIDR: subnet.String(), PodCIDRs: []string{subnet.String()}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}}},
	}
}

// gwService is NodePort Service i with one slice of three endpoints on three nodes.
func gwService(i, nodes int) (*corev1.Service, *discoveryv1.EndpointSlice) {
	name := fmt.Sprintf("np-%04d", i)
	ip := addrAt(svcIPBase, i).String()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: gwNamespace, Name: name},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIP: ip, ClusterIPs: []string{ip},
			Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, NodePort: int32(30000 + i),
				TargetPort: intstr.FromInt32(8080)}}},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: gwNamespace, Name: name + "-bench", Labels: map[string]string{
			discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: "dunlin-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for j := range 3 {
		n := (i + j) % nodes
		slice.Endpoints = append(slice.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{gwNodeSubnet(n).Addr().Next().Next().Next().String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(fmt.Sprintf("%s-n%03d", gwNamespace, n)),
		})
	}
	return svc, slice
}

func newGWCluster(nodes, services int) *gwCluster {
	c := &gwCluster{}
	for i := range nodes {
		c.nodes = append(c.nodes, gwNode(i))
	}
	for i := range services {
		svc, slice := gwService(i, nodes)
		c.services = append(c.services, svc)
		c.slices = append(c.slices, slice)
	}
	return c
}

// create puts the cluster's objects into the API.
func (c *gwCluster) create(b *testing.B, kube kubernetes.Interface) {
	ctx := context.Background()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: gwNamespace}},
		metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		b.Fatal(err)
	}
	if err := parallel(len(c.nodes), 16, func(i int) error {
		n, err := kube.CoreV1().Nodes().Create(ctx, c.nodes[i], metav1.CreateOptions{})
		if err != nil {
			return err
		}
		n.Status = c.nodes[i].Status
		_, err = kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	if err := parallel(len(c.services), 32, func(i int) error {
		if _, err := kube.CoreV1().Services(gwNamespace).Create(ctx, c.services[i], metav1.CreateOptions{}); err != nil {
			return err
		}
		_, err := kube.DiscoveryV1().EndpointSlices(gwNamespace).Create(ctx, c.slices[i], metav1.CreateOptions{})
		return err
	}); err != nil {
		b.Fatal(err)
	}
}

// rows are the NB rows the mapping gives for the cluster, with each gateway router's join address
// from join (the controller allocates them in the order it happens to sync nodes). The apiserver's own
// kubernetes Service is left out of the comparison.
func (c *gwCluster) rows(db model.DatabaseModel, join func(node string) (netip.Addr, bool)) (*nbRows, error) {
	env := gatewayEnv()
	env.ClusterCIDR = gwClusterCIDR
	kubernetesSvc := translator.Owner(translator.KindService, "default/kubernetes")
	want := newNBRows(db, func(owner string) bool { return owner != kubernetesSvc })
	if err := want.add(translator.ClusterOwner, append(translator.ClusterRows(), translator.GatewayClusterRows(env)...)); err != nil {
		return nil, err
	}
	for i, n := range c.nodes {
		ip, ok := join(n.Name)
		if !ok {
			return nil, fmt.Errorf("node %s has no join address yet", n.Name)
		}
		g, err := annotations.ParseNodeGateway(n.Annotations[annotations.NodeGateway])
		if err != nil {
			return nil, err
		}
		if err := want.add(translator.Owner(translator.KindNode, n.Name), translator.NodeRows(translator.NodeNetwork{Name: n.Name, Subnet: gwNodeSubnet(i)})); err != nil {
			return nil, err
		}
		gn := translator.GatewayNode{Name: n.Name, Subnet: gwNodeSubnet(i), HostIPs: []netip.Addr{gwNodeIP(i)}, Gateway: &g, JoinIP: ip}
		if err := want.add(translator.Owner(translator.KindGateway, n.Name), translator.GatewayRows(gn, env)); err != nil {
			return nil, err
		}
	}
	ranges := translator.EndpointRanges{Pods: []netip.Prefix{gwClusterCIDR}}
	for i, svc := range c.services {
		rows, problems := translator.ServiceRows(svc, []*discoveryv1.EndpointSlice{c.slices[i]}, translator.ServiceEnv{Ranges: ranges})
		if len(problems) > 0 {
			return nil, fmt.Errorf("service %s: %v", svc.Name, problems)
		}
		if err := want.add(translator.Owner(translator.KindService, gwNamespace+"/"+svc.Name), rows); err != nil {
			return nil, err
		}
	}
	return want, nil
}

// desired is the cluster's nodes as the node floor writer takes them.
func (c *gwCluster) desired() desired {
	var d desired
	for i, n := range c.nodes {
		d.nodes = append(d.nodes, translator.NodeNetwork{Name: n.Name, Subnet: gwNodeSubnet(i)})
	}
	return d
}

// gatewayOwners are the owners of the gateway and Service rows, in writing order.
func (c *gwCluster) gatewayOwners() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, translator.Owner(translator.KindGateway, n.Name))
	}
	for _, s := range c.services {
		out = append(out, translator.Owner(translator.KindService, gwNamespace+"/"+s.Name))
	}
	return out
}

// floorJoin is the join addresses the floor writer uses: node i gets the (i+2)th address.
func (c *gwCluster) floorJoin() func(string) (netip.Addr, bool) {
	byNode := map[string]netip.Addr{}
	a := translator.ClusterJoinIP(gatewayEnv().JoinSubnet)
	for _, n := range c.nodes {
		a = a.Next()
		byNode[n.Name] = a
	}
	return func(node string) (netip.Addr, bool) { a, ok := byNode[node]; return a, ok }
}

// nbJoin reads the gateway routers' join addresses from a client's cache.
func nbJoin(nb client.Client) func(string) (netip.Addr, bool) {
	byNode := map[string]netip.Addr{}
	if tc := nb.Cache().Table(nbmodel.LogicalRouterPortTable); tc != nil {
		for _, m := range tc.RowsShallow() {
			lrp := m.(*nbmodel.LogicalRouterPort)
			if node, ok := strings.CutPrefix(lrp.Name, "rtoj-GR_"); ok && len(lrp.Networks) == 1 {
				if p, err := netip.ParsePrefix(lrp.Networks[0]); err == nil {
					byNode[node] = p.Addr()
				}
			}
		}
	}
	return func(node string) (netip.Addr, bool) { a, ok := byNode[node]; return a, ok }
}

// BenchmarkGatewayColdSync starts dunlin-controller against an apiserver holding 50 nodes with gateway
// annotations and 1,000 NodePort Services (one 3-endpoint slice each) and an empty NB, and measures the
// time until NB holds exactly the rows the mapping gives (nodes, gateway routers with their ports,
// switches, routes, NAT, policies, template variables, Service load balancers; see nbRows). The floor
// is the same rows written into another empty NB by a minimal libovsdb writer in 1000-operation
// transactions, timed the same way. It also reports the NB rows by table that the mapping gives for 50
// and 500 nodes with the same Services.
func BenchmarkGatewayColdSync(b *testing.B) {
	nodes, services := gwSizes()
	db, err := nbDatabaseModel()
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range []int{50, 500} {
		c := newGWCluster(n, services)
		want, err := c.rows(db, c.floorJoin())
		if err != nil {
			b.Fatal(err)
		}
		var parts []string
		for _, table := range slices.Sorted(maps.Keys(want.rows)) {
			parts = append(parts, fmt.Sprintf("%s=%d", table, want.count(table)))
		}
		b.Logf("NB rows with %d nodes and %d NodePort Services: %d (%s)", n, services, want.total(), strings.Join(parts, " "))
		b.ReportMetric(float64(want.total()), fmt.Sprintf("rows@%dnodes", n))
	}

	dir, kube, bin := startKube(b)
	c := newGWCluster(nodes, services)
	t0 := time.Now()
	c.create(b, kube.Client)
	b.Logf("created %d nodes and %d Services in %s", nodes, services, time.Since(t0).Round(time.Millisecond))

	var syncTotal, floorTotal time.Duration
	for i := range b.N {
		floorTotal += floorGateways(b, filepath.Join(dir, fmt.Sprintf("floor-%d", i)), c, db)
		syncTotal += controllerGatewaySync(b, dir, fmt.Sprintf("gw-%d", i), bin, kube, c, db)
	}
	nf := float64(b.N)
	b.ReportMetric(syncTotal.Seconds()/nf, "s/sync")
	b.ReportMetric(floorTotal.Seconds()/nf, "floor-s/sync")
	b.ReportMetric(syncTotal.Seconds()/floorTotal.Seconds(), "x-floor")
	b.Logf("cold sync of %d gateway nodes and %d NodePort Services: controller %.2fs, floor %.2fs, %.1fx floor",
		nodes, services, syncTotal.Seconds()/nf, floorTotal.Seconds()/nf, syncTotal.Seconds()/floorTotal.Seconds())
}

// controllerGatewaySync runs the controller against an empty NB until NB holds exactly the rows of c.
func controllerGatewaySync(b *testing.B, dir, run, bin string, kube *harness.Kube, c *gwCluster, db model.DatabaseModel) time.Duration {
	want, err := c.rows(db, c.floorJoin())
	if err != nil {
		b.Fatal(err)
	}
	ovn := startNB(b, filepath.Join(dir, "nb-"+run))
	watcher, clock := watchNB(b, ovn.NBAddr)
	ctrl := startController(b, dir, run, bin, kube, ovn, "--cluster-cidr="+gwClusterCIDR.String())
	done := syncDone{
		what:    "controller " + run,
		count:   tableLen(watcher, nbmodel.LogicalSwitchPortTable),
		atLeast: want.count(nbmodel.LogicalSwitchPortTable),
		content: func() error {
			want, err := c.rows(db, nbJoin(watcher))
			if err != nil {
				return err
			}
			return want.diff(cacheReader(watcher))
		},
		clock: clock,
		alive: ctrl.alive(b),
	}
	took := done.wait(b, 10*time.Minute).Sub(ctrl.start)
	if err := ctrl.proc.Stop(); err != nil {
		b.Logf("stop controller: %v", err)
	}
	return took
}

// floorGateways writes the rows of c into an empty NB with no translation and times it as the
// controller is timed: the cluster and node rows as floorWrite does, then each gateway's and Service's
// rows whole (children inserted first and named in their parent's column; the cluster router, join
// switch and load balancer groups mutated once per transaction), in transactions of about 1000
// operations.
func floorGateways(b *testing.B, dir string, c *gwCluster, db model.DatabaseModel) time.Duration {
	want, err := c.rows(db, c.floorJoin())
	if err != nil {
		b.Fatal(err)
	}
	w := newFloorWriter(b, startNB(b, dir), want)
	writeNodes := w.prepareNodes(c.desired())
	writeRest := w.prepareOwners(c.gatewayOwners())
	start := time.Now()
	writeNodes()
	w.flush() // the gateways hang off the cluster router and join switch
	writeRest()
	return w.done("gateway NB floor").wait(b, 5*time.Minute).Sub(start)
}

// prepareOwners prepares the rows of owners, whose parents are either their own rows or rows already
// committed, and returns what writes them, one owner whole at a time.
func (w *floorWriter) prepareOwners(owners []string) func() {
	type parentKey struct{ table, name, column string }
	type owned struct {
		models []model.Model // children before parents
		refs   []map[string][]string
		// outside are, per parent of another owner, the indexes in models of its children.
		outside map[parentKey][]int
		// inside are, per model index, the model indexes of its children in the same owner.
		inside map[int][]struct {
			child  int
			column string
		}
	}
	var plan []owned
	for _, owner := range owners {
		rows, models := w.want.byOwner[owner], w.want.models(owner)
		o := owned{outside: map[parentKey][]int{}, inside: map[int][]struct {
			child  int
			column string
		}{}}
		local := map[string]int{} // table/name -> index in o.models
		// Mapping order has parents first: walk it backwards, children first.
		for i := len(rows) - 1; i >= 0; i-- {
			o.models = append(o.models, models[i])
			o.refs = append(o.refs, rows[i].refs)
			if name, err := w.want.identity(rows[i].table, rows[i].info); err == nil {
				local[rows[i].table+"/"+name] = len(o.models) - 1
			}
		}
		for i := len(rows) - 1; i >= 0; i-- {
			idx := len(rows) - 1 - i
			for _, p := range rows[i].parents {
				if j, ok := local[p.table+"/"+p.name]; ok {
					o.inside[j] = append(o.inside[j], struct {
						child  int
						column string
					}{idx, p.column})
					continue
				}
				k := parentKey{p.table, p.name, p.column}
				o.outside[k] = append(o.outside[k], idx)
			}
		}
		plan = append(plan, o)
	}
	return func() {
		pending := map[parentKey][]string{}
		mutate := func() {
			for _, k := range slices.SortedFunc(maps.Keys(pending), func(a, b parentKey) int {
				return strings.Compare(a.table+"/"+a.name+"/"+a.column, b.table+"/"+b.name+"/"+b.column)
			}) {
				set := make([]any, len(pending[k]))
				for i, id := range pending[k] {
					set[i] = ovsdb.UUID{GoUUID: id}
				}
				w.ops = append(w.ops, ovsdb.Operation{Op: ovsdb.OperationMutate, Table: k.table,
					Where:     []ovsdb.Condition{{Column: "_uuid", Function: ovsdb.ConditionEqual, Value: ovsdb.UUID{GoUUID: w.ref(k.table, k.name)}}},
					Mutations: []ovsdb.Mutation{{Column: k.column, Mutator: ovsdb.MutateOperationInsert, Value: ovsdb.OvsSet{GoSet: set}}}})
			}
			clear(pending)
		}
		for _, o := range plan {
			ids := make([]string, len(o.models))
			for i, m := range o.models {
				info, err := w.want.db.NewModelInfo(m)
				if err != nil {
					w.b.Fatal(err)
				}
				for _, ch := range o.inside[i] {
					cur, _ := info.FieldByColumn(ch.column)
					if err := info.SetField(ch.column, append(slices.Clone(cur.([]string)), ids[ch.child])); err != nil {
						w.b.Fatal(err)
					}
				}
				for col, names := range o.refs[i] {
					rt := refTableOf(info.Metadata.TableSchema.Column(col))
					var uuids []string
					for _, name := range names {
						uuids = append(uuids, w.ref(rt, name))
					}
					if err := info.SetField(col, uuids); err != nil {
						w.b.Fatal(err)
					}
				}
				ids[i] = w.create(m)
			}
			for k, children := range o.outside {
				for _, c := range children {
					pending[k] = append(pending[k], ids[c])
				}
			}
			if len(w.ops) >= 1000 {
				mutate()
				w.flush()
			}
		}
		mutate()
		w.flush()
	}
}
