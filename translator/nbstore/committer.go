package nbstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// Metrics are the committer's Prometheus collectors.
type Metrics struct {
	Transactions *prometheus.CounterVec // label result: success|error
	Duration     prometheus.Histogram
	Operations   prometheus.Histogram
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
	}
	reg.MustRegister(m.Transactions, m.Duration, m.Operations)
	return m
}

// Committer sends the transactions of many callers as few OVSDB transactions (group commit): while
// one transaction is in flight the next callers queue up, and their operations go out together, up to
// MaxOps. An idle system commits a single change at once; a busy one batches by itself.
type Committer struct {
	cli     client.Client
	maxOps  int
	timeout time.Duration
	metrics *Metrics
	reqs    chan *commitReq
}

type commitReq struct {
	ops  []ovsdb.Operation
	done chan error
}

// NewCommitter returns a Committer; Run must be running for Commit to return.
func NewCommitter(cli client.Client, maxOps int, timeout time.Duration, metrics *Metrics) *Committer {
	return &Committer{cli: cli, maxOps: maxOps, timeout: timeout, metrics: metrics, reqs: make(chan *commitReq, 1024)}
}

// Commit sends txn and waits until it is committed and visible in the cache, or failed.
func (c *Committer) Commit(ctx context.Context, txn *Txn) error {
	if txn.Len() == 0 {
		return nil
	}
	r := &commitReq{ops: txn.Ops, done: make(chan error, 1)}
	select {
	case c.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
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
		batch, n := []*commitReq{first}, len(first.ops)
	drain:
		for n < c.maxOps {
			select {
			case r := <-c.reqs:
				batch = append(batch, r)
				n += len(r.ops)
			default:
				break drain
			}
		}
		c.commitBatch(ctx, batch)
	}
}

func (c *Committer) commitBatch(ctx context.Context, batch []*commitReq) {
	var ops []ovsdb.Operation
	for _, r := range batch {
		ops = append(ops, r.ops...)
	}
	err := c.transact(ctx, ops)
	var opErr *OperationError
	if err == nil || len(batch) == 1 || !errors.As(err, &opErr) {
		for _, r := range batch {
			r.done <- err
		}
		return
	}
	// One caller's operations failed the whole batch: commit each caller alone so the others land
	// and the failure is reported to the caller that caused it.
	klog.V(2).InfoS("Batched NB transaction failed, retrying callers one by one", "callers", len(batch), "err", err)
	for _, r := range batch {
		r.done <- c.transact(ctx, r.ops)
	}
}

// OperationError is a transaction the server refused (as opposed to one that never reached it).
type OperationError struct{ Err error }

func (e *OperationError) Error() string { return e.Err.Error() }
func (e *OperationError) Unwrap() error { return e.Err }

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

func (c *Committer) transact(ctx context.Context, ops []ovsdb.Operation) error {
	tctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	results, err := c.cli.Transact(tctx, ops...)
	if err == nil {
		if opErrs, cerr := ovsdb.CheckOperationResults(results, ops); cerr != nil {
			err = &OperationError{Err: describe(cerr, opErrs)}
		}
	}
	c.metrics.Duration.Observe(time.Since(start).Seconds())
	c.metrics.Operations.Observe(float64(len(ops)))
	if err != nil {
		c.metrics.Transactions.WithLabelValues("error").Inc()
		return fmt.Errorf("NB transaction of %d operations: %w", len(ops), err)
	}
	c.metrics.Transactions.WithLabelValues("success").Inc()
	c.awaitCache(tctx, ops, results)
	return nil
}

// awaitCache waits until the rows the transaction inserted are in the client cache, so the next plan
// of the same owner sees them and does not insert them again.
func (c *Committer) awaitCache(ctx context.Context, ops []ovsdb.Operation, results []ovsdb.OperationResult) {
	for i, op := range ops {
		if op.Op != ovsdb.OperationInsert || i >= len(results) {
			continue
		}
		uuid := results[i].UUID.GoUUID
		for {
			if tc := c.cli.Cache().Table(op.Table); tc != nil && tc.Row(uuid) != nil {
				break
			}
			select {
			case <-ctx.Done():
				klog.InfoS("Committed row did not reach the NB cache in time", "table", op.Table, "uuid", uuid)
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}
}
