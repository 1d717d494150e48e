package ovs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"

	"github.com/dunlinplugin/dunlin/nodeagent/ovsmodel"
)

// recheckInterval bounds how long a missed cache event (a full event buffer, or a reconnection, which
// refills the cache without per-row events) can delay WaitInstalled.
const recheckInterval = time.Second

// WaitInstalled waits until ovn-controller marks the interface external_ids:ovn-installed=true, which
// it does once the port's flows are in the bridge, so that the pod does not start before its network
// works. It is woken by cache events. It fails early when OVS reports an error on the interface, or when
// the interface disappears after having been seen.
func (c *Client) WaitInstalled(ctx context.Context, name string) error {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	if c.waiters[name] == nil {
		c.waiters[name] = map[chan struct{}]struct{}{}
	}
	c.waiters[name][ch] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters[name], ch)
		if len(c.waiters[name]) == 0 {
			delete(c.waiters, name)
		}
		c.mu.Unlock()
	}()
	timer := time.NewTimer(recheckInterval)
	defer timer.Stop()
	seen := false
	for {
		// Get waits for the cache to be consistent after a reconnection (bounded by ctx), so a miss
		// means the row is really gone.
		iface := &ovsmodel.Interface{Name: name}
		err := c.cli.Get(ctx, iface)
		switch {
		case err == nil:
			seen = true
			if iface.ExternalIDs[installedKey] == "true" {
				return nil
			}
			if iface.Error != nil && *iface.Error != "" {
				return fmt.Errorf("OVS cannot attach port %s: %s", name, *iface.Error)
			}
		case !errors.Is(err, client.ErrNotFound):
			return fmt.Errorf("wait for port %s: %w", name, err)
		case ctx.Err() != nil: // the cache may be stale or purged: report the timeout
		case seen:
			return fmt.Errorf("port %s was deleted while waiting for ovn-controller to install it", name)
		}
		select {
		case <-ch:
		case <-timer.C:
			timer.Reset(recheckInterval)
		case <-ctx.Done():
			return fmt.Errorf("ovn-controller did not mark port %s installed (external_ids:%s=true): %w", name, installedKey, ctx.Err())
		}
	}
}
