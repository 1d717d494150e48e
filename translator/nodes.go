package translator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/ipam"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// Event reasons, for kubectl get events --field-selector reason=...
const (
	reasonInvalidSubnet     = "InvalidNodeSubnet"
	reasonSubnetExhausted   = "NodeSubnetsExhausted"
	reasonInvalidAnnotation = "InvalidPodNetworkAnnotation"
	reasonAddressConflict   = "PodAddressConflict"
	reasonAddressExhausted  = "PodAddressesExhausted"
	reasonNBConflict        = "NBNameConflict"
	reasonNBFailed          = "NBWriteFailed"
)

// warn logs and records a Warning event on obj.
func (c *Controller) warn(obj runtime.Object, reason, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	klog.InfoS("Warning", "object", klog.KObj(obj.(interface {
		GetName() string
		GetNamespace() string
	})), "reason", reason, "message", msg)
	c.recorder.Event(obj, corev1.EventTypeWarning, reason, msg)
}

// warnNB records why writing obj's rows failed, unless it is only waiting.
func (c *Controller) warnNB(obj runtime.Object, err error) {
	var conflict *nbstore.ConflictError
	switch {
	case errors.Is(err, errWait), errors.Is(err, nbstore.ErrReplan), errors.Is(err, context.Canceled):
		// Waiting, planned again at once after a failover, or stopping: nothing the user must look at.
	case errors.As(err, &conflict):
		c.warn(obj, reasonNBConflict, "%v", conflict)
	default:
		c.warn(obj, reasonNBFailed, "cannot write OVN NB rows (will retry): %v", err)
	}
}

// syncNode keeps a node's subnet and rows.
func (c *Controller) syncNode(ctx context.Context, name string) error {
	owner := Owner(KindNode, name)
	node, err := c.nodeLister.Get(name)
	if apierrors.IsNotFound(err) {
		// Rows first, then the subnet: it is not handed out while the switch still uses it.
		if err := c.apply(ctx, owner, nbstore.Desired{}); err != nil {
			return err
		}
		c.ipam.ReleaseNodeSubnet(name)
		c.nodeFeatures.Delete(name)
		// Node-local load balancers go with the switch; the Services forget the node.
		c.switchNodes.Delete(name)
		c.requeueNodeDependent()
		c.queues[KindCluster].Add("dunlin") // its management address is no longer always allowed
		return nil
	}
	if err != nil {
		return err
	}
	subnet, err := c.nodeSubnet(ctx, node)
	if err != nil {
		return err
	}
	if !subnet.IsValid() {
		// Bad input with no subnet to fall back on, already reported. An update of the node brings it
		// back here.
		if _, had := c.switchNodes.LoadAndDelete(name); had {
			c.requeueNodeDependent()
		}
		c.queues[KindGateway].Add(name) // no switch, no gateway: the policy's next hop is on it
		return c.apply(ctx, owner, nbstore.Desired{})
	}
	if err := c.apply(ctx, owner, nbstore.Rows(NodeRows(NodeNetwork{Name: name, Subnet: subnet})...)); err != nil {
		c.warnNB(node, err)
		return err
	}
	if _, existed := c.switchNodes.LoadOrStore(name, true); !existed {
		c.requeueNodeDependent()
		c.queues[KindCluster].Add("dunlin") // its management address is always allowed
		c.queues[KindGateway].Add(name)     // its gateway waits for the switch's management port
	}
	// Pods scheduled before the node had its switch wait in their queue; wake them now. When the
	// node's agent announced new features, every pod of the node is written again with them.
	features := node.Annotations[annotations.NodeFeatures]
	old, known := c.nodeFeatures.Swap(name, features)
	all := known && old != features
	pods, _ := c.podIndexer.ByIndex(podNodeIndex, name)
	for _, p := range pods {
		pod := p.(*corev1.Pod)
		if _, ok := c.ipam.Pod(pod.Namespace + "/" + pod.Name); all || !ok || !hasPodNetwork(pod) {
			c.queues[KindPod].Add(pod.Namespace + "/" + pod.Name)
		}
	}
	return nil
}

// nodeHas reports whether the node's agent announced feature.
func (c *Controller) nodeHas(node, feature string) bool {
	n, err := c.nodeLister.Get(node)
	return err == nil && annotations.HasFeature(n, feature)
}

func hasPodNetwork(p *corev1.Pod) bool {
	_, ok := p.Annotations[annotations.PodNetwork]
	return ok
}

