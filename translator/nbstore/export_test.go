package nbstore

import "github.com/ovn-kubernetes/libovsdb/ovsdb"

// AddOp appends an operation that may touch any number of rows, for benchmarks that compare other
// guards against the committer's fence.
func (t *Txn) AddOp(op ovsdb.Operation) { t.add(anyCount, op) }

// ErrorReason is errorReason, for its table test.
var ErrorReason = errorReason
