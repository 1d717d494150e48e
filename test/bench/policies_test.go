package bench

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

const (
	churnRate = 50 // pod creations (and, after churnTimeout, deletions) per second
	churnFor  = 20 * time.Second
	// churnTimeout is how long a new pod may take to be in all its port groups and address sets; it
	// is also how long a churn pod lives.
	churnTimeout = 10 * time.Second
	// Per node, pods of the initial population take .3 to .102, churn pods .103 to .252.
	basePodsPerNode  = 100
	churnPodsPerNode = 150
)

// policyTables are the tables whose rows the NetworkPolicy benchmark reports.
var policyTables = []string{nbmodel.PortGroupTable, nbmodel.AddressSetTable, nbmodel.ACLTable, nbmodel.MeterTable,
	nbmodel.MeterBandTable, nbmodel.LogicalSwitchPortTable}

// policySizes returns the NetworkPolicy benchmark's size: 1,000 policies over 5,000 pods in 100
// namespaces unless DUNLIN_BENCH_POLICIES, DUNLIN_BENCH_POLICY_PODS and DUNLIN_BENCH_POLICY_NAMESPACES
// say otherwise.
func policySizes() (policies, pods, namespaces int) {
	get := func(env string, def, maxV int) int {
		if v, err := strconv.Atoi(os.Getenv(env)); err == nil && v > 0 && v <= maxV {
			return v
		}
		return def
	}
	return get("DUNLIN_BENCH_POLICIES", 1000, 100000), get("DUNLIN_BENCH_POLICY_PODS", 5000, 250*basePodsPerNode),
		get("DUNLIN_BENCH_POLICY_NAMESPACES", 100, 1000)
}

// BenchmarkNetworkPolicies starts dunlin-controller against an apiserver holding 1,000 NetworkPolicies
// over 5,000 annotated pods in 100 labelled namespaces, and an empty NB. The policies mix pod and
// namespace selectors (matchLabels and matchExpressions), ipBlocks with excepts, numbered and named
// ports, port ranges, ingress and egress, default denies and ACL logging.
//
// Cold sync: the time until NB holds exactly the rows the translator's mapping gives (see nbRows:
// port groups with their ports and ACLs, address sets with their addresses, the meter, and the
// nodes' and pods' rows), against the floor: the same rows written by a minimal libovsdb writer in
// 1000-operation transactions, timed the same way.
//
// Churn: with the controller synced, it creates churnRate pods per second for churnFor in the
// namespaces the policies select, and deletes each one churnTimeout later, and measures per new pod the
// time from the API's reply to its creation until a separate NB client sees its port in every port group
// and its address in every address set that the mapping puts it in. Then NB must again hold exactly
// what the API means.
func BenchmarkNetworkPolicies(b *testing.B) {
	ctx := context.Background()
	dir, kube, bin := startKube(b)
	t0 := time.Now()
	world := populatePolicies(b, kube.Client)
	b.Logf("created %d namespaces, %d nodes, %d pods, %d NetworkPolicies in %s", len(world.namespaces), len(world.nodes),
		len(world.pods), len(world.policies), time.Since(t0).Round(time.Millisecond))
	db, err := nbDatabaseModel()
	if err != nil {
		b.Fatal(err)
	}
	want, err := world.rows(db)
	if err != nil {
		b.Fatal(err)
	}
	var counts []string
	for _, t := range policyTables {
		counts = append(counts, fmt.Sprintf("%s %d", t, want.count(t)))
	}
	b.Logf("expected NB rows: %d in all; %s", want.total(), strings.Join(counts, ", "))

	// Other work on the machine slows the controller and NB more than the floor's few transactions.
	b.Logf("machine load before the runs (1, 5, 15 min): %s on %d CPUs", loadAvg(), runtime.NumCPU())
	var syncTotal, floorTotal time.Duration
	var res churnResults
	for i := range b.N {
		floorTotal += floorPolicies(b, startNB(b, filepath.Join(dir, fmt.Sprintf("floor-%d", i))), world, want)
		run := startPolicies(b, dir, fmt.Sprintf("np-%d", i), bin, kube, want)
		syncTotal += run.took
		for _, t := range policyTables {
			n := tableLen(run.watcher.Client, t)()
			b.ReportMetric(float64(n), t+"-rows")
			b.Logf("NB after cold sync: %-19s %6d rows", t, n)
		}
		b.Logf("controller metrics after cold sync:\n%s", scrapeMetrics(run.metricsURL))
		res.add(world.churn(b, kube.Client, run, i))
		b.Logf("controller metrics after churn:\n%s", scrapeMetrics(run.metricsURL))
		// NB must mean the API again, churn pods included: nothing lost, nothing left behind.
		t1 := time.Now()
		err := harness.Eventually(2*time.Minute, func() error {
			d, pods, err := apiDesired(ctx, kube.Client)
			if err != nil {
				return err
			}
			w := policyWorld{desired: d, policyPods: pods, namespaces: world.namespaces, policies: world.policies}
			after, err := w.rows(db)
			if err != nil {
				return err
			}
			return after.diff(cacheReader(run.watcher.Client))
		})
		if err != nil {
			b.Fatalf("NB after churn: %v", err)
		}
		b.Logf("NB held exactly the API's rows %s after the churn's last check", time.Since(t1).Round(time.Millisecond))
		if err := run.proc.Stop(); err != nil {
			b.Logf("stop controller: %v", err)
		}
		deleteChurnPods(b, kube.Client, world.namespaces)
	}
	b.Logf("machine load after the runs (1, 5, 15 min): %s", loadAvg())
	nf := float64(b.N)
	b.ReportMetric(syncTotal.Seconds()/nf, "s/sync")
	b.ReportMetric(floorTotal.Seconds()/nf, "floor-s/sync")
	b.ReportMetric(ratio(syncTotal, floorTotal), "x-floor")
	b.Logf("cold sync of %d policies, %d pods, %d namespaces (%d NB rows): controller %.2fs, floor %.2fs, %.2fx the floor",
		len(world.policies), len(world.pods), len(world.namespaces), want.total(), syncTotal.Seconds()/nf, floorTotal.Seconds()/nf,
		ratio(syncTotal, floorTotal))
	report(b, "pod_policy", res.lat)
	b.ReportMetric(float64(res.created), "churn-pods")
	b.ReportMetric(float64(res.lost), "lost-pods")
	b.Logf("churn: %d pods created, %d in all their port groups and address sets, %d not within %s, %d before the API reply",
		res.created, len(res.lat), res.lost, churnTimeout, res.early)
	if res.lost > 0 {
		b.Errorf("%d new pods never reached all their port groups and address sets", res.lost)
	}
	b.ReportMetric(0, "ns/op")
}

