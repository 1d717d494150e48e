package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
)

// Cluster DNS as a kubeadm cluster has it: CoreDNS (built from its Go module, test/coredns/build.sh) runs
// as a pod, plumbed by the CNI plugin like any other, behind the Service kube-system/kube-dns at
// ClusterDNSIP. Its kubernetes plugin reaches the API through the kubernetes Service's ClusterIP with a
// service-account token, so it only works once pods reach the apiserver's advertised address
// (ClusterOptions.APIServerOnNode).

const (
	// ClusterDNSIP is the kube-dns Service's ClusterIP, kubelet's usual --cluster-dns.
	ClusterDNSIP = "10.96.0.10"
	// ClusterDomain is the cluster's DNS domain.
	ClusterDomain = "cluster.local"
	// DNSReadyPort serves CoreDNS's ready plugin: /ready answers 200 once the kubernetes plugin has
	// synced with the API.
	DNSReadyPort = 8181
	// DNSHealthPort serves CoreDNS's health plugin (/health).
	DNSHealthPort = 8080

	dnsNamespace = metav1.NamespaceSystem
	dnsName      = "coredns"
	dnsLabel     = "k8s-app"
	dnsApp       = "kube-dns"
	dnsTokenTTL  = 24 * time.Hour
)

// DNS is the cluster's CoreDNS pod and its Service.
type DNS struct {
	Namespace string // kube-system
	Pod       string // the CoreDNS pod's name
	Node      *ClusterNode
	Corefile  string // path of its configuration
	Log       string // path of its log (the log plugin writes every query there)
}

// CoreDNSBinary returns the path of the coredns binary: $DUNLIN_COREDNS_BIN if set, else the one
// test/coredns/build.sh prints the directory of (it builds it first when missing, which takes minutes).
func CoreDNSBinary() (string, error) {
	if bin := os.Getenv("DUNLIN_COREDNS_BIN"); bin != "" {
		return bin, nil
	}
	script, err := repoFile("test/coredns/build.sh")
	if err != nil {
		return "", fmt.Errorf("%w; set DUNLIN_COREDNS_BIN", err)
	}
	cmd := exec.Command("bash", script)
	cmd.Stderr = os.Stderr // a first build takes minutes; let its progress show
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w", script, err)
	}
	bin := filepath.Join(strings.TrimSpace(string(out)), "coredns")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("coredns: %w", err)
	}
	return bin, nil
}

// StartDNS runs CoreDNS as a pod on node n, with a service account allowed to read what its kubernetes
// plugin watches, and the kube-dns Service (UDP and TCP 53) in front of it; kube-controller-manager
// writes the Service's EndpointSlice. It returns once the pod runs; WaitDNSReady waits for CoreDNS.
func (c *Cluster) StartDNS(ctx context.Context, n *ClusterNode) (*DNS, error) {
	bin, err := CoreDNSBinary()
	if err != nil {
		return nil, fmt.Errorf("start dns: %w", err)
	}
	d := &DNS{Namespace: dnsNamespace, Pod: dnsName, Node: n}
	dir := filepath.Join(c.Dir, "coredns")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start dns: %w", err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := c.writeDNSKubeconfig(ctx, kubeconfig); err != nil {
		return nil, fmt.Errorf("start dns: %w", err)
	}
	d.Corefile = filepath.Join(dir, "Corefile")
	corefile := fmt.Sprintf(`.:53 {
    errors
    log
    health :%d
    ready :%d
    kubernetes %s in-addr.arpa ip6.arpa {
        kubeconfig %s
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    loadbalance
}
`, DNSHealthPort, DNSReadyPort, ClusterDomain, kubeconfig)
	if err := os.WriteFile(d.Corefile, []byte(corefile), 0o644); err != nil {
		return nil, fmt.Errorf("start dns: %w", err)
	}
	labels := map[string]string{dnsLabel: dnsApp}
	if err := c.createDNSService(ctx); err != nil {
		return nil, fmt.Errorf("start dns: %w", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: dnsNamespace, Name: dnsName, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:           n.Name,
			ServiceAccountName: dnsName,
			// What a kubelet would mount is in the kubeconfig instead (pods share this filesystem).
			AutomountServiceAccountToken: ptr.To(false),
			Containers: []corev1.Container{{
				Name:    "coredns",
				Image:   "coredns/coredns", // never pulled: the stand-in kubelet runs Command
				Command: []string{bin, "-conf", d.Corefile},
				Ports: []corev1.ContainerPort{
					{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
					{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
					{Name: "ready", ContainerPort: DNSReadyPort, Protocol: corev1.ProtocolTCP},
				},
				// The stand-in kubelet runs it from the node's host (KubeletOptions.Netns).
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/ready", Port: intstr.FromString("ready")}}},
			}},
		},
	}
	if _, err := c.Kube.Client.CoreV1().Pods(dnsNamespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("start dns: create pod: %w", err)
	}
	d.Log = filepath.Join(n.Dir, "pods", dnsNamespace+"_"+dnsName+".log")
	c.DNS = d
	return d, nil
}

// createDNSIdentity creates CoreDNS's service account kube-system/coredns and the ClusterRole (bound to
// it) that lets it list and watch what its kubernetes plugin reads; what exists already is kept.
func (c *Cluster) createDNSIdentity(ctx context.Context) error {
	client := c.Kube.Client
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: dnsNamespace, Name: dnsName}}
	if _, err := client.CoreV1().ServiceAccounts(dnsNamespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service account: %w", err)
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "dunlin:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"endpoints", "services", "pods", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	if _, err := client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("cluster role: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "dunlin:coredns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: dnsNamespace, Name: dnsName}},
	}
	if _, err := client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("cluster role binding: %w", err)
	}
	return nil
}

