package integration

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

func (c *cluster) createService(name string, mutate ...func(*corev1.Service)) *corev1.Service {
	c.t.Helper()
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP}}},
	}
	for _, m := range mutate {
		m(s)
	}
	s, err := c.client.CoreV1().Services("default").Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		c.t.Fatalf("create service %s: %v", name, err)
	}
	return s
}

func (c *cluster) deleteService(name string) {
	c.t.Helper()
	if err := c.client.CoreV1().Services("default").Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		c.t.Fatalf("delete service %s: %v", name, err)
	}
}

type slicePort struct {
	name  string
	port  int32
	proto corev1.Protocol
}

// applySlice creates or replaces an EndpointSlice of a Service, as the EndpointSlice controller would;
// addresses ending in "!" are not ready.
func (c *cluster) applySlice(service, name string, ports []slicePort, addrs ...string) {
	c.t.Helper()
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.name), Port: ptr.To(p.port), Protocol: ptr.To(p.proto)})
	}
	for _, a := range addrs {
		ready := !strings.HasSuffix(a, "!")
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{strings.TrimSuffix(a, "!")},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready), Serving: ptr.To(ready), Terminating: ptr.To(false)}})
	}
	api := c.client.DiscoveryV1().EndpointSlices("default")
	old, err := api.Get(context.Background(), name, metav1.GetOptions{})
	if err == nil {
		s.ResourceVersion = old.ResourceVersion
		_, err = api.Update(context.Background(), s, metav1.UpdateOptions{})
	} else {
		_, err = api.Create(context.Background(), s, metav1.CreateOptions{})
	}
	if err != nil {
		c.t.Fatalf("apply EndpointSlice %s: %v", name, err)
	}
}

// lbVIPs returns the vips of the named load balancer as ovn-nbctl get prints them ("" when absent). One
// find reads name and vips together: a find of the UUID followed by a get races with the controller
// replacing the row in between.
func (c *cluster) lbVIPs(name string) string {
	c.t.Helper()
	out := c.nbctl("--columns=vips", "find", "Load_Balancer", "name="+name)
	var vips []string
	for _, line := range strings.Split(out, "\n") {
		if _, v, ok := strings.Cut(line, ":"); ok {
			vips = append(vips, strings.TrimSpace(v))
		}
	}
	return strings.Join(vips, "\n")
}

func (c *cluster) expectVIPs(lb, want string) {
	c.t.Helper()
	c.eventually(30*time.Second, lb+" vips", func() error {
		if got := c.lbVIPs(lb); got != want {
			return fmt.Errorf("vips %s, want %s", got, want)
		}
		return nil
	})
}

// nbRows counts the rows of every NB table Dunlin writes or references.
func (c *cluster) nbRows() int {
	c.t.Helper()
	n := 0
	for _, table := range []string{"Load_Balancer", "Load_Balancer_Group", "Logical_Switch", "Logical_Switch_Port",
		"Logical_Router", "Logical_Router_Port"} {
		n += len(strings.Fields(c.nbctl("--bare", "--columns=_uuid", "list", table)))
	}
	return n
}

var webPorts = []slicePort{{"http", 8080, corev1.ProtocolTCP}, {"dns", 5353, corev1.ProtocolUDP}}

