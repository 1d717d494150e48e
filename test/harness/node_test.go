package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireNodes fails a test that needs network namespaces and a userspace OVS when they are not
// there: `make test` installs them and runs as root, so a missing piece is a broken setup, not a reason
// to pass quietly.
func requireNodes(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("simulated nodes need root (network namespaces, veths, OVS)")
	}
	for _, bin := range []string{"ovs-vswitchd", "ovsdb-server", "ovn-controller", "ovn-northd", "ip", "ethtool", "ping", "nc"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (make deps, or apt-get install openvswitch-switch ovn-central ovn-host iproute2 ethtool iputils-ping netcat-openbsd)", bin)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Fatalf("the userspace datapath needs /dev/net/tun: %v", err)
	}
}

func startTestUnderlay(t *testing.T) *Underlay {
	t.Helper()
	u, err := StartUnderlay(context.Background(), UnderlayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := u.Stop(); err != nil {
			t.Error(err)
		}
	})
	return u
}

func startTestNode(t *testing.T, o NodeOptions) *Node {
	t.Helper()
	start := time.Now()
	n, err := StartNode(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node %s (netns %s, encap %s) up in %s", n.Name, n.Netns, n.EncapIP, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := n.Health(); err != nil {
			t.Errorf("a daemon of %s died during the test:\n%v", n.Name, err)
		}
		if t.Failed() {
			for _, f := range []string{"ovn-controller.log", "ovs-vswitchd.log"} {
				t.Logf("--- %s %s ---\n%s", n.Name, f, fileTail(n.path(f), 15))
			}
		}
		start := time.Now()
		if err := n.Stop(); err != nil {
			t.Error(err)
		}
		t.Logf("node %s stopped in %s", n.Name, time.Since(start).Round(time.Millisecond))
		if err := n.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
		if _, err := os.Stat("/var/run/netns/" + n.Netns); err == nil {
			t.Errorf("netns %s still there after Stop", n.Netns)
		}
	})
	return n
}

// testPod is a pod wired by hand as a CNI would: a netns with eth0, the host end on br-int.
type testPod struct {
	netns  string
	hostIf string
	ip     string
}

func addTestPod(t *testing.T, n *Node, lsp, mac, ip string) testPod {
	t.Helper()
	ctx := context.Background()
	p := testPod{netns: "dlp" + randomHex(3), hostIf: "v" + randomHex(4), ip: ip}
	if err := NewNetns(ctx, p.netns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := DeleteNetns(p.netns); err != nil {
			t.Error(err)
		}
	})
	for _, args := range [][]string{
		{"-n", n.Netns, "link", "add", p.hostIf, "mtu", "1400", "type", "veth", "peer", "name", "eth0", "mtu", "1400", "netns", p.netns},
		{"-n", p.netns, "link", "set", "eth0", "address", mac},
		{"-n", p.netns, "addr", "add", ip + "/24", "dev", "eth0"},
		{"-n", p.netns, "link", "set", "eth0", "up"},
		{"-n", n.Netns, "link", "set", p.hostIf, "up"},
	} {
		if err := runIP(ctx, args...); err != nil {
			t.Fatal(err)
		}
	}
	// The userspace datapath gets packets with partial checksums from a veth otherwise, and TCP hangs.
	if _, err := podExec(ctx, p.netns, "ethtool", "-K", "eth0", "tx", "off"); err != nil {
		t.Fatal(err)
	}
	if _, err := n.VSCtl("add-port", "br-int", p.hostIf, "--", "set", "interface", p.hostIf, "external_ids:iface-id="+lsp); err != nil {
		t.Fatal(err)
	}
	return p
}

