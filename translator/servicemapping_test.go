package translator

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/dunlinplugin/dunlin/nbmodel"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

var testRanges = EndpointRanges{
	Pods:  []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/48")},
	Nodes: map[netip.Addr]bool{netip.MustParseAddr("172.30.0.10"): true},
}

type svcOpt func(*corev1.Service)

func service(opts ...svcOpt) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("web")}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

type ep struct {
	addr                        string
	ready, serving, terminating *bool
}

func readyEP(addr string) ep { return ep{addr: addr} }

func slice(name string, family discoveryv1.AddressType, ports map[string]int32, proto corev1.Protocol, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: family,
	}
	for _, n := range slices.Sorted(maps.Keys(ports)) {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To(n), Port: ptr.To(ports[n]), Protocol: ptr.To(proto)})
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.addr},
			Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating}})
	}
	return s
}

func lbs(t *testing.T, svc *corev1.Service, eps ...*discoveryv1.EndpointSlice) (map[string]*nbmodel.LoadBalancer, []ServiceProblem) {
	t.Helper()
	rows, problems := ServiceRows(svc, eps, ServiceEnv{Ranges: testRanges})
	out := map[string]*nbmodel.LoadBalancer{}
	for _, r := range rows {
		lb := r.Model.(*nbmodel.LoadBalancer)
		if isGatewayLB(lb.Name) {
			continue // TestGatewayServiceRows
		}
		if !reflect.DeepEqual(r.Parents, nbstore.In(ClusterOwner, ClusterLBGroup)) {
			t.Errorf("%s: parents %+v, want the cluster group", lb.Name, r.Parents)
		}
		out[lb.Name] = lb
	}
	return out, problems
}

// isGatewayLB is true for the load balancers of the gateway routers (gateway_test.go).
func isGatewayLB(name string) bool {
	return strings.HasSuffix(name, "_nodeport") || strings.HasSuffix(name, "_external") || strings.Contains(name, "_gateway_")
}

