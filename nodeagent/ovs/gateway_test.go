package ovs

import (
	"testing"
	"time"
)

func TestBridgeMappings(t *testing.T) {
	s := newServer(t)
	s.vsctl(t, "set", "open_vswitch", ".", "external_ids:ovn-bridge-mappings=other:br-other,physnet:br-old", "external_ids:foo=bar")
	c := connect(t, s)
	ctx := testCtx(t)
	mappings := func() string {
		return s.vsctl(t, "--if-exists", "get", "open_vswitch", ".", "external_ids:ovn-bridge-mappings")
	}

	if err := c.SetBridgeMapping(ctx, "physnet", "br-ex"); err != nil {
		t.Fatal(err)
	}
	if got := mappings(); got != `"other:br-other,physnet:br-ex"` {
		t.Errorf("mappings = %s, want other's entry kept and physnet's replaced", got)
	}
	eventually(t, 5*time.Second, "cache to see the mapping", func() bool {
		writes := c.writes.Load()
		if err := c.SetBridgeMapping(ctx, "physnet", "br-ex"); err != nil {
			t.Fatal(err)
		}
		return c.writes.Load() == writes
	})
	// An entry of physnet that another bridge holds is not ours to remove.
	s.vsctl(t, "set", "open_vswitch", ".", "external_ids:ovn-bridge-mappings=physnet:br-else,other:br-other")
	eventually(t, 5*time.Second, "cache to see the edit", func() bool {
		if err := c.RemoveBridgeMapping(ctx, "physnet", "br-ex"); err != nil {
			t.Fatal(err)
		}
		return mappings() == `"physnet:br-else,other:br-other"`
	})
	s.vsctl(t, "set", "open_vswitch", ".", "external_ids:ovn-bridge-mappings=physnet:br-ex")
	eventually(t, 5*time.Second, "the only entry removed with its key", func() bool {
		if err := c.RemoveBridgeMapping(ctx, "physnet", "br-ex"); err != nil {
			t.Fatal(err)
		}
		return mappings() == ""
	})
	if got := s.vsctlStr(t, "open_vswitch", ".", "external_ids:foo"); got != "bar" {
		t.Errorf("foo = %q, want it kept", got)
	}
}

func TestEnsureBridge(t *testing.T) {
	s := newServer(t)
	c := connect(t, s)
	ctx := testCtx(t)
	spec := BridgeSpec{Name: "br-ex", DatapathType: "netdev", MAC: "02:00:00:00:00:01", MTU: 1400,
		ExternalIDs: map[string]string{"dunlin.io/uplink": "first"}}
	if err := c.EnsureBridge(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got := s.vsctl(t, "get", "bridge", "br-ex", "datapath_type", "other_config:hwaddr", "external_ids:dunlin.io/uplink"); got != "netdev\n\"02:00:00:00:00:01\"\nfirst" {
		t.Errorf("br-ex = %q", got)
	}
	if got := s.vsctl(t, "get", "interface", "br-ex", "type", "mtu_request"); got != "internal\n1400" {
		t.Errorf("br-ex interface = %q", got)
	}
	// The record is written once: a second call does not overwrite it, and writes nothing.
	spec.ExternalIDs = map[string]string{"dunlin.io/uplink": "second"}
	eventually(t, 5*time.Second, "cache to see the bridge", func() bool {
		writes := c.writes.Load()
		if err := c.EnsureBridge(ctx, spec); err != nil {
			t.Fatal(err)
		}
		return c.writes.Load() == writes
	})
	if ids, ok := c.Bridge("br-ex"); !ok || ids["dunlin.io/uplink"] != "first" {
		t.Errorf("Bridge = %v, %v; want the first record kept", ids, ok)
	}
	// Drift is corrected.
	s.vsctl(t, "set", "interface", "br-ex", "mtu_request=1500", "--", "remove", "bridge", "br-ex", "other_config", "hwaddr")
	eventually(t, 5*time.Second, "drift corrected", func() bool {
		if err := c.EnsureBridge(ctx, spec); err != nil {
			t.Fatal(err)
		}
		return s.vsctl(t, "get", "interface", "br-ex", "mtu_request") == "1400" &&
			s.vsctlStr(t, "bridge", "br-ex", "other_config:hwaddr") == "02:00:00:00:00:01"
	})
	if err := c.DeleteBridge(ctx, "br-ex"); err != nil {
		t.Fatal(err)
	}
	if got := s.vsctl(t, "list-br"); got != "" {
		t.Errorf("bridges after delete = %q", got)
	}
	eventually(t, 5*time.Second, "cache to see the deletion", func() bool {
		_, ok := c.Bridge("br-ex")
		return !ok
	})
	if err := c.DeleteBridge(ctx, "br-ex"); err != nil {
		t.Errorf("deleting a missing bridge: %v", err)
	}
}