func podExec(ctx context.Context, netns, bin string, args ...string) (string, error) {
	out, err := podCmd(ctx, netns, bin, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", bin, strings.Join(args, " "), netns, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// podCmd is `ip netns exec netns bin args...` in its own process group, all of which is killed when
// ctx ends: killing only a shell would leave its children holding the output pipe, and Wait waiting.
func podCmd(ctx context.Context, netns, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns, bin}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// nodeTestTimeout bounds the node tests' waits for OVS and ovn-controller: generous, for a loaded
// machine; a wait that succeeds returns at once.
const nodeTestTimeout = 60 * time.Second

// eventually polls f every 20ms until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := f()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func waitInstalled(t *testing.T, n *Node, iface string) time.Duration {
	t.Helper()
	return eventually(t, nodeTestTimeout, "ovn-installed on "+n.Name+"/"+iface, func() error {
		out, err := n.VSCtl("--if-exists", "get", "interface", iface, "external_ids:ovn-installed")
		if err != nil {
			return err
		}
		if out != `"true"` {
			return fmt.Errorf("external_ids:ovn-installed=%q", out)
		}
		return nil
	})
}

// waitHV waits until every chassis has installed the flows for NB as it is now (ovn-nbctl --wait=hv
// sync), before traffic.
func waitHV(t *testing.T, ovn *OVN) {
	t.Helper()
	if err := ovn.WaitHV(context.Background(), DatapathTimeout); err != nil {
		t.Fatal(err)
	}
}

// pingPods pings 3 times from pod a to b and wants no loss: with the underlay primed, not even the
// first packet may be lost.
func pingPods(t *testing.T, from testPod, to string) {
	t.Helper()
	out, err := podExec(context.Background(), from.netns, "ping", "-c", "3", "-i", "0.2", "-W", "5", to)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping %s lost packets:\n%s", to, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "rtt") {
			t.Logf("ping %s -> %s: %s", from.ip, to, l)
		}
	}
}

// tcpTransfer sends size random bytes from pod a to a listener in pod b with netcat and checks they
// all arrive.
func tcpTransfer(t *testing.T, a, b testPod, port, size int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	recv := podCmd(ctx, b.netns, "sh", "-c", fmt.Sprintf("nc -l %d </dev/null | wc -c", port))
	var recvOut bytes.Buffer
	recv.Stdout, recv.Stderr = &recvOut, &recvOut
	if err := recv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = recv.Wait()
	}()

	start := time.Now()
	send := fmt.Sprintf("head -c %d /dev/urandom | nc -N -w 10 %s %d", size, b.ip, port)
	var err error
	for {
		// Until the listener is up the connection is refused and nothing is sent.
		if _, err = podExec(ctx, a.netns, "sh", "-c", send); err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := recv.Wait(); err != nil {
		t.Fatalf("receiver: %v: %s", err, recvOut.String())
	}
	elapsed := time.Since(start)
	got, err := strconv.Atoi(strings.TrimSpace(recvOut.String()))
	if err != nil || got != size {
		t.Fatalf("received %q bytes, want %d", strings.TrimSpace(recvOut.String()), size)
	}
	t.Logf("TCP %d bytes %s -> %s in %s", size, a.ip, b.ip, elapsed.Round(time.Millisecond))
}

// assertTunnelled checks that node n's datapath pushed a tunnel header of the given type.
func assertTunnelled(t *testing.T, n *Node, encap string) {
	t.Helper()
	out, err := n.AppCtlVSwitchd("dpctl/dump-flows")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "tnl_push") && strings.Contains(l, encap+"(") {
			return
		}
	}
	t.Fatalf("no %s tnl_push in the datapath flows of %s:\n%s", encap, n.Name, out)
}

