package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/annotations"
)

// demoPod is a pod the demo creates.
type demoPod struct {
	name, node  string
	hostNetwork bool
}

// portName is the pod's logical switch port (translator.PodPortName, not imported to keep the demo
// an outside view).
func (p demoPod) portName() string { return namespace + "_" + p.name }

// plan is the Nodes and pods the demo creates.
type plan struct {
	nodes []string
	pods  []demoPod
}

func newPlan(o options) plan {
	var p plan
	for i := range o.nodes {
		suffix := letters(i)
		node := "node-" + suffix
		p.nodes = append(p.nodes, node)
		for j := 1; j <= o.podsPerNode; j++ {
			p.pods = append(p.pods, demoPod{name: fmt.Sprintf("pod-%s-%d", suffix, j), node: node})
		}
	}
	// A host-network pod uses the node's own network: Dunlin gives it no address and no port.
	p.pods = append(p.pods, demoPod{name: "hostnet-a", node: p.nodes[0], hostNetwork: true})
	return p
}

// letters names index i as a, b, ..., z, aa, ab, ...
func letters(i int) string {
	s := ""
	for i++; i > 0; i = (i - 1) / 26 {
		s = string(rune('a'+(i-1)%26)) + s
	}
	return s
}

func (p plan) networked() []demoPod {
	var out []demoPod
	for _, pod := range p.pods {
		if !pod.hostNetwork {
			out = append(out, pod)
		}
	}
	return out
}

func (e *env) create(ctx context.Context, p plan) error {
	return timed(fmt.Sprintf("Creating namespace %s, %d Nodes and %d pods (one with hostNetwork)", namespace, len(p.nodes), len(p.pods)),
		func() error {
			if err := e.createNamespace(ctx); err != nil {
				return err
			}
			for _, n := range p.nodes {
				node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"kubernetes.io/hostname": n}}}
				if _, err := e.kube.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
					return fmt.Errorf("create node %s: %w", n, err)
				}
			}
			for _, pod := range p.pods {
				if err := e.createPod(ctx, pod); err != nil {
					return err
				}
			}
			return nil
		})
}

// createNamespace also creates its "default" ServiceAccount: ServiceAccount admission rejects pods
// without it, and there is no controller manager here to create it.
func (e *env) createNamespace(ctx context.Context) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := e.kube.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	if _, err := e.kube.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service account %s/default: %w", namespace, err)
	}
	return nil
}

// createPod sets spec.nodeName itself: there is no scheduler (and no kubelet, so it never runs).
func (e *env) createPod(ctx context.Context, p demoPod) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: namespace},
		Spec: corev1.PodSpec{
			NodeName:    p.node,
			HostNetwork: p.hostNetwork,
			Containers:  []corev1.Container{{Name: "main", Image: podImage}},
		},
	}
	if _, err := e.kube.Client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create pod %s/%s: %w", namespace, p.name, err)
	}
	return nil
}

// waitConverged waits until every Node has a subnet and every networked pod has its annotation and a
// port in NB with the annotation's addresses.
func (e *env) waitConverged(ctx context.Context, p plan) error {
	var pending []string
	check := func() error {
		var err error
		pending, err = e.notConverged(ctx, p)
		if err != nil {
			return err
		}
		if len(pending) > 0 {
			return errors.New(pending[0])
		}
		return nil
	}
	return e.poll(ctx, convergeTimeout, check, func(last error) error {
		if len(pending) == 0 {
			return fmt.Errorf("cannot check convergence: %w", last)
		}
		return fmt.Errorf("%d items did not converge:\n  %s", len(pending), strings.Join(firstN(pending, maxPending), "\n  "))
	})
}

func firstN(items []string, n int) []string {
	if len(items) <= n {
		return items
	}
	return append(slices.Clone(items[:n]), fmt.Sprintf("... and %d more", len(items)-n))
}

// notConverged lists, in words, what is not there yet.
func (e *env) notConverged(ctx context.Context, p plan) ([]string, error) {
	nodes, err := e.nodeSubnets(ctx)
	if err != nil {
		return nil, err
	}
	pods, err := e.podNetworks(ctx)
	if err != nil {
		return nil, err
	}
	ports, err := e.portAddresses()
	if err != nil {
		return nil, err
	}
	var pending []string
	for _, n := range p.nodes {
		if nodes[n] == "" {
			pending = append(pending, fmt.Sprintf("node %s: no %s annotation", n, annotations.NodeSubnet))
		}
	}
	for _, pod := range p.networked() {
		if msg := podPending(pod, pods, ports); msg != "" {
			pending = append(pending, fmt.Sprintf("pod %s/%s: %s", namespace, pod.name, msg))
		}
	}
	return pending, nil
}

func podPending(pod demoPod, pods map[string]podNetwork, ports map[string]string) string {
	pn := pods[pod.name]
	switch {
	case pn.raw == "":
		return "no " + annotations.PodNetwork + " annotation"
	case pn.err != nil:
		return pn.err.Error()
	}
	want := pn.info.MACAddress + " " + pn.info.Prefix().Addr().String()
	got, ok := ports[pod.portName()]
	switch {
	case !ok:
		return "no logical switch port " + pod.portName() + " in NB"
	case got != want:
		return fmt.Sprintf("port %s has addresses %q, the annotation says %q", pod.portName(), got, want)
	}
	return ""
}

// nodeSubnets returns each Node's dunlin.io/node-subnet annotation ("" if none).
func (e *env) nodeSubnets(ctx context.Context) (map[string]string, error) {
	list, err := e.kube.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	out := make(map[string]string, len(list.Items))
	for _, n := range list.Items {
		out[n.Name] = n.Annotations[annotations.NodeSubnet]
	}
	return out, nil
}

// podNetwork is a pod as the demo reports it: its node and its parsed annotation.
type podNetwork struct {
	node string
	raw  string // the annotation, "" if none
	info annotations.PodNetworkInfo
	err  error // from parsing raw
}

func (e *env) podNetworks(ctx context.Context) (map[string]podNetwork, error) {
	list, err := e.kube.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	out := make(map[string]podNetwork, len(list.Items))
	for _, p := range list.Items {
		pn := podNetwork{node: p.Spec.NodeName, raw: p.Annotations[annotations.PodNetwork]}
		if pn.raw != "" {
			pn.info, pn.err = annotations.ParsePodNetwork(pn.raw)
		}
		out[p.Name] = pn
	}
	return out, nil
}

// portAddresses returns the addresses column of every logical switch port by name, in one ovn-nbctl
// call rather than an lsp-get-addresses per pod.
func (e *env) portAddresses() (map[string]string, error) {
	out, err := e.ovn.NBCtl("--format=csv", "--data=bare", "--no-headings", "--columns=name,addresses", "list", "Logical_Switch_Port")
	if err != nil {
		return nil, err
	}
	ports := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if name, addrs, ok := strings.Cut(line, ","); ok {
			ports[name] = addrs
		}
	}
	return ports, nil
}
