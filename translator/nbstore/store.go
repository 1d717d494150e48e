package nbstore

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"sync/atomic"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// ErrParentMissing is returned (wrapped) by Plan when a desired row's parent is not in the cache yet,
// for example a pod whose node switch has not been written: the caller retries later.
var ErrParentMissing = errors.New("parent row not found")

// ConflictError says a row Dunlin wants to create has a name already taken by a row it does not own
// (Owner is empty) or owns on behalf of another object.
type ConflictError struct {
	Table, Name, Owner string
}

func (e *ConflictError) Error() string {
	if e.Owner == "" {
		return fmt.Sprintf("%s %q already exists and is not owned by Dunlin; refusing to touch it", e.Table, e.Name)
	}
	return fmt.Sprintf("%s %q is already owned by %s", e.Table, e.Name, e.Owner)
}

// TableSpec says how Dunlin manages a table.
type TableSpec struct {
	// Columns are the columns Dunlin sets; others (a switch's ports, say) are never overwritten.
	Columns []string
	// ParentTable and ParentColumn are set for tables whose rows hang in a set column of another row.
	// A non-root row (a port) is deleted by removing that reference; a root row (a load balancer in
	// a group) is deleted itself, its weak references vanishing with it, and a missing reference is
	// restored on update.
	ParentTable, ParentColumn string
	// NoInsertGuard skips the wait that otherwise guards an insert into a table without a name index
	// against a row of that name created since the cache was read. ovsdb-server evaluates that wait by
	// scanning the table, so on a big table (Load_Balancer) a cold start turns quadratic. Without it,
	// a concurrent writer (a second controller in a leader handover) can leave a duplicate of a
	// Dunlin row, which the owner's next plan deletes.
	NoInsertGuard bool
	// NameOwned is for tables without external_ids (Load_Balancer_Group): a row is Dunlin's by its
	// reserved, schema-unique name. Such rows are created when missing and never deleted.
	NameOwned bool
}

// Store plans the operations that bring the rows of one owner to their desired state.
type Store struct {
	cli    client.Client
	specs  map[string]TableSpec
	tables []string // specs' tables, ordered so that plans are deterministic
	types  map[reflect.Type]string
	// uniqueName is true for tables whose schema indexes "name", so the server rejects duplicates;
	// for the others an insert is guarded by a wait operation.
	uniqueName map[string]bool
	root       map[string]bool
	// refTable is, per table and column, the table a UUID column references.
	refTable map[string]map[string]string
	named    atomic.Uint64
}

// ClientDBModel returns the database model with the client indexes Store relies on: one on the owner
// external_id in every managed table, and one on name where the schema has no such index.
func ClientDBModel(base model.ClientDBModel, schema ovsdb.DatabaseSchema, specs map[string]TableSpec) (model.ClientDBModel, error) {
	indexes := map[string][]model.ClientIndex{}
	for table := range specs {
		ts := schema.Table(table)
		if ts == nil {
			return model.ClientDBModel{}, fmt.Errorf("table %s is not in schema %s", table, schema.Name)
		}
		var idx []model.ClientIndex
		if !specs[table].NameOwned {
			idx = append(idx, model.ClientIndex{Columns: []model.ColumnKey{{Column: "external_ids", Key: OwnerKey}}})
		}
		if !hasNameIndex(ts) {
			idx = append(idx, model.ClientIndex{Columns: []model.ColumnKey{{Column: "name"}}})
		}
		indexes[table] = idx
	}
	base.SetIndexes(indexes)
	return base, nil
}

func hasNameIndex(ts *ovsdb.TableSchema) bool {
	for _, idx := range ts.Indexes {
		if len(idx) == 1 && idx[0] == "name" {
			return true
		}
	}
	return false
}

// New returns a Store writing through cli, whose database model dbModel must come from ClientDBModel.
func New(cli client.Client, dbModel model.ClientDBModel, schema ovsdb.DatabaseSchema, specs map[string]TableSpec) *Store {
	s := &Store{cli: cli, specs: specs, uniqueName: map[string]bool{}, root: map[string]bool{},
		refTable: map[string]map[string]string{}, types: map[reflect.Type]string{}}
	types := dbModel.Types()
	for table := range specs {
		s.tables = append(s.tables, table)
		s.types[types[table]] = table
		ts := schema.Table(table)
		if ts == nil {
			continue
		}
		s.uniqueName[table] = hasNameIndex(ts)
		s.root[table] = ts.IsRoot
		s.refTable[table] = map[string]string{}
		for col, cs := range ts.Columns {
			if cs.TypeObj == nil || cs.TypeObj.Key == nil {
				continue
			}
			if ref, err := cs.TypeObj.Key.RefTable(); err == nil && ref != "" {
				s.refTable[table][col] = ref
			}
		}
	}
	sort.Strings(s.tables)
	return s
}

// Txn collects the operations of one or more plans.
type Txn struct {
	Ops []ovsdb.Operation
	// created maps table/name of rows inserted by this Txn to their named UUID, so children planned
	// later in the same Txn can reference them.
	created map[string]string
}

