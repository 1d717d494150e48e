package ovs

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

const schemaPath = "/usr/share/openvswitch/vswitch.ovsschema"

// server is a real ovsdb-server on a unix socket in a short temporary directory.
type server struct {
	dir, sock string
	cmd       *exec.Cmd
	done      chan struct{}
	extra     []string // more ovsdb-server arguments (SSL remotes and files)
}

func newServer(t *testing.T) *server {
	t.Helper()
	for _, bin := range []string{"ovsdb-tool", "ovsdb-server", "ovs-vsctl"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (make deps installs it)", bin)
		}
	}
	if _, err := os.Stat(schemaPath); err != nil {
		t.Fatalf("no OVS schema (make deps installs openvswitch-switch): %v", err)
	}
	dir, err := os.MkdirTemp("/tmp", "ovst") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &server{dir: dir, sock: filepath.Join(dir, "db.sock")}
	if out, err := exec.Command("ovsdb-tool", "create", filepath.Join(dir, "db"), schemaPath).CombinedOutput(); err != nil {
		t.Fatalf("ovsdb-tool create: %v: %s", err, out)
	}
	s.start(t)
	t.Cleanup(s.stop)
	s.vsctl(t, "init")
	return s
}

func (s *server) endpoint() string { return "unix:" + s.sock }