// loadAvg is the machine's load average, as /proc/loadavg gives it.
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	f := strings.Fields(string(data))
	return strings.Join(f[:min(3, len(f))], " ")
}

// policyWorld is the benchmark's cluster as the translator's mapping functions take it.
type policyWorld struct {
	desired                                  // nodes and pods, for their own rows
	policyPods []translator.PolicyPod        // the same pods, with labels and ports
	namespaces []*corev1.Namespace           // in name order
	policies   []*networkingv1.NetworkPolicy // in name order
}

// rows are the NB rows of w: the cluster's, nodes' and pods' rows, and NetworkPolicy's, fed to the
// mapping functions as the controller feeds them (translator/policies.go): per policy PolicyRows, per
// namespace with policies its default deny, per distinct peer its address set.
func (w *policyWorld) rows(db model.DatabaseModel) (*nbRows, error) {
	want, err := expectRows(db, w.nodes, w.pods)
	if err != nil {
		return nil, err
	}
	var mgmt []netip.Addr
	for _, n := range w.nodes {
		mgmt = append(mgmt, conventions.ManagementIP(n.Subnet))
	}
	if err := want.add(translator.ClusterOwner, translator.ClusterPolicyRows(mgmt, translator.DefaultConfig().ACLLogRate)); err != nil {
		return nil, err
	}
	byNS := w.podsByNamespace()
	logging := map[string]string{}
	for _, n := range w.namespaces {
		logging[n.Name] = n.Annotations[translator.ACLLoggingAnnotation]
	}
	peerPods := w.peerPods(byNS)
	policiesByNS := map[string][]*networkingv1.NetworkPolicy{}
	peers := map[string]translator.PolicyPeer{}
	for _, np := range w.policies {
		policiesByNS[np.Namespace] = append(policiesByNS[np.Namespace], np)
		env := translator.PolicyEnv{Pods: byNS[np.Namespace], PeerPods: peerPods, Logging: logging[np.Namespace],
			PodNetwork: translator.DefaultConfig().ClusterCIDR}
		rows, _ := translator.PolicyRows(np, env)
		if err := want.add(translator.Owner(translator.KindPolicy, np.Namespace+"/"+np.Name), rows); err != nil {
			return nil, err
		}
		ps, _ := translator.PolicyPeers(np)
		for _, p := range ps {
			peers[p.Hash()] = p
		}
	}
	for _, ns := range slices.Sorted(maps.Keys(policiesByNS)) {
		rows := translator.NamespaceIsolationRows(ns, policiesByNS[ns], byNS[ns], logging[ns])
		if err := want.add(translator.Owner(translator.KindPolicyNamespace, ns), rows); err != nil {
			return nil, err
		}
	}
	for _, h := range slices.Sorted(maps.Keys(peers)) {
		var addrs []netip.Addr
		for _, p := range peerPods(peers[h]) {
			addrs = append(addrs, p.Addr)
		}
		if err := want.add(peers[h].Owner(), translator.PeerRows(peers[h], addrs)); err != nil {
			return nil, err
		}
	}
	return want, nil
}

