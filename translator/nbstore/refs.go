package nbstore

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/ovn-kubernetes/libovsdb/mapper"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// References between rows: parents (the set columns that hold a row), rows found by owner and identity,
// and reference columns given by the rows they point to (Row.Refs).

// findOwned returns the UUID of the row ref names in table, created earlier in txn or cached, and the
// cached row (nil when created in txn). A missing row is ErrParentMissing: the caller waits for its owner.
func (s *Store) findOwned(txn *Txn, table string, ref Ref) (string, model.Model, error) {
	if named := txn.created[table+"/"+ref.Name]; named != "" {
		return named, nil, nil
	}
	var rows map[string]model.Model
	var err error
	switch spec := s.specs[table]; {
	case spec.NameOwned:
		rows, err = s.lookup(table, nil, ref.Name)
	case spec.Keyed:
		rows, err = s.lookup(table, map[string]string{OwnerKey: ref.Owner, IDKey: ref.Name}, "")
	default:
		rows, err = s.lookup(table, map[string]string{OwnerKey: ref.Owner}, "")
	}
	if err != nil {
		return "", nil, err
	}
	for _, uuid := range slices.Sorted(maps.Keys(rows)) {
		if s.identity(table, rows[uuid]) == ref.Name {
			return uuid, rows[uuid], nil
		}
	}
	return "", nil, fmt.Errorf("%s %q owned by %s: %w", table, ref.Name, ref.Owner, ErrParentMissing)
}

// ensureNamed creates a NameOwned row when no row of that name exists; its columns are not managed
// after creation.
func (s *Store) ensureNamed(txn, ops *Txn, table string, row Row) error {
	name := s.stringColumn(row.Model, "name")
	rows, err := s.lookup(table, nil, name)
	if err != nil || len(rows) > 0 {
		return err
	}
	return s.create(txn, ops, table, name, row.Model, nil)
}

// resolveRefs sets the reference columns of a desired row from its Refs.
func (s *Store) resolveRefs(txn *Txn, table, id string, info *mapper.Info, refs map[string][]Ref) error {
	for _, col := range slices.Sorted(maps.Keys(refs)) {
		target := s.refTable[table][col]
		if target == "" {
			return fmt.Errorf("%s column %q does not reference another table", table, col)
		}
		// Members (a port group's ports) that do not exist yet are left out: their owner's sync writes
		// them, and the set's owner is planned again then. Other references must resolve.
		member := slices.Contains(s.specs[table].MemberColumns, col)
		uuids := make([]string, 0, len(refs[col]))
		for _, ref := range refs[col] {
			uuid, _, err := s.findOwned(txn, target, ref)
			if member && errors.Is(err, ErrParentMissing) {
				continue
			}
			if err != nil {
				return fmt.Errorf("%s %q column %s: %w", table, id, col, err)
			}
			uuids = append(uuids, uuid)
		}
		cur, err := info.FieldByColumn(col)
		if err != nil {
			return err
		}
		var value any = uuids
		if _, optional := cur.(*string); optional { // a column of at most one reference
			if len(uuids) > 1 {
				return fmt.Errorf("%s %q column %s takes one reference, got %d", table, id, col, len(uuids))
			}
			var p *string
			if len(uuids) == 1 {
				p = &uuids[0]
			}
			value = p
		}
		if err := info.SetField(col, value); err != nil {
			return fmt.Errorf("%s %q column %s: %w", table, id, col, err)
		}
	}
	return nil
}

// ensureParents puts an existing row into every parent that does not hold it yet. A non-root row held
// by another parent (a pod's port on the switch of the node the pod was on before) is moved: dropped
// from its holder and inserted into its parent in the same transaction, so the server never collects it.
// A root row is dropped from the rows that hold it without being its parents any more
// (dropFromOtherParents).
func (s *Store) ensureParents(txn, ops *Txn, table, id, uuid string, parents []Parent) error {
	named := map[string]bool{} // "table/column/uuid" of each parent
	for _, p := range parents {
		puuid, prow, err := s.findOwned(txn, p.Table, p.Ref)
		if err != nil {
			return fmt.Errorf("%s %q: %w", table, id, err)
		}
		named[p.Table+"/"+p.Column+"/"+puuid] = true
		if prow != nil {
			held, _ := s.column(prow, p.Column).([]string)
			if slices.Contains(held, uuid) {
				continue
			}
			if !s.root[table] {
				op, err := s.dropFromHolders(p.Table, p.Column, uuid)
				if err != nil {
					return err
				}
				ops.add(anyCount, op)
			}
		}
		op, err := s.refOp(p.Table, p.Column, puuid, ovsdb.MutateOperationInsert, uuid)
		if err != nil {
			return err
		}
		ops.add(one, op)
	}
	if s.root[table] && len(parents) > 0 {
		return s.dropFromOtherParents(ops, table, uuid, parents, named)
	}
	return nil
}