// start runs ovsdb-server in the foreground and waits for its socket.
func (s *server) start(t *testing.T) {
	t.Helper()
	log, err := os.OpenFile(filepath.Join(s.dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	_ = os.Remove(s.sock)
	s.cmd = exec.Command("ovsdb-server", append([]string{filepath.Join(s.dir, "db"), "--remote=punix:" + s.sock,
		"--unixctl=" + filepath.Join(s.dir, "ctl"), "--pidfile=" + filepath.Join(s.dir, "pid")}, s.extra...)...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start ovsdb-server: %v", err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(s.cmd, s.done)
	eventually(t, 5*time.Second, "ovsdb-server socket", func() bool {
		_, err := os.Stat(s.sock)
		return err == nil
	})
}

// stop kills ovsdb-server (like a crash) and waits for it to exit.
func (s *server) stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// vsctl runs ovs-vsctl against the server (no ovs-vswitchd: --no-wait).
func (s *server) vsctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ovs-vsctl", append([]string{"--db=" + s.endpoint(), "--no-wait", "--timeout=10"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ovs-vsctl %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// vsctlStr is ovs-vsctl get of a single string value, unquoted.
func (s *server) vsctlStr(t *testing.T, args ...string) string {
	t.Helper()
	out := s.vsctl(t, append([]string{"get"}, args...)...)
	if uq, err := strconv.Unquote(out); err == nil {
		return uq
	}
	return out
}

// externalIDs reads a row's external_ids with ovs-vsctl.
func (s *server) externalIDs(t *testing.T, table, record string) map[string]string {
	t.Helper()
	out := s.vsctl(t, "--format=json", "--data=json", "--columns=external_ids", "list", table, record)
	var res struct{ Data [][]json.RawMessage }
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Data) != 1 || len(res.Data[0]) != 1 {
		t.Fatalf("parse ovs-vsctl output %s: %v", out, err)
	}
	var m []json.RawMessage // ["map", [[k, v], ...]]
	var pairs [][2]string
	if err := json.Unmarshal(res.Data[0][0], &m); err != nil || len(m) != 2 {
		t.Fatalf("parse external_ids %s: %v", res.Data[0][0], err)
	}
	if err := json.Unmarshal(m[1], &pairs); err != nil {
		t.Fatalf("parse external_ids %s: %v", m[1], err)
	}
	ids := map[string]string{}
	for _, p := range pairs {
		ids[p[0]] = p[1]
	}
	return ids
}

func (s *server) ports(t *testing.T, bridge string) []string {
	t.Helper()
	return strings.Fields(s.vsctl(t, "list-ports", bridge))
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func connect(t *testing.T, s *server) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Connect(ctx, s.endpoint())
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var chassis = ChassisConfig{
	SystemID:     "node-1",
	Hostname:     "node-1.example",
	Remote:       "tcp:10.0.0.1:6642",
	EncapType:    "geneve",
	EncapIP:      "10.0.0.11",
	DatapathType: "netdev",
}

func TestConfigureChassis(t *testing.T) {
	s := newServer(t)
	// Keys set by someone else beforehand: system-id must be kept, foo left alone, ovn-remote replaced.
	s.vsctl(t, "set", "open_vswitch", ".", "external_ids:system-id=existing-id", "external_ids:foo=bar",
		"external_ids:ovn-remote=tcp:192.0.2.1:6642")
	c := connect(t, s)
	ctx := testCtx(t)

	id, err := c.ConfigureChassis(ctx, chassis)
	if err != nil {
		t.Fatalf("ConfigureChassis: %v", err)
	}
	if id != "existing-id" {
		t.Errorf("system-id = %q, want the existing one", id)
	}
	want := map[string]string{
		"system-id":                "existing-id",
		"foo":                      "bar",
		"hostname":                 "node-1.example",
		"ovn-remote":               "tcp:10.0.0.1:6642",
		"ovn-encap-type":           "geneve",
		"ovn-encap-ip":             "10.0.0.11",
		"ovn-bridge":               "br-int",
		"ovn-bridge-datapath-type": "netdev",
	}
	if got := s.externalIDs(t, "open_vswitch", "."); !maps.Equal(got, want) {
		t.Errorf("Open_vSwitch external_ids = %v, want %v", got, want)
	}
	if got := s.vsctl(t, "get", "bridge", "br-int", "fail_mode", "datapath_type"); got != "secure\nnetdev" {
		t.Errorf("br-int fail_mode, datapath_type = %q", got)
	}
	if got := s.vsctlStr(t, "bridge", "br-int", "other_config:disable-in-band"); got != "true" {
		t.Errorf("br-int other_config:disable-in-band = %q", got)
	}
	if got := s.vsctlStr(t, "interface", "br-int", "type"); got != "internal" {
		t.Errorf("br-int interface type = %q, want internal", got)
	}
	if got := s.vsctl(t, "list-br"); got != "br-int" {
		t.Errorf("bridges = %q", got)
	}
	if got, want := s.vsctl(t, "get", "bridge", "br-int", "ports"), "["+s.vsctl(t, "get", "port", "br-int", "_uuid")+"]"; got != want {
		t.Errorf("br-int ports = %s, want its internal port %s", got, want)
	}
	if got, want := s.vsctl(t, "get", "port", "br-int", "interfaces"), "["+s.vsctl(t, "get", "interface", "br-int", "_uuid")+"]"; got != want {
		t.Errorf("port br-int interfaces = %s, want %s", got, want)
	}

	// Same config again: nothing to write.
	brUUID := s.vsctl(t, "get", "bridge", "br-int", "_uuid")
	writes := c.writes.Load()
	if id, err = c.ConfigureChassis(ctx, chassis); err != nil || id != "existing-id" {
		t.Fatalf("second ConfigureChassis = %q, %v", id, err)
	}
	if n := c.writes.Load() - writes; n != 0 {
		t.Errorf("second ConfigureChassis sent %d transactions, want none", n)
	}
	if got := s.vsctl(t, "get", "bridge", "br-int", "_uuid"); got != brUUID {
		t.Errorf("br-int was recreated")
	}

	// A changed setting and a bridge someone else altered are corrected; other keys stay.
	s.vsctl(t, "set", "bridge", "br-int", "fail_mode=standalone")
	eventually(t, 5*time.Second, "cache to see fail_mode", func() bool {
		c2 := chassis
		c2.EncapIP = "10.0.0.12"
		writes := c.writes.Load()
		if _, err := c.ConfigureChassis(ctx, c2); err != nil {
			t.Fatalf("ConfigureChassis: %v", err)
		}
		return c.writes.Load() > writes && s.vsctl(t, "get", "bridge", "br-int", "fail_mode") == "secure"
	})
	want["ovn-encap-ip"] = "10.0.0.12"
	if got := s.externalIDs(t, "open_vswitch", "."); !maps.Equal(got, want) {
		t.Errorf("Open_vSwitch external_ids = %v, want %v", got, want)
	}
}

func TestConfigureChassisNewSystemID(t *testing.T) {
	s := newServer(t)
	c := connect(t, s)
	cfg := chassis
	cfg.Bridge, cfg.DatapathType = "br-test", ""
	id, err := c.ConfigureChassis(testCtx(t), cfg)
	if err != nil || id != "node-1" {
		t.Fatalf("ConfigureChassis = %q, %v; want node-1", id, err)
	}
	if got := s.vsctlStr(t, "open_vswitch", ".", "external_ids:system-id"); got != "node-1" {
		t.Errorf("system-id = %q", got)
	}
	if got := s.vsctlStr(t, "open_vswitch", ".", "external_ids:ovn-bridge"); got != "br-test" {
		t.Errorf("ovn-bridge = %q", got)
	}
	if got := s.vsctl(t, "get", "bridge", "br-test", "fail_mode"); got != "secure" {
		t.Errorf("fail_mode = %q", got)
	}
	if got := s.vsctl(t, "--if-exists", "get", "open_vswitch", ".", "external_ids:ovn-bridge-datapath-type"); got != "" {
		t.Errorf("ovn-bridge-datapath-type set to %q from an empty config", got)
	}
}

// TestConfigureChassisConflict checks the guard against a system-id set between our read and our write.
func TestConfigureChassisConflict(t *testing.T) {
	s := newServer(t)
	c := connect(t, s)
	ctx := testCtx(t)
	id, ops, err := c.chassisOps(ctx, chassis)
	if err != nil || id != "node-1" {
		t.Fatalf("chassisOps = %q, %v", id, err)
	}
	s.vsctl(t, "set", "open_vswitch", ".", "external_ids:system-id=racer")
	var conflict *ovsdb.TimedOut
	if err := c.transact(ctx, "stale write", ops); !errors.As(err, &conflict) {
		t.Fatalf("stale write = %v, want the wait to fail", err)
	}
	if id, err := c.ConfigureChassis(ctx, chassis); err != nil || id != "racer" {
		t.Errorf("ConfigureChassis = %q, %v; want the system-id set meanwhile", id, err)
	}
	if got := s.vsctlStr(t, "open_vswitch", ".", "external_ids:system-id"); got != "racer" {
		t.Errorf("system-id = %q", got)
	}
}

func TestPorts(t *testing.T) {
	s := newServer(t)
	c := connect(t, s)
	ctx := testCtx(t)
	if _, err := c.ConfigureChassis(ctx, chassis); err != nil {
		t.Fatalf("ConfigureChassis: %v", err)
	}
	const gcKey = "dunlin.io/container-id"
	ids1 := map[string]string{"iface-id": "ns_pod1", gcKey: "c1", "attached-mac": "0a:58:0a:00:00:05"}
	spec := PortSpec{Bridge: "br-int", Name: "veth1", ExternalIDs: ids1}
	if err := c.AddPort(ctx, spec); err != nil {
		t.Fatalf("AddPort: %v", err)
	}
	if got := s.ports(t, "br-int"); !slices.Equal(got, []string{"veth1"}) {
		t.Errorf("ports of br-int = %v", got)
	}
	if got := s.externalIDs(t, "interface", "veth1"); !maps.Equal(got, ids1) {
		t.Errorf("veth1 external_ids = %v, want %v", got, ids1)
	}
	if got := s.vsctlStr(t, "interface", "veth1", "type"); got != "" {
		t.Errorf("veth1 type = %q, want system", got)
	}
	p, ok := c.Port("veth1")
	if !ok || p.Name != "veth1" || p.Bridge != "br-int" || !maps.Equal(p.ExternalIDs, ids1) {
		t.Errorf("Port(veth1) = %+v, %v", p, ok)
	}
	if _, ok := c.Port("nope"); ok {
		t.Errorf("Port(nope) found")
	}

	// Idempotent.
	writes := c.writes.Load()
	if err := c.AddPort(ctx, spec); err != nil {
		t.Fatalf("second AddPort: %v", err)
	}
	if n := c.writes.Load() - writes; n != 0 {
		t.Errorf("second AddPort sent %d transactions, want none", n)
	}

	// ovn-controller's keys survive a repeated AddPort.
	s.vsctl(t, "set", "interface", "veth1", "external_ids:ovn-installed=true")
	eventually(t, 5*time.Second, "cache to see ovn-installed", func() bool {
		p, _ := c.Port("veth1")
		return p.ExternalIDs["ovn-installed"] == "true"
	})
	writes = c.writes.Load()
	if err := c.AddPort(ctx, spec); err != nil {
		t.Fatalf("AddPort: %v", err)
	}
	if n := c.writes.Load() - writes; n != 0 {
		t.Errorf("AddPort of an installed port sent %d transactions, want none", n)
	}

	// Different external_ids: updated in place to exactly the spec (ovn-installed goes with the old
	// iface-id).
	ids2 := map[string]string{"iface-id": "ns_pod2", gcKey: "c2"}
	uuid := s.vsctl(t, "get", "interface", "veth1", "_uuid")
	if err := c.AddPort(ctx, PortSpec{Bridge: "br-int", Name: "veth1", ExternalIDs: ids2}); err != nil {
		t.Fatalf("AddPort update: %v", err)
	}
	if got := s.externalIDs(t, "interface", "veth1"); !maps.Equal(got, ids2) {
		t.Errorf("veth1 external_ids = %v, want %v", got, ids2)
	}
	if got := s.vsctl(t, "get", "interface", "veth1", "_uuid"); got != uuid {
		t.Errorf("veth1 was recreated instead of updated")
	}

	// Lookups.
	if err := c.AddPort(ctx, PortSpec{Bridge: "br-int", Name: "veth2", ExternalIDs: map[string]string{"iface-id": "ns_pod2", gcKey: "c3"}}); err != nil {
		t.Fatalf("AddPort veth2: %v", err)
	}
	s.vsctl(t, "add-port", "br-int", "other0", "--", "set", "interface", "other0", "external_ids:iface-id=ns_other")
	names := func(ps []PortInfo) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Name+"@"+p.Bridge)
		}
		return out
	}
	eventually(t, 5*time.Second, "cache to see other0", func() bool { _, ok := c.Port("other0"); return ok })
	if got := names(c.PortsByIfaceID("ns_pod2")); !slices.Equal(got, []string{"veth1@br-int", "veth2@br-int"}) {
		t.Errorf("PortsByIfaceID(ns_pod2) = %v", got)
	}
	if got := names(c.PortsByIfaceID("ns_other")); !slices.Equal(got, []string{"other0@br-int"}) {
		t.Errorf("PortsByIfaceID(ns_other) = %v", got)
	}
	if got := c.PortsByIfaceID("ns_pod1"); len(got) != 0 {
		t.Errorf("PortsByIfaceID(ns_pod1) = %v, want none", got)
	}
	if got := names(c.PortsWithExternalID(gcKey)); !slices.Equal(got, []string{"veth1@br-int", "veth2@br-int"}) {
		t.Errorf("PortsWithExternalID = %v", got)
	}

	// A port on another bridge, or of another type, is replaced in one transaction.
	s.vsctl(t, "add-br", "br-ex")
	eventually(t, 5*time.Second, "cache to see br-ex", func() bool {
		return c.AddPort(ctx, PortSpec{Bridge: "br-ex", Name: "veth2", ExternalIDs: ids2}) == nil
	})
	if got := s.ports(t, "br-ex"); !slices.Equal(got, []string{"veth2"}) {
		t.Errorf("ports of br-ex = %v", got)
	}
	if got := s.ports(t, "br-int"); !slices.Equal(got, []string{"other0", "veth1"}) {
		t.Errorf("ports of br-int = %v", got)
	}
	if p, _ := c.Port("veth2"); p.Bridge != "br-ex" {
		t.Errorf("Port(veth2).Bridge = %q", p.Bridge)
	}
	s.vsctl(t, "set", "interface", "other0", "type=internal")
	// Until the cache sees the new type, AddPort may only update the port in place; repeat it until
	// the port in the database is a system one again.
	eventually(t, 5*time.Second, "other0 replaced by a system port", func() bool {
		if err := c.AddPort(ctx, PortSpec{Bridge: "br-int", Name: "other0"}); err != nil {
			t.Fatalf("AddPort other0: %v", err)
		}
		return s.vsctlStr(t, "interface", "other0", "type") == ""
	})
	if got := s.vsctlStr(t, "interface", "other0", "type"); got != "" {
		t.Errorf("other0 type = %q, want system", got)
	}
	if got := s.externalIDs(t, "interface", "other0"); len(got) != 0 {
		t.Errorf("other0 external_ids = %v, want none", got)
	}

	// Errors carry context.
	if err := c.AddPort(ctx, PortSpec{Bridge: "br-missing", Name: "veth9"}); err == nil || !strings.Contains(err.Error(), "br-missing") {
		t.Errorf("AddPort to a missing bridge: %v", err)
	}

	// A failed operation is an error even though the transaction itself went through: interface
	// names are unique, and bond0 already has an interface named slave1.
	s.vsctl(t, "add-bond", "br-int", "bond0", "slave1", "slave2")
	eventually(t, 5*time.Second, "cache to see bond0", func() bool { _, ok := c.Port("bond0"); return ok })
	err := c.AddPort(ctx, PortSpec{Bridge: "br-int", Name: "slave1"})
	if err == nil || !strings.Contains(err.Error(), "slave1") || !strings.Contains(err.Error(), "constraint violation") {
		t.Errorf("AddPort of a taken interface name = %v, want a constraint violation", err)
	}
	if got := names(c.PortsByIfaceID("x")); got != nil {
		t.Errorf("PortsByIfaceID(x) = %v", got)
	}
	s.vsctl(t, "set", "interface", "slave2", "external_ids:iface-id=bonded")
	eventually(t, 5*time.Second, "cache to see slave2's iface-id", func() bool {
		return slices.Equal(names(c.PortsByIfaceID("bonded")), []string{"bond0@br-int"})
	})
	s.vsctl(t, "del-port", "bond0")

	// Delete, twice.
	for i := 0; i < 2; i++ {
		if err := c.DeletePort(ctx, "veth1"); err != nil {
			t.Fatalf("DeletePort #%d: %v", i+1, err)
		}
	}
	if got := s.ports(t, "br-int"); !slices.Equal(got, []string{"other0"}) {
		t.Errorf("ports of br-int after delete = %v", got)
	}
	if got := s.vsctl(t, "--columns=name", "find", "interface", "name=veth1"); got != "" {
		t.Errorf("interface veth1 not garbage-collected: %s", got)
	}
	if _, ok := c.Port("veth1"); ok {
		t.Errorf("Port(veth1) found after delete")
	}
	if err := c.DeletePort(ctx, "never-existed"); err != nil {
		t.Errorf("DeletePort of a missing port: %v", err)
	}
}

