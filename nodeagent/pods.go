package nodeagent

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	cnitypes "github.com/containernetworking/cni/pkg/types"

	"github.com/dunlinplugin/dunlin/cni"
	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/notify"
)

// podWatcher keeps the pods bound to this node in a cache and wakes ADDs waiting for a pod's network
// annotation, so an ADD costs no API round trip in the common case.
type podWatcher struct {
	client   kubernetes.Interface
	node     string
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
	lister   corelisters.PodLister

	changed notify.Keyed // namespace/name -> woken on any change of that pod
}

func newPodWatcher(client kubernetes.Interface, node string, resync time.Duration) *podWatcher {
	f := informers.NewSharedInformerFactoryWithOptions(client, resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}))
	inf := f.Core().V1().Pods()
	w := &podWatcher{client: client, node: node, factory: f, informer: inf.Informer(), lister: inf.Lister()}
	_, _ = w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.wake,
		UpdateFunc: func(_, obj any) { w.wake(obj) },
		DeleteFunc: w.wake,
	})
	return w
}

func (w *podWatcher) start(ctx context.Context) error {
	w.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced) {
		return fmt.Errorf("pod cache of node %s did not sync: %w", w.node, ctx.Err())
	}
	return nil
}

func (w *podWatcher) wake(obj any) {
	if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
		w.changed.Wake(key)
	}
}

// podNetwork waits until pod namespace/name (with uid, when the runtime gave one) carries a valid network
// annotation. It fails at once when the API says the pod does not exist, is on another node, or has another
// UID, and with ErrPodNetworkTimeout when the annotation does not come before ctx ends.
func (w *podWatcher) podNetwork(ctx context.Context, namespace, name, uid string) (*corev1.Pod, annotations.PodNetworkInfo, error) {
	key := namespace + "/" + name
	ch, unsubscribe := w.changed.Subscribe(key)
	defer unsubscribe()
	checkedAPI, logged := false, false
	for {
		pod, err := w.lister.Pods(namespace).Get(name)
		if err == nil && (uid == "" || string(pod.UID) == uid) {
			if v, ok := pod.Annotations[annotations.PodNetwork]; ok {
				info, err := annotations.ParsePodNetwork(v)
				if err != nil {
					return nil, info, cnitypes.NewError(cnitypes.ErrInvalidNetworkConfig,
						fmt.Sprintf("pod %s has a malformed %s annotation", key, annotations.PodNetwork),
						fmt.Sprintf("%v; remove the annotation and dunlin-controller allocates a new address", err))
				}
				return pod, info, nil
			}
			if !logged {
				logged = true
				klog.FromContext(ctx).V(2).Info("Waiting for the pod's network annotation", "pod", key, "uid", pod.UID)
			}
		} else if !checkedAPI {
			// The cache may lag behind the runtime; the API is authoritative for existence and UID.
			checkedAPI = true
			if err := w.checkLive(ctx, namespace, name, uid); err != nil {
				return nil, annotations.PodNetworkInfo{}, err
			}
		}
		select {
		case <-ch:
		case <-time.After(time.Second): // the cache may also update without an event for this key
		case <-ctx.Done():
			return nil, annotations.PodNetworkInfo{}, cnitypes.NewError(cni.ErrPodNetworkTimeout,
				fmt.Sprintf("pod %s on node %s has no %s annotation yet", key, w.node, annotations.PodNetwork),
				"dunlin-controller allocates pod addresses: check that it is running and leading, and its events on the pod and node")
		}
	}
}

func (w *podWatcher) checkLive(ctx context.Context, namespace, name, uid string) error {
	key := namespace + "/" + name
	pod, err := w.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return cnitypes.NewError(cni.ErrPodNotFound, fmt.Sprintf("pod %s does not exist", key),
			"the runtime asked for a pod the API server does not know; check CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME")
	case err != nil:
		return nil // the API is unreachable: keep waiting on the cache
	case pod.Spec.NodeName != w.node:
		return cnitypes.NewError(cni.ErrPodNotFound, fmt.Sprintf("pod %s is bound to node %q, not %s", key, pod.Spec.NodeName, w.node),
			"the CNI request reached the wrong node's dunlin-node")
	case uid != "" && pod.UID != types.UID(uid):
		return cnitypes.NewError(cni.ErrPodUIDMismatch, fmt.Sprintf("pod %s has UID %s, the runtime asked for UID %s", key, pod.UID, uid),
			"the sandbox belongs to a pod that was deleted and recreated with the same name")
	}
	return nil
}

// pod returns the cached pod, if any.
func (w *podWatcher) pod(namespace, name string) (*corev1.Pod, bool) {
	p, err := w.lister.Pods(namespace).Get(name)
	return p, err == nil
}