// podsByNamespace are the networked pods by namespace, in name order as the controller lists them.
func (w *policyWorld) podsByNamespace() map[string][]translator.PolicyPod {
	byNS := map[string][]translator.PolicyPod{}
	for _, p := range w.policyPods {
		byNS[p.Pod.Namespace] = append(byNS[p.Pod.Namespace], p)
	}
	for _, pods := range byNS {
		slices.SortFunc(pods, func(a, b translator.PolicyPod) int { return strings.Compare(a.Pod.Name, b.Pod.Name) })
	}
	return byNS
}

// peerPods returns what the mapping's PolicyEnv.PeerPods is: the networked pods a peer matches.
func (w *policyWorld) peerPods(byNS map[string][]translator.PolicyPod) func(translator.PolicyPeer) []translator.PolicyPod {
	return func(peer translator.PolicyPeer) []translator.PolicyPod {
		var out []translator.PolicyPod
		for _, n := range w.namespaces {
			for _, p := range byNS[n.Name] {
				if peer.Matches(p.Pod, labels.Set(n.Labels)) {
					out = append(out, p)
				}
			}
		}
		return out
	}
}

// Namespaces, pods and policies are generated from their index, so that selectors match varied sets:
// every namespace has pods of every label value, and policies select by different labels.

func benchNamespace(i int) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("np-%03d", i), Labels: map[string]string{
		"team": fmt.Sprintf("t%d", i%5), "env": []string{"prod", "dev", "staging"}[i%3],
	}}}
	switch i % 10 {
	case 3:
		ns.Annotations = map[string]string{translator.ACLLoggingAnnotation: "all"}
	case 7:
		ns.Annotations = map[string]string{translator.ACLLoggingAnnotation: "deny"}
	}
	return ns
}

// benchPod is the j-th pod of its namespace: labels app, tier, version (and role for some), and named
// container ports that not every pod numbers alike.
func benchPod(ns, name string, j int, node string) *corev1.Pod {
	lbls := map[string]string{"app": fmt.Sprintf("a%d", j%8), "tier": []string{"frontend", "backend", "db"}[j%3],
		"version": fmt.Sprintf("v%d", j%2)}
	if j%5 == 0 {
		lbls["role"] = "monitor"
	}
	ports := []corev1.ContainerPort{{Name: "http", ContainerPort: int32(8080 + j%2), Protocol: corev1.ProtocolTCP}}
	if j%4 == 0 {
		ports = append(ports, corev1.ContainerPort{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP})
	}
	if j%6 == 0 {
		ports = append(ports, corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP})
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "x", Ports: ports}}},
	}
}

func labelSel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func tcpPort(port int32, end int32) networkingv1.NetworkPolicyPort {
	p := networkingv1.NetworkPolicyPort{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(port))}
	if end > 0 {
		p.EndPort = ptr.To(end)
	}
	return p
}

func namedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: ptr.To(proto), Port: ptr.To(intstr.FromString(name))}
}

