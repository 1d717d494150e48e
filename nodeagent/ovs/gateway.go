package ovs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/nodeagent/ovsmodel"
)

// bridgeMappingsKey is the Open_vSwitch external_ids key ovn-controller reads to map a localnet port's
// network_name to a bridge ("physnet:br-ex,other:br-other").
const bridgeMappingsKey = "ovn-bridge-mappings"

// BridgeSpec is a bridge that holds a host uplink (the gateway bridge).
type BridgeSpec struct {
	Name         string
	DatapathType string
	// MAC becomes other_config:hwaddr, the MAC of the bridge's own device.
	MAC string
	// MTU is the bridge device's mtu_request; 0 leaves it to OVS.
	MTU int
	// ExternalIDs are merged into the bridge's; keys already there keep their value.
	ExternalIDs map[string]string
}

// Bridge returns the external_ids of the bridge named name, and whether it exists.
func (c *Client) Bridge(name string) (map[string]string, bool) {
	br := byIndex(c, ovsmodel.BridgeTable, &ovsmodel.Bridge{Name: name})
	if br == nil {
		return nil, false
	}
	return maps.Clone(br.ExternalIDs), true
}

// EnsureBridge creates the bridge of spec in one transaction (its external_ids included, so that
// whatever a crash interrupts later finds them), or brings an existing one's datapath type, hwaddr and
// MTU to spec and adds the external_ids keys it lacks. Nothing is written when all is as wanted.
func (c *Client) EnsureBridge(ctx context.Context, spec BridgeSpec) error {
	var rows []ovsmodel.OpenvSwitch
	if err := c.cli.List(ctx, &rows); err != nil {
		return fmt.Errorf("read Open_vSwitch: %w", err)
	}
	if len(rows) != 1 {
		return fmt.Errorf("the OVS database has %d Open_vSwitch rows, want 1", len(rows))
	}
	var mtu *int
	if spec.MTU > 0 {
		mtu = &spec.MTU
	}
	other := map[string]string{}
	if spec.MAC != "" {
		other["hwaddr"] = spec.MAC
	}
	br := &ovsmodel.Bridge{Name: spec.Name}
	var ops []ovsdb.Operation
	switch err := c.cli.Get(ctx, br); {
	case errors.Is(err, client.ErrNotFound):
		ops, err = c.createBridgeOps(rows[0], &ovsmodel.Bridge{Name: spec.Name, DatapathType: spec.DatapathType,
			OtherConfig: other, ExternalIDs: maps.Clone(spec.ExternalIDs)}, &ovsmodel.Interface{MTURequest: mtu})
		if err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("look up bridge %s: %w", spec.Name, err)
	default:
		if spec.DatapathType != "" && br.DatapathType != spec.DatapathType {
			br.DatapathType = spec.DatapathType
			uops, err := c.cli.Where(br).Update(br, &br.DatapathType)
			if err != nil {
				return fmt.Errorf("build update of bridge %s: %w", spec.Name, err)
			}
			ops = append(ops, uops...)
		}
		missing := map[string]string{}
		for k, v := range spec.ExternalIDs {
			if _, ok := br.ExternalIDs[k]; !ok {
				missing[k] = v
			}
		}
		var muts []model.Mutation
		muts = append(muts, mapMutations(&br.OtherConfig, br.OtherConfig, other)...)
		muts = append(muts, mapMutations(&br.ExternalIDs, br.ExternalIDs, missing)...)
		if len(muts) > 0 {
			mops, err := c.cli.Where(br).Mutate(br, muts...)
			if err != nil {
				return fmt.Errorf("build update of bridge %s: %w", spec.Name, err)
			}
			ops = append(ops, mops...)
		}
		if local := byIndex(c, ovsmodel.InterfaceTable, &ovsmodel.Interface{Name: spec.Name}); local != nil && mtu != nil &&
			(local.MTURequest == nil || *local.MTURequest != *mtu) {
			iface := &ovsmodel.Interface{UUID: local.UUID, MTURequest: mtu}
			uops, err := c.cli.Where(iface).Update(iface, &iface.MTURequest)
			if err != nil {
				return fmt.Errorf("build MTU update of bridge %s: %w", spec.Name, err)
			}
			ops = append(ops, uops...)
		}
	}
	if err := c.transact(ctx, "ensure bridge "+spec.Name, ops); err != nil {
		return err
	}
	if len(ops) > 0 {
		klog.InfoS("Configured OVS bridge", "bridge", spec.Name, "datapathType", spec.DatapathType, "hwaddr", spec.MAC)
	}
	return nil
}

