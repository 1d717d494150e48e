// Package nbstore is Dunlin's one generic writer to the OVN northbound database: it compares the rows a
// Kubernetes object should have (desired) with the rows that object owns in the libovsdb cache and turns
// the difference into the minimal OVSDB operations, which the Committer batches into transactions.
package nbstore

import (
	"fmt"
	"reflect"
	"slices"

	"github.com/ovn-kubernetes/libovsdb/model"
)

// OwnerKey is the external_ids key that marks a row as Dunlin's; its value names the owning object
// (<Kind>/<namespace>/<name>, or <Kind>/<name> for cluster-scoped objects). Rows without it are never
// modified or deleted.
const OwnerKey = "dunlin.io/owner"

// Row is one desired NB row. Model is a pointer to an nbmodel struct whose name column identifies the
// row within its owner and whose external_ids carry OwnerKey.
type Row struct {
	Model model.Model
	// Parent is set for rows of tables with a ParentTable: the row there that references this one. The
	// parent may belong to another owner (a pod's port sits on its node's switch, a Service's load
	// balancer in the cluster's group); only the reference is mutated, never the parent's other columns.
	Parent *Ref
	// ParentTable and ParentColumn, when set, replace the TableSpec's for this row: a root row that
	// hangs in another parent than its table's usual one (a node-local load balancer referenced by its
	// node's switch rather than by the cluster group).
	ParentTable, ParentColumn string
	// Refs are reference columns of Model given by the rows they point to, for rows Dunlin owns: the
	// store resolves them to UUIDs when it plans (a node switch's load_balancer_group).
	Refs map[string][]Ref
}

// Ref names a row owned by Dunlin.
type Ref struct {
	Owner string
	Name  string
}

// fieldPtr returns a pointer to the struct field of m tagged with the OVSDB column name, for the
// libovsdb calls that take field pointers.
func fieldPtr(m model.Model, column string) (any, error) {
	v := reflect.ValueOf(m).Elem()
	t := v.Type()
	for i := range t.NumField() {
		if t.Field(i).Tag.Get("ovsdb") == column {
			return v.Field(i).Addr().Interface(), nil
		}
	}
	return nil, fmt.Errorf("%s has no column %q", t.Name(), column)
}

// columnValue returns the value of the field tagged with column.
func columnValue(m model.Model, column string) (any, error) {
	p, err := fieldPtr(m, column)
	if err != nil {
		return nil, err
	}
	return reflect.ValueOf(p).Elem().Interface(), nil
}

func stringColumn(m model.Model, column string) string {
	v, err := columnValue(m, column)
	if err != nil {
		return ""
	}
	s, _ := v.(string)
	return s
}

func externalIDs(m model.Model) map[string]string {
	v, err := columnValue(m, "external_ids")
	if err != nil {
		return nil
	}
	ids, _ := v.(map[string]string)
	return ids
}

// equalColumn compares two column values the way OVSDB does: a nil and an empty set or map are equal,
// sets are unordered, and optional values compare by what they point to.
func equalColumn(a, b any) bool {
	switch av := a.(type) {
	case []string:
		bv, _ := b.([]string)
		if len(av) != len(bv) {
			return false
		}
		as, bs := slices.Clone(av), slices.Clone(bv)
		slices.Sort(as)
		slices.Sort(bs)
		return slices.Equal(as, bs)
	case map[string]string:
		bv, _ := b.(map[string]string)
		if len(av) != len(bv) {
			return false
		}
		for k, x := range av {
			if y, ok := bv[k]; !ok || x != y {
				return false
			}
		}
		return true
	}
	ra, rb := reflect.ValueOf(a), reflect.ValueOf(b)
	if ra.Kind() == reflect.Pointer && rb.Kind() == reflect.Pointer {
		if ra.IsNil() || rb.IsNil() {
			return ra.IsNil() == rb.IsNil()
		}
		return reflect.DeepEqual(ra.Elem().Interface(), rb.Elem().Interface())
	}
	if ra.Kind() == reflect.Slice && rb.Kind() == reflect.Slice && ra.Len() == 0 && rb.Len() == 0 {
		return true
	}
	if ra.Kind() == reflect.Map && rb.Kind() == reflect.Map && ra.Len() == 0 && rb.Len() == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

// setField stores value into the field p points to.
func setField(p, value any) {
	reflect.ValueOf(p).Elem().Set(reflect.ValueOf(value))
}