// Len is the number of operations in the transaction.
func (t *Txn) Len() int { return len(t.Ops) }

func (t *Txn) add(ops ...ovsdb.Operation) { t.Ops = append(t.Ops, ops...) }

// Plan appends to txn the operations that make the rows owned by owner equal to desired: creates what
// is missing, updates only changed managed columns, and deletes owned rows that are not desired (and
// duplicates). Desired rows must list parents before their children.
func (s *Store) Plan(txn *Txn, owner string, desired []Row) error {
	if txn.created == nil {
		txn.created = map[string]string{}
	}
	owned, err := s.OwnedRows(owner)
	if err != nil {
		return err
	}
	// table -> name -> owned rows with that name, oldest UUID first so the choice is stable.
	byName := map[string]map[string][]model.Model{}
	for table, rows := range owned {
		byName[table] = map[string][]model.Model{}
		for _, uuid := range slices.Sorted(maps.Keys(rows)) {
			m := rows[uuid]
			n := stringColumn(m, "name")
			byName[table][n] = append(byName[table][n], m)
		}
	}

	var creates, updates []ovsdb.Operation
	keep := map[string]bool{} // UUIDs of owned rows that stay
	for _, row := range desired {
		table, err := s.tableOf(row.Model)
		if err != nil {
			return err
		}
		spec := s.specs[table]
		name := stringColumn(row.Model, "name")
		if row.ParentTable != "" && !s.root[table] {
			return fmt.Errorf("%s %q: only rows of root tables may name their own parent table", table, name)
		}
		if spec.NameOwned {
			ops, err := s.ensureNamed(txn, table, spec, name, row)
			if err != nil {
				return err
			}
			creates = append(creates, ops...)
			continue
		}
		if err := setOwner(row.Model, owner); err != nil {
			return err
		}
		if err := s.resolveRefs(txn, table, row); err != nil {
			return err
		}
		if existing := byName[table][name]; len(existing) > 0 {
			cur := existing[0]
			uuid := stringColumn(cur, "_uuid")
			keep[uuid] = true
			ops, err := s.update(table, spec, uuid, cur, row.Model)
			if err != nil {
				return err
			}
			updates = append(updates, ops...)
			if ps := parentSpec(spec, row); ps.ParentTable != "" && s.root[table] {
				// A root row outlives a lost reference (its group recreated, say): put it back.
				ops, err := s.ensureRef(txn, table, ps, name, uuid, row.Parent)
				if err != nil {
					return err
				}
				updates = append(updates, ops...)
			}
			continue
		}
		if err := s.checkConflict(table, name, owner); err != nil {
			return err
		}
		ops, err := s.create(txn, table, parentSpec(spec, row), name, row)
		if err != nil {
			return err
		}
		creates = append(creates, ops...)
	}

	var deletes []ovsdb.Operation
	for _, table := range s.tables {
		for _, uuid := range slices.Sorted(maps.Keys(owned[table])) {
			if keep[uuid] {
				continue
			}
			ops, err := s.delete(table, s.specs[table], uuid)
			if err != nil {
				return err
			}
			deletes = append(deletes, ops...)
		}
	}
	txn.add(creates...)
	txn.add(updates...)
	txn.add(deletes...)
	return nil
}

// OwnedRows returns the cached rows of every managed table that owner owns, by table and UUID.
func (s *Store) OwnedRows(owner string) (map[string]map[string]model.Model, error) {
	out := map[string]map[string]model.Model{}
	for _, table := range s.tables {
		if s.specs[table].NameOwned {
			continue
		}
		rows, err := s.lookup(table, "external_ids", map[string]string{OwnerKey: owner})
		if err != nil {
			return nil, err
		}
		if len(rows) > 0 {
			out[table] = rows
		}
	}
	return out, nil
}

// Owners returns every owner that has rows in the managed tables: the startup sync and the periodic
// resync use it to find rows whose object is gone. It scans the cache, so it is not for hot paths.
func (s *Store) Owners() (map[string]bool, error) {
	owners := map[string]bool{}
	for _, table := range s.tables {
		tc := s.cli.Cache().Table(table)
		if tc == nil {
			continue
		}
		for _, m := range tc.Rows() {
			if o := externalIDs(m)[OwnerKey]; o != "" {
				owners[o] = true
			}
		}
	}
	return owners, nil
}

// lookup finds cached rows of table whose column equals value, through a schema or client index.
func (s *Store) lookup(table, column string, value any) (map[string]model.Model, error) {
	tc := s.cli.Cache().Table(table)
	if tc == nil {
		return nil, nil
	}
	probe, err := s.cli.Cache().DatabaseModel().NewModel(table)
	if err != nil {
		return nil, fmt.Errorf("new %s model: %w", table, err)
	}
	p, err := fieldPtr(probe, column)
	if err != nil {
		return nil, err
	}
	setField(p, value)
	rows, err := tc.RowsByModels([]model.Model{probe})
	if err != nil {
		return nil, fmt.Errorf("look up %s by %s: %w", table, column, err)
	}
	// RowsByModels falls back to other indexes when the probed one has no hit; keep exact matches.
	for uuid, m := range rows {
		v, _ := columnValue(m, column)
		if column == "external_ids" {
			want := value.(map[string]string)
			if externalIDs(m)[OwnerKey] != want[OwnerKey] {
				delete(rows, uuid)
			}
			continue
		}
		if !equalColumn(v, value) {
			delete(rows, uuid)
		}
	}
	return rows, nil
}