// DeleteBridge removes the bridge and, with it, its ports. A missing bridge is not an error.
func (c *Client) DeleteBridge(ctx context.Context, name string) error {
	br := &ovsmodel.Bridge{Name: name}
	switch err := c.cli.Get(ctx, br); {
	case errors.Is(err, client.ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("look up bridge %s: %w", name, err)
	}
	var rows []ovsmodel.OpenvSwitch
	if err := c.cli.List(ctx, &rows); err != nil || len(rows) != 1 {
		return fmt.Errorf("read Open_vSwitch to delete bridge %s: %w (%d rows)", name, err, len(rows))
	}
	ops, err := c.cli.Where(&rows[0]).Mutate(&rows[0], model.Mutation{Field: &rows[0].Bridges, Mutator: ovsdb.MutateOperationDelete, Value: []string{br.UUID}})
	if err != nil {
		return fmt.Errorf("build deletion of bridge %s: %w", name, err)
	}
	if err := c.transact(ctx, "delete bridge "+name, ops); err != nil {
		return err
	}
	klog.InfoS("Deleted OVS bridge", "bridge", name)
	return nil
}

// BridgePorts returns the ports of the bridge, sorted by name, the bridge's own internal port included.
func (c *Client) BridgePorts(bridge string) []PortInfo {
	var ifaces []*ovsmodel.Interface
	for _, m := range c.rows(ovsmodel.InterfaceTable) {
		ifaces = append(ifaces, m.(*ovsmodel.Interface))
	}
	return slices.DeleteFunc(c.infos(ifaces), func(p PortInfo) bool { return p.Bridge != bridge })
}

// SetBridgeMapping adds network:bridge to ovn-bridge-mappings, replacing only an entry of the same
// network; the other entries stay as they are.
func (c *Client) SetBridgeMapping(ctx context.Context, network, bridge string) error {
	return c.editBridgeMappings(ctx, func(entries []string) []string {
		out := slices.DeleteFunc(entries, func(e string) bool { n, _, _ := strings.Cut(e, ":"); return n == network })
		return append(out, network+":"+bridge)
	})
}

// RemoveBridgeMapping removes the entry network:bridge from ovn-bridge-mappings (the key too when it
// was the only one). An entry mapping network to another bridge is not ours and stays.
func (c *Client) RemoveBridgeMapping(ctx context.Context, network, bridge string) error {
	return c.editBridgeMappings(ctx, func(entries []string) []string {
		return slices.DeleteFunc(entries, func(e string) bool { return e == network+":"+bridge })
	})
}

// editBridgeMappings rewrites ovn-bridge-mappings with edit, guarded by a wait on external_ids so that
// a concurrent writer's change is re-read rather than lost.
func (c *Client) editBridgeMappings(ctx context.Context, edit func([]string) []string) error {
	for attempt := 1; ; attempt++ {
		var rows []ovsmodel.OpenvSwitch
		if err := c.cli.List(ctx, &rows); err != nil {
			return fmt.Errorf("read Open_vSwitch: %w", err)
		}
		if len(rows) != 1 {
			return fmt.Errorf("the OVS database has %d Open_vSwitch rows, want 1", len(rows))
		}
		ovs := rows[0]
		cur := ovs.ExternalIDs[bridgeMappingsKey]
		var entries []string
		for _, e := range strings.Split(cur, ",") {
			if e = strings.TrimSpace(e); e != "" {
				entries = append(entries, e)
			}
		}
		want := strings.Join(edit(slices.Clone(entries)), ",")
		if want == cur {
			return nil
		}
		var muts []model.Mutation
		if _, ok := ovs.ExternalIDs[bridgeMappingsKey]; ok {
			muts = append(muts, model.Mutation{Field: &ovs.ExternalIDs, Mutator: ovsdb.MutateOperationDelete, Value: []string{bridgeMappingsKey}})
		}
		if want != "" {
			muts = append(muts, model.Mutation{Field: &ovs.ExternalIDs, Mutator: ovsdb.MutateOperationInsert, Value: map[string]string{bridgeMappingsKey: want}})
		}
		timeout := 0
		ops, err := c.cli.Where(&ovs).Wait(ovsdb.WaitConditionEqual, &timeout, &ovs, &ovs.ExternalIDs)
		if err != nil {
			return fmt.Errorf("build Open_vSwitch wait: %w", err)
		}
		mops, err := c.cli.Where(&ovs).Mutate(&ovs, muts...)
		if err != nil {
			return fmt.Errorf("build ovn-bridge-mappings update: %w", err)
		}
		err = c.transact(ctx, "set ovn-bridge-mappings", append(ops, mops...))
		if err == nil {
			klog.InfoS("Set ovn-bridge-mappings", "from", cur, "to", want)
			return nil
		}
		var conflict *ovsdb.TimedOut
		if !errors.As(err, &conflict) || attempt == 5 {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("set ovn-bridge-mappings: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
