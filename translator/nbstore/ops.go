package nbstore

import (
	"fmt"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// The store builds its operations from its own database model instead of through libovsdb's client
// API: the API's builders read the client cache's model without the cache's lock, while a reconnection
// (Purge) replaces it, a data race in libovsdb v0.8.1 that -race reports whenever NB comes back.
// Every row the store changes is addressed by its UUID, so no builder needs the cache anyway.

// uuidIs is the condition selecting one row by UUID.
func uuidIs(uuid string) []ovsdb.Condition {
	return []ovsdb.Condition{{Column: "_uuid", Function: ovsdb.ConditionEqual, Value: ovsdb.UUID{GoUUID: uuid}}}
}

// insertOp inserts m, whose _uuid is a named UUID (or empty).
func (s *Store) insertOp(table string, m model.Model) (ovsdb.Operation, error) {
	info, err := s.info(m)
	if err != nil {
		return ovsdb.Operation{}, err
	}
	row, err := s.dbModel.Mapper.NewRow(info)
	if err != nil {
		return ovsdb.Operation{}, fmt.Errorf("row of %s: %w", table, err)
	}
	op := ovsdb.Operation{Op: ovsdb.OperationInsert, Table: table, Row: row}
	if u, _ := info.FieldByColumn("_uuid"); u != nil && ovsdb.IsNamedUUID(u.(string)) {
		op.UUIDName = u.(string)
	}
	delete(row, "_uuid")
	return op, nil
}

// updateOp sets the columns of fields (pointers into m) in the row uuid.
func (s *Store) updateOp(table, uuid string, m model.Model, fields ...any) (ovsdb.Operation, error) {
	info, err := s.info(m)
	if err != nil {
		return ovsdb.Operation{}, err
	}
	row, err := s.dbModel.Mapper.NewRow(info, fields...)
	if err != nil {
		return ovsdb.Operation{}, fmt.Errorf("row of %s: %w", table, err)
	}
	ts := s.dbModel.Schema.Table(table)
	for col := range row {
		if c := ts.Column(col); col == "_uuid" || c == nil || !c.Mutable() {
			delete(row, col)
		}
	}
	if len(row) == 0 {
		return ovsdb.Operation{}, fmt.Errorf("update of %s %s changes no mutable column", table, uuid)
	}
	return ovsdb.Operation{Op: ovsdb.OperationUpdate, Table: table, Row: row, Where: uuidIs(uuid)}, nil
}

// mutateOp applies mutations (fields are pointers into m) to the rows where selects.
func (s *Store) mutateOp(table string, where []ovsdb.Condition, m model.Model, mutations ...model.Mutation) (ovsdb.Operation, error) {
	info, err := s.info(m)
	if err != nil {
		return ovsdb.Operation{}, err
	}
	op := ovsdb.Operation{Op: ovsdb.OperationMutate, Table: table, Where: where}
	for _, mu := range mutations {
		col, err := info.ColumnByPtr(mu.Field)
		if err != nil {
			return ovsdb.Operation{}, fmt.Errorf("mutation of %s: %w", table, err)
		}
		om, err := s.dbModel.Mapper.NewMutation(info, col, mu.Mutator, mu.Value)
		if err != nil {
			return ovsdb.Operation{}, fmt.Errorf("mutation of %s.%s: %w", table, col, err)
		}
		op.Mutations = append(op.Mutations, *om)
	}
	return op, nil
}

// includesCond is the condition "column includes value" on m's table.
func (s *Store) includesCond(m model.Model, field, value any) ([]ovsdb.Condition, error) {
	info, err := s.info(m)
	if err != nil {
		return nil, err
	}
	c, err := s.dbModel.Mapper.NewCondition(info, field, ovsdb.ConditionIncludes, value)
	if err != nil {
		return nil, err
	}
	return []ovsdb.Condition{*c}, nil
}
