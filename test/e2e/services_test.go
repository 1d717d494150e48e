package e2e

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// requestTimeout bounds one HTTP request of a traffic test: generous, as a lost SYN is resent only
// after 1, 3, 7 and 15 s, and on a loaded machine the datapath is slow; a wrong answer fails anyway.
const requestTimeout = 30 * time.Second

// TestServices runs Services through OVN load balancers on two nodes, with the real
// kube-controller-manager producing the EndpointSlices.
func TestServices(t *testing.T) {
	e := newClusterEnv(t, harness.ClusterOptions{ControllerManager: true})
	const ns = "default"
	tcp := func(name string, port int32) corev1.ContainerPort {
		return corev1.ContainerPort{Name: name, ContainerPort: port, Protocol: corev1.ProtocolTCP}
	}
	udp := func(name string, port int32) corev1.ContainerPort {
		return corev1.ContainerPort{Name: name, ContainerPort: port, Protocol: corev1.ProtocolUDP}
	}
	// The named port "web" is 8080 in web-1 and web-2 but 9090 in web-3, so the EndpointSlice
	// controller writes two slices with different port numbers for it.
	e.createPodWith(ns, "web-1", "node1", map[string]string{"app": "web", "hairpin": "yes"}, tcp("web", 8080), udp("dns", 5353))
	e.createPodWith(ns, "web-2", "node2", map[string]string{"app": "web"}, tcp("web", 8080), udp("dns", 5353))
	e.createPodWith(ns, "web-3", "node2", map[string]string{"app": "web"}, tcp("web", 9090), tcp("plain", 8080), udp("dns", 5353))
	e.createPodWith(ns, "solo-1", "node2", map[string]string{"app": "solo"})
	e.createPod(ns, "client", "node1")
	backends := []string{"web-1", "web-2", "web-3"}
	for _, name := range append(slices.Clone(backends), "solo-1") {
		e.running(ns, name)
	}
	_, client := e.running(ns, "client")
	_, web1 := e.running(ns, "web-1")

	webPorts := []corev1.ServicePort{
		{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP},
		{Name: "dns", Port: 53, TargetPort: intstr.FromString("dns"), Protocol: corev1.ProtocolUDP},
	}
	web := e.createService(ns, "web", map[string]string{"app": "web"}, webPorts, nil)
	e.waitBackends(ns, "web", "TCP", 3)
	e.waitBackends(ns, "web", "UDP", 3)

	t.Run("NB rows: one load balancer per protocol, in the group on every node switch", func(t *testing.T) {
		lbs := e.nbctl("--bare", "--columns=name", "find", "Load_Balancer", "external_ids:service=web")
		if got := slices.Sorted(slices.Values(strings.Fields(lbs))); !slices.Equal(got, []string{"Service_default/web_TCP", "Service_default/web_UDP"}) {
			t.Errorf("load balancers of web: %q", lbs)
		}
		for _, node := range []string{"node1", "node2"} {
			out := e.nbctl("ls-lb-list", node)
			if !strings.Contains(out, web+":80") || !strings.Contains(out, web+":53") {
				t.Errorf("ls-lb-list %s lacks web's VIPs:\n%s", node, out)
			}
		}
	})

	t.Run("TCP over the ClusterIP reaches every backend on both nodes, named targetPort resolved", func(t *testing.T) {
		seen := map[string]int{}
		for i := 0; i < 60 && len(seen) < 3; i++ {
			body, err := client.HTTPGet(context.Background(), "http://"+web+":80/", requestTimeout)
			if err != nil {
				t.Fatalf("request %d to %s:80: %v", i, web, err)
			}
			seen[strings.TrimSpace(string(body))]++
		}
		if got := slices.Sorted(maps.Keys(seen)); !slices.Equal(got, backends) {
			t.Fatalf("answered by %v, want every backend %v", seen, backends)
		}
		t.Logf("TCP answers: %v", seen)
	})

	t.Run("UDP over the ClusterIP reaches every backend", func(t *testing.T) {
		seen := map[string]int{}
		for i := 0; i < 60 && len(seen) < 3; i++ {
			name, _, err := udpAsk(client, web+":53")
			if err != nil {
				t.Fatalf("datagram %d to %s:53: %v", i, web, err)
			}
			seen[name]++
		}
		if got := slices.Sorted(maps.Keys(seen)); !slices.Equal(got, backends) {
			t.Fatalf("answered by %v, want every backend %v", seen, backends)
		}
		t.Logf("UDP answers: %v", seen)
	})

	t.Run("the host reaches the ClusterIP through the management port", func(t *testing.T) {
		for _, n := range e.c.Nodes {
			host := harness.Sandbox{NetnsName: n.Netns, Netns: "/var/run/netns/" + n.Netns}
			body, err := host.HTTPGet(context.Background(), "http://"+web+":80/", requestTimeout)
			if err != nil || !slices.Contains(backends, strings.TrimSpace(string(body))) {
				t.Errorf("%s to %s:80: %q, %v", n.Name, web, body, err)
			}
		}
	})

	t.Run("session affinity keeps a client on one backend", func(t *testing.T) {
		sticky := e.createService(ns, "sticky", map[string]string{"app": "web"}, webPorts[:1], func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](300)}}
		})
		e.waitBackends(ns, "sticky", "TCP", 3)
		if got := e.nbctl("get", "Load_Balancer", "Service_default/sticky_TCP", "options:affinity_timeout"); got != `"300"` {
			t.Errorf("affinity_timeout = %s, want \"300\"", got)
		}
		// OVN 23.03 drops the first packet of a new client under affinity_timeout (its learn flow
		// does not continue the pipeline) and the userspace datapath then stalls that connection:
		// the first attempt may fail (see --session-affinity=hash). Every later one must work.
		if _, err := client.HTTPGet(context.Background(), "http://"+sticky+":80/", 2*time.Second); err != nil {
			t.Logf("first connection of a new client (known OVN 23.03 affinity drop): %v", err)
		}
		seen := map[string]int{}
		for i := range 20 {
			body, err := client.HTTPGet(context.Background(), "http://"+sticky+":80/", requestTimeout)
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			seen[strings.TrimSpace(string(body))]++
		}
		if len(seen) != 1 {
			t.Fatalf("20 connections from one client were spread over %v, want one backend", seen)
		}
	})

	t.Run("hairpin: a backend reaches itself through its Service", func(t *testing.T) {
		self := e.createService(ns, "self", map[string]string{"hairpin": "yes"}, webPorts[:1], nil)
		e.waitBackends(ns, "self", "TCP", 1)
		for i := range 5 {
			body, err := web1.HTTPGet(context.Background(), "http://"+self+":80/client", requestTimeout)
			if err != nil {
				t.Fatalf("web-1 to its own Service %s:80 (request %d): %v", self, i, err)
			}
			name, from, _ := strings.Cut(strings.TrimSpace(string(body)), " ")
			host, _, _ := net.SplitHostPort(from)
			if name != "web-1" || host != "169.254.169.5" {
				t.Fatalf("hairpin answer %q: want web-1 seeing the hairpin SNAT address 169.254.169.5", body)
			}
		}
	})

	t.Run("internalTrafficPolicy Local keeps traffic on the client's node", func(t *testing.T) {
		local := e.createService(ns, "local", map[string]string{"app": "web"}, webPorts[:1], func(s *corev1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		})
		e.eventually(60*time.Second, "node-local load balancers", func() error {
			for node, n := range map[string]int{"node1": 1, "node2": 2} {
				vips, err := e.c.OVN.LBVIPs("Service_default/local_TCP_node_" + node)
				if err != nil || len(vips) != 1 || len(vips[local+":80"]) != n {
					return fmt.Errorf("%s: %v %v", node, vips, err)
				}
			}
			return nil
		})
		e.datapath()
		seen := map[string]int{}
		for i := range 10 {
			body, err := client.HTTPGet(context.Background(), "http://"+local+":80/", requestTimeout)
			if err != nil {
				t.Fatalf("request %d from node1: %v", i, err)
			}
			seen[strings.TrimSpace(string(body))]++
		}
		if len(seen) != 1 || seen["web-1"] != 10 {
			t.Errorf("from node1 answered by %v, want only web-1 (the node1 backend)", seen)
		}
		host := harness.Sandbox{NetnsName: e.node("node2").Netns, Netns: "/var/run/netns/" + e.node("node2").Netns}
		seen = map[string]int{}
		for i := range 10 {
			body, err := host.HTTPGet(context.Background(), "http://"+local+":80/", requestTimeout)
			if err != nil {
				t.Fatalf("request %d from node2's host: %v", i, err)
			}
			seen[strings.TrimSpace(string(body))]++
		}
		if seen["web-1"] != 0 {
			t.Errorf("from node2 answered by %v, want only node2's backends", seen)
		}
	})

	t.Run("scaling backends to zero refuses at once", func(t *testing.T) {
		solo := e.createService(ns, "solo", map[string]string{"app": "solo"},
			[]corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}, nil)
		e.waitBackends(ns, "solo", "TCP", 1)
		if _, err := client.HTTPGet(context.Background(), "http://"+solo+":80/", requestTimeout); err != nil {
			t.Fatalf("solo before scaling down: %v", err)
		}
		e.deletePod(ns, "solo-1")
		e.eventually(60*time.Second, "solo refusing connections", func() error {
			err := refused(client, solo+":80")
			return err
		})
		if got := e.nbctl("get", "Load_Balancer", "Service_default/solo_TCP", "options:reject"); got != `"true"` {
			t.Errorf("options:reject = %s", got)
		}
	})

	t.Run("deleting a Service removes its load balancers", func(t *testing.T) {
		if err := e.client.CoreV1().Services(ns).Delete(context.Background(), "sticky", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		e.eventually(30*time.Second, "sticky's rows gone", func() error {
			if out := e.nbctl("--bare", "--columns=name", "find", "Load_Balancer", "external_ids:service=sticky"); out != "" {
				return fmt.Errorf("still there: %s", out)
			}
			return nil
		})
		e.datapath() // web must work with the deletion applied on the nodes, not before
		if _, err := client.HTTPGet(context.Background(), "http://"+web+":80/", requestTimeout); err != nil {
			t.Errorf("web after deleting sticky: %v", err)
		}
	})

	t.Run("NB holds exactly the rows of the pods, nodes and Services, whole rows compared", func(t *testing.T) {
		e.converged()
	})
}

