package nodeagent

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// deadlock bounds every wait in these tests: far longer than any wait should be, it only turns a hang
// into a failure. No test measures time.
const deadlock = 30 * time.Second

func mustLock(t *testing.T, l *attachLocks, hostIf, container string) func() {
	t.Helper()
	unlock, err := l.lock(context.Background(), hostIf, container)
	if err != nil {
		t.Fatal(err)
	}
	return unlock
}

// lockAsync locks in a goroutine and reports, on the returned channel, whether released was set when the
// lock was granted. The lock is released before the report, so a receiver finds the attachment idle.
func lockAsync(l *attachLocks, hostIf, container string, released *atomic.Bool) <-chan bool {
	got := make(chan bool, 1)
	go func() {
		unlock, err := l.lock(context.Background(), hostIf, container)
		if err != nil {
			close(got)
			return
		}
		v := released.Load()
		unlock()
		got <- v
	}()
	return got
}

func wait(t *testing.T, ch <-chan bool, what string) bool {
	t.Helper()
	select {
	case v, ok := <-ch:
		if !ok {
			t.Fatalf("%s: lock failed", what)
		}
		return v
	case <-time.After(deadlock):
		t.Fatalf("%s: still waiting after %s", what, deadlock)
		return false
	}
}

func assertIdle(t *testing.T, l *attachLocks) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.locks) != 0 || len(l.containers) != 0 || len(l.gcs) != 0 {
		t.Errorf("locks left behind: %d attachments, containers %v, %d GCs", len(l.locks), l.containers, len(l.gcs))
	}
}

// An ADD that holds its attachment's lock while it waits (for an annotation, for ovn-controller) holds
// up neither other containers' commands nor GC; a command of the same attachment waits its turn.
func TestLocksBlockedADD(t *testing.T) {
	l := newAttachLocks()
	blockedADD := mustLock(t, l, "dlA", "cA")

	var never atomic.Bool // never set: B must not wait for A
	if wait(t, lockAsync(l, "dlB", "cB", &never), "DEL of another container") {
		t.Fatal("impossible")
	}
	if wait(t, lockAsync(l, "dlC", "cC", &never), "ADD of another container") {
		t.Fatal("impossible")
	}

	gc := l.beginGC()
	if l.tryGC(gc, "dlA", "cA") != nil {
		t.Error("GC took the attachment of the ADD in flight")
	}
	if l.tryGC(gc, "dlA2", "cA") != nil {
		t.Error("GC took another attachment of the container whose ADD is in flight")
	}
	unlock := l.tryGC(gc, "dlB", "cB")
	if unlock == nil {
		t.Fatal("GC could not take an idle attachment while another container's ADD waits")
	}
	unlock()
	l.endGC(gc)

	var released atomic.Bool
	sameAttachment := lockAsync(l, "dlA", "cA", &released)
	released.Store(true)
	blockedADD()
	if !wait(t, sameAttachment, "DEL of the same attachment") {
		t.Error("a command of the same attachment ran while the ADD held it")
	}
	assertIdle(t, l)
}

// GC leaves alone what a command touched since the GC began, even a command that has finished: the
// runtime's list of valid attachments predates it.
func TestLocksGCSkipsCommandsSinceItBegan(t *testing.T) {
	l := newAttachLocks()
	gc := l.beginGC()
	mustLock(t, l, "dlNew", "cNew")() // an ADD that began after the GC and is done
	if l.tryGC(gc, "dlNew", "") != nil {
		t.Error("GC took an attachment an ADD made after the GC began (found by its veth)")
	}
	if l.tryGC(gc, "dlOther", "cNew") != nil {
		t.Error("GC took an attachment of a container with a command since the GC began")
	}
	l.endGC(gc)

	// The next GC, begun after that ADD, may take it.
	gc = l.beginGC()
	unlock := l.tryGC(gc, "dlNew", "cNew")
	if unlock == nil {
		t.Fatal("a later GC could not take an idle attachment")
	}
	unlock()
	l.endGC(gc)
	assertIdle(t, l)
}

// A command arriving for an attachment GC is removing waits for that removal only.
func TestLocksCommandWaitsForGCRemoval(t *testing.T) {
	l := newAttachLocks()
	gc := l.beginGC()
	unlock := l.tryGC(gc, "dlA", "cA")
	if unlock == nil {
		t.Fatal("GC could not take an idle attachment")
	}
	if l.tryGC(gc, "dlA", "cA") != nil {
		t.Error("GC took one attachment twice")
	}
	var released atomic.Bool
	add := lockAsync(l, "dlA", "cA", &released)
	var never atomic.Bool
	if wait(t, lockAsync(l, "dlB", "cB", &never), "command of another attachment during GC") {
		t.Fatal("impossible")
	}
	released.Store(true)
	unlock()
	if !wait(t, add, "ADD of the attachment GC removed") {
		t.Error("a command ran while GC was removing its attachment")
	}
	l.endGC(gc)
	assertIdle(t, l)
}

// A command waiting behind another of its attachment gives up when its request ends.
func TestLocksWaitEndsWithRequest(t *testing.T) {
	l := newAttachLocks()
	unlock := mustLock(t, l, "dlA", "cA")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.lock(ctx, "dlA", "cA"); !errors.Is(err, context.Canceled) {
		t.Errorf("lock with an ended request: %v, want context.Canceled", err)
	}
	unlock()
	assertIdle(t, l)
}