// benchPolicy is the m-th policy, the k-th of its namespace: its kind is k%8.
func benchPolicy(ns string, m, k int) *networkingv1.NetworkPolicy {
	app := func(d int) string { return fmt.Sprintf("a%d", (m+d)%8) }
	team := fmt.Sprintf("t%d", m%5)
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pol-%04d", m)}}
	s := &np.Spec
	ingress, egress := networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress
	switch k % 8 {
	case 0: // pods of one app, from frontends of the namespace, on two ports
		s.PodSelector = *labelSel("app", app(0))
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: labelSel("tier", "frontend")}},
			Ports: []networkingv1.NetworkPolicyPort{tcpPort(80, 0), tcpPort(443, 0)},
		}}
	case 1: // backends, from one app of a team's namespaces and from prod namespaces, on a named port
		s.PodSelector = *labelSel("tier", "backend")
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{
				{NamespaceSelector: labelSel("team", team), PodSelector: labelSel("app", app(1))},
				{NamespaceSelector: labelSel("env", "prod")},
			},
			Ports: []networkingv1.NetworkPolicyPort{namedPort(corev1.ProtocolTCP, "http")},
		}}
	case 2: // two apps, ingress from an ipBlock with excepts, egress to another on a port range
		s.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "app", Operator: metav1.LabelSelectorOpIn, Values: []string{app(0), app(3)}}}}
		s.PolicyTypes = []networkingv1.PolicyType{ingress, egress}
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{
			CIDR: "172.16.0.0/12", Except: []string{"172.17.0.0/16", "172.18.0.0/16"}}}}}}
		s.Egress = []networkingv1.NetworkPolicyEgressRule{{
			To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.1.0/24"}}}},
			Ports: []networkingv1.NetworkPolicyPort{tcpPort(5432, 5440)},
		}}
	case 3: // one version, egress to the namespace's databases and a team's DNS, on named ports
		s.PodSelector = *labelSel("version", fmt.Sprintf("v%d", m%2))
		s.PolicyTypes = []networkingv1.PolicyType{egress}
		s.Egress = []networkingv1.NetworkPolicyEgressRule{
			{To: []networkingv1.NetworkPolicyPeer{{PodSelector: labelSel("tier", "db")}},
				Ports: []networkingv1.NetworkPolicyPort{namedPort(corev1.ProtocolTCP, "metrics")}},
			{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: labelSel("team", team), PodSelector: labelSel("role", "monitor")}},
				Ports: []networkingv1.NetworkPolicyPort{namedPort(corev1.ProtocolUDP, "dns"),
					{Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(53))}}},
		}
	case 4: // the namespace's default deny for ingress
		s.PolicyTypes = []networkingv1.PolicyType{ingress}
	case 5: // frontends, from anywhere, on their named port
		s.PodSelector = *labelSel("tier", "frontend")
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{namedPort(corev1.ProtocolTCP, "http")}}}
	case 6: // one app, from that app in every namespace; egress anywhere on a port range
		s.PodSelector = *labelSel("app", app(2))
		s.PolicyTypes = []networkingv1.PolicyType{ingress, egress}
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
			{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: labelSel("app", app(2))}}}}
		s.Egress = []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{tcpPort(30000, 32767)}}}
	default: // monitors, from non-database pods and from prod or staging namespaces, on a range and UDP
		s.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
			{Key: "role", Operator: metav1.LabelSelectorOpExists}}}
		s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"db"}}}}},
				{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "env", Operator: metav1.LabelSelectorOpIn, Values: []string{"prod", "staging"}}}}},
			},
			Ports: []networkingv1.NetworkPolicyPort{tcpPort(8080, 8090), {Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(intstr.FromInt32(53))}},
		}}
	}
	return np
}

// policyNodes is how many nodes hold the pods: enough for basePodsPerNode pods each, and for the
// churn's pods, each with an address of its own.
func policyNodes(pods int) int {
	churnPods := churnRate * int(churnFor/time.Second)
	return max((pods+basePodsPerNode-1)/basePodsPerNode, (churnPods+churnPodsPerNode-1)/churnPodsPerNode)
}

// newPolicyWorld generates the namespaces, nodes, annotated pods and policies of a benchmark of that
// size, as they are before creation.
func newPolicyWorld(nPolicies, nPods, nNamespaces int) *policyWorld {
	w := &policyWorld{}
	for i := range nNamespaces {
		w.namespaces = append(w.namespaces, benchNamespace(i))
	}
	for i := range policyNodes(nPods) {
		w.nodes = append(w.nodes, translator.NodeNetwork{Name: fmt.Sprintf("bench-np-n%03d", i),
			Subnet: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))})
	}
	for k := range nPods {
		n := w.nodes[k%len(w.nodes)]
		addr := netip.AddrFrom4([4]byte{10, 244, n.Subnet.Addr().As4()[2], byte(3 + k/len(w.nodes))})
		ns := w.namespaces[k%len(w.namespaces)].Name
		pod := benchPod(ns, fmt.Sprintf("p%05d", k), k/len(w.namespaces), n.Name)
		pod.Annotations = map[string]string{annotations.PodNetwork: podNetworkValue(addr, n.Subnet)}
		w.policyPods = append(w.policyPods, translator.PolicyPod{Pod: pod, Addr: addr})
		w.pods = append(w.pods, translator.PodNetwork{Namespace: ns, Name: pod.Name, Node: n.Name, Addr: addr})
	}
	for m := range nPolicies {
		ns := w.namespaces[m%len(w.namespaces)].Name
		w.policies = append(w.policies, benchPolicy(ns, m, m/len(w.namespaces)))
	}
	return w
}

