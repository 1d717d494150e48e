package nbstore

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/mapper"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// ErrParentMissing is returned (wrapped) by Plan when a row a desired row refers to is not in the cache
// yet, for example a pod whose node switch has not been written: the caller retries later.
var ErrParentMissing = errors.New("referenced row not found")

// ConflictError says a row or map key Dunlin wants to create is already taken by a row it does not own
// (Owner is empty) or by another owner.
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
	// Columns are the columns Dunlin sets, replaced as a whole when they differ. Others (a switch's
	// ports, say) are never overwritten.
	Columns []string
	// MemberColumns are set or map columns changed element by element (mutate insert/delete), so that one
	// member more or less costs one small operation whatever the size of the set (an address set's
	// addresses, a port group's ports).
	MemberColumns []string
	// ParentTable and ParentColumn are the default parent of a row: the set column of another row that
	// references it. A row of a non-root table without one is held through another row's Refs (a
	// meter's bands): it is created before that row and goes with it.
	ParentTable, ParentColumn string
	// Keyed tables have no name column: a row is identified within its owner by Row.ID, stored in
	// external_ids[IDKey] and indexed in the client together with the owner.
	Keyed bool
	// NameOwned is for tables without external_ids (Load_Balancer_Group): a row is Dunlin's by its
	// reserved, schema-unique name. Such rows are created when missing and never deleted.
	NameOwned bool
	// EntryColumns are map columns in which owners other than the row's own hold keys (Entries).
	EntryColumns []string
}

// Store plans the operations that bring the rows of one owner to their desired state.
type Store struct {
	cli     client.Client
	dbModel model.DatabaseModel
	specs   map[string]TableSpec
	tables  []string // specs' tables, ordered so that plans are deterministic
	types   map[reflect.Type]string
	// uniqueName is true for tables whose schema indexes "name", so the server rejects duplicates.
	uniqueName map[string]bool
	root       map[string]bool
	// refTable is, per table and column, the table a UUID column references.
	refTable map[string]map[string]string
	named    atomic.Uint64

	entriesMu sync.Mutex
	// entryTargets are, per owner, the rows ("table/uuid") where it may hold Entries: what it planned, and
	// what the last full scan (Owners) found. Plans re-read the rows, so a stale target costs a lookup.
	entryTargets map[string]map[string]bool
}

// ClientDBModel returns the database model with the client indexes Store relies on: the owner external_id
// in every managed table, owner and ID together in Keyed tables, and name where the schema has no such
// index.
func ClientDBModel(base model.ClientDBModel, schema ovsdb.DatabaseSchema, specs map[string]TableSpec) (model.ClientDBModel, error) {
	indexes := map[string][]model.ClientIndex{}
	for table, spec := range specs {
		ts := schema.Table(table)
		if ts == nil {
			return model.ClientDBModel{}, fmt.Errorf("table %s is not in schema %s", table, schema.Name)
		}
		var idx []model.ClientIndex
		if !spec.NameOwned {
			owner := model.ColumnKey{Column: "external_ids", Key: OwnerKey}
			// The cache tries indexes in order and stops at the first hit: the more precise one first.
			if spec.Keyed {
				idx = append(idx, model.ClientIndex{Columns: []model.ColumnKey{owner, {Column: "external_ids", Key: IDKey}}})
			}
			idx = append(idx, model.ClientIndex{Columns: []model.ColumnKey{owner}})
		}
		if !spec.Keyed && !hasNameIndex(ts) {
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
func New(cli client.Client, dbModel model.ClientDBModel, schema ovsdb.DatabaseSchema, specs map[string]TableSpec) (*Store, error) {
	full, errs := model.NewDatabaseModel(schema, dbModel)
	if len(errs) > 0 {
		return nil, fmt.Errorf("NB database model: %w", errors.Join(errs...))
	}
	s := &Store{cli: cli, dbModel: full, specs: specs, uniqueName: map[string]bool{}, root: map[string]bool{},
		refTable: map[string]map[string]string{}, types: map[reflect.Type]string{}}
	types := dbModel.Types()
	for table, spec := range specs {
		ts := schema.Table(table)
		if ts == nil {
			return nil, fmt.Errorf("table %s is not in schema %s", table, schema.Name)
		}
		if err := checkSpec(table, spec, ts); err != nil {
			return nil, err
		}
		s.tables = append(s.tables, table)
		s.types[types[table]] = table
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
	return s, nil
}

// checkSpec catches specs the store cannot honour, at start rather than at the first plan.
func checkSpec(table string, spec TableSpec, ts *ovsdb.TableSchema) error {
	for _, col := range append(slices.Clone(spec.Columns), spec.MemberColumns...) {
		if ts.Column(col) == nil {
			return fmt.Errorf("table %s has no column %q", table, col)
		}
	}
	for _, col := range spec.MemberColumns {
		if slices.Contains(spec.Columns, col) {
			return fmt.Errorf("table %s: column %q is both replaced and mutated", table, col)
		}
		if t := ts.Column(col).Type; t != ovsdb.TypeSet && t != ovsdb.TypeMap {
			return fmt.Errorf("table %s: member column %q is not a set or map", table, col)
		}
	}
	for _, col := range spec.EntryColumns {
		if c := ts.Column(col); c == nil || c.Type != ovsdb.TypeMap {
			return fmt.Errorf("table %s: entry column %q is not a map", table, col)
		}
		if slices.Contains(spec.Columns, col) || slices.Contains(spec.MemberColumns, col) {
			return fmt.Errorf("table %s: entry column %q cannot also be managed by the row's owner", table, col)
		}
	}
	if spec.Keyed && ts.Column("external_ids") == nil {
		return fmt.Errorf("table %s: a Keyed table needs external_ids", table)
	}
	return nil
}

// info wraps m with libovsdb's mapper information, through which every column is read and written.
func (s *Store) info(m model.Model) (*mapper.Info, error) {
	info, err := s.dbModel.NewModelInfo(m)
	if err != nil {
		return nil, fmt.Errorf("%T: %w", m, err)
	}
	return info, nil
}

// fieldPtr is a pointer to the field of column, for libovsdb calls that name columns by field.
func fieldPtr(info *mapper.Info, column string) (any, error) {
	name, ok := info.Metadata.Fields[column]
	if !ok {
		return nil, fmt.Errorf("%s has no column %q", info.Metadata.TableName, column)
	}
	return reflect.ValueOf(info.Obj).Elem().FieldByName(name).Addr().Interface(), nil
}

// column returns the value of column in m, or nil when m has no such column.
func (s *Store) column(m model.Model, column string) any {
	info, err := s.info(m)
	if err != nil {
		return nil
	}
	v, err := info.FieldByColumn(column)
	if err != nil {
		return nil
	}
	return v
}

func (s *Store) stringColumn(m model.Model, column string) string {
	v, _ := s.column(m, column).(string)
	return v
}

func (s *Store) externalIDs(m model.Model) map[string]string {
	v, _ := s.column(m, "external_ids").(map[string]string)
	return v
}

func (s *Store) tableOf(m model.Model) (string, error) {
	if table, ok := s.types[reflect.TypeOf(m)]; ok {
		return table, nil
	}
	return "", fmt.Errorf("%T is not a model of a managed table", m)
}

// identity is what identifies a row among its owner's rows of table.
func (s *Store) identity(table string, m model.Model) string {
	if s.specs[table].Keyed {
		return s.externalIDs(m)[IDKey]
	}
	return s.stringColumn(m, "name")
}
