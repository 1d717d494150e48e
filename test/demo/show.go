package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/annotations"
)

func heading(title string) { fmt.Printf("\n=== %s ===\n", title) }

func (e *env) show(ctx context.Context, p plan) error {
	heading("The OVN northbound database, as dunlin-controller wrote it")
	if err := e.runNBCtl("show"); err != nil {
		return err
	}
	heading("Pods (from their " + annotations.PodNetwork + " annotation, read through the Kubernetes API)")
	if err := e.podTable(ctx, p); err != nil {
		return err
	}
	fmt.Println("# the same data with kubectl:")
	e.printCommand(e.kubectlCommand("-n", namespace, "get", "pods", "-o",
		`custom-columns=NAME:.metadata.name,NODE:.spec.nodeName,NETWORK:.metadata.annotations.dunlin\.io/pod-network`))
	heading("Node subnets: the Node annotation and the node's logical switch")
	if e.kubectl != "" {
		if err := e.runKubectl(ctx, "get", "nodes", "-o",
			`custom-columns=NAME:.metadata.name,SUBNET:.metadata.annotations.dunlin\.io/node-subnet`); err != nil {
			return err
		}
	}
	return e.runNBCtl("--format=table", "--columns=name,other_config", "list", "Logical_Switch")
}

func (e *env) podTable(ctx context.Context, p plan) error {
	pods, err := e.podNetworks(ctx)
	if err != nil {
		return err
	}
	ports, err := e.portAddresses()
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  POD\tNODE\tIP\tMAC\tNB PORT")
	for _, pod := range p.pods {
		pn := pods[pod.name]
		ip, mac := "-", "-"
		if pn.raw != "" && pn.err == nil {
			ip, mac = pn.info.IPAddress, pn.info.MACAddress
		}
		port := "-"
		if _, ok := ports[pod.portName()]; ok {
			port = pod.portName()
		}
		// A host-network pod should have no annotation; show one if it has.
		if pod.hostNetwork && pn.raw == "" {
			ip, mac = "(hostNetwork)", "(hostNetwork)"
		}
		fmt.Fprintf(w, "  %s/%s\t%s\t%s\t%s\t%s\n", namespace, pod.name, pn.node, ip, mac, port)
	}
	return w.Flush()
}

// deletePodDemo deletes the last pod of the first node and shows its port going away.
func (e *env) deletePodDemo(ctx context.Context, p plan) error {
	victim := p.networked()[0]
	for _, pod := range p.networked() {
		if pod.node == victim.node {
			victim = pod
		}
	}
	heading(fmt.Sprintf("Deleting pod %s/%s removes its port from switch %s", namespace, victim.name, victim.node))
	if err := e.runNBCtl("lsp-list", victim.node); err != nil {
		return err
	}
	// Grace period 0: without a kubelet, a graceful delete would never complete.
	fmt.Println("# deleting through the Kubernetes API, as this kubectl command would:")
	e.printCommand(e.kubectlCommand("-n", namespace, "delete", "pod", victim.name, "--grace-period=0", "--force"))
	zero := int64(0)
	if err := e.kube.Client.CoreV1().Pods(namespace).Delete(ctx, victim.name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, victim.name, err)
	}
	start := time.Now()
	err := e.poll(ctx, convergeTimeout, func() error {
		ports, err := e.portAddresses()
		if err != nil {
			return err
		}
		if _, ok := ports[victim.portName()]; ok {
			return fmt.Errorf("port %s is still in NB", victim.portName())
		}
		return nil
	}, func(last error) error { return fmt.Errorf("pod %s/%s deleted: %w", namespace, victim.name, last) })
	if err != nil {
		return err
	}
	fmt.Printf("# port %s left NB %s after the delete:\n", victim.portName(), time.Since(start).Round(10*time.Millisecond))
	return e.runNBCtl("lsp-list", victim.node)
}

// nbctlCommand is the ovn-nbctl command line a user can run to see the same (harness.OVN.NBCtl adds
// the same --db, and a --timeout).
func (e *env) nbctlCommand(args ...string) []string {
	return append([]string{"ovn-nbctl", "--db=" + e.ovn.NBAddr}, args...)
}

func (e *env) kubectlCommand(args ...string) []string {
	kubectl := e.kubectl
	if kubectl == "" {
		kubectl = "kubectl"
	}
	return append([]string{kubectl, "--kubeconfig", e.kube.Kubeconfig}, args...)
}

func (e *env) runNBCtl(args ...string) error {
	e.printCommand(e.nbctlCommand(args...))
	out, err := e.ovn.NBCtl(args...)
	if err != nil {
		return err
	}
	printIndented(out)
	return nil
}

func (e *env) runKubectl(ctx context.Context, args ...string) error {
	argv := e.kubectlCommand(args...)
	e.printCommand(argv)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	printIndented(strings.TrimRight(string(out), "\n"))
	return nil
}
