package translator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/ipam"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
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
	if _, ok := info.IPv4(); !ok {
		return nil, fmt.Errorf("%s has no IPv4 address (%v)", annotations.PodNetwork, info.IPAddresses)
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
		return c.removePodNetwork(ctx, key)
	}
	if err != nil {
		return err
	}
	subnet, ok := c.ipam.NodeSubnet(pod.Spec.NodeName)
	if !ok {
		return fmt.Errorf("%w: node %s has no subnet yet", errWait, pod.Spec.NodeName)
	}
	addr, err := c.podAddress(ctx, pod, key, subnet)
	if err != nil {
		return err
	}
	if !addr.IsValid() {
		// Bad input, reported: the pod has no usable address, so it must not keep a port either.
		return c.removePodNetwork(ctx, key)
	}
	n, err := c.applyCount(ctx, owner, nbstore.Rows(PodRows(PodNetwork{
		Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Node: pod.Spec.NodeName, Addr: addr,
		IfaceIDVer: c.nodeHas(pod.Spec.NodeName, annotations.FeatureIfaceIDVer),
	})...))
	if err != nil {
		c.warnNB(pod, err)
		return err
	}
	if n > 0 {
		// Port groups hold ports, which exist only now: the namespace's policies can take it in.
		c.queuePoliciesOf(pod.Namespace)
	}
	return nil
}

// removePodNetwork removes the pod's port, then frees its address: in that order, so that no other pod
// is given the address while a port still claims it.
func (c *Controller) removePodNetwork(ctx context.Context, key string) error {
	if err := c.apply(ctx, Owner(KindPod, key), nbstore.Desired{}); err != nil {
		return err
	}
	c.ipam.ReleasePod(key)
	return nil
}

// podAddress returns the pod's address: the one its annotation records, or a new one persisted in the
// annotation before any NB row uses it. When the annotation cannot be honoured (malformed, outside the
// node's subnet, taken by another pod), the pod keeps the address its port already has, if that one is
// still valid and free, so that a bad edit does not cut a running pod off; otherwise it gets none. A
// zero address with a nil error means bad input that was reported and waits for a change.
func (c *Controller) podAddress(ctx context.Context, pod *corev1.Pod, key string, subnet netip.Prefix) (netip.Addr, error) {
	uid := string(pod.UID)
	node := pod.Spec.NodeName
	info, err := podAnnotation(pod)
	if err != nil {
		return c.lastGoodPodAddress(pod, key, subnet, reasonInvalidAnnotation, err.Error()), nil
	}
	if info != nil {
		v4, _ := info.IPv4()
		a := v4.Addr()
		if !subnet.Contains(a) {
			return c.lastGoodPodAddress(pod, key, subnet, reasonInvalidAnnotation,
				fmt.Sprintf("address %s is outside the subnet %s of node %s", a, subnet, node)), nil
		}
		err := c.ipam.ReservePod(key, ipam.PodAddr{Node: node, UID: uid, Addr: a})
		var conflict *ipam.ConflictError
		if errors.As(err, &conflict) {
			c.waitForAddress(a, key)
			return c.lastGoodPodAddress(pod, key, subnet, reasonAddressConflict,
				fmt.Sprintf("address %s is already used by pod %s; delete one of the two pods", a, conflict.Owner)), nil
		}
		return a, err
	}
	// The informer may not show our own annotation yet: an allocation this pod already holds stands,
	// and is written again only if the last write's outcome was unknown.
	if held, ok := c.ipam.Pod(key); ok && held.UID == uid && held.Node == node {
		if u, unsure := c.unconfirmed.Load(key); !unsure || u != uid {
			return held.Addr, nil
		}
		return c.annotatePod(ctx, pod, key, subnet, held)
	}
	// A port this pod already has (its annotation was removed) keeps its address when it can.
	if a, ok := c.portAddress(key, uid, node); ok && subnet.Contains(a) &&
		c.ipam.ReservePod(key, ipam.PodAddr{Node: node, UID: uid, Addr: a}) == nil {
		return c.annotatePod(ctx, pod, key, subnet, ipam.PodAddr{Node: node, UID: uid, Addr: a})
	}
	pa, err := c.ipam.AllocatePod(key, uid, node)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			c.warn(pod, reasonAddressExhausted, "node %s: %v", node, err)
		}
		return netip.Addr{}, err
	}
	return c.annotatePod(ctx, pod, key, subnet, pa)
}