func TestServiceRows(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	f, tr := ptr.To(false), ptr.To(true)
	cases := []struct {
		name     string
		svc      *corev1.Service
		slices   []*discoveryv1.EndpointSlice
		want     map[string]map[string]string // LB name -> vips
		options  map[string]string            // options every LB must have (beyond the defaults)
		problems []string                     // reasons
	}{{
		name: "named target port resolved per slice",
		svc:  service(),
		slices: []*discoveryv1.EndpointSlice{
			slice("web-a", v4, map[string]int32{"http": 8080}, tcp, readyEP("10.244.1.5"), readyEP("10.244.2.7")),
			slice("web-b", v4, map[string]int32{"http": 9090}, tcp, readyEP("10.244.1.9")),
		},
		want: map[string]map[string]string{"Service_shop/web_TCP": {
			"10.96.0.10:80": "10.244.1.5:8080,10.244.1.9:9090,10.244.2.7:8080"}},
	}, {
		name: "two protocols, two load balancers",
		svc: service(func(s *corev1.Service) {
			s.Spec.Ports = []corev1.ServicePort{
				{Name: "dns-tcp", Protocol: tcp, Port: 53}, {Name: "dns-udp", Protocol: udp, Port: 53}}
		}),
		slices: []*discoveryv1.EndpointSlice{func() *discoveryv1.EndpointSlice {
			s := slice("web-a", v4, map[string]int32{"dns-tcp": 5353}, tcp, readyEP("10.244.1.5"))
			s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: ptr.To("dns-udp"), Port: ptr.To[int32](5353), Protocol: ptr.To(udp)})
			return s
		}()},
		want: map[string]map[string]string{
			"Service_shop/web_TCP": {"10.96.0.10:53": "10.244.1.5:5353"},
			"Service_shop/web_UDP": {"10.96.0.10:53": "10.244.1.5:5353"},
		},
	}, {
		name: "duplicates across slices merge",
		svc:  service(),
		slices: []*discoveryv1.EndpointSlice{
			slice("web-a", v4, map[string]int32{"http": 8080}, tcp, readyEP("10.244.1.5")),
			slice("web-b", v4, map[string]int32{"http": 8080}, tcp, readyEP("10.244.1.5"), readyEP("10.244.1.6")),
		},
		want: map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": "10.244.1.5:8080,10.244.1.6:8080"}},
	}, {
		name: "not ready endpoints are left out",
		svc:  service(),
		slices: []*discoveryv1.EndpointSlice{slice("web-a", v4, map[string]int32{"http": 8080}, tcp,
			readyEP("10.244.1.5"), ep{addr: "10.244.1.6", ready: f, serving: f},
			ep{addr: "10.244.1.7", ready: f, serving: tr, terminating: tr})},
		want: map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": "10.244.1.5:8080"}},
	}, {
		name: "only terminating: serving terminating endpoints are used",
		svc:  service(),
		slices: []*discoveryv1.EndpointSlice{slice("web-a", v4, map[string]int32{"http": 8080}, tcp,
			ep{addr: "10.244.1.6", ready: f, serving: f, terminating: tr},
			ep{addr: "10.244.1.7", ready: f, serving: tr, terminating: tr})},
		want: map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": "10.244.1.7:8080"}},
	}, {
		name:    "no endpoints: VIP without backends, rejected",
		svc:     service(),
		want:    map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": ""}},
		options: map[string]string{"reject": "true"},
	}, {
		name:    "affinity default timeout",
		svc:     service(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }),
		want:    map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": ""}},
		options: map[string]string{"affinity_timeout": "10800"},
	}, {
		name: "affinity configured timeout",
		svc: service(func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
		}),
		want:    map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": ""}},
		options: map[string]string{"affinity_timeout": "60"},
	}, {
		name: "external IPs and ingress IPs, proxy-mode ingress skipped",
		svc: service(func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.ExternalIPs = []string{"192.0.2.10"}
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{
				{IP: "198.51.100.7"}, {Hostname: "lb.example.com"},
				{IP: "198.51.100.8", IPMode: ptr.To(corev1.LoadBalancerIPModeProxy)}}
		}),
		slices: []*discoveryv1.EndpointSlice{slice("web-a", v4, map[string]int32{"http": 8080}, tcp, readyEP("10.244.1.5"))},
		want: map[string]map[string]string{"Service_shop/web_TCP": {
			"10.96.0.10:80": "10.244.1.5:8080", "192.0.2.10:80": "10.244.1.5:8080", "198.51.100.7:80": "10.244.1.5:8080"}},
	}, {
		name: "dual stack: each family's VIP gets that family's backends",
		svc: service(func(s *corev1.Service) {
			s.Spec.ClusterIPs = []string{"10.96.0.10", "fd00:10:96::a"}
		}),
		slices: []*discoveryv1.EndpointSlice{
			slice("web-4", v4, map[string]int32{"http": 8080}, tcp, readyEP("10.244.1.5")),
			slice("web-6", discoveryv1.AddressTypeIPv6, map[string]int32{"http": 8080}, tcp, readyEP("fd00:10:244:1::5")),
		},
		want: map[string]map[string]string{"Service_shop/web_TCP": {
			"10.96.0.10:80": "10.244.1.5:8080", "[fd00:10:96::a]:80": "[fd00:10:244:1::5]:8080"}},
	}, {
		name:     "missing port name: warned, no backends on that port",
		svc:      service(),
		slices:   []*discoveryv1.EndpointSlice{slice("web-a", v4, map[string]int32{"metrics": 9100}, tcp, readyEP("10.244.1.5"))},
		want:     map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": ""}},
		problems: []string{reasonEndpointPortMissing},
	}, {
		name: "endpoint outside pod and node ranges: warned and skipped, the rest kept",
		svc:  service(),
		slices: []*discoveryv1.EndpointSlice{slice("web-a", v4, map[string]int32{"http": 8080}, tcp,
			readyEP("203.0.113.9"), readyEP("10.244.1.5"), readyEP("172.30.0.10"), readyEP("not-an-ip"))},
		want:     map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": "10.244.1.5:8080,172.30.0.10:8080"}},
		problems: []string{reasonInvalidEndpoint, reasonInvalidEndpoint},
	}, {
		name: "headless: nothing",
		svc: service(func(s *corev1.Service) {
			s.Spec.ClusterIP, s.Spec.ClusterIPs = corev1.ClusterIPNone, []string{corev1.ClusterIPNone}
		}),
	}, {
		name: "ExternalName: nothing",
		svc: service(func(s *corev1.Service) {
			s.Spec = corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "db.example.com"}
		}),
	}, {
		name: "NodePort: ClusterIP VIPs now",
		svc: service(func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 30080
		}),
		slices: []*discoveryv1.EndpointSlice{slice("web-a", v4, map[string]int32{"http": 8080}, tcp, readyEP("10.244.1.5"))},
		want:   map[string]map[string]string{"Service_shop/web_TCP": {"10.96.0.10:80": "10.244.1.5:8080"}},
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, problems := lbs(t, tc.svc, tc.slices...)
			if len(got) != len(tc.want) {
				t.Fatalf("load balancers %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(tc.want)))
			}
			for name, vips := range tc.want {
				lb := got[name]
				if lb == nil {
					t.Fatalf("no load balancer %s; have %v", name, slices.Sorted(maps.Keys(got)))
				}
				if !maps.Equal(lb.Vips, vips) {
					t.Errorf("%s vips:\n got %v\nwant %v", name, lb.Vips, vips)
				}
				proto := strings.ToLower(name[strings.LastIndex(name, "_")+1:])
				if lb.Protocol == nil || *lb.Protocol != proto {
					t.Errorf("%s protocol %v, want %s", name, lb.Protocol, proto)
				}
				if lb.Options["reject"] != "true" || lb.Options["hairpin_snat_ip"] != "169.254.169.5 fd69::5" {
					t.Errorf("%s options %v: want reject and the hairpin SNAT address", name, lb.Options)
				}
				for k, v := range tc.options {
					if lb.Options[k] != v {
						t.Errorf("%s options[%s] = %q, want %q", name, k, lb.Options[k], v)
					}
				}
				if lb.ExternalIDs["namespace"] != "shop" || lb.ExternalIDs["service"] != "web" {
					t.Errorf("%s external_ids %v", name, lb.ExternalIDs)
				}
			}
			var reasons []string
			for _, p := range problems {
				reasons = append(reasons, p.Reason)
				if p.Message == "" {
					t.Errorf("problem %s without message", p.Reason)
				}
			}
			if !slices.Equal(reasons, tc.problems) {
				t.Errorf("problems %v, want %v (%+v)", reasons, tc.problems, problems)
			}
		})
	}
}

