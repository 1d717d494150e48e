package harness

import (
	"context"
	"os"
	"testing"
)

// StartTestOVN starts OVN central (NB, SB, ovn-northd) in a temporary directory for the test, and stops
// it and removes the directory when the test ends.
func StartTestOVN(ctx context.Context, t testing.TB) *OVN {
	t.Helper()
	dir, err := os.MkdirTemp("", "dl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ovn, err := StartOVN(ctx, OVNOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ovn.Stop() })
	return ovn
}
