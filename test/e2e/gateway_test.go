package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// The node gateway end to end: dunlin-node moves each node's uplink into br-ex without cutting the
// host off (started, restarted, crashed mid-way, cleaned up) and publishes the node's gateway;
// dunlin-controller builds the gateway routers from it; the br-ex flows carry real traffic between the
// outside and those routers: pod egress SNATed to the node IP, NodePorts (backends on both nodes,
// externalTrafficPolicy Local) and externalIPs from outside.

const (
	gwHostPort = "7777" // a host-network server on the node IP, not a NodePort
	gwNodePort = 30080  // the NodePort test Service's
	// gwLocalPort is the node port of the externalTrafficPolicy Local Service, whose only endpoint is
	// on the first node.
	gwLocalPort = 30081
	gwEchoPort  = "8090"  // the outside server the pods reach
	gwZoneFlow  = "64000" // nodeagent.GatewayCTZone
	// gwExternalIP is the test Service's externalIP, on the underlay subnet: the gateway router
	// answers ARP for it (a load balancer VIP on a router port's network).
	gwExternalIP = "172.30.0.100"
)

// hostServer is a TCP server in a node's namespace answering each connection with the node's name.
func hostServer(t *testing.T, n *harness.ClusterNode) {
	t.Helper()
	ln, err := n.Listen("tcp", ":"+gwHostPort)
	if err != nil {
		t.Fatal(err)
	}
	serveLine(t, ln, func(net.Conn) string { return n.Name })
}

// readLine connects to addr over TCP with dial (from a namespace) and returns the first line it reads.
func readLine(dial func(context.Context, string, string) (net.Conn, error), addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// serveLine answers each connection to ln with one line, until the test ends.
func serveLine(t *testing.T, ln net.Listener, line func(net.Conn) string) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, line(c))
			c.Close()
		}
	}()
}

// outsideReachesHost checks, with a fresh connection each try, that the outside client reaches the
// node's host server at the node IP.
func (e *env) outsideReachesHost(what string, n *harness.ClusterNode) {
	e.t.Helper()
	e.eventually(60*time.Second, "outside reaches the host of "+n.Name+" "+what, func() error {
		line, err := readLine(e.c.Outside.Dial, n.EncapIP+":"+gwHostPort)
		if err != nil {
			return err
		}
		if line != n.Name {
			return fmt.Errorf("answered %q", line)
		}
		return nil
	})
}

// linkState is what the test compares of a device before and after: addresses, routes, MAC.
func linkState(t *testing.T, n *harness.ClusterNode, dev string) string {
	t.Helper()
	s, err := n.LinkState(context.Background(), dev)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// brexFlows returns br-ex's flows without counters and ages, sorted.
func brexFlows(n *harness.ClusterNode) ([]string, error) {
	out, err := n.OFCtl("--no-stats", "--no-names", "dump-flows", "unix:"+n.RunDir+"/br-ex.mgmt")
	if err != nil {
		return nil, err
	}
	var flows []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "NXST_FLOW") {
			flows = append(flows, l)
		}
	}
	slices.Sort(flows)
	return flows, nil
}

