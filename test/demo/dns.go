package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

const dnsTimeout = 2 * time.Minute

// dns shows cluster DNS: the apiserver's endpoint on the first node, CoreDNS running as a pod behind
// kube-dns, and a pod on each node resolving the demo Service's name through it and connecting to the
// answer.
func (d *demo) dns(ctx context.Context) error {
	c := d.cluster
	heading(fmt.Sprintf("Cluster DNS: CoreDNS as a pod behind kube-system/kube-dns (%s), reading the API through the kubernetes Service", harness.ClusterDNSIP))
	fmt.Printf("# the API server advertises %s (the first node's IP; the demo relays it there to the API server on this\n", harness.NodeIP(0))
	fmt.Println("# machine), and its endpoint reconciler publishes that as the kubernetes Service's endpoint:")
	if d.kubectl != "" {
		if err := d.runKubectl(ctx, "get", "endpointslices", "-n", "default", "-l", "kubernetes.io/service-name=kubernetes"); err != nil {
			return err
		}
	}
	err := timed(fmt.Sprintf("Waiting until CoreDNS (on %s) is ready: GET /ready on port %d from its node, as kubelet probes",
		c.DNS.Node.Name, harness.DNSReadyPort), func() error {
		return c.WaitDNSReady(ctx, dnsTimeout)
	})
	if err != nil {
		return err
	}
	err = timed("Waiting until kube-dns's load balancers have CoreDNS as backend and every node has the flows", func() error {
		for _, proto := range []string{"UDP", "TCP"} {
			lb := "Service_kube-system/kube-dns_" + proto
			if err := d.waitFor(ctx, backendsTimeout, func() error { return d.lbBackends(lb, 1) },
				func(last error) error { return fmt.Errorf("load balancer %s: %w", lb, last) }); err != nil {
				return err
			}
		}
		return c.WaitDatapath(ctx)
	})
	if err != nil {
		return err
	}
	if d.kubectl != "" {
		if err := d.runKubectl(ctx, "-n", "kube-system", "get", "pods,services,endpointslices", "-o", "wide"); err != nil {
			return err
		}
		fmt.Println("# (CoreDNS is READY once its readiness probe, /ready, passed; kube-controller-manager then published it in the EndpointSlice.)")
	}
	fmt.Printf("# CoreDNS's configuration (%s):\n", c.DNS.Corefile)
	if b, err := os.ReadFile(c.DNS.Corefile); err == nil {
		printIndented(string(b))
	}

	name := fmt.Sprintf("%s.%s.svc.%s", serviceName, namespace, harness.ClusterDomain)
	server := net.JoinHostPort(harness.ClusterDNSIP, "53")
	fmt.Printf("\nDNS: look %s up from inside a pod on each node, asking %s (UDP), then GET http://<answer>:%d/.\n", name, server, servicePort)
	for _, n := range d.cluster.Nodes {
		p := d.firstPodOn(n)
		if p == nil {
			continue
		}
		var addrs []string
		err := d.waitFor(ctx, backendsTimeout, func() error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			var err error
			addrs, err = p.sb.Resolver(server, false).LookupHost(ctx, name+".")
			return err
		}, func(last error) error { return last })
		if err != nil {
			msg := fmt.Sprintf("DNS: %s looking up %s: %v", p.name, name, err)
			fmt.Println("  " + msg)
			d.failures = append(d.failures, msg)
			continue
		}
		if !slices.Equal(addrs, []string{d.serviceIP}) {
			d.failures = append(d.failures, fmt.Sprintf("DNS: %s resolved %s to %v, want %s", p.name, name, addrs, d.serviceIP))
		}
		answer, err := httpGet(ctx, p.sb, net.JoinHostPort(addrs[0], fmt.Sprint(servicePort)))
		if err != nil {
			answer = "failed: " + err.Error()
			d.failures = append(d.failures, fmt.Sprintf("DNS: %s connecting to %s: %v", p.name, addrs[0], err))
		}
		fmt.Printf("  %s (%s): %s -> %s; GET answered by %s\n", p.name, n.Name, name, strings.Join(addrs, ","), answer)
	}
	if b, err := os.ReadFile(c.DNS.Log); err == nil {
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, name) {
				lines = append(lines, l)
			}
		}
		fmt.Printf("# CoreDNS's log (the log plugin), %s:\n", c.DNS.Log)
		printIndented(lastLines(strings.Join(lines, "\n"), 4))
	}
	return nil
}
