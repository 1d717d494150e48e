package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/ovsdbrows"
)

// loadBalancerGroups are Dunlin's by name: the table has no external_ids (translator: the cluster rows).
var loadBalancerGroups = map[string]bool{"dunlin-cluster": true, "dunlin-routers": true}

// uninstallPlan is what uninstall removes, and what it changes in rows that are not Dunlin's.
type uninstallPlan struct {
	Delete []nbRow `json:"delete"`
	// Kept are Dunlin's rows that hold rows of others (a switch with a port that is not Dunlin's):
	// deleting them would delete those too. Their references to Dunlin's rows are removed.
	Kept []nbRow `json:"kept"`
	// Changes are the edits to rows that stay: references to deleted rows, and map keys Dunlin held in
	// them (NB_Global's writer claim and commit marker, Entries).
	Changes []change `json:"changes"`
	Done    bool     `json:"done"`
	ops     []ovsdb.Operation
}

type change struct {
	Table  string `json:"table"`
	UUID   string `json:"uuid"`
	Name   string `json:"name,omitempty"`
	Column string `json:"column"`
	Remove string `json:"remove"` // what goes: keys or row references
}

func (e *env) uninstall(ctx context.Context) error {
	nb, err := e.connectNB(ctx)
	if err != nil {
		return err
	}
	defer nb.close()
	plan, err := planUninstall(nb.c)
	if err != nil {
		return err
	}
	if warning := e.controllerRunning(ctx); warning != "" {
		fmt.Fprintln(os.Stderr, "dunlinctl: warning: "+warning)
	}
	if e.o.yes && len(plan.ops) > 0 {
		if _, err := nb.c.Transact(plan.ops...); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
	}
	plan.Done = e.o.yes
	if e.json() {
		return e.printJSON(plan)
	}
	e.printUninstall(plan)
	return nil
}

// controllerRunning says when the dunlin-controller Lease looks held: a running controller writes its
// rows again. Without an apiserver it says nothing.
func (e *env) controllerRunning(ctx context.Context) string {
	kube, err := e.kubeClient(ctx)
	if err != nil {
		return ""
	}
	lease, err := kube.CoordinationV1().Leases(e.o.leaseNamespace).Get(ctx, "dunlin-controller", metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" || lease.Spec.RenewTime == nil {
		return ""
	}
	ago := time.Since(lease.Spec.RenewTime.Time)
	if lease.Spec.LeaseDurationSeconds != nil && ago > time.Duration(*lease.Spec.LeaseDurationSeconds)*time.Second {
		return ""
	}
	return fmt.Sprintf("dunlin-controller %s renewed its Lease %s ago: stop it first, or it writes its rows again", *lease.Spec.HolderIdentity, ago.Round(time.Second))
}

// planUninstall reads all of NB and plans one transaction that deletes every row Dunlin owns
// (external_ids dunlin.io/owner, and its two load balancer groups), takes references to them out of
// rows that stay, and removes the keys Dunlin holds in rows of others; nothing else changes.
func planUninstall(c *ovsdbrows.Client) (*uninstallPlan, error) {
	schema := c.Schema()
	tables := sortedKeys(schema.Tables)
	var ops []ovsdb.Operation
	for _, t := range tables {
		ops = append(ops, ovsdbrows.SelectOp(t, nil))
	}
	res, err := c.Transact(ops...)
	if err != nil {
		return nil, fmt.Errorf("read NB: %w", err)
	}
	rows := map[string][]ovsdbrows.Row{}
	tableOf := map[string]string{}
	owned := map[string]bool{}
	for i, t := range tables {
		rows[t] = res[i]
		for _, r := range res[i] {
			tableOf[r.UUID()] = t
			if r.Map("external_ids")[ownerKey] != "" || (t == "Load_Balancer_Group" && loadBalancerGroups[r.String("name")]) {
				owned[r.UUID()] = true
			}
		}
	}
	p := &uninstallPlan{}
	// A Dunlin row holding a child row of someone else (strong reference to a non-root row) stays.
	kept := map[string]bool{}
	for _, t := range tables {
		for _, r := range rows[t] {
			if !owned[r.UUID()] {
				continue
			}
			for col, cs := range schema.Tables[t].Columns {
				for _, u := range refs(r, col, cs) {
					if ct := tableOf[u]; ct != "" && !owned[u] && !schema.Tables[ct].IsRoot {
						kept[r.UUID()] = true
					}
				}
			}
		}
	}
	gone := func(u string) bool { return owned[u] && !kept[u] }
	var mutations, deletes []ovsdb.Operation
	for _, t := range tables {
		for _, r := range rows[t] {
			u := r.UUID()
			if gone(u) {
				p.Delete = append(p.Delete, describe(t, r))
				deletes = append(deletes, ovsdb.Operation{Op: ovsdb.OperationDelete, Table: t, Where: []ovsdb.Condition{ovsdbrows.UUIDIs(u)}})
				continue
			}
			if kept[u] {
				p.Kept = append(p.Kept, describe(t, r))
			}
			for _, col := range sortedKeys(schema.Tables[t].Columns) {
				var drop []any
				var names []string
				for _, ref := range refs(r, col, schema.Tables[t].Columns[col]) {
					if gone(ref) {
						drop = append(drop, ovsdb.UUID{GoUUID: ref})
						names = append(names, tableOf[ref]+" "+ref[:8])
					}
				}
				if len(drop) == 0 {
					continue
				}
				var m ovsdb.Mutation
				if _, v := ovsdbrows.RefTables(schema.Tables[t].Columns[col]); v != "" { // a map whose values are references
					m = ovsdb.Mutation{Column: col, Mutator: ovsdb.MutateOperationDelete, Value: mapWithValues(r, col, drop)}
				} else {
					m = ovsdb.Mutation{Column: col, Mutator: ovsdb.MutateOperationDelete, Value: ovsdb.OvsSet{GoSet: drop}}
				}
				mutations = append(mutations, mutate(t, u, m))
				p.Changes = append(p.Changes, change{Table: t, UUID: u, Name: r.Name(), Column: col, Remove: strings.Join(names, ", ")})
			}
			mutations = append(mutations, heldKeys(p, t, r)...)
		}
	}
	p.ops = append(mutations, deletes...)
	return p, nil
}