func TestWaitInstalled(t *testing.T) {
	s := newServer(t)
	c := connect(t, s)
	// No periodic re-read: a wait that ends before its (generous) deadline was woken by the cache event.
	c.recheck = time.Hour
	ctx := testCtx(t)
	if _, err := c.ConfigureChassis(ctx, chassis); err != nil {
		t.Fatalf("ConfigureChassis: %v", err)
	}
	for _, name := range []string{"vok", "vslow", "verr", "vdel"} {
		if err := c.AddPort(ctx, PortSpec{Bridge: "br-int", Name: name, ExternalIDs: map[string]string{"iface-id": "ns_" + name}}); err != nil {
			t.Fatalf("AddPort %s: %v", name, err)
		}
	}
	// later runs ovs-vsctl after 200ms (so that the wait has started) and reports when it has finished.
	later := func(args ...string) <-chan struct{} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			time.Sleep(200 * time.Millisecond)
			out, err := exec.Command("ovs-vsctl", append([]string{"--db=" + s.endpoint(), "--no-wait"}, args...)...).CombinedOutput()
			if err != nil {
				t.Errorf("ovs-vsctl %v: %v: %s", args, err, out)
			}
		}()
		return done
	}
	wait := func(name string, timeout time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return c.WaitInstalled(ctx, name)
	}
	// With recheck at an hour, a wait that returns at all was woken by the change's cache event.
	const generous = time.Minute

	t.Run("installed", func(t *testing.T) {
		changed := later("set", "interface", "vok", "external_ids:ovn-installed=true")
		err := wait("vok", generous)
		<-changed
		if err != nil {
			t.Fatalf("WaitInstalled: %v", err)
		}
		if err := wait("vok", generous); err != nil { // already installed
			t.Errorf("WaitInstalled again: %v", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		err := wait("vslow", 300*time.Millisecond)
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "vslow") ||
			!strings.Contains(err.Error(), "ovn-controller") {
			t.Errorf("WaitInstalled = %v, want a deadline error naming the port and ovn-controller", err)
		}
	})
	t.Run("error", func(t *testing.T) {
		changed := later("set", "interface", "verr", `error="boom"`)
		err := wait("verr", generous)
		<-changed
		if err == nil || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "verr") {
			t.Errorf("WaitInstalled = %v, want the interface error", err)
		}
	})
	t.Run("deleted", func(t *testing.T) {
		changed := later("del-port", "vdel")
		err := wait("vdel", generous)
		<-changed
		if err == nil || !strings.Contains(err.Error(), "deleted") || !strings.Contains(err.Error(), "vdel") {
			t.Errorf("WaitInstalled = %v, want a deletion error", err)
		}
	})
	t.Run("created later", func(t *testing.T) {
		added := make(chan error, 1)
		go func() {
			time.Sleep(100 * time.Millisecond)
			added <- c.AddPort(ctx, PortSpec{Bridge: "br-int", Name: "vnew"})
		}()
		defer func() {
			if err := <-added; err != nil {
				t.Errorf("AddPort: %v", err)
			}
		}()
		changed := later("--", "--may-exist", "add-port", "br-int", "vnew", "--", "set", "interface", "vnew", "external_ids:ovn-installed=true")
		err := wait("vnew", generous)
		<-changed
		if err != nil {
			t.Errorf("WaitInstalled: %v", err)
		}
	})
}