// nodeSubnet returns the node's subnet: spec.podCIDRs when the cluster allocates them, else the
// dunlin.io/node-subnet annotation, else a new allocation persisted in that annotation. A subnet in use
// is never given up for bad input: an unusable or changed declaration is reported and the node keeps the
// subnet it has (see keepSubnet). A zero prefix with a nil error means bad input with nothing to keep.
func (c *Controller) nodeSubnet(ctx context.Context, node *corev1.Node) (netip.Prefix, error) {
	declared, src, err := annotations.DeclaredNodeSubnets(node)
	p := annotations.IPv4Subnet(declared)
	held, holds := c.ipam.NodeSubnet(node.Name)
	switch {
	case err != nil:
		return c.keepSubnet(ctx, node, src, fmt.Sprintf("%v", err))
	case p.IsValid() && holds && held != p:
		return c.keepSubnet(ctx, node, src, fmt.Sprintf("%s %s differs from the subnet %s in use; a node's subnet cannot change while the node exists", src, p, held))
	case p.IsValid():
		if err := c.ipam.ReserveNodeSubnet(node.Name, p); err != nil {
			return c.keepSubnet(ctx, node, src, fmt.Sprintf("%s %s: %v", src, p, err))
		}
		return p, nil
	case src == "spec.podCIDRs":
		return c.keepSubnet(ctx, node, src, fmt.Sprintf("spec.podCIDRs %v has no IPv4 subnet", node.Spec.PodCIDRs))
	}
	// Nothing declared: allocate (or take back the subnet held or last written, when the annotation was
	// removed) and persist it.
	if !holds {
		if last := c.switchSubnet(node.Name); last.IsValid() && c.ipam.ReserveNodeSubnet(node.Name, last) == nil {
			held, holds = last, true
		}
	}
	if !holds {
		if wait, forever := c.waitForPodCIDRs(node); forever || wait > 0 {
			if wait > 0 {
				c.queues[KindNode].AddAfter(node.Name, wait)
			}
			return netip.Prefix{}, nil // no subnet yet, as for bad input with nothing to keep
		}
		if held, err = c.ipam.AllocateNodeSubnet(node.Name); err != nil {
			if errors.Is(err, ipam.ErrExhausted) {
				c.warn(node, reasonSubnetExhausted, "%v; widen --cluster-cidr or remove nodes", err)
			}
			return netip.Prefix{}, err
		}
		klog.InfoS("Allocated node subnet", "node", node.Name, "subnet", held)
	}
	return held, c.persistNodeSubnet(ctx, node, held, !holds)
}

// waitForPodCIDRs says whether a node without a subnet waits for spec.podCIDRs instead of getting one
// from Dunlin: forever (the node's update brings it back), for wait more, or not at all. Allocating
// while kube-controller-manager's nodeipam is about to set spec.podCIDRs would give the node two
// different subnets, the one in use and the one the cluster declares.
func (c *Controller) waitForPodCIDRs(node *corev1.Node) (wait time.Duration, forever bool) {
	switch c.cfg.NodeSubnetSource {
	case SubnetSourcePodCIDRs:
		klog.InfoS("Node has no spec.podCIDRs yet; waiting for them (--node-subnet-source=pod-cidrs)", "node", node.Name)
		return 0, true
	case SubnetSourceDunlin:
		return 0, false
	}
	left := c.cfg.PodCIDRWait - time.Since(node.CreationTimestamp.Time)
	if left <= 0 || !c.clusterAllocatesPodCIDRs() {
		return 0, false
	}
	klog.V(2).InfoS("New node has no spec.podCIDRs yet; waiting for them before allocating a subnet", "node", node.Name, "for", left.Round(time.Millisecond))
	return left, false
}

// clusterAllocatesPodCIDRs: some node has spec.podCIDRs, so nodeipam runs (in a kubeadm cluster the
// control-plane node has them before Dunlin is installed).
func (c *Controller) clusterAllocatesPodCIDRs() bool {
	nodes, _ := c.nodeLister.List(labels.Everything())
	return slices.ContainsFunc(nodes, func(n *corev1.Node) bool { return len(n.Spec.PodCIDRs) > 0 })
}

// keepSubnet reports why the node's declared subnet cannot be used and returns the subnet the node
// already has (in memory, or in its switch after a restart), restoring the annotation to it when that is
// where the bad value came from. It returns a zero prefix when the node has none.
func (c *Controller) keepSubnet(ctx context.Context, node *corev1.Node, src, why string) (netip.Prefix, error) {
	last, holds := c.ipam.NodeSubnet(node.Name)
	if !holds {
		if sw := c.switchSubnet(node.Name); sw.IsValid() && c.ipam.ReserveNodeSubnet(node.Name, sw) == nil {
			last, holds = sw, true
		}
	}
	if !holds {
		c.warn(node, reasonInvalidSubnet, "%s; remove or correct it", why)
		return netip.Prefix{}, nil
	}
	c.warn(node, reasonInvalidSubnet, "%s; keeping subnet %s", why, last)
	if strings.HasPrefix(src, "annotation") {
		return last, c.persistNodeSubnet(ctx, node, last, false)
	}
	return last, nil
}

