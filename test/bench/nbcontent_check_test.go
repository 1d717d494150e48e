package bench

import (
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ovn-kubernetes/libovsdb/client"
	"k8s.io/apimachinery/pkg/types"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
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
	for i, tc := range []tamperCase{
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
		tc.check(t, ovn, watcher, want)
	}
}

// tamperCase is a change of NB, as ovn-nbctl arguments, and the difference the content check must then
// report.
type tamperCase struct {
	name   string
	change func(nbctl func(...string) string) []string
	want   string
}

// check applies the change to NB, complete until then, and expects the watcher's view of it to differ
// from want as the case says.
func (tc tamperCase) check(t *testing.T, ovn *harness.OVN, watcher client.Client, want *nbRows) {
	t.Helper()
	if tc.change == nil {
		return
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

// TestPolicyContentCheck checks the completion criterion on NetworkPolicy rows: the floor writer's rows
// of a small policy world pass it, and a port missing from a port group, an address missing from an
// address set, a changed ACL, a missing ACL and an ACL nobody wants each fail it.
func TestPolicyContentCheck(t *testing.T) {
	dir := tempDir(t)
	world := newPolicyWorld(16, 40, 2)
	for i := range world.policyPods {
		uid := fmt.Sprintf("uid-%d", i)
		world.policyPods[i].Pod.UID, world.pods[i].UID = types.UID(uid), uid
	}
	db, err := nbDatabaseModel()
	if err != nil {
		t.Fatal(err)
	}
	want, err := world.rows(db)
	if err != nil {
		t.Fatal(err)
	}
	// Rows to tamper with: a port group with ports, an address set with addresses, a policy's ACL.
	var pg, port, as, addr, aclID string
	var acl *wantRow
	for _, name := range slices.Sorted(maps.Keys(want.rows[nbmodel.PortGroupTable])) {
		if ports := want.rows[nbmodel.PortGroupTable][name].refs["ports"]; pg == "" && len(ports) > 0 {
			pg, port = name, ports[0]
		}
	}
	for _, name := range slices.Sorted(maps.Keys(want.rows[nbmodel.AddressSetTable])) {
		if addrs := want.rows[nbmodel.AddressSetTable][name].info.Obj.(*nbmodel.AddressSet).Addresses; as == "" && len(addrs) > 0 {
			as, addr = name, addrs[0]
		}
	}
	for _, id := range slices.Sorted(maps.Keys(want.rows[nbmodel.ACLTable])) {
		if r := want.rows[nbmodel.ACLTable][id]; acl == nil && strings.HasPrefix(id, translator.KindPolicy+"/") {
			acl, aclID = r, id
		}
	}
	if pg == "" || as == "" || acl == nil {
		t.Fatalf("the world has no port group with ports (%q), address set with addresses (%q) or policy ACL", pg, as)
	}
	ids := acl.info.Obj.(*nbmodel.ACL).ExternalIDs
	findACL := func(nbctl func(...string) string) string {
		return nbctl("--bare", "--columns=_uuid", "find", "ACL",
			fmt.Sprintf("external_ids:%q=%q", nbstore.OwnerKey, ids[nbstore.OwnerKey]),
			fmt.Sprintf("external_ids:%q=%q", nbstore.IDKey, ids[nbstore.IDKey]))
	}
	for i, tc := range []tamperCase{
		{"none", nil, ""},
		{"port group member", func(nbctl func(...string) string) []string {
			lsp := nbctl("--bare", "--columns=_uuid", "find", "Logical_Switch_Port", "name="+port)
			return []string{"remove", "Port_Group", pg, "ports", lsp}
		}, fmt.Sprintf("Port_Group %q: ports points to", pg)},
		{"address set member", func(func(...string) string) []string {
			return []string{"remove", "Address_Set", as, "addresses", strconv.Quote(addr)}
		}, fmt.Sprintf("Address_Set %q: addresses is", as)},
		{"ACL column", func(nbctl func(...string) string) []string {
			return []string{"set", "ACL", findACL(nbctl), `match="ip"`}
		}, fmt.Sprintf("ACL %q: match is", aclID)},
		{"missing ACL", func(nbctl func(...string) string) []string {
			return []string{"remove", "Port_Group", acl.parents[0].name, "acls", findACL(nbctl)}
		}, fmt.Sprintf("ACL %q: 0 rows, want 1", aclID)},
		{"extra ACL", func(func(...string) string) []string {
			return []string{"--id=@a", "create", "ACL", "direction=to-lport", "priority=1001", "match=ip", "action=allow",
				fmt.Sprintf("external_ids:%q=%q", nbstore.OwnerKey, ids[nbstore.OwnerKey]),
				fmt.Sprintf("external_ids:%q=extra", nbstore.IDKey), "--", "add", "Port_Group", pg, "acls", "@a"}
		}, fmt.Sprintf("ACL %q is not expected", keyedIdentity(ids[nbstore.OwnerKey], "extra"))},
	} {
		ovn := startNB(t, filepath.Join(dir, fmt.Sprintf("nb%d", i)))
		floorPolicies(t, ovn, world, want) // returns once the content matches
		watcher, _ := watchNB(t, ovn.NBAddr)
		if err := harness.Eventually(time.Minute, func() error { return want.diff(cacheReader(watcher)) }); err != nil {
			t.Fatalf("%s: the floor's rows, from the cache: %v", tc.name, err)
		}
		tc.check(t, ovn, watcher, want)
	}
}
