package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/translator"
)

// errLostLease is returned when another replica took the Lease while this one was leading.
var errLostLease = errors.New("lost the dunlin-controller lease")

// runElected runs work while this process holds the dunlin-controller Lease. When ctx ends (SIGTERM)
// it stops work first and only then releases the Lease, so that the standby never writes NB while this
// process still does (the contract of ReleaseOnCancel), and returns nil. It returns errLostLease when
// the Lease was lost, and work's error when work failed, after giving the Lease up.
func runElected(ctx context.Context, o options, kube kubernetes.Interface, recorder record.EventRecorder,
	health *healthState, leader *translator.LeaderMetrics, work func(context.Context) error) error {
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("leader election identity: %w", err)
	}
	id := fmt.Sprintf("%s_%d", host, os.Getpid())
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.leaderNamespace, "dunlin-controller",
		kube.CoreV1(), kube.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id, EventRecorder: recorder})
	if err != nil {
		return fmt.Errorf("leader election lock: %w", err)
	}

	// The elector has a context of its own: cancelling it releases the Lease, which must wait until
	// work has returned.
	electCtx, release := context.WithCancel(context.WithoutCancel(ctx))
	w := &guardedWork{}
	var led atomic.Bool
	lead := func(leadCtx context.Context) {
		led.Store(true)
		leader.Started(float64(time.Now().UnixNano()) / 1e9)
		defer leader.Stopped()
		// leadCtx ends when leadership is lost; work also stops on SIGTERM.
		workCtx, cancel := context.WithCancel(leadCtx)
		defer cancel()
		stopOnSignal := context.AfterFunc(ctx, cancel)
		defer stopOnSignal()
		w.run(workCtx, work)
		// However work ended, leadership ends with it.
		release()
	}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, ReleaseOnCancel: true, Name: "dunlin-controller",
		LeaseDuration: o.leaseDuration, RenewDeadline: o.leaseDuration * 2 / 3, RetryPeriod: o.leaseDuration / 7,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: lead,
			// client-go calls this also when it never led.
			OnStoppedLeading: func() {
				if led.Load() {
					klog.InfoS("No longer the leader", "identity", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	health.setLeaderElector(le)

	// On SIGTERM: stop work (or keep it from starting), then release the Lease. A standby holds
	// nothing to release: it leaves without cancelling the elector, whose Lease read in flight would
	// otherwise end in a logged error.
	standbyDone := make(chan struct{})
	stopAfterSignal := context.AfterFunc(ctx, func() {
		w.stop()
		if led.Load() {
			release()
			return
		}
		close(standbyDone)
	})
	defer stopAfterSignal()
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		le.Run(electCtx)
	}()
	select {
	case <-elected:
	case <-standbyDone:
		// Should the Lease have been won meanwhile, lead() releases it (work does not start any more).
		klog.InfoS("Standby stopping", "identity", id)
		return nil
	}
	release()
	// Run does not wait for OnStartedLeading to return.
	w.stop()
	switch {
	case w.failure() != nil:
		return w.failure()
	case ctx.Err() != nil:
		return nil
	default:
		return errLostLease
	}
}

// guardedWork runs work at most while not stopped, and lets stop wait for it to return.
type guardedWork struct {
	mu       sync.Mutex
	stopping bool
	running  sync.WaitGroup
	err      error
}

func (g *guardedWork) run(ctx context.Context, work func(context.Context) error) {
	g.mu.Lock()
	if g.stopping {
		g.mu.Unlock()
		return
	}
	g.running.Add(1)
	g.mu.Unlock()
	defer g.running.Done()
	if err := stopped(ctx, work(ctx)); err != nil {
		g.mu.Lock()
		g.err = err
		g.mu.Unlock()
	}
}

// failure is work's error, nil when it only stopped because it was told to.
func (g *guardedWork) failure() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// stop keeps work from starting and waits until a running one has returned.
func (g *guardedWork) stop() {
	g.mu.Lock()
	g.stopping = true
	g.mu.Unlock()
	g.running.Wait()
}

// stopped returns err unless ctx had ended, in which case err is how work reacted to being stopped
// (context.Canceled, an informer sync cut short, ...) and is only logged.
func stopped(ctx context.Context, err error) error {
	if err == nil || ctx.Err() == nil {
		return err
	}
	if !errors.Is(err, context.Canceled) {
		klog.V(2).InfoS("Translator stopped", "reason", err)
	}
	return nil
}
