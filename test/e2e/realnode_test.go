package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
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
func realNodeEnv(t *testing.T, containerd string, nodeIPAM bool) *env {
	t.Helper()
	if os.Getenv("DUNLIN_REALNODE") == "0" {
		t.Skip("DUNLIN_REALNODE=0: real nodes (kubelet, containerd, runc) skipped")
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
	// Gateway: pods reach the outside through their node's gateway router; DNS: CoreDNS as a Deployment
	// on these nodes, the kubelets' cluster DNS.
	e := newClusterEnv(t, harness.ClusterOptions{RealNodes: true, Containerd: containerd, NodeIPAM: nodeIPAM, Gateway: true, DNS: true})
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

// TestRealNodes runs with Debian's containerd 1.6 and with containerd 2, the release paired with the
// Kubernetes version of the tests. With containerd 1.6 node subnets come from dunlin-controller's
// allocation; with containerd 2 from kube-controller-manager's nodeipam (spec.podCIDR), as kubeadm
// runs it, with --node-subnet-source=pod-cidrs (before it, the controller could allocate a subnet for
// a Node the kubelet had just registered, then keep it against nodeipam's: InvalidNodeSubnet, and the
// node's pods failed their probes).
func TestRealNodes(t *testing.T) {
	t.Run("containerd-debian", func(t *testing.T) { testRealNodes(t, "containerd", false) })
	t.Run(harness.ContainerdV2, func(t *testing.T) {
		bin, err := harness.ContainerdV2Binary()
		if err != nil {
			t.Fatal(err)
		}
		testRealNodes(t, bin, true)
	})
}

func testRealNodes(t *testing.T, containerd string, nodeIPAM bool) {
	e := realNodeEnv(t, containerd, nodeIPAM)
	ctx := context.Background()
	labels := map[string]string{"app": "web"}
	if _, err := e.client.AppsV1().Deployments("default").Create(ctx, podServerDeployment("web", 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := e.readyPods("web", 2)
	sandboxes := map[string]harness.Sandbox{}
	for node, p := range pods {
		sb, err := e.node(node).PodSandbox(ctx, "default", p.Name)
		if err != nil {
			t.Fatal(err)
		}
		sandboxes[node] = sb
		t.Logf("%s on %s: %s (netns %s)", p.Name, node, p.Status.PodIP, sb.Netns)
		n, err := e.client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if nodeIPAM {
			cidr, err := netip.ParsePrefix(n.Spec.PodCIDR)
			if err != nil {
				t.Fatalf("node %s: spec.podCIDR %q: %v", node, n.Spec.PodCIDR, err)
			}
			if !cidr.Contains(netip.MustParseAddr(p.Status.PodIP)) {
				t.Errorf("pod %s on %s has %s, outside the node's spec.podCIDR %s", p.Name, node, p.Status.PodIP, cidr)
			}
		}
	}
	// The kubelets register the Nodes, nodeipam may set spec.podCIDR after dunlin-controller first saw
	// them: it must not have kept a subnet of its own against the declared one.
	events, err := e.client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "reason=InvalidNodeSubnet"})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range events.Items {
		t.Errorf("event %s on %s: %s", ev.Reason, ev.InvolvedObject.Name, ev.Message)
	}
	vip := e.createService("default", "web", labels, []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}, nil)
	e.waitBackends("default", "web", "TCP", 2)

	// connected checks that each pod reaches the other one and, through the Service, both; the outside,
	// SNATed to its node's IP; and resolves the Service's name through CoreDNS, over UDP and TCP.
	outsideEcho(t, e.c.Outside)
	svcName := "web.default.svc." + harness.ClusterDomain
	connected := func(when string) {
		t.Helper()
		for from, sb := range sandboxes {
			e.eventually(60*time.Second, when+": "+from+" reaches the outside", func() error {
				line, err := readLine(sb.Dial, harness.OutsideIP+":"+gwEchoPort)
				if err != nil {
					return err
				}
				if host, _, _ := net.SplitHostPort(line); host != e.node(from).EncapIP {
					return fmt.Errorf("the outside server saw %s, want the node IP %s", line, e.node(from).EncapIP)
				}
				return nil
			})
			for _, tcp := range []bool{false, true} {
				e.eventually(60*time.Second, fmt.Sprintf("%s: %s resolves %s (tcp %v)", when, from, svcName, tcp), func() error {
					ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
					defer cancel()
					addrs, err := sb.Resolver(net.JoinHostPort(harness.ClusterDNSIP, "53"), tcp).LookupHost(ctx, svcName)
					if err != nil {
						return err
					}
					if len(addrs) != 1 || addrs[0] != vip {
						return fmt.Errorf("%s is %v, want %s", svcName, addrs, vip)
					}
					return nil
				})
			}
			for to, p := range pods {
				if to != from {
					e.eventually(30*time.Second, when+": "+from+" reaches "+p.Name, func() error { return expectName(sb, p.Status.PodIP, p.Name) })
				}
			}
			seen := map[string]bool{}
			e.eventually(30*time.Second, when+": "+from+" reaches both backends of "+vip, func() error {
				body, err := httpGet(sb, "http://"+vip+":80/")
				if err != nil {
					return err
				}
				seen[strings.TrimSpace(string(body))] = true
				if len(seen) < len(pods) {
					return fmt.Errorf("answers so far from %v", seen)
				}
				return nil
			})
		}
	}
	e.datapath()
	connected("started")

	// Each daemon of a node in turn: the running pods stay where they are, unrestarted, and connected.
	unchanged := func(when string) {
		t.Helper()
		now := e.readyPods("web", 2)
		for node, p := range pods {
			q := now[node]
			if q.UID != p.UID || q.Status.PodIP != p.Status.PodIP {
				t.Fatalf("%s: pod on %s is %s %s, was %s %s", when, node, q.Name, q.Status.PodIP, p.Name, p.Status.PodIP)
			}
			for _, cs := range q.Status.ContainerStatuses {
				if cs.RestartCount != 0 {
					t.Errorf("%s: %s restarted %d times", when, q.Name, cs.RestartCount)
				}
			}
		}
		connected(when)
	}
	for _, n := range e.c.Nodes {
		if err := n.Containerd.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		unchanged("containerd restarted on " + n.Name)
		if err := n.RealKubelet.StopProcess(); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		if err := n.RealKubelet.Start(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitNodeReadySince(ctx, restarted); err != nil {
			t.Fatal(err)
		}
		unchanged("kubelet restarted on " + n.Name)
		if err := n.StopAgent(); err != nil {
			t.Fatal(err)
		}
		if err := n.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		e.datapath()
		unchanged("dunlin-node restarted on " + n.Name)
	}

	// Deleting the pods releases their OVS ports, veths, netns, logical ports and addresses; the CoreDNS
	// pods' stay.
	portsBefore, vethsBefore := map[string][]string{}, map[string][]string{}
	for _, n := range e.c.Nodes {
		portsBefore[n.Name], vethsBefore[n.Name] = e.ovsPorts(n), e.veths(n)
		if len(portsBefore[n.Name]) != len(vethsBefore[n.Name]) || len(portsBefore[n.Name]) < 1 {
			t.Fatalf("%s before deletion: ports %v veths %v, want as many of each, one at least", n.Name, portsBefore[n.Name], vethsBefore[n.Name])
		}
	}
	// released: of the node's ports (or veths) before, exactly one is gone and nothing new came.
	released := func(before, now []string) bool {
		if len(now) != len(before)-1 {
			return false
		}
		for _, x := range now {
			if !slices.Contains(before, x) {
				return false
			}
		}
		return true
	}
	if err := e.client.AppsV1().Deployments("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually(90*time.Second, "pods gone", func() error {
		list, err := e.client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil || len(list.Items) > 0 {
			return fmt.Errorf("%d pods left (%v)", len(list.Items), err)
		}
		return nil
	})
	for node, p := range pods {
		n := e.node(node)
		e.eventually(60*time.Second, p.Name+"'s port, veth, netns and logical port released", func() error {
			if ports, veths := e.ovsPorts(n), e.veths(n); !released(portsBefore[node], ports) || !released(vethsBefore[node], veths) {
				return fmt.Errorf("ports %v veths %v, before %v and %v", ports, veths, portsBefore[node], vethsBefore[node])
			}
			if _, err := os.Stat(sandboxes[node].Netns); err == nil {
				return fmt.Errorf("netns %s still there", sandboxes[node].Netns)
			}
			out, err := e.c.OVN.NBCtl("--bare", "--columns=name", "find", "Logical_Switch_Port", "name=default_"+p.Name)
			if err != nil || strings.TrimSpace(out) != "" {
				return fmt.Errorf("LSP default_%s: %q %v", p.Name, out, err)
			}
			return nil
		})
	}
	e.converged()
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
