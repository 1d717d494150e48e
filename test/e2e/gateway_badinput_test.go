package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// nodeWarning waits for a Warning event with reason on the node and returns it.
func (e *env) nodeWarning(node, reason string) corev1.Event {
	e.t.Helper()
	var found corev1.Event
	e.eventually(60*time.Second, "Warning "+reason+" on "+node, func() error {
		sel := fields.Set{"involvedObject.name": node, "reason": reason, "type": corev1.EventTypeWarning}.AsSelector()
		evs, err := e.client.CoreV1().Events("").List(context.Background(), metav1.ListOptions{FieldSelector: sel.String()})
		if err != nil {
			return err
		}
		if len(evs.Items) == 0 {
			return fmt.Errorf("no event yet")
		}
		found = evs.Items[0]
		return nil
	})
	return found
}

// gatewayRows returns the gateway router's chassis and NAT rows of node, or an error while it has none.
func (e *env) gatewayRows(node string) (string, error) {
	chassis, err := e.c.OVN.NBCtl("get", "Logical_Router", "GR_"+node, "options:chassis")
	if err != nil {
		return "", err
	}
	nat, err := e.c.OVN.NBCtl("lr-nat-list", "GR_"+node)
	return chassis + nat, err
}

// TestNodeGatewayMissingUplink: a dunlin-node told to share an uplink that does not exist reports it
// (a Warning event on its Node and a log line), serves its pods meanwhile, and sets the gateway up
// once the interface appears; the controller reports the node without a gateway; the other node's
// gateway converges and carries its pods' egress all along.
func TestNodeGatewayMissingUplink(t *testing.T) {
	e := newClusterEnv(t, harness.ClusterOptions{Nodes: 2, Gateway: true})
	n, n2 := e.c.Nodes[0], e.c.Nodes[1]
	ctx := context.Background()
	const late = "eth-late"

	// node1 gives its uplink back, then its agent starts on an interface that is not there.
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	if out, err := n.RunAgent(ctx, nil, "--cleanup"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := n.StartAgent(ctx, "--gateway-interface="+late); err != nil {
		t.Fatalf("dunlin-node without its uplink does not serve pods: %v", err)
	}
	ev := e.nodeWarning(n.Name, "GatewayUplinkMissing")
	if ev.Source.Component != "dunlin-node" || !strings.Contains(ev.Message, late) {
		t.Errorf("GatewayUplinkMissing from %q: %s", ev.Source.Component, ev.Message)
	}
	t.Logf("dunlin-node's event: %s", ev.Message)
	ctrlEv := e.nodeWarning(n.Name, "NodeGatewayMissing")
	t.Logf("dunlin-controller's event: %s", ctrlEv.Message)
	e.eventually(30*time.Second, "dunlin-node logs the missing uplink", func() error {
		b, err := os.ReadFile(n.AgentLog)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "Node gateway not set up, retrying") && strings.Contains(line, late) {
				return nil
			}
		}
		return fmt.Errorf("no log line about %s", late)
	})
	if err := n2.PrimeUnderlay(ctx, n.EncapIP); err != nil {
		t.Fatal(err)
	}

	// node1's pods are plumbed (CNI ADD) and reach each other and their host. (Not node2's pods: on
	// this harness's userspace datapath a tunnel endpoint must be on an OVS bridge, and node1's is back
	// on its plain uplink; with the kernel datapath the tunnel does not depend on the gateway.)
	e.createPod("default", "up1", n.Name)
	e.createPod("default", "up1b", n.Name)
	e.createPod("default", "up2", n2.Name)
	pod1, sb1 := e.running("default", "up1")
	pod1b, _ := e.running("default", "up1b")
	_, sb2 := e.running("default", "up2")
	host1 := harness.Sandbox{NetnsName: n.Netns, Netns: "/var/run/netns/" + n.Netns}
	podsWork := func() error {
		if err := expectName(sb1, pod1b.Status.PodIP, "up1b"); err != nil {
			return err
		}
		return expectName(host1, pod1.Status.PodIP, "up1")
	}
	e.eventually(60*time.Second, "node1's pods reach each other and are reached by their host", podsWork)

	// The other node converges: its gateway router carries its pod's egress, SNATed to its address.
	e.eventually(90*time.Second, "GR_"+n2.Name+" written, none for "+n.Name, func() error {
		rows, err := e.gatewayRows(n2.Name)
		if err != nil {
			return err
		}
		if !strings.Contains(rows, n2.EncapIP) {
			return fmt.Errorf("GR_%s: %s", n2.Name, rows)
		}
		if _, err := e.gatewayRows(n.Name); err == nil {
			return fmt.Errorf("GR_%s exists", n.Name)
		}
		return nil
	})
	e.datapath()
	outsideEcho(t, e.c.Outside)
	e.eventually(90*time.Second, "pod on "+n2.Name+" reaches the outside as its node", func() error {
		line, err := readLine(sb2.Dial, harness.OutsideIP+":"+gwEchoPort)
		if err != nil {
			return err
		}
		if host, _, _ := net.SplitHostPort(line); host != n2.EncapIP {
			return fmt.Errorf("the outside server saw %s, want %s", line, n2.EncapIP)
		}
		return nil
	})

	// The interface appears (a veth with an address of its own): the agent's retry sets the gateway
	// up and publishes it, and the controller writes node1's router.
	for _, args := range [][]string{
		{"link", "add", late, "type", "veth", "peer", "name", late + "-p"},
		{"addr", "add", "192.168.77.1/24", "dev", late},
		{"link", "set", late, "up"},
		{"link", "set", late + "-p", "up"},
	} {
		if out, err := n.Exec(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	e.eventually(90*time.Second, "node gateway published on "+late, func() error {
		node, err := e.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		g, err := annotations.ParseNodeGateway(node.Annotations[annotations.NodeGateway])
		if err != nil {
			return err
		}
		if g.Interface != late || len(g.IPAddresses) != 1 || g.IPAddresses[0] != "192.168.77.1/24" {
			return fmt.Errorf("annotation %+v", g)
		}
		return nil
	})
	e.eventually(60*time.Second, "GR_"+n.Name+" written", func() error {
		rows, err := e.gatewayRows(n.Name)
		if err == nil && !strings.Contains(rows, "192.168.77.1") {
			return fmt.Errorf("GR_%s: %s", n.Name, rows)
		}
		return err
	})
	// Its pods kept working throughout.
	if err := podsWork(); err != nil {
		t.Fatalf("after the gateway came up: %v", err)
	}
}
