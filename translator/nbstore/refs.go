package nbstore

import (
	"fmt"
	"maps"
	"slices"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// References between rows: a row's parent (the set column that holds it), rows found by owner and
// name, and reference columns given by name (Row.Refs).

// parentSpec is spec with the row's own parent table and column, if it names them.
func parentSpec(spec TableSpec, row Row) TableSpec {
	if row.ParentTable != "" {
		spec.ParentTable, spec.ParentColumn = row.ParentTable, row.ParentColumn
	}
	return spec
}

// findOwned returns the UUID of the row ref names, created earlier in txn or cached, and the cached
// row (nil when created in txn). A missing row is ErrParentMissing: the caller waits for its owner.
func (s *Store) findOwned(txn *Txn, table string, ref Ref) (string, model.Model, error) {
	if named := txn.created[table+"/"+ref.Name]; named != "" {
		return named, nil, nil
	}
	var rows map[string]model.Model
	var err error
	if s.specs[table].NameOwned {
		rows, err = s.lookup(table, "name", ref.Name)
	} else {
		rows, err = s.lookup(table, "external_ids", map[string]string{OwnerKey: ref.Owner})
	}
	if err != nil {
		return "", nil, err
	}
	for _, uuid := range slices.Sorted(maps.Keys(rows)) {
		if stringColumn(rows[uuid], "name") == ref.Name {
			return uuid, rows[uuid], nil
		}
	}
	return "", nil, fmt.Errorf("%s %q owned by %s: %w", table, ref.Name, ref.Owner, ErrParentMissing)
}

// ensureNamed creates a NameOwned row when no row of that name exists; its columns are not managed
// after creation.
func (s *Store) ensureNamed(txn *Txn, table string, spec TableSpec, name string, row Row) ([]ovsdb.Operation, error) {
	rows, err := s.lookup(table, "name", name)
	if err != nil || len(rows) > 0 {
		return nil, err
	}
	return s.create(txn, table, spec, name, row)
}

// resolveRefs sets the reference columns of row.Model from row.Refs.
func (s *Store) resolveRefs(txn *Txn, table string, row Row) error {
	for _, col := range slices.Sorted(maps.Keys(row.Refs)) {
		target := s.refTable[table][col]
		if target == "" {
			return fmt.Errorf("%s column %q does not reference another table", table, col)
		}
		uuids := make([]string, 0, len(row.Refs[col]))
		for _, ref := range row.Refs[col] {
			uuid, _, err := s.findOwned(txn, target, ref)
			if err != nil {
				return fmt.Errorf("%s %q column %s: %w", table, stringColumn(row.Model, "name"), col, err)
			}
			uuids = append(uuids, uuid)
		}
		p, err := fieldPtr(row.Model, col)
		if err != nil {
			return err
		}
		setField(p, uuids)
	}
	return nil
}

// ensureRef returns the mutation that puts uuid back into its parent's set when it is missing there.
func (s *Store) ensureRef(txn *Txn, table string, spec TableSpec, name, uuid string, parent *Ref) ([]ovsdb.Operation, error) {
	if parent == nil {
		return nil, fmt.Errorf("%s %q needs a parent %s", table, name, spec.ParentTable)
	}
	parentUUID, parentRow, err := s.findOwned(txn, spec.ParentTable, *parent)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", table, name, err)
	}
	if parentRow != nil {
		v, err := columnValue(parentRow, spec.ParentColumn)
		if err != nil {
			return nil, err
		}
		if set, _ := v.([]string); slices.Contains(set, uuid) {
			return nil, nil
		}
	}
	return []ovsdb.Operation{insertRef(spec, parentUUID, uuid)}, nil
}

func insertRef(spec TableSpec, parentUUID, child string) ovsdb.Operation {
	return ovsdb.Operation{
		Op: ovsdb.OperationMutate, Table: spec.ParentTable,
		Where: []ovsdb.Condition{{Column: "_uuid", Function: ovsdb.ConditionEqual, Value: ovsdb.UUID{GoUUID: parentUUID}}},
		Mutations: []ovsdb.Mutation{{Column: spec.ParentColumn, Mutator: ovsdb.MutateOperationInsert,
			Value: ovsdb.OvsSet{GoSet: []any{ovsdb.UUID{GoUUID: child}}}}},
	}
}