func (s *Store) tableOf(m model.Model) (string, error) {
	if table, ok := s.types[reflect.TypeOf(m)]; ok {
		return table, nil
	}
	return "", fmt.Errorf("%T is not a model of a managed table", m)
}

func (s *Store) checkConflict(table, name, owner string) error {
	rows, err := s.lookup(table, "name", name)
	if err != nil {
		return err
	}
	for _, m := range rows {
		return &ConflictError{Table: table, Name: name, Owner: ownerOf(m, owner)}
	}
	return nil
}

func ownerOf(m model.Model, self string) string {
	o := externalIDs(m)[OwnerKey]
	if o == self {
		return ""
	}
	return o
}

func (s *Store) create(txn *Txn, table string, spec TableSpec, name string, row Row) ([]ovsdb.Operation, error) {
	named := fmt.Sprintf("dl%d", s.named.Add(1))
	if err := setUUID(row.Model, named); err != nil {
		return nil, err
	}
	var ops []ovsdb.Operation
	if !s.uniqueName[table] && !spec.NoInsertGuard {
		// Insert only if nobody created a row of that name since our cache was read: the wait fails at
		// once when the rows named so are exactly one. (An empty "rows" cannot be sent: libovsdb omits it.)
		timeout := 0
		ops = append(ops, ovsdb.Operation{
			Op: ovsdb.OperationWait, Table: table, Timeout: &timeout,
			Where:   []ovsdb.Condition{{Column: "name", Function: ovsdb.ConditionEqual, Value: name}},
			Columns: []string{"name"}, Until: string(ovsdb.WaitConditionNotEqual), Rows: []ovsdb.Row{{"name": name}},
		})
	}
	ins, err := s.cli.Create(row.Model)
	if err != nil {
		return nil, fmt.Errorf("create %s %q: %w", table, name, err)
	}
	ops = append(ops, ins...)
	txn.created[table+"/"+name] = named

	if spec.ParentTable != "" {
		if row.Parent == nil {
			return nil, fmt.Errorf("%s %q needs a parent %s", table, name, spec.ParentTable)
		}
		parentUUID, _, err := s.findOwned(txn, spec.ParentTable, *row.Parent)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", table, name, err)
		}
		ops = append(ops, insertRef(spec, parentUUID, named))
	}
	return ops, nil
}

func (s *Store) update(table string, spec TableSpec, uuid string, cur, want model.Model) ([]ovsdb.Operation, error) {
	var fields []any
	for _, col := range spec.Columns {
		a, err := columnValue(cur, col)
		if err != nil {
			return nil, err
		}
		b, err := columnValue(want, col)
		if err != nil {
			return nil, err
		}
		if !equalColumn(a, b) {
			p, _ := fieldPtr(want, col)
			fields = append(fields, p)
		}
	}
	if len(fields) == 0 {
		return nil, nil
	}
	if err := setUUID(want, uuid); err != nil {
		return nil, err
	}
	ops, err := s.cli.Where(want).Update(want, fields...)
	if err != nil {
		return nil, fmt.Errorf("update %s %s: %w", table, uuid, err)
	}
	return ops, nil
}

func (s *Store) delete(table string, spec TableSpec, uuid string) ([]ovsdb.Operation, error) {
	ref := ovsdb.OvsSet{GoSet: []any{ovsdb.UUID{GoUUID: uuid}}}
	if spec.ParentTable != "" && !s.root[table] {
		// Dropping the reference lets the server garbage-collect the row, wherever it hangs.
		return []ovsdb.Operation{{
			Op: ovsdb.OperationMutate, Table: spec.ParentTable,
			Where:     []ovsdb.Condition{{Column: spec.ParentColumn, Function: ovsdb.ConditionIncludes, Value: ref}},
			Mutations: []ovsdb.Mutation{{Column: spec.ParentColumn, Mutator: ovsdb.MutateOperationDelete, Value: ref}},
		}}, nil
	}
	return []ovsdb.Operation{{
		Op: ovsdb.OperationDelete, Table: table,
		Where: []ovsdb.Condition{{Column: "_uuid", Function: ovsdb.ConditionEqual, Value: ovsdb.UUID{GoUUID: uuid}}},
	}}, nil
}

func setOwner(m model.Model, owner string) error {
	p, err := fieldPtr(m, "external_ids")
	if err != nil {
		return err
	}
	ids := p.(*map[string]string)
	c := maps.Clone(*ids)
	if c == nil {
		c = map[string]string{}
	}
	c[OwnerKey] = owner
	*ids = c
	return nil
}

func setUUID(m model.Model, uuid string) error {
	p, err := fieldPtr(m, "_uuid")
	if err != nil {
		return err
	}
	*(p.(*string)) = uuid
	return nil
}
