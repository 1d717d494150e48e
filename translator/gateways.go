package translator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/ipam"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// Event reasons of the gateways.
const (
	reasonInvalidGateway = "InvalidNodeGateway"
	// reasonMissingGateway: the node's dunlin-node runs the gateway (annotations.FeatureGateway) but
	// the node has no gateway annotation: it could not set br-ex up (see its own events), or someone
	// removed the annotation.
	reasonMissingGateway = "NodeGatewayMissing"
	reasonJoinExhausted  = "JoinSubnetExhausted"
)

// Gateway router addresses on the join switch are persisted in NB only: the router port
// rtoj-GR_<node> (owned by Gateway/<node>) is the record. Nothing outside NB uses them, so on start
// they are read back from the ports before any sync may allocate one (rebuildJoin); if NB itself is
// lost, the routers are rebuilt with new addresses and nothing else notices.

// gatewayEnv is the cluster-wide input of every gateway mapping.
func (c *Controller) gatewayEnv() GatewayEnv {
	return GatewayEnv{ClusterCIDR: c.cfg.ClusterCIDR, JoinSubnet: c.cfg.JoinSubnet, NodePortRange: c.cfg.NodePortRange}
}

// gatewayHandler queues a node's gateway when what its gateway rows depend on changes, not on every
// status heartbeat (which would also repeat a bad annotation's warning every few seconds).
func (c *Controller) gatewayHandler() cache.ResourceEventHandler {
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queues[KindGateway].Add(key)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue,
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := obj.(*corev1.Node)
			if ok1 && ok2 && o.Annotations[annotations.NodeGateway] == n.Annotations[annotations.NodeGateway] &&
				annotations.HasFeature(o, annotations.FeatureGateway) == annotations.HasFeature(n, annotations.FeatureGateway) &&
				slices.Equal(NodeHostIPs(o), NodeHostIPs(n)) {
				return
			}
			enqueue(obj)
		},
		DeleteFunc: enqueue,
	}
}

