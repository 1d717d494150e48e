package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/mapper"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// A sync counts as complete when NB holds exactly the rows it should, column for column, not when a
// row count is reached. The expected rows come from the translator's pure mapping functions, and the
// columns compared are the ones the translator manages (translator.TableSpecs), so a column the
// mapping gains is checked without changing the benchmarks.

// nbRows is the NB content a benchmark expects, by table and row identity (see identity).
type nbRows struct {
	db    model.DatabaseModel
	specs map[string]nbstore.TableSpec
	rows  map[string]map[string]*wantRow
	// byOwner holds each owner's rows in the order the mapping gave them.
	byOwner map[string][]*wantRow
	// counts says which owners' rows of the expected tables are compared; rows of other owners are
	// ignored (nil: every row counts). Rows of tables without external_ids always count.
	counts func(owner string) bool
}

// wantRow is one expected row: its model as the mapping gives it, with the owner the store adds.
type wantRow struct {
	table   string
	info    *mapper.Info
	parents []parentRef
	refs    map[string][]string // reference column -> names of the rows it points to
}

// parentRef is the row whose column must hold a child's UUID.
type parentRef struct{ table, column, name string }

func newNBRows(db model.DatabaseModel, counts func(owner string) bool) *nbRows {
	return &nbRows{db: db, specs: translator.TableSpecs(), rows: map[string]map[string]*wantRow{},
		byOwner: map[string][]*wantRow{}, counts: counts}
}

// add expects the rows of one owner, as a translator mapping function returns them.
func (w *nbRows) add(owner string, rows []nbstore.Row) error {
	for _, r := range rows {
		table := w.db.FindTable(reflect.TypeOf(r.Model))
		spec, ok := w.specs[table]
		if !ok {
			return fmt.Errorf("%T is not in a table the translator manages", r.Model)
		}
		info, err := w.db.NewModelInfo(r.Model)
		if err != nil {
			return fmt.Errorf("model info of %T: %w", r.Model, err)
		}
		if w.db.Schema.Table(table).Column("external_ids") != nil {
			ids, err := info.FieldByColumn("external_ids")
			if err != nil {
				return fmt.Errorf("%s of %s: %w", table, owner, err)
			}
			withOwner := maps.Clone(ids.(map[string]string))
			if withOwner == nil {
				withOwner = map[string]string{}
			}
			withOwner[nbstore.OwnerKey] = owner
			if spec.Keyed {
				withOwner[nbstore.IDKey] = r.ID
			}
			if err := info.SetField("external_ids", withOwner); err != nil {
				return fmt.Errorf("%s of %s: %w", table, owner, err)
			}
		}
		name, err := w.identity(table, info)
		if err != nil {
			return err
		}
		row := &wantRow{table: table, info: info, refs: map[string][]string{}}
		for _, p := range r.Parents {
			pt, pc := p.Table, p.Column
			if pt == "" {
				pt, pc = spec.ParentTable, spec.ParentColumn
			}
			row.parents = append(row.parents, parentRef{table: pt, column: pc, name: p.Name})
		}
		for col, refs := range r.Refs {
			keyed := w.specs[refTableOf(w.db.Schema.Table(table).Column(col))].Keyed
			for _, ref := range refs {
				if keyed {
					row.refs[col] = append(row.refs[col], keyedIdentity(ref.Owner, ref.Name))
				} else {
					row.refs[col] = append(row.refs[col], ref.Name)
				}
			}
		}
		if w.rows[table] == nil {
			w.rows[table] = map[string]*wantRow{}
		}
		if _, dup := w.rows[table][name]; dup {
			return fmt.Errorf("%s %s expected twice", table, name)
		}
		w.rows[table][name] = row
		w.byOwner[owner] = append(w.byOwner[owner], row)
	}
	return nil
}

