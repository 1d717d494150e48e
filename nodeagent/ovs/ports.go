package ovs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/nodeagent/ovsmodel"
)

// PortSpec is a device to attach to a bridge, as a Port and an Interface both named Name: a system
// device (a veth end) by default, or an internal port that OVS creates.
type PortSpec struct {
	Bridge      string
	Name        string
	ExternalIDs map[string]string // of the Interface
	Type        string            // Interface type: "" (system) or "internal"
	MAC         string            // Interface mac, for internal ports; empty: OVS picks one
}

// AddPort attaches the device in one transaction. A port of that name that differs from the spec (other
// bridge, other interface type or name, several interfaces) is replaced in the same transaction; one that
// differs only in external_ids is updated in place. Nothing is written when the port already matches.
//
// The keys ovn-controller owns (ovn-installed, ovn-installed-ts) are not part of the comparison and are
// kept while iface-id is unchanged, so that repeating an ADD does not un-install a working port.
func (c *Client) AddPort(ctx context.Context, p PortSpec) error {
	if p.Name == "" || p.Bridge == "" {
		return fmt.Errorf("add port %q to bridge %q: name and bridge are required", p.Name, p.Bridge)
	}
	br := &ovsmodel.Bridge{Name: p.Bridge}
	if err := c.cli.Get(ctx, br); err != nil {
		return fmt.Errorf("add port %s: bridge %s: %w", p.Name, p.Bridge, err)
	}
	var ops []ovsdb.Operation
	port := &ovsmodel.Port{Name: p.Name}
	switch err := c.cli.Get(ctx, port); {
	case err == nil:
		if iface := c.reusableIface(ctx, port, br, p); iface != nil {
			ops, err := c.ifaceUpdateOps(iface, p.ExternalIDs)
			if err != nil {
				return fmt.Errorf("build update of port %s: %w", p.Name, err)
			}
			if err := c.transact(ctx, "update port "+p.Name, ops); err != nil {
				return err
			}
			if len(ops) > 0 {
				klog.V(2).InfoS("Updated OVS port", "port", p.Name, "bridge", p.Bridge)
			}
			return nil
		}
		// Detaching the old port makes OVS garbage-collect its rows before the transaction commits,
		// so the new rows may reuse the name.
		if ops, err = c.detachOps(ctx, port.UUID); err != nil {
			return fmt.Errorf("replace port %s: %w", p.Name, err)
		}
		klog.V(2).InfoS("Replacing OVS port that differs from its spec", "port", p.Name, "bridge", p.Bridge)
	case errors.Is(err, client.ErrNotFound):
	default:
		return fmt.Errorf("look up port %s: %w", p.Name, err)
	}
	iface := &ovsmodel.Interface{UUID: "newiface", Name: p.Name, Type: p.Type, ExternalIDs: maps.Clone(p.ExternalIDs)}
	if p.MAC != "" {
		iface.MAC = &p.MAC
	}
	newPort := &ovsmodel.Port{UUID: "newport", Name: p.Name, Interfaces: []string{iface.UUID}}
	for _, m := range []model.Model{iface, newPort} {
		cops, err := c.cli.Create(m)
		if err != nil {
			return fmt.Errorf("build port %s: %w", p.Name, err)
		}
		ops = append(ops, cops...)
	}
	mops, err := c.cli.Where(br).Mutate(br, model.Mutation{Field: &br.Ports, Mutator: ovsdb.MutateOperationInsert, Value: []string{newPort.UUID}})
	if err != nil {
		return fmt.Errorf("build port %s: %w", p.Name, err)
	}
	if err := c.transact(ctx, fmt.Sprintf("add port %s to bridge %s", p.Name, p.Bridge), append(ops, mops...)); err != nil {
		return err
	}
	klog.V(2).InfoS("Added OVS port", "port", p.Name, "bridge", p.Bridge)
	return nil
}

