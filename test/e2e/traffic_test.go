package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/cni"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// TestPodsTalk is the main scenario on Geneve: traffic on one node and across nodes, MTU, pod deletion
// and address reuse, a dunlin-node restart, and bad CNI input. The steps share one cluster.
func TestPodsTalk(t *testing.T) {
	e := newEnv(t, "geneve")
	const ns = "default"
	e.createPod(ns, "a1", "node1")
	e.createPod(ns, "a2", "node1")
	e.createPod(ns, "b1", "node2")
	a1pod, a1 := e.running(ns, "a1")
	a2pod, a2 := e.running(ns, "a2")
	b1pod, b1 := e.running(ns, "b1")
	e.datapath()

	t.Run("same node", func(t *testing.T) {
		mustOK(t, ping(a1, a2pod.Status.PodIP))
		mustOK(t, expectName(a1, a2pod.Status.PodIP, "a2"))
		mustOK(t, expectName(a2, a1pod.Status.PodIP, "a1"))
	})
	t.Run("across nodes", func(t *testing.T) {
		mustOK(t, ping(a1, b1pod.Status.PodIP))
		mustOK(t, expectName(a1, b1pod.Status.PodIP, "b1"))
		mustOK(t, expectName(b1, a2pod.Status.PodIP, "a2"))
	})
	t.Run("gateway", func(t *testing.T) {
		mustOK(t, ping(b1, gatewayOf(t, b1pod.Status.PodIP)))
	})
	t.Run("host to pods through the management port", func(t *testing.T) {
		// As kubelet probes do: from each node's own network namespace to pods here and on the other node.
		for _, n := range e.c.Nodes {
			host := harness.Sandbox{NetnsName: n.Netns, Netns: "/var/run/netns/" + n.Netns}
			// The agent routes the pod network into the management port on its own time.
			e.eventually(60*time.Second, n.Name+" reaches a1 and b1", func() error {
				if err := expectName(host, a1pod.Status.PodIP, "a1"); err != nil {
					return err
				}
				return expectName(host, b1pod.Status.PodIP, "b1")
			})
			mustOK(t, ping(host, a2pod.Status.PodIP))
		}
		out, err := e.node("node1").Exec(context.Background(), "ip", "-4", "-o", "addr", "show", "dunlin-mp0")
		mustOK(t, err)
		if want := strings.TrimSuffix(gatewayOf(t, a1pod.Status.PodIP), "1") + "2/24"; !strings.Contains(out, want) {
			t.Errorf("dunlin-mp0 on node1: %s, want %s", out, want)
		}
	})
	t.Run("TCP transfer across nodes", func(t *testing.T) {
		for _, n := range []int{4 << 20, 1 << 20} {
			d, err := transfer(a1, b1pod.Status.PodIP, n)
			mustOK(t, err)
			t.Logf("%d bytes node2->node1 in %s (%.1f MB/s)", n, d.Round(time.Millisecond), float64(n)/d.Seconds()/1e6)
		}
		_, err := transfer(b1, a1pod.Status.PodIP, 2<<20)
		mustOK(t, err)
	})
	t.Run("largest packet the MTU allows", func(t *testing.T) {
		mtu := podMTU(t, a1)
		// ICMP payload = MTU - 20 (IP) - 8 (ICMP), don't fragment.
		mustOK(t, ping(a1, b1pod.Status.PodIP, "-M", "do", "-s", strconv.Itoa(mtu-28)))
		mustOK(t, ping(a1, a2pod.Status.PodIP, "-M", "do", "-s", strconv.Itoa(mtu-28)))
		if err := ping(a1, b1pod.Status.PodIP, "-M", "do", "-s", strconv.Itoa(mtu-27)); err == nil {
			t.Errorf("a packet one byte over the MTU %d left the pod", mtu)
		}
		t.Logf("pod MTU %d: %d-byte packets cross nodes with DF set", mtu, mtu)
	})
	t.Run("CHECK", func(t *testing.T) {
		n := e.node("node1")
		list, err := n.Kubelet.ConfList()
		mustOK(t, err)
		mustOK(t, n.Kubelet.CNI().CheckNetworkList(context.Background(), list,
			harness.RuntimeConf(a1.ID, a1.Netns, ns, "a1", a1.UID)))
		// CHECK notices a missing address.
		out, err := exec.Command("ip", "-n", a1.NetnsName, "addr", "del", a1pod.Status.PodIP+"/24", "dev", "eth0").CombinedOutput()
		if err != nil {
			t.Fatalf("remove the address to test CHECK's failure: %v %s", err, out)
		}
		err = n.Kubelet.CNI().CheckNetworkList(context.Background(), list, harness.RuntimeConf(a1.ID, a1.Netns, ns, "a1", a1.UID))
		if err == nil {
			t.Errorf("CHECK passed with the pod's address removed")
		}
		// A repeated ADD of the same container repairs it and returns the same result.
		res, err := n.Kubelet.CNI().AddNetworkList(context.Background(), list, harness.RuntimeConf(a1.ID, a1.Netns, ns, "a1", a1.UID))
		mustOK(t, err)
		r, err := current.NewResultFromResult(res)
		mustOK(t, err)
		if got := r.IPs[0].Address.IP.String(); got != a1pod.Status.PodIP {
			t.Errorf("repeated ADD gave %s, first ADD %s", got, a1pod.Status.PodIP)
		}
		mustOK(t, n.Kubelet.CNI().CheckNetworkList(context.Background(), list, harness.RuntimeConf(a1.ID, a1.Netns, ns, "a1", a1.UID)))
		e.datapath()
		mustOK(t, expectName(b1, a1pod.Status.PodIP, "a1"))
		if ports := e.ovsPorts(n); len(ports) != 2 { // a1, a2
			t.Errorf("node1 br-int ports after repeated ADD: %v, want 2", ports)
		}
	})
	t.Run("delete pod and reuse its address", func(t *testing.T) {
		n := e.node("node1")
		before := e.ovsPorts(n)
		e.deletePod(ns, "a2")
		e.eventually(30*time.Second, "a2's OVS port, veth and netns removed", func() error {
			ports, veths := e.ovsPorts(n), e.veths(n)
			if len(ports) != len(before)-1 || len(veths) != len(before)-1 {
				return fmt.Errorf("ports %v veths %v (before: %v)", ports, veths, before)
			}
			if _, err := os.Stat(a2.Netns); err == nil {
				return fmt.Errorf("a2's netns %s still exists", a2.Netns)
			}
			return nil
		})
		// The address is free once the pod has left the API and the controller removed its port.
		e.eventually(30*time.Second, "a2 gone from the API and NB", func() error {
			if _, err := e.client.CoreV1().Pods(ns).Get(context.Background(), "a2", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("pod still there (%v)", err)
			}
			out, err := e.c.OVN.NBCtl("--bare", "--columns=name", "find", "Logical_Switch_Port", "name=default_a2")
			if err != nil || strings.TrimSpace(out) != "" {
				return fmt.Errorf("LSP default_a2: %q %v", out, err)
			}
			return nil
		})
		e.createPod(ns, "a3", "node1")
		a3pod, a3 := e.running(ns, "a3")
		e.datapath()
		if a3pod.Status.PodIP != a2pod.Status.PodIP {
			t.Errorf("a3 got %s, want a2's freed %s (lowest free)", a3pod.Status.PodIP, a2pod.Status.PodIP)
		}
		mustOK(t, expectName(b1, a3pod.Status.PodIP, "a3"))
		mustOK(t, expectName(a3, b1pod.Status.PodIP, "b1"))
		a2pod, a2 = a3pod, a3
	})
	t.Run("bad input", func(t *testing.T) { badInput(t, e) })
	t.Run("GC", func(t *testing.T) {
		n := e.node("node2")
		e.createPod(ns, "g1", "node2")
		e.running(ns, "g1")
		list, err := n.Kubelet.ConfList()
		mustOK(t, err)
		valid := []cnitypes.GCAttachment{{ContainerID: b1.ID, IfName: "eth0"}}
		mustOK(t, n.Kubelet.CNI().GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: valid}))
		if ports := e.ovsPorts(n); len(ports) != 1 {
			t.Errorf("node2 ports after GC: %v, want only b1's", ports)
		}
		if veths := e.veths(n); len(veths) != 1 {
			t.Errorf("node2 veths after GC: %v, want only b1's", veths)
		}
		e.datapath()
		mustOK(t, expectName(a1, b1pod.Status.PodIP, "b1"))
		e.deletePod(ns, "g1") // DEL of a collected attachment succeeds
		e.eventually(30*time.Second, "g1 gone", func() error {
			if _, ok := n.Kubelet.Sandbox(ns, "g1"); ok {
				return errors.New("sandbox still there: " + fmt.Sprint(n.Kubelet.LastError(ns, "g1")))
			}
			return nil
		})
	})
	t.Run("dunlin-node restart", func(t *testing.T) {
		n := e.node("node1")
		mustOK(t, n.StopAgent())
		// Running pods keep talking while the agent is down.
		mustOK(t, expectName(b1, a1pod.Status.PodIP, "a1"))
		mustOK(t, ping(a1, b1pod.Status.PodIP))
		e.createPod(ns, "a4", "node1")
		// The stand-in kubelet tries at once, and the plugin cannot reach the agent.
		e.eventually(30*time.Second, "a failed ADD for a4 while the agent is down", func() error {
			err := n.Kubelet.LastError(ns, "a4")
			var ce *cnitypes.Error
			if !errors.As(err, &ce) || ce.Code != cni.ErrAgentUnreachable {
				return fmt.Errorf("last ADD error %v, want CNI error code %d (agent unreachable)", err, cni.ErrAgentUnreachable)
			}
			return nil
		})
		if _, ok := n.Kubelet.Sandbox(ns, "a4"); ok {
			t.Fatal("a4 got a sandbox while the agent was down")
		}
		mustOK(t, n.StartAgent(context.Background()))
		a4pod, a4 := e.running(ns, "a4")
		e.datapath()
		mustOK(t, expectName(a4, b1pod.Status.PodIP, "b1"))
		mustOK(t, expectName(b1, a4pod.Status.PodIP, "a4"))
		mustOK(t, expectName(b1, a1pod.Status.PodIP, "a1"))
	})
	t.Run("STATUS", func(t *testing.T) {
		n := e.node("node2")
		list, err := n.Kubelet.ConfList()
		mustOK(t, err)
		mustOK(t, n.Kubelet.CNI().GetStatusNetworkList(context.Background(), list))
		mustOK(t, n.StopOVNController())
		err = n.Kubelet.CNI().GetStatusNetworkList(context.Background(), list)
		var ce *cnitypes.Error
		if !errors.As(err, &ce) || ce.Code != cnitypes.ErrPluginNotAvailable {
			t.Errorf("STATUS with ovn-controller down: %v, want code %d", err, cnitypes.ErrPluginNotAvailable)
		}
		mustOK(t, n.StartOVNController(context.Background()))
		e.eventually(30*time.Second, "STATUS ready again", func() error {
			return n.Kubelet.CNI().GetStatusNetworkList(context.Background(), list)
		})
	})
	t.Run("NB holds exactly the rows of the pods and nodes, whole rows compared", func(t *testing.T) {
		e.converged()
	})
}

