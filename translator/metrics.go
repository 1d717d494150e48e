package translator

import "github.com/prometheus/client_golang/prometheus"

// metrics are the controller's Prometheus collectors (the NB committer has its own).
type metrics struct {
	reconcile   *prometheus.HistogramVec // by kind
	programming *prometheus.HistogramVec // by kind: change observed -> rows committed
	addresses   prometheus.GaugeFunc
	subnets     prometheus.GaugeFunc
}

func newMetrics(reg prometheus.Registerer, podsInUse, nodesWithSubnet func() float64) *metrics {
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
		addresses: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dunlin_ipam_pod_addresses_in_use", Help: "Pod addresses allocated by Dunlin's IPAM.",
		}, podsInUse),
		subnets: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "dunlin_ipam_node_subnets_in_use", Help: "Node subnets known to Dunlin's IPAM.",
		}, nodesWithSubnet),
	}
	reg.MustRegister(m.reconcile, m.programming, m.addresses, m.subnets)
	return m
}