// refs returns the UUIDs a reference column of r holds (keys and values of maps).
func refs(r ovsdbrows.Row, col string, cs *ovsdb.ColumnSchema) []string {
	k, v := ovsdbrows.RefTables(cs)
	if k == "" && v == "" {
		return nil
	}
	if m := r.Map(col); len(m) > 0 {
		var out []string
		for key, val := range m {
			if k != "" {
				out = append(out, key)
			}
			if v != "" {
				out = append(out, val)
			}
		}
		return out
	}
	return r.Set(col)
}

// mapWithValues is the map of r's column col entries whose value is one of uuids.
func mapWithValues(r ovsdbrows.Row, col string, uuids []any) ovsdb.OvsMap {
	want := map[any]bool{}
	for _, u := range uuids {
		want[u] = true
	}
	m := ovsdb.OvsMap{GoMap: map[any]any{}}
	held, _ := r[col].(ovsdb.OvsMap)
	for k, v := range held.GoMap {
		if want[v] {
			m.GoMap[k] = v
		}
	}
	return m
}

func mutate(table, uuid string, mutation ovsdb.Mutation) ovsdb.Operation {
	return ovsdb.Operation{Op: ovsdb.OperationMutate, Table: table, Where: []ovsdb.Condition{ovsdbrows.UUIDIs(uuid)},
		Mutations: []ovsdb.Mutation{mutation}}
}

// heldKeys removes the keys Dunlin holds in a row that stays: NB_Global's dunlin.io/ keys (writer
// claim, commit marker, sync time), and every Entries record "dunlin.io/entries:<column>:<owner>" with the keys it lists.
func heldKeys(p *uninstallPlan, table string, r ovsdbrows.Row) []ovsdb.Operation {
	var ops []ovsdb.Operation
	ids := r.Map("external_ids")
	var idKeys []string
	for _, k := range sortedKeys(ids) {
		switch {
		case table == "NB_Global" && strings.HasPrefix(k, "dunlin.io/"): // writer claim, commit marker, sync time
			idKeys = append(idKeys, k)
		case strings.HasPrefix(k, entriesKeyPrefix):
			idKeys = append(idKeys, k)
			col, _, _ := strings.Cut(strings.TrimPrefix(k, entriesKeyPrefix), ":")
			var keys []any
			for _, key := range strings.Split(ids[k], ",") {
				if key = strings.TrimSpace(key); key != "" {
					keys = append(keys, key)
				}
			}
			if len(keys) == 0 || col == "" {
				continue
			}
			ops = append(ops, mutate(table, r.UUID(), ovsdb.Mutation{Column: col, Mutator: ovsdb.MutateOperationDelete, Value: ovsdb.OvsSet{GoSet: keys}}))
			p.Changes = append(p.Changes, change{Table: table, UUID: r.UUID(), Name: r.Name(), Column: col, Remove: "keys " + ids[k]})
		}
	}
	if len(idKeys) > 0 {
		var keys []any
		for _, k := range idKeys {
			keys = append(keys, k)
		}
		ops = append(ops, mutate(table, r.UUID(), ovsdb.Mutation{Column: "external_ids", Mutator: ovsdb.MutateOperationDelete, Value: ovsdb.OvsSet{GoSet: keys}}))
		p.Changes = append(p.Changes, change{Table: table, UUID: r.UUID(), Name: r.Name(), Column: "external_ids", Remove: "keys " + strings.Join(idKeys, ",")})
	}
	return ops
}

func (e *env) printUninstall(p *uninstallPlan) {
	verb := "would delete"
	if p.Done {
		verb = "deleted"
	}
	counts := map[string]int{}
	for _, r := range p.Delete {
		counts[r.Table]++
	}
	var summary []string
	for _, t := range sortedKeys(counts) {
		summary = append(summary, fmt.Sprintf("%s %d", t, counts[t]))
	}
	fmt.Fprintf(e.out, "%s %d NB rows Dunlin owns: %s\n", verb, len(p.Delete), strings.Join(summary, ", "))
	e.printRows(p.Delete)
	if len(p.Kept) > 0 {
		e.section("KEPT: Dunlin's rows that hold rows of others (deleting them would delete those)")
		e.printRows(p.Kept)
	}
	if len(p.Changes) > 0 {
		e.section("CHANGED: rows that stay lose only these")
		t := newTable(e.out, "TABLE", "NAME", "UUID", "COLUMN", "REMOVED")
		sort.SliceStable(p.Changes, func(i, j int) bool { return p.Changes[i].Table < p.Changes[j].Table })
		for _, c := range p.Changes {
			t.row(c.Table, c.Name, c.UUID[:8], c.Column, c.Remove)
		}
		t.flush()
	}
	if !p.Done {
		fmt.Fprintln(e.out, "\ndry run: nothing was changed; stop dunlin-controller first, back NB up, then run again with --yes")
	}
}
