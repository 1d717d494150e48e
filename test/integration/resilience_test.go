package integration

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestRestartWhilePodsChurnConverges(t *testing.T) {
	c := newCluster(t)
	nodes := []string{"n1", "n2", "n3"}
	for _, n := range nodes {
		c.createNode(n)
	}
	for i := range 30 {
		c.createPod("default", fmt.Sprintf("p%d", i), nodes[i%3])
	}
	c.eventually(converge, "first convergence", func() error { return c.checkConverged(nodes) })

	// Churn pods from another goroutine while the controller is killed and restarted twice.
	stop := make(chan struct{})
	wait := c.churn(stop, "p", 30, nodes, 25)
	for range 2 {
		time.Sleep(700 * time.Millisecond)
		c.killController()
		time.Sleep(500 * time.Millisecond)
		c.startController()
	}
	time.Sleep(time.Second)
	close(stop)
	wait()
	c.eventually(converge, "convergence after restarts", func() error { return c.checkConverged(nodes) })

	// Rows of objects deleted while no controller ran are collected on start.
	c.stopController()
	zero := int64(0)
	pods, _ := c.client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	for _, p := range pods.Items[:10] {
		_ = c.client.CoreV1().Pods("default").Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	}
	if err := c.client.CoreV1().Nodes().Delete(context.Background(), "n3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Pods on the deleted node go too, as the pod garbage collector would do.
	pods, _ = c.client.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	for _, p := range pods.Items {
		if p.Spec.NodeName == "n3" {
			_ = c.client.CoreV1().Pods("default").Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		}
	}
	c.startController()
	c.eventually(converge, "orphans collected", func() error { return c.checkConverged(nodes[:2]) })
	if got := c.nbctl("ls-list"); strings.Contains(got, "(n3)") {
		t.Fatalf("switch of a deleted node survived: %q", got)
	}
}

func TestForeignRowsUntouched(t *testing.T) {
	c := newCluster(t)
	c.stopController()
	// What an OpenStack deployment sharing the OVN central might hold, plus rows named like ours.
	for _, args := range [][]string{
		{"lr-add", "neutron-router"},
		{"lrp-add", "neutron-router", "lrp-gw", "fa:16:3e:00:00:01", "203.0.113.1/24"},
		{"ls-add", "neutron-net"},
		{"lsp-add", "neutron-net", "vm1"},
		{"lsp-set-addresses", "vm1", "fa:16:3e:00:00:02 192.0.2.10"},
		{"set", "Logical_Switch", "neutron-net", "external_ids:neutron-network=private"},
		{"ls-add", "taken"},
		{"lsp-add", "neutron-net", "default_squatter"},
		{"lb-add", "neutron-lb", "192.0.2.100:80", "192.0.2.10:8080"},
		{"create", "Load_Balancer_Group", "name=neutron-lbg"},
	} {
		c.nbctl(args...)
	}
	c.nbctl("add", "Load_Balancer_Group", "neutron-lbg", "load_balancer", c.nbctl("--bare", "--columns=_uuid", "find", "Load_Balancer", "name=neutron-lb"))
	before := foreignDump(c)
	c.startController()
	c.createNode("n1")
	c.createNode("taken")
	c.createPod("default", "p", "n1")
	c.createPod("default", "squatter", "n1")
	c.expectPort("default", "p", "n1")
	ev := c.warning("default", "taken", "NBNameConflict")
	if !strings.Contains(ev.Message, "not owned by Dunlin") {
		t.Fatalf("conflict event: %q", ev.Message)
	}
	c.warning("default", "squatter", "NBNameConflict")
	// A full resync with everything deleted must still leave the foreign rows alone.
	if err := c.client.CoreV1().Nodes().Delete(context.Background(), "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	c.stopController()
	c.startController()
	c.eventually(converge, "node rows gone", func() error {
		if got := c.nbctl("ls-list"); strings.Contains(got, "(n1)") {
			return fmt.Errorf("switches %q", got)
		}
		return nil
	})
	if after := foreignDump(c); after != before {
		t.Fatalf("foreign rows changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// foreignDump prints every row without Dunlin's owner key, in full, in a stable order.
func foreignDump(c *cluster) string {
	c.t.Helper()
	var b strings.Builder
	for _, tbl := range []string{"Logical_Router", "Logical_Router_Port", "Logical_Switch", "Logical_Switch_Port", "Load_Balancer", "Load_Balancer_Group"} {
		var rows []string
		for _, row := range strings.Split(c.nbctl("--format=csv", "--no-headings", "list", tbl), "\n") {
			if row != "" && !strings.Contains(row, "dunlin.io/owner") && !strings.Contains(row, "dunlin-cluster") && !strings.Contains(row, "dunlin-routers") {
				rows = append(rows, row)
			}
		}
		sort.Strings(rows)
		b.WriteString(tbl + ":\n" + strings.Join(rows, "\n") + "\n")
	}
	return b.String()
}
