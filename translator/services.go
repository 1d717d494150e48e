package translator

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// sliceServiceIndex indexes EndpointSlices by the namespace/name of their Service.
const sliceServiceIndex = "service"

func sliceServiceKey(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}

// sliceHandler queues the Service of every changed EndpointSlice, both Services when a slice moves.
func (c *Controller) sliceHandler() cache.ResourceEventHandler {
	enqueue := func(obj any) {
		if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = d.Obj
		}
		keys, _ := sliceServiceKey(obj)
		for _, key := range keys {
			c.observed.LoadOrStore(KindService+"/"+key, time.Now())
			c.queues[KindService].Add(key)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue,
		UpdateFunc: func(old, obj any) {
			enqueue(old)
			enqueue(obj)
		},
		DeleteFunc: enqueue,
	}
}

// syncService keeps a Service's load balancers.
func (c *Controller) syncService(ctx context.Context, key string) error {
	owner := Owner(KindService, key)
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return err
	}
	svc, err := c.serviceLister.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		c.nodeDependent.Delete(key)
		return c.apply(ctx, owner, nbstore.Desired{})
	}
	if err != nil {
		return err
	}
	objs, err := c.sliceIndexer.ByIndex(sliceServiceIndex, key)
	if err != nil {
		return err
	}
	eps := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		eps = append(eps, o.(*discoveryv1.EndpointSlice))
	}
	env := ServiceEnv{Ranges: c.endpointRanges(), AffinityByHash: c.cfg.SessionAffinity == AffinityHash,
		NodePortRange: c.cfg.NodePortRange}
	local := internalLocal(svc)
	if local {
		env.Nodes = c.nodesWithSwitch()
	}
	if externalLocal(svc) {
		env.Gateways = c.gatewayAddrs()
	}
	rows, problems := ServiceRows(svc, eps, env)
	dependsOnNodes := local || externalLocal(svc) // its rows follow the node switches or gateways
	for _, p := range problems {
		c.warn(svc, p.Reason, "%s", p.Message)
		// A node that appears later may make a skipped endpoint address valid.
		dependsOnNodes = dependsOnNodes || p.Reason == reasonInvalidEndpoint
	}
	if dependsOnNodes {
		c.nodeDependent.Store(key, true)
	} else {
		c.nodeDependent.Delete(key)
	}
	if err := c.apply(ctx, owner, nbstore.Rows(rows...)); err != nil {
		c.warnNB(svc, err)
		return err
	}
	return nil
}

// endpointRanges returns the pod network and node addresses that backends may have, computed once
// per change of the nodes rather than once per Service.
func (c *Controller) endpointRanges() EndpointRanges {
	if r := c.ranges.Load(); r != nil {
		return *r
	}
	return c.refreshRanges()
}

// refreshRanges recomputes the ranges from the nodes and, when they changed, requeues the Services
// that depend on them.
func (c *Controller) refreshRanges() EndpointRanges {
	r := EndpointRanges{Pods: []netip.Prefix{c.cfg.ClusterCIDR}, Nodes: map[netip.Addr]bool{}}
	nodes, _ := c.nodeLister.List(labels.Everything())
	for _, n := range nodes {
		if ps, _, err := annotations.DeclaredNodeSubnets(n); err == nil {
			for _, p := range ps {
				if !c.cfg.ClusterCIDR.Contains(p.Addr()) {
					r.Pods = append(r.Pods, p)
				}
			}
		}
		for _, a := range n.Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				r.Nodes[ip.Unmap()] = true
			}
		}
	}
	old := c.ranges.Swap(&r)
	if old != nil && (!maps.Equal(old.Nodes, r.Nodes) || !slices.Equal(old.Pods, r.Pods)) {
		c.requeueNodeDependent()
	}
	return r
}

// rangesChanged schedules a recomputation of the endpoint ranges. The node events of a burst (a
// start, a rolling update) share one, rather than each scanning every node.
func (c *Controller) rangesChanged() {
	if c.rangesPending.CompareAndSwap(false, true) {
		time.AfterFunc(100*time.Millisecond, func() {
			c.rangesPending.Store(false)
			c.refreshRanges()
		})
	}
}

// rangesChangedIf skips node updates that change neither addresses nor subnet (heartbeats).
func (c *Controller) rangesChangedIf(old, obj any) {
	o, ok1 := old.(*corev1.Node)
	n, ok2 := obj.(*corev1.Node)
	if ok1 && ok2 && slices.Equal(o.Status.Addresses, n.Status.Addresses) &&
		slices.Equal(o.Spec.PodCIDRs, n.Spec.PodCIDRs) &&
		o.Annotations[annotations.NodeSubnet] == n.Annotations[annotations.NodeSubnet] {
		return
	}
	c.rangesChanged()
}

// nodesWithSwitch are the nodes that have a subnet, hence a switch (or one being written).
func (c *Controller) nodesWithSwitch() []string {
	nodes, _ := c.nodeLister.List(labels.Everything())
	var names []string
	for _, n := range nodes {
		if _, ok := c.ipam.NodeSubnet(n.Name); ok {
			names = append(names, n.Name)
		}
	}
	slices.Sort(names)
	return names
}

// requeueNodeDependent queues the Services whose rows depend on the nodes: those with
// internalTrafficPolicy Local and those with endpoints outside the known ranges.
func (c *Controller) requeueNodeDependent() {
	c.nodeDependent.Range(func(k, _ any) bool {
		c.queues[KindService].Add(k.(string))
		return true
	})
}
