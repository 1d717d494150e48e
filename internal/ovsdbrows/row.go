package ovsdbrows

import (
	"fmt"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// Row is one row as libovsdb decodes it: column name to a string, number, boolean, ovsdb.UUID,
// ovsdb.OvsSet or ovsdb.OvsMap.
type Row ovsdb.Row

// atom turns one OVSDB atom into a string: a UUID's hex, a string as is, a number or boolean printed.
func atom(v any) string {
	switch a := v.(type) {
	case string:
		return a
	case ovsdb.UUID:
		return a.GoUUID
	case float64:
		if a == float64(int64(a)) {
			return fmt.Sprint(int64(a))
		}
	}
	return fmt.Sprint(v)
}

// UUID is the row's _uuid.
func (r Row) UUID() string { return atom(r["_uuid"]) }

// String is a scalar column (or an optional one: "" when empty) as a string.
func (r Row) String(col string) string {
	if s := r.Set(col); len(s) > 0 {
		return s[0]
	}
	return ""
}

// scalar is a scalar column's value, or the one element of an optional one (nil when empty).
func (r Row) scalar(col string) any {
	if s, ok := r[col].(ovsdb.OvsSet); ok {
		if len(s.GoSet) == 1 {
			return s.GoSet[0]
		}
		return nil
	}
	return r[col]
}

// Int is a scalar integer column.
func (r Row) Int(col string) int {
	f, _ := r.scalar(col).(float64)
	return int(f)
}

// Bool is a scalar boolean column (false when empty).
func (r Row) Bool(col string) bool {
	b, _ := r.scalar(col).(bool)
	return b
}

// Set is a set column (or a scalar, as a set of one) as strings.
func (r Row) Set(col string) []string {
	switch v := r[col].(type) {
	case nil, ovsdb.OvsMap:
		return nil
	case ovsdb.OvsSet:
		out := make([]string, 0, len(v.GoSet))
		for _, e := range v.GoSet {
			out = append(out, atom(e))
		}
		return out
	default:
		return []string{atom(v)}
	}
}

// Map is a map column as strings.
func (r Row) Map(col string) map[string]string {
	out := map[string]string{}
	m, _ := r[col].(ovsdb.OvsMap)
	for k, v := range m.GoMap {
		out[atom(k)] = atom(v)
	}
	return out
}

// Name is the row's name column, or "" for tables without one.
func (r Row) Name() string { return r.String("name") }

// UUIDIs is the condition _uuid == u.
func UUIDIs(u string) ovsdb.Condition {
	return ovsdb.NewCondition("_uuid", ovsdb.ConditionEqual, ovsdb.UUID{GoUUID: u})
}

// Includes is the condition that map column col includes key=value.
func Includes(col, key, value string) ovsdb.Condition {
	return ovsdb.NewCondition(col, ovsdb.ConditionIncludes, ovsdb.OvsMap{GoMap: map[any]any{key: value}})
}

// RefTables returns the tables a column's keys and values reference, if any.
func RefTables(c *ovsdb.ColumnSchema) (key, value string) {
	ref := func(b *ovsdb.BaseType) string {
		if b == nil {
			return ""
		}
		t, _ := b.RefTable() // an error: not a uuid
		return t
	}
	if c == nil || c.TypeObj == nil {
		return "", ""
	}
	return ref(c.TypeObj.Key), ref(c.TypeObj.Value)
}