// identity is what identifies a row of table: its name, or in a Keyed table (ACL, Meter_Band: rows
// without a name) its owner and ID, as the store identifies them.
func (w *nbRows) identity(table string, info *mapper.Info) (string, error) {
	if !w.specs[table].Keyed {
		return stringField(info, "name")
	}
	v, err := info.FieldByColumn("external_ids")
	if err != nil {
		return "", fmt.Errorf("%s: %w", table, err)
	}
	ids, _ := v.(map[string]string)
	return keyedIdentity(ids[nbstore.OwnerKey], ids[nbstore.IDKey]), nil
}

func keyedIdentity(owner, id string) string { return owner + " " + id }

// models returns a copy of the expected rows of owner (with the owner in external_ids), in the
// mapping's order, for the writers of the floors.
func (w *nbRows) models(owner string) []model.Model {
	var out []model.Model
	for _, r := range w.byOwner[owner] {
		out = append(out, model.Clone(r.info.Obj.(model.Model)))
	}
	return out
}

// count is how many rows of table are expected.
func (w *nbRows) count(table string) int { return len(w.rows[table]) }

// total is how many rows are expected.
func (w *nbRows) total() int {
	n := 0
	for _, rows := range w.rows {
		n += len(rows)
	}
	return n
}

// tableReader returns every row of a table, by UUID. The models must not be modified.
type tableReader func(table string) (map[string]model.Model, error)

// cacheReader reads tables from the cache of a monitoring client.
func cacheReader(nb client.Client) tableReader {
	return func(table string) (map[string]model.Model, error) {
		tc := nb.Cache().Table(table)
		if tc == nil {
			return nil, fmt.Errorf("table %s is not in the client's cache", table)
		}
		return tc.RowsShallow(), nil
	}
}

