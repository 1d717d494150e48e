package harness

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// shortDir returns a fresh directory under /tmp whose path is short enough for unix sockets
// (t.TempDir embeds the test name). It is kept, and named in the log, when the test fails.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "dl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keeping %s for inspection", d)
			return
		}
		os.RemoveAll(d)
	})
	return d
}

func TestOVN(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	ovn, err := StartOVN(ctx, OVNOptions{Dir: shortDir(t), WithSB: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("OVN (NB, SB, northd) ready in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := ovn.Stop(); err != nil {
			t.Error(err)
		}
	})

	if _, err := ovn.NBCtl("ls-add", "x"); err != nil {
		t.Fatal(err)
	}
	assertSwitchX(t, ovn)

	// northd carries the switch into SB as a datapath.
	if _, err := ovn.NBCtl("--wait=sb", "sync"); err != nil {
		t.Fatal(err)
	}
	if out, err := ovn.SBCtl("--columns=external_ids", "list", "Datapath_Binding"); err != nil || !strings.Contains(out, `name=x`) {
		t.Fatalf("SB datapath for x: %q, %v", out, err)
	}

	// The TCP remote answers too.
	out, err := exec.Command("ovn-nbctl", "--db="+ovn.NBTCPAddr, "--timeout=10", "ls-list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "(x)") {
		t.Fatalf("ls-list over %s: %s, %v", ovn.NBTCPAddr, out, err)
	}

	start = time.Now()
	if err := ovn.StopNB(); err != nil {
		t.Fatal(err)
	}
	t.Logf("NB stopped in %s", time.Since(start).Round(time.Millisecond))
	if out, err := ovn.NBCtl("ls-list"); err == nil {
		t.Fatalf("NBCtl succeeded with NB stopped: %q", out)
	} else {
		t.Logf("with NB stopped: %v", err)
	}

	start = time.Now()
	if err := ovn.StartNB(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("NB restarted in %s", time.Since(start).Round(time.Millisecond))
	assertSwitchX(t, ovn)
	out, err = exec.Command("ovn-nbctl", "--db="+ovn.NBTCPAddr, "--timeout=10", "ls-list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "(x)") {
		t.Fatalf("ls-list over %s after restart: %s, %v", ovn.NBTCPAddr, out, err)
	}
}

func assertSwitchX(t *testing.T, ovn *OVN) {
	t.Helper()
	out, err := ovn.NBCtl("ls-list")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "(x)") {
		t.Fatalf("ls-list = %q, want switch x", out)
	}
}

func startKube(t *testing.T, o KubeOptions) *Kube {
	t.Helper()
	start := time.Now()
	k, err := StartKube(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube (controller-manager=%v) ready in %s", o.ControllerManager, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		start := time.Now()
		if err := k.Stop(); err != nil {
			t.Error(err)
		}
		t.Logf("kube stopped in %s", time.Since(start).Round(time.Millisecond))
	})
	return k
}

func TestKube(t *testing.T) {
	ctx := context.Background()
	k := startKube(t, KubeOptions{Dir: shortDir(t)})

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}}
	if _, err := k.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p1", Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:   "node1",
			Containers: []corev1.Container{{Name: "c", Image: "registry.example/pause:3.10"}},
		},
	}
	if _, err := k.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	gotNode, err := k.Client.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if gotNode.UID == "" {
		t.Errorf("node has no UID")
	}
	gotPod, err := k.Client.CoreV1().Pods("default").Get(ctx, "p1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if gotPod.Spec.NodeName != "node1" || gotPod.Spec.Containers[0].Image != "registry.example/pause:3.10" {
		t.Errorf("pod read back as nodeName=%q image=%q", gotPod.Spec.NodeName, gotPod.Spec.Containers[0].Image)
	}

	// The kubeconfig works for a real client, kubectl, verifying the apiserver's certificate.
	bin, err := KubeBinDir()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(bin, "kubectl"), "--kubeconfig", k.Kubeconfig, "get", "nodes").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node1") {
		t.Fatalf("kubectl get nodes: %s, %v", out, err)
	}
	t.Logf("kubectl get nodes:\n%s", out)
}

// kcmTestTimeout bounds each wait for kube-controller-manager: generous, as on a loaded machine its
// controllers start late.
const kcmTestTimeout = 60 * time.Second

func TestKubeControllerManager(t *testing.T) {
	ctx := context.Background()
	k := startKube(t, KubeOptions{Dir: shortDir(t), ControllerManager: true, ClusterCIDR: "10.244.0.0/16"})

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node1"}}
	if _, err := k.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	deadline := start.Add(kcmTestTimeout)
	for {
		n, err := k.Client.CoreV1().Nodes().Get(ctx, "node1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n.Spec.PodCIDR != "" {
			t.Logf("podCIDR %s (%v) after %s", n.Spec.PodCIDR, n.Spec.PodCIDRs, time.Since(start).Round(time.Millisecond))
			if !strings.HasPrefix(n.Spec.PodCIDR, "10.244.") || !strings.HasSuffix(n.Spec.PodCIDR, "/24") {
				t.Errorf("podCIDR %s not a /24 of 10.244.0.0/16", n.Spec.PodCIDR)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node got no podCIDR within %s", kcmTestTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The serviceaccount controller runs too: a new namespace gets its default ServiceAccount.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t1"}}
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(kcmTestTimeout)
	for {
		sas, err := k.Client.CoreV1().ServiceAccounts("t1").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(sas.Items, func(sa corev1.ServiceAccount) bool { return sa.Name == "default" }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace t1 got no default ServiceAccount within %s", kcmTestTimeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestKubeAdvertiseAddress: with an advertise address the apiserver's own endpoint reconciler
// publishes it (and its port) for default/kubernetes, and its serving certificate names it, the
// kubernetes Service's ClusterIP (which clients in pods dial) and 127.0.0.1 (the admin kubeconfig's).
func TestKubeAdvertiseAddress(t *testing.T) {
	ctx := context.Background()
	const addr = "192.0.2.7" // TEST-NET-1: published only, never dialled here
	k := startKube(t, KubeOptions{Dir: shortDir(t), AdvertiseAddress: addr})
	err := Eventually(30*time.Second, func() error {
		list, err := k.Client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx,
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
		if err != nil {
			return err
		}
		for _, s := range list.Items {
			if len(s.Endpoints) == 1 && slices.Equal(s.Endpoints[0].Addresses, []string{addr}) &&
				len(s.Ports) == 1 && s.Ports[0].Port != nil && int(*s.Ports[0].Port) == k.APIPort {
				return nil
			}
		}
		return fmt.Errorf("EndpointSlices of default/kubernetes: %+v, want %s:%d", list.Items, addr, k.APIPort)
	})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := k.Client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", "127.0.0.1:"+strconv.Itoa(k.APIPort), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	cert := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(k.CAPEM)
	for _, name := range []string{addr, svc.Spec.ClusterIP, "127.0.0.1", "kubernetes.default.svc"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("serving certificate for %s: %v", name, err)
		}
	}
}