// reusableIface returns the interface of port when the port can be updated in place: on br, with one
// interface of the same name, type and MAC. Otherwise nil.
func (c *Client) reusableIface(ctx context.Context, port *ovsmodel.Port, br *ovsmodel.Bridge, p PortSpec) *ovsmodel.Interface {
	if len(port.Interfaces) != 1 || !slices.Contains(br.Ports, port.UUID) {
		return nil
	}
	iface := &ovsmodel.Interface{UUID: port.Interfaces[0]}
	if err := c.cli.Get(ctx, iface); err != nil || iface.Name != port.Name || iface.Type != p.Type {
		return nil
	}
	if p.MAC != "" && (iface.MAC == nil || *iface.MAC != p.MAC) {
		return nil
	}
	return iface
}

// ifaceUpdateOps returns the mutations that make iface's external_ids equal to want (plus the
// ovn-controller keys while the binding is unchanged), or none when they already are.
func (c *Client) ifaceUpdateOps(iface *ovsmodel.Interface, want map[string]string) ([]ovsdb.Operation, error) {
	want = maps.Clone(want)
	if want == nil {
		want = map[string]string{}
	}
	if iface.ExternalIDs[ifaceIDKey] == want[ifaceIDKey] {
		for _, k := range []string{installedKey, installedTSKey} { // set by ovn-controller
			if v, ok := iface.ExternalIDs[k]; ok {
				if _, set := want[k]; !set {
					want[k] = v
				}
			}
		}
	}
	var stale []string
	set := map[string]string{}
	for k, v := range iface.ExternalIDs {
		if w, ok := want[k]; !ok || w != v {
			stale = append(stale, k)
		}
	}
	for k, v := range want {
		if old, ok := iface.ExternalIDs[k]; !ok || old != v {
			set[k] = v
		}
	}
	var muts []model.Mutation
	if len(stale) > 0 {
		muts = append(muts, model.Mutation{Field: &iface.ExternalIDs, Mutator: ovsdb.MutateOperationDelete, Value: stale})
	}
	if len(set) > 0 {
		muts = append(muts, model.Mutation{Field: &iface.ExternalIDs, Mutator: ovsdb.MutateOperationInsert, Value: set})
	}
	if len(muts) == 0 {
		return nil, nil
	}
	return c.cli.Where(&ovsmodel.Interface{UUID: iface.UUID}).Mutate(iface, muts...)
}

// detachOps removes the port from every bridge holding it; OVS then garbage-collects the Port and
// its Interfaces.
func (c *Client) detachOps(ctx context.Context, portUUID string) ([]ovsdb.Operation, error) {
	var bridges []ovsmodel.Bridge
	if err := c.cli.List(ctx, &bridges); err != nil {
		return nil, fmt.Errorf("list bridges: %w", err)
	}
	var ops []ovsdb.Operation
	for i := range bridges {
		br := &bridges[i]
		if !slices.Contains(br.Ports, portUUID) {
			continue
		}
		mops, err := c.cli.Where(br).Mutate(br, model.Mutation{Field: &br.Ports, Mutator: ovsdb.MutateOperationDelete, Value: []string{portUUID}})
		if err != nil {
			return nil, fmt.Errorf("build removal from bridge %s: %w", br.Name, err)
		}
		ops = append(ops, mops...)
	}
	return ops, nil
}

// DeletePort detaches the port from its bridge; OVS garbage-collects the Port and Interface rows.
// A missing port is not an error, so CNI DEL may be repeated.
func (c *Client) DeletePort(ctx context.Context, name string) error {
	port := &ovsmodel.Port{Name: name}
	if err := c.cli.Get(ctx, port); err != nil {
		if errors.Is(err, client.ErrNotFound) {
			return nil
		}
		return fmt.Errorf("look up port %s: %w", name, err)
	}
	ops, err := c.detachOps(ctx, port.UUID)
	if err != nil {
		return fmt.Errorf("delete port %s: %w", name, err)
	}
	if err := c.transact(ctx, "delete port "+name, ops); err != nil {
		return err
	}
	klog.V(2).InfoS("Deleted OVS port", "port", name)
	return nil
}

// PortInfo is a port as the cache shows it.
type PortInfo struct {
	Name        string
	Bridge      string
	ExternalIDs map[string]string // of the Interface
	Type        string            // Interface type: "" (system), "internal", "patch", ...
	OFPort      int               // -1 when OVS could not attach the device, 0 before it tried
	Error       string            // Interface.error
}

