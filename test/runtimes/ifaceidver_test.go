package runtimes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// TestIfaceIDVer records what the installed ovn-controller does with iface-id-ver, the pod UID that
// dunlin-controller puts in a pod port's options and dunlin-node in its OVS interface's external_ids.
// Dunlin's upgrade story depends on these answers (an old dunlin-node does not set the key on its
// interfaces), so the test fails if a packaged OVN changes them.
//
// Each negative case is judged against a control port added after it: ovn-controller handles the OVS
// database changes in order, so once the control port is installed the earlier port has been
// considered, and no sleep is needed.
func TestIfaceIDVer(t *testing.T) {
	ctx := context.Background()
	dir := shortTempDir(t)
	ovn, err := harness.StartOVN(ctx, harness.OVNOptions{Dir: filepath.Join(dir, "ovn"), WithSB: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logErr(t, ovn.Stop()) })
	ul, err := harness.StartUnderlay(ctx, harness.UnderlayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logErr(t, ul.Stop()) })
	n, err := harness.StartNode(ctx, harness.NodeOptions{Name: "n1", Dir: filepath.Join(dir, "n1"), Underlay: ul,
		Chassis: &harness.ChassisOptions{SBAddr: ovn.SBAddr}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logErr(t, n.Stop()) })
	if err := n.WaitChassis(ctx, ovn, "n1"); err != nil {
		t.Fatal(err)
	}
	mustNB(t, ovn, "ls-add", "sw")

	lsps := 0
	// lsp creates a logical port with iface-id-ver ver (none when empty).
	lsp := func(ver string) string {
		lsps++
		name := fmt.Sprintf("p%d", lsps)
		args := []string{"lsp-add", "sw", name, "--", "lsp-set-addresses", name, fmt.Sprintf("0a:58:0a:00:00:%02x 10.0.0.%d", lsps+2, lsps+2)}
		if ver != "" {
			args = append(args, "--", "set", "Logical_Switch_Port", name, "options:"+conventions.IfaceIDVer+"="+ver)
		}
		mustNB(t, ovn, args...)
		return name
	}
	// iface adds an OVS interface (a veth end) bound to lsp, with iface-id-ver ver (none when empty).
	iface := func(lsp, ver string) string {
		name := "v" + lsp
		if out, err := n.Exec(ctx, "ip", "link", "add", name, "type", "veth", "peer", "name", name+"p"); err != nil {
			t.Fatal(out, err)
		}
		args := []string{"add-port", "br-int", name, "--", "set", "interface", name, "external_ids:iface-id=" + lsp}
		if ver != "" {
			args = append(args, "external_ids:"+conventions.IfaceIDVer+"="+ver)
		}
		mustVS(t, n, args...)
		return name
	}
	installed := func(ifname string) bool {
		out, err := n.VSCtl("--if-exists", "get", "interface", ifname, "external_ids:ovn-installed")
		return err == nil && out == `"true"`
	}
	boundHere := func(lsp string) bool {
		out, err := ovn.SBCtl("--bare", "--columns=chassis", "find", "Port_Binding", "logical_port="+lsp)
		if err != nil || out == "" {
			return false
		}
		ch, err := ovn.SBCtl("--bare", "--columns=_uuid", "find", "Chassis", "name=n1")
		return err == nil && out == ch
	}
	waitBound := func(what, lsp, ifname string) {
		t.Helper()
		err := harness.Eventually(30*time.Second, func() error {
			if !installed(ifname) || !boundHere(lsp) {
				return fmt.Errorf("%s: not bound (ovn-installed %v, Port_Binding chassis n1 %v)", lsp, installed(ifname), boundHere(lsp))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	// control adds a port every ovn-controller binds, and waits for it.
	control := func() {
		t.Helper()
		c := lsp("")
		waitBound("control port", c, iface(c, ""))
	}
	report := func(what, lsp, ifname string) bool {
		ok := installed(ifname) && boundHere(lsp)
		t.Logf("%s: bound=%v", what, ok)
		return ok
	}
	setIfaceVer := func(ifname, ver string) {
		mustVS(t, n, "set", "interface", ifname, "external_ids:"+conventions.IfaceIDVer+"="+ver)
	}
	// setPortVer sets the LSP's iface-id-ver and waits until every chassis has seen it.
	setPortVer := func(lsp, ver string) {
		mustNB(t, ovn, "set", "Logical_Switch_Port", lsp, "options:"+conventions.IfaceIDVer+"="+ver)
		mustNB(t, ovn, "--wait=hv", "sync")
	}
	// boundPort makes a port without iface-id-ver on either side and waits until it is bound.
	boundPort := func(what string) (port, ifname string) {
		port = lsp("")
		ifname = iface(port, "")
		waitBound(what, port, ifname)
		return port, ifname
	}

	// (a) same value on both sides.
	a := lsp("uid-a")
	waitBound("(a) LSP and interface with the same iface-id-ver", a, iface(a, "uid-a"))

	// (b) different values, then (b') the interface corrected.
	b := lsp("uid-b")
	bIf := iface(b, "uid-old")
	// (c) the LSP has the key, the interface does not (an old dunlin-node, a new controller).
	c := lsp("uid-c")
	cIf := iface(c, "")
	// (d) the interface has the key, the LSP does not (a new dunlin-node, an old controller).
	d := lsp("")
	dIf := iface(d, "uid-d")
	control()
	if report("(b) different iface-id-ver", b, bIf) {
		t.Errorf("(b) ovn-controller bound %s although the interface's iface-id-ver differs from the port's", b)
	}
	if report("(c) LSP iface-id-ver, interface without the key", c, cIf) {
		t.Errorf("(c) ovn-controller bound %s although the interface lacks iface-id-ver", c)
	}
	waitBound("(d) interface iface-id-ver, LSP without the option", d, dIf)
	setIfaceVer(bIf, "uid-b")
	waitBound("(b') interface corrected to the port's iface-id-ver", b, bIf)

	// (e) a port bound without any iface-id-ver (a pod plumbed by an old dunlin-node) whose LSP then
	// gains the option (the new controller's first sync after an upgrade).
	e, eIf := boundPort("(e) before the option")
	setPortVer(e, "uid-e")
	control()
	t.Logf("(e) bound port, LSP gains iface-id-ver the interface lacks: bound=%v, ovn-installed=%v", boundHere(e), installed(eIf))
	if boundHere(e) {
		t.Errorf("(e) ovn-controller kept %s bound after its LSP gained an iface-id-ver its interface lacks", e)
	}
	// ... and dunlin-node setting the key on the interface (an agent upgraded later) brings it back.
	setIfaceVer(eIf, "uid-e")
	waitBound("(e') interface gains the port's iface-id-ver", e, eIf)

	// (f) what an upgraded dunlin-node does on start: the key added to the interface of a port bound
	// without any iface-id-ver keeps it bound.
	f, fIf := boundPort("(f) before the key")
	setIfaceVer(fIf, "uid-f")
	control()
	if !report("(f) bound port, interface gains iface-id-ver, LSP without the option", f, fIf) {
		t.Errorf("(f) ovn-controller released %s when its interface gained iface-id-ver", f)
	}
	setPortVer(f, "uid-f")
	control()
	if !report("(f') then the LSP gains the same iface-id-ver", f, fIf) {
		t.Errorf("(f') ovn-controller released %s when its LSP gained the interface's iface-id-ver", f)
	}
}

func mustNB(t *testing.T, ovn *harness.OVN, args ...string) {
	t.Helper()
	if _, err := ovn.NBCtl(args...); err != nil {
		t.Fatal(err)
	}
}

func mustVS(t *testing.T, n *harness.Node, args ...string) {
	t.Helper()
	if _, err := n.VSCtl(args...); err != nil {
		t.Fatal(err)
	}
}

func logErr(t *testing.T, err error) {
	if err != nil {
		t.Log(err)
	}
}

// shortTempDir is a fresh directory under /tmp whose path is short enough for unix sockets.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "dlrt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}
