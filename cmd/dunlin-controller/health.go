package main

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/translator"
)

// healthState answers /healthz (the process and its lease are fine) and /readyz (this replica leads,
// finished its startup sync and is connected to NB).
type healthState struct {
	mu            sync.Mutex
	controller    *translator.Controller
	leaderElector *leaderelection.LeaderElector
}

func (h *healthState) setController(c *translator.Controller) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.controller = c
}

func (h *healthState) setLeaderElector(le *leaderelection.LeaderElector) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.leaderElector = le
}

func (h *healthState) ready() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.controller == nil {
		return errors.New("not leading or not connected to NB yet")
	}
	if !h.controller.Ready() {
		return errors.New("startup sync not finished or NB disconnected")
	}
	return nil
}

func (h *healthState) healthy() error {
	h.mu.Lock()
	le := h.leaderElector
	h.mu.Unlock()
	if le != nil {
		return le.Check(20 * time.Second)
	}
	return nil
}

func serveMetrics(ctx context.Context, addr string, reg *prometheus.Registry, h *healthState) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	check := func(f func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if err := f(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		}
	}
	mux.Handle("/healthz", check(h.healthy))
	mux.Handle("/readyz", check(h.ready))
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		klog.ErrorS(err, "Metrics server failed", "address", addr)
	}
}
