package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/nodeagent/ovs"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// BenchmarkCNIAdd measures CNI ADD latency on a real node (OVS userspace datapath, ovn-controller,
// dunlin-node, the plugin invoked through libcni by the stand-in kubelet), one pod at a time, for
// DUNLIN_BENCH_CNI_PODS pods (default 100). The ADD is split into waiting for the controller's
// annotation, plumbing (veth, netns, OVS port) and waiting for ovn-installed, as dunlin-node logs them.
// The floor, measured in the same run on the same node, is the time from the commit of
// `ovs-vsctl --no-wait add-port` (for a logical switch port that already exists) until ovn-controller
// marks the port ovn-installed: what ovn-controller needs, with no CNI around it.
func BenchmarkCNIAdd(b *testing.B) {
	pods := 100
	if v := os.Getenv("DUNLIN_BENCH_CNI_PODS"); v != "" {
		fmt.Sscan(v, &pods)
	}
	ctx := context.Background()
	dir := tempDir(b)
	bins, err := harness.BuildBinaries(ctx, dir+"/bin")
	if err != nil {
		b.Fatal(err)
	}
	c, err := harness.StartCluster(ctx, harness.ClusterOptions{Dir: dir, Bins: bins, Nodes: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Stop()
	node := c.Nodes[0]

	for range b.N {
		fl := newFloor(b, c, node, pods)
		var adds, floor []time.Duration
		// Pod ADDs and floor claims alternate, so both see the same ovn-controller load and flow count.
		for i := range pods {
			name := fmt.Sprintf("bench-%d", i)
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
				Spec:       corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "c", Image: "none"}}},
			}
			if _, err := c.Kube.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			deadline := time.Now().Add(60 * time.Second)
			for {
				if sb, ok := node.Kubelet.Sandbox("default", name); ok {
					adds = append(adds, sb.AddTime)
					break
				}
				if time.Now().After(deadline) {
					b.Fatalf("pod %s not set up: %v", name, node.Kubelet.LastError("default", name))
				}
				time.Sleep(5 * time.Millisecond)
			}
			floor = append(floor, fl.claim(i))
		}
		fl.cleanup()
		phases, err := addPhases(node.AgentLog)
		if err != nil {
			b.Fatal(err)
		}

		report(b, "add", adds)
		report(b, "pod_network", phases["podNetworkWait"])
		report(b, "plumbing", phases["plumbing"])
		report(b, "ovn_installed", phases["ovnInstalledWait"])
		report(b, "floor", floor)
		b.Logf("p50: whole ADD / floor = %.1fx, ovn_installed wait / floor = %.1fx; p99: whole ADD / floor = %.1fx",
			ratio(pct(adds, 50), pct(floor, 50)), ratio(pct(phases["ovnInstalledWait"], 50), pct(floor, 50)),
			ratio(pct(adds, 99), pct(floor, 99)))
		// Next iteration starts from an empty node.
		if err := c.Kube.Client.CoreV1().Pods("default").DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// addPhases reads the per-ADD durations dunlin-node logs ("CNI ADD" lines).
func addPhases(logPath string) (map[string][]time.Duration, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	re := regexp.MustCompile(`(podNetworkWait|plumbing|ovnInstalledWait|total)="([^"]+)"`)
	out := map[string][]time.Duration{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), `"CNI ADD"`) {
			continue
		}
		for _, m := range re.FindAllStringSubmatch(sc.Text(), -1) {
			d, err := time.ParseDuration(m[2])
			if err != nil {
				return nil, fmt.Errorf("parse %s=%q: %w", m[1], m[2], err)
			}
			out[m[1]] = append(out[m[1]], d)
		}
	}
	if len(out["total"]) == 0 {
		return nil, fmt.Errorf("no CNI ADD lines in %s", logPath)
	}
	return out, sc.Err()
}

// floor claims ports made directly with ovs-vsctl for logical switch ports made directly in NB.
type floor struct {
	b     *testing.B
	node  *harness.ClusterNode
	watch *ovs.Client
	n     int
}

// newFloor creates n logical switch ports on the node's switch, like the pods' (requested-chassis set).
func newFloor(b *testing.B, c *harness.Cluster, node *harness.ClusterNode, n int) *floor {
	b.Helper()
	args := []string{"--wait=sb"}
	for i := range n {
		lsp := fmt.Sprintf("floor-%d", i)
		args = append(args, "--", "lsp-add", node.Name, lsp,
			"--", "lsp-set-addresses", lsp, fmt.Sprintf("0a:58:0a:f4:ff:%02x 10.244.255.%d", i, i+1),
			"--", "lsp-set-options", lsp, "requested-chassis="+node.Name)
	}
	if out, err := c.OVN.NBCtl(args...); err != nil {
		b.Fatalf("create floor ports: %v %s", err, out)
	}
	// Watch ovn-installed through the OVSDB monitor (as dunlin-node does) rather than by polling with
	// ovs-vsctl wait-until, so the floor measures ovn-controller, not the CLI.
	watch, err := ovs.Connect(context.Background(), node.OVSDB)
	if err != nil {
		b.Fatal(err)
	}
	return &floor{b: b, node: node, watch: watch, n: n}
}

// claim adds a veth for floor port i with ovs-vsctl and times its commit until ovn-installed=true.
func (f *floor) claim(i int) time.Duration {
	ctx := context.Background()
	veth := fmt.Sprintf("flr%d", i)
	for _, args := range [][]string{
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "p"},
		{"ip", "link", "set", veth, "up"},
		{"ip", "link", "set", veth + "p", "up"},
	} {
		if out, err := f.node.Exec(ctx, args[0], args[1:]...); err != nil {
			f.b.Fatalf("%v %s", err, out)
		}
	}
	if out, err := f.node.VSCtl("--no-wait", "add-port", "br-int", veth, "--", "set", "interface", veth, fmt.Sprintf("external_ids:iface-id=floor-%d", i)); err != nil {
		f.b.Fatalf("%v %s", err, out)
	}
	// The clock starts once the port is committed, as the ovn_installed phase of an ADD does.
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := f.watch.WaitInstalled(wctx, veth); err != nil {
		f.b.Fatal(err)
	}
	return time.Since(start)
}

func (f *floor) cleanup() {
	for i := range f.n {
		veth := fmt.Sprintf("flr%d", i)
		_, _ = f.node.VSCtl("del-port", "br-int", veth)
		_, _ = f.node.Exec(context.Background(), "ip", "link", "del", veth)
	}
	f.watch.Close()
}

func report(b *testing.B, name string, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	b.ReportMetric(float64(pct(ds, 50).Microseconds())/1000, name+"_p50_ms")
	b.ReportMetric(float64(pct(ds, 99).Microseconds())/1000, name+"_p99_ms")
	b.Logf("%-14s n=%d p50=%s p99=%s max=%s", name, len(ds), pct(ds, 50).Round(10*time.Microsecond),
		pct(ds, 99).Round(10*time.Microsecond), slices.Max(ds).Round(10*time.Microsecond))
}

func pct(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[i]
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}
