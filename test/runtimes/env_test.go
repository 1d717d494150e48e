package runtimes

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/nodeagent"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// env is a one-node cluster whose container runtime is the test itself: the stand-in kubelet is
// stopped, and the test runs cnitool as an operator would.
type env struct {
	t        *testing.T
	c        *harness.Cluster
	n        *harness.ClusterNode
	tools    string // holds <version>/cnitool
	cniCache string // libcni's cache directory, private to the test
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir := shortTempDir(t)
	tools, err := buildCNITools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bins, err := harness.BuildBinaries(ctx, filepath.Join(dir, "bin"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := harness.StartCluster(ctx, harness.ClusterOptions{Dir: dir, Bins: bins, Nodes: 1})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	e := &env{t: t, c: c, n: c.Nodes[0], tools: tools, cniCache: filepath.Join(dir, "cnicache")}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", e.logs())
		}
		logErr(t, c.Stop())
		if err := c.DataRaces(); err != nil { // Dunlin's programs are race-built under make test's -race
			t.Error(err)
		}
	})
	// The test is the runtime: no stand-in kubelet racing it for the pods of this node.
	if err := e.n.Kubelet.Stop(); err != nil {
		t.Fatal(err)
	}
	// An ADD waiting for an annotation must outlast the steps run meanwhile, however loaded the machine.
	if err := e.n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := e.n.StartAgent(ctx, "--pod-network-timeout=10m"); err != nil {
		t.Fatal(err)
	}
	return e
}

// buildCNITools runs test/cnitool/build.sh (which builds only what its cache lacks) and returns the
// directory it prints.
func buildCNITools(ctx context.Context) (string, error) {
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "..", "cnitool", "build.sh")
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// pod creates a pod bound to the node and waits for dunlin-controller's network annotation.
func (e *env) pod(name string) (*corev1.Pod, string) {
	e.t.Helper()
	e.createPod(name)
	return e.annotated(name)
}

func (e *env) createPod(name string) {
	e.t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec:       corev1.PodSpec{NodeName: e.n.Name, Containers: []corev1.Container{{Name: "c", Image: "pause"}}},
	}
	if _, err := e.c.Kube.Client.CoreV1().Pods("default").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("create pod %s: %v", name, err)
	}
}

// annotated waits for the pod's network annotation and returns the pod and its address (with prefix).
func (e *env) annotated(name string) (*corev1.Pod, string) {
	e.t.Helper()
	var pod *corev1.Pod
	var addr string
	e.eventually(90*time.Second, "pod "+name+" annotated", func() error {
		var err error
		pod, err = e.c.Kube.Client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		info, err := annotations.ParsePodNetwork(pod.Annotations[annotations.PodNetwork])
		if err != nil {
			return err
		}
		p, ok := info.IPv4()
		if !ok {
			return fmt.Errorf("no IPv4 address in %v", info.IPAddresses)
		}
		addr = p.String()
		return nil
	})
	return pod, addr
}

func (e *env) eventually(timeout time.Duration, what string, f func() error) {
	e.t.Helper()
	if err := harness.Eventually(timeout, f); err != nil {
		e.t.Fatalf("%s: %v", what, err)
	}
}

// netns creates a pod sandbox's network namespace, prefix and a random suffix (tests running at the
// same time share the machine's namespace names), and returns its path.
func (e *env) netns(prefix string) string {
	e.t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := prefix + hex.EncodeToString(b)
	if err := harness.NewNetns(context.Background(), name); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { logErr(e.t, harness.DeleteNetns(name)) })
	return "/var/run/netns/" + name
}

// podArgs is CNI_ARGS as kubelet's runtimes send it.
func podArgs(pod *corev1.Pod) string {
	return fmt.Sprintf("IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", pod.Namespace, pod.Name, pod.UID)
}

// tool is `cnitool <command> dunlin <netns>` of one version, run as an operator would: CNI_PATH and
// NETCONFPATH at what dunlin-node installed, CNI_ARGS naming the pod. The one difference: libcni's
// cache (/var/lib/cni, where cnitool keeps results and which its gc reads) is a directory of the test's
// own, mounted over /var/lib/cni in a mount namespace of cnitool's own, so that tests running at the
// same time on this machine cannot collect each other's attachments.
func (e *env) tool(ctx context.Context, version, command, netns, cniArgs string) *exec.Cmd {
	return e.toolWithConf(ctx, version, command, netns, cniArgs, e.n.ConfDir)
}