// persistNodeSubnet writes p into the node's annotation. A subnet allocated for this write is released
// only when the API server definitely refused it.
func (c *Controller) persistNodeSubnet(ctx context.Context, node *corev1.Node, p netip.Prefix, allocated bool) error {
	value := annotations.FormatNodeSubnets([]netip.Prefix{p})
	if node.Annotations[annotations.NodeSubnet] == value {
		return nil
	}
	patch := fmt.Sprintf(`{"metadata":{"uid":%q,"annotations":{%q:%q}}}`, node.UID, annotations.NodeSubnet, value)
	_, err := c.kube.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: fieldManager})
	if err == nil {
		return nil
	}
	if allocated && definitelyRefused(err) {
		c.ipam.ReleaseNodeSubnet(node.Name)
	}
	return fmt.Errorf("annotate node %s with subnet %s: %w", node.Name, p, err)
}

// switchSubnet is the subnet of the node's switch in NB, if Dunlin wrote one: the last good subnet when
// the annotation has gone bad while no controller ran.
func (c *Controller) switchSubnet(node string) netip.Prefix {
	rows, err := c.store.OwnedRows(Owner(KindNode, node))
	if err != nil {
		return netip.Prefix{}
	}
	for _, m := range rows["Logical_Switch"] {
		if ls := m.(*nbmodel.LogicalSwitch); ls.Name == node {
			if p, err := netip.ParsePrefix(ls.OtherConfig["subnet"]); err == nil {
				return p
			}
		}
	}
	return netip.Prefix{}
}

// rebuildIPAM loads every persisted subnet and address before any allocation: the annotations first,
// oldest object first so that when two claim the same one the older keeps it (conflicts are reported by
// the syncs that follow), then, for nodes and pods whose annotation is missing or unusable, what their
// rows in NB hold, so that a bad edit made while no controller ran does not free an address in use.
func (c *Controller) rebuildIPAM() error {
	nodes, err := c.nodeLister.List(labels.Everything())
	if err != nil {
		return err
	}
	sort.Slice(nodes, func(i, j int) bool { return olderThan(&nodes[i].ObjectMeta, &nodes[j].ObjectMeta) })
	var fromNB []*corev1.Node
	for _, n := range nodes {
		ps, _, err := annotations.DeclaredNodeSubnets(n)
		p := annotations.IPv4Subnet(ps)
		if err != nil || !p.IsValid() {
			fromNB = append(fromNB, n)
			continue
		}
		if err := c.ipam.ReserveNodeSubnet(n.Name, p); err != nil {
			klog.InfoS("Ignoring node subnet on start", "node", n.Name, "subnet", p, "err", err)
			fromNB = append(fromNB, n)
		}
	}
	for _, n := range fromNB {
		if p := c.switchSubnet(n.Name); p.IsValid() {
			if err := c.ipam.ReserveNodeSubnet(n.Name, p); err != nil {
				klog.InfoS("Ignoring the subnet of a node's switch on start", "node", n.Name, "subnet", p, "err", err)
			}
		}
	}
	pods, err := c.podLister.List(labels.Everything())
	if err != nil {
		return err
	}
	sort.Slice(pods, func(i, j int) bool { return olderThan(&pods[i].ObjectMeta, &pods[j].ObjectMeta) })
	restored, fromPorts := 0, []*corev1.Pod{}
	for _, p := range pods {
		if !wantsNetwork(p) {
			continue
		}
		info, err := podAnnotation(p)
		if err != nil || info == nil {
			fromPorts = append(fromPorts, p)
			continue
		}
		v4, _ := info.IPv4()
		pa := ipam.PodAddr{Node: p.Spec.NodeName, UID: string(p.UID), Addr: v4.Addr()}
		if err := c.ipam.ReservePod(p.Namespace+"/"+p.Name, pa); err != nil {
			klog.InfoS("Ignoring pod address on start", "pod", klog.KObj(p), "addr", pa.Addr, "err", err)
			continue
		}
		restored++
	}
	for _, p := range fromPorts {
		key := p.Namespace + "/" + p.Name
		if a, ok := c.portAddress(key, string(p.UID), p.Spec.NodeName); ok {
			if c.ipam.ReservePod(key, ipam.PodAddr{Node: p.Spec.NodeName, UID: string(p.UID), Addr: a}) == nil {
				restored++
			}
		}
	}
	klog.InfoS("Rebuilt IPAM", "nodes", c.ipam.NodesWithSubnet(), "podAddresses", restored)
	return nil
}
