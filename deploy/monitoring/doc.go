// Package monitoring holds no code: its tests check the Prometheus alert rules and the Grafana
// dashboard in this directory with Prometheus's own promtool, and against the metrics that
// dunlin-controller and dunlin-node register, so that a renamed metric fails `make test`.
package monitoring
