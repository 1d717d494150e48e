package ipam

import (
	"fmt"
	"net/netip"
)

// Subnets hands out node subnets of one prefix length from the cluster CIDR, lowest free first. It
// also records subnets chosen elsewhere (node.spec.podCIDRs), whatever their length, so that no two
// nodes overlap.
type Subnets struct {
	cluster netip.Prefix
	bits    int
	byNode  map[string]netip.Prefix
	owner   map[netip.Prefix]string // subnets of length bits
	odd     map[string]netip.Prefix // subnets of another length, by node
}

// NewSubnets returns an allocator of /prefixLen subnets of cluster.
func NewSubnets(cluster netip.Prefix, prefixLen int) (*Subnets, error) {
	if !cluster.Addr().Is4() {
		return nil, fmt.Errorf("cluster CIDR %s: only IPv4 is supported", cluster)
	}
	if cluster != cluster.Masked() {
		return nil, fmt.Errorf("cluster CIDR %s has host bits set", cluster)
	}
	if prefixLen < cluster.Bits() || prefixLen > 30 {
		return nil, fmt.Errorf("node subnet prefix /%d does not fit cluster CIDR %s (must be /%d to /30)",
			prefixLen, cluster, cluster.Bits())
	}
	if prefixLen-cluster.Bits() > 24 {
		return nil, fmt.Errorf("cluster CIDR %s split into /%d gives more subnets than supported", cluster, prefixLen)
	}
	return &Subnets{cluster: cluster, bits: prefixLen, byNode: map[string]netip.Prefix{},
		owner: map[netip.Prefix]string{}, odd: map[string]netip.Prefix{}}, nil
}

// Capacity is the number of node subnets of the allocated length the cluster CIDR holds.
func (s *Subnets) Capacity() int { return 1 << (s.bits - s.cluster.Bits()) }

// Get returns the node's subnet.
func (s *Subnets) Get(node string) (netip.Prefix, bool) {
	p, ok := s.byNode[node]
	return p, ok
}

// Len is the number of nodes holding a subnet.
func (s *Subnets) Len() int { return len(s.byNode) }

// Reserve records that node holds p; it fails when p is outside the cluster CIDR or overlaps another
// node's subnet. A node that held another subnet gives it up.
func (s *Subnets) Reserve(node string, p netip.Prefix) error {
	if !p.Addr().Is4() || p != p.Masked() {
		return fmt.Errorf("node subnet %s is not an IPv4 network address", p)
	}
	if !s.cluster.Contains(p.Addr()) || p.Bits() < s.cluster.Bits() {
		return fmt.Errorf("node subnet %s is outside the cluster CIDR %s", p, s.cluster)
	}
	if cur, ok := s.byNode[node]; ok && cur == p {
		return nil
	}
	if other := s.overlapping(p, node); other != "" {
		return fmt.Errorf("node subnet %s overlaps the subnet of node %s", p, other)
	}
	s.Release(node)
	s.byNode[node] = p
	if p.Bits() == s.bits {
		s.owner[p] = node
	} else {
		s.odd[node] = p
	}
	return nil
}

func (s *Subnets) overlapping(p netip.Prefix, self string) string {
	if p.Bits() == s.bits {
		if n, ok := s.owner[p]; ok && n != self {
			return n
		}
	} else {
		for n, q := range s.byNode {
			if n != self && q.Overlaps(p) {
				return n
			}
		}
	}
	for n, q := range s.odd {
		if n != self && q.Overlaps(p) {
			return n
		}
	}
	return ""
}

// Allocate gives node the lowest free subnet, or the one it holds.
func (s *Subnets) Allocate(node string) (netip.Prefix, error) {
	if p, ok := s.byNode[node]; ok {
		return p, nil
	}
	n := 1 << (s.bits - s.cluster.Bits())
	base := s.cluster.Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	step := uint32(1) << (32 - s.bits)
	for i := range n {
		v := start + uint32(i)*step
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), s.bits)
		if s.overlapping(p, node) != "" {
			continue
		}
		s.byNode[node] = p
		s.owner[p] = node
		return p, nil
	}
	return netip.Prefix{}, fmt.Errorf("cluster CIDR %s has no free /%d subnet: %w", s.cluster, s.bits, ErrExhausted)
}

// Release frees the node's subnet.
func (s *Subnets) Release(node string) {
	p, ok := s.byNode[node]
	if !ok {
		return
	}
	delete(s.byNode, node)
	delete(s.odd, node)
	if s.owner[p] == node {
		delete(s.owner, p)
	}
}