// createDNSService creates kube-system/kube-dns at ClusterDNSIP, UDP and TCP 53, selecting CoreDNS's pods.
func (c *Cluster) createDNSService(ctx context.Context) error {
	labels := map[string]string{dnsLabel: dnsApp}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: dnsNamespace, Name: dnsApp, Labels: labels},
		Spec: corev1.ServiceSpec{
			ClusterIP: ClusterDNSIP,
			Selector:  labels,
			Ports: []corev1.ServicePort{
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
			},
		},
	}
	if _, err := c.Kube.Client.CoreV1().Services(dnsNamespace).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create service %s/%s: %w", dnsNamespace, dnsApp, err)
	}
	return nil
}

// writeDNSKubeconfig writes CoreDNS's kubeconfig: the API at the kubernetes Service's ClusterIP, whose
// certificate the apiserver's CA verifies, and a token of the service account kube-system/coredns,
// which a ClusterRole lets list and watch what the kubernetes plugin reads.
func (c *Cluster) writeDNSKubeconfig(ctx context.Context, path string) error {
	client := c.Kube.Client
	api, err := client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("kubernetes service: %w", err)
	}
	if err := c.createDNSIdentity(ctx); err != nil {
		return err
	}
	tok, err := client.CoreV1().ServiceAccounts(dnsNamespace).CreateToken(ctx, dnsName, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(dnsTokenTTL / time.Second))},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("token for %s/%s: %w", dnsNamespace, dnsName, err)
	}
	server := "https://" + net.JoinHostPort(api.Spec.ClusterIP, "443")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: c.Kube.CAPEM}
	cfg.AuthInfos["coredns"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["coredns"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "coredns"}
	cfg.CurrentContext = "coredns"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WaitDNSReady waits until the CoreDNS pod is Ready: its readiness probe, GET /ready from its node's
// host (through the management port) as kubelet probes, answered 200, which CoreDNS's ready plugin
// does once the kubernetes plugin has listed Services and EndpointSlices through the kubernetes
// Service. kube-controller-manager then marks the kube-dns endpoint ready.
func (c *Cluster) WaitDNSReady(ctx context.Context, timeout time.Duration) error {
	d := c.DNS
	if d == nil {
		return errors.New("wait for dns: no CoreDNS started")
	}
	err := EventuallyWhile(timeout, c.Health, func() error {
		pod, err := c.Kube.Client.CoreV1().Pods(d.Namespace).Get(ctx, d.Pod, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.Status.PodIP == "" {
			return fmt.Errorf("pod %s/%s has no IP yet (kubelet: %v)", d.Namespace, d.Pod, d.Node.Kubelet.LastError(d.Namespace, d.Pod))
		}
		if !podReady(pod) {
			return fmt.Errorf("pod %s/%s (%s) is not Ready: its /ready does not answer 200 yet", d.Namespace, d.Pod, pod.Status.PodIP)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("wait for dns: %w", err)
	}
	return nil
}

// Resolver resolves through the DNS server at server (host:port) from inside the pod's netns, over
// UDP, or over TCP only when tcp is set, as a pod whose resolv.conf names that server would. Pods here
// share the machine's /etc/resolv.conf, so they cannot be given their own.
func (s Sandbox) Resolver(server string, tcp bool) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		if tcp {
			network = "tcp"
		}
		return s.Dial(ctx, network, server)
	}}
}