// selectReader reads the tables in selected with one select each, through nb, and the others from
// nb's cache: for tables that are too costly to monitor (a Load_Balancer_Group holding 5,000 UUIDs is
// re-read by the client on every change).
func selectReader(nb client.Client, selected ...string) tableReader {
	fromCache := cacheReader(nb)
	return func(table string) (map[string]model.Model, error) {
		if !slices.Contains(selected, table) {
			return fromCache(table)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		op := ovsdb.Operation{Op: ovsdb.OperationSelect, Table: table, Where: []ovsdb.Condition{}}
		res, err := nb.Transact(ctx, op)
		if err == nil {
			_, err = ovsdb.CheckOperationResults(res, []ovsdb.Operation{op})
		}
		if err != nil {
			return nil, fmt.Errorf("select %s: %w", table, err)
		}
		db := nb.Cache().DatabaseModel()
		out := make(map[string]model.Model, len(res[0].Rows))
		for i := range res[0].Rows {
			m, err := db.NewModel(table)
			if err != nil {
				return nil, err
			}
			info, err := db.NewModelInfo(m)
			if err != nil {
				return nil, err
			}
			row := res[0].Rows[i]
			if err := db.Mapper.GetRowData(&row, info); err != nil {
				return nil, fmt.Errorf("row of %s: %w", table, err)
			}
			// The mapper leaves _uuid out: it is not a column of the schema.
			uuid, ok := row["_uuid"].(ovsdb.UUID)
			if !ok {
				return nil, fmt.Errorf("row of %s without _uuid", table)
			}
			if err := info.SetField("_uuid", uuid.GoUUID); err != nil {
				return nil, err
			}
			out[uuid.GoUUID] = m
		}
		return out, nil
	}
}

// nbTable is one table as read for a comparison.
type nbTable struct {
	byUUID map[string]*mapper.Info
	byName map[string][]string // identity -> UUIDs (more than one is a mismatch)
}

// diff returns nil when NB, as read, holds exactly the expected rows among those it counts, with the
// expected value in every managed column, in the expected parent and pointing at the expected rows;
// otherwise an error naming the first differences.
func (w *nbRows) diff(read tableReader) error {
	tables := map[string]*nbTable{}
	get := func(table string) (*nbTable, error) {
		if t, ok := tables[table]; ok {
			return t, nil
		}
		rows, err := read(table)
		if err != nil {
			return nil, err
		}
		t := &nbTable{byUUID: make(map[string]*mapper.Info, len(rows)), byName: make(map[string][]string, len(rows))}
		for uuid, m := range rows {
			info, err := w.db.NewModelInfo(m)
			if err != nil {
				return nil, err
			}
			t.byUUID[uuid] = info
			if name, err := w.identity(table, info); err == nil {
				t.byName[name] = append(t.byName[name], uuid)
			}
		}
		tables[table] = t
		return t, nil
	}
	var problems []string
	report := func(format string, args ...any) bool {
		problems = append(problems, fmt.Sprintf(format, args...))
		return len(problems) < 10
	}
	for _, table := range slices.Sorted(maps.Keys(w.rows)) {
		want := w.rows[table]
		got, err := get(table)
		if err != nil {
			return err
		}
		hasOwner := w.db.Schema.Table(table).Column("external_ids") != nil
		for _, uuid := range slices.Sorted(maps.Keys(got.byUUID)) {
			info := got.byUUID[uuid]
			name, _ := w.identity(table, info)
			if hasOwner && w.counts != nil {
				ids, _ := info.FieldByColumn("external_ids")
				if !w.counts(ids.(map[string]string)[nbstore.OwnerKey]) {
					continue
				}
			}
			if _, ok := want[name]; !ok && !report("%s %q is not expected", table, name) {
				return errors.New(joinProblems(problems))
			}
		}
		for _, name := range slices.Sorted(maps.Keys(want)) {
			row := want[name]
			uuids := got.byName[name]
			if len(uuids) != 1 {
				if !report("%s %q: %d rows, want 1", table, name, len(uuids)) {
					return errors.New(joinProblems(problems))
				}
				continue
			}
			problem, err := w.rowDiff(table, uuids[0], got.byUUID[uuids[0]], row, get)
			if err != nil {
				return err
			}
			if problem != "" && !report("%s %q: %s", table, name, problem) {
				return errors.New(joinProblems(problems))
			}
		}
	}
	if len(problems) > 0 {
		return errors.New(joinProblems(problems))
	}
	return nil
}

// rowDiff compares one row with its expectation and returns what differs, "" when nothing does.
func (w *nbRows) rowDiff(table, uuid string, got *mapper.Info, want *wantRow, get func(string) (*nbTable, error)) (string, error) {
	schema := w.db.Schema.Table(table)
	spec := w.specs[table]
	// Member columns (a port group's ports, an address set's addresses) are compared whole.
	for _, col := range append(slices.Clone(spec.Columns), spec.MemberColumns...) {
		g, err := got.FieldByColumn(col)
		if err != nil {
			return "", err
		}
		if refTable := refTableOf(schema.Column(col)); refTable != "" {
			refs, err := get(refTable)
			if err != nil {
				return "", err
			}
			var names []string
			for _, u := range stringsOf(reflect.ValueOf(g)) {
				if info, ok := refs.byUUID[u]; ok {
					name, _ := w.identity(refTable, info)
					names = append(names, name)
				} else {
					names = append(names, "missing row "+u)
				}
			}
			if !sameSet(names, want.refs[col]) {
				return fmt.Sprintf("%s points to %q, want %q", col, names, want.refs[col]), nil
			}
			continue
		}
		wv, err := want.info.FieldByColumn(col)
		if err != nil {
			return "", err
		}
		if !equalColumn(g, wv) {
			return fmt.Sprintf("%s is %v, want %v", col, g, wv), nil
		}
	}
	for _, p := range want.parents {
		parents, err := get(p.table)
		if err != nil {
			return "", err
		}
		pu := parents.byName[p.name]
		if len(pu) != 1 {
			return fmt.Sprintf("parent %s %q: %d rows, want 1", p.table, p.name, len(pu)), nil
		}
		children, err := parents.byUUID[pu[0]].FieldByColumn(p.column)
		if err != nil {
			return "", err
		}
		if !slices.Contains(stringsOf(reflect.ValueOf(children)), uuid) {
			return fmt.Sprintf("not in %s of %s %q", p.column, p.table, p.name), nil
		}
	}
	return "", nil
}

func refTableOf(c *ovsdb.ColumnSchema) string {
	if c == nil || c.TypeObj == nil || c.TypeObj.Key == nil || c.TypeObj.Key.Type != ovsdb.TypeUUID {
		return ""
	}
	t, _ := c.TypeObj.Key.RefTable()
	return t
}

// equalColumn compares OVSDB column values: sets without regard to order, maps and sets with nil
// equal to empty, everything else exactly.
func equalColumn(a, b any) bool {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	if va.Kind() != vb.Kind() {
		return false
	}
	switch va.Kind() {
	case reflect.Slice:
		return sameSet(stringsOf(va), stringsOf(vb))
	case reflect.Map:
		if va.Len() != vb.Len() {
			return false
		}
		for _, k := range va.MapKeys() {
			v := vb.MapIndex(k)
			if !v.IsValid() || !reflect.DeepEqual(va.MapIndex(k).Interface(), v.Interface()) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(a, b)
	}
}

func stringsOf(v reflect.Value) []string {
	if v.Kind() != reflect.Slice {
		return nil
	}
	out := make([]string, v.Len())
	for i := range out {
		out[i] = fmt.Sprint(v.Index(i).Interface())
	}
	return out
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	sort.Strings(a)
	sort.Strings(b)
	return slices.Equal(a, b)
}

func stringField(info *mapper.Info, column string) (string, error) {
	v, err := info.FieldByColumn(column)
	if err != nil {
		return "", err
	}
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("column %s is %T, not a string", column, v)
	}
	return s, nil
}

func joinProblems(p []string) string {
	s := fmt.Sprintf("%d differences", len(p))
	if len(p) >= 10 {
		s = "10 or more differences"
	}
	for _, x := range p {
		s += "\n  " + x
	}
	return s
}

// changeClock remembers when a watching client last saw NB change.
type changeClock struct{ last atomic.Int64 }

func (c *changeClock) touch() { c.last.Store(time.Now().UnixNano()) }

// settled returns the last change once no change has been seen for a while. The cache hands events
// to handlers after it has applied them: a comparison may see rows whose events are still queued.
func (c *changeClock) settled() time.Time {
	last := c.last.Load()
	for {
		time.Sleep(100 * time.Millisecond)
		now := c.last.Load()
		if now == last {
			return time.Unix(0, now)
		}
		last = now
	}
}

// syncDone describes how to tell that a sync is complete: count, a cheap poll, must reach atLeast;
// then content, the full comparison, must succeed. clock is the watcher's last change.
type syncDone struct {
	what    string
	count   func() int
	atLeast int
	content func() error
	clock   *changeClock
	// alive, if set, says whether the writer still runs.
	alive func() bool
	// quiet leaves out the log line of how many comparisons it took (benchmark logs keep 10 lines).
	quiet bool
}

// wait returns when NB's content became what it should be: the time of the last change the watcher
// saw before a comparison that found nothing to report. It polls the count first, so that the full
// comparison runs only at the end, and fails the benchmark after timeout.
func (d syncDone) wait(b testing.TB, timeout time.Duration) time.Time {
	deadline := time.Now().Add(timeout)
	check := func(state string) {
		if d.alive != nil && !d.alive() {
			b.Fatalf("%s: the writer exited before NB was complete (%s)", d.what, state)
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: NB not complete after %s: %s", d.what, timeout, state)
		}
	}
	for n := d.count(); n < d.atLeast; n = d.count() {
		check(fmt.Sprintf("%d of %d rows", n, d.atLeast))
		time.Sleep(5 * time.Millisecond)
	}
	checks := 0
	for {
		checks++
		err := d.content()
		if err == nil {
			if checks > 1 && !d.quiet {
				b.Logf("%s: content matched at comparison %d", d.what, checks)
			}
			return d.clock.settled()
		}
		check(err.Error())
		time.Sleep(50 * time.Millisecond)
	}
}
