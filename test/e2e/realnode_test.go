package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// realNodeEnv starts a two-node cluster of real nodes (containerd, runc and a kubelet per node) and, at
// cleanup, checks that its teardown left nothing behind.
func realNodeEnv(t *testing.T) *env {
	t.Helper()
	if os.Getenv("DUNLIN_REALNODE") != "1" {
		t.Skip("real nodes (kubelet, containerd, runc) run only with DUNLIN_REALNODE=1")
	}
	var c *harness.Cluster
	t.Cleanup(func() {
		// Registered first, so it runs after the cluster's Stop.
		if c == nil {
			return
		}
		if left := c.LeftBehind(); len(left) > 0 {
			t.Errorf("teardown left behind:\n%s", strings.Join(left, "\n"))
		}
	})
	e := newClusterEnv(t, harness.ClusterOptions{RealNodes: true})
	c = e.c
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.Nodes {
			for _, l := range []string{n.Containerd.Dir + "/containerd.log", n.RealKubelet.Log} {
				t.Logf("==> errors in %s\n%s", l, errorLines(l, 40))
			}
		}
	})
	return e
}

// podServerDeployment runs the pod server image with HTTP readiness and liveness probes, one replica per
// node (required anti-affinity on the hostname).
func podServerDeployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	probe := func() *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}},
			PeriodSeconds: 2, TimeoutSeconds: 5, FailureThreshold: 5,
		}
	}
	no := false
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					// No token volume: nothing in the pod talks to the apiserver.
					AutomountServiceAccountToken:  &no,
					TerminationGracePeriodSeconds: ptr.To(int64(2)),
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
							LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
							TopologyKey:   "kubernetes.io/hostname",
						}},
					}},
					Containers: []corev1.Container{{
						Name:            "server",
						Image:           harness.PodServerImage,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Args:            []string{"-name", "$(POD_NAME)"},
						Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
							FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
						Ports:          []corev1.ContainerPort{{ContainerPort: 8080}},
						ReadinessProbe: probe(),
						LivenessProbe:  probe(),
					}},
				},
			},
		},
	}
}

// readyPods waits until the Deployment's pods are Ready (every container ready) and each on its own
// node, and returns them by node name.
func (e *env) readyPods(app string, want int) map[string]corev1.Pod {
	e.t.Helper()
	var byNode map[string]corev1.Pod
	e.eventually(3*time.Minute, "deployment "+app+" ready", func() error {
		pods, err := e.client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return err
		}
		byNode = map[string]corev1.Pod{}
		for _, p := range pods.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			if !podReady(&p) {
				return fmt.Errorf("pod %s on %q not ready: phase %s, %s", p.Name, p.Spec.NodeName, p.Status.Phase, containerStates(&p))
			}
			byNode[p.Spec.NodeName] = p
		}
		if len(byNode) != want {
			return fmt.Errorf("%d ready pods on distinct nodes, want %d", len(byNode), want)
		}
		return nil
	})
	return byNode
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func containerStates(p *corev1.Pod) string {
	var parts []string
	for _, c := range p.Status.ContainerStatuses {
		s := fmt.Sprintf("%s ready=%v restarts=%d", c.Name, c.Ready, c.RestartCount)
		if c.State.Waiting != nil {
			s += " waiting: " + c.State.Waiting.Reason + " " + c.State.Waiting.Message
		}
		parts = append(parts, s)
	}
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			parts = append(parts, string(c.Type)+": "+c.Message)
		}
	}
	return strings.Join(parts, "; ")
}

func TestRealNodes(t *testing.T) {
	e := realNodeEnv(t)
	ctx := context.Background()
	if _, err := e.client.AppsV1().Deployments("default").Create(ctx, podServerDeployment("web", 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := e.readyPods("web", 2)
	for node, p := range pods {
		t.Logf("%s on %s: %s", p.Name, node, p.Status.PodIP)
	}
}

// errorLines returns the last n error lines (klog E or logrus level=error) of a log.
func errorLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "E") || strings.Contains(l, "level=error") {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
