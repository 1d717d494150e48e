package ovsdbrows

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// A row as ovsdb-server sends it, decoded by libovsdb, read as strings.
func TestRow(t *testing.T) {
	const u1, u2 = "8a4dc9b1-7e4c-4d1b-9a59-1a3b2c4d5e6f", "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
	raw := `{"_uuid":["uuid","` + u1 + `"],"name":"ls1","ports":["set",[["uuid","` + u1 + `"],["uuid","` + u2 + `"]]],
		"one":["uuid","` + u2 + `"],"opt":["set",[]],"n":42,"optn":["set",[7]],"up":["set",[true]],"down":false,
		"external_ids":["map",[["dunlin.io/owner","Node/n1"],["k","v"]]],"refs":["map",[["a",["uuid","` + u1 + `"]]]]}`
	var r ovsdb.Row
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		t.Fatal(err)
	}
	row := Row(r)
	if row.UUID() != u1 || row.Name() != "ls1" || row.String("opt") != "" || row.String("one") != u2 {
		t.Errorf("uuid %q name %q opt %q one %q", row.UUID(), row.Name(), row.String("opt"), row.String("one"))
	}
	if s := row.Set("ports"); !slices.Equal(slices.Sorted(slices.Values(s)), []string{u2, u1}) {
		t.Errorf("ports %v", s)
	}
	if row.Int("n") != 42 || row.Int("optn") != 7 || row.Int("opt") != 0 || !row.Bool("up") || row.Bool("down") || row.Bool("opt") {
		t.Errorf("n %d optn %d up %v down %v", row.Int("n"), row.Int("optn"), row.Bool("up"), row.Bool("down"))
	}
	if m := row.Map("external_ids"); len(m) != 2 || m["dunlin.io/owner"] != "Node/n1" || row.Set("external_ids") != nil {
		t.Errorf("external_ids %v", m)
	}
	if m := row.Map("refs"); m["a"] != u1 {
		t.Errorf("refs %v", m)
	}
}

// The conditions and mutations built here reach the server in RFC 7047 notation.
func TestWireFormat(t *testing.T) {
	const u = "8a4dc9b1-7e4c-4d1b-9a59-1a3b2c4d5e6f"
	op := ovsdb.Operation{Op: ovsdb.OperationMutate, Table: "T", Where: []ovsdb.Condition{UUIDIs(u), Includes("external_ids", "k", "v")},
		Mutations: []ovsdb.Mutation{{Column: "external_ids", Mutator: ovsdb.MutateOperationDelete, Value: ovsdb.OvsSet{GoSet: []any{"k"}}}}}
	b, err := json.Marshal(op)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"op":"mutate","table":"T","mutations":[["external_ids","delete","k"]],"where":[["_uuid","==",["uuid","` + u +
		`"]],["external_ids","includes",["map",[["k","v"]]]]]}`
	if string(b) != want {
		t.Errorf("%s\nwant %s", b, want)
	}
	if b, _ := json.Marshal(SelectOp("T", nil)); !strings.Contains(string(b), `"where":[]`) {
		t.Errorf("select all: %s", b)
	}
}
