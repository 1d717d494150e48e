package translator

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dunlinplugin/dunlin/translator/ipam"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// metrics are the controller's Prometheus collectors (the NB committer has its own).
type metrics struct {
	reconcile   *prometheus.HistogramVec // by kind
	programming *prometheus.HistogramVec // by kind: change observed -> rows committed
}

// kinds are the controller's queues, each a kind label value of its histograms.
var kinds = []string{KindCluster, KindNode, KindPod, KindService, KindGateway, KindPolicy, KindPolicyNamespace, KindPolicyPeer}

// ipamStats is what the IPAM metrics read, on every scrape.
type ipamStats interface {
	PodsInUse() int
	NodesWithSubnet() int
	NodeSubnetCapacity() int
	NodeUsages() []ipam.NodeUsage
}

func newMetrics(reg prometheus.Registerer, stats ipamStats, kinds []string) *metrics {
	m := &metrics{
		reconcile: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "dunlin_reconcile_duration_seconds", Help: "Time to reconcile one object, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"kind"}),
		programming: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dunlin_network_programming_duration_seconds",
			Help:    "Time from observing a change of an object to its NB rows being committed, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"kind"}),
	}
	// Every kind is exported from the start, so dashboards show 0 rather than nothing.
	for _, k := range kinds {
		m.reconcile.WithLabelValues(k)
		m.programming.WithLabelValues(k)
	}
	reg.MustRegister(m.reconcile, m.programming, &ipamCollector{stats: stats})
	return m
}

var (
	podAddressesInUseDesc = prometheus.NewDesc("dunlin_ipam_pod_addresses_in_use",
		"Pod addresses allocated by Dunlin's IPAM.", nil, nil)
	nodeSubnetsInUseDesc = prometheus.NewDesc("dunlin_ipam_node_subnets_in_use",
		"Node subnets known to Dunlin's IPAM.", nil, nil)
	nodeSubnetsCapacityDesc = prometheus.NewDesc("dunlin_ipam_node_subnets_capacity",
		"Node subnets of the allocated prefix length that --cluster-cidr holds.", nil, nil)
	nodeAddressesInUseDesc = prometheus.NewDesc("dunlin_ipam_node_pod_addresses_in_use",
		"Pod addresses allocated in the node's subnet.", []string{"node"}, nil)
	nodeAddressesCapacityDesc = prometheus.NewDesc("dunlin_ipam_node_pod_addresses_capacity",
		"Pod addresses the node's subnet can hold (network, broadcast, gateway and management port excluded).", []string{"node"}, nil)
)

// ipamCollector reads the IPAM's usage at scrape time: per node (one series per node and gauge, so
// bounded by the cluster's size), and for the cluster CIDR, so that exhaustion can be alerted on as a
// ratio before allocations fail.
type ipamCollector struct{ stats ipamStats }

func (c *ipamCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{podAddressesInUseDesc, nodeSubnetsInUseDesc, nodeSubnetsCapacityDesc,
		nodeAddressesInUseDesc, nodeAddressesCapacityDesc} {
		ch <- d
	}
}

func (c *ipamCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(podAddressesInUseDesc, prometheus.GaugeValue, float64(c.stats.PodsInUse()))
	ch <- prometheus.MustNewConstMetric(nodeSubnetsInUseDesc, prometheus.GaugeValue, float64(c.stats.NodesWithSubnet()))
	ch <- prometheus.MustNewConstMetric(nodeSubnetsCapacityDesc, prometheus.GaugeValue, float64(c.stats.NodeSubnetCapacity()))
	for _, u := range c.stats.NodeUsages() {
		ch <- prometheus.MustNewConstMetric(nodeAddressesInUseDesc, prometheus.GaugeValue, float64(u.InUse), u.Node)
		ch <- prometheus.MustNewConstMetric(nodeAddressesCapacityDesc, prometheus.GaugeValue, float64(u.Capacity), u.Node)
	}
}

// RegisterMetrics registers with reg the collectors a leading dunlin-controller serves besides Go's
// and the process's (those of New and NewLeaderMetrics), over stats, for tests that check dashboards
// and alert rules against what it exports.
func RegisterMetrics(reg prometheus.Registerer, stats *ipam.Cluster) {
	nbstore.NewMetrics(reg)
	newMetrics(reg, stats, kinds)
	NewLeaderMetrics(reg)
}

// LeaderMetrics say which controller replica leads and since when; dunlin-controller registers them
// before it campaigns, so standby replicas export them too.
type LeaderMetrics struct {
	isLeader prometheus.Gauge
	since    prometheus.Gauge
	acquired prometheus.Counter
}

// NewLeaderMetrics registers the leader election's collectors with reg.
func NewLeaderMetrics(reg prometheus.Registerer) *LeaderMetrics {
	m := &LeaderMetrics{
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dunlin_controller_is_leader", Help: "1 while this dunlin-controller holds the Lease and writes NB, else 0.",
		}),
		since: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "dunlin_controller_leader_since_timestamp_seconds",
			Help: "Unix time at which this dunlin-controller last became the leader; 0 if it never did. Its changes across replicas are leader changes.",
		}),
		acquired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "dunlin_controller_leadership_acquired_total", Help: "Times this dunlin-controller became the leader.",
		}),
	}
	reg.MustRegister(m.isLeader, m.since, m.acquired)
	return m
}

// Started records that this process became the leader at unix time now.
func (m *LeaderMetrics) Started(now float64) {
	m.acquired.Inc()
	m.since.Set(now)
	m.isLeader.Set(1)
}

// Stopped records that this process no longer leads.
func (m *LeaderMetrics) Stopped() { m.isLeader.Set(0) }
