package ovsdbraw

import (
	"encoding/json"
	"fmt"
	"sort"
)

// atom turns one OVSDB atom into a string: a UUID's hex, a string as is, a number or boolean printed.
func atom(v any) string {
	switch a := v.(type) {
	case string:
		return a
	case []any:
		if len(a) == 2 && (a[0] == "uuid" || a[0] == "named-uuid") {
			return fmt.Sprint(a[1])
		}
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

// Int is a scalar integer column.
func (r Row) Int(col string) int {
	if f, ok := r[col].(float64); ok {
		return int(f)
	}
	return 0
}

// Bool is a scalar boolean column (false when empty).
func (r Row) Bool(col string) bool {
	if b, ok := r[col].(bool); ok {
		return b
	}
	if s := r.Set(col); len(s) == 1 {
		return s[0] == "true"
	}
	return false
}

// Set is a set column (or a scalar, as a set of one) as strings.
func (r Row) Set(col string) []string {
	v, ok := r[col]
	if !ok {
		return nil
	}
	if a, ok := v.([]any); ok && len(a) == 2 && a[0] == "set" {
		elems, _ := a[1].([]any)
		out := make([]string, 0, len(elems))
		for _, e := range elems {
			out = append(out, atom(e))
		}
		return out
	}
	if a, ok := v.([]any); ok && len(a) == 2 && a[0] == "map" {
		return nil
	}
	return []string{atom(v)}
}

// Map is a map column as strings.
func (r Row) Map(col string) map[string]string {
	out := map[string]string{}
	a, ok := r[col].([]any)
	if !ok || len(a) != 2 || a[0] != "map" {
		return out
	}
	pairs, _ := a[1].([]any)
	for _, p := range pairs {
		kv, ok := p.([]any)
		if ok && len(kv) == 2 {
			out[atom(kv[0])] = atom(kv[1])
		}
	}
	return out
}

// Name is the row's name column, or "" for tables without one.
func (r Row) Name() string {
	if _, ok := r["name"]; ok {
		return r.String("name")
	}
	return ""
}

// UUIDValue is a UUID as an OVSDB value.
func UUIDValue(u string) []any { return []any{"uuid", u} }

// Eq is the condition column == value.
func Eq(col string, value any) []any { return []any{col, "==", value} }

// Includes is the condition that map column col includes key=value.
func Includes(col, key, value string) []any {
	return []any{col, "includes", MapValue(map[string]string{key: value})}
}

// MapValue is an OVSDB map of strings.
func MapValue(m map[string]string) []any {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	pairs := []any{}
	for _, k := range keys {
		pairs = append(pairs, []any{k, m[k]})
	}
	return []any{"map", pairs}
}

// SetValue is an OVSDB set of atoms (strings, or UUIDValue).
func SetValue(elems ...any) []any {
	if elems == nil {
		elems = []any{}
	}
	return []any{"set", elems}
}

// Schema is the part of a database schema dunlinctl needs: tables, whether they are roots, and which
// columns reference which tables.
type Schema struct {
	Name    string                 `json:"name"`
	Version string                 `json:"version"`
	Tables  map[string]TableSchema `json:"tables"`
}

// TableSchema is one table of Schema.
type TableSchema struct {
	IsRoot  bool                    `json:"isRoot"`
	Columns map[string]ColumnSchema `json:"columns"`
}

// ColumnSchema is one column; Type is the schema's JSON (a string for atomic types).
type ColumnSchema struct {
	Type json.RawMessage `json:"type"`
}

// RefTables returns the tables a column's keys and values reference, if any.
func (c ColumnSchema) RefTables() (key, value string) {
	var t struct {
		Key   json.RawMessage `json:"key"`
		Value json.RawMessage `json:"value"`
	}
	if json.Unmarshal(c.Type, &t) != nil {
		return "", ""
	}
	ref := func(raw json.RawMessage) string {
		var b struct {
			RefTable string `json:"refTable"`
		}
		if json.Unmarshal(raw, &b) != nil {
			return ""
		}
		return b.RefTable
	}
	return ref(t.Key), ref(t.Value)
}
