package nbstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ovn-kubernetes/libovsdb/cache"
	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/notify"
	"github.com/dunlinplugin/dunlin/nbmodel"
)

// NB_Global external_ids keys the committer writes. NB_Global is the one row every NB database has; these
// keys are Dunlin's and no other column or key of it is touched.
const (
	// WriterKey holds the token of the one committer allowed to write (see Claim).
	WriterKey = "dunlin.io/writer"
	// CommitKey is rewritten by every transaction, "<session>:<sequence>", so that a caller knows when the
	// cache holds the effects of its transaction: they arrive in the same update.
	CommitKey = "dunlin.io/commit"
	// SyncedKey holds the time (RFC 3339, UTC) the controller last drained its work after reconciling
	// every object, for operators (dunlinctl status); nothing reads it back.
	SyncedKey = "dunlin.io/synced"
)

// Connected reports whether cli has a live connection. libovsdb's own Connected stays true while it
// reconnects; it then has no current endpoint.
func Connected(cli client.Client) bool { return cli.Connected() && cli.CurrentEndpoint() != "" }

// ErrNotConnected is returned while the NB database is unreachable.
var ErrNotConnected = errors.New("not connected to the NB database")

// ErrFenced is returned once another controller has claimed the database (see Claim): this one must stop
// writing.
var ErrFenced = errors.New("another dunlin-controller has claimed the NB database")

// ErrReplan is returned for a transaction planned before an earlier transaction's outcome became
// unknown: its plan may not reflect that outcome, so the caller must plan again (Begin then reads the
// outcome back first).
var ErrReplan = errors.New("planned before an earlier NB transaction's outcome became unknown: plan again")

// StaleError says some operations of a plan touched no row: a row it updated or a parent it inserted
// into was deleted after the plan read the cache. The other operations were committed; planning again
// from the cache converges.
type StaleError struct{ Ops []string }

func (e *StaleError) Error() string {
	return fmt.Sprintf("%d operation(s) touched no row (deleted meanwhile), first: %s", len(e.Ops), e.Ops[0])
}

// Metrics are the committer's Prometheus collectors.
type Metrics struct {
	Transactions *prometheus.CounterVec // label result: success|error
	Errors       *prometheus.CounterVec // label reason: see errorReasons
	Duration     prometheus.Histogram
	Operations   prometheus.Histogram
	Stale        prometheus.Counter
	Unknown      prometheus.Counter
}

// NewMetrics registers the committer's collectors with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dunlin_nb_transactions_total", Help: "OVN NB transactions by result.",
		}, []string{"result"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "dunlin_nb_transaction_duration_seconds", Help: "Duration of OVN NB transactions.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		Operations: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "dunlin_nb_transaction_operations", Help: "Operations per OVN NB transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		Stale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dunlin_nb_stale_plans_total",
			Help: "Plans some of whose operations touched no row (their row was deleted meanwhile) and were re-planned.",
		}),
	}
	m.Unknown = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "dunlin_nb_unknown_outcomes_total",
		Help: "NB transactions whose outcome was unknown (the connection was lost or timed out while they were in flight, or their commit did not reach the cache); the cache is read back before the next plan.",
	})
	m.Errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "dunlin_nb_transaction_errors_total",
		Help: "Failed OVN NB transactions by reason: fenced (another controller claimed NB), rejected (the server refused an operation: constraint, reference, row count), timeout (no answer in time, outcome unknown), connection (not connected or the connection was lost), canceled (the controller was stopping).",
	}, []string{"reason"})
	// Every reason starts at 0 so that rate() and alerts see a series before the first error.
	for _, r := range errorReasons {
		m.Errors.WithLabelValues(r)
	}
	for _, r := range []string{"success", "error"} {
		m.Transactions.WithLabelValues(r)
	}
	reg.MustRegister(m.Transactions, m.Errors, m.Duration, m.Operations, m.Stale, m.Unknown)
	return m
}

// errorReasons are the values of dunlin_nb_transaction_errors_total's reason label.
var errorReasons = []string{"fenced", "rejected", "timeout", "connection", "canceled"}

// errorReason classifies a failed transaction for dunlin_nb_transaction_errors_total.
func errorReason(err error) string {
	switch {
	case errors.Is(err, ErrFenced):
		return "fenced"
	case errors.As(err, new(*OperationError)):
		return "rejected"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	default:
		return "connection"
	}
}

