package main

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// eventFlushTimeout bounds how long shutdown waits for recorded events to reach the apiserver. With the
// translator's stop and the Lease release (at most the renew deadline) it fits in the Deployment's
// 30 s termination grace period.
const eventFlushTimeout = 5 * time.Second

// A barrier is a marker event sent through the broadcaster behind the events to flush; the sink
// recognises it and never writes it to the API.
const (
	barrierKind   = "DunlinEventBarrier"
	barrierReason = "Flush"
)

// eventPipeline records the process's Kubernetes Events. Its broadcaster is not tied to the signal
// context, unlike with record.WithContext: it must outlive leader election, whose last act on SIGTERM
// is the Lease's "stopped leading" event, and it is flushed before the process exits.
type eventPipeline struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	sink        *barrierSink
	barriers    atomic.Int64
}

func startEvents(kube kubernetes.Interface) *eventPipeline {
	sink := &barrierSink{
		EventSink: &typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")},
		waiting:   map[string]chan struct{}{},
	}
	b := record.NewBroadcaster()
	b.StartEventWatcher(logEvent)
	b.StartRecordingToSink(sink)
	return &eventPipeline{
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "dunlin-controller"}),
		sink:        sink,
	}
}

// stop writes out the events recorded so far, waiting at most timeout, and stops the broadcaster.
// Call it once nothing records events any more.
func (p *eventPipeline) stop(timeout time.Duration) {
	if err := p.flush(timeout); err != nil {
		klog.ErrorS(err, "Events recorded before shutdown may be lost")
	}
	p.broadcaster.Shutdown()
}

// flush returns once every event recorded before the call has been written to the API, or given up on
// by the broadcaster's own retries. The broadcaster hands events to the sink one at a time, in order, so
// a barrier recorded now reaches the sink after all of them.
func (p *eventPipeline) flush(timeout time.Duration) error {
	name := fmt.Sprintf("flush-%d", p.barriers.Add(1))
	done := p.sink.expect(name)
	// A new object name per barrier: the correlator's spam filter and aggregation never hold it back.
	p.recorder.Event(&corev1.ObjectReference{Kind: barrierKind, Namespace: metav1.NamespaceDefault, Name: name},
		corev1.EventTypeNormal, barrierReason, "events recorded before this one are written")
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		p.sink.forget(name)
		return fmt.Errorf("events not written to the apiserver after %s", timeout)
	}
}

func isBarrier(e *corev1.Event) bool {
	return e.InvolvedObject.Kind == barrierKind && e.Reason == barrierReason
}

// barrierSink writes events to the API, except barriers, which it only reports as arrived.
type barrierSink struct {
	record.EventSink
	mu      sync.Mutex
	waiting map[string]chan struct{} // by barrier name
}

func (s *barrierSink) expect(name string) <-chan struct{} {
	ch := make(chan struct{})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waiting[name] = ch
	return ch
}

func (s *barrierSink) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.waiting, name)
}

// Create writes e, or closes the channel of the barrier e is.
func (s *barrierSink) Create(e *corev1.Event) (*corev1.Event, error) {
	if !isBarrier(e) {
		return s.EventSink.Create(e)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.waiting[e.InvolvedObject.Name]; ok {
		close(ch)
		delete(s.waiting, e.InvolvedObject.Name)
	}
	return e, nil
}

// logEvent logs every recorded event but barriers, with -v=4 or more.
func logEvent(e *corev1.Event) {
	if isBarrier(e) {
		return
	}
	klog.V(4).InfoS("Event occurred", "object", klog.KRef(e.InvolvedObject.Namespace, e.InvolvedObject.Name),
		"kind", e.InvolvedObject.Kind, "type", e.Type, "reason", e.Reason, "message", e.Message)
}