func (e *env) nbctl(args ...string) string {
	e.t.Helper()
	out, err := e.c.OVN.NBCtl(args...)
	if err != nil {
		e.t.Fatalf("ovn-nbctl %v: %v", args, err)
	}
	return out
}

// createPodWith creates a pod with labels and container ports; test/podserver serves the ports.
func (e *env) createPodWith(namespace, name, node string, labels map[string]string, ports ...corev1.ContainerPort) {
	e.t.Helper()
	if !slices.ContainsFunc(ports, func(p corev1.ContainerPort) bool { return p.ContainerPort == 8080 && p.Protocol != corev1.ProtocolUDP }) &&
		len(ports) > 0 {
		e.t.Fatalf("pod %s: the tests' readiness check needs TCP 8080 among its ports", name)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "podserver", Ports: ports}}},
	}
	if _, err := e.client.CoreV1().Pods(namespace).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		e.t.Fatalf("create pod %s/%s: %v", namespace, name, err)
	}
}

// createService creates a ClusterIP Service and returns its ClusterIP.
func (e *env) createService(namespace, name string, selector map[string]string, ports []corev1.ServicePort, mutate func(*corev1.Service)) string {
	e.t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec:       corev1.ServiceSpec{Selector: selector, Ports: ports},
	}
	if mutate != nil {
		mutate(svc)
	}
	svc, err := e.client.CoreV1().Services(namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatalf("create service %s/%s: %v", namespace, name, err)
	}
	return svc.Spec.ClusterIP
}