func TestServiceAffinityBeyondOVNTimeout(t *testing.T) {
	svc := service(func(s *corev1.Service) {
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](86400)}}
	})
	got, _ := lbs(t, svc)
	lb := got["Service_shop/web_TCP"]
	if _, ok := lb.Options["affinity_timeout"]; ok || !slices.Equal(lb.SelectionFields, []string{"ip_src", "ip_dst"}) {
		t.Errorf("86400 s affinity: options %v selection_fields %v; want hashing on ip_src, ip_dst", lb.Options, lb.SelectionFields)
	}
}

func TestServiceRowsDeterministic(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	a := slice("web-a", v4, map[string]int32{"http": 8080}, corev1.ProtocolTCP, readyEP("10.244.1.5"), readyEP("10.244.3.1"))
	b := slice("web-b", v4, map[string]int32{"http": 8080}, corev1.ProtocolTCP, readyEP("10.244.2.5"))
	x, _ := lbs(t, service(), a, b)
	y, _ := lbs(t, service(), b, a)
	if !maps.Equal(x["Service_shop/web_TCP"].Vips, y["Service_shop/web_TCP"].Vips) {
		t.Errorf("slice order changes the result: %v vs %v", x["Service_shop/web_TCP"].Vips, y["Service_shop/web_TCP"].Vips)
	}
}

