package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
)

// UnderlayOptions configures StartUnderlay.
type UnderlayOptions struct {
	Dir string // optional; created if set. Nothing lives there yet, but it names where the underlay belongs.
	MTU int    // of the bridge and every node's veth; default 1500
}

// Underlay is a network namespace holding a Linux bridge that joins the nodes, subnet UnderlaySubnet.
type Underlay struct {
	Netns  string // ip netns name
	Bridge string // the Linux bridge inside Netns
	MTU    int
	Dir    string

	mu      sync.Mutex
	indexes map[int]string // node index -> node name, to catch two nodes on one IP
	outside []string       // namespaces of StartOutside
	stopped bool
}

// StartUnderlay creates the underlay namespace and bridge.
func StartUnderlay(ctx context.Context, o UnderlayOptions) (*Underlay, error) {
	if o.MTU == 0 {
		o.MTU = 1500
	}
	if o.MTU < 1280 || o.MTU > 65535 {
		return nil, fmt.Errorf("start underlay: MTU %d out of range", o.MTU)
	}
	if o.Dir != "" {
		if err := os.MkdirAll(o.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("start underlay: %w", err)
		}
	}
	u := &Underlay{Netns: "dl" + randomHex(3) + "-ul", Bridge: underlayBridge, MTU: o.MTU, Dir: o.Dir, indexes: map[int]string{}}
	sweepStaleNetns()
	if err := newOwnedNetns(ctx, u.Netns); err != nil {
		return nil, fmt.Errorf("start underlay: %w", err)
	}
	mtu := strconv.Itoa(o.MTU)
	for _, args := range [][]string{
		{"-n", u.Netns, "link", "add", u.Bridge, "mtu", mtu, "type", "bridge"},
		{"-n", u.Netns, "link", "set", u.Bridge, "up"},
	} {
		if err := runIP(ctx, args...); err != nil {
			return nil, errors.Join(fmt.Errorf("start underlay: %w", err), u.Stop())
		}
	}
	return u, nil
}

func (u *Underlay) claim(index int, name string) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopped {
		return errors.New("underlay stopped")
	}
	if other, ok := u.indexes[index]; ok {
		return fmt.Errorf("index %d already taken by node %s", index, other)
	}
	u.indexes[index] = name
	return nil
}

func (u *Underlay) release(index int) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.indexes, index)
}

// Stop deletes the underlay namespace, and with it the bridge and the underlay ends of node veths.
// Safe to call twice.
func (u *Underlay) Stop() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.stopped {
		return nil
	}
	u.stopped = true
	var errs []error
	for _, o := range u.outside {
		errs = append(errs, deleteOwnedNetns(o))
	}
	errs = append(errs, deleteOwnedNetns(u.Netns))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop underlay: %w", err)
	}
	return nil
}

// plug adds a veth between the namespace netns (end name, up) and the underlay bridge (end peer, up).
func (u *Underlay) plug(ctx context.Context, netns, name, peer string) error {
	mtu := strconv.Itoa(u.MTU)
	err := runIP(ctx, "-n", netns, "link", "add", name, "mtu", mtu, "type", "veth",
		"peer", "name", peer, "mtu", mtu, "netns", u.Netns)
	if err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", u.Netns, "link", "set", peer, "master", u.Bridge, "up"},
		{"-n", netns, "link", "set", name, "up"},
	} {
		if err := runIP(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

// Outside is a network namespace on the underlay with OutsideIP, the gateway nodes' default next hop:
// a host outside the cluster, where tests run servers and clients.
type Outside struct {
	Netns string
	IP    string // OutsideIP
	u     *Underlay
}

// StartOutside creates the outside namespace; Underlay.Stop removes it too.
func (u *Underlay) StartOutside(ctx context.Context) (*Outside, error) {
	o := &Outside{Netns: "dl" + randomHex(3) + "-out", IP: OutsideIP, u: u}
	if err := newOwnedNetns(ctx, o.Netns); err != nil {
		return nil, fmt.Errorf("start outside: %w", err)
	}
	err := u.plug(ctx, o.Netns, "eth0", "o"+o.Netns[2:8])
	if err == nil {
		err = runIP(ctx, "-n", o.Netns, "addr", "add", OutsideIP+"/24", "dev", "eth0")
	}
	if err == nil {
		// A veth leaves TCP/UDP checksums to the receiver's kernel, which a userspace OVS bridge in
		// between cannot pass on: the frames must carry real checksums, as on a wire.
		if out, xerr := exec.CommandContext(ctx, "ip", "netns", "exec", o.Netns, "ethtool", "-K", "eth0", "tx", "off").CombinedOutput(); xerr != nil {
			err = fmt.Errorf("ethtool -K eth0 tx off in %s: %w: %s", o.Netns, xerr, out)
		}
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("start outside: %w", err), deleteOwnedNetns(o.Netns))
	}
	u.mu.Lock()
	u.outside = append(u.outside, o.Netns)
	u.mu.Unlock()
	return o, nil
}

// Dial connects from inside the outside namespace.
func (o *Outside) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return Sandbox{Netns: "/var/run/netns/" + o.Netns}.Dial(ctx, network, addr)
}

// Listen listens on addr inside the outside namespace.
func (o *Outside) Listen(network, addr string) (net.Listener, error) {
	return listenIn("/var/run/netns/"+o.Netns, network, addr)
}
