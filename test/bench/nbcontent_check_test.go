package bench

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

// TestContentCheck checks the benchmarks' completion criterion against a real NB: the floor writer's
// rows pass it, read from a monitoring client's cache or by select, and a wrong column, a wrong
// reference, a port on the wrong switch, a missing row and an extra row each fail it. It is the only
// test in this package, so `make test` runs it (in a few seconds).
func TestContentCheck(t *testing.T) {
	dir := tempDir(t)
	d := desired{
		nodes: []translator.NodeNetwork{
			{Name: "n0", Subnet: netip.MustParsePrefix("10.244.0.0/24")},
			{Name: "n1", Subnet: netip.MustParsePrefix("10.244.1.0/24")},
		},
		pods: []translator.PodNetwork{
			{Namespace: "ns", Name: "a", UID: "uid-a", Node: "n0", Addr: netip.MustParseAddr("10.244.0.3")},
			{Namespace: "ns", Name: "b", UID: "uid-b", Node: "n1", Addr: netip.MustParseAddr("10.244.1.3")},
		},
	}
	want, err := d.rows()
	if err != nil {
		t.Fatal(err)
	}
	// Each case changes NB written by the floor writer from want, and expects the difference reported.
	for i, tc := range []struct {
		name   string
		change func(nbctl func(...string) string) []string
		want   string
	}{
		{"none", nil, ""},
		{"wrong column", func(func(...string) string) []string {
			return []string{"set", "Logical_Switch_Port", "ns_a", `port_security="0a:58:0a:f4:00:63 10.244.0.99"`}
		}, `Logical_Switch_Port "ns_a": port_security`},
		{"wrong reference", func(func(...string) string) []string {
			return []string{"clear", "Logical_Switch", "n0", "load_balancer_group"}
		}, `Logical_Switch "n0": load_balancer_group points to`},
		{"wrong parent", func(nbctl func(...string) string) []string {
			port := nbctl("--bare", "--columns=_uuid", "find", "Logical_Switch_Port", "name=ns_a")
			return []string{"remove", "Logical_Switch", "n0", "ports", port, "--", "add", "Logical_Switch", "n1", "ports", port}
		}, `Logical_Switch_Port "ns_a": not in ports of Logical_Switch "n0"`},
		{"extra row", func(func(...string) string) []string { return []string{"lsp-add", "n1", "stray"} },
			`Logical_Switch_Port "stray" is not expected`},
		{"missing row", func(func(...string) string) []string { return []string{"lsp-del", "ns_b"} },
			`Logical_Switch_Port "ns_b": 0 rows, want 1`},
	} {
		ovn := startNB(t, filepath.Join(dir, fmt.Sprintf("nb%d", i)))
		floorWrite(t, ovn, d, want) // returns once the content matches
		watcher, _ := watchNB(t, ovn.NBAddr)
		if err := harness.Eventually(time.Minute, func() error { return want.diff(cacheReader(watcher)) }); err != nil {
			t.Fatalf("%s: the floor's rows, from the cache: %v", tc.name, err)
		}
		if err := want.diff(selectReader(watcher, nbmodel.LogicalSwitchTable, nbmodel.LogicalSwitchPortTable)); err != nil {
			t.Fatalf("%s: the floor's rows, by select: %v", tc.name, err)
		}
		if tc.change == nil {
			continue
		}
		nbctl := func(args ...string) string {
			t.Helper()
			out, err := ovn.NBCtl(args...)
			if err != nil {
				t.Fatalf("ovn-nbctl %v: %v", args, err)
			}
			return strings.TrimSpace(out)
		}
		nbctl(tc.change(nbctl)...)
		err := harness.Eventually(time.Minute, func() error {
			err := want.diff(cacheReader(watcher))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				return fmt.Errorf("difference %v, want one saying %q", err, tc.want)
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
