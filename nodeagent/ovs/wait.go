package ovs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"

	"github.com/dunlinplugin/dunlin/nodeagent/ovsmodel"
)

// defaultRecheck bounds how long a missed cache event (a full event buffer, or a reconnection, which
// refills the cache without per-row events) can delay a wait.
const defaultRecheck = time.Second

// waitIface calls check with the cached interface (nil when absent) on every change of it, until check
// says done or fails, or ctx ends. Get waits for the cache to be consistent after a reconnection
// (bounded by ctx), so nil means the row is really gone.
func (c *Client) waitIface(ctx context.Context, name string, check func(iface *ovsmodel.Interface) (bool, error)) error {
	changed, unsubscribe := c.changed.Subscribe(name)
	defer unsubscribe()
	recheck := c.recheck
	if recheck == 0 {
		recheck = defaultRecheck
	}
	timer := time.NewTimer(recheck)
	defer timer.Stop()
	for {
		iface := &ovsmodel.Interface{Name: name}
		err := c.cli.Get(ctx, iface)
		switch {
		case errors.Is(err, client.ErrNotFound):
			iface = nil
		case err != nil && ctx.Err() == nil:
			return fmt.Errorf("look up port %s: %w", name, err)
		}
		if ctx.Err() == nil { // a timed-out Get may see a stale or purged cache
			if done, err := check(iface); done || err != nil {
				return err
			}
		}
		select {
		case <-changed:
		case <-timer.C:
			timer.Reset(recheck)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// WaitInstalled waits until ovn-controller marks the interface external_ids:ovn-installed=true, which
// it does once the port's flows are in the bridge, so that the pod does not start before its network
// works. It fails early when OVS reports an error on the interface, or when the interface disappears
// after having been seen.
func (c *Client) WaitInstalled(ctx context.Context, name string) error {
	seen := false
	err := c.waitIface(ctx, name, func(iface *ovsmodel.Interface) (bool, error) {
		switch {
		case iface == nil && seen:
			return false, fmt.Errorf("port %s was deleted while waiting for ovn-controller to install it", name)
		case iface == nil:
			return false, nil
		case iface.ExternalIDs[installedKey] == "true":
			return true, nil
		case iface.Error != nil && *iface.Error != "":
			return false, fmt.Errorf("OVS cannot attach port %s: %s", name, *iface.Error)
		}
		seen = true
		return false, nil
	})
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("ovn-controller did not mark port %s installed (external_ids:%s=true): %w", name, installedKey, ctx.Err())
	}
	return err
}

// WaitGone waits until the interface has left the cache after DeletePort, so that a port of the same
// name added next is not mistaken for the old one (and its ovn-installed mark). It gives up after 10 s.
func (c *Client) WaitGone(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := c.waitIface(ctx, name, func(iface *ovsmodel.Interface) (bool, error) { return iface == nil, nil })
	if err != nil {
		return fmt.Errorf("interface %s is still in the OVS database after its deletion: %w", name, err)
	}
	return nil
}