// NodeHostIPs are the node's InternalIP and ExternalIP addresses.
func NodeHostIPs(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// syncGateway keeps a node's gateway rows (owner Gateway/<node>): the policy for pod traffic to the
// node's addresses, and the gateway router when the node has a valid gateway annotation. A missing
// annotation means no router (dunlin-node has not set br-ex up, or gave the uplink back, or runs
// without a gateway), reported only when the node's dunlin-node says it runs the gateway; an invalid
// one is reported and the node keeps the rows it has until it is corrected.
func (c *Controller) syncGateway(ctx context.Context, name string) error {
	owner := Owner(KindGateway, name)
	node, err := c.nodeLister.Get(name)
	if apierrors.IsNotFound(err) {
		c.gatewayProblems.Delete(name)
		return c.dropGateway(ctx, name)
	}
	if err != nil {
		return err
	}
	subnet, ok := c.ipam.NodeSubnet(name)
	if !ok {
		// No switch, so no management port: syncNode queues the gateway again once it has one.
		return c.dropGateway(ctx, name)
	}
	if _, ok := c.switchNodes.Load(name); !ok {
		// The policy's next hop is on the node switch's router port: wait for it (syncNode queues the
		// gateway once it has written the switch), so ovn-northd never sees a policy without a path.
		return nil
	}
	n := GatewayNode{Name: name, Subnet: subnet, HostIPs: NodeHostIPs(node)}
	g, err := NodeGatewayOf(node)
	switch {
	case err != nil:
		c.warnGateway(node, reasonInvalidGateway, fmt.Sprintf("%v; the node keeps the gateway rows it has (if any) until the annotation is corrected", err))
		return nil
	case g == nil && annotations.HasFeature(node, annotations.FeatureGateway):
		c.warnGateway(node, reasonMissingGateway, fmt.Sprintf("dunlin-node runs the node gateway here but the node has no %s annotation "+
			"(see dunlin-node's events and log on the node: is its uplink, --gateway-interface, there?); "+
			"the node gets no gateway router: its pods do not reach the outside through it and its NodePorts do not answer",
			annotations.NodeGateway))
	default:
		c.gatewayProblems.Delete(name)
	}
	if g != nil {
		n.Gateway = g
		ip, allocated, err := c.join.Ensure(name)
		if err != nil {
			if errors.Is(err, ipam.ErrExhausted) {
				c.warn(node, reasonJoinExhausted, "no gateway router address left in --join-subnet %s: %v", c.cfg.JoinSubnet, err)
			}
			return fmt.Errorf("gateway router address of node %s: %w", name, err)
		}
		if allocated {
			klog.InfoS("Allocated gateway router join address", "node", name, "address", ip)
		}
		n.JoinIP = ip
	}
	err = c.apply(ctx, owner, nbstore.Rows(GatewayRows(n, c.gatewayEnv())...))
	var conflict *nbstore.ConflictError
	if n.Gateway != nil && errors.As(err, &conflict) {
		// A router, switch or port of that name that is not Dunlin's is left alone, and the node
		// goes without a gateway; its pods still reach its addresses. A node update or the periodic
		// resync tries again.
		c.warnNB(node, err)
		n.Gateway = nil
		err = c.apply(ctx, owner, nbstore.Rows(GatewayRows(n, c.gatewayEnv())...))
	}
	if err != nil {
		c.warnNB(node, err)
		return err
	}
	if n.Gateway == nil {
		c.join.Release(name)
		c.setGateway(name, netip.Addr{})
		return nil
	}
	p, _ := gatewayIPv4(*n.Gateway)
	c.setGateway(name, p.Addr())
	return nil
}

// warnGateway records a Warning about the node's gateway unless the same one was the last recorded:
// the node's key is synced again on resyncs and unrelated updates, and an unchanged problem is
// reported once.
func (c *Controller) warnGateway(node *corev1.Node, reason, msg string) {
	if last, ok := c.gatewayProblems.Swap(node.Name, reason+": "+msg); ok && last.(string) == reason+": "+msg {
		return
	}
	c.warn(node, reason, "%s", msg)
}

// NodeGatewayOf returns the node's gateway annotation, nil when it has none, or why it is unusable.
func NodeGatewayOf(node *corev1.Node) (*annotations.NodeGatewayInfo, error) {
	raw, has := node.Annotations[annotations.NodeGateway]
	if !has {
		return nil, nil
	}
	g, err := annotations.ParseNodeGateway(raw)
	if err != nil {
		return nil, err
	}
	if _, ok := gatewayIPv4(g); !ok {
		return nil, fmt.Errorf("%s has no IPv4 address (gateway routers are IPv4 only)", annotations.NodeGateway)
	}
	return &g, nil
}

// dropGateway removes a node's gateway rows and then frees its join address.
func (c *Controller) dropGateway(ctx context.Context, name string) error {
	if err := c.apply(ctx, Owner(KindGateway, name), nbstore.Desired{}); err != nil {
		return err
	}
	c.join.Release(name)
	c.setGateway(name, netip.Addr{})
	return nil
}

// setGateway records the node's gateway address (invalid: none) and requeues the Services with
// per-gateway rows when it changed.
func (c *Controller) setGateway(name string, ip netip.Addr) {
	var changed bool
	if ip.IsValid() {
		old, had := c.gateways.Swap(name, ip)
		changed = !had || old.(netip.Addr) != ip
	} else {
		_, changed = c.gateways.LoadAndDelete(name)
	}
	if changed {
		c.requeueNodeDependent()
	}
}

// gatewayAddrs are the nodes with a gateway router, sorted.
func (c *Controller) gatewayAddrs() []GatewayAddr {
	var out []GatewayAddr
	c.gateways.Range(func(k, v any) bool {
		out = append(out, GatewayAddr{Node: k.(string), IP: v.(netip.Addr)})
		return true
	})
	slices.SortFunc(out, func(a, b GatewayAddr) int { return strings.Compare(a.Node, b.Node) })
	return out
}

// rebuildJoin reads the gateway routers' join addresses (and node addresses) back from NB before any
// sync may allocate one.
func (c *Controller) rebuildJoin() error {
	owners, err := c.store.Owners()
	if err != nil {
		return fmt.Errorf("list NB owners: %w", err)
	}
	restored := 0
	for owner := range owners {
		kind, node, _ := strings.Cut(owner, "/")
		if kind != KindGateway {
			continue
		}
		rows, err := c.store.OwnedRows(owner)
		if err != nil {
			return fmt.Errorf("rows of %s: %w", owner, err)
		}
		for _, m := range rows["Logical_Router_Port"] {
			lrp := m.(*nbmodel.LogicalRouterPort)
			if len(lrp.Networks) != 1 {
				continue
			}
			p, err := netip.ParsePrefix(lrp.Networks[0])
			if err != nil {
				continue
			}
			switch lrp.Name {
			case JoinRouterPortName(GatewayRouterName(node)):
				if err := c.join.Reserve(node, p.Addr()); err != nil {
					klog.InfoS("Ignoring a gateway router's join address on start", "node", node, "address", p.Addr(), "err", err)
					continue
				}
				restored++
			case ExternalRouterPortName(node):
				c.gateways.Store(node, p.Addr())
			}
		}
	}
	klog.InfoS("Rebuilt gateway router join addresses", "routers", restored)
	return nil
}
