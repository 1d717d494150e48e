package translator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/translator/ipam"
)

// fieldManager names Dunlin's writes in managedFields.
const fieldManager = "dunlin-controller"

// wantsNetwork is true for pods that get a logical switch port: scheduled, not host-network, not
// finished. A terminating pod keeps its port until it is gone, since its containers still run.
func wantsNetwork(p *corev1.Pod) bool {
	return p.Spec.NodeName != "" && !p.Spec.HostNetwork &&
		p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

func olderThan(a, b *metav1.ObjectMeta) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
}

// podAnnotation returns the pod's parsed dunlin.io/pod-network, nil when it has none.
func podAnnotation(p *corev1.Pod) (*annotations.PodNetworkInfo, error) {
	s, ok := p.Annotations[annotations.PodNetwork]
	if !ok {
		return nil, nil
	}
	info, err := annotations.ParsePodNetwork(s)
	if err != nil {
		return nil, err
	}
	return &info, nil
}

// syncPod keeps a pod's address and logical switch port.
func (c *Controller) syncPod(ctx context.Context, key string) error {
	owner := Owner(KindPod, key)
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil // not a key we queue; nothing to retry
	}
	pod, err := c.podLister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) || (err == nil && !wantsNetwork(pod)) {
		c.ipam.ReleasePod(key)
		return c.apply(ctx, owner, nil)
	}
	if err != nil {
		return err
	}
	subnet, ok := c.ipam.NodeSubnet(pod.Spec.NodeName)
	if !ok {
		return fmt.Errorf("%w: node %s has no subnet yet", errWait, pod.Spec.NodeName)
	}
	addr, err := c.podAddress(ctx, pod, key, subnet)
	if err != nil || !addr.IsValid() {
		return err
	}
	err = c.apply(ctx, owner, PodRows(PodNetwork{
		Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Node: pod.Spec.NodeName, Addr: addr,
	}))
	if err != nil {
		c.warnNB(pod, err)
	}
	return err
}

// podAddress returns the pod's address: the one its annotation records, or a new one persisted in the
// annotation before any NB row uses it. A zero address with a nil error means bad input that was
// reported and waits for the pod to change.
func (c *Controller) podAddress(ctx context.Context, pod *corev1.Pod, key string, subnet netip.Prefix) (netip.Addr, error) {
	uid := string(pod.UID)
	info, err := podAnnotation(pod)
	if err != nil {
		c.ipam.ReleasePod(key)
		c.warn(pod, reasonInvalidAnnotation, "%v; the pod gets no network until the annotation is fixed or removed", err)
		return netip.Addr{}, nil
	}
	if info != nil {
		v4, _ := info.IPv4()
		a := v4.Addr()
		if !subnet.Contains(a) {
			c.ipam.ReleasePod(key)
			c.warn(pod, reasonInvalidAnnotation, "address %s is outside the subnet %s of node %s", a, subnet, pod.Spec.NodeName)
			return netip.Addr{}, nil
		}
		err := c.ipam.ReservePod(key, ipam.PodAddr{Node: pod.Spec.NodeName, UID: uid, Addr: a})
		var conflict *ipam.ConflictError
		if errors.As(err, &conflict) {
			c.warn(pod, reasonAddressConflict, "address %s is already used by pod %s; delete one of the two pods", a, conflict.Owner)
			return netip.Addr{}, nil
		}
		return a, err
	}
	// The informer may not show our own annotation yet: an allocation this pod already holds stands.
	if held, ok := c.ipam.Pod(key); ok && held.UID == uid && held.Node == pod.Spec.NodeName {
		return held.Addr, nil
	}
	pa, err := c.ipam.AllocatePod(key, uid, pod.Spec.NodeName)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			c.warn(pod, reasonAddressExhausted, "node %s: %v", pod.Spec.NodeName, err)
		}
		return netip.Addr{}, err
	}
	value := annotations.NewPodNetworkInfo([]netip.Prefix{netip.PrefixFrom(pa.Addr, subnet.Bits())},
		[]netip.Addr{conventions.GatewayIP(subnet)}, conventions.MACFromIP(pa.Addr)).Marshal()
	// The UID precondition keeps a recreated pod of the same name from inheriting this address.
	patch := fmt.Sprintf(`{"metadata":{"uid":%q,"annotations":{%q:%q}}}`, uid, annotations.PodNetwork, value)
	if _, err := c.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		c.ipam.ReleasePod(key)
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return netip.Addr{}, fmt.Errorf("%w: pod %s changed while annotating", errWait, key)
		}
		return netip.Addr{}, fmt.Errorf("annotate pod %s with address %s: %w", key, pa.Addr, err)
	}
	klog.V(2).InfoS("Allocated pod address", "pod", klog.KObj(pod), "addr", pa.Addr)
	return pa.Addr, nil
}
