package nodeagent

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	phase    *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dunlin_cni_requests_total",
			Help: "CNI requests served by dunlin-node, by command and result.",
		}, []string{"command", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dunlin_cni_request_duration_seconds",
			Help:    "Time to serve a CNI request, by command.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"command"}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "dunlin_cni_add_phase_duration_seconds",
			Help:    "Time of each phase of CNI ADD: pod_network (waiting for the controller's annotation), plumbing (veth, netns, OVS port), ovn_installed (waiting for ovn-controller).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"phase"}),
	}
	reg.MustRegister(m.requests, m.duration, m.phase)
	return m
}
