package nodeagent

import (
	"context"
	"sync"
)

// attachLocks serialises the CNI commands of each attachment and lets GC work around them.
//
// ADD, DEL and CHECK of one attachment (a container's interface; everything they touch is named after
// HostIfName(container, ifname)) run one at a time; commands of other attachments never wait for each
// other, however long one of them waits for an annotation or for ovn-controller.
//
// GC never waits for a command. It removes an attachment only under that attachment's lock, taken
// with tryGC, which refuses an attachment (or a container) that has a command in flight or queued, or
// that had one at any moment since the GC began: the runtime computed GC's list of valid attachments
// before calling it, so an attachment an ADD is making or has just made may be missing from it. A
// command arriving for an attachment GC holds waits only for that one removal.
//
// Why not k8s.io/utils/keymutex: its only implementation is hashed, a fixed set of mutexes shared by
// all keys (runtime.NumCPU() of them by default), so a command would wait behind an unrelated
// container's ADD, which may hold its lock for minutes; and it has no try-lock for GC.
type attachLocks struct {
	mu         sync.Mutex
	locks      map[string]*attachLock // host interface -> lock, while held or awaited
	containers map[string]int         // container id -> commands holding or awaiting a lock
	gcs        map[*gcRun]struct{}    // GCs in progress
}

type attachLock struct {
	sem  chan struct{} // holds one token while locked
	refs int           // holders and waiters
}

// gcRun is one GC in progress: what it must leave alone.
type gcRun struct {
	ifaces     map[string]bool // host interfaces with a command since the GC began
	containers map[string]bool // containers with a command since the GC began
}

func newAttachLocks() *attachLocks {
	return &attachLocks{locks: map[string]*attachLock{}, containers: map[string]int{}, gcs: map[*gcRun]struct{}{}}
}

// lock waits until the attachment hostIf of container is free, or ctx ends. The returned function
// releases it.
func (l *attachLocks) lock(ctx context.Context, hostIf, container string) (func(), error) {
	l.mu.Lock()
	e := l.ref(hostIf)
	l.containers[container]++
	for gc := range l.gcs {
		gc.ifaces[hostIf] = true
		gc.containers[container] = true
	}
	l.mu.Unlock()
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		l.unref(hostIf, container)
		return nil, ctx.Err()
	}
	return func() {
		<-e.sem
		l.unref(hostIf, container)
	}, nil
}

// ref returns hostIf's lock with one more reference. l.mu must be held.
func (l *attachLocks) ref(hostIf string) *attachLock {
	e := l.locks[hostIf]
	if e == nil {
		e = &attachLock{sem: make(chan struct{}, 1)}
		l.locks[hostIf] = e
	}
	e.refs++
	return e
}

func (l *attachLocks) unref(hostIf, container string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.locks[hostIf]; e != nil {
		if e.refs--; e.refs == 0 {
			delete(l.locks, hostIf)
		}
	}
	if container != "" {
		if l.containers[container]--; l.containers[container] <= 0 {
			delete(l.containers, container)
		}
	}
}

// beginGC starts a GC: every attachment and container with a command in flight now, or from now on
// until endGC, is off limits to it.
func (l *attachLocks) beginGC() *gcRun {
	l.mu.Lock()
	defer l.mu.Unlock()
	gc := &gcRun{ifaces: map[string]bool{}, containers: map[string]bool{}}
	for hostIf := range l.locks {
		gc.ifaces[hostIf] = true
	}
	for c := range l.containers {
		gc.containers[c] = true
	}
	l.gcs[gc] = struct{}{}
	return gc
}

func (l *attachLocks) endGC(gc *gcRun) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.gcs, gc)
}

// tryGC locks attachment hostIf (of container, "" when unknown) for gc without waiting. It returns nil
// when gc must leave the attachment alone.
func (l *attachLocks) tryGC(gc *gcRun, hostIf, container string) func() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if gc.ifaces[hostIf] || gc.containers[container] || l.locks[hostIf] != nil || l.containers[container] > 0 {
		return nil
	}
	e := l.ref(hostIf)
	e.sem <- struct{}{} // a new lock: free
	return func() {
		<-e.sem
		l.unref(hostIf, "")
	}
}