func TestServiceAffinityByHash(t *testing.T) {
	svc := service(func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP })
	rows, _ := ServiceRows(svc, nil, ServiceEnv{Ranges: testRanges, AffinityByHash: true})
	lb := rows[0].Model.(*nbmodel.LoadBalancer)
	if _, ok := lb.Options["affinity_timeout"]; ok || !slices.Equal(lb.SelectionFields, []string{"ip_src", "ip_dst"}) {
		t.Errorf("hash affinity: options %v selection_fields %v", lb.Options, lb.SelectionFields)
	}
	rows, _ = ServiceRows(service(), nil, ServiceEnv{Ranges: testRanges, AffinityByHash: true})
	if lb := rows[0].Model.(*nbmodel.LoadBalancer); len(lb.SelectionFields) != 0 {
		t.Errorf("no affinity: selection_fields %v", lb.SelectionFields)
	}
}

func TestServiceInternalTrafficPolicyLocal(t *testing.T) {
	v4 := discoveryv1.AddressTypeIPv4
	svc := service(func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		s.Spec.ExternalIPs = []string{"192.0.2.10"}
	})
	sl := slice("web-a", v4, map[string]int32{"http": 8080}, corev1.ProtocolTCP,
		readyEP("10.244.1.5"), readyEP("10.244.1.6"), readyEP("10.244.2.7"))
	for i, n := range []string{"n1", "n1", "n2"} {
		sl.Endpoints[i].NodeName = ptr.To(n)
	}
	rows, _ := ServiceRows(svc, []*discoveryv1.EndpointSlice{sl}, ServiceEnv{Ranges: testRanges, Nodes: []string{"n1", "n2", "n3"}})
	got := map[string]nbstore.Row{}
	for _, r := range rows {
		if name := r.Model.(*nbmodel.LoadBalancer).Name; !isGatewayLB(name) {
			got[name] = r
		}
	}
	want := map[string]struct {
		vips             map[string]string
		parent, parentTb string
	}{
		// externalIPs follow externalTrafficPolicy: cluster-wide, every endpoint.
		"Service_shop/web_TCP":         {map[string]string{"192.0.2.10:80": "10.244.1.5:8080,10.244.1.6:8080,10.244.2.7:8080"}, ClusterLBGroup, ""},
		"Service_shop/web_TCP_node_n1": {map[string]string{"10.96.0.10:80": "10.244.1.5:8080,10.244.1.6:8080"}, "n1", "Logical_Switch"},
		"Service_shop/web_TCP_node_n2": {map[string]string{"10.96.0.10:80": "10.244.2.7:8080"}, "n2", "Logical_Switch"},
		// No local endpoint: refused at once rather than sent to another node.
		"Service_shop/web_TCP_node_n3": {map[string]string{"10.96.0.10:80": ""}, "n3", "Logical_Switch"},
	}
	if len(got) != len(want) {
		t.Fatalf("load balancers %v", slices.Sorted(maps.Keys(got)))
	}
	for name, w := range want {
		r, ok := got[name]
		if !ok {
			t.Fatalf("no %s; have %v", name, slices.Sorted(maps.Keys(got)))
		}
		lb := r.Model.(*nbmodel.LoadBalancer)
		if !maps.Equal(lb.Vips, w.vips) {
			t.Errorf("%s vips %v, want %v", name, lb.Vips, w.vips)
		}
		if len(r.Parents) != 1 || r.Parents[0].Name != w.parent || r.Parents[0].Table != w.parentTb {
			t.Errorf("%s parents %+v, want %s in %q", name, r.Parents, w.parent, w.parentTb)
		}
		if w.parentTb != "" && (r.Parents[0].Column != "load_balancer" || lb.ExternalIDs["dunlin.io/node"] != w.parent) {
			t.Errorf("%s: column %q external_ids %v", name, r.Parents[0].Column, lb.ExternalIDs)
		}
	}
	// Without externalIPs there is no cluster-wide load balancer at all.
	svc.Spec.ExternalIPs = nil
	rows, _ = ServiceRows(svc, []*discoveryv1.EndpointSlice{sl}, ServiceEnv{Ranges: testRanges, Nodes: []string{"n1"}})
	if len(rows) != 1 || rows[0].Model.(*nbmodel.LoadBalancer).Name != "Service_shop/web_TCP_node_n1" {
		t.Errorf("rows %v", rows)
	}
}
