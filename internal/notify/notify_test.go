package notify

import (
	"testing"
	"time"
)

func TestKeyed(t *testing.T) {
	var k Keyed
	a, cancelA := k.Subscribe("a")
	b, cancelB := k.Subscribe("b")
	defer cancelB()
	k.Wake("a")
	k.Wake("a") // coalesces, never blocks
	select {
	case <-a:
	case <-time.After(time.Second):
		t.Fatal("subscriber of a not woken")
	}
	select {
	case <-b:
		t.Fatal("subscriber of b woken by a")
	default:
	}
	cancelA()
	k.Wake("a") // no subscribers left: a no-op
	if len(k.waiters) != 1 {
		t.Errorf("waiters after unsubscribe: %v", k.waiters)
	}
}
