package nodeagent

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dunlinplugin/dunlin/cni"
)

type metrics struct {
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
	duration *prometheus.HistogramVec
	phase    *prometheus.HistogramVec
}

// cniCommands are the command label's values: CNI_COMMAND comes from the runtime, so anything else is
// counted as "other" to keep the label bounded.
var cniCommands = []string{"ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"}

func commandLabel(cmd string) string {
	for _, c := range cniCommands {
		if c == cmd {
			return cmd
		}
	}
	return "other"
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dunlin_cni_requests_total",
			Help: "CNI requests served by dunlin-node, by command and result.",
		}, []string{"command", "result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "dunlin_cni_errors_total",
			Help: "Failed CNI requests by command and the CNI error code returned to the runtime (e.g. 4 invalid environment, 7 invalid network config, 11 try again later, 999 internal).",
		}, []string{"command", "code"}),
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
	// The commands a runtime sends start at 0, so that error ratios have a denominator from the start.
	for _, c := range []string{"ADD", "DEL", "CHECK"} {
		m.requests.WithLabelValues(c, "success")
		m.requests.WithLabelValues(c, "error")
		m.duration.WithLabelValues(c)
	}
	reg.MustRegister(m.requests, m.errors, m.duration, m.phase)
	return m
}

// observe counts one served request.
func (m *metrics) observe(command string, seconds float64, err error) {
	command = commandLabel(command)
	result := "success"
	if err != nil {
		result = "error"
		m.errors.WithLabelValues(command, strconv.FormatUint(uint64(cni.ErrorOf(err).Code), 10)).Inc()
	}
	m.requests.WithLabelValues(command, result).Inc()
	m.duration.WithLabelValues(command).Observe(seconds)
}
