package translator

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dunlinplugin/dunlin/translator/ipam"
)

// The IPAM gauges are read from the bookkeeping at scrape time: per node subnet and for the cluster
// CIDR, so that alerts can compute how full each is.
func TestIPAMMetrics(t *testing.T) {
	c, err := ipam.NewCluster(netip.MustParsePrefix("10.244.0.0/16"), 24)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.AllocateNodeSubnet("n1"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"ns/a", "ns/b", "ns/c"} {
		if _, err := c.AllocatePod(p, "u", "n1"); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	newMetrics(reg, c, []string{KindPod})
	want := `
# HELP dunlin_ipam_node_pod_addresses_capacity Pod addresses the node's subnet can hold (network, broadcast, gateway and management port excluded).
# TYPE dunlin_ipam_node_pod_addresses_capacity gauge
dunlin_ipam_node_pod_addresses_capacity{node="n1"} 252
# HELP dunlin_ipam_node_pod_addresses_in_use Pod addresses allocated in the node's subnet.
# TYPE dunlin_ipam_node_pod_addresses_in_use gauge
dunlin_ipam_node_pod_addresses_in_use{node="n1"} 3
# HELP dunlin_ipam_node_subnets_capacity Node subnets of the allocated prefix length that --cluster-cidr holds.
# TYPE dunlin_ipam_node_subnets_capacity gauge
dunlin_ipam_node_subnets_capacity 256
# HELP dunlin_ipam_node_subnets_in_use Node subnets known to Dunlin's IPAM.
# TYPE dunlin_ipam_node_subnets_in_use gauge
dunlin_ipam_node_subnets_in_use 1
# HELP dunlin_ipam_pod_addresses_in_use Pod addresses allocated by Dunlin's IPAM.
# TYPE dunlin_ipam_pod_addresses_in_use gauge
dunlin_ipam_pod_addresses_in_use 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"dunlin_ipam_node_pod_addresses_capacity", "dunlin_ipam_node_pod_addresses_in_use",
		"dunlin_ipam_node_subnets_capacity", "dunlin_ipam_node_subnets_in_use", "dunlin_ipam_pod_addresses_in_use"); err != nil {
		t.Fatal(err)
	}
}
