package ipam

import (
	"net/netip"
	"sync"
)

// Keyed hands out one address of a subnet per key (a node's gateway router address on the join
// switch). It is safe for concurrent use.
type Keyed struct {
	mu    sync.Mutex
	pool  *Pool
	byKey map[string]netip.Addr
}

// NewKeyed returns empty bookkeeping over subnet, with reserved never handed out.
func NewKeyed(subnet netip.Prefix, reserved ...netip.Addr) (*Keyed, error) {
	p, err := NewPool(subnet, reserved...)
	if err != nil {
		return nil, err
	}
	return &Keyed{pool: p, byKey: map[string]netip.Addr{}}, nil
}

// Get returns key's address.
func (k *Keyed) Get(key string) (netip.Addr, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	a, ok := k.byKey[key]
	return a, ok
}

// Reserve records that key holds a (rebuilt from what is persisted); a key holds one address.
func (k *Keyed) Reserve(key string, a netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if cur, ok := k.byKey[key]; ok {
		if cur == a {
			return nil
		}
		return &ConflictError{Addr: cur, Owner: key}
	}
	if err := k.pool.Reserve(a, key); err != nil {
		return err
	}
	k.byKey[key] = a
	return nil
}

// Ensure returns key's address, allocating the lowest free one when it has none; allocated says so.
func (k *Keyed) Ensure(key string) (a netip.Addr, allocated bool, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if a, ok := k.byKey[key]; ok {
		return a, false, nil
	}
	a, err = k.pool.Allocate(key)
	if err != nil {
		return a, false, err
	}
	k.byKey[key] = a
	return a, true, nil
}

// Release frees key's address.
func (k *Keyed) Release(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if a, ok := k.byKey[key]; ok {
		k.pool.Release(a, key)
		delete(k.byKey, key)
	}
}
