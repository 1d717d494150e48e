package ipam

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/dunlinplugin/dunlin/internal/conventions"
)

// PodAddr is the address a pod holds.
type PodAddr struct {
	Node string
	UID  string
	Addr netip.Addr
}

// Cluster is the controller's whole address bookkeeping: a subnet per node and, inside it, an address
// per pod. It is safe for concurrent use by the controller's workers.
type Cluster struct {
	mu      sync.Mutex
	subnets *Subnets
	pools   map[string]*Pool   // by node
	pods    map[string]PodAddr // by pod key (namespace/name)
	// released is told of every address freed, under the lock (it must not call back).
	released func(key string, pa PodAddr)
}

// OnRelease sets f to be told of every pod address freed, so a pod waiting for it can be retried.
// f runs under the bookkeeping's lock and must not call back into it.
func (c *Cluster) OnRelease(f func(key string, pa PodAddr)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.released = f
}

func (c *Cluster) freed(key string, pa PodAddr) {
	if c.released != nil {
		c.released(key, pa)
	}
}

// NewCluster returns empty bookkeeping for /nodePrefix subnets of clusterCIDR.
func NewCluster(clusterCIDR netip.Prefix, nodePrefix int) (*Cluster, error) {
	s, err := NewSubnets(clusterCIDR, nodePrefix)
	if err != nil {
		return nil, err
	}
	return &Cluster{subnets: s, pools: map[string]*Pool{}, pods: map[string]PodAddr{}}, nil
}

// NodeSubnet returns the node's subnet.
func (c *Cluster) NodeSubnet(node string) (netip.Prefix, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subnets.Get(node)
}

// ReserveNodeSubnet records a subnet the node already has (annotation or spec.podCIDRs).
func (c *Cluster) ReserveNodeSubnet(node string, p netip.Prefix) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.subnets.Reserve(node, p); err != nil {
		return err
	}
	return c.ensurePool(node, p)
}

// AllocateNodeSubnet gives the node a free subnet (or the one it holds).
func (c *Cluster) AllocateNodeSubnet(node string) (netip.Prefix, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.subnets.Allocate(node)
	if err != nil {
		return p, err
	}
	return p, c.ensurePool(node, p)
}

func (c *Cluster) ensurePool(node string, p netip.Prefix) error {
	if pool, ok := c.pools[node]; ok && pool.Subnet() == p {
		return nil
	}
	pool, err := NewPool(p, conventions.GatewayIP(p), conventions.ManagementIP(p))
	if err != nil {
		c.subnets.Release(node)
		return err
	}
	c.pools[node] = pool
	// Pods that held addresses of the node's previous subnet keep them only if they still fit.
	for key, pa := range c.pods {
		if pa.Node == node && pool.Reserve(pa.Addr, key) != nil {
			delete(c.pods, key)
			c.freed(key, pa)
		}
	}
	return nil
}

// ReleaseNodeSubnet frees the node's subnet and the addresses of its pods.
func (c *Cluster) ReleaseNodeSubnet(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subnets.Release(node)
	delete(c.pools, node)
	for key, pa := range c.pods {
		if pa.Node == node {
			delete(c.pods, key)
			c.freed(key, pa)
		}
	}
}

// Pod returns the address the pod key holds.
func (c *Cluster) Pod(key string) (PodAddr, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pa, ok := c.pods[key]
	return pa, ok
}

// ReservePod records an address the pod already has (its annotation).
func (c *Cluster) ReservePod(key string, pa PodAddr) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	pool, ok := c.pools[pa.Node]
	if !ok {
		return fmt.Errorf("node %s has no subnet", pa.Node)
	}
	if cur, ok := c.pods[key]; ok {
		if cur == pa {
			return nil
		}
		c.releaseLocked(key)
	}
	if err := pool.Reserve(pa.Addr, key); err != nil {
		return err
	}
	c.pods[key] = pa
	return nil
}

// AllocatePod gives the pod the lowest free address of its node's subnet.
func (c *Cluster) AllocatePod(key, uid, node string) (PodAddr, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur, ok := c.pods[key]; ok {
		if cur.UID == uid && cur.Node == node {
			return cur, nil
		}
		c.releaseLocked(key)
	}
	pool, ok := c.pools[node]
	if !ok {
		return PodAddr{}, fmt.Errorf("node %s has no subnet", node)
	}
	a, err := pool.Allocate(key)
	if err != nil {
		return PodAddr{}, err
	}
	pa := PodAddr{Node: node, UID: uid, Addr: a}
	c.pods[key] = pa
	return pa, nil
}

// ReleasePod frees the pod's address.
func (c *Cluster) ReleasePod(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.releaseLocked(key)
}

func (c *Cluster) releaseLocked(key string) {
	pa, ok := c.pods[key]
	if !ok {
		return
	}
	if pool, ok := c.pools[pa.Node]; ok {
		pool.Release(pa.Addr, key)
	}
	delete(c.pods, key)
	c.freed(key, pa)
}

// PodsInUse is the number of pod addresses held.
func (c *Cluster) PodsInUse() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pods)
}

// NodesWithSubnet is the number of nodes holding a subnet.
func (c *Cluster) NodesWithSubnet() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subnets.Len()
}

// NodeUsage is how full one node's subnet is.
type NodeUsage struct {
	Node     string
	InUse    int // pod addresses held
	Capacity int // pod addresses the subnet can hold
}

// NodeUsages reports every node subnet's usage, for the exhaustion metrics.
func (c *Cluster) NodeUsages() []NodeUsage {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]NodeUsage, 0, len(c.pools))
	for node, p := range c.pools {
		out = append(out, NodeUsage{Node: node, InUse: p.InUse(), Capacity: p.Capacity()})
	}
	return out
}

// NodeSubnetCapacity is the number of node subnets the cluster CIDR holds.
func (c *Cluster) NodeSubnetCapacity() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subnets.Capacity()
}