// annotatePod persists the address pa holds for the pod. The address stays held unless the API server
// definitely refused the write: a timeout or a server error may hide a write that was applied, and
// freeing the address then could give it to a second pod.
func (c *Controller) annotatePod(ctx context.Context, pod *corev1.Pod, key string, subnet netip.Prefix, pa ipam.PodAddr) (netip.Addr, error) {
	uid := string(pod.UID)
	value := annotations.NewPodNetworkInfo([]netip.Prefix{netip.PrefixFrom(pa.Addr, subnet.Bits())},
		[]netip.Addr{conventions.GatewayIP(subnet)}, conventions.MACFromIP(pa.Addr)).Marshal()
	// The UID precondition keeps a recreated pod of the same name from inheriting this address.
	patch := fmt.Sprintf(`{"metadata":{"uid":%q,"annotations":{%q:%q}}}`, uid, annotations.PodNetwork, value)
	_, err := c.kube.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: fieldManager})
	c.unconfirmed.Delete(key)
	if err == nil {
		klog.V(2).InfoS("Allocated pod address", "pod", klog.KObj(pod), "addr", pa.Addr)
		return pa.Addr, nil
	}
	if definitelyRefused(err) {
		c.ipam.ReleasePod(key)
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return netip.Addr{}, fmt.Errorf("%w: pod %s changed while annotating", errWait, key)
		}
		return netip.Addr{}, fmt.Errorf("annotate pod %s with address %s: %w", key, pa.Addr, err)
	}
	// Ambiguous: ask the server what it holds now.
	cur, gerr := c.kube.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	switch {
	case gerr == nil && string(cur.UID) == uid && cur.Annotations[annotations.PodNetwork] == value:
		klog.InfoS("Pod annotation was applied despite an error", "pod", klog.KObj(pod), "addr", pa.Addr, "err", err)
		return pa.Addr, nil
	case gerr == nil && string(cur.UID) == uid && cur.Annotations[annotations.PodNetwork] != "":
		// Another writer annotated it: the next sync takes the address from the annotation.
		return netip.Addr{}, fmt.Errorf("%w: pod %s was annotated by another writer", errWait, key)
	case apierrors.IsNotFound(gerr) || (gerr == nil && string(cur.UID) != uid):
		c.ipam.ReleasePod(key)
		return netip.Addr{}, fmt.Errorf("%w: pod %s is gone", errWait, key)
	}
	// Still unknown: keep the address; the retry writes the same one.
	c.unconfirmed.Store(key, uid)
	return netip.Addr{}, fmt.Errorf("annotate pod %s with address %s (kept until the outcome is known): %w", key, pa.Addr, err)
}

// definitelyRefused is true for API errors that say the write was not applied.
func definitelyRefused(err error) bool {
	return apierrors.IsNotFound(err) || apierrors.IsConflict(err) || apierrors.IsInvalid(err) ||
		apierrors.IsBadRequest(err) || apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err) ||
		apierrors.IsTooManyRequests(err) || apierrors.IsMethodNotSupported(err) ||
		apierrors.IsNotAcceptable(err) || apierrors.IsUnsupportedMediaType(err) ||
		apierrors.IsRequestEntityTooLargeError(err) || apierrors.IsAlreadyExists(err)
}

// lastGoodPodAddress reports why the pod's annotation cannot be used and returns the address the pod's
// port already has in NB when it is still valid (inside the subnet, held by nobody else), or a zero
// address.
func (c *Controller) lastGoodPodAddress(pod *corev1.Pod, key string, subnet netip.Prefix, reason, why string) netip.Addr {
	if a, ok := c.portAddress(key, string(pod.UID), pod.Spec.NodeName); ok && subnet.Contains(a) {
		if err := c.ipam.ReservePod(key, ipam.PodAddr{Node: pod.Spec.NodeName, UID: string(pod.UID), Addr: a}); err == nil {
			c.warn(pod, reason, "%s; the pod keeps its current address %s until the annotation is fixed", why, a)
			return a
		}
	}
	c.warn(pod, reason, "%s; the pod gets no network until the annotation is fixed or removed", why)
	return netip.Addr{}
}

// portAddress is the IPv4 address of the pod's port in NB, if the port was written for this very pod
// (same UID) on this node.
func (c *Controller) portAddress(key, uid, node string) (netip.Addr, bool) {
	rows, err := c.store.OwnedRows(Owner(KindPod, key))
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range rows["Logical_Switch_Port"] {
		lsp := m.(*nbmodel.LogicalSwitchPort)
		if lsp.ExternalIDs[extPodUID] != uid || lsp.ExternalIDs[extNode] != node || len(lsp.Addresses) == 0 {
			continue
		}
		for _, f := range strings.Fields(lsp.Addresses[0])[1:] {
			if a, err := netip.ParseAddr(f); err == nil && a.Is4() {
				return a, true
			}
		}
	}
	return netip.Addr{}, false
}

// waitForAddress remembers that pod key waits for address a, held by another pod, so that it is retried
// as soon as a is freed rather than at the next resync.
func (c *Controller) waitForAddress(a netip.Addr, key string) {
	c.addrWaitersMu.Lock()
	defer c.addrWaitersMu.Unlock()
	if c.addrWaiters[a] == nil {
		c.addrWaiters[a] = map[string]bool{}
	}
	c.addrWaiters[a][key] = true
}

// addressFreed queues the pods waiting for a. It runs under the IPAM lock: it only queues.
func (c *Controller) addressFreed(_ string, pa ipam.PodAddr) {
	c.addrWaitersMu.Lock()
	defer c.addrWaitersMu.Unlock()
	for key := range c.addrWaiters[pa.Addr] {
		c.queues[KindPod].Add(key)
	}
	delete(c.addrWaiters, pa.Addr)
}
