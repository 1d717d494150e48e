// Package notify wakes goroutines waiting for a change of one key (a pod, an OVS interface) when a cache
// event for that key arrives, so that waits are event-driven instead of polling.
package notify

import "sync"

// Keyed holds the waiters of each key. The zero value is ready to use.
type Keyed struct {
	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

// Subscribe returns a channel that receives after any Wake(key) from now on (events coalesce: one
// pending wakeup at most), and a function that unsubscribes.
func (k *Keyed) Subscribe(key string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	k.mu.Lock()
	if k.waiters == nil {
		k.waiters = map[string]map[chan struct{}]struct{}{}
	}
	if k.waiters[key] == nil {
		k.waiters[key] = map[chan struct{}]struct{}{}
	}
	k.waiters[key][ch] = struct{}{}
	k.mu.Unlock()
	return ch, func() {
		k.mu.Lock()
		delete(k.waiters[key], ch)
		if len(k.waiters[key]) == 0 {
			delete(k.waiters, key)
		}
		k.mu.Unlock()
	}
}

// Wake wakes every subscriber of key without blocking.
func (k *Keyed) Wake(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for ch := range k.waiters[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
