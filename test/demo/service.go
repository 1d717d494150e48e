package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

const (
	// The Service is what `kubectl create service clusterip web --tcp=80:8080` makes: selector app=web
	// and a port named 80-8080. The demo creates it through the API and prints that command.
	serviceName     = "web"
	servicePort     = 80
	serviceRequests = 30 // each a new connection, so each is balanced anew
	backendsTimeout = 60 * time.Second
	clusterLBGroup  = "dunlin-cluster" // translator.ClusterLBGroup: attached to every node switch
)

// serviceSelector labels every demo pod (pods.go), so all of them are the Service's backends.
var serviceSelector = map[string]string{"app": serviceName}

func selectorString() string { return "app=" + serviceSelector["app"] }

// loadBalancerName is the NB Load_Balancer dunlin-controller writes for the Service's TCP port
// (translator.LoadBalancerName, not imported to keep the demo an outside view).
func loadBalancerName() string {
	return translator.ServiceLBName(namespace, serviceName, string(corev1.ProtocolTCP))
}

// service puts a ClusterIP Service in front of the pods, shows it in the API and in OVN, and sends
// requests to it from a pod and from a node's host.
func (d *demo) service(ctx context.Context) error {
	heading(fmt.Sprintf("Service %s/%s: a ClusterIP in front of the %d pods, an OVN load balancer on every node switch",
		namespace, serviceName, len(d.pods)))
	fmt.Println("# created through the Kubernetes API, as this kubectl command would:")
	printCommand(d.kubectlCommand("-n", namespace, "create", "service", "clusterip", serviceName,
		fmt.Sprintf("--tcp=%d:%d", servicePort, podPort)))
	err := timed(fmt.Sprintf("Creating Service %s/%s (selector %s, port %d -> targetPort %d)",
		namespace, serviceName, selectorString(), servicePort, podPort), func() error {
		return d.createService(ctx)
	})
	if err != nil {
		return err
	}
	fmt.Printf("    ClusterIP %s\n", d.serviceIP)
	what := fmt.Sprintf("Waiting until %s has the %d pods as backends (EndpointSlice by kube-controller-manager, "+
		"load balancer by dunlin-controller) and every node's ovn-controller has it (ovn-nbctl --wait=hv sync)", loadBalancerName(), len(d.pods))
	err = timed(what, func() error {
		if err := d.waitFor(ctx, backendsTimeout, d.backendsReady, func(last error) error {
			return fmt.Errorf("load balancer %s: %w", loadBalancerName(), last)
		}); err != nil {
			return err
		}
		// NB having the backends is not yet flows on the nodes: wait for every chassis to catch up.
		return d.cluster.WaitDatapath(ctx)
	})
	if err != nil {
		return err
	}

	if d.kubectl != "" {
		if err := d.runKubectl(ctx, "get", "svc,endpointslices", "-n", namespace, "-o", "wide"); err != nil {
			return err
		}
	} else if err := d.printEndpointSlices(ctx); err != nil {
		return err
	}
	fmt.Printf("# dunlin-controller made the Service a load balancer (VIP -> backends) in group %s, which every node switch has:\n", clusterLBGroup)
	if err := d.runNBCtl("lb-list"); err != nil {
		return err
	}
	fmt.Println("# (lb-list cuts names at 16 characters; the row in full:)")
	if err := d.runNBCtl("--columns=name,protocol,vips,options", "find", "Load_Balancer", "name="+loadBalancerName()); err != nil {
		return err
	}
	if err := d.runNBCtl("ls-lb-list", d.cluster.Nodes[0].Name); err != nil {
		return err
	}

	if err := d.spread(ctx, d.pods[0]); err != nil {
		return err
	}
	return d.fromHost(ctx, d.cluster.Nodes[0])
}

func (d *demo) createService(ctx context.Context) error {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: serviceName, Namespace: namespace, Labels: serviceSelector},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: serviceSelector,
			Ports: []corev1.ServicePort{{
				Name:       fmt.Sprintf("%d-%d", servicePort, podPort),
				Protocol:   corev1.ProtocolTCP,
				Port:       servicePort,
				TargetPort: intstr.FromInt32(podPort),
			}},
		},
	}
	svc, err := d.cluster.Kube.Client.CoreV1().Services(namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create service %s/%s: %w", namespace, serviceName, err)
	}
	d.serviceIP = svc.Spec.ClusterIP
	return nil
}

// backendsReady checks that the Service's load balancer maps its VIP to exactly the pods' podserver
// ports.
func (d *demo) backendsReady() error {
	vips, err := d.cluster.OVN.LBVIPs(loadBalancerName())
	switch {
	case err != nil:
		return err
	case vips == nil:
		return errors.New("no load balancer yet")
	}
	vip := net.JoinHostPort(d.serviceIP, fmt.Sprint(servicePort))
	got, ok := vips[vip]
	if !ok {
		return fmt.Errorf("vips %v: no %s", vips, vip)
	}
	for _, p := range d.pods {
		if !slices.Contains(got, net.JoinHostPort(p.sb.IP, fmt.Sprint(podPort))) {
			return fmt.Errorf("vips %v: %s missing", vips, p.name)
		}
	}
	if len(got) != len(d.pods) {
		return fmt.Errorf("vips %v: want %d backends", vips, len(d.pods))
	}
	return nil
}

