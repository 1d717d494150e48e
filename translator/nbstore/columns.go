package nbstore

import (
	"reflect"
	"slices"
)

// equalColumn compares two column values the way OVSDB does: a nil and an empty set or map are equal,
// sets are unordered, and optional values compare by what they point to.
func equalColumn(a, b any) bool {
	ra, rb := reflect.ValueOf(a), reflect.ValueOf(b)
	if !ra.IsValid() || !rb.IsValid() {
		return ra.IsValid() == rb.IsValid()
	}
	switch ra.Kind() {
	case reflect.Slice:
		if rb.Kind() != reflect.Slice || ra.Len() != rb.Len() {
			return false
		}
		return len(setDiff(ra, rb)) == 0
	case reflect.Map:
		if rb.Kind() != reflect.Map || ra.Len() != rb.Len() {
			return false
		}
		for _, k := range ra.MapKeys() {
			bv := rb.MapIndex(k)
			if !bv.IsValid() || !reflect.DeepEqual(ra.MapIndex(k).Interface(), bv.Interface()) {
				return false
			}
		}
		return true
	case reflect.Pointer:
		if rb.Kind() != reflect.Pointer || ra.IsNil() || rb.IsNil() {
			return rb.Kind() == reflect.Pointer && ra.IsNil() == rb.IsNil()
		}
		return reflect.DeepEqual(ra.Elem().Interface(), rb.Elem().Interface())
	}
	return reflect.DeepEqual(a, b)
}

// setDiff returns the elements of slice a that are not in slice b, as a slice of a's type.
func setDiff(a, b reflect.Value) []any {
	in := make(map[any]struct{}, b.Len())
	for i := range b.Len() {
		in[b.Index(i).Interface()] = struct{}{}
	}
	var out []any
	for i := range a.Len() {
		if _, ok := in[a.Index(i).Interface()]; !ok {
			out = append(out, a.Index(i).Interface())
		}
	}
	return out
}

// memberDelta is how a set or map column goes from cur to want element by element: what to delete
// (set elements, or map keys) and what to insert (set elements, or map pairs), each as a value of the
// column's own Go type (or a slice of keys for map deletes), nil when empty.
func memberDelta(cur, want any) (del, ins any) {
	rc, rw := reflect.ValueOf(cur), reflect.ValueOf(want)
	switch rw.Kind() {
	case reflect.Slice:
		if !rc.IsValid() {
			rc = reflect.MakeSlice(rw.Type(), 0, 0)
		}
		return toSlice(rw.Type(), setDiff(rc, rw)), toSlice(rw.Type(), setDiff(rw, rc))
	case reflect.Map:
		keys := reflect.MakeSlice(reflect.SliceOf(rw.Type().Key()), 0, 0)
		pairs := reflect.MakeMap(rw.Type())
		if rc.IsValid() {
			for _, k := range rc.MapKeys() {
				if w := rw.MapIndex(k); !w.IsValid() || !reflect.DeepEqual(w.Interface(), rc.MapIndex(k).Interface()) {
					keys = reflect.Append(keys, k)
				}
			}
		}
		for _, k := range rw.MapKeys() {
			if c := mapIndex(rc, k); !c.IsValid() || !reflect.DeepEqual(c.Interface(), rw.MapIndex(k).Interface()) {
				pairs.SetMapIndex(k, rw.MapIndex(k))
			}
		}
		if keys.Len() > 0 {
			sortValues(keys)
			del = keys.Interface()
		}
		if pairs.Len() > 0 {
			ins = pairs.Interface()
		}
		return del, ins
	}
	return nil, nil
}

func mapIndex(m, k reflect.Value) reflect.Value {
	if !m.IsValid() {
		return reflect.Value{}
	}
	return m.MapIndex(k)
}

// toSlice turns elems into a sorted slice of type t, or nil when empty.
func toSlice(t reflect.Type, elems []any) any {
	if len(elems) == 0 {
		return nil
	}
	s := reflect.MakeSlice(t, 0, len(elems))
	for _, e := range elems {
		s = reflect.Append(s, reflect.ValueOf(e))
	}
	sortValues(s)
	return s.Interface()
}

// sortValues sorts a slice of strings in place, so operations are deterministic; other kinds keep
// their order.
func sortValues(s reflect.Value) {
	if ss, ok := s.Interface().([]string); ok {
		slices.Sort(ss)
	}
}