func TestNodes(t *testing.T) {
	requireNodes(t)
	testStart := time.Now()
	t.Cleanup(func() { t.Logf("TestNodes total %s", time.Since(testStart).Round(time.Millisecond)) })
	ctx := context.Background()

	start := time.Now()
	ovn, err := StartOVN(ctx, OVNOptions{Dir: shortDir(t), WithSB: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ovn.Stop(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("OVN (NB, SB, northd) ready in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	u := startTestUnderlay(t)
	t.Logf("underlay %s ready in %s", u.Netns, time.Since(start).Round(time.Millisecond))

	chassis := &ChassisOptions{SBAddr: ovn.SBAddr, EncapType: "geneve"}
	a := startTestNode(t, NodeOptions{Name: "node-a", Index: 0, Dir: shortDir(t), Underlay: u, Chassis: chassis})
	b := startTestNode(t, NodeOptions{Name: "node-b", Index: 1, Dir: shortDir(t), Underlay: u, Chassis: chassis})

	start = time.Now()
	for _, n := range []*Node{a, b} {
		if err := n.WaitChassis(ctx, ovn, n.Name); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("both chassis in SB after %s more", time.Since(start).Round(time.Millisecond))
	if err := a.PrimeUnderlay(ctx, b.EncapIP); err != nil {
		t.Fatal(err)
	}
	if err := b.PrimeUnderlay(ctx, a.EncapIP); err != nil {
		t.Fatal(err)
	}

	// A second node on an occupied index is refused before it creates anything.
	if n, err := StartNode(ctx, NodeOptions{Name: "dup", Index: 1, Dir: shortDir(t), Underlay: u}); err == nil {
		n.Stop()
		t.Fatal("StartNode accepted index 1 twice")
	}

	// The datapath end to end, without Dunlin: one logical switch, a port on each node.
	if _, err := ovn.NBCtl(
		"ls-add", "ls",
		"--", "lsp-add", "ls", "p1", "--", "lsp-set-addresses", "p1", "0a:58:0a:00:00:0b 10.0.0.11",
		"--", "lsp-add", "ls", "p2", "--", "lsp-set-addresses", "p2", "0a:58:0a:00:00:0c 10.0.0.12",
	); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	podA := addTestPod(t, a, "p1", "0a:58:0a:00:00:0b", "10.0.0.11")
	podB := addTestPod(t, b, "p2", "0a:58:0a:00:00:0c", "10.0.0.12")
	waitInstalled(t, a, podA.hostIf)
	waitInstalled(t, b, podB.hostIf)
	t.Logf("both pod ports ovn-installed %s after plugging", time.Since(start).Round(time.Millisecond))
	if out, err := a.OFCtl("dump-flows", "br-int"); err != nil || !strings.Contains(out, "table=") {
		t.Errorf("ovs-ofctl dump-flows br-int on %s: %.200q, %v", a.Name, out, err)
	}
	for _, lsp := range []string{"p1", "p2"} {
		if out, err := ovn.NBCtl("lsp-get-up", lsp); err != nil || out != "up" {
			t.Errorf("lsp-get-up %s = %q, %v", lsp, out, err)
		}
	}
	// ovn-installed is the local port's flows; the peer's (and the tunnel to it) come with --wait=hv.
	waitHV(t, ovn)

	t.Run("geneve", func(t *testing.T) {
		pingPods(t, podA, podB.ip)
		pingPods(t, podB, podA.ip)
		assertTunnelled(t, a, "geneve")
		tcpTransfer(t, podA, podB, 5001, 2<<20)
	})

	t.Run("vxlan", func(t *testing.T) {
		start := time.Now()
		for _, n := range []*Node{a, b} {
			if _, err := n.VSCtl("set", "Open_vSwitch", ".", "external_ids:ovn-encap-type=vxlan"); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range []*Node{a, b} {
			eventually(t, nodeTestTimeout, "vxlan tunnel port on "+n.Name, func() error {
				out, err := n.VSCtl("--bare", "--columns=name", "find", "interface", "type=vxlan")
				if err != nil {
					return err
				}
				if out == "" {
					return fmt.Errorf("none yet")
				}
				if out, _ := n.VSCtl("--bare", "--columns=name", "find", "interface", "type=geneve"); out != "" {
					return fmt.Errorf("geneve port %s still there", out)
				}
				return nil
			})
		}
		t.Logf("switched to vxlan tunnels in %s", time.Since(start).Round(time.Millisecond))
		waitHV(t, ovn)
		pingPods(t, podA, podB.ip)
		pingPods(t, podB, podA.ip)
		assertTunnelled(t, a, "vxlan")
		tcpTransfer(t, podA, podB, 5002, 2<<20)
	})

	t.Run("restart ovn-controller", func(t *testing.T) {
		if err := a.StopOVNController(); err != nil {
			t.Fatal(err)
		}
		if a.OVNControllerRunning() {
			t.Fatal("ovn-controller still running after StopOVNController")
		}
		// The flows stay: traffic still flows with ovn-controller down.
		pingPods(t, podA, podB.ip)
		start := time.Now()
		if err := a.StartOVNController(ctx); err != nil {
			t.Fatal(err)
		}
		if err := a.WaitChassis(ctx, ovn, a.Name); err != nil {
			t.Fatal(err)
		}
		eventually(t, nodeTestTimeout, "ovn-controller connected to SB", func() error {
			out, err := a.AppCtlOVNController("connection-status")
			if err != nil || out != "connected" {
				return fmt.Errorf("connection-status = %q, %v", out, err)
			}
			return nil
		})
		t.Logf("ovn-controller restarted and connected in %s", time.Since(start).Round(time.Millisecond))
		waitHV(t, ovn)
		pingPods(t, podA, podB.ip)
	})
}

// A namespace whose owner died is deleted by the next StartUnderlay; a live owner's is kept.
func TestNodeNetnsSweep(t *testing.T) {
	requireNodes(t)
	ctx := context.Background()
	stale, live := "dlp"+randomHex(3), "dlp"+randomHex(3)
	for _, ns := range []string{stale, live} {
		if err := NewNetns(ctx, ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = DeleteNetns(ns) })
	}
	// pid_max is at most 2^22, so this owner cannot exist.
	if err := os.WriteFile(filepath.Join(netnsMarkerDir(), stale), []byte("99999999 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	u := startTestUnderlay(t)
	for ns, want := range map[string]bool{stale: false, live: true, u.Netns: true} {
		_, err := os.Stat("/var/run/netns/" + ns)
		if got := err == nil; got != want {
			t.Errorf("netns %s exists = %v, want %v", ns, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(netnsMarkerDir(), stale)); err == nil {
		t.Errorf("marker of %s not removed", stale)
	}
}

// A dead ovs-vswitchd is reported by name, with the assertion its log names, not left to look like a
// connectivity failure.
func TestNodeCrashIsNamed(t *testing.T) {
	requireNodes(t)
	u := startTestUnderlay(t)
	n, err := StartNode(context.Background(), NodeOptions{Name: "crash", Index: 0, Dir: shortDir(t), Underlay: u})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	if err := n.Health(); err != nil {
		t.Fatalf("healthy node: %v", err)
	}
	// What OVS 3.1 logs before it aborts in userspace conntrack (shared/notes/real-ovn-on-one-machine.md).
	line := "2026-01-01T00:00:00.000Z|00042|util(pmd-c00/id:8)|EMER|lib/conntrack.c:1197: assertion conn->conn_type == CT_CONN_TYPE_DEFAULT failed in conn_update_state()\n"
	f, err := os.OpenFile(n.path("ovs-vswitchd.log"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString(line)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(n.vswitchd.cmd.Process.Pid, syscall.SIGABRT); err != nil {
		t.Fatal(err)
	}
	<-n.vswitchd.done
	err = n.Health()
	if err == nil {
		t.Fatal("Health is nil with ovs-vswitchd dead")
	}
	for _, want := range []string{"crash ovs-vswitchd DIED", "lib/conntrack.c:1197: assertion", "userspace conntrack crash"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Health does not say %q:\n%v", want, err)
		}
	}
	t.Logf("%s", strings.SplitN(err.Error(), "\n", 2)[0])
	// Stopping on purpose is not a death.
	if err := n.StopOVNController(); err != nil {
		t.Fatal(err)
	}
	if err := n.Health(); err == nil || strings.Contains(err.Error(), "ovn-controller DIED") {
		t.Errorf("after StopOVNController: %v", err)
	}
}