// TestVXLAN runs cross-node traffic with --encap-type vxlan.
func TestVXLAN(t *testing.T) {
	e := newEnv(t, "vxlan")
	const ns = "default"
	e.createPod(ns, "v1", "node1")
	e.createPod(ns, "v2", "node2")
	v1pod, v1 := e.running(ns, "v1")
	v2pod, v2 := e.running(ns, "v2")
	e.datapath()
	mustOK(t, ping(v1, v2pod.Status.PodIP))
	mustOK(t, expectName(v1, v2pod.Status.PodIP, "v2"))
	mustOK(t, expectName(v2, v1pod.Status.PodIP, "v1"))
	d, err := transfer(v1, v2pod.Status.PodIP, 4<<20)
	mustOK(t, err)
	t.Logf("4 MiB over VXLAN in %s", d.Round(time.Millisecond))
	mtu := podMTU(t, v1)
	mustOK(t, ping(v1, v2pod.Status.PodIP, "-M", "do", "-s", strconv.Itoa(mtu-28)))
	out, err := e.node("node1").VSCtl("--columns=type", "find", "interface", "type=vxlan")
	if err != nil || !strings.Contains(out, "vxlan") {
		t.Errorf("no vxlan tunnel interface on node1: %v %s", err, out)
	}
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func gatewayOf(t *testing.T, ip string) string {
	t.Helper()
	parts := strings.Split(ip, ".")
	if len(parts) != 4 {
		t.Fatalf("bad IP %q", ip)
	}
	return strings.Join(append(parts[:3], "1"), ".")
}

func podMTU(t *testing.T, sb harness.Sandbox) int {
	t.Helper()
	b, err := exec.Command("ip", "netns", "exec", sb.NetnsName, "cat", "/sys/class/net/eth0/mtu").CombinedOutput()
	if err != nil {
		t.Fatalf("read pod MTU: %v %s", err, b)
	}
	mtu, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return mtu
}