// populatePolicies creates the objects of a world of the benchmark's size in the API (namespaces with
// the default service account pods need), and returns the world as created (pod UIDs, namespace labels
// the apiserver adds).
func populatePolicies(b *testing.B, kube kubernetes.Interface) *policyWorld {
	ctx := context.Background()
	w := newPolicyWorld(policySizes())
	err := parallel(len(w.namespaces), 16, func(i int) error {
		// The apiserver adds kubernetes.io/metadata.name: the created namespace is what selectors see.
		ns, err := kube.CoreV1().Namespaces().Create(ctx, w.namespaces[i], metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create namespace %s: %w", w.namespaces[i].Name, err)
		}
		w.namespaces[i] = ns
		// No serviceaccount controller runs here; pods are refused without the default account.
		_, err = kube.CoreV1().ServiceAccounts(ns.Name).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}},
			metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create service account in %s: %w", ns.Name, err)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	err = parallel(len(w.nodes), 16, func(i int) error {
		n := w.nodes[i]
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"bench": "np"},
			Annotations: map[string]string{annotations.NodeSubnet: annotations.FormatNodeSubnets([]netip.Prefix{n.Subnet})}}}
		if _, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	err = parallel(len(w.policyPods), 16, func(k int) error {
		pod := w.policyPods[k].Pod
		created, err := kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		w.policyPods[k].Pod, w.pods[k].UID = created, string(created.UID)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	err = parallel(len(w.policies), 16, func(m int) error {
		np, err := kube.NetworkingV1().NetworkPolicies(w.policies[m].Namespace).Create(ctx, w.policies[m], metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create policy %s/%s: %w", w.policies[m].Namespace, w.policies[m].Name, err)
		}
		w.policies[m] = np
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return w
}

// floorPolicies writes the rows of want into the empty NB ovn with no translation: the nodes' and pods'
// rows as floorWrite does, then the policies', and times it as the controller is timed.
func floorPolicies(b testing.TB, ovn *harness.OVN, world *policyWorld, want *nbRows) time.Duration {
	w := newFloorWriter(b, ovn, want)
	writeNodes := w.prepareNodes(world.desired)
	writePolicies := w.preparePolicies()
	start := time.Now()
	writeNodes()
	w.flush() // the port groups reference the ports by UUID
	writePolicies()
	w.flush()
	return w.done("NetworkPolicy floor").wait(b, 5*time.Minute).Sub(start)
}

// preparePolicies prepares the NetworkPolicy rows of want and returns what writes them once the ports
// exist: the meter with its band, the address sets, then each port group with its ACLs and ports, in
// 1000-operation transactions.
func (w *floorWriter) preparePolicies() func() {
	type group struct {
		pg    *nbmodel.PortGroup
		ports []string
		acls  []model.Model
	}
	var sets []model.Model
	var band *nbmodel.MeterBand
	var meter *nbmodel.Meter
	var groups []*group
	byName := map[string]*group{}
	for _, owner := range slices.Sorted(maps.Keys(w.want.byOwner)) {
		for _, r := range w.want.byOwner[owner] {
			m := model.Clone(r.info.Obj.(model.Model))
			switch m := m.(type) {
			case *nbmodel.AddressSet:
				sets = append(sets, m)
			case *nbmodel.MeterBand:
				band = m
			case *nbmodel.Meter:
				meter = m
			case *nbmodel.PortGroup:
				g := &group{pg: m, ports: r.refs["ports"]}
				groups = append(groups, g)
				byName[m.Name] = g
			case *nbmodel.ACL:
				// The mapping lists a port group before its ACLs.
				byName[r.parents[0].name].acls = append(byName[r.parents[0].name].acls, m)
			}
		}
	}
	return func() {
		if meter != nil {
			meter.Bands = []string{w.create(band)}
			w.create(meter)
		}
		for _, s := range sets {
			w.create(s)
			w.flushIfFull()
		}
		for _, g := range groups {
			for _, acl := range g.acls {
				g.pg.ACLs = append(g.pg.ACLs, w.create(acl))
			}
			for _, p := range g.ports {
				g.pg.Ports = append(g.pg.Ports, w.ref(nbmodel.LogicalSwitchPortTable, p))
			}
			w.create(g.pg)
			w.flushIfFull()
		}
	}
}

// policiesRun is a controller synced against an NB of its own, still running.
type policiesRun struct {
	benchController
	took    time.Duration
	watcher *policyWatch
}

// startPolicies starts the controller against an empty NB and returns once NB holds exactly want.
func startPolicies(b *testing.B, dir, run, bin string, kube *harness.Kube, want *nbRows) policiesRun {
	ovn := startNB(b, filepath.Join(dir, "nb-"+run))
	// The watch follows NB from the start: its view of each port group and address set is its own.
	w := newPolicyWatch(b, ovn.NBAddr)
	c := startController(b, dir, run, bin, kube, ovn)
	done := syncDone{
		what:    "controller " + run,
		count:   tableLen(w.Client, nbmodel.LogicalSwitchPortTable),
		atLeast: want.count(nbmodel.LogicalSwitchPortTable),
		content: func() error { return want.diff(cacheReader(w.Client)) },
		clock:   w.clock,
		alive:   c.alive(b),
	}
	took := done.wait(b, 10*time.Minute).Sub(c.start)
	return policiesRun{benchController: c, took: took, watcher: w}
}

// policyWatch is an NB client of its own (monitoring what the controller's does) that knows, from the
// events it handles, each port, port group and address set as it last saw it, and notes when a new
// pod is in all the port groups and address sets it awaits.
type policyWatch struct {
	client.Client
	clock *changeClock

	mu     sync.Mutex
	ports  map[string]*nbmodel.LogicalSwitchPort // by name
	groups map[string]*nbmodel.PortGroup
	sets   map[string]*nbmodel.AddressSet
	// awaited are the pods awaited, by port name; waiting says which of them each port group or
	// address set concerns; seenAt is when each was complete.
	awaited map[string]podMembership
	waiting map[string][]string
	seenAt  map[string]time.Time
}

// podMembership is where a pod's port and address must be once its policies include it.
type podMembership struct {
	port   string
	groups []string // port groups that must hold the port
	sets   []string // address sets that must hold its address
}

func newPolicyWatch(b *testing.B, addr string) *policyWatch {
	nb, clock := watchNB(b, addr)
	w := &policyWatch{Client: nb, clock: clock, ports: map[string]*nbmodel.LogicalSwitchPort{},
		groups: map[string]*nbmodel.PortGroup{}, sets: map[string]*nbmodel.AddressSet{},
		awaited: map[string]podMembership{}, waiting: map[string][]string{}, seenAt: map[string]time.Time{}}
	nb.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc:    func(_ string, m model.Model) { w.seen(m, false) },
		UpdateFunc: func(_ string, _, m model.Model) { w.seen(m, false) },
		DeleteFunc: func(_ string, m model.Model) { w.seen(m, true) },
	})
	return w
}

// seen records a row as the watch now knows it, and checks the pods it concerns. Rows are the
// cache's own and never modified: keeping them costs nothing.
func (w *policyWatch) seen(m model.Model, deleted bool) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	var key string
	switch m := m.(type) {
	case *nbmodel.LogicalSwitchPort:
		key = nbmodel.LogicalSwitchPortTable + "/" + m.Name
		setOrDelete(w.ports, m.Name, m, deleted)
		w.check(m.Name, now)
		return
	case *nbmodel.PortGroup:
		key = nbmodel.PortGroupTable + "/" + m.Name
		setOrDelete(w.groups, m.Name, m, deleted)
	case *nbmodel.AddressSet:
		key = nbmodel.AddressSetTable + "/" + m.Name
		setOrDelete(w.sets, m.Name, m, deleted)
	default:
		return
	}
	// A clone: check drops completed pods from w.waiting[key] in place.
	for _, port := range slices.Clone(w.waiting[key]) {
		w.check(port, now)
	}
}

