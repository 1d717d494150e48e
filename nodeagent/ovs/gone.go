package ovs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"

	"github.com/dunlinplugin/dunlin/nodeagent/ovsmodel"
)

// WaitGone waits until the interface is no longer in the cache after DeletePort, so that a port of the
// same name added next is not mistaken for the old one (and its ovn-installed mark).
func (c *Client) WaitGone(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		if err := c.cli.Get(ctx, &ovsmodel.Interface{Name: name}); errors.Is(err, client.ErrNotFound) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interface %s is still in the OVS database after its deletion: %w", name, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
