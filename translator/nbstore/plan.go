package nbstore

import (
	"fmt"
	"maps"
	"slices"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// Plan appends to txn the operations that make the rows owned by owner equal to want: creates what is
// missing, updates only changed managed columns, moves rows whose parent changed, deletes owned rows
// that are not wanted (and duplicates), and sets the owner's Entries. Desired rows must list parents
// before their children.
func (s *Store) Plan(txn *Txn, owner string, want Desired) error {
	txn.init()
	owned, err := s.OwnedRows(owner)
	if err != nil {
		return err
	}
	// table -> identity -> owned UUIDs, sorted so that the row kept among duplicates is always the same.
	byID := map[string]map[string][]string{}
	for table, rows := range owned {
		byID[table] = map[string][]string{}
		for _, uuid := range slices.Sorted(maps.Keys(rows)) {
			id := s.identity(table, rows[uuid])
			byID[table][id] = append(byID[table][id], uuid)
		}
	}

	var creates, updates, deletes, entries Txn
	keep := map[string]bool{}
	for _, row := range want.Rows {
		table, err := s.tableOf(row.Model)
		if err != nil {
			return err
		}
		spec := s.specs[table]
		if spec.NameOwned {
			if err := s.ensureNamed(txn, &creates, table, row); err != nil {
				return err
			}
			continue
		}
		id, err := s.prepare(txn, table, owner, row)
		if err != nil {
			return err
		}
		parents, err := s.parents(table, id, row)
		if err != nil {
			return err
		}
		if uuids := byID[table][id]; len(uuids) > 0 {
			uuid := uuids[0]
			keep[uuid] = true
			if err := s.update(&updates, table, uuid, owned[table][uuid], row.Model); err != nil {
				return err
			}
			if err := s.ensureParents(txn, &updates, table, id, uuid, parents); err != nil {
				return err
			}
			continue
		}
		if err := s.checkConflict(table, id, owner); err != nil {
			return err
		}
		if err := s.create(txn, &creates, table, id, row.Model, parents); err != nil {
			return err
		}
	}
	for _, table := range s.tables {
		for _, uuid := range slices.Sorted(maps.Keys(owned[table])) {
			if !keep[uuid] {
				if err := s.delete(&deletes, table, uuid); err != nil {
					return err
				}
			}
		}
	}
	if err := s.planEntries(txn, &entries, owner, want.Entries); err != nil {
		return err
	}
	txn.append(&creates)
	txn.append(&updates)
	txn.append(&deletes)
	txn.append(&entries)
	return nil
}

// OwnedRows returns the cached rows of every managed table that owner owns, by table and UUID.
func (s *Store) OwnedRows(owner string) (map[string]map[string]model.Model, error) {
	out := map[string]map[string]model.Model{}
	for _, table := range s.tables {
		if s.specs[table].NameOwned {
			continue
		}
		rows, err := s.lookup(table, map[string]string{OwnerKey: owner}, "")
		if err != nil {
			return nil, err
		}
		if len(rows) > 0 {
			out[table] = rows
		}
	}
	return out, nil
}

// lookup finds cached rows of table by owner (and ID, in a Keyed table) through a client index, or by
// name when ids is nil.
func (s *Store) lookup(table string, ids map[string]string, name string) (map[string]model.Model, error) {
	tc := s.cli.Cache().Table(table)
	if tc == nil {
		return nil, nil
	}
	probe, err := s.dbModel.NewModel(table)
	if err != nil {
		return nil, fmt.Errorf("new %s model: %w", table, err)
	}
	info, err := s.info(probe)
	if err != nil {
		return nil, err
	}
	column, value := "name", any(name)
	if ids != nil {
		column, value = "external_ids", ids
	}
	if err := info.SetField(column, value); err != nil {
		return nil, fmt.Errorf("probe %s by %s: %w", table, column, err)
	}
	rows, err := tc.RowsByModels([]model.Model{probe})
	if err != nil {
		return nil, fmt.Errorf("look up %s by %s: %w", table, column, err)
	}
	// RowsByModels falls back to other indexes when the probed one has no hit; keep exact matches.
	for uuid, m := range rows {
		if ids != nil {
			got := s.externalIDs(m)
			for k, v := range ids {
				if got[k] != v {
					delete(rows, uuid)
				}
			}
		} else if s.stringColumn(m, "name") != name {
			delete(rows, uuid)
		}
	}
	return rows, nil
}

// prepare sets the owner (and ID) of a desired row and resolves its references; it returns the row's
// identity.
func (s *Store) prepare(txn *Txn, table, owner string, row Row) (string, error) {
	info, err := s.info(row.Model)
	if err != nil {
		return "", err
	}
	ids := maps.Clone(s.externalIDs(row.Model))
	if ids == nil {
		ids = map[string]string{}
	}
	ids[OwnerKey] = owner
	if s.specs[table].Keyed {
		if row.ID == "" {
			return "", fmt.Errorf("%s row of %s has no ID", table, owner)
		}
		ids[IDKey] = row.ID
	}
	if err := info.SetField("external_ids", ids); err != nil {
		return "", err
	}
	id := s.identity(table, row.Model)
	if id == "" {
		return "", fmt.Errorf("%s row of %s has no name", table, owner)
	}
	if err := s.resolveRefs(txn, table, id, info, row.Refs); err != nil {
		return "", err
	}
	return id, nil
}

// parents fills in the default parent table and column, and checks that a non-root row has exactly one
// parent, in its table's parent column.
func (s *Store) parents(table, id string, row Row) ([]Parent, error) {
	spec := s.specs[table]
	out := make([]Parent, 0, len(row.Parents))
	for _, p := range row.Parents {
		if p.Table == "" {
			p.Table, p.Column = spec.ParentTable, spec.ParentColumn
		}
		if p.Table == "" || p.Column == "" {
			return nil, fmt.Errorf("%s %q: a parent needs a table and column (the spec has no default)", table, id)
		}
		out = append(out, p)
	}
	switch {
	case s.root[table]:
	case spec.ParentTable == "":
		if len(out) > 0 {
			return nil, fmt.Errorf("%s %q is held through Refs, not parents", table, id)
		}
	case len(out) != 1 || out[0].Table != spec.ParentTable || out[0].Column != spec.ParentColumn:
		return nil, fmt.Errorf("%s %q must have exactly one parent in %s.%s", table, id, spec.ParentTable, spec.ParentColumn)
	}
	return out, nil
}

func (s *Store) checkConflict(table, id, owner string) error {
	if s.specs[table].Keyed {
		return nil // an ID is Dunlin's own: nobody else can hold it
	}
	rows, err := s.lookup(table, nil, id)
	if err != nil {
		return err
	}
	for _, m := range slices.Sorted(maps.Keys(rows)) {
		o := s.externalIDs(rows[m])[OwnerKey]
		if o == owner {
			o = "" // cannot happen (it would be owned); report as foreign
		}
		return &ConflictError{Table: table, Name: id, Owner: o}
	}
	return nil
}

func (s *Store) create(txn, ops *Txn, table, id string, m model.Model, parents []Parent) error {
	named := fmt.Sprintf("dl%d", s.named.Add(1))
	info, err := s.info(m)
	if err != nil {
		return err
	}
	if err := info.SetField("_uuid", named); err != nil {
		return err
	}
	ins, err := s.insertOp(table, m)
	if err != nil {
		return fmt.Errorf("create %s %q: %w", table, id, err)
	}
	ops.add(anyCount, ins)
	txn.created[table+"/"+id] = named
	for _, p := range parents {
		puuid, _, err := s.findOwned(txn, p.Table, p.Ref)
		if err != nil {
			return fmt.Errorf("%s %q: %w", table, id, err)
		}
		op, err := s.refOp(p.Table, p.Column, puuid, ovsdb.MutateOperationInsert, named)
		if err != nil {
			return err
		}
		ops.add(one, op)
	}
	return nil
}

// update writes the managed columns of want that differ from cur: replaced columns in one update,
// member columns as element mutations.
func (s *Store) update(ops *Txn, table, uuid string, cur, want model.Model) error {
	spec := s.specs[table]
	ci, err := s.info(cur)
	if err != nil {
		return err
	}
	wi, err := s.info(want)
	if err != nil {
		return err
	}
	var fields []any
	for _, col := range spec.Columns {
		a, _ := ci.FieldByColumn(col)
		b, _ := wi.FieldByColumn(col)
		if col == "external_ids" && len(spec.EntryColumns) > 0 {
			// The records of other owners' entries are theirs: carry them over.
			b = withEntryRecords(a.(map[string]string), b.(map[string]string))
			if err := wi.SetField(col, b); err != nil {
				return err
			}
		}
		if !equalColumn(a, b) {
			p, err := fieldPtr(wi, col)
			if err != nil {
				return err
			}
			fields = append(fields, p)
		}
	}
	var mutations []model.Mutation
	for _, col := range spec.MemberColumns {
		a, _ := ci.FieldByColumn(col)
		b, _ := wi.FieldByColumn(col)
		del, ins := memberDelta(a, b)
		p, err := fieldPtr(wi, col)
		if err != nil {
			return err
		}
		if del != nil {
			mutations = append(mutations, model.Mutation{Field: p, Mutator: ovsdb.MutateOperationDelete, Value: del})
		}
		if ins != nil {
			mutations = append(mutations, model.Mutation{Field: p, Mutator: ovsdb.MutateOperationInsert, Value: ins})
		}
	}
	if len(fields) == 0 && len(mutations) == 0 {
		return nil
	}
	if err := wi.SetField("_uuid", uuid); err != nil {
		return err
	}
	if len(fields) > 0 {
		upd, err := s.updateOp(table, uuid, want, fields...)
		if err != nil {
			return fmt.Errorf("update %s %s: %w", table, uuid, err)
		}
		ops.add(one, upd)
	}
	if len(mutations) > 0 {
		mut, err := s.mutateOp(table, uuidIs(uuid), want, mutations...)
		if err != nil {
			return fmt.Errorf("mutate %s %s: %w", table, uuid, err)
		}
		ops.add(one, mut)
	}
	return nil
}

// delete removes an owned row. A non-root row is dropped from whatever parent holds it, and the server
// garbage-collects it; a root row is deleted, its weak references vanishing with it.
func (s *Store) delete(ops *Txn, table, uuid string) error {
	spec := s.specs[table]
	if !s.root[table] && spec.ParentTable == "" {
		return nil // held through another row's Refs: it goes when that row drops it
	}
	if !s.root[table] {
		op, err := s.dropFromHolders(spec.ParentTable, spec.ParentColumn, uuid)
		if err != nil {
			return err
		}
		ops.add(anyCount, op)
		return nil
	}
	ops.add(anyCount, ovsdb.Operation{Op: ovsdb.OperationDelete, Table: table, Where: uuidIs(uuid)})
	return nil
}
