// Package ipam allocates node subnets from the cluster CIDR and pod addresses from node subnets. It
// holds no state of its own that is not rebuilt from Kubernetes annotations on start.
package ipam

import (
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
)

// ErrExhausted is returned when no address or subnet is free.
var ErrExhausted = errors.New("no free address")

// ConflictError says an address is already held by another owner.
type ConflictError struct {
	Addr  netip.Addr
	Owner string
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("%s is already in use by %s", e.Addr, e.Owner)
}

// Pool hands out the addresses of one IPv4 subnet, lowest free first, so a freed address is the next
// one reused and allocation is deterministic.
type Pool struct {
	subnet netip.Prefix
	size   int
	used   []uint64 // bitmap of offsets from the network address
	owners map[int]string
	inUse  int
	// capacity is the number of addresses owners can hold: the subnet less network, broadcast and
	// reserved addresses.
	capacity int
}

// maxPoolBits bounds a pool to a /12 worth of addresses (a 128 KiB bitmap).
const maxPoolBits = 20

// NewPool returns a pool over subnet with the network and broadcast addresses and reserved excluded.
func NewPool(subnet netip.Prefix, reserved ...netip.Addr) (*Pool, error) {
	if !subnet.Addr().Is4() {
		return nil, fmt.Errorf("subnet %s: only IPv4 is supported", subnet)
	}
	hostBits := 32 - subnet.Bits()
	if hostBits < 2 || hostBits > maxPoolBits {
		return nil, fmt.Errorf("subnet %s: prefix length must be between /%d and /30", subnet, 32-maxPoolBits)
	}
	p := &Pool{subnet: subnet.Masked(), size: 1 << hostBits, owners: map[int]string{}}
	p.used = make([]uint64, (p.size+63)/64)
	p.mark(0)
	p.mark(p.size - 1)
	p.capacity = p.size - 2
	for _, a := range reserved {
		if off, ok := p.offset(a); ok && !p.isUsed(off) {
			p.mark(off)
			p.capacity--
		}
	}
	return p, nil
}

// Subnet is the pool's subnet.
func (p *Pool) Subnet() netip.Prefix { return p.subnet }

// InUse is the number of addresses held by owners (reserved ones excluded).
func (p *Pool) InUse() int { return p.inUse }

// Capacity is the number of addresses owners can hold at once.
func (p *Pool) Capacity() int { return p.capacity }

func (p *Pool) mark(off int)        { p.used[off/64] |= 1 << (off % 64) }
func (p *Pool) clear(off int)       { p.used[off/64] &^= 1 << (off % 64) }
func (p *Pool) isUsed(off int) bool { return p.used[off/64]&(1<<(off%64)) != 0 }

func (p *Pool) offset(a netip.Addr) (int, bool) {
	if !p.subnet.Contains(a) {
		return 0, false
	}
	b, n := a.As4(), p.subnet.Addr().As4()
	return int(uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3])) -
		int(uint32(n[0])<<24|uint32(n[1])<<16|uint32(n[2])<<8|uint32(n[3])), true
}

func (p *Pool) addr(off int) netip.Addr {
	n := p.subnet.Addr().As4()
	v := uint32(n[0])<<24 | uint32(n[1])<<16 | uint32(n[2])<<8 | uint32(n[3]) + uint32(off)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Reserve records that owner holds a; it is idempotent for the same owner.
func (p *Pool) Reserve(a netip.Addr, owner string) error {
	off, ok := p.offset(a)
	if !ok {
		return fmt.Errorf("%s is outside subnet %s", a, p.subnet)
	}
	if cur, held := p.owners[off]; held {
		if cur == owner {
			return nil
		}
		return &ConflictError{Addr: a, Owner: cur}
	}
	if p.isUsed(off) {
		return &ConflictError{Addr: a, Owner: "reserved"}
	}
	p.mark(off)
	p.owners[off] = owner
	p.inUse++
	return nil
}

// Allocate hands owner the lowest free address.
func (p *Pool) Allocate(owner string) (netip.Addr, error) {
	for w, word := range p.used {
		if word == ^uint64(0) {
			continue
		}
		off := w*64 + bits.TrailingZeros64(^word)
		if off >= p.size {
			break
		}
		p.mark(off)
		p.owners[off] = owner
		p.inUse++
		return p.addr(off), nil
	}
	return netip.Addr{}, fmt.Errorf("subnet %s: %w", p.subnet, ErrExhausted)
}

// Release frees a if owner holds it.
func (p *Pool) Release(a netip.Addr, owner string) {
	off, ok := p.offset(a)
	if !ok || p.owners[off] != owner {
		return
	}
	delete(p.owners, off)
	p.clear(off)
	p.inUse--
}
