package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// replacePod deletes the last pod of the first node and shows that its OVS port, veth and netns went
// with it, then creates a pod in its place, which gets the freed address and reaches every pod.
func (d *demo) replacePod(ctx context.Context) error {
	n := d.cluster.Nodes[0]
	slot := 0
	for i, p := range d.pods {
		if p.node == n {
			slot = i
		}
	}
	old := d.pods[slot]
	heading(fmt.Sprintf("Deleting pod %s/%s and creating another in its place", namespace, old.name))
	port, err := n.VSCtl("--bare", "--columns=name", "find", "interface", "external_ids:iface-id="+old.portName())
	if err != nil {
		return err
	}
	fmt.Printf("# %s has IP %s, OVS port and host veth %s, netns %s.\n", old.name, old.sb.IP, port, old.sb.NetnsName)
	fmt.Printf("# %s before (ovn-*-0 are tunnels to the other nodes, ul0 is the node's underlay link):\n", n.Name)
	if err := d.showNodePorts(ctx, n); err != nil {
		return err
	}
	fmt.Println("# deleting through the Kubernetes API, as this kubectl command would:")
	printCommand(d.kubectlCommand("-n", namespace, "delete", "pod", old.name))
	err = timed(fmt.Sprintf("Deleting %s and waiting until it has left the API, OVS, %s and NB", old.name, n.Name), func() error {
		if err := d.deletePod(ctx, old); err != nil {
			return err
		}
		return d.waitFor(ctx, deleteTimeout, func() error { return d.gone(ctx, old, port) },
			func(last error) error { return fmt.Errorf("pod %s/%s deleted: %w", namespace, old.name, last) })
	})
	if err != nil {
		return err
	}
	fmt.Printf("# %s after:\n", n.Name)
	if err := d.showNodePorts(ctx, n); err != nil {
		return err
	}
	fmt.Printf("  port and veth %s, netns %s, NB logical switch port %s: all gone\n", port, old.sb.NetnsName, old.portName())

	repl := newPod(n, d.o.podsPerNode)
	d.pods[slot] = repl
	err = timed(fmt.Sprintf("Creating pod %s/%s on %s and waiting until it is Running", namespace, repl.name, n.Name), func() error {
		if err := d.createPod(ctx, repl); err != nil {
			return err
		}
		return d.waitRunning(ctx, repl)
	})
	if err != nil {
		return err
	}
	if err := d.sandboxTable([]*pod{repl}); err != nil {
		return err
	}
	if repl.sb.IP == old.sb.IP {
		fmt.Printf("# %s got %s, the address %s freed (the lowest free one)\n", repl.name, repl.sb.IP, old.name)
	} else {
		msg := fmt.Sprintf("%s got %s, not %s that %s freed", repl.name, repl.sb.IP, old.sb.IP, old.name)
		fmt.Println("# " + msg)
		d.failures = append(d.failures, msg)
	}
	return d.probeReplacement(ctx, repl)
}

// gone reports what is left of a deleted pod whose OVS port (and host veth) was port.
func (d *demo) gone(ctx context.Context, p *pod, port string) error {
	_, err := d.cluster.Kube.Client.CoreV1().Pods(namespace).Get(ctx, p.name, metav1.GetOptions{})
	switch {
	case err == nil:
		return errors.New("the pod is still in the API")
	case !apierrors.IsNotFound(err):
		return err
	}
	out, err := p.node.VSCtl("--bare", "--columns=name", "find", "interface", "external_ids:iface-id="+p.portName())
	switch {
	case err != nil:
		return err
	case out != "":
		return fmt.Errorf("OVS port %s is still on %s", out, p.node.Name)
	}
	veths, err := p.node.Exec(ctx, "ip", "-br", "link", "show", "type", "veth")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(veths, "\n") {
		if name, _, _ := strings.Cut(line, "@"); name == port {
			return fmt.Errorf("veth %s is still on %s", port, p.node.Name)
		}
	}
	if _, err := os.Stat(p.sb.Netns); err == nil {
		return fmt.Errorf("netns %s still exists", p.sb.NetnsName)
	}
	out, err = d.cluster.OVN.NBCtl("--bare", "--columns=name", "find", "Logical_Switch_Port", "name="+p.portName())
	switch {
	case err != nil:
		return err
	case out != "":
		return fmt.Errorf("logical switch port %s is still in NB", out)
	}
	return nil
}

func (d *demo) showNodePorts(ctx context.Context, n *harness.ClusterNode) error {
	if err := runVSCtl(n, "list-ports", "br-int"); err != nil {
		return err
	}
	return runInNode(ctx, n, "ip", "-br", "link", "show", "type", "veth")
}

// probeReplacement probes the new pod to and from every pod and prints the results as one table.
func (d *demo) probeReplacement(ctx context.Context, repl *pod) error {
	var pairs []pair
	for _, p := range d.pods {
		pairs = append(pairs, pair{repl, p})
		if p != repl {
			pairs = append(pairs, pair{p, repl})
		}
	}
	if err := d.waitDatapath(ctx); err != nil {
		return err
	}
	var results map[pair]result
	err := timed(fmt.Sprintf("Probing %s to and from each of the %d pods", repl.name, len(d.pods)), func() error {
		results = probeAll(ctx, pairs)
		return ctx.Err()
	})
	if err != nil {
		return err
	}
	from := func(get func(result) error) func(*pod) error {
		return func(dst *pod) error { return get(results[pair{repl, dst}]) }
	}
	to := func(get func(result) error) func(*pod) error {
		return func(src *pod) error { return get(results[pair{src, repl}]) }
	}
	httpOf := func(r result) error { return r.http }
	pingOf := func(r result) error { return r.ping }
	printMatrix("", []matrixRow{
		{label: "HTTP from " + repl.name, cell: from(httpOf)},
		{label: "HTTP to " + repl.name, cell: to(httpOf)},
		{label: "ping from " + repl.name, cell: from(pingOf)},
		{label: "ping to " + repl.name, cell: to(pingOf)},
	}, d.pods)
	d.summarize("HTTP", pairs, func(pr pair) error { return results[pr].http })
	d.summarize("ping", pairs, func(pr pair) error { return results[pr].ping })
	return nil
}
