package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Simulated nodes: each node is a network namespace with its own Open vSwitch (userspace "netdev"
// datapath, as there is no OVS kernel module) and ovn-controller, and the nodes reach each other
// through an underlay, a Linux bridge in a namespace of its own.
//
// The node's underlay veth sits in a netdev bridge br-underlay and the encap IP on the br-underlay
// device, because userspace tunnels route and resolve neighbours through OVS bridges only.

const (
	vswitchSchema = "/usr/share/openvswitch/vswitch.ovsschema"

	// UnderlaySubnet is the underlay's subnet; node i has encap IP 172.30.0.(10+i).
	UnderlaySubnet = "172.30.0.0/24"
	underlayPrefix = "172.30.0."
	underlayBridge = "br0"
	maxNodeIndex   = 244

	// UnderlayIf is the OVS bridge (and device) in each node holding the encap IP.
	UnderlayIf = "br-underlay"
	// GatewayIf is the bridge dunlin-node makes of a gateway node's uplink (nodeagent.GatewayBridge).
	GatewayIf = "br-ex"
	// OutsideIP is the outside namespace's address on the underlay, the gateway nodes' default next hop.
	OutsideIP = underlayPrefix + "1"
	// NodeUplink is the node's end of its underlay veth: a port of br-underlay, or on a gateway node
	// the plain uplink holding the node IP and the default route, which dunlin-node moves into br-ex.
	NodeUplink = nodeUplink
	// nodeUplink is the node's end of its underlay veth, a port of br-underlay.
	nodeUplink = "ul0"

	nodeReadyTimeout = 20 * time.Second
	chassisTimeout   = 30 * time.Second

	// The longest unix socket we cause to exist in a node's directory.
	longestNodeSocket = "/ovn-controller.4194304.ctl"
)

// NodeOptions configures StartNode.
type NodeOptions struct {
	Name     string // node name; also the chassis system-id and hostname when Chassis is set
	Index    int    // 0, 1, ...: the encap IP is 172.30.0.(10+Index)
	Dir      string // short directory for sockets, databases, pidfiles and logs
	Underlay *Underlay
	// Chassis, when non-nil, makes the harness write the Open_vSwitch external_ids ovn-controller needs
	// and create br-int. When nil that is left to the product's node agent.
	Chassis *ChassisOptions
	// Gateway makes the node's uplink a plain veth holding the node IP and a default route via
	// OutsideIP, as a real host's NIC, for dunlin-node to move into br-ex (which then holds the encap
	// IP). Without it the uplink is a port of the harness's own br-underlay.
	Gateway bool
}

// ChassisOptions are what the harness writes into Open_vSwitch external_ids for ovn-controller.
type ChassisOptions struct {
	SBAddr    string // ovn-remote
	EncapType string // "geneve" (default) or "vxlan"
}

// Node is a simulated Kubernetes node: a network namespace with ovsdb-server, ovs-vswitchd (netdev
// datapath) and ovn-controller, attached to an underlay.
type Node struct {
	Name       string
	Netns      string // ip netns name; ovs-vswitchd and ovn-controller run inside it
	Dir        string
	OVSDB      string // "unix:<Dir>/db.sock", what the node agent gets as --ovs-db
	RunDir     string // OVS_RUNDIR and OVN_RUNDIR of the node's daemons (= Dir)
	EncapIP    string // 172.30.0.x, on device UnderlayIf inside Netns
	UnderlayIf string // "br-underlay", or on a gateway node "br-ex" (once dunlin-node made it)
	Gateway    bool

	index    int
	underlay *Underlay
	ulPeer   string   // the veth end in the underlay namespace
	env      []string // OVS_RUNDIR and friends

	mu         sync.Mutex
	ovsdb      *process
	vswitchd   *process
	controller *process
	stopped    bool
}

// StartNode brings a node up: its namespace, ovsdb-server, ovs-vswitchd, the underlay link, with
// o.Chassis the chassis configuration and br-int, and ovn-controller. It returns once ovs-vswitchd has
// configured br-underlay and ovn-controller answers on its control socket; use WaitChassis to wait
// for the chassis to register in SB.
func StartNode(ctx context.Context, o NodeOptions) (n *Node, err error) {
	switch {
	case o.Name == "":
		return nil, errors.New("start node: NodeOptions.Name is required")
	case o.Dir == "":
		return nil, fmt.Errorf("start node %s: NodeOptions.Dir is required", o.Name)
	case o.Underlay == nil:
		return nil, fmt.Errorf("start node %s: NodeOptions.Underlay is required", o.Name)
	case o.Index < 0 || o.Index > maxNodeIndex:
		return nil, fmt.Errorf("start node %s: Index %d out of range 0-%d", o.Name, o.Index, maxNodeIndex)
	}
	if o.Chassis != nil && o.Chassis.SBAddr == "" {
		return nil, fmt.Errorf("start node %s: ChassisOptions.SBAddr is required", o.Name)
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("start node %s: %w", o.Name, err)
	}
	if len(dir)+len(longestNodeSocket) > maxUnixPath {
		return nil, fmt.Errorf("start node %s: directory %s too long for unix socket paths", o.Name, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start node %s: %w", o.Name, err)
	}
	if err := o.Underlay.claim(o.Index, o.Name); err != nil {
		return nil, fmt.Errorf("start node %s: %w", o.Name, err)
	}
	suffix := randomHex(3)
	n = &Node{
		Name:       o.Name,
		Netns:      "dl" + suffix + "-" + netnsSafe(o.Name, 6),
		Dir:        dir,
		OVSDB:      "unix:" + filepath.Join(dir, "db.sock"),
		RunDir:     dir,
		EncapIP:    NodeIP(o.Index),
		UnderlayIf: UnderlayIf,
		Gateway:    o.Gateway,
		index:      o.Index,
		underlay:   o.Underlay,
		ulPeer:     "u" + suffix,
		env: []string{
			"OVS_RUNDIR=" + dir, "OVN_RUNDIR=" + dir,
			"OVS_LOGDIR=" + dir, "OVN_LOGDIR=" + dir,
			"OVS_DBDIR=" + dir, "OVN_DBDIR=" + dir,
		},
	}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("start node %s: %w", o.Name, err), n.Stop())
			n = nil
		}
	}()

	if err := newOwnedNetns(ctx, n.Netns); err != nil {
		return n, err
	}
	if err := n.startOVS(ctx); err != nil {
		return n, err
	}
	if o.Gateway {
		n.UnderlayIf = GatewayIf
		if err := n.attachUplink(ctx); err != nil {
			return n, err
		}
	} else if err := n.attachUnderlay(ctx); err != nil {
		return n, err
	}
	if o.Chassis != nil {
		if err := n.configureChassis(o.Chassis); err != nil {
			return n, err
		}
	}
	if err := n.StartOVNController(ctx); err != nil {
		return n, err
	}
	return n, nil
}

