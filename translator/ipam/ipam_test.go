package ipam

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/dunlinplugin/dunlin/internal/conventions"
)

func TestPoolLowestFreeAndReuse(t *testing.T) {
	subnet := netip.MustParsePrefix("10.244.1.0/29")
	p, err := NewPool(subnet, conventions.GatewayIP(subnet), conventions.ManagementIP(subnet))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range []string{"a", "b", "c", "d"} {
		a, err := p.Allocate(o)
		if err != nil {
			t.Fatalf("allocate %s: %v", o, err)
		}
		got = append(got, a.String())
	}
	want := []string{"10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("allocations = %v, want %v", got, want)
		}
	}
	if _, err := p.Allocate("e"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocate from a full /29: err = %v, want ErrExhausted", err)
	}
	p.Release(netip.MustParseAddr("10.244.1.4"), "other") // not the holder: no effect
	if p.InUse() != 4 {
		t.Fatalf("InUse = %d after a foreign release, want 4", p.InUse())
	}
	p.Release(netip.MustParseAddr("10.244.1.4"), "b")
	if a, err := p.Allocate("e"); err != nil || a.String() != "10.244.1.4" {
		t.Fatalf("reallocation = %v, %v; want the freed 10.244.1.4", a, err)
	}
}

func TestPoolReserve(t *testing.T) {
	subnet := netip.MustParsePrefix("10.244.1.0/24")
	p, _ := NewPool(subnet, conventions.GatewayIP(subnet), conventions.ManagementIP(subnet))
	tests := []struct {
		addr, owner string
		conflict    bool
		fails       bool
	}{
		{"10.244.1.10", "a", false, false},
		{"10.244.1.10", "a", false, false}, // idempotent
		{"10.244.1.10", "b", true, true},
		{"10.244.1.1", "c", true, true},   // gateway
		{"10.244.1.255", "c", true, true}, // broadcast
		{"10.244.2.5", "c", false, true},  // outside
	}
	for _, tc := range tests {
		err := p.Reserve(netip.MustParseAddr(tc.addr), tc.owner)
		var ce *ConflictError
		if (err != nil) != tc.fails || errors.As(err, &ce) != tc.conflict {
			t.Errorf("Reserve(%s, %s) = %v; want fails=%v conflict=%v", tc.addr, tc.owner, err, tc.fails, tc.conflict)
		}
	}
	if a, _ := p.Allocate("d"); a.String() != "10.244.1.3" {
		t.Fatalf("first allocation = %s, want 10.244.1.3", a)
	}
}

func TestNewPoolRejects(t *testing.T) {
	for _, s := range []string{"10.0.0.0/31", "10.0.0.0/8", "fd00::/120"} {
		if _, err := NewPool(netip.MustParsePrefix(s)); err == nil {
			t.Errorf("NewPool(%s) succeeded, want an error", s)
		}
	}
}

