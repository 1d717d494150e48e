package nbstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// A transaction whose outcome is unknown (it timed out on a hanging server, as one in flight when a
// RAFT leader dies) may still commit. The plan that retries it must be made from a cache that shows
// that outcome: planned from the cache as it was, it inserts the row a second time (a Logical_Switch,
// like a Load_Balancer, has no unique index to refuse it).
func TestUnknownOutcomeIsReadBackBeforePlanningAgain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ovn := harness.StartTestOVN(ctx, t)
	nb, store := connectStore(ctx, t, ovn.NBAddr, translator.TableSpecs())
	committer := nbstore.NewCommitter(nb, 1000, 2*time.Second, nbstore.NewMetrics(prometheus.NewRegistry()))
	go committer.Run(ctx)
	if err := committer.Claim(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	const owner = "Node/s1"
	apply := func() error {
		txn, err := begin(ctx, committer)
		if err != nil {
			return err
		}
		sw := nbstore.Row{Model: &nbmodel.LogicalSwitch{Name: "s1", ExternalIDs: map[string]string{}}}
		if err := store.Plan(txn, owner, nbstore.Rows(sw)); err != nil {
			return err
		}
		return committer.Commit(ctx, txn)
	}

	if err := ovn.PauseNB(true); err != nil {
		t.Fatal(err)
	}
	if err := apply(); err == nil {
		t.Fatal("a commit to a hanging server succeeded")
	} else {
		t.Logf("first try: %v", err)
	}
	// The caller retries at once, while the server still holds the first transaction.
	retried := make(chan error, 1)
	go func() { retried <- apply() }()
	time.Sleep(500 * time.Millisecond) // not an assertion: lets the retry reach the server first
	if err := ovn.PauseNB(false); err != nil {
		t.Fatal(err)
	}
	switches := func(when string) {
		t.Helper()
		out, err := ovn.NBCtl("--bare", "--columns=_uuid", "find", "Logical_Switch", "name=s1")
		if err != nil {
			t.Fatal(err)
		}
		if n := len(strings.Fields(out)); n != 1 {
			t.Fatalf("%d switches s1 %s, want 1", n, when)
		}
	}
	if err := <-retried; err != nil {
		t.Logf("retry: %v", err)
	} else {
		// (A later plan would delete the duplicate again, but meanwhile both are in use.)
		switches("once the retry committed")
	}
	if err := harness.Eventually(time.Minute, apply); err != nil {
		t.Fatal(err)
	}
	switches("after the retries")
}
