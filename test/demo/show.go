package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

func heading(title string) { fmt.Printf("\n=== %s ===\n", title) }

// show prints what an operator looks at once the pods run: the pods, OVN's two databases and OVS.
func (d *demo) show(ctx context.Context) error {
	heading("Pods")
	if d.kubectl != "" {
		if err := d.runKubectl(ctx, "-n", namespace, "get", "pods", "-o", "wide"); err != nil {
			return err
		}
		fmt.Println("# The sandboxes, as each node's kubelet made them:")
	}
	if err := d.sandboxTable(d.pods); err != nil {
		return err
	}

	heading("OVN northbound: a switch per node, a port per pod, the cluster router (written by dunlin-controller)")
	if err := d.runNBCtl("show"); err != nil {
		return err
	}
	heading(fmt.Sprintf("OVN southbound: a chassis per node with its %s tunnel endpoint, bound pod ports", d.o.encap))
	if err := d.runSBCtl("show"); err != nil {
		return err
	}

	heading("OVS on each node: a br-int port per pod (the host end of its veth), a tunnel port per other node")
	for _, n := range d.cluster.Nodes {
		fmt.Printf("# %s\n", n.Name)
		if err := runVSCtl(n, "list-ports", "br-int"); err != nil {
			return err
		}
		if p := d.firstPodOn(n); p != nil {
			err := runVSCtl(n, "--columns=name,external_ids", "find", "interface", "external_ids:iface-id="+p.portName())
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *demo) firstPodOn(n *harness.ClusterNode) *pod {
	for _, p := range d.pods {
		if p.node == n {
			return p
		}
	}
	return nil
}

// sandboxTable lists the pods with what only the runtime knows: the netns and how long CNI ADD took.
func (d *demo) sandboxTable(pods []*pod) error {
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  POD\tNODE\tIP\tNETNS\tCNI ADD")
	for _, p := range pods {
		fmt.Fprintf(w, "  %s/%s\t%s\t%s\t%s\t%s\n", namespace, p.name, p.node.Name, p.sb.IP, p.sb.NetnsName,
			p.sb.AddTime.Round(time.Millisecond))
	}
	return w.Flush()
}

func printCommand(argv []string) { fmt.Println("$ " + shellJoin(argv)) }

func printIndented(s string) {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		fmt.Println("  (empty)")
		return
	}
	for _, line := range strings.Split(s, "\n") {
		fmt.Println(strings.TrimRight("  "+line, " "))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// shellJoin quotes argv so that it can be pasted into a shell.
func shellJoin(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	return strings.Join(quoted, " ")
}

func shellQuote(s string) string {
	safe := func(r rune) bool {
		return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=,@%+", r)
	}
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool { return !safe(r) }) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// The commands printed are what a user can paste to see the same: the harness's NBCtl, SBCtl and
// VSCtl add the same --db, and a --timeout.

func (d *demo) runNBCtl(args ...string) error {
	printCommand(append([]string{"ovn-nbctl", "--db=" + d.cluster.OVN.NBAddr}, args...))
	out, err := d.cluster.OVN.NBCtl(args...)
	if err != nil {
		return err
	}
	printIndented(out)
	return nil
}

func (d *demo) runSBCtl(args ...string) error {
	printCommand(append([]string{"ovn-sbctl", "--db=" + d.cluster.OVN.SBAddr}, args...))
	out, err := d.cluster.OVN.SBCtl(args...)
	if err != nil {
		return err
	}
	printIndented(out)
	return nil
}

func runVSCtl(n *harness.ClusterNode, args ...string) error {
	printCommand(append([]string{"ovs-vsctl", "--db=" + n.OVSDB}, args...))
	out, err := n.VSCtl(args...)
	if err != nil {
		return err
	}
	printIndented(out)
	return nil
}

// runInNode runs a command inside the node's netns, where its OVS ports and pod veths are.
func runInNode(ctx context.Context, n *harness.ClusterNode, bin string, args ...string) error {
	printCommand(append([]string{"ip", "netns", "exec", n.Netns, bin}, args...))
	out, err := n.Exec(ctx, bin, args...)
	if err != nil {
		return err
	}
	printIndented(out)
	return nil
}

func (d *demo) kubectlCommand(args ...string) []string {
	kubectl := d.kubectl
	if kubectl == "" {
		kubectl = "kubectl"
	}
	return append([]string{kubectl, "--kubeconfig", d.cluster.Kube.Kubeconfig}, args...)
}

func (d *demo) runKubectl(ctx context.Context, args ...string) error {
	argv := d.kubectlCommand(args...)
	printCommand(argv)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	printIndented(string(out))
	return nil
}
