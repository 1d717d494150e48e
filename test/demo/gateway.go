package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dunlinplugin/dunlin/test/harness"
)

const (
	outsidePort     = 8090 // the outside server that answers each connection with the client address it saw
	nodePortName    = "web-nodeport"
	nodePort        = 30080
	nodePortTries   = 6 // requests from outside to each node's NodePort, a new connection each
	gatewayTimeout  = 90 * time.Second
	outsideDeadline = 5 * time.Second
)

// gateways shows the node gateways from both sides: a pod on each node reaching a server outside the
// cluster (which sees the node's IP: the gateway router SNATs), and the outside client reaching a
// NodePort on each node.
func (d *demo) gateways(ctx context.Context) error {
	out := d.cluster.Outside
	heading(fmt.Sprintf("Node gateways: pods reach the outside (%s, a netns on the nodes' underlay), the outside reaches NodePorts", out.IP))
	fmt.Println("# dunlin-node moved each node's uplink into br-ex; dunlin-controller gave each node a gateway router GR_<node>")
	fmt.Println("# on the join switch, with an external switch ext_<node> whose localnet port is br-ex:")
	if err := d.runNBCtl("lr-nat-list", "GR_"+d.cluster.Nodes[0].Name); err != nil {
		return err
	}
	ln, err := out.Listen("tcp", net.JoinHostPort(out.IP, fmt.Sprint(outsidePort)))
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, c.RemoteAddr())
			c.Close()
		}
	}()
	addr := net.JoinHostPort(out.IP, fmt.Sprint(outsidePort))
	fmt.Printf("\nTCP: connect from inside a pod on each node to %s, a server outside the cluster that answers with the client address it saw.\n", addr)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  POD\tNODE\tNODE IP\tTHE OUTSIDE SERVER SAW")
	for _, n := range d.cluster.Nodes {
		p := d.firstPodOn(n)
		if p == nil {
			continue
		}
		var saw string
		err := d.waitFor(ctx, gatewayTimeout, func() error {
			var err error
			saw, err = readLine(ctx, p.sb.Dial, addr)
			return err
		}, func(last error) error { return last })
		if err != nil {
			saw = "failed: " + err.Error()
			d.failures = append(d.failures, fmt.Sprintf("egress: %s to %s: %v", p.name, addr, err))
		} else if host, _, _ := net.SplitHostPort(saw); host != n.EncapIP {
			d.failures = append(d.failures, fmt.Sprintf("egress: the outside server saw %s from %s, want the node IP %s", saw, p.name, n.EncapIP))
		}
		fmt.Fprintf(w, "  %s/%s\t%s\t%s\t%s\n", namespace, p.name, n.Name, n.EncapIP, saw)
	}
	if err := w.Flush(); err != nil {
		return err
	}

	fmt.Printf("\n# a NodePort Service in front of the same pods, as this kubectl command would make:\n")
	printCommand(d.kubectlCommand("-n", namespace, "create", "service", "nodeport", nodePortName,
		fmt.Sprintf("--tcp=%d:%d", servicePort, podPort), fmt.Sprintf("--node-port=%d", nodePort)))
	lb := "Service_" + namespace + "/" + nodePortName + "_TCP_nodeport"
	err = timed(fmt.Sprintf("Creating Service %s/%s and waiting until its NodePort load balancer %s has the %d pods", namespace, nodePortName, lb, len(d.pods)), func() error {
		if err := d.createNodePort(ctx); err != nil {
			return err
		}
		if err := d.waitFor(ctx, backendsTimeout, func() error { return d.lbBackends(lb, len(d.pods)) },
			func(last error) error { return fmt.Errorf("load balancer %s: %w", lb, last) }); err != nil {
			return err
		}
		return d.cluster.WaitDatapath(ctx)
	})
	if err != nil {
		return err
	}
	fmt.Println("# one template load balancer for every node: ^NODEIP is each chassis' node IP (Chassis_Template_Var)")
	if err := d.runNBCtl("--columns=name,vips", "find", "Load_Balancer", "name="+lb); err != nil {
		return err
	}
	fmt.Printf("\nHTTP: GET http://<node IP>:%d/ from the outside netns, %d new connections per node; the answer is the backend pod's name.\n", nodePort, nodePortTries)
	w = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  NODE\tURL\tANSWERED BY")
	for _, n := range d.cluster.Nodes {
		url := fmt.Sprintf("%s:%d", n.EncapIP, nodePort)
		counts := map[string]int{}
		err := d.waitFor(ctx, gatewayTimeout, func() error {
			_, err := readHTTP(ctx, out, url)
			return err
		}, func(last error) error { return last })
		for i := 0; err == nil && i < nodePortTries; i++ {
			var name string
			if name, err = readHTTP(ctx, out, url); err == nil {
				counts[name]++
			}
		}
		answered := fmt.Sprint(counts)
		if err != nil {
			answered = "failed: " + err.Error()
			d.failures = append(d.failures, fmt.Sprintf("NodePort: outside to %s: %v", url, err))
		}
		fmt.Fprintf(w, "  %s\thttp://%s/\t%s\n", n.Name, url, strings.Trim(answered, "map[]"))
	}
	return w.Flush()
}

func (d *demo) createNodePort(ctx context.Context) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: nodePortName, Namespace: namespace},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: serviceSelector,
			Ports: []corev1.ServicePort{{
				Protocol: corev1.ProtocolTCP, Port: servicePort, TargetPort: intstr.FromInt32(podPort), NodePort: nodePort,
			}},
		},
	}
	if _, err := d.cluster.Kube.Client.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s/%s: %w", namespace, nodePortName, err)
	}
	return nil
}

// lbBackends checks that every VIP of the load balancer has n backends.
func (d *demo) lbBackends(lb string, n int) error {
	vips, err := d.cluster.OVN.LBVIPs(lb)
	switch {
	case err != nil:
		return err
	case len(vips) == 0:
		return errors.New("no load balancer yet")
	}
	for vip, backends := range vips {
		if len(backends) != n {
			return fmt.Errorf("%s has backends %v, want %d", vip, backends, n)
		}
	}
	return nil
}

// readLine connects with dial and returns the first line the server sends.
func readLine(ctx context.Context, dial func(context.Context, string, string) (net.Conn, error), addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, outsideDeadline)
	defer cancel()
	c, err := dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(outsideDeadline))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// readHTTP does GET / on addr from the outside netns over a fresh connection and returns the body.
func readHTTP(ctx context.Context, out *harness.Outside, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, outsideDeadline)
	defer cancel()
	c, err := out.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(outsideDeadline))
	fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: %s\r\n\r\n", addr)
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	head, body, _ := strings.Cut(string(b), "\r\n\r\n")
	if !strings.Contains(strings.SplitN(head, "\r\n", 2)[0], " 200 ") {
		return "", fmt.Errorf("GET http://%s/: %q", addr, head)
	}
	return strings.TrimSpace(body), nil
}