// waitBackends waits until the Service's load balancer for proto has n backends on each VIP, and then
// until every node has the flows for it: the callers send traffic next.
func (e *env) waitBackends(namespace, name, proto string, n int) {
	e.t.Helper()
	lb := "Service_" + namespace + "/" + name + "_" + proto
	e.eventually(60*time.Second, lb+" with "+fmt.Sprint(n)+" backends", func() error {
		vips, err := e.c.OVN.LBVIPs(lb)
		if err != nil || vips == nil {
			return fmt.Errorf("no load balancer (%v)", err)
		}
		for vip, backends := range vips {
			if len(backends) != n {
				return fmt.Errorf("%s has backends %v", vip, backends)
			}
		}
		return nil
	})
	e.datapath()
}

// udpAsk sends one datagram from a fresh socket in the pod and returns who answered and the client
// address it saw.
func udpAsk(from harness.Sandbox, addr string) (name, client string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := from.Dial(ctx, "udp", addr)
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("who\n")); err != nil {
		return "", "", err
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return "", "", err
	}
	name, client, _ = strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
	return name, client, nil
}

// refused checks that a TCP connection to addr is refused, as opposed to accepted or timing out.
func refused(from harness.Sandbox, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conn, err := from.Dial(ctx, "tcp", addr)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%s accepted the connection", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: %v, want connection refused", addr, err)
	}
	return nil
}
