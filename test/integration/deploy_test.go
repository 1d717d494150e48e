package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// TestDeployManifests applies deploy/ with the real kubectl to a real apiserver: every object must be
// accepted as written (schema, RBAC references, ConfigMap keys the workloads read).
func TestDeployManifests(t *testing.T) {
	dir, err := os.MkdirTemp("", "dldep")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	kube, err := harness.StartKube(ctx, harness.KubeOptions{Dir: filepath.Join(dir, "kube")})
	if err != nil {
		t.Fatal(err)
	}
	defer kube.Stop()
	kubectl := filepath.Join(kube.BinDir, "kubectl")
	if _, err := os.Stat(kubectl); err != nil {
		t.Fatalf("no kubectl in %s (make deps builds it with test/kubebin/build.sh)", kube.BinDir)
	}
	_, self, _, _ := runtime.Caller(0)
	deploy := filepath.Join(filepath.Dir(self), "..", "..", "deploy")
	out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", kube.Kubeconfig, "apply",
		"-f", filepath.Join(deploy, "dunlin-controller.yaml"), "-f", filepath.Join(deploy, "dunlin-node.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
	ds, err := kube.Client.AppsV1().DaemonSets("dunlin-system").Get(ctx, "dunlin-node", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.ServiceAccountName != "dunlin-node" || len(spec.Containers) == 0 {
		t.Errorf("dunlin-node DaemonSet: hostNetwork %v, serviceAccount %q", spec.HostNetwork, spec.ServiceAccountName)
	}
	if _, err := kube.Client.AppsV1().Deployments("dunlin-system").Get(ctx, "dunlin-controller", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	// What dunlin-node does with the API: watch the pods of its node, read and annotate its Node, watch
	// Services (the NodePorts and external IPs its gateway bridge hands to OVN), record Warning events
	// on its Node.
	for _, verb := range [][]string{{"list", "pods"}, {"watch", "pods"}, {"get", "pods"}, {"get", "nodes"}, {"patch", "nodes"},
		{"list", "services"}, {"watch", "services"}, {"create", "events"}, {"patch", "events"}} {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", kube.Kubeconfig, "auth", "can-i", verb[0], verb[1],
			"--all-namespaces", "--as=system:serviceaccount:dunlin-system:dunlin-node").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "yes" {
			t.Errorf("dunlin-node cannot %s %s: %v %s", verb[0], verb[1], err, out)
		}
	}
	// What dunlin-controller watches.
	for _, verb := range [][]string{{"watch", "nodes"}, {"patch", "pods"}, {"list", "services"}, {"watch", "services"},
		{"list", "endpointslices.discovery.k8s.io"}, {"watch", "endpointslices.discovery.k8s.io"}, {"create", "events"},
		{"watch", "networkpolicies.networking.k8s.io"}, {"list", "namespaces"}, {"watch", "namespaces"}} {
		out, err := exec.CommandContext(ctx, kubectl, "--kubeconfig", kube.Kubeconfig, "auth", "can-i", verb[0], verb[1],
			"--all-namespaces", "--as=system:serviceaccount:dunlin-system:dunlin-controller").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "yes" {
			t.Errorf("dunlin-controller cannot %s %s: %v %s", verb[0], verb[1], err, out)
		}
	}
}
