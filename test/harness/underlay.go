package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
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
	if err := deleteOwnedNetns(u.Netns); err != nil {
		return fmt.Errorf("stop underlay: %w", err)
	}
	return nil
}
