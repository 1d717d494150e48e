package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// failoverConverge bounds the waits around a RAFT failover: an election, the controller's reconnection
// and the retries of what failed meanwhile, on a loaded machine.
const failoverConverge = 3 * time.Minute

// churn creates pods <prefix><from>, <prefix><from+1>, ... every few milliseconds on the nodes in turn,
// each time deleting the one keep before (if any), until stop is closed. wait returns how many it
// created.
func (c *cluster) churn(stop <-chan struct{}, prefix string, from int, nodes []string, keep int) (wait func() int) {
	var wg sync.WaitGroup
	n := from
	wg.Add(1)
	go func() {
		defer wg.Done()
		zero := int64(0)
		ctx := context.Background()
		for ; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s%d", prefix, n)},
				Spec: corev1.PodSpec{NodeName: nodes[n%len(nodes)], Containers: []corev1.Container{{Name: "c", Image: "x"}}}}
			if _, err := c.client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
				c.t.Errorf("create %s: %v", p.Name, err)
				return
			}
			if n >= keep {
				old := fmt.Sprintf("%s%d", prefix, n-keep)
				_ = c.client.CoreV1().Pods("default").Delete(ctx, old, metav1.DeleteOptions{GracePeriodSeconds: &zero})
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return func() int { wg.Wait(); return n - from }
}

// The controller writes to a 3-member RAFT NB through all three addresses. Killing the leader while
// pods are created and deleted (and Services created) elects another; the controller follows it, and
// NB converges to exactly the API's pods, each with its own address, no row lost or left behind. The
// killed member rejoins: with it, the cluster survives the death of the next leader too.
func TestNBLeaderFailoverWhilePodsChurn(t *testing.T) {
	c := newClusterWith(t, harness.OVNOptions{Clustered: true})
	ctx := context.Background()
	nodes := []string{"n1", "n2", "n3"}
	for _, n := range nodes {
		c.createNode(n)
	}
	for i := range 20 {
		c.createPod("default", fmt.Sprintf("p%d", i), nodes[i%3])
	}
	c.eventually(failoverConverge, "first convergence", func() error { return c.checkConverged(nodes) })

	for round, prefix := range []string{"a", "b"} {
		leader, err := c.ovn.RaftLeader(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		wait := c.churn(stop, prefix, 0, nodes, 15)
		time.Sleep(time.Second) // not an assertion: the kill lands in the middle of the churn
		if err := c.ovn.KillRaftMember(false, leader); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killed NB leader nb%d", round, leader+1)
		for i := range 3 {
			c.createService(fmt.Sprintf("%s-svc%d", prefix, i), func(s *corev1.Service) {
				s.Spec.ClusterIP = fmt.Sprintf("10.96.%d.%d", 10+round, 10+i)
			})
		}
		time.Sleep(3 * time.Second)
		close(stop)
		t.Logf("round %d: %d pods created during the churn", round, wait())
		c.eventually(failoverConverge, "convergence after the leader's death", func() error {
			if c.ctrl.Exited() {
				return fmt.Errorf("dunlin-controller exited:\n%s", c.ctrl.LogTail(20))
			}
			return c.checkConverged(nodes)
		})
		if err := c.ovn.RaftMembersAlive(false); err != nil {
			t.Fatal(err)
		}
		// The killed member rejoins; the next round kills the leader of the cluster it is part of again,
		// which keeps a majority only with it.
		if err := c.ovn.RestartRaftMember(ctx, false, leader); err != nil {
			t.Fatal(err)
		}
	}
	if log, err := os.ReadFile(filepath.Join(c.dir, "controller.log")); err == nil {
		t.Logf("controller: %d reconnections noticed, %d read-backs of unknown outcomes, %d failed reconciles",
			strings.Count(string(log), "NB connection restored"),
			strings.Count(string(log), "Cache holds the outcome"), strings.Count(string(log), "Reconcile failed"))
	}
	c.createPod("default", "last", "n1")
	c.expectPort("default", "last", "n1")
	c.eventually(failoverConverge, "final convergence", func() error { return c.checkConverged(nodes) })
}