func TestServiceLoadBalancers(t *testing.T) {
	c := newCluster(t)
	for _, n := range []string{"n1", "n2"} {
		c.createNode(n)
	}
	c.eventually(30*time.Second, "node switches", func() error {
		if out := c.nbctl("ls-list"); !strings.Contains(out, "(n1)") || !strings.Contains(out, "(n2)") {
			return fmt.Errorf("switches: %q", out)
		}
		return nil
	})
	group := c.nbctl("--bare", "--columns=_uuid", "find", "Load_Balancer_Group", "name=dunlin-cluster")
	for _, n := range []string{"n1", "n2"} {
		if got := c.nbctl("--bare", "--columns=load_balancer_group", "list", "Logical_Switch", n); got != group {
			t.Fatalf("switch %s load_balancer_group %q, want dunlin-cluster %q", n, got, group)
		}
	}

	web := c.createService("web", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.Ports = []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP},
			{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(5353), Protocol: corev1.ProtocolUDP}}
		s.Spec.ExternalIPs = []string{"192.0.2.10"}
	})
	web.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}}
	if _, err := c.client.CoreV1().Services("default").UpdateStatus(context.Background(), web, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	vip := web.Spec.ClusterIP
	// Two slices: the named port is 8080 in one and 9090 in the other; a not-ready endpoint is left out.
	c.applySlice("web", "web-a", webPorts, "10.244.0.5", "10.244.1.5")
	c.applySlice("web", "web-b", []slicePort{{"http", 9090, corev1.ProtocolTCP}, {"dns", 5353, corev1.ProtocolUDP}}, "10.244.1.6", "10.244.1.7!")
	tcpBackends := "10.244.0.5:8080,10.244.1.5:8080,10.244.1.6:9090"
	c.expectVIPs("Service_default/web_TCP", fmt.Sprintf(`{"%s:80"="%s", "192.0.2.10:80"="%s", "198.51.100.7:80"="%s"}`, vip, tcpBackends, tcpBackends, tcpBackends))
	udpBackends := "10.244.0.5:5353,10.244.1.5:5353,10.244.1.6:5353"
	c.expectVIPs("Service_default/web_UDP", fmt.Sprintf(`{"%s:53"="%s", "192.0.2.10:53"="%s", "198.51.100.7:53"="%s"}`, vip, udpBackends, udpBackends, udpBackends))

	t.Run("ovn-nbctl lb-list and ls-lb-list", func(t *testing.T) {
		list := c.nbctl("lb-list")
		for _, want := range []string{vip + ":80", vip + ":53", "192.0.2.10:80", "198.51.100.7:53", "10.244.1.6:9090", "udp"} {
			if !strings.Contains(list, want) {
				t.Errorf("lb-list lacks %s:\n%s", want, list)
			}
		}
		for _, n := range []string{"n1", "n2"} {
			if out := c.nbctl("ls-lb-list", n); !strings.Contains(out, vip+":80") || !strings.Contains(out, vip+":53") {
				t.Errorf("ls-lb-list %s:\n%s", n, out)
			}
		}
		opts := c.nbctl("get", "Load_Balancer", "Service_default/web_TCP", "options")
		if !strings.Contains(opts, `reject="true"`) || !strings.Contains(opts, `hairpin_snat_ip="169.254.169.5 fd69::5"`) {
			t.Errorf("options %s", opts)
		}
		if ids := c.nbctl("get", "Load_Balancer", "Service_default/web_TCP", "external_ids"); !strings.Contains(ids, `"dunlin.io/owner"="Service/default/web"`) {
			t.Errorf("external_ids %s", ids)
		}
	})

	t.Run("session affinity", func(t *testing.T) {
		c.createService("sticky", func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		})
		c.eventually(30*time.Second, "sticky's affinity_timeout", func() error {
			out, err := c.ovn.NBCtl("get", "Load_Balancer", "Service_default/sticky_TCP", "options:affinity_timeout")
			if err != nil || out != `"10800"` {
				return fmt.Errorf("affinity_timeout %s %v", out, err)
			}
			return nil
		})
		c.deleteService("sticky")
	})

	t.Run("headless and ExternalName Services have no load balancer", func(t *testing.T) {
		c.createService("headless", func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone })
		c.applySlice("headless", "headless-a", webPorts, "10.244.0.5")
		c.createService("ext", func(s *corev1.Service) {
			s.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}
		})
		c.createService("marker") // written after the two above: once it is there, they were seen
		c.expectVIPs("Service_default/marker_TCP", fmt.Sprintf(`{"%s:80"=""}`, c.service("marker").Spec.ClusterIP))
		if out := c.nbctl("--bare", "--columns=name", "find", "Load_Balancer", "external_ids:service=headless"); out != "" {
			t.Errorf("headless Service has %s", out)
		}
		if out := c.nbctl("--bare", "--columns=name", "find", "Load_Balancer", "external_ids:service=ext"); out != "" {
			t.Errorf("ExternalName Service has %s", out)
		}
	})

	t.Run("NB rows per Service do not grow with the nodes", func(t *testing.T) {
		perService := func(name string) int {
			before := c.nbRows()
			s := c.createService(name, func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{
					{Name: "http", Port: 80, TargetPort: intstr.FromString("web"), Protocol: corev1.ProtocolTCP},
					{Name: "dns", Port: 53, TargetPort: intstr.FromInt32(5353), Protocol: corev1.ProtocolUDP}}
			})
			c.applySlice(name, name+"-a", webPorts, "10.244.0.5", "10.244.1.5")
			c.expectVIPs("Service_default/"+name+"_UDP", fmt.Sprintf(`{"%s:53"="10.244.0.5:5353,10.244.1.5:5353"}`, s.Spec.ClusterIP))
			c.expectVIPs("Service_default/"+name+"_TCP", fmt.Sprintf(`{"%s:80"="10.244.0.5:8080,10.244.1.5:8080"}`, s.Spec.ClusterIP))
			return c.nbRows() - before
		}
		with2 := perService("at2")
		for i := 3; i <= 50; i++ {
			c.createNode("n" + strconv.Itoa(i))
		}
		c.eventually(60*time.Second, "50 node switches", func() error {
			if n := strings.Count(c.nbctl("ls-list"), "\n") + 1; n != 51 { // and join
				return fmt.Errorf("%d switches", n)
			}
			return nil
		})
		with50 := perService("at50")
		t.Logf("NB rows added by one two-protocol Service: %d with 2 nodes, %d with 50 nodes", with2, with50)
		if with2 != 2 || with50 != 2 {
			t.Errorf("rows per Service: %d with 2 nodes, %d with 50; want 2 (one load balancer per protocol)", with2, with50)
		}
		// The nodes reach them through the one group, not through per-switch references.
		if out := c.nbctl("--bare", "--columns=load_balancer", "find", "Logical_Switch", "load_balancer!=[]"); out != "" {
			t.Errorf("switches reference load balancers directly: %s", out)
		}
	})

	t.Run("no endpoints, then endpoints, then none", func(t *testing.T) {
		s := c.createService("scale")
		vip := s.Spec.ClusterIP
		c.expectVIPs("Service_default/scale_TCP", fmt.Sprintf(`{"%s:80"=""}`, vip))
		c.applySlice("scale", "scale-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, "10.244.0.8")
		c.expectVIPs("Service_default/scale_TCP", fmt.Sprintf(`{"%s:80"="10.244.0.8:8080"}`, vip))
		c.applySlice("scale", "scale-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}})
		c.expectVIPs("Service_default/scale_TCP", fmt.Sprintf(`{"%s:80"=""}`, vip))
	})

	t.Run("deleting a Service removes its rows", func(t *testing.T) {
		uuids := strings.Fields(c.nbctl("--bare", "--columns=_uuid", "find", "Load_Balancer", "external_ids:service=web"))
		c.deleteService("web")
		c.eventually(30*time.Second, "web's load balancers gone", func() error {
			if out := c.nbctl("--bare", "--columns=name", "find", "Load_Balancer", "external_ids:service=web"); out != "" {
				return fmt.Errorf("left: %s", out)
			}
			return nil
		})
		members := c.nbctl("--bare", "--columns=load_balancer", "list", "Load_Balancer_Group", "dunlin-cluster")
		for _, u := range uuids {
			if strings.Contains(members, u) {
				t.Errorf("group still lists %s", u)
			}
		}
	})

	t.Run("restart converges", func(t *testing.T) {
		c.stopController()
		c.deleteService("at2")                                 // deleted while down
		c.applySlice("at50", "at50-a", webPorts, "10.244.0.5") // changed while down
		born := c.createService("born")                        // created while down
		c.applySlice("born", "born-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, "10.244.1.9")
		uuid := c.nbctl("--bare", "--columns=_uuid", "find", "Load_Balancer", "name=Service_default/at50_TCP")
		c.nbctl("remove", "Load_Balancer_Group", "dunlin-cluster", "load_balancer", uuid) // damaged while down
		c.startController()
		c.expectVIPs("Service_default/born_TCP", fmt.Sprintf(`{"%s:80"="10.244.1.9:8080"}`, born.Spec.ClusterIP))
		c.expectVIPs("Service_default/at50_TCP", fmt.Sprintf(`{"%s:80"="10.244.0.5:8080"}`, c.service("at50").Spec.ClusterIP))
		c.eventually(30*time.Second, "at2 collected, at50 back in the group", func() error {
			if out := c.nbctl("--bare", "--columns=name", "find", "Load_Balancer", "external_ids:service=at2"); out != "" {
				return fmt.Errorf("at2 left: %s", out)
			}
			if !strings.Contains(c.nbctl("--bare", "--columns=load_balancer", "list", "Load_Balancer_Group", "dunlin-cluster"), uuid) {
				return fmt.Errorf("at50 not in the group")
			}
			return nil
		})
		names := strings.Fields(c.nbctl("--bare", "--columns=name", "list", "Load_Balancer"))
		slices.Sort(names)
		if n := len(slices.Compact(slices.Clone(names))); n != len(names) {
			t.Errorf("duplicate load balancers: %v", names)
		}
	})
}

func (c *cluster) service(name string) *corev1.Service {
	c.t.Helper()
	s, err := c.client.CoreV1().Services("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		c.t.Fatalf("get service %s: %v", name, err)
	}
	return s
}

func TestServiceBadInput(t *testing.T) {
	c := newCluster(t)
	c.createNode("n1")
	c.nbctl("lb-add", "Service_default/clash_TCP", "10.96.99.99:80", "192.0.2.1:80", "tcp")
	foreign := c.nbctl("list", "Load_Balancer", "Service_default/clash_TCP")

	mismatch := c.createService("mismatch")
	c.applySlice("mismatch", "mismatch-a", []slicePort{{"metrics", 9100, corev1.ProtocolTCP}}, "10.244.0.5")
	outside := c.createService("outside")
	c.applySlice("outside", "outside-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, "203.0.113.9", "10.244.0.9")
	c.createService("clash")
	fine := c.createService("fine")
	c.applySlice("fine", "fine-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, "10.244.0.7")

	c.warning("default", "mismatch", "EndpointPortMissing")
	c.warning("default", "outside", "InvalidEndpointAddress")
	ev := c.warning("default", "clash", "NBNameConflict")
	t.Logf("clash: %s", ev.Message)
	c.expectVIPs("Service_default/mismatch_TCP", fmt.Sprintf(`{"%s:80"=""}`, mismatch.Spec.ClusterIP))
	c.expectVIPs("Service_default/outside_TCP", fmt.Sprintf(`{"%s:80"="10.244.0.9:8080"}`, outside.Spec.ClusterIP))
	c.expectVIPs("Service_default/fine_TCP", fmt.Sprintf(`{"%s:80"="10.244.0.7:8080"}`, fine.Spec.ClusterIP))
	if got := c.nbctl("list", "Load_Balancer", "Service_default/clash_TCP"); got != foreign {
		t.Errorf("foreign load balancer changed:\n%s\nwas:\n%s", got, foreign)
	}
	if c.ctrl.Exited() {
		t.Fatal("controller exited")
	}
	// A node that turns out to own the skipped address makes it a valid (host-network) backend.
	c.createNode("n2")
	// The controller annotates the new node meanwhile: retry on conflicts.
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.client.CoreV1().Nodes().Get(context.Background(), "n2", metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "203.0.113.9"}}
		_, err = c.client.CoreV1().Nodes().UpdateStatus(context.Background(), n, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c.expectVIPs("Service_default/outside_TCP", fmt.Sprintf(`{"%s:80"="10.244.0.9:8080,203.0.113.9:8080"}`, outside.Spec.ClusterIP))
}

func TestServiceLocalTrafficPolicy(t *testing.T) {
	c := newCluster(t)
	c.createNode("n1")
	c.createNode("n2")
	s := c.createService("local", func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
	})
	vip := s.Spec.ClusterIP
	c.applySlice("local", "local-a", []slicePort{{"http", 8080, corev1.ProtocolTCP}}, "10.244.0.5", "10.244.1.5")
	// applySlice leaves nodeName empty; set it as the EndpointSlice controller does.
	sl, err := c.client.DiscoveryV1().EndpointSlices("default").Get(context.Background(), "local-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sl.Endpoints[0].NodeName, sl.Endpoints[1].NodeName = ptr.To("n1"), ptr.To("n2")
	if _, err := c.client.DiscoveryV1().EndpointSlices("default").Update(context.Background(), sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.expectVIPs("Service_default/local_TCP_node_n1", fmt.Sprintf(`{"%s:80"="10.244.0.5:8080"}`, vip))
	c.expectVIPs("Service_default/local_TCP_node_n2", fmt.Sprintf(`{"%s:80"="10.244.1.5:8080"}`, vip))
	if got := c.lbVIPs("Service_default/local_TCP"); got != "" {
		t.Errorf("cluster-wide load balancer for a Local Service: %s", got)
	}
	for _, n := range []string{"n1", "n2"} {
		uuid := c.nbctl("--bare", "--columns=_uuid", "find", "Load_Balancer", "name=Service_default/local_TCP_node_"+n)
		if got := c.nbctl("--bare", "--columns=load_balancer", "list", "Logical_Switch", n); got != uuid {
			t.Errorf("switch %s load_balancer %q, want its own %q", n, got, uuid)
		}
		if out := c.nbctl("ls-lb-list", n); !strings.Contains(out, vip+":80") {
			t.Errorf("ls-lb-list %s:\n%s", n, out)
		}
	}
	// A new node gets its own load balancer, refusing (no local endpoint); a deleted node's goes.
	c.createNode("n3")
	c.expectVIPs("Service_default/local_TCP_node_n3", fmt.Sprintf(`{"%s:80"=""}`, vip))
	if err := c.client.CoreV1().Nodes().Delete(context.Background(), "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.expectVIPs("Service_default/local_TCP_node_n1", "")
	// Back to Cluster: one cluster-wide load balancer, no node ones.
	s = c.service("local")
	s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyCluster)
	if _, err := c.client.CoreV1().Services("default").Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.expectVIPs("Service_default/local_TCP", fmt.Sprintf(`{"%s:80"="10.244.0.5:8080,10.244.1.5:8080"}`, vip))
	c.eventually(30*time.Second, "node load balancers gone", func() error {
		if out := c.nbctl("--bare", "--columns=name", "find", "Load_Balancer", "external_ids:service=local", `external_ids:dunlin.io/node!=""`); out != "" {
			return fmt.Errorf("left: %s", out)
		}
		return nil
	})
}
