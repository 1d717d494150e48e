package nbstore

import "strings"

// Owners returns every owner that has rows, or Entries, in the managed tables: the startup sync and the
// periodic resync use it to find what belongs to objects that are gone. It scans the cache, so it is not
// for hot paths; it also refreshes what the store knows of Entries.
func (s *Store) Owners() (map[string]bool, error) {
	owners := map[string]bool{}
	for _, table := range s.tables {
		tc := s.cli.Cache().Table(table)
		if tc == nil {
			continue
		}
		for _, m := range tc.RowsShallow() {
			for k, v := range s.externalIDs(m) {
				switch {
				case k == OwnerKey:
					owners[v] = true
				case strings.HasPrefix(k, entriesKeyPrefix):
					_, owner, _ := strings.Cut(strings.TrimPrefix(k, entriesKeyPrefix), ":")
					owners[owner] = true
				}
			}
		}
	}
	s.entriesMu.Lock()
	if s.entryTargets == nil {
		s.entryTargets = map[string]map[string]bool{}
	}
	s.scanEntryTargets()
	s.entriesMu.Unlock()
	return owners, nil
}