func setOrDelete[T any](m map[string]T, k string, v T, deleted bool) {
	if deleted {
		delete(m, k)
	} else {
		m[k] = v
	}
}

// expect awaits the membership of a pod; it is registered before the pod is created.
func (w *policyWatch) expect(pm podMembership) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.awaited[pm.port] = pm
	for _, g := range pm.groups {
		k := nbmodel.PortGroupTable + "/" + g
		w.waiting[k] = append(w.waiting[k], pm.port)
	}
	for _, s := range pm.sets {
		k := nbmodel.AddressSetTable + "/" + s
		w.waiting[k] = append(w.waiting[k], pm.port)
	}
}

// check notes the pod of port as complete when its port is in every awaited port group and its
// address in every awaited address set. w.mu is held.
func (w *policyWatch) check(port string, now time.Time) {
	if pm, ok := w.awaited[port]; ok && w.missing(pm) == "" {
		w.seenAt[port] = now
		w.forget(pm)
	}
}

// missing says where the pod's port or address is not yet, "" when it is everywhere. w.mu is held.
func (w *policyWatch) missing(pm podMembership) string {
	lsp := w.ports[pm.port]
	if lsp == nil || len(lsp.Addresses) == 0 {
		return "no port"
	}
	fields := strings.Fields(lsp.Addresses[0]) // "MAC IP"
	if len(fields) < 2 {
		return "no address on the port"
	}
	for _, g := range pm.groups {
		if pg := w.groups[g]; pg == nil || !slices.Contains(pg.Ports, lsp.UUID) {
			return "not in port group " + g
		}
	}
	for _, s := range pm.sets {
		if as := w.sets[s]; as == nil || !slices.Contains(as.Addresses, fields[1]) {
			return "not in address set " + s
		}
	}
	return ""
}

