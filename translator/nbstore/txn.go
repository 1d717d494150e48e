package nbstore

import "github.com/ovn-kubernetes/libovsdb/ovsdb"

// Row counts an operation must report.
const (
	// one: the operation names one row by UUID; touching none means that row is gone and the plan stale.
	one = 1
	// anyCount: the operation may match nothing (a delete of what is already gone).
	anyCount = -1
)

// Txn collects the operations of one or more plans, each with the number of rows it must touch.
type Txn struct {
	Ops    []ovsdb.Operation
	expect []int
	// created maps table/identity of rows inserted by this Txn to their named UUID, so rows planned later
	// in the same Txn can reference them.
	created map[string]string
	// epoch is the Committer's count of unknown outcomes when Begin made this Txn; begun says Begin made
	// it (a Txn made otherwise is not checked).
	epoch uint64
	begun bool
}

// Len is the number of operations in the transaction.
func (t *Txn) Len() int { return len(t.Ops) }

func (t *Txn) add(expect int, ops ...ovsdb.Operation) {
	for _, op := range ops {
		t.Ops = append(t.Ops, op)
		t.expect = append(t.expect, expect)
	}
}

// append adds the operations of o, in order.
func (t *Txn) append(o *Txn) {
	t.Ops = append(t.Ops, o.Ops...)
	t.expect = append(t.expect, o.expect...)
}

func (t *Txn) init() {
	if t.created == nil {
		t.created = map[string]string{}
	}
}