func TestNodeGateway(t *testing.T) {
	// kube-controller-manager writes the EndpointSlices of the NodePort Service.
	e := newClusterEnv(t, harness.ClusterOptions{Nodes: 2, Gateway: true, ControllerManager: true})
	n, n2 := e.c.Nodes[0], e.c.Nodes[1]
	ctx := context.Background()
	hostServer(t, n)
	e.outsideReachesHost("while dunlin-node runs", n)
	gwLink := linkState(t, n, "br-ex")

	// --cleanup gives the uplink back: this is the host as it was before dunlin-node started.
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if out, err := n.RunAgent(ctx, nil, "--cleanup"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	before := linkState(t, n, harness.NodeUplink)
	if before != n.UplinkBefore {
		t.Fatalf("after --cleanup the uplink is\n%s\nwant it as it was before dunlin-node started:\n%s", before, n.UplinkBefore)
	}
	if _, err := n.VSCtl("br-exists", "br-ex"); err == nil {
		t.Fatal("br-ex still exists after --cleanup")
	}
	if out, err := n.RunAgent(ctx, nil, "--cleanup"); err != nil {
		t.Fatalf("a second --cleanup: %v\n%s", err, out)
	}
	if again := linkState(t, n, harness.NodeUplink); again != before {
		t.Fatalf("a second --cleanup changed the uplink:\n%s\nwas\n%s", again, before)
	}
	e.outsideReachesHost("without dunlin-node (after --cleanup)", n)

	// A crash at each step of the set-up leaves the host reachable, and a restart finishes the move.
	for _, step := range []string{"bridge", "port", "addresses-added", "routes-moved"} {
		out, err := n.RunAgent(ctx, []string{"DUNLIN_TEST_GATEWAY_CRASH_AFTER=" + step})
		if err == nil || !strings.Contains(out, "as if crashed") {
			t.Fatalf("crash after %s: want the agent to exit there, got %v\n%s", step, err, out)
		}
		e.outsideReachesHost("after a crash after step "+step, n)
		if err := n.StartAgent(ctx); err != nil {
			t.Fatalf("start after a crash after %s: %v", step, err)
		}
		e.outsideReachesHost("after a restart after a crash after step "+step, n)
		if got := linkState(t, n, "br-ex"); got != gwLink {
			t.Fatalf("br-ex after a crash after %s and a restart:\n%s\nwant\n%s", step, got, gwLink)
		}
		if left := linkState(t, n, harness.NodeUplink); strings.Contains(left, n.EncapIP) || strings.Contains(left, "default") {
			t.Fatalf("the uplink kept addressing after a crash after %s and a restart:\n%s", step, left)
		}
		if err := n.StopAgent(); err != nil {
			t.Fatal(err)
		}
		if out, err := n.RunAgent(ctx, nil, "--cleanup"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if got := linkState(t, n, harness.NodeUplink); got != before {
			t.Fatalf("after a crash after %s, a restart and --cleanup the uplink is\n%s\nwant\n%s", step, got, before)
		}
	}

	// Bridge mappings of others are kept.
	if _, err := n.VSCtl("set", "Open_vSwitch", ".", "external_ids:ovn-bridge-mappings=other:br-other"); err != nil {
		t.Fatal(err)
	}
	if err := n.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	e.outsideReachesHost("after dunlin-node started again", n)
	if err := n.PrimeUnderlay(ctx, n2.EncapIP); err != nil {
		t.Fatal(err)
	}
	if err := n2.PrimeUnderlay(ctx, n.EncapIP); err != nil {
		t.Fatal(err)
	}
	mappings, err := n.VSCtl("get", "Open_vSwitch", ".", "external_ids:ovn-bridge-mappings")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Trim(mappings, `"`) != "other:br-other,physnet:br-ex" {
		t.Fatalf("ovn-bridge-mappings = %s, want other:br-other,physnet:br-ex", mappings)
	}
	encap, _ := n.VSCtl("get", "Open_vSwitch", ".", "external_ids:ovn-encap-ip")
	if strings.Trim(encap, `"`) != n.EncapIP {
		t.Fatalf("ovn-encap-ip = %s, want %s", encap, n.EncapIP)
	}

	// The annotation.
	mac, err := n.VSCtl("get", "bridge", "br-ex", "other_config:hwaddr")
	if err != nil {
		t.Fatal(err)
	}
	want := annotations.NodeGatewayInfo{Format: 1, ChassisID: n.Name, Bridge: "br-ex", Interface: harness.NodeUplink,
		MACAddress: strings.Trim(mac, `"`), IPAddresses: []string{n.EncapIP + "/24"}, NextHops: []string{harness.OutsideIP}}
	e.eventually(30*time.Second, "node gateway annotation", func() error {
		node, err := e.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		got := node.Annotations[annotations.NodeGateway]
		if _, err := annotations.ParseNodeGateway(got); err != nil {
			return err
		}
		if got != want.Marshal() {
			return fmt.Errorf("annotation %s, want %s", got, want.Marshal())
		}
		return nil
	})
	if !strings.Contains(before, strings.Trim(mac, `"`)) {
		t.Fatalf("br-ex MAC %s is not the uplink's:\n%s", mac, before)
	}

	// A NodePort Service with a backend on each node, and one with externalTrafficPolicy Local whose
	// only endpoint is on the first node; then the controller's gateway routers.
	e.createPodWith("default", "gwpod", n.Name, map[string]string{"app": "gw", "gwlocal": "yes"})
	e.createPodWith("default", "gwpod2", n2.Name, map[string]string{"app": "gw"})
	pod1, sb := e.running("default", "gwpod")
	pod2, sb2 := e.running("default", "gwpod2")
	// Both nodes' tunnel endpoints are on br-ex now: pods talk across them.
	e.eventually(60*time.Second, "pod on node2 reaches the pod on node1 through the tunnel", func() error {
		return expectName(sb2, pod1.Status.PodIP, "gwpod")
	})
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "gwnp"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "gw"},
		Ports:       []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: gwNodePort, Protocol: corev1.ProtocolTCP}},
		ExternalIPs: []string{gwExternalIP},
	}}
	if _, err := e.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	local := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "gwlocal"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"gwlocal": "yes"},
		ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
		Ports:                 []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: gwLocalPort, Protocol: corev1.ProtocolTCP}},
	}}
	if _, err := e.client.CoreV1().Services("default").Create(ctx, local, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.gatewayRouter(n, pod1.Status.PodIP, pod2.Status.PodIP)
	e.gatewayRouter(n2, pod1.Status.PodIP, pod2.Status.PodIP)
	t.Logf("ovn-nbctl show:\n%s\novn-nbctl lr-lb-list GR_%s:\n%s", e.nbctl("show"), n.Name, e.nbctl("lr-lb-list", "GR_"+n.Name))

	var patch string
	e.eventually(60*time.Second, "patch port on br-ex and flows to it", func() error {
		out, err := n.VSCtl("--bare", "--columns=name", "find", "interface", "type=patch")
		if err != nil {
			return err
		}
		for _, name := range strings.Fields(out) {
			if strings.HasSuffix(name, "-to-br-int") {
				patch = name
			}
		}
		if patch == "" {
			return fmt.Errorf("no patch port on br-ex yet (%q)", out)
		}
		ofport, err := n.VSCtl("get", "interface", patch, "ofport")
		if err != nil {
			return err
		}
		flows, err := brexFlows(n)
		if err != nil {
			return err
		}
		joined := strings.Join(flows, "\n")
		// OpenFlow truncates port names to 15 characters: compare numbers.
		upport, err := n.VSCtl("get", "interface", harness.NodeUplink, "ofport")
		if err != nil {
			return err
		}
		for _, want := range []string{
			fmt.Sprintf("tcp,in_port=%s,nw_dst=%s,tp_dst=%d actions=output:%s", upport, n.EncapIP, gwNodePort, ofport),
			fmt.Sprintf("tcp,in_port=%s,nw_dst=%s,tp_dst=80 actions=output:%s", upport, gwExternalIP, ofport),
			"ct_state=+est+trk,ct_mark=0x1 actions=output:" + ofport,
			"ct(commit,zone=" + gwZoneFlow,
		} {
			if !strings.Contains(joined, want) {
				return fmt.Errorf("br-ex lacks a flow with %q (patch ofport %s):\n%s", want, ofport, joined)
			}
		}
		return nil
	})
	t.Logf("patch port %s", patch)

	// Pod egress, from a pod on each node: the outside server sees that pod's node IP.
	outsideEcho(t, e.c.Outside)
	for _, from := range []struct {
		sb   harness.Sandbox
		node *harness.ClusterNode
	}{{sb, n}, {sb2, n2}} {
		e.eventually(90*time.Second, "pod on "+from.node.Name+" reaches the outside server", func() error {
			line, err := readLine(from.sb.Dial, harness.OutsideIP+":"+gwEchoPort)
			if err != nil {
				return err
			}
			host, _, _ := net.SplitHostPort(line)
			if host != from.node.EncapIP {
				return fmt.Errorf("the outside server saw %s, want the node IP %s", line, from.node.EncapIP)
			}
			return nil
		})
	}

	// NodePort from outside, on either node, answered by the backends on both nodes: the gateway
	// router SNATs to its join address (lb_force_snat_ip), so a backend on the other node answers
	// through it too. Every connection is fresh, and each must succeed at once: a reset fails the test.
	for _, node := range []*harness.ClusterNode{n, n2} {
		e.eventually(90*time.Second, "outside reaches the NodePort of "+node.Name, func() error {
			_, err := outsideGet(e.c.Outside, fmt.Sprintf("http://%s:%d/", node.EncapIP, gwNodePort))
			return err
		})
		seen := map[string]int{}
		for i := 0; i < 30 && (seen["gwpod"] == 0 || seen["gwpod2"] == 0 || i < 10); i++ {
			body, err := outsideGet(e.c.Outside, fmt.Sprintf("http://%s:%d/", node.EncapIP, gwNodePort))
			if err != nil {
				t.Fatalf("NodePort of %s, connection %d: %v", node.Name, i, err)
			}
			seen[strings.TrimSpace(body)]++
		}
		if len(seen) != 2 || seen["gwpod"] == 0 || seen["gwpod2"] == 0 {
			t.Fatalf("the NodePort of %s was answered by %v, want both gwpod and gwpod2", node.Name, seen)
		}
		t.Logf("NodePort of %s answered by %v", node.Name, seen)
	}
	e.eventually(90*time.Second, "outside reaches the externalIP", func() error {
		body, err := outsideGet(e.c.Outside, "http://"+gwExternalIP+":80/")
		if err != nil {
			return err
		}
		if b := strings.TrimSpace(body); b != "gwpod" && b != "gwpod2" {
			return fmt.Errorf("externalIP answered %q", body)
		}
		return nil
	})
	for i := 0; i < 10; i++ {
		if _, err := outsideGet(e.c.Outside, "http://"+gwExternalIP+":80/"); err != nil {
			t.Fatalf("externalIP, connection %d: %v", i, err)
		}
	}

	// No packet went past the userspace datapath's recirculation limit (what reset these connections
	// when the gateway load balancers used dp_hash).
	for _, node := range []*harness.ClusterNode{n, n2} {
		if drops := recircDrops(t, node); drops != 0 {
			t.Fatalf("%s dropped %d packets past the datapath's recirculation limit", node.Name, drops)
		}
	}

	// externalTrafficPolicy Local: the node with the endpoint answers and the backend sees the
	// outside client's address; the node without one does not answer at all (no reset).
	e.eventually(90*time.Second, "outside reaches the Local NodePort", func() error {
		body, err := outsideGet(e.c.Outside, fmt.Sprintf("http://%s:%d/client", n.EncapIP, gwLocalPort))
		if err != nil {
			return err
		}
		name, client, _ := strings.Cut(strings.TrimSpace(body), " ")
		if host, _, _ := net.SplitHostPort(client); name != "gwpod" || host != harness.OutsideIP {
			return fmt.Errorf("Local NodePort answered %q, want gwpod seeing the client %s", body, harness.OutsideIP)
		}
		return nil
	})
	for i := 0; i < 3; i++ {
		body, err := outsideGet(e.c.Outside, fmt.Sprintf("http://%s:%d/", n2.EncapIP, gwLocalPort))
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("the Local NodePort of %s, without an endpoint, answered %q, %v; want no answer (a timeout)", n2.Name, body, err)
		}
	}
	e.outsideReachesHost("with the gateway router in place", n)

	// With the gateway in place, the host reaches pod IPs on both nodes and the ClusterIP.
	host := harness.Sandbox{NetnsName: n.Netns, Netns: "/var/run/netns/" + n.Netns}
	gwnp, err := e.client.CoreV1().Services("default").Get(ctx, "gwnp", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.eventually(60*time.Second, "the host of "+n.Name+" reaches pods on both nodes and the ClusterIP", func() error {
		if err := expectName(host, pod1.Status.PodIP, "gwpod"); err != nil {
			return err
		}
		if err := expectName(host, pod2.Status.PodIP, "gwpod2"); err != nil {
			return err
		}
		body, err := host.HTTPGet(ctx, "http://"+gwnp.Spec.ClusterIP+":80/", 10*time.Second)
		if b := strings.TrimSpace(string(body)); err == nil && b != "gwpod" && b != "gwpod2" {
			return fmt.Errorf("ClusterIP answered %q", b)
		}
		return err
	})

	// A host-network server (the first node's, on its node IP) as the backend of a Service is reached
	// from pods on both nodes, the node it runs on included.
	hostIP := e.hostNetworkService("hostnet", n, gwHostPort)
	for _, from := range []harness.Sandbox{sb, sb2} {
		e.eventually(60*time.Second, "pod "+from.NetnsName+" reaches the host-network backend", func() error {
			line, err := readLine(from.Dial, hostIP+":80")
			if err == nil && line != n.Name {
				return fmt.Errorf("answered %q, want %s", line, n.Name)
			}
			return err
		})
	}

	// A restart changes no flow and keeps everything working: the flows are not even re-added (the
	// NodePort flow keeps its packet count).
	flows, err := brexFlows(n)
	if err != nil {
		t.Fatal(err)
	}
	npBefore := nodePortPackets(t, n)
	if npBefore == 0 {
		t.Fatal("the NodePort flow counted no packet")
	}
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if err := n.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	e.outsideReachesHost("after a restart", n)
	e.eventually(30*time.Second, "flows unchanged by a restart", func() error {
		again, err := brexFlows(n)
		if err != nil {
			return err
		}
		if !slices.Equal(again, flows) {
			return fmt.Errorf("flows after a restart:\n%s\nbefore:\n%s", strings.Join(again, "\n"), strings.Join(flows, "\n"))
		}
		return nil
	})
	if got := linkState(t, n, "br-ex"); got != gwLink {
		t.Fatalf("br-ex after a restart:\n%s\nwant\n%s", got, gwLink)
	}
	if after := nodePortPackets(t, n); after < npBefore {
		t.Fatalf("the NodePort flow's packet count went from %d to %d: the restart re-added it", npBefore, after)
	}
	e.eventually(60*time.Second, "NodePort after a restart", func() error {
		_, err := outsideGet(e.c.Outside, fmt.Sprintf("http://%s:%d/", n.EncapIP, gwNodePort))
		return err
	})

	// Addresses lost from br-ex (as when ovs-vswitchd restarts and recreates its device) come back.
	if _, err := n.Exec(ctx, "ip", "addr", "flush", "dev", "br-ex"); err != nil {
		t.Fatal(err)
	}
	e.outsideReachesHost("after br-ex's addresses were flushed", n)
	// The kernel's IPv6 link-local address went with the flush for good: the rest is as it was.
	linkLocal := regexp.MustCompile(`fe80::\S+ ?`)
	if got := linkLocal.ReplaceAllString(linkState(t, n, "br-ex"), ""); got != linkLocal.ReplaceAllString(gwLink, "") {
		t.Fatalf("br-ex after its addresses were flushed:\n%s\nwant\n%s", got, gwLink)
	}

	// The Service's deletion removes its NodePort flow.
	if err := e.client.CoreV1().Services("default").Delete(ctx, "gwnp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually(30*time.Second, "NodePort flow removed", func() error {
		flows, err := brexFlows(n)
		if err != nil {
			return err
		}
		if strings.Contains(strings.Join(flows, "\n"), fmt.Sprintf("tp_dst=%d", gwNodePort)) {
			return errors.New("still there")
		}
		return nil
	})

	// Cleanup at the end: the uplink as it was, the mapping of others kept, the annotation gone.
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if out, err := n.RunAgent(ctx, nil, "--cleanup"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := linkState(t, n, harness.NodeUplink); got != before {
		t.Fatalf("after the final --cleanup the uplink is\n%s\nwant\n%s", got, before)
	}
	e.outsideReachesHost("after the final --cleanup", n)
	mappings, _ = n.VSCtl("get", "Open_vSwitch", ".", "external_ids:ovn-bridge-mappings")
	if strings.Trim(mappings, `"`) != "other:br-other" {
		t.Fatalf("ovn-bridge-mappings after --cleanup = %s, want other:br-other", mappings)
	}
	node, err := e.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := node.Annotations[annotations.NodeGateway]; ok {
		t.Fatalf("annotation still there after --cleanup: %s", v)
	}
}