// forget stops awaiting a pod. w.mu is held.
func (w *policyWatch) forget(pm podMembership) {
	delete(w.awaited, pm.port)
	drop := func(k string) {
		w.waiting[k] = slices.DeleteFunc(w.waiting[k], func(p string) bool { return p == pm.port })
		if len(w.waiting[k]) == 0 {
			delete(w.waiting, k)
		}
	}
	for _, g := range pm.groups {
		drop(nbmodel.PortGroupTable + "/" + g)
	}
	for _, s := range pm.sets {
		drop(nbmodel.AddressSetTable + "/" + s)
	}
}

func (w *policyWatch) nAwaited() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.awaited)
}

// takeSeen returns when each pod was complete, by port name, and stops awaiting the others, after
// saying where a few of them are missing.
func (w *policyWatch) takeSeen(b *testing.B) map[string]time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, port := range slices.Sorted(maps.Keys(w.awaited))[:min(5, len(w.awaited))] {
		b.Logf("pod port %s never complete: %s", port, w.missing(w.awaited[port]))
	}
	seen := w.seenAt
	w.seenAt, w.awaited, w.waiting = map[string]time.Time{}, map[string]podMembership{}, map[string][]string{}
	return seen
}

// membership is where the mapping puts a new pod of namespace ns (labels, ports) with some address:
// the port groups of the policies and default denies that select it, the address sets of the peers
// that match it, and the named-port address sets its ports give a number. The policy rows are mapped
// with the pod as the only pod: what holds it does not depend on the other pods.
func (w *policyWorld) membership(pod *corev1.Pod) podMembership {
	pp := translator.PolicyPod{Pod: pod, Addr: netip.MustParseAddr("10.244.255.254")} // any address: only set names count
	var nsLabels labels.Set
	var logging string
	for _, n := range w.namespaces {
		if n.Name == pod.Namespace {
			nsLabels, logging = n.Labels, n.Annotations[translator.ACLLoggingAnnotation]
		}
	}
	only := []translator.PolicyPod{pp}
	env := translator.PolicyEnv{Pods: only, Logging: logging, PodNetwork: translator.DefaultConfig().ClusterCIDR,
		PeerPods: func(peer translator.PolicyPeer) []translator.PolicyPod {
			if peer.Matches(pod, nsLabels) {
				return only
			}
			return nil
		}}
	pm := podMembership{port: conventions.PodPortName(pod.Namespace, pod.Name)}
	groups, sets := map[string]bool{}, map[string]bool{}
	collect := func(rows []nbstore.Row) {
		for _, r := range rows {
			switch m := r.Model.(type) {
			case *nbmodel.PortGroup:
				for _, ref := range r.Refs["ports"] {
					if ref.Name == pm.port {
						groups[m.Name] = true
					}
				}
			case *nbmodel.AddressSet:
				if len(m.Addresses) > 0 {
					sets[m.Name] = true
				}
			}
		}
	}
	var own []*networkingv1.NetworkPolicy
	for _, np := range w.policies {
		peers, _ := translator.PolicyPeers(np)
		for _, p := range peers {
			if p.Matches(pod, nsLabels) {
				sets[p.AddressSetName()] = true
			}
		}
		if np.Namespace == pod.Namespace {
			own = append(own, np)
		} else if !translator.EgressNamedPorts(np) {
			continue // it selects only its own namespace's pods; only egress named ports resolve against others
		}
		rows, _ := translator.PolicyRows(np, env)
		collect(rows)
	}
	collect(translator.NamespaceIsolationRows(pod.Namespace, own, only, logging))
	pm.groups, pm.sets = slices.Sorted(maps.Keys(groups)), slices.Sorted(maps.Keys(sets))
	return pm
}

// churnResults are the figures of churn streams.
type churnResults struct {
	created, lost, early int
	// lat runs from the API's reply to a pod's creation until the watch saw it in all its port groups
	// and address sets (0 when that came first, counted in early).
	lat []time.Duration
}

