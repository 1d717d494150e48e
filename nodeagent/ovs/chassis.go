package ovs

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/nodeagent/ovsmodel"
)

// DefaultBridge is the integration bridge used when ChassisConfig.Bridge is empty.
const DefaultBridge = "br-int"

// ChassisConfig is what ovn-controller reads from Open_vSwitch external_ids. Empty fields leave their
// key as it is.
type ChassisConfig struct {
	SystemID     string // used only when OVS has no system-id yet
	Hostname     string
	Remote       string // ovn-remote
	EncapType    string
	EncapIP      string
	Bridge       string // ovn-bridge, created if missing; DefaultBridge when empty
	DatapathType string // ovn-bridge-datapath-type and the bridge's datapath_type
}

// ConfigureChassis merges the chassis keys into Open_vSwitch external_ids, leaving every other key
// alone, and ensures the integration bridge. An existing system-id is kept (a node already known to OVN
// keeps its chassis name) and returned. Nothing is written when everything is already as wanted.
func (c *Client) ConfigureChassis(ctx context.Context, cfg ChassisConfig) (string, error) {
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	for attempt := 1; ; attempt++ {
		systemID, ops, err := c.chassisOps(ctx, cfg)
		if err != nil {
			return "", err
		}
		if len(ops) == 0 {
			return systemID, nil
		}
		err = c.transact(ctx, "configure OVS for ovn-controller", ops)
		if err == nil {
			klog.InfoS("Configured OVS for ovn-controller", "systemID", systemID, "bridge", cfg.Bridge)
			return systemID, nil
		}
		// The wait guard failed: someone else changed external_ids since our cache read. Retry on
		// the cache once it has caught up, so that a system-id set meanwhile is kept.
		var conflict *ovsdb.TimedOut
		if !errors.As(err, &conflict) || attempt == 5 {
			return "", err
		}
		klog.V(2).InfoS("Open_vSwitch external_ids changed concurrently, retrying", "attempt", attempt)
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("configure OVS for ovn-controller: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// chassisOps returns the effective system-id and the operations that bring the database to cfg.
func (c *Client) chassisOps(ctx context.Context, cfg ChassisConfig) (string, []ovsdb.Operation, error) {
	var rows []ovsmodel.OpenvSwitch
	if err := c.cli.List(ctx, &rows); err != nil {
		return "", nil, fmt.Errorf("read Open_vSwitch: %w", err)
	}
	if len(rows) != 1 {
		return "", nil, fmt.Errorf("the OVS database has %d Open_vSwitch rows, want 1 (was it initialised with ovs-vsctl init?)", len(rows))
	}
	ovs := rows[0]
	systemID := ovs.ExternalIDs["system-id"]
	if systemID == "" {
		systemID = cfg.SystemID
	}
	if systemID == "" {
		return "", nil, errors.New("OVS has no system-id and none was given")
	}
	want := map[string]string{
		"system-id":                systemID,
		"hostname":                 cfg.Hostname,
		"ovn-remote":               cfg.Remote,
		"ovn-encap-type":           cfg.EncapType,
		"ovn-encap-ip":             cfg.EncapIP,
		"ovn-bridge":               cfg.Bridge,
		"ovn-bridge-datapath-type": cfg.DatapathType,
	}
	var ops []ovsdb.Operation
	if muts := mapMutations(&ovs.ExternalIDs, ovs.ExternalIDs, want); len(muts) > 0 {
		// Mutations rather than an update of the whole map, so keys set by others survive; the wait
		// makes the transaction fail if external_ids changed since we read it (a system-id set by
		// someone else meanwhile must win).
		timeout := 0
		wait, err := c.cli.Where(&ovs).Wait(ovsdb.WaitConditionEqual, &timeout, &ovs, &ovs.ExternalIDs)
		if err != nil {
			return "", nil, fmt.Errorf("build Open_vSwitch wait: %w", err)
		}
		mops, err := c.cli.Where(&ovs).Mutate(&ovs, muts...)
		if err != nil {
			return "", nil, fmt.Errorf("build Open_vSwitch update: %w", err)
		}
		ops = append(append(ops, wait...), mops...)
	}
	bops, err := c.bridgeOps(ctx, ovs, cfg.Bridge, cfg.DatapathType)
	if err != nil {
		return "", nil, err
	}
	return systemID, append(ops, bops...), nil
}

// mapMutations returns the mutations of the map column field (currently have) that set the non-empty
// values of want and touch nothing else. A map insert does not overwrite a key, hence the delete of
// the keys whose value changes.
func mapMutations(field *map[string]string, have, want map[string]string) []model.Mutation {
	var stale []string
	set := map[string]string{}
	for k, v := range want {
		if v == "" {
			continue
		}
		old, ok := have[k]
		if ok && old == v {
			continue
		}
		if ok {
			stale = append(stale, k)
		}
		set[k] = v
	}
	var muts []model.Mutation
	if len(stale) > 0 {
		muts = append(muts, model.Mutation{Field: field, Mutator: ovsdb.MutateOperationDelete, Value: stale})
	}
	if len(set) > 0 {
		muts = append(muts, model.Mutation{Field: field, Mutator: ovsdb.MutateOperationInsert, Value: set})
	}
	return muts
}

// bridgeOps creates the integration bridge as `ovs-vsctl add-br` would (with its internal port), in
// secure fail mode so that nothing flows before ovn-controller installs flows and without in-band
// control flows, or corrects the fail mode and datapath type of an existing one.
func (c *Client) bridgeOps(ctx context.Context, ovs ovsmodel.OpenvSwitch, name, datapathType string) ([]ovsdb.Operation, error) {
	secure := ovsmodel.BridgeFailModeSecure
	br := &ovsmodel.Bridge{Name: name}
	err := c.cli.Get(ctx, br)
	if err == nil {
		var fields []any
		if br.FailMode == nil || *br.FailMode != secure {
			br.FailMode = &secure
			fields = append(fields, &br.FailMode)
		}
		if datapathType != "" && br.DatapathType != datapathType {
			br.DatapathType = datapathType
			fields = append(fields, &br.DatapathType)
		}
		var ops []ovsdb.Operation
		if len(fields) > 0 {
			uops, err := c.cli.Where(br).Update(br, fields...)
			if err != nil {
				return nil, fmt.Errorf("build update of bridge %s: %w", name, err)
			}
			ops = append(ops, uops...)
		}
		if muts := mapMutations(&br.OtherConfig, br.OtherConfig, map[string]string{"disable-in-band": "true"}); len(muts) > 0 {
			mops, err := c.cli.Where(br).Mutate(br, muts...)
			if err != nil {
				return nil, fmt.Errorf("build update of bridge %s: %w", name, err)
			}
			ops = append(ops, mops...)
		}
		return ops, nil
	}
	if !errors.Is(err, client.ErrNotFound) {
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	return c.createBridgeOps(ovs, &ovsmodel.Bridge{Name: name, FailMode: &secure, DatapathType: datapathType,
		OtherConfig: map[string]string{"disable-in-band": "true"}}, &ovsmodel.Interface{Type: "internal"})
}

// createBridgeOps creates br as `ovs-vsctl add-br` would: with its internal port and interface (local,
// whose other columns are kept) of the bridge's name, inserted into Open_vSwitch bridges.
func (c *Client) createBridgeOps(ovs ovsmodel.OpenvSwitch, br *ovsmodel.Bridge, local *ovsmodel.Interface) ([]ovsdb.Operation, error) {
	local.UUID, local.Name, local.Type = "newiface", br.Name, "internal"
	port := &ovsmodel.Port{UUID: "newport", Name: br.Name, Interfaces: []string{local.UUID}}
	br.UUID, br.Ports = "newbridge", []string{port.UUID}
	var ops []ovsdb.Operation
	for _, m := range []model.Model{local, port, br} {
		op, err := c.cli.Create(m)
		if err != nil {
			return nil, fmt.Errorf("build bridge %s: %w", br.Name, err)
		}
		ops = append(ops, op...)
	}
	mop, err := c.cli.Where(&ovs).Mutate(&ovs, model.Mutation{Field: &ovs.Bridges, Mutator: ovsdb.MutateOperationInsert, Value: []string{br.UUID}})
	if err != nil {
		return nil, fmt.Errorf("build bridge %s: %w", br.Name, err)
	}
	return append(ops, mop...), nil
}