// dropFromOtherParents removes the root row uuid of table from the rows that hold it in a reference
// column without being among its parents (named) any more: a load balancer that leaves one of its two
// groups, or a router. The server does not collect a root row, so such a parent would keep it. The rows
// looked at are those of its parents' owners (through the owner index) and of NameOwned tables (the
// reserved groups): a parent of another owner the row has left entirely keeps it, and a row without
// Parents (held through other rows' Refs) is never dropped.
func (s *Store) dropFromOtherParents(ops *Txn, table, uuid string, parents []Parent, named map[string]bool) error {
	owners := map[string]bool{}
	for _, p := range parents {
		owners[p.Owner] = true
	}
	for _, ptable := range s.tables {
		for _, col := range slices.Sorted(maps.Keys(s.refTable[ptable])) {
			if s.refTable[ptable][col] != table {
				continue
			}
			rows := map[string]model.Model{}
			if s.specs[ptable].NameOwned {
				if tc := s.cli.Cache().Table(ptable); tc != nil {
					rows = tc.RowsShallow()
				}
			} else {
				for owner := range owners {
					found, err := s.lookup(ptable, map[string]string{OwnerKey: owner}, "")
					if err != nil {
						return err
					}
					maps.Copy(rows, found)
				}
			}
			for _, puuid := range slices.Sorted(maps.Keys(rows)) {
				held, _ := s.column(rows[puuid], col).([]string)
				if named[ptable+"/"+col+"/"+puuid] || !slices.Contains(held, uuid) {
					continue
				}
				op, err := s.refOp(ptable, col, puuid, ovsdb.MutateOperationDelete, uuid)
				if err != nil {
					return err
				}
				ops.add(one, op)
			}
		}
	}
	return nil
}

// refOp inserts child into, or deletes it from, the set column of the row parentUUID of table.
func (s *Store) refOp(table, column, parentUUID string, mutator ovsdb.Mutator, child string) (ovsdb.Operation, error) {
	m, info, err := s.probe(table, column)
	if err != nil {
		return ovsdb.Operation{}, err
	}
	if err := info.SetField("_uuid", parentUUID); err != nil {
		return ovsdb.Operation{}, err
	}
	p, _ := fieldPtr(info, column)
	op, err := s.mutateOp(table, uuidIs(parentUUID), m, model.Mutation{Field: p, Mutator: mutator, Value: []string{child}})
	if err != nil {
		return ovsdb.Operation{}, fmt.Errorf("%s %s of %s %s: %w", mutator, child, table, parentUUID, err)
	}
	return op, nil
}

// dropFromHolders removes child from column in every row of table that holds it. The server evaluates
// the condition; the row that held it need not be known.
func (s *Store) dropFromHolders(table, column, child string) (ovsdb.Operation, error) {
	m, info, err := s.probe(table, column)
	if err != nil {
		return ovsdb.Operation{}, err
	}
	p, _ := fieldPtr(info, column)
	where, err := s.includesCond(m, p, []string{child})
	if err != nil {
		return ovsdb.Operation{}, fmt.Errorf("drop %s from %s.%s: %w", child, table, column, err)
	}
	op, err := s.mutateOp(table, where, m, model.Mutation{Field: p, Mutator: ovsdb.MutateOperationDelete, Value: []string{child}})
	if err != nil {
		return ovsdb.Operation{}, fmt.Errorf("drop %s from %s.%s: %w", child, table, column, err)
	}
	return op, nil
}

// probe is an empty model of table with mapper information, checked to have column.
func (s *Store) probe(table, column string) (model.Model, *mapper.Info, error) {
	m, err := s.dbModel.NewModel(table)
	if err != nil {
		return nil, nil, err
	}
	info, err := s.info(m)
	if err != nil {
		return nil, nil, err
	}
	if _, ok := info.Metadata.Fields[column]; !ok {
		return nil, nil, fmt.Errorf("table %s has no column %q", table, column)
	}
	return m, info, nil
}