// Port returns the port named name with its interface (the one of the same name, else the first).
func (c *Client) Port(name string) (PortInfo, bool) {
	port := byIndex(c, ovsmodel.PortTable, &ovsmodel.Port{Name: name})
	if port == nil || len(port.Interfaces) == 0 {
		return PortInfo{}, false
	}
	var iface *ovsmodel.Interface
	for _, u := range port.Interfaces {
		i := byIndex(c, ovsmodel.InterfaceTable, &ovsmodel.Interface{UUID: u})
		if i != nil && (iface == nil || i.Name == name) {
			iface = i
		}
	}
	if iface == nil {
		return PortInfo{}, false
	}
	return infoOf(port, iface, c.bridgeOfPort()), true
}

// PortsByIfaceID returns the ports whose interface is bound to logical port id, through a client index.
func (c *Client) PortsByIfaceID(id string) []PortInfo {
	t := c.table(ovsmodel.InterfaceTable)
	if t == nil || id == "" {
		return nil
	}
	rows, err := t.RowsByModels([]model.Model{&ovsmodel.Interface{ExternalIDs: map[string]string{ifaceIDKey: id}}})
	if err != nil {
		klog.ErrorS(err, "Cannot look up OVS interfaces by iface-id", "ifaceID", id)
		return nil
	}
	var ifaces []*ovsmodel.Interface
	for _, m := range rows {
		// RowsByModels may match another index first: keep exact matches only.
		if iface := m.(*ovsmodel.Interface); iface.ExternalIDs[ifaceIDKey] == id {
			ifaces = append(ifaces, iface)
		}
	}
	return c.infos(ifaces)
}

// PortsWithExternalID returns the ports whose interface has key k in external_ids. It scans the cache:
// for garbage collection, not hot paths.
func (c *Client) PortsWithExternalID(k string) []PortInfo {
	var ifaces []*ovsmodel.Interface
	for _, m := range c.rows(ovsmodel.InterfaceTable) {
		if iface := m.(*ovsmodel.Interface); hasKey(iface.ExternalIDs, k) {
			ifaces = append(ifaces, iface)
		}
	}
	return c.infos(ifaces)
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// infos returns the ports of ifaces, sorted by name.
func (c *Client) infos(ifaces []*ovsmodel.Interface) []PortInfo {
	if len(ifaces) == 0 {
		return nil
	}
	bridges := c.bridgeOfPort()
	var scanned map[string]model.Model
	out := make([]PortInfo, 0, len(ifaces))
	for _, iface := range ifaces {
		// Our ports have the name of their interface; others need a scan.
		port := byIndex(c, ovsmodel.PortTable, &ovsmodel.Port{Name: iface.Name})
		if port == nil || !slices.Contains(port.Interfaces, iface.UUID) {
			port = nil
			if scanned == nil {
				scanned = c.rows(ovsmodel.PortTable)
			}
			for _, m := range scanned {
				if p := m.(*ovsmodel.Port); slices.Contains(p.Interfaces, iface.UUID) {
					port = p
					break
				}
			}
		}
		if port == nil { // being deleted
			continue
		}
		out = append(out, infoOf(port, iface, bridges))
	}
	slices.SortFunc(out, func(a, b PortInfo) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// bridgeOfPort maps port UUIDs to the name of their bridge.
func (c *Client) bridgeOfPort() map[string]string {
	out := map[string]string{}
	for _, m := range c.rows(ovsmodel.BridgeTable) {
		br := m.(*ovsmodel.Bridge)
		for _, u := range br.Ports {
			out[u] = br.Name
		}
	}
	return out
}

func infoOf(port *ovsmodel.Port, iface *ovsmodel.Interface, bridges map[string]string) PortInfo {
	info := PortInfo{Name: port.Name, Bridge: bridges[port.UUID], Type: iface.Type, ExternalIDs: maps.Clone(iface.ExternalIDs)}
	if iface.Ofport != nil {
		info.OFPort = *iface.Ofport
	}
	if iface.Error != nil {
		info.Error = *iface.Error
	}
	return info
}