func TestConnectWaitsForServer(t *testing.T) {
	s := newServer(t)
	s.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := Connect(ctx, s.endpoint()); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect without a server = %v, want a deadline error", err)
	}
	type result struct {
		c   *Client
		err error
	}
	res := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Connect(ctx, s.endpoint())
		res <- result{c, err}
	}()
	time.Sleep(300 * time.Millisecond)
	s.start(t)
	r := <-res
	if r.err != nil {
		t.Fatalf("Connect: %v", r.err)
	}
	defer r.c.Close()
	if !r.c.Connected() {
		t.Errorf("not connected")
	}
	if _, err := r.c.ConfigureChassis(testCtx(t), chassis); err != nil {
		t.Errorf("ConfigureChassis: %v", err)
	}
}

func TestReconnect(t *testing.T) {
	s := newServer(t)
	c := connect(t, s)
	ctx := testCtx(t)
	if _, err := c.ConfigureChassis(ctx, chassis); err != nil {
		t.Fatalf("ConfigureChassis: %v", err)
	}
	if err := c.AddPort(ctx, PortSpec{Bridge: "br-int", Name: "before"}); err != nil {
		t.Fatalf("AddPort: %v", err)
	}

	s.stop()
	eventually(t, 5*time.Second, "the client to notice the disconnection", func() bool { return !c.Connected() })
	// Reads keep serving the last known state.
	if _, ok := c.Port("before"); !ok {
		t.Errorf("Port(before) lost while disconnected")
	}
	s.start(t)

	start := time.Now()
	deadline := start.Add(10 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.AddPort(actx, PortSpec{Bridge: "br-int", Name: "after", ExternalIDs: map[string]string{"k": "v"}})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("AddPort after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("AddPort succeeded %v after the restart", time.Since(start).Round(time.Millisecond))
	if !c.Connected() {
		t.Errorf("not connected")
	}
	if got := s.ports(t, "br-int"); !slices.Equal(got, []string{"after", "before"}) {
		t.Errorf("ports of br-int = %v", got)
	}
	eventually(t, 5*time.Second, "cache to see the new port", func() bool {
		p, ok := c.Port("after")
		return ok && p.ExternalIDs["k"] == "v"
	})
}
