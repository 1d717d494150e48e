package nbstore

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
)

// Entries: keys of a map column that an owner holds in a row that may belong to another owner. Which
// keys an owner holds is recorded in the row itself (external_ids "dunlin.io/entries:<column>:<owner>"),
// changed in the same operation as the keys, so a restart or another replica knows exactly what to
// remove, and keys of nobody are never touched.

func entriesRecordKey(column, owner string) string { return entriesKeyPrefix + column + ":" + owner }

// entryTarget is one row where the planning owner holds or wants keys.
type entryTarget struct {
	table, uuid string
	row         model.Model // nil when created in this transaction
	want        map[string]map[string]string
}

func (s *Store) planEntries(txn, ops *Txn, owner string, want []Entries) error {
	targets := map[string]*entryTarget{}
	for _, e := range want {
		if !slices.Contains(s.specs[e.Table].EntryColumns, e.Column) {
			return fmt.Errorf("%s.%s is not an entry column", e.Table, e.Column)
		}
		uuid, row, err := s.findOwned(txn, e.Table, e.Target)
		if err != nil {
			return fmt.Errorf("entries of %s in %s.%s: %w", owner, e.Table, e.Column, err)
		}
		k := e.Table + "/" + uuid
		t := targets[k]
		if t == nil {
			t = &entryTarget{table: e.Table, uuid: uuid, row: row, want: map[string]map[string]string{}}
			targets[k] = t
		}
		if t.want[e.Column] == nil {
			t.want[e.Column] = map[string]string{}
		}
		maps.Copy(t.want[e.Column], e.Values)
	}
	known := s.knownEntryTargets(owner)
	for k := range known {
		if targets[k] != nil {
			continue
		}
		table, uuid, _ := strings.Cut(k, "/")
		tc := s.cli.Cache().Table(table)
		if tc == nil {
			continue
		}
		if row := tc.Row(uuid); row != nil {
			targets[k] = &entryTarget{table: table, uuid: uuid, row: row, want: map[string]map[string]string{}}
		}
	}
	next := map[string]bool{}
	for _, k := range slices.Sorted(maps.Keys(targets)) {
		t := targets[k]
		changed, err := s.entryOps(ops, owner, t)
		if err != nil {
			return err
		}
		// Keep a target known while it holds keys, or until the removal just planned is seen done.
		if len(t.want) > 0 || changed {
			next[k] = true
		}
	}
	s.entriesMu.Lock()
	if len(next) == 0 {
		delete(s.entryTargets, owner)
	} else {
		if s.entryTargets == nil {
			s.entryTargets = map[string]map[string]bool{}
		}
		s.entryTargets[owner] = next
	}
	s.entriesMu.Unlock()
	return nil
}

func (s *Store) knownEntryTargets(owner string) map[string]bool {
	s.entriesMu.Lock()
	defer s.entriesMu.Unlock()
	if s.entryTargets == nil {
		s.entryTargets = map[string]map[string]bool{}
		s.scanEntryTargets()
	}
	return maps.Clone(s.entryTargets[owner])
}

// scanEntryTargets rebuilds entryTargets from the records in the cache. Callers hold entriesMu.
func (s *Store) scanEntryTargets() {
	clear(s.entryTargets)
	for _, table := range s.tables {
		if len(s.specs[table].EntryColumns) == 0 {
			continue
		}
		tc := s.cli.Cache().Table(table)
		if tc == nil {
			continue
		}
		for uuid, m := range tc.RowsShallow() {
			for key := range s.externalIDs(m) {
				if !strings.HasPrefix(key, entriesKeyPrefix) {
					continue
				}
				_, owner, _ := strings.Cut(strings.TrimPrefix(key, entriesKeyPrefix), ":")
				if s.entryTargets[owner] == nil {
					s.entryTargets[owner] = map[string]bool{}
				}
				s.entryTargets[owner][table+"/"+uuid] = true
			}
		}
	}
}

// entryOps plans one mutation of a target row that makes the owner's keys in each entry column equal
// to what it wants, with the record of them. It reports whether it wrote anything.
func (s *Store) entryOps(ops *Txn, owner string, t *entryTarget) (bool, error) {
	m, info, err := s.probe(t.table, "external_ids")
	if err != nil {
		return false, err
	}
	var ids map[string]string
	if t.row != nil {
		ids = s.externalIDs(t.row)
	}
	var mutations []model.Mutation
	for _, col := range slices.Sorted(slices.Values(s.specs[t.table].EntryColumns)) {
		rk := entriesRecordKey(col, owner)
		var held []string
		if r := ids[rk]; r != "" {
			held = strings.Split(r, ",")
		}
		want := t.want[col]
		if len(held) == 0 && len(want) == 0 {
			continue
		}
		var cur map[string]string
		if t.row != nil {
			cur, _ = s.column(t.row, col).(map[string]string)
		}
		var del []string
		ins := map[string]string{}
		for _, k := range held {
			if v, ok := want[k]; !ok || cur[k] != v {
				if _, present := cur[k]; present {
					del = append(del, k)
				}
			}
		}
		for _, k := range slices.Sorted(maps.Keys(want)) {
			v, present := cur[k]
			if present && !slices.Contains(held, k) {
				// Someone else's key, even with the same value: taking it over would later delete it.
				return false, &ConflictError{Table: t.table, Name: col + ":" + k, Owner: s.entryHolder(ids, col, k)}
			}
			if present && v == want[k] {
				continue
			}
			if present {
				del = append(del, k)
			}
			ins[k] = want[k]
		}
		record := strings.Join(slices.Sorted(maps.Keys(want)), ",")
		p, _ := fieldPtr(info, col)
		if len(del) > 0 {
			slices.Sort(del)
			del = slices.Compact(del)
			mutations = append(mutations, model.Mutation{Field: p, Mutator: ovsdb.MutateOperationDelete, Value: del})
		}
		if len(ins) > 0 {
			mutations = append(mutations, model.Mutation{Field: p, Mutator: ovsdb.MutateOperationInsert, Value: ins})
		}
		if record != ids[rk] {
			ep, _ := fieldPtr(info, "external_ids")
			if _, had := ids[rk]; had {
				mutations = append(mutations, model.Mutation{Field: ep, Mutator: ovsdb.MutateOperationDelete, Value: []string{rk}})
			}
			if record != "" {
				mutations = append(mutations, model.Mutation{Field: ep, Mutator: ovsdb.MutateOperationInsert, Value: map[string]string{rk: record}})
			}
		}
	}
	if len(mutations) == 0 {
		return false, nil
	}
	if err := info.SetField("_uuid", t.uuid); err != nil {
		return false, err
	}
	mut, err := s.mutateOp(t.table, uuidIs(t.uuid), m, mutations...)
	if err != nil {
		return false, fmt.Errorf("entries of %s in %s %s: %w", owner, t.table, t.uuid, err)
	}
	ops.add(one, mut)
	return true, nil
}

// entryHolder names the owner whose record lists key of column, or "" when nobody's does.
func (s *Store) entryHolder(ids map[string]string, column, key string) string {
	prefix := entriesKeyPrefix + column + ":"
	for rk, v := range ids {
		if strings.HasPrefix(rk, prefix) && slices.Contains(strings.Split(v, ","), key) {
			return strings.TrimPrefix(rk, prefix)
		}
	}
	return ""
}

// withEntryRecords is want plus the entry records of cur.
func withEntryRecords(cur, want map[string]string) map[string]string {
	out := maps.Clone(want)
	for k, v := range cur {
		if strings.HasPrefix(k, entriesKeyPrefix) {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}