// printEndpointSlices stands in for kubectl when it is not built.
func (d *demo) printEndpointSlices(ctx context.Context) error {
	list, err := d.cluster.Kube.Client.DiscoveryV1().EndpointSlices(namespace).List(ctx,
		metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + serviceName})
	if err != nil {
		return err
	}
	for _, s := range list.Items {
		var addrs []string
		for _, e := range s.Endpoints {
			addrs = append(addrs, e.Addresses...)
		}
		fmt.Printf("  EndpointSlice %s/%s: %s\n", namespace, s.Name, strings.Join(addrs, ","))
	}
	return nil
}

// spread sends requests to the ClusterIP from a pod and prints which backend answered how often. A failed
// request, an answer from no backend and a node whose backends never answer count as failures.
func (d *demo) spread(ctx context.Context, client *pod) error {
	vip := net.JoinHostPort(d.serviceIP, fmt.Sprint(servicePort))
	counts := map[string]int{}
	var failed []string
	err := timed(fmt.Sprintf("Sending %d requests to http://%s/ from %s, a new connection each", serviceRequests, vip, client.name), func() error {
		for i := range serviceRequests {
			got, err := httpGet(ctx, client.sb, vip)
			if err != nil {
				failed = append(failed, fmt.Sprintf("Service: request %d from %s to %s: %v", i+1, client.name, vip, err))
				continue
			}
			counts[got]++
		}
		return ctx.Err()
	})
	if err != nil {
		return err
	}
	fmt.Printf("\nHTTP: GET http://%s/ from inside %s's netns; the answer is the backend pod's name.\n", vip, client.name)
	fmt.Printf("%s is a backend too: when the load balancer picks it, OVN sends the request back to it (hairpin).\n", client.name)
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "  BACKEND\tNODE\tIP\tANSWERS")
	perNode := map[*harness.ClusterNode]int{}
	answered := 0
	for _, p := range d.pods {
		n := counts[p.name]
		delete(counts, p.name)
		perNode[p.node] += n
		answered += n
		fmt.Fprintf(w, "  %s/%s\t%s\t%s\t%3d %s\n", namespace, p.name, p.node.Name, p.sb.IP, n, strings.Repeat("#", n))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for name, n := range counts {
		failed = append(failed, fmt.Sprintf("Service: %d answers from %q, which is no backend", n, name))
	}
	var nodes []string
	for _, n := range d.cluster.Nodes {
		nodes = append(nodes, fmt.Sprintf("%s %d", n.Name, perNode[n]))
		if perNode[n] == 0 && d.firstPodOn(n) != nil {
			failed = append(failed, fmt.Sprintf("Service: no request reached a backend on %s", n.Name))
		}
	}
	fmt.Printf("  Service: %d of %d requests answered (%s)\n", answered, serviceRequests, strings.Join(nodes, ", "))
	for _, f := range firstN(failed, maxListed) {
		fmt.Println("    " + f)
	}
	d.failures = append(d.failures, failed...)
	return nil
}

// fromHost sends one request to the ClusterIP from the node's own netns (the host, as a kubelet probe or
// a host-network pod would), which dunlin-node routes into OVN through the management port.
func (d *demo) fromHost(ctx context.Context, n *harness.ClusterNode) error {
	fmt.Printf("\n# from %s's host: the Service range is routed through the management port dunlin-mp0\n", n.Name)
	if err := runInNode(ctx, n, "ip", "route", "get", d.serviceIP); err != nil {
		return err
	}
	url := "http://" + net.JoinHostPort(d.serviceIP, fmt.Sprint(servicePort)) + "/client"
	fmt.Printf("HTTP: GET %s from %s's host (/client also answers the client address the backend saw)\n", url, n.Name)
	host := harness.Sandbox{NetnsName: n.Netns, Netns: "/var/run/netns/" + n.Netns}
	body, err := host.HTTPGet(ctx, url, httpTimeout)
	if err != nil {
		msg := fmt.Sprintf("Service: %s's host to %s: %v", n.Name, url, err)
		fmt.Println("  " + msg)
		d.failures = append(d.failures, msg)
		return nil
	}
	name, from, _ := strings.Cut(strings.TrimSpace(string(body)), " ")
	where := "no backend"
	for _, p := range d.pods {
		if p.name == name {
			where = p.node.Name
		}
	}
	fmt.Printf("  answered by %s (%s), which saw the client as %s\n", name, where, from)
	if where == "no backend" {
		d.failures = append(d.failures, fmt.Sprintf("Service: %s's host got %q from no backend", n.Name, body))
	}
	return nil
}
