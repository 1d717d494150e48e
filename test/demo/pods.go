package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// pod is a pod the demo creates and, once it runs, the sandbox the stand-in kubelet made for it.
type pod struct {
	name string
	node *harness.ClusterNode
	sb   harness.Sandbox
}

// portName is the pod's logical switch port and OVS iface-id (conventions.PodPortName, not imported to
// keep the demo an outside view).
func (p *pod) portName() string { return namespace + "_" + p.name }

// newPod names pods after their node, so that the name says where a pod runs: node1-a, node1-b, ...
func newPod(n *harness.ClusterNode, i int) *pod {
	return &pod{name: fmt.Sprintf("%s-%c", n.Name, 'a'+i), node: n}
}

func (d *demo) createPods(ctx context.Context) error {
	for _, n := range d.cluster.Nodes {
		for i := range d.o.podsPerNode {
			d.pods = append(d.pods, newPod(n, i))
		}
	}
	err := timed(fmt.Sprintf("Creating namespace %s and %d pods labelled %s, %d on each node (spec.nodeName set: there is no scheduler)",
		namespace, len(d.pods), selectorString(), d.o.podsPerNode), func() error {
		if err := d.createNamespace(ctx); err != nil {
			return err
		}
		for _, p := range d.pods {
			if err := d.createPod(ctx, p); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return timed(fmt.Sprintf("Waiting until the %d pods are Running: CNI ADD by each node's kubelet, podserver answering", len(d.pods)),
		func() error { return d.waitRunning(ctx, d.pods...) })
}

// createNamespace also creates its "default" ServiceAccount unless the controller manager was faster:
// ServiceAccount admission rejects pods without it.
func (d *demo) createNamespace(ctx context.Context) error {
	client := d.cluster.Kube.Client
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service account %s/default: %w", namespace, err)
	}
	return nil
}

func (d *demo) createPod(ctx context.Context, p *pod) error {
	obj := &corev1.Pod{
		// Every demo pod is a backend of the Service the demo creates last.
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: namespace,
			Labels: map[string]string{"app": serviceSelector["app"], letterLabel: letter(p)}},
		Spec: corev1.PodSpec{
			NodeName:   p.node.Name,
			Containers: []corev1.Container{{Name: "podserver", Image: podImage}},
		},
	}
	if _, err := d.cluster.Kube.Client.CoreV1().Pods(namespace).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod %s/%s: %w", namespace, p.name, err)
	}
	return nil
}

// waitRunning waits until every pod is Running with the IP its sandbox got, and its podserver answers
// inside the pod; it records the sandboxes.
func (d *demo) waitRunning(ctx context.Context, pods ...*pod) error {
	var pending []string
	check := func() error {
		pending = pending[:0]
		for _, p := range pods {
			if p.sb.IP != "" {
				continue
			}
			sb, err := d.running(ctx, p)
			if err != nil {
				pending = append(pending, fmt.Sprintf("%s/%s: %v", namespace, p.name, err))
				continue
			}
			p.sb = sb
		}
		if len(pending) > 0 {
			return errors.New(pending[0])
		}
		return nil
	}
	return d.waitFor(ctx, runningTimeout, check, func(error) error {
		return fmt.Errorf("%d of %d pods not running:\n  %s", len(pending), len(pods), strings.Join(firstN(pending, maxListed), "\n  "))
	})
}

func (d *demo) running(ctx context.Context, p *pod) (harness.Sandbox, error) {
	obj, err := d.cluster.Kube.Client.CoreV1().Pods(namespace).Get(ctx, p.name, metav1.GetOptions{})
	if err != nil {
		return harness.Sandbox{}, err
	}
	kubelet := p.node.Kubelet
	if obj.Status.Phase != corev1.PodRunning || obj.Status.PodIP == "" {
		return harness.Sandbox{}, fmt.Errorf("phase %q, IP %q, kubelet: %v", obj.Status.Phase, obj.Status.PodIP, kubelet.LastError(namespace, p.name))
	}
	sb, ok := kubelet.Sandbox(namespace, p.name)
	switch {
	case !ok:
		return sb, errors.New("running, but the kubelet has no sandbox")
	case sb.IP != obj.Status.PodIP:
		return sb, fmt.Errorf("status says IP %s, the sandbox has %s", obj.Status.PodIP, sb.IP)
	}
	// The podserver is started after CNI ADD: it may not listen yet.
	if _, err := httpGet(ctx, sb, net.JoinHostPort("127.0.0.1", fmt.Sprint(podPort))); err != nil {
		return sb, fmt.Errorf("podserver not answering yet: %w", err)
	}
	return sb, nil
}

// deletePod deletes through the API, as kubectl does (graceful); the node's kubelet tears the sandbox
// down (CNI DEL) and then finishes the deletion.
func (d *demo) deletePod(ctx context.Context, p *pod) error {
	err := d.cluster.Kube.Client.CoreV1().Pods(namespace).Delete(ctx, p.name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, p.name, err)
	}
	return nil
}
