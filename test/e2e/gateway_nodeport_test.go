package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// A pod reaches a NodePort on every node's IP, its own node's and the others', and both backends answer
// through each (the upstream conformance spec "should be able to create a functioning NodePort
// service" does this from a pod). Another node's node port goes to that node's gateway router over
// the join switch; through the pod's own gateway router and the underlay instead, the first SYN made
// ovs-vswitchd 3.1 (userspace conntrack) abort on one node or the other, every time.
func TestNodePortFromPods(t *testing.T) {
	e := newClusterEnv(t, harness.ClusterOptions{Nodes: 2, Gateway: true, ControllerManager: true})
	n, n2 := e.c.Nodes[0], e.c.Nodes[1]
	e.createPodWith("default", "np1", n.Name, map[string]string{"app": "np"})
	e.createPodWith("default", "np2", n2.Name, map[string]string{"app": "np"})
	e.createPod("default", "client", n.Name)
	e.running("default", "np1")
	e.running("default", "np2")
	_, sb := e.running("default", "client")
	const nodePort = 30090
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "np"}, Spec: corev1.ServiceSpec{
		Type: corev1.ServiceTypeNodePort, Selector: map[string]string{"app": "np"},
		Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: nodePort, Protocol: corev1.ProtocolTCP}},
	}}
	if _, err := e.client.CoreV1().Services("default").Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitBackends("default", "np", "TCP", 2)
	e.datapath()
	for _, node := range []*harness.ClusterNode{n, n2} {
		url := fmt.Sprintf("http://%s:%d/", node.EncapIP, nodePort)
		seen := map[string]bool{}
		e.eventually(90*time.Second, "the client on node1 gets both backends through "+node.Name+"'s node port", func() error {
			body, err := httpGet(sb, url)
			if err != nil {
				return err
			}
			seen[strings.TrimSpace(string(body))] = true
			if !seen["np1"] || !seen["np2"] {
				return fmt.Errorf("answers so far from %v", seen)
			}
			return nil
		})
		// Then every connection, each fresh, is answered.
		for i := range 30 {
			if _, err := httpGet(sb, url); err != nil {
				t.Fatalf("connection %d to %s: %v", i, url, err)
			}
		}
	}
	if err := e.c.Health(); err != nil {
		t.Fatal(err)
	}
}