// Committer sends the transactions of many callers as few OVSDB transactions (group commit): while one
// transaction is in flight the next callers queue up, and their operations go out together, up to MaxOps.
// An idle system commits a single change at once; a busy one batches by itself. Each caller waits for its
// own outcome and for the cache to hold it, in its own goroutine: one slow or failed caller never holds
// up the others.
type Committer struct {
	cli           client.Client
	maxOps        int
	timeout       time.Duration
	metrics       *Metrics
	reqs          chan *commitReq
	session       string
	seq           uint64 // owned by Run
	token         atomic.Pointer[string]
	globalChanged notify.Keyed // woken on every change of NB_Global

	// doubts counts the transactions whose outcome became unknown (sent, then the connection dropped or
	// the wait timed out: a RAFT leader that died with it in flight, say) or whose commit did not reach
	// the cache. settled is the count the cache was last read back for (see Begin).
	doubts   atomic.Uint64
	settled  atomic.Uint64
	settleMu sync.Mutex
}

type commitReq struct {
	txn  *Txn
	done chan commitResult
}

type commitResult struct {
	err   error
	seq   uint64 // the marker of the transaction that committed it
	stale []string
}

// NewCommitter returns a Committer; Run must be running for Commit to return. cli must be connected and
// monitor NB_Global.
func NewCommitter(cli client.Client, maxOps int, timeout time.Duration, metrics *Metrics) *Committer {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	c := &Committer{cli: cli, maxOps: maxOps, timeout: timeout, metrics: metrics,
		reqs: make(chan *commitReq, 1024), session: hex.EncodeToString(b)}
	wake := func(table string) {
		if table == nbGlobal {
			c.globalChanged.Wake(nbGlobal)
		}
	}
	cli.Cache().AddEventHandler(&cache.EventHandlerFuncs{
		AddFunc:    func(table string, _ model.Model) { wake(table) },
		UpdateFunc: func(table string, _, _ model.Model) { wake(table) },
		DeleteFunc: func(table string, _ model.Model) { wake(table) },
	})
	return c
}

const nbGlobal = "NB_Global"

// Begin returns a Txn to plan into, and Commit refuses it with ErrReplan when another transaction's
// outcome becomes unknown before it is sent. When an outcome is unknown already, Begin first reads it
// back: it commits a marker and waits for the cache to show it. The database commits transactions in
// order (a new RAFT leader too: what the old one committed, or will still commit, comes before the
// marker in the log), so the cache then holds the doubtful transaction's effects if it committed at all,
// and a plan made from it does not repeat them (a second load balancer, a second switch).
func (c *Committer) Begin(ctx context.Context) (*Txn, error) {
	doubts := c.doubts.Load()
	if c.settled.Load() < doubts {
		if err := c.settle(ctx, doubts); err != nil {
			return nil, err
		}
	}
	return &Txn{epoch: doubts, begun: true}, nil
}

// settle reads back the outcome of every transaction whose outcome was unknown when doubts was read.
func (c *Committer) settle(ctx context.Context, doubts uint64) error {
	c.settleMu.Lock()
	defer c.settleMu.Unlock()
	if c.settled.Load() >= doubts {
		return nil // another caller did it meanwhile
	}
	if err := c.Sync(ctx); err != nil {
		return fmt.Errorf("read back the NB transactions of unknown outcome: %w", err)
	}
	c.settled.Store(doubts) // only settle raises it, under settleMu
	klog.V(2).InfoS("Cache holds the outcome of the NB transactions that had an unknown one", "count", doubts)
	return nil
}

// doubt records that a transaction's outcome, or its arrival in the cache, is unknown.
func (c *Committer) doubt() {
	c.doubts.Add(1)
	c.metrics.Unknown.Inc()
}

