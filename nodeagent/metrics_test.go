package nodeagent

import (
	"errors"
	"testing"

	cnitypes "github.com/containernetworking/cni/pkg/types"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Failed requests are counted by the CNI code the runtime got, and a command no runtime sends does not
// create a series of its own.
func TestCNIErrorMetrics(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	m.observe("ADD", 0.1, nil)
	m.observe("ADD", 0.1, cnitypes.NewError(cnitypes.ErrTryAgainLater, "busy", ""))
	m.observe("DEL", 0.1, errors.New("ovsdb unreachable"))
	m.observe("made-up-"+t.Name(), 0.1, cnitypes.NewError(cnitypes.ErrInvalidEnvironmentVariables, "unknown", ""))
	for _, c := range []struct {
		got  prometheus.Collector
		want float64
		what string
	}{
		{m.requests.WithLabelValues("ADD", "success"), 1, "ADD successes"},
		{m.requests.WithLabelValues("ADD", "error"), 1, "ADD errors"},
		{m.errors.WithLabelValues("ADD", "11"), 1, "ADD errors with code 11"},
		{m.errors.WithLabelValues("DEL", "999"), 1, "DEL internal errors"},
		{m.errors.WithLabelValues("other", "4"), 1, "errors of an unknown command"},
		{m.requests.WithLabelValues("CHECK", "error"), 0, "CHECK errors"},
	} {
		if v := testutil.ToFloat64(c.got); v != c.want {
			t.Errorf("%s: %v, want %v", c.what, v, c.want)
		}
	}
	// Before any request, ADD, DEL and CHECK have their success and error series; the made-up command
	// is only "other".
	if n := testutil.CollectAndCount(m.requests); n != 7 {
		t.Errorf("dunlin_cni_requests_total has %d series, want 7", n)
	}
}