// hostNetworkService creates a Service without selector whose only endpoint is node's address at
// port, as for a host-network pod (or the kubernetes Service), waits for its load balancer and the
// datapath, and returns its ClusterIP.
func (e *env) hostNetworkService(name string, node *harness.ClusterNode, port string) string {
	e.t.Helper()
	ctx := context.Background()
	p, _ := strconv.Atoi(port)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name}, Spec: corev1.ServiceSpec{
		Ports: []corev1.ServicePort{{Name: "tcp", Port: 80, TargetPort: intstr.FromInt32(int32(p)), Protocol: corev1.ProtocolTCP}},
	}}
	svc, err := e.client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: name + "-host", Labels: map[string]string{discoveryv1.LabelServiceName: name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{node.EncapIP}, NodeName: ptr.To(node.Name),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("tcp"), Port: ptr.To(int32(p)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if _, err := e.client.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		e.t.Fatal(err)
	}
	e.waitBackends("default", name, "TCP", 1)
	return svc.Spec.ClusterIP
}

// gatewayRouter waits for dunlin-controller's gateway rows of n (GR_<node> pinned to its chassis, with
// the SNAT of the cluster CIDR to the node IP) and for the Service's NodePort load balancer to hold the
// backends, then for the datapath.
func (e *env) gatewayRouter(n *harness.ClusterNode, backends ...string) {
	e.t.Helper()
	gr := "GR_" + n.Name
	e.eventually(90*time.Second, gr+" written by the controller", func() error {
		chassis, err := e.c.OVN.NBCtl("get", "Logical_Router", gr, "options:chassis")
		if err != nil {
			return err
		}
		if strings.Trim(chassis, `"`) != n.Name {
			return fmt.Errorf("%s options:chassis %s", gr, chassis)
		}
		nat, err := e.c.OVN.NBCtl("lr-nat-list", gr)
		if err != nil {
			return err
		}
		if !strings.Contains(nat, n.EncapIP) {
			return fmt.Errorf("%s has no SNAT to %s:\n%s", gr, n.EncapIP, nat)
		}
		vips, err := e.c.OVN.NBCtl("--columns=vips", "find", "Load_Balancer", "name=Service_default/gwnp_TCP_nodeport")
		if err != nil {
			return err
		}
		for _, b := range backends {
			if !strings.Contains(vips, b+":8080") {
				return fmt.Errorf("NodePort load balancer: %q, want backend %s", vips, b)
			}
		}
		return nil
	})
	e.datapath()
}