func (e *env) toolWithConf(ctx context.Context, version, command, netns, cniArgs, confDir string) *exec.Cmd {
	if err := os.MkdirAll(e.cniCache, 0o755); err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", `mkdir -p /var/lib/cni && mount --bind "$0" /var/lib/cni && exec "$@"`, e.cniCache,
		filepath.Join(e.tools, version, "cnitool"), command, nodeagent.NetworkName, netns)
	cmd.Env = append(os.Environ(), "CNI_PATH="+e.n.BinDir, "NETCONFPATH="+confDir, "CNI_ARGS="+cniArgs)
	return cmd
}

// run runs a tool command and returns its stdout; the error carries stderr.
func run(cmd *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s%s", describe(cmd), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// describe names a tool command: "cnitool v1.1.2 add dunlin /var/run/netns/x".
func describe(cmd *exec.Cmd) string {
	i := slices.IndexFunc(cmd.Args, func(a string) bool { return filepath.Base(a) == "cnitool" })
	if i < 0 {
		return strings.Join(cmd.Args, " ")
	}
	return "cnitool " + filepath.Base(filepath.Dir(cmd.Args[i])) + " " + strings.Join(cmd.Args[i+1:], " ")
}

// cnitoolContainerID is the CNI_CONTAINERID cnitool derives from the netns path.
func cnitoolContainerID(netns string) string {
	s := sha512.Sum512([]byte(netns))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// addResult is what an ADD printed that the tests look at.
type addResult struct {
	CNIVersion string `json:"cniVersion"`
	IPs        []struct {
		Address string `json:"address"`
		Gateway string `json:"gateway"`
	} `json:"ips"`
}

func parseResult(t *testing.T, out string) addResult {
	t.Helper()
	var r addResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("ADD printed %q: %v", out, err)
	}
	return r
}

// attached checks the pod's side (eth0 with the address) and the node's (the OVS interface bound to the
// pod's logical port with its UID, installed by ovn-controller).
func (e *env) attached(pod *corev1.Pod, netns, addr string) error {
	hostIf := nodeagent.HostIfName(cnitoolContainerID(netns), "eth0")
	out, err := exec.Command("ip", "-n", filepath.Base(netns), "-4", "-o", "addr", "show", "dev", "eth0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), " "+addr+" ") {
		return fmt.Errorf("eth0 in %s: %v %s, want %s", netns, err, out, addr)
	}
	want := map[string]string{
		"iface-id":      pod.Namespace + "_" + pod.Name,
		"iface-id-ver":  string(pod.UID),
		"ovn-installed": "true",
	}
	for k, v := range want {
		got, err := e.n.VSCtl("--if-exists", "get", "interface", hostIf, "external_ids:"+k)
		if err != nil || strings.Trim(got, `"`) != v {
			return fmt.Errorf("OVS interface %s external_ids:%s = %s (%v), want %s", hostIf, k, got, err, v)
		}
	}
	return nil
}

// detached checks that the attachment of netns has left OVS and the node.
func (e *env) detached(netns string) error {
	hostIf := nodeagent.HostIfName(cnitoolContainerID(netns), "eth0")
	if out, err := e.n.VSCtl("--if-exists", "get", "interface", hostIf, "name"); err != nil || out != "" {
		return fmt.Errorf("OVS interface %s still there (%q, %v)", hostIf, out, err)
	}
	if out, err := e.n.Exec(context.Background(), "ip", "link", "show", hostIf); err == nil {
		return fmt.Errorf("veth %s still there: %s", hostIf, out)
	}
	return nil
}

// logs gives the tails of the controller's and dunlin-node's logs.
func (e *env) logs() string {
	var b strings.Builder
	for _, p := range []string{filepath.Join(e.c.Dir, "controller.log"), e.n.AgentLog} {
		data, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintf(&b, "==> %s: %v\n", p, err)
			continue
		}
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		fmt.Fprintf(&b, "==> %s\n%s\n", p, strings.Join(lines[max(0, len(lines)-30):], "\n"))
	}
	return b.String()
}
