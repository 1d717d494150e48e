package translator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
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
	case errors.Is(err, errWait):
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
		c.ipam.ReleaseNodeSubnet(name)
		// Node-local load balancers go with the switch; the Services forget the node.
		c.switchNodes.Delete(name)
		c.requeueNodeDependent()
		return c.apply(ctx, owner, nil)
	}
	if err != nil {
		return err
	}
	subnet, err := c.nodeSubnet(ctx, node)
	if err != nil {
		return err
	}
	if !subnet.IsValid() {
		// Bad input already reported; remove rows of a subnet we no longer trust. An update of the
		// node brings it back here.
		if _, had := c.switchNodes.LoadAndDelete(name); had {
			c.requeueNodeDependent()
		}
		return c.apply(ctx, owner, nil)
	}
	if err := c.apply(ctx, owner, NodeRows(NodeNetwork{Name: name, Subnet: subnet})); err != nil {
		c.warnNB(node, err)
		return err
	}
	if _, existed := c.switchNodes.LoadOrStore(name, true); !existed {
		c.requeueNodeDependent()
	}
	// Pods scheduled before the node had its switch wait in their queue; wake them now.
	pods, _ := c.podIndexer.ByIndex(podNodeIndex, name)
	for _, p := range pods {
		pod := p.(*corev1.Pod)
		if _, ok := c.ipam.Pod(pod.Namespace + "/" + pod.Name); !ok || !hasPodNetwork(pod) {
			c.queues[KindPod].Add(pod.Namespace + "/" + pod.Name)
		}
	}
	return nil
}

func hasPodNetwork(p *corev1.Pod) bool {
	_, ok := p.Annotations[annotations.PodNetwork]
	return ok
}

// nodeSubnet returns the node's subnet: spec.podCIDRs when the cluster allocates them, else the
// dunlin.io/node-subnet annotation, else a new allocation persisted in that annotation. An invalid
// prefix (zero value) with a nil error means bad input that was reported and is not retried.
func (c *Controller) nodeSubnet(ctx context.Context, node *corev1.Node) (netip.Prefix, error) {
	if ps, src, err := annotations.DeclaredNodeSubnets(node); err != nil || annotations.IPv4Subnet(ps).IsValid() {
		p := annotations.IPv4Subnet(ps)
		if err != nil {
			c.ipam.ReleaseNodeSubnet(node.Name)
			c.warn(node, reasonInvalidSubnet, "%v; remove or correct it", err)
			return netip.Prefix{}, nil
		}
		if err := c.ipam.ReserveNodeSubnet(node.Name, p); err != nil {
			c.ipam.ReleaseNodeSubnet(node.Name)
			c.warn(node, reasonInvalidSubnet, "%s %s: %v", src, p, err)
			return netip.Prefix{}, nil
		}
		return p, nil
	}
	p, err := c.ipam.AllocateNodeSubnet(node.Name)
	if err != nil {
		if errors.Is(err, ipam.ErrExhausted) {
			c.warn(node, reasonSubnetExhausted, "%v; widen --cluster-cidr or remove nodes", err)
		}
		return netip.Prefix{}, err
	}
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotations.NodeSubnet, annotations.FormatNodeSubnets([]netip.Prefix{p}))
	if _, err := c.kube.CoreV1().Nodes().Patch(ctx, node.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
		c.ipam.ReleaseNodeSubnet(node.Name)
		return netip.Prefix{}, fmt.Errorf("annotate node %s with subnet %s: %w", node.Name, p, err)
	}
	klog.InfoS("Allocated node subnet", "node", node.Name, "subnet", p)
	return p, nil
}

// rebuildIPAM loads every persisted subnet and address, oldest object first so that when two claim
// the same one the older keeps it; conflicts are reported by the syncs that follow.
func (c *Controller) rebuildIPAM() error {
	nodes, err := c.nodeLister.List(labels.Everything())
	if err != nil {
		return err
	}
	sort.Slice(nodes, func(i, j int) bool { return olderThan(&nodes[i].ObjectMeta, &nodes[j].ObjectMeta) })
	for _, n := range nodes {
		if ps, _, err := annotations.DeclaredNodeSubnets(n); err == nil && annotations.IPv4Subnet(ps).IsValid() {
			p := annotations.IPv4Subnet(ps)
			if err := c.ipam.ReserveNodeSubnet(n.Name, p); err != nil {
				klog.InfoS("Ignoring node subnet on start", "node", n.Name, "subnet", p, "err", err)
			}
		}
	}
	pods, err := c.podLister.List(labels.Everything())
	if err != nil {
		return err
	}
	sort.Slice(pods, func(i, j int) bool { return olderThan(&pods[i].ObjectMeta, &pods[j].ObjectMeta) })
	restored := 0
	for _, p := range pods {
		if !wantsNetwork(p) {
			continue
		}
		info, err := podAnnotation(p)
		if err != nil || info == nil {
			continue
		}
		v4, ok := info.IPv4()
		if !ok {
			continue
		}
		pa := ipam.PodAddr{Node: p.Spec.NodeName, UID: string(p.UID), Addr: v4.Addr()}
		if err := c.ipam.ReservePod(p.Namespace+"/"+p.Name, pa); err != nil {
			klog.InfoS("Ignoring pod address on start", "pod", klog.KObj(p), "addr", pa.Addr, "err", err)
			continue
		}
		restored++
	}
	klog.InfoS("Rebuilt IPAM from annotations", "nodes", c.ipam.NodesWithSubnet(), "podAddresses", restored)
	return nil
}
