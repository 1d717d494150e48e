package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/dunlinplugin/dunlin/internal/ovsdbrows"
)

// NB external_ids keys of the store (translator/nbstore).
const (
	ownerKey         = "dunlin.io/owner"
	idKey            = "dunlin.io/id"
	entriesKeyPrefix = "dunlin.io/entries:"
)

// nbRow is an NB row for display.
type nbRow struct {
	Table  string `json:"table"`
	UUID   string `json:"uuid"`
	Name   string `json:"name,omitempty"`
	ID     string `json:"id,omitempty"`
	Owner  string `json:"owner,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// detailColumns are the columns that say what a row does, per table.
var detailColumns = map[string][]string{
	"Logical_Switch":              {"other_config"},
	"Logical_Switch_Port":         {"type", "addresses"},
	"Logical_Router_Port":         {"mac", "networks"},
	"Logical_Router":              {"options"},
	"Load_Balancer":               {"protocol", "vips"},
	"Logical_Router_Static_Route": {"ip_prefix", "nexthop", "policy"},
	"Logical_Router_Policy":       {"priority", "match", "action", "nexthops"},
	"NAT":                         {"type", "external_ip", "logical_ip"},
	"ACL":                         {"direction", "priority", "match", "action"},
	"Address_Set":                 {"addresses"},
	"Port_Group":                  {"ports"},
	"Chassis_Template_Var":        {"chassis", "variables"},
	"Meter":                       {"unit", "bands"},
}

// tablesWithExternalIDs lists the schema's tables that have external_ids, sorted.
func tablesWithExternalIDs(s ovsdb.DatabaseSchema) []string {
	var out []string
	for name, t := range s.Tables {
		if _, ok := t.Columns["external_ids"]; ok {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

// ownedRows returns the NB rows whose owner is one of owners, in every table, in one transaction.
func ownedRows(c *ovsdbrows.Client, owners ...string) ([]nbRow, error) {
	tables := tablesWithExternalIDs(c.Schema())
	var ops []ovsdb.Operation
	var opTables []string
	for _, owner := range owners {
		for _, t := range tables {
			ops = append(ops, ovsdbrows.SelectOp(t, []ovsdb.Condition{ovsdbrows.Includes("external_ids", ownerKey, owner)}))
			opTables = append(opTables, t)
		}
	}
	res, err := c.Transact(ops...)
	if err != nil {
		return nil, fmt.Errorf("NB owned rows: %w", err)
	}
	var out []nbRow
	for i, rows := range res {
		for _, row := range rows {
			out = append(out, describe(opTables[i], row))
		}
	}
	return out, nil
}

func describe(table string, row ovsdbrows.Row) nbRow {
	ids := row.Map("external_ids")
	d := nbRow{Table: table, UUID: row.UUID(), Name: row.Name(), ID: ids[idKey], Owner: ids[ownerKey]}
	var parts []string
	for _, col := range detailColumns[table] {
		if v := valueString(row, col); v != "" {
			parts = append(parts, col+"="+v)
		}
	}
	d.Detail = strings.Join(parts, " ")
	return d
}

// valueString prints a column compactly: maps as {k=v,...}, sets as [a,b], long sets by their size.
func valueString(row ovsdbrows.Row, col string) string {
	if m := row.Map(col); len(m) > 0 {
		var kv []string
		for _, k := range sortedKeys(m) {
			kv = append(kv, k+"="+m[k])
		}
		return "{" + strings.Join(kv, ", ") + "}"
	}
	s := row.Set(col)
	switch {
	case len(s) == 0:
		return ""
	case len(s) == 1:
		return s[0]
	case len(s) > 8:
		return fmt.Sprintf("(%d)", len(s))
	}
	return "[" + strings.Join(s, ", ") + "]"
}

func (e *env) printRows(rows []nbRow) {
	if len(rows) == 0 {
		fmt.Fprintln(e.out, "(none)")
		return
	}
	t := newTable(e.out, "TABLE", "NAME/ID", "UUID", "OWNER", "DETAIL")
	for _, r := range rows {
		name := r.Name
		if name == "" {
			name = r.ID
		}
		t.row(r.Table, name, r.UUID[:min(8, len(r.UUID))], r.Owner, r.Detail)
	}
	t.flush()
}
