package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// Cluster DNS for real: the apiserver publishes its address on the first node (lease endpoint
// reconciler), pods on both nodes reach it through the kubernetes Service (a host-network endpoint,
// on the pod's own node and on the other), CoreDNS runs as a pod whose kubernetes plugin reads the
// API through that Service, and pods on both nodes resolve a Service's name through kube-dns and
// connect to the answer.
func TestClusterDNS(t *testing.T) {
	// Built (minutes, the first time) before the cluster's start-up clock runs.
	if _, err := harness.CoreDNSBinary(); err != nil {
		t.Fatal(err)
	}
	e := newClusterEnv(t, harness.ClusterOptions{Nodes: 2, Gateway: true, DNS: true})
	ctx := context.Background()
	n1, n2 := e.c.Nodes[0], e.c.Nodes[1]
	apiEndpoint := net.JoinHostPort(harness.NodeIP(0), strconv.Itoa(e.c.Kube.APIPort))

	// The apiserver's own (lease) reconciler publishes the first node's IP and its port.
	e.eventually(60*time.Second, "default/kubernetes endpoints", func() error {
		list, err := e.client.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).List(ctx,
			metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=kubernetes"})
		if err != nil {
			return err
		}
		var got []string
		for _, s := range list.Items {
			for _, ep := range s.Endpoints {
				for _, a := range ep.Addresses {
					for _, p := range s.Ports {
						got = append(got, net.JoinHostPort(a, strconv.Itoa(int(*p.Port))))
					}
				}
			}
		}
		if !slices.Equal(got, []string{apiEndpoint}) {
			return fmt.Errorf("EndpointSlices of default/kubernetes: %v, want %s", got, apiEndpoint)
		}
		return nil
	})

	if _, err := e.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "demo"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	web := map[string]string{"app": "web"}
	e.createPodWith("demo", "web-1", n1.Name, web)
	e.createPodWith("demo", "web-2", n2.Name, web)
	_, sb1 := e.running("demo", "web-1")
	_, sb2 := e.running("demo", "web-2")
	webIP := e.createService("demo", "web", web, []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}, nil)
	e.waitBackends(metav1.NamespaceDefault, "kubernetes", "TCP", 1)
	clients := []struct {
		node *harness.ClusterNode
		sb   harness.Sandbox
	}{{n1, sb1}, {n2, sb2}}

	// The kubernetes Service from a pod on each node: the first node owns the address (its host is
	// reached through its management port), the second reaches it across the tunnel. The serving
	// certificate must name the ClusterIP, as clients in pods dial it.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(e.c.Kube.CAPEM) {
		t.Fatal("no CA certificate")
	}
	for _, c := range clients {
		e.eventually(60*time.Second, "a pod on "+c.node.Name+" reaches https://10.96.0.1/healthz", func() error {
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
				DisableKeepAlives: true, DialContext: c.sb.Dial, TLSClientConfig: &tls.Config{RootCAs: pool}}}
			resp, err := client.Get("https://10.96.0.1:443/healthz")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
				return fmt.Errorf("%s: %q", resp.Status, body)
			}
			return nil
		})
	}

	// CoreDNS lists Services and EndpointSlices through the kubernetes Service, then kube-dns gets it
	// as a backend for UDP and TCP.
	if err := e.c.WaitDNSReady(ctx, 2*time.Minute); err != nil {
		t.Fatalf("%v\nCoreDNS log:\n%s", err, tail(e.c.DNS.Log, 30))
	}
	e.waitBackends(metav1.NamespaceSystem, "kube-dns", "UDP", 1)
	e.waitBackends(metav1.NamespaceSystem, "kube-dns", "TCP", 1)

	// Pods on both nodes resolve the Service's name through kube-dns, over UDP and over TCP, and
	// connect to the answer.
	name := "web.demo.svc." + harness.ClusterDomain + "."
	server := net.JoinHostPort(harness.ClusterDNSIP, "53")
	for _, c := range clients {
		for _, tcp := range []bool{false, true} {
			what := fmt.Sprintf("a pod on %s resolves %s (tcp %v)", c.node.Name, name, tcp)
			var addrs []string
			e.eventually(60*time.Second, what, func() error {
				ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				var err error
				addrs, err = c.sb.Resolver(server, tcp).LookupHost(ctx, name)
				if err != nil {
					return err
				}
				if !slices.Equal(addrs, []string{webIP}) {
					return fmt.Errorf("%s resolved to %v, want the ClusterIP %s", name, addrs, webIP)
				}
				return nil
			})
			body, err := httpGet(c.sb, "http://"+net.JoinHostPort(addrs[0], "80")+"/")
			if err != nil {
				t.Fatalf("a pod on %s connecting to %s (%s): %v", c.node.Name, name, addrs[0], err)
			}
			if b := strings.TrimSpace(string(body)); b != "web-1" && b != "web-2" {
				t.Fatalf("%s answered %q", name, b)
			}
			t.Logf("%s: %v, answered by %s", what, addrs, strings.TrimSpace(string(body)))
		}
	}
	// NB holds exactly what the mapping gives, the host-network endpoint and kube-dns included.
	e.converged()

	// A name that does not exist is NXDOMAIN, which CoreDNS answers from what it listed.
	_, err := sb1.Resolver(server, false).LookupHost(ctx, "nothing.demo.svc."+harness.ClusterDomain+".")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("a missing Service's name: %v, want not found", err)
	}
}