func (r *churnResults) add(o churnResults) {
	r.created += o.created
	r.lost += o.lost
	r.early += o.early
	r.lat = append(r.lat, o.lat...)
}

// churn creates churnRate pods per second for churnFor, round robin over the namespaces and nodes,
// labelled like the others, and deletes each churnTimeout after its creation; it times each until the
// watch sees it where the mapping puts it. Each pod carries an address no other pod had in this run, so
// an address set still holding a deleted pod's address cannot make a new pod look done.
func (w *policyWorld) churn(b *testing.B, kube kubernetes.Interface, run policiesRun, iter int) churnResults {
	ctx := context.Background()
	n := churnRate * int(churnFor/time.Second)
	type churnPod struct {
		pod *corev1.Pod
		pm  podMembership
	}
	// Prepared before the stream: the pods and where each must appear.
	pods := make([]churnPod, n)
	for i := range pods {
		node := w.nodes[i%len(w.nodes)]
		addr := netip.AddrFrom4([4]byte{10, 244, node.Subnet.Addr().As4()[2], byte(3 + basePodsPerNode + i/len(w.nodes))})
		ns := w.namespaces[i%len(w.namespaces)].Name
		pod := benchPod(ns, fmt.Sprintf("churn%d-%05d", iter, i), i/len(w.namespaces), node.Name)
		pod.Labels[churnLabel] = "true"
		pod.Annotations = map[string]string{annotations.PodNetwork: podNetworkValue(addr, node.Subnet)}
		pods[i] = churnPod{pod: pod, pm: w.membership(pod)}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex // guards replied and firstErr
	replied := make([]time.Time, n)
	var firstErr error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if firstErr == nil {
			firstErr = err
		}
	}
	lag := churnRate * int(churnTimeout/time.Second)
	zero := int64(0)
	begin := time.Now()
	for i, cp := range pods {
		// Paced against the start, not a ticker, which drops ticks when the machine is busy.
		time.Sleep(time.Until(begin.Add(time.Duration(i) * time.Second / churnRate)))
		// Awaited before the call: NB may show the pod before the API reply arrives.
		run.watcher.expect(cp.pm)
		wg.Go(func() {
			_, err := kube.CoreV1().Pods(cp.pod.Namespace).Create(ctx, cp.pod, metav1.CreateOptions{})
			now := time.Now()
			if err != nil {
				fail(fmt.Errorf("create pod %s/%s: %w", cp.pod.Namespace, cp.pod.Name, err))
				return
			}
			mu.Lock()
			replied[i] = now
			mu.Unlock()
		})
		if i >= lag {
			old := pods[i-lag].pod
			wg.Go(func() {
				err := kube.CoreV1().Pods(old.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
				if err != nil {
					fail(fmt.Errorf("delete pod %s/%s: %w", old.Namespace, old.Name, err))
				}
			})
		}
	}
	elapsed := time.Since(begin)
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	// Let the last pods arrive, then count what never did.
	for deadline := time.Now().Add(churnTimeout); time.Now().Before(deadline) && run.watcher.nAwaited() > 0; {
		time.Sleep(10 * time.Millisecond)
	}
	seen := run.watcher.takeSeen(b)
	r := churnResults{created: n}
	for i, cp := range pods {
		at, ok := seen[cp.pm.port]
		if !ok || at.Sub(replied[i]) > churnTimeout {
			r.lost++
			continue
		}
		if at.Before(replied[i]) {
			r.early++
		}
		r.lat = append(r.lat, max(0, at.Sub(replied[i])))
	}
	b.Logf("churn: %d pods created in %s (%.1f/s), %d deleted", n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), max(0, n-lag))
	return r
}

// churnLabel marks the churn's pods, so that they can be deleted at once.
const churnLabel = "bench-churn"

// deleteChurnPods deletes the churn's pods left and waits until they are gone, so that the next
// iteration starts from the populated cluster.
func deleteChurnPods(b *testing.B, kube kubernetes.Interface, namespaces []*corev1.Namespace) {
	ctx := context.Background()
	zero := int64(0)
	sel := metav1.ListOptions{LabelSelector: churnLabel}
	err := parallel(len(namespaces), 16, func(i int) error {
		return kube.CoreV1().Pods(namespaces[i].Name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero}, sel)
	})
	if err == nil {
		err = harness.Eventually(5*time.Minute, func() error {
			pods, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: churnLabel, Limit: 1})
			if err == nil && len(pods.Items) > 0 {
				err = fmt.Errorf("churn pods still exist")
			}
			return err
		})
	}
	if err != nil {
		b.Fatal(err)
	}
}
