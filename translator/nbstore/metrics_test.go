package nbstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// Each way a transaction fails is counted under its own reason, and every reason is exported from the
// start so that alerts on rate() see a series before the first error.
func TestTransactionErrorReasons(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&nbstore.OperationError{Err: fmt.Errorf("%w (writer is no longer ours): wait failed", nbstore.ErrFenced)}, "fenced"},
		{&nbstore.OperationError{Err: errors.New("constraint violation")}, "rejected"},
		{fmt.Errorf("NB transaction: %w", context.DeadlineExceeded), "timeout"},
		{fmt.Errorf("NB transaction: %w", context.Canceled), "canceled"},
		{fmt.Errorf("NB transaction: %w", io.EOF), "connection"},
	} {
		if got := nbstore.ErrorReason(tc.err); got != tc.want {
			t.Errorf("reason of %v: %q, want %q", tc.err, got, tc.want)
		}
	}
	reg := prometheus.NewRegistry()
	m := nbstore.NewMetrics(reg)
	if n := testutil.CollectAndCount(m.Errors, "dunlin_nb_transaction_errors_total"); n != 5 {
		t.Errorf("dunlin_nb_transaction_errors_total has %d series before any error, want one per reason (5)", n)
	}
	if v := testutil.ToFloat64(m.Errors.WithLabelValues("fenced")); v != 0 {
		t.Errorf("fenced errors before any: %v", v)
	}
}
