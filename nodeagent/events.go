package nodeagent

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
)

// Reasons of the Warning events dunlin-node records on its Node.
const (
	// reasonUplinkMissing: the gateway's uplink is not there (no such interface, or no default route
	// to find it by); the agent retries and sets the gateway up once it appears.
	reasonUplinkMissing = "GatewayUplinkMissing"
	// reasonGatewayFailed: any other failure to set the node gateway up; retried too.
	reasonGatewayFailed = "GatewaySetupFailed"
)

// startEvents starts recording the agent's events to the API until ctx ends; it returns the function
// that stops it.
func (a *Agent) startEvents(ctx context.Context) func() {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.client.CoreV1().Events("")})
	a.recorder = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "dunlin-node", Host: a.cfg.NodeName})
	return b.Shutdown
}

// warnNode logs msg and records it as a Warning event on the agent's Node.
func (a *Agent) warnNode(ctx context.Context, reason, msg string) {
	klog.FromContext(ctx).Info("Warning", "node", a.cfg.NodeName, "reason", reason, "message", msg)
	if a.recorder == nil {
		return
	}
	node, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		klog.FromContext(ctx).Error(err, "Cannot read the node to record an event on it", "reason", reason)
		return
	}
	a.recorder.Event(node, corev1.EventTypeWarning, reason, msg)
}