// netnsSafe keeps up to limit characters of s that are safe and readable in a netns name.
func netnsSafe(s string, limit int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if b.Len() == limit {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	if b.Len() == 0 {
		return "node"
	}
	return b.String()
}

func (n *Node) path(name string) string { return filepath.Join(n.Dir, name) }

// startOVS creates a fresh vswitch database and starts ovsdb-server (outside the namespace: it only
// serves a unix socket) and ovs-vswitchd (inside, so its ports live in the node's namespace).
func (n *Node) startOVS(ctx context.Context) error {
	db := n.path("conf.db")
	// Fresh database; stale sockets would make the readiness checks pass too early.
	for _, f := range []string{db, n.path("db.sock"), n.path("ovs-vswitchd.pid"), n.path("ovn-controller.pid")} {
		os.Remove(f)
	}
	if out, err := exec.CommandContext(ctx, "ovsdb-tool", "create", db, vswitchSchema).CombinedOutput(); err != nil {
		return fmt.Errorf("ovsdb-tool create conf.db: %w: %s", err, bytes.TrimSpace(out))
	}
	var err error
	n.ovsdb, err = startProcess(n.Name+" ovsdb-server", n.path("ovsdb-server.log"), n.env, "ovsdb-server",
		db,
		"--remote=punix:"+n.path("db.sock"),
		"--pidfile="+n.path("ovsdb-server.pid"),
		"--log-file="+n.path("ovsdb-server.log"),
		"-vconsole:off",
	)
	if err != nil {
		return err
	}
	err = waitReady(ctx, n.ovsdb, nodeReadyTimeout, func(ctx context.Context) error {
		_, err := n.vsctl(ctx, "--no-wait", "init")
		return err
	})
	if err != nil {
		return err
	}

	n.vswitchd, err = n.startInNetns(n.Name+" ovs-vswitchd", n.path("ovs-vswitchd.log"), "ovs-vswitchd",
		n.OVSDB,
		"--pidfile="+n.path("ovs-vswitchd.pid"),
		"--log-file="+n.path("ovs-vswitchd.log"),
		"-vconsole:off",
	)
	if err != nil {
		return err
	}
	return waitReady(ctx, n.vswitchd, nodeReadyTimeout, func(ctx context.Context) error {
		_, err := n.appctl(ctx, "ovs-appctl", "ovs-vswitchd", "version")
		return err
	})
}

// attachUnderlay connects the node to the underlay bridge with a veth whose node end is a port of the
// netdev bridge br-underlay, and puts the encap IP on the br-underlay device.
func (n *Node) attachUnderlay(ctx context.Context) error {
	mtu := strconv.Itoa(n.underlay.MTU)
	if err := n.underlay.plug(ctx, n.Netns, nodeUplink, n.ulPeer); err != nil {
		return err
	}
	// Without --no-wait, ovs-vsctl returns once ovs-vswitchd has created the br-underlay device.
	_, err := n.vsctl(ctx,
		"add-br", UnderlayIf, "--", "set", "bridge", UnderlayIf, "datapath_type=netdev",
		"--", "add-port", UnderlayIf, nodeUplink,
		"--", "set", "interface", UnderlayIf, "mtu_request="+mtu)
	if err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", n.Netns, "addr", "add", n.EncapIP + "/24", "dev", UnderlayIf},
		{"-n", n.Netns, "link", "set", UnderlayIf, "up"},
	} {
		if err := runIP(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// attachUplink connects a gateway node to the underlay bridge with a veth holding the node IP and the
// default route via OutsideIP, as a host's NIC before dunlin-node moves it into br-ex.
func (n *Node) attachUplink(ctx context.Context) error {
	if err := n.underlay.plug(ctx, n.Netns, nodeUplink, n.ulPeer); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", n.Netns, "addr", "add", n.EncapIP + "/24", "dev", nodeUplink},
		{"-n", n.Netns, "route", "add", "default", "via", OutsideIP, "dev", nodeUplink},
	} {
		if err := runIP(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// configureChassis writes what ovn-controller reads from Open_vSwitch and creates br-int, as a node
// agent would.
func (n *Node) configureChassis(c *ChassisOptions) error {
	encap := c.EncapType
	if encap == "" {
		encap = "geneve"
	}
	_, err := n.VSCtl(
		"set", "Open_vSwitch", ".",
		"external_ids:system-id="+n.Name,
		"external_ids:hostname="+n.Name,
		"external_ids:ovn-remote="+c.SBAddr,
		"external_ids:ovn-encap-type="+encap,
		"external_ids:ovn-encap-ip="+n.EncapIP,
		"external_ids:ovn-bridge=br-int",
		"external_ids:ovn-bridge-datapath-type=netdev",
		"--", "--may-exist", "add-br", "br-int",
		"--", "set", "bridge", "br-int", "datapath_type=netdev", "fail-mode=secure", "other-config:disable-in-band=true",
	)
	if err != nil {
		return fmt.Errorf("configure chassis: %w", err)
	}
	return nil
}

// StartOVNController starts ovn-controller in the node's namespace (again, after StopOVNController)
// and returns once it answers on its control socket. It does not wait for SB; see WaitChassis.
func (n *Node) StartOVNController(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return fmt.Errorf("start ovn-controller on %s: node stopped", n.Name)
	}
	if n.controller != nil && !n.controller.exited() {
		return fmt.Errorf("start ovn-controller on %s: already running", n.Name)
	}
	// A pidfile left by a killed ovn-controller would point ovn-appctl at a dead socket.
	os.Remove(n.path("ovn-controller.pid"))
	p, err := n.startInNetns(n.Name+" ovn-controller", n.path("ovn-controller.log"), "ovn-controller",
		n.OVSDB,
		"--pidfile="+n.path("ovn-controller.pid"),
		"--log-file="+n.path("ovn-controller.log"),
		"-vconsole:off",
	)
	if err != nil {
		return fmt.Errorf("start ovn-controller on %s: %w", n.Name, err)
	}
	n.controller = p
	// `ip netns exec` execs, so the child's pid is ovn-controller's and names its control socket.
	ctl := n.path("ovn-controller." + strconv.Itoa(p.cmd.Process.Pid) + ".ctl")
	err = waitReady(ctx, p, nodeReadyTimeout, func(ctx context.Context) error {
		if _, err := os.Stat(ctl); err != nil {
			return err
		}
		_, err := n.appctl(ctx, "ovn-appctl", "ovn-controller", "version")
		return err
	})
	if err != nil {
		return errors.Join(fmt.Errorf("start ovn-controller on %s: %w", n.Name, err), p.Stop())
	}
	return nil
}

// StopOVNController stops ovn-controller with SIGTERM, which (unlike `ovn-appctl exit`) leaves the
// chassis, its port bindings and the OpenFlow flows in place, as a crash or restart does.
func (n *Node) StopOVNController() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.controller.Stop(); err != nil {
		return fmt.Errorf("stop ovn-controller on %s: %w", n.Name, err)
	}
	return nil
}

// OVNControllerRunning reports whether ovn-controller is running.
func (n *Node) OVNControllerRunning() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.controller != nil && !n.controller.exited()
}

// VSCtl runs `ovs-vsctl --db=<OVSDB> --timeout=10 args...` and returns its trimmed stdout.
func (n *Node) VSCtl(args ...string) (string, error) {
	return n.vsctl(context.Background(), args...)
}

func (n *Node) vsctl(ctx context.Context, args ...string) (string, error) {
	return n.run(ctx, "ovs-vsctl", append([]string{"--db=" + n.OVSDB, "--timeout=10"}, args...)...)
}

// AppCtlOVNController runs `ovn-appctl -t ovn-controller args...` with OVN_RUNDIR=RunDir.
func (n *Node) AppCtlOVNController(args ...string) (string, error) {
	return n.appctl(context.Background(), "ovn-appctl", "ovn-controller", args...)
}

// AppCtlVSwitchd runs `ovs-appctl -t ovs-vswitchd args...` with OVS_RUNDIR=RunDir, e.g.
// "dpctl/dump-flows", "tnl/neigh/show", "ovs/route/show".
func (n *Node) AppCtlVSwitchd(args ...string) (string, error) {
	return n.appctl(context.Background(), "ovs-appctl", "ovs-vswitchd", args...)
}

// OFCtl runs `ovs-ofctl args...` (e.g. "dump-flows", "br-int") against the node's ovs-vswitchd.
func (n *Node) OFCtl(args ...string) (string, error) {
	return n.run(context.Background(), "ovs-ofctl", args...)
}

func (n *Node) appctl(ctx context.Context, tool, target string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return n.run(ctx, tool, append([]string{"-t", target}, args...)...)
}

// run runs an OVS/OVN CLI with the node's OVS_RUNDIR/OVN_RUNDIR and returns its trimmed stdout.
func (n *Node) run(ctx context.Context, tool string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, tool, args...)
	cmd.Env = append(os.Environ(), n.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s on %s: %w: %s", tool, strings.Join(args, " "), n.Name, err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Exec runs `ip netns exec <Netns> bin args...` and returns its combined output; a failure's error
// includes the output.
func (n *Node) Exec(ctx context.Context, bin string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Netns, bin}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w: %s", bin, strings.Join(args, " "), n.Name, err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// StartProcess runs bin inside the node's namespace as a foreground child, like StartProcess.
// env is added to the harness's environment (not to the node's OVS_RUNDIR: pass it if wanted).
func (n *Node) StartProcess(name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	p, err := startProcess(name, logPath, env, "ip", append([]string{"netns", "exec", n.Netns, bin}, args...)...)
	if err != nil {
		return nil, err
	}
	return &Process{p: p}, nil
}

// Env returns OVS_RUNDIR, OVN_RUNDIR and friends for this node, to pass to StartProcess.
func (n *Node) Env() []string { return append([]string(nil), n.env...) }

func (n *Node) startInNetns(name, logPath, bin string, args ...string) (*process, error) {
	return startProcess(name, logPath, n.env, "ip", append([]string{"netns", "exec", n.Netns, bin}, args...)...)
}

// WaitChassis waits until SB has a Chassis row named systemID (with an Encap), i.e. ovn-controller
// has registered. It fails early if ovn-controller exits.
func (n *Node) WaitChassis(ctx context.Context, sb *OVN, systemID string) error {
	n.mu.Lock()
	p := n.controller
	n.mu.Unlock()
	if p == nil || p.exited() {
		return fmt.Errorf("wait for chassis %s: ovn-controller on %s is not running", systemID, n.Name)
	}
	err := waitReady(ctx, p, chassisTimeout, func(ctx context.Context) error {
		out, err := sb.ctl(ctx, "ovn-sbctl", sb.SBAddr, "--bare", "--columns=encaps", "find", "Chassis", "name="+systemID)
		if err != nil {
			return err
		}
		if out == "" {
			return fmt.Errorf("no chassis %s with an encap in SB", systemID)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait for chassis %s: %w", systemID, err)
	}
	return nil
}

// PrimeUnderlay flushes the neighbour table of br-underlay and pings each peer encap IP once. The
// userspace datapath learns tunnel neighbours only by snooping ARP replies, so without this the
// first overlay packet to a new peer is lost.
func (n *Node) PrimeUnderlay(ctx context.Context, peers ...string) error {
	if err := runIP(ctx, "-n", n.Netns, "neigh", "flush", "dev", n.UnderlayIf); err != nil {
		return fmt.Errorf("prime underlay of %s: %w", n.Name, err)
	}
	for _, peer := range peers {
		var err error
		for range 3 {
			if _, err = n.Exec(ctx, "ping", "-c", "1", "-W", "1", peer); err == nil {
				break
			}
		}
		if err != nil {
			return fmt.Errorf("prime underlay of %s: %w", n.Name, err)
		}
	}
	return nil
}

// Stop stops ovn-controller, ovs-vswitchd and ovsdb-server and deletes the namespace and the underlay
// veth. Safe to call twice.
func (n *Node) Stop() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.stopped {
		return nil
	}
	n.stopped = true
	errs := []error{stopAll(n.controller, n.vswitchd, n.ovsdb)}
	// Deleting one end of a veth deletes both; the namespace's deletion would too, but only once
	// nothing holds the namespace any more.
	out, err := exec.Command("ip", "-n", n.underlay.Netns, "link", "del", n.ulPeer).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Cannot find device") && !strings.Contains(string(out), "No such file") {
		errs = append(errs, fmt.Errorf("delete underlay veth %s: %w: %s", n.ulPeer, err, bytes.TrimSpace(out)))
	}
	errs = append(errs, deleteOwnedNetns(n.Netns))
	n.underlay.release(n.index)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop node %s: %w", n.Name, err)
	}
	return nil
}

// Listen listens on addr inside the node's namespace, as a host-network server would.
func (n *Node) Listen(network, addr string) (net.Listener, error) {
	return listenIn("/var/run/netns/"+n.Netns, network, addr)
}

// LinkState describes dev's addresses, routes and MAC (`ip -br addr`, `ip route`, `ip -br link`
// without the flags, which OVS membership changes), to compare a device before and after.
func (n *Node) LinkState(ctx context.Context, dev string) (string, error) {
	var b strings.Builder
	for _, args := range [][]string{
		{"-br", "addr", "show", "dev", dev},
		{"route", "show", "dev", dev},
		{"-br", "link", "show", "dev", dev},
	} {
		out, err := n.Exec(ctx, "ip", args...)
		if err != nil {
			return "", err
		}
		b.WriteString(regexp.MustCompile(`<[^>]*>`).ReplaceAllString(out, ""))
	}
	return b.String(), nil
}
