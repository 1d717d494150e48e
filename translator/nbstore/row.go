// Package nbstore is Dunlin's one generic writer to the OVN northbound database: it compares the rows a
// Kubernetes object should have (desired) with the rows that object owns in the libovsdb cache and turns
// the difference into the minimal OVSDB operations, which the Committer batches into transactions.
//
// A plan is a pipeline: per table a TableSpec (identity, parent, managed columns), then a diff of each
// desired row against the owned row of the same identity, then operations. Every operation carries the
// number of rows it must touch, so a write that did nothing (its row deleted meanwhile) is noticed and
// re-planned instead of trusted.
package nbstore

import "github.com/ovn-kubernetes/libovsdb/model"

// external_ids keys of the store.
const (
	// OwnerKey marks a row as Dunlin's; its value names the owning object (<Kind>/<namespace>/<name>, or
	// <Kind>/<name> for cluster-scoped objects). Rows without it are never modified or deleted.
	OwnerKey = "dunlin.io/owner"
	// IDKey identifies a row of a table without a name column (a NAT rule, a route, an ACL) among the rows
	// of its owner. Tables with a name column are identified by the name.
	IDKey = "dunlin.io/id"
	// entriesKeyPrefix, followed by "<column>:<owner>", records in a row's external_ids which keys of its
	// map column that owner holds (see Entries). The value is the comma-separated keys.
	entriesKeyPrefix = "dunlin.io/entries:"
)

// Row is one desired NB row. Model is a pointer to an nbmodel struct; the store sets its owner (and ID)
// in external_ids.
type Row struct {
	Model model.Model
	// ID identifies the row within its owner in a Keyed table (one without a name column). It is stored in
	// external_ids[IDKey].
	ID string
	// Parents are the rows whose set column references this one. A row of a non-root table (a port) has
	// exactly one, and is garbage-collected by the server when it loses it, so a port whose parent
	// changed moves in one transaction. A row of a root table (a load balancer) may have several (a group
	// and a router); it is dropped from the rows of its parents' owners (and the NameOwned groups) that
	// hold it without being named any more. A row without Parents is held through other rows' Refs and
	// never dropped. Parents may belong to other owners
	// (a pod's port sits on its node's switch); only the reference is mutated, never their other columns.
	Parents []Parent
	// Refs are reference columns of Model given by the rows they point to, rows Dunlin owns: the store
	// resolves them to UUIDs when it plans (a node switch's load_balancer_group, a port group's ports).
	Refs map[string][]Ref
}

// Ref names a row owned by Dunlin: its owner and its name (or ID in a Keyed table).
type Ref struct {
	Owner string
	Name  string
}

// Parent is a row referencing a desired row, and the column that holds the reference. An empty Table
// and Column mean the TableSpec's ParentTable and ParentColumn.
type Parent struct {
	Ref
	Table, Column string
}

// In is the parent ref in its table's default parent column.
func In(owner, name string) []Parent { return []Parent{{Ref: Ref{Owner: owner, Name: name}}} }

// Entries are keys of a map column of a row that the planning owner holds in a row that may belong to
// another owner (one Service's variables in a node's Chassis_Template_Var, say). The row's other keys
// are left alone; keys held by nobody are never overwritten.
type Entries struct {
	Table, Column string
	Target        Ref
	Values        map[string]string
}

// Desired is everything one owner should have in NB.
type Desired struct {
	Rows    []Row
	Entries []Entries
}

// Rows is the Desired made of rows only.
func Rows(rows ...Row) Desired { return Desired{Rows: rows} }