// outsideEcho runs a TCP server on the outside namespace that answers each connection with the
// client's address as it sees it.
func outsideEcho(t *testing.T, o *harness.Outside) {
	t.Helper()
	ln, err := o.Listen("tcp", o.IP+":"+gwEchoPort)
	if err != nil {
		t.Fatal(err)
	}
	serveLine(t, ln, func(c net.Conn) string { return c.RemoteAddr().String() })
}

// outsideGet fetches url from the outside namespace over a fresh connection.
func outsideGet(o *harness.Outside, url string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := o.Dial(ctx, "tcp", strings.Split(strings.TrimPrefix(url, "http://"), "/")[0])
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	path := "/" + strings.SplitN(strings.TrimPrefix(url, "http://"), "/", 2)[1]
	fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path)
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	resp := string(b)
	if !strings.HasPrefix(resp, "HTTP/1.") || !strings.Contains(resp, " 200 ") {
		return "", fmt.Errorf("GET %s: %q", url, resp)
	}
	_, body, _ := strings.Cut(resp, "\r\n\r\n")
	return body, nil
}

// nodePortPackets returns the packet count of br-ex's flow for the test NodePort.
func nodePortPackets(t *testing.T, n *harness.ClusterNode) int {
	t.Helper()
	out, err := n.OFCtl("dump-flows", "unix:"+n.RunDir+"/br-ex.mgmt", fmt.Sprintf("tcp,nw_dst=%s,tp_dst=%d", n.EncapIP, gwNodePort))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`n_packets=(\d+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no NodePort flow:\n%s", out)
	}
	var count int
	fmt.Sscan(m[1], &count)
	return count
}

// recircDrops returns the node's ovs-vswitchd coverage counter datapath_drop_recirc_error: packets the
// userspace datapath dropped for recirculating more than its limit (coverage/show lists only counters
// that are not zero).
func recircDrops(t *testing.T, n *harness.ClusterNode) int {
	t.Helper()
	out, err := n.AppCtlVSwitchd("coverage/show")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^datapath_drop_recirc_error\s.*total: (\d+)`).FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	var count int
	fmt.Sscan(m[1], &count)
	return count
}
