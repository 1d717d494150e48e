package integration

import (
	"context"
	"fmt"
	"testing"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// A RAFT leader that hangs (SIGSTOP: its sockets stay open and it answers nothing, like a frozen VM)
// is replaced by the other members; the controller, still connected to it, notices that it no longer
// answers and moves to the new leader, and NB converges while the old leader still hangs. Resumed,
// the member rejoins as a follower.
func TestNBLeaderHangs(t *testing.T) {
	c := newClusterWith(t, harness.OVNOptions{Clustered: true})
	ctx := context.Background()
	nodes := []string{"n1", "n2"}
	for _, n := range nodes {
		c.createNode(n)
	}
	for i := range 6 {
		c.createPod("default", fmt.Sprintf("p%d", i), nodes[i%2])
	}
	c.eventually(failoverConverge, "first convergence", func() error { return c.checkConverged(nodes) })
	leader, err := c.ovn.RaftLeader(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ovn.PauseRaftMember(false, leader, true); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			c.ovn.PauseRaftMember(false, leader, false)
		}
	})
	for i := 6; i < 12; i++ {
		c.createPod("default", fmt.Sprintf("p%d", i), nodes[i%2])
	}
	c.deletePod("default", "p0")
	c.eventually(failoverConverge, "convergence with the old leader hung", func() error {
		if c.ctrl.Exited() {
			return fmt.Errorf("dunlin-controller exited:\n%s", c.ctrl.LogTail(20))
		}
		return c.checkConverged(nodes)
	})
	if err := c.ovn.PauseRaftMember(false, leader, false); err != nil {
		t.Fatal(err)
	}
	resumed = true
	c.createPod("default", "last", "n1")
	c.eventually(failoverConverge, "convergence with the old leader back", func() error { return c.checkConverged(nodes) })
	if err := c.ovn.RaftMembersAlive(false); err != nil {
		t.Fatal(err)
	}
}

// A controller that starts while the first member of --nb-address hangs connects to the others:
// libovsdb would spend every attempt's deadline on the hung member.
func TestControllerStartsWhileFirstNBMemberHangs(t *testing.T) {
	c := newClusterWith(t, harness.OVNOptions{Clustered: true})
	c.stopController()
	if err := c.ovn.PauseRaftMember(false, 0, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.ovn.PauseRaftMember(false, 0, false) })
	c.eventually(failoverConverge, "a leader among the others", func() error {
		_, err := c.ovn.NBCtl("show")
		return err
	})
	c.startController()
	c.createNode("n1")
	c.createPod("default", "p", "n1")
	c.eventually(failoverConverge, "convergence with the first member hung", func() error {
		if c.ctrl.Exited() {
			return fmt.Errorf("dunlin-controller exited:\n%s", c.ctrl.LogTail(20))
		}
		return c.checkConverged([]string{"n1"})
	})
}