// Commit sends txn and waits until it is committed and its effects are in the cache, or it failed. A
// *StaleError means part of it applied and the caller must plan again; so does ErrReplan.
func (c *Committer) Commit(ctx context.Context, txn *Txn) error {
	if txn.Len() == 0 {
		return nil
	}
	r := &commitReq{txn: txn, done: make(chan commitResult, 1)}
	select {
	case c.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	var res commitResult
	select {
	case res = <-r.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if res.err != nil {
		return res.err
	}
	if err := c.awaitMarker(ctx, res.seq); err != nil {
		c.doubt()
		return err
	}
	if len(res.stale) > 0 {
		c.metrics.Stale.Inc()
		return &StaleError{Ops: res.stale}
	}
	return nil
}

// Sync waits until the cache holds everything committed to the database before it was called, by
// committing only a marker: for callers that must see a change made by another client.
func (c *Committer) Sync(ctx context.Context) error {
	r := &commitReq{txn: &Txn{}, done: make(chan commitResult, 1)}
	select {
	case c.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case res := <-r.done:
		if res.err != nil {
			return res.err
		}
		if err := c.awaitMarker(ctx, res.seq); err != nil {
			c.doubt()
			return err
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run commits queued transactions until ctx ends.
func (c *Committer) Run(ctx context.Context) {
	for {
		var first *commitReq
		select {
		case <-ctx.Done():
			return
		case first = <-c.reqs:
		}
		batch, n := []*commitReq{first}, first.txn.Len()
	drain:
		for n < c.maxOps {
			select {
			case r := <-c.reqs:
				batch = append(batch, r)
				n += r.txn.Len()
			default:
				break drain
			}
		}
		c.commitBatch(ctx, batch)
	}
}

// commitBatch commits the callers' operations in one transaction. When one caller's operation fails,
// the server aborts the whole transaction: that caller gets its error and the others are committed
// again without it.
func (c *Committer) commitBatch(ctx context.Context, batch []*commitReq) {
	for len(batch) > 0 {
		if batch = c.refuseUnsettled(batch); len(batch) == 0 {
			return
		}
		results, ops, offsets, seq, err := c.transact(ctx, batch)
		if err != nil {
			culprit := -1
			var opErr *OperationError
			if errors.As(err, &opErr) && opErr.index >= 0 {
				culprit = ownerOf(offsets, opErr.index)
			}
			if culprit < 0 || len(batch) == 1 {
				if len(batch) > 1 && errors.As(err, &opErr) && !errors.Is(err, ErrFenced) {
					// A failure not tied to one operation (referential integrity, say): find the
					// caller that caused it by committing each alone.
					klog.V(2).InfoS("Batched NB transaction failed, committing callers one by one", "callers", len(batch), "err", err)
					for _, r := range batch {
						c.commitBatch(ctx, []*commitReq{r})
					}
					return
				}
				for _, r := range batch {
					r.done <- commitResult{err: err}
				}
				return
			}
			batch[culprit].done <- commitResult{err: err}
			batch = append(batch[:culprit], batch[culprit+1:]...)
			continue
		}
		for i, r := range batch {
			var stale []string
			for j, expect := range r.txn.expect {
				k := offsets[i] + j
				if expect == one && results[k].Count != 1 {
					stale = append(stale, describeOp(ops[k]))
				}
			}
			r.done <- commitResult{seq: seq, stale: stale}
		}
		return
	}
}

// refuseUnsettled answers ErrReplan to the callers whose plan was made before the latest unknown
// outcome, and returns the others.
func (c *Committer) refuseUnsettled(batch []*commitReq) []*commitReq {
	doubts := c.doubts.Load()
	kept := batch[:0]
	for _, r := range batch {
		if r.txn.begun && r.txn.epoch != doubts {
			r.done <- commitResult{err: ErrReplan}
			continue
		}
		kept = append(kept, r)
	}
	return kept
}

// ownerOf is the index of the caller whose operations include operation op, given where each caller's
// operations start (offsets has one more entry: where the committer's marker is); -1 for the
// committer's own operations (the fence before, the marker after).
func ownerOf(offsets []int, op int) int {
	for i := 0; i+1 < len(offsets); i++ {
		if op >= offsets[i] && op < offsets[i+1] {
			return i
		}
	}
	return -1
}

// OperationError is a transaction the server refused (as opposed to one that never reached it).
type OperationError struct {
	Err   error
	index int // of the failed operation in the transaction, -1 when not tied to one
}

func (e *OperationError) Error() string { return e.Err.Error() }
func (e *OperationError) Unwrap() error { return e.Err }

func describeOp(op ovsdb.Operation) string {
	s := op.Op + " " + op.Table
	for _, w := range op.Where {
		if w.Column == "_uuid" {
			if u, ok := w.Value.(ovsdb.UUID); ok {
				s += " " + u.GoUUID
			}
		}
	}
	return s
}

// transact sends the batch's operations, framed by the fence check and the commit marker. offsets[i] is
// where caller i's operations start; the last entry is where the marker is.
func (c *Committer) transact(ctx context.Context, batch []*commitReq) ([]ovsdb.OperationResult, []ovsdb.Operation, []int, uint64, error) {
	// With reconnection on, the library holds a transaction until the database is back: fail at once
	// instead, so one outage does not queue every writer behind a timeout (they retry with backoff).
	if !Connected(c.cli) {
		return nil, nil, nil, 0, ErrNotConnected
	}
	global, err := c.globalUUID()
	if err != nil {
		return nil, nil, nil, 0, err
	}
	var ops []ovsdb.Operation
	if tok := c.token.Load(); tok != nil {
		ops = append(ops, fenceOp(global, *tok))
	}
	offsets := make([]int, 0, len(batch)+1)
	for _, r := range batch {
		offsets = append(offsets, len(ops))
		ops = append(ops, r.txn.Ops...)
	}
	offsets = append(offsets, len(ops))
	c.seq++
	seq := c.seq
	ops = append(ops, setGlobalKey(global, CommitKey, c.session+":"+strconv.FormatUint(seq, 10)))

	tctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	results, err := c.cli.Transact(tctx, ops...)
	if err == nil {
		if opErrs, cerr := ovsdb.CheckOperationResults(results, ops); cerr != nil {
			idx := -1
			for i, r := range results {
				if r.Error != "" {
					idx = i
					break
				}
			}
			if idx == 0 && c.token.Load() != nil {
				cerr = fmt.Errorf("%w (%s is no longer ours): %v", ErrFenced, WriterKey, cerr)
			}
			if idx >= len(ops) {
				idx = -1 // an error of the whole transaction
			}
			err = &OperationError{Err: describe(cerr, opErrs), index: idx}
		}
	}
	c.metrics.Duration.Observe(time.Since(start).Seconds())
	c.metrics.Operations.Observe(float64(len(ops)))
	if err != nil && !errors.As(err, new(*OperationError)) {
		// Sent, and no answer: it may have committed, or may still (see Begin).
		c.doubt()
	}
	if err != nil {
		c.metrics.Transactions.WithLabelValues("error").Inc()
		c.metrics.Errors.WithLabelValues(errorReason(err)).Inc()
		return nil, nil, offsets, 0, fmt.Errorf("NB transaction of %d operations: %w", len(ops), err)
	}
	c.metrics.Transactions.WithLabelValues("success").Inc()
	return results, ops, offsets, seq, nil
}

// describe names the first failed operation, which the library's error does not.
func describe(err error, opErrs []ovsdb.OperationError) error {
	if len(opErrs) == 0 {
		return err
	}
	first := opErrs[0]
	if op := first.Operation(); op != nil {
		return fmt.Errorf("%w: first: %s on %s: %v", err, op.Op, op.Table, first)
	}
	return fmt.Errorf("%w: first: %v", err, first)
}

// globalUUID returns the UUID of the NB_Global row, which ovn-northd and ovn-nbctl create.
func (c *Committer) globalUUID() (string, error) {
	if tc := c.cli.Cache().Table(nbGlobal); tc != nil {
		for uuid := range tc.RowsShallow() {
			return uuid, nil
		}
	}
	return "", fmt.Errorf("the NB database has no NB_Global row yet (ovn-northd or `ovn-nbctl init` creates it): %w", ErrParentMissing)
}

// global returns the cached NB_Global row.
func (c *Committer) global() *nbmodel.NBGlobal {
	if tc := c.cli.Cache().Table(nbGlobal); tc != nil {
		for _, m := range tc.RowsShallow() {
			return m.(*nbmodel.NBGlobal)
		}
	}
	return nil
}

// MarkSynced records t under SyncedKey, fenced like any other transaction.
func (c *Committer) MarkSynced(ctx context.Context, t time.Time) error {
	global, err := c.globalUUID()
	if err != nil {
		return err
	}
	txn, err := c.Begin(ctx)
	if err != nil {
		return err
	}
	txn.add(1, setGlobalKey(global, SyncedKey, t.UTC().Format(time.RFC3339)))
	return c.Commit(ctx, txn)
}

// fenceOp fails the transaction unless NB_Global still carries token under WriterKey.
func fenceOp(global, token string) ovsdb.Operation {
	timeout := 0
	return ovsdb.Operation{
		Op: ovsdb.OperationWait, Table: nbGlobal, Timeout: &timeout,
		Where: append(uuidIs(global),
			ovsdb.Condition{Column: "external_ids", Function: ovsdb.ConditionIncludes, Value: ovsdb.OvsMap{GoMap: map[any]any{WriterKey: token}}}),
		Columns: []string{"_uuid"}, Until: string(ovsdb.WaitConditionEqual),
		Rows: []ovsdb.Row{{"_uuid": ovsdb.UUID{GoUUID: global}}},
	}
}

// setGlobalKey replaces one external_ids key of NB_Global.
func setGlobalKey(global, key, value string) ovsdb.Operation {
	return ovsdb.Operation{
		Op: ovsdb.OperationMutate, Table: nbGlobal,
		Where: uuidIs(global),
		Mutations: []ovsdb.Mutation{
			{Column: "external_ids", Mutator: ovsdb.MutateOperationDelete, Value: ovsdb.OvsSet{GoSet: []any{key}}},
			{Column: "external_ids", Mutator: ovsdb.MutateOperationInsert, Value: ovsdb.OvsMap{GoMap: map[any]any{key: value}}},
		},
	}
}

// awaitMarker waits until the cache holds the commit marker seq of this session (or a later one), hence
// every effect of the transaction that wrote it: the server sends a transaction's changes in one update,
// and the cache applies an update whole before its tables can be read again. It is woken by the cache's
// events; the periodic recheck covers events the library drops when its buffer is full.
func (c *Committer) awaitMarker(ctx context.Context, seq uint64) error {
	woken, unsubscribe := c.globalChanged.Subscribe(nbGlobal)
	defer unsubscribe()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if g := c.global(); g != nil {
			session, n, _ := strings.Cut(g.ExternalIDs[CommitKey], ":")
			if got, err := strconv.ParseUint(n, 10, 64); err == nil && session == c.session && got >= seq {
				return nil
			}
		}
		select {
		case <-woken:
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("committed NB transaction %d did not reach the cache: %w", seq, ctx.Err())
		}
	}
}

// Claim makes this committer the only one allowed to write: it stores a new token under WriterKey, waits
// until the cache shows it (so the cache also holds everything a previous writer committed before), and
// from then on every transaction fails with ErrFenced once another committer has claimed. A controller
// claims when it becomes leader; a deposed one that still writes (its lease expired while it was
// stalled) is refused by the server instead of duplicating rows.
func (c *Committer) Claim(ctx context.Context, identity string) error {
	global, err := c.globalUUID()
	if err != nil {
		return err
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	token := identity + "/" + hex.EncodeToString(b)
	tctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	ops := []ovsdb.Operation{setGlobalKey(global, WriterKey, token)}
	results, err := c.cli.Transact(tctx, ops...)
	if err != nil {
		c.doubt()
	} else {
		_, err = ovsdb.CheckOperationResults(results, ops)
	}
	if err != nil {
		return fmt.Errorf("claim the NB database: %w", err)
	}
	woken, unsubscribe := c.globalChanged.Subscribe(nbGlobal)
	defer unsubscribe()
	for {
		if g := c.global(); g != nil && g.ExternalIDs[WriterKey] == token {
			break
		}
		select {
		case <-woken:
		case <-time.After(200 * time.Millisecond):
		case <-tctx.Done():
			return fmt.Errorf("claim the NB database: the claim did not reach the cache: %w", tctx.Err())
		}
	}
	c.token.Store(&token)
	klog.InfoS("Claimed the NB database for writing", "token", token)
	return nil
}

// WaitFenced returns nil once another committer has claimed the database since this one did (so that an
// idle deposed controller stops too, not only one that writes), or ctx's error when ctx ends first.
func (c *Committer) WaitFenced(ctx context.Context) error {
	woken, unsubscribe := c.globalChanged.Subscribe(nbGlobal)
	defer unsubscribe()
	for !c.Fenced() {
		select {
		case <-woken:
		case <-time.After(time.Second): // a reconnection refills the cache without row events
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Fenced reports whether another committer has claimed the database since this one did.
func (c *Committer) Fenced() bool {
	tok := c.token.Load()
	g := c.global()
	return tok != nil && g != nil && g.ExternalIDs[WriterKey] != *tok
}