func TestSubnets(t *testing.T) {
	s, err := NewSubnets(netip.MustParsePrefix("10.244.0.0/22"), 24)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Reserve("n1", netip.MustParsePrefix("10.244.1.0/24")); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Allocate("n0"); p.String() != "10.244.0.0/24" {
		t.Fatalf("n0 got %s", p)
	}
	if p, _ := s.Allocate("n2"); p.String() != "10.244.2.0/24" {
		t.Fatalf("n2 got %s, want the lowest free 10.244.2.0/24", p)
	}
	if p, _ := s.Allocate("n2"); p.String() != "10.244.2.0/24" {
		t.Fatalf("second Allocate(n2) moved the node to %s", p)
	}
	// A podCIDR of another length still blocks what it overlaps.
	if err := s.Reserve("big", netip.MustParsePrefix("10.244.3.0/25")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Allocate("n4"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocation from a full cluster CIDR: %v, want ErrExhausted", err)
	}
	for _, bad := range []string{"10.245.0.0/24", "10.244.1.0/24", "10.244.0.0/16", "10.244.1.128/25"} {
		if err := s.Reserve("x", netip.MustParsePrefix(bad)); err == nil {
			t.Errorf("Reserve(x, %s) succeeded, want an error", bad)
		}
	}
	s.Release("n0")
	if p, _ := s.Allocate("n5"); p.String() != "10.244.0.0/24" {
		t.Fatalf("n5 got %s after n0 left, want 10.244.0.0/24", p)
	}
}

func TestNewSubnetsRejects(t *testing.T) {
	for _, tc := range []struct {
		cidr string
		bits int
	}{{"10.244.0.0/16", 8}, {"10.244.0.0/16", 31}, {"10.244.1.0/16", 24}, {"fd00::/48", 64}, {"10.0.0.0/4", 30}} {
		if _, err := NewSubnets(netip.MustParsePrefix(tc.cidr), tc.bits); err == nil {
			t.Errorf("NewSubnets(%s, %d) succeeded, want an error", tc.cidr, tc.bits)
		}
	}
}

func TestClusterPods(t *testing.T) {
	c, err := NewCluster(netip.MustParsePrefix("10.244.0.0/16"), 24)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AllocatePod("ns/p", "u1", "n1"); err == nil {
		t.Fatal("allocation on a node without a subnet succeeded")
	}
	sub, _ := c.AllocateNodeSubnet("n1")
	a, err := c.AllocatePod("ns/p", "u1", "n1")
	if err != nil || !sub.Contains(a.Addr) {
		t.Fatalf("AllocatePod = %v, %v", a, err)
	}
	again, _ := c.AllocatePod("ns/p", "u1", "n1")
	if again != a {
		t.Fatalf("second allocation for the same pod moved it: %v != %v", again, a)
	}
	// A recreated pod (new UID) gets a fresh allocation; the old address is freed first, so the
	// lowest-free rule hands it the same one.
	re, _ := c.AllocatePod("ns/p", "u2", "n1")
	if re.UID != "u2" || re.Addr != a.Addr || c.PodsInUse() != 1 {
		t.Fatalf("recreated pod: %+v, in use %d", re, c.PodsInUse())
	}
	err = c.ReservePod("ns/q", PodAddr{Node: "n1", UID: "u3", Addr: a.Addr})
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Owner != "ns/p" {
		t.Fatalf("duplicate reservation: %v", err)
	}
	c.ReleaseNodeSubnet("n1")
	if c.PodsInUse() != 0 || c.NodesWithSubnet() != 0 {
		t.Fatalf("after node release: pods %d nodes %d", c.PodsInUse(), c.NodesWithSubnet())
	}
}

func TestKeyed(t *testing.T) {
	join := netip.MustParsePrefix("100.64.0.0/16")
	k, err := NewKeyed(join, netip.MustParseAddr("100.64.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	// Rebuilt first: n1 keeps .5, n2 gets the lowest free address, n1 again its own.
	if err := k.Reserve("n1", netip.MustParseAddr("100.64.0.5")); err != nil {
		t.Fatal(err)
	}
	if a, alloc, err := k.Ensure("n2"); err != nil || !alloc || a != netip.MustParseAddr("100.64.0.2") {
		t.Fatalf("n2: %v %v %v", a, alloc, err)
	}
	if a, alloc, _ := k.Ensure("n1"); alloc || a != netip.MustParseAddr("100.64.0.5") {
		t.Fatalf("n1: %v %v", a, alloc)
	}
	if err := k.Reserve("n3", netip.MustParseAddr("100.64.0.5")); err == nil {
		t.Fatal("n3 took n1's address")
	}
	if err := k.Reserve("n1", netip.MustParseAddr("100.64.0.6")); err == nil {
		t.Fatal("n1 holds two addresses")
	}
	k.Release("n2")
	if _, ok := k.Get("n2"); ok {
		t.Fatal("n2 still holds an address")
	}
	if a, _, _ := k.Ensure("n4"); a != netip.MustParseAddr("100.64.0.2") {
		t.Fatalf("n4 got %v, want the released .2", a)
	}
}

// The exhaustion metrics' inputs: a /29 node subnet holds 8 addresses less network, broadcast, gateway
// and management port, and the usage reaches the capacity exactly when allocation fails.
func TestNodeUsages(t *testing.T) {
	c, err := NewCluster(netip.MustParsePrefix("10.244.0.0/26"), 29)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.NodeSubnetCapacity(); got != 8 {
		t.Fatalf("NodeSubnetCapacity = %d, want 8 /29s in a /26", got)
	}
	if _, err := c.AllocateNodeSubnet("n1"); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if _, err := c.AllocatePod("ns/p"+string(rune('a'+i)), "u", "n1"); err != nil {
			t.Fatalf("pod %d: %v", i, err)
		}
	}
	if _, err := c.AllocatePod("ns/full", "u", "n1"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("allocation past capacity: %v", err)
	}
	got := c.NodeUsages()
	if len(got) != 1 || got[0] != (NodeUsage{Node: "n1", InUse: 4, Capacity: 4}) {
		t.Fatalf("NodeUsages = %+v, want n1 4 of 4", got)
	}
}
