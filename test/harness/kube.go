package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const (
	defaultServiceCIDR = "10.96.0.0/16"
	etcdReadyTimeout   = 30 * time.Second
	apiReadyTimeout    = 60 * time.Second
	kcmReadyTimeout    = 30 * time.Second
)

// KubeOptions configures StartKube.
type KubeOptions struct {
	Dir               string   // holds etcd data, keys, certificates, kubeconfig and logs
	ServiceCIDR       string   // default "10.96.0.0/16"
	ControllerManager bool     // also run kube-controller-manager
	KCMControllers    []string // default endpointslice, serviceaccount, namespace, garbagecollector
	// ClusterCIDR, with ControllerManager, adds the nodeipam controller so that Nodes get spec.podCIDR
	// (a /24 each) as in kubeadm clusters.
	ClusterCIDR string
	// AdvertiseAddress, when set, is the address the apiserver publishes as the endpoint of the
	// default/kubernetes Service (its lease endpoint reconciler, as in a real cluster) and puts in its
	// serving certificate; the caller makes AdvertiseAddress:APIPort reach it (Cluster relays it from a
	// node). Empty: no endpoints, since a loopback address is no valid endpoint.
	AdvertiseAddress string
	// Scheduler also runs kube-scheduler, for real kubelets (the stand-in needs spec.nodeName set).
	Scheduler bool
	// EgressSocket, when set, sends the apiserver's traffic to nodes, pods and Services through the
	// HTTP CONNECT proxy listening there (EgressProxy).
	EgressSocket string
}

// Kube is a running control plane: etcd, kube-apiserver and optionally kube-controller-manager.
// There is no kubelet and no scheduler: tests set pod.spec.nodeName and write pod status themselves.
type Kube struct {
	Dir        string
	BinDir     string // holds kube-apiserver, etcd, kubectl, ...
	Kubeconfig string // admin kubeconfig (token in system:masters, the apiserver's CA) for kubectl and --kubeconfig
	// APIPort is the apiserver's secure port on 127.0.0.1, and the kubernetes Service's endpoint port.
	APIPort int
	// CAPEM is the CA bundle that verifies the apiserver's serving certificate (which names 127.0.0.1,
	// the AdvertiseAddress and the kubernetes Service's ClusterIP).
	CAPEM  []byte
	Config *rest.Config
	Client kubernetes.Interface

	etcd      *process
	apiserver *process
	kcm       *process
	scheduler *process
}

// StartKube starts etcd and kube-apiserver (and kube-controller-manager if asked) on free loopback
// ports and returns once the apiserver is ready and pods can be created in "default".
func StartKube(ctx context.Context, o KubeOptions) (k *Kube, err error) {
	if o.Dir == "" {
		return nil, errors.New("start kube: KubeOptions.Dir is required")
	}
	if o.ClusterCIDR != "" && !o.ControllerManager {
		return nil, errors.New("start kube: ClusterCIDR needs ControllerManager (nodeipam allocates pod CIDRs)")
	}
	if o.ServiceCIDR == "" {
		o.ServiceCIDR = defaultServiceCIDR
	}
	if len(o.KCMControllers) == 0 {
		o.KCMControllers = []string{"endpointslice", "serviceaccount", "namespace", "garbagecollector"}
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("start kube: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start kube: %w", err)
	}
	bins := []string{"etcd", "kube-apiserver"}
	if o.ControllerManager {
		bins = append(bins, "kube-controller-manager")
	}
	if o.Scheduler {
		bins = append(bins, "kube-scheduler")
	}
	binDir, err := kubeBinDir(bins...)
	if err != nil {
		return nil, fmt.Errorf("start kube: %w", err)
	}
	ports, err := freePorts(5)
	if err != nil {
		return nil, fmt.Errorf("start kube: %w", err)
	}
	etcdPort, peerPort, apiPort, kcmPort, schedPort := ports[0], ports[1], ports[2], ports[3], ports[4]

	k = &Kube{Dir: dir, BinDir: binDir, Kubeconfig: filepath.Join(dir, "kubeconfig"), APIPort: apiPort}
	defer func() {
		if err != nil {
			err = errors.Join(err, k.Stop())
			k = nil
		}
	}()

	token, err := k.writeSecrets()
	if err != nil {
		return k, fmt.Errorf("start kube: %w", err)
	}

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	k.etcd, err = startProcess("etcd", filepath.Join(dir, "etcd.log"), nil, filepath.Join(binDir, "etcd"),
		"--name=dunlin",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=dunlin="+peerURL,
		"--unsafe-no-fsync", // throwaway data; fsync only slows tests down
		// A single member still waits out an election timeout (~0.8 s at the default 1 s) before
		// it serves; on loopback with one member short timers are safe.
		"--heartbeat-interval=10",
		"--election-timeout=100",
	)
	if err != nil {
		return k, fmt.Errorf("start kube: %w", err)
	}
	certDir := filepath.Join(dir, "pki")
	saKey := filepath.Join(dir, "sa.key")
	endpoints := []string{
		"--advertise-address=127.0.0.1",
		// The default reconciler would publish 127.0.0.1 as the kubernetes Service endpoint and fails.
		"--endpoint-reconciler-type=none",
	}
	if o.AdvertiseAddress != "" {
		// The default (lease) reconciler publishes it; the self-signed serving certificate names it.
		endpoints = []string{"--advertise-address=" + o.AdvertiseAddress}
	}
	if o.EgressSocket != "" {
		conf := filepath.Join(dir, "egress.yaml")
		if err := os.WriteFile(conf, []byte(egressConfig(o.EgressSocket)), 0o644); err != nil {
			return k, fmt.Errorf("start kube: %w", err)
		}
		// Node names resolve nowhere here: the kubelets are reached at their InternalIP.
		endpoints = append(endpoints, "--egress-selector-config-file="+conf, "--kubelet-preferred-address-types=InternalIP")
	}
	k.apiserver, err = startProcess("kube-apiserver", filepath.Join(dir, "kube-apiserver.log"), nil,
		filepath.Join(binDir, "kube-apiserver"), append(endpoints,
			"--etcd-servers="+etcdURL,
			"--bind-address=127.0.0.1",
			"--secure-port="+strconv.Itoa(apiPort),
			"--cert-dir="+certDir,
			"--token-auth-file="+filepath.Join(dir, "tokens.csv"),
			"--authorization-mode=RBAC",
			"--service-account-key-file="+saKey,
			"--service-account-signing-key-file="+saKey,
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-cluster-ip-range="+o.ServiceCIDR,
			"--allow-privileged=true",
			// Not needed for tests, and bootstrapping its configuration delays readiness.
			"--enable-priority-and-fairness=false",
			"--profiling=false",
		)...)
	if err != nil {
		return k, fmt.Errorf("start kube: %w", err)
	}
	// The apiserver was started without waiting for etcd (it retries), to overlap their startups;
	// waiting for etcd first still blames the right daemon when etcd fails.
	err = waitReady(ctx, k.etcd, etcdReadyTimeout, func(ctx context.Context) error {
		return HTTPOK(ctx, http.DefaultClient, etcdURL+"/health", "")
	})
	if err != nil {
		return k, fmt.Errorf("start kube: %w", err)
	}
	apiURL := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	// The apiserver writes its self-signed serving certificate (followed by its CA) before it listens.
	certFile := filepath.Join(certDir, "apiserver.crt")
	var caPEM []byte
	var apiClient *http.Client
	err = waitReady(ctx, k.apiserver, apiReadyTimeout, func(ctx context.Context) error {
		if apiClient == nil {
			b, err := os.ReadFile(certFile)
			if err != nil {
				return fmt.Errorf("waiting for serving certificate: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(b) {
				return fmt.Errorf("no certificates in %s yet", certFile)
			}
			caPEM = b
			apiClient = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		}
		return HTTPOK(ctx, apiClient, apiURL+"/readyz", token)
	})
	if apiClient != nil {
		apiClient.CloseIdleConnections()
	}
	if err != nil {
		return k, fmt.Errorf("start kube: %w", err)
	}

	k.CAPEM = caPEM
	if err := k.writeKubeconfig(apiURL, token, caPEM); err != nil {
		return k, fmt.Errorf("start kube: %w", err)
	}
	k.Config = &rest.Config{
		Host:            apiURL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: caPEM},
		// client-go's default of 5 QPS would throttle benchmarks and bulk setup.
		QPS:   1000,
		Burst: 2000,
	}
	k.Client, err = kubernetes.NewForConfig(k.Config)
	if err != nil {
		return k, fmt.Errorf("start kube: client: %w", err)
	}
	if err := k.ensureDefaults(ctx); err != nil {
		return k, fmt.Errorf("start kube: %w", err)
	}

	if o.ControllerManager {
		if err := k.startKCM(ctx, o, kcmPort); err != nil {
			return k, fmt.Errorf("start kube: %w", err)
		}
	}
	if o.Scheduler {
		if k.scheduler, err = k.startComponent(ctx, "kube-scheduler", schedPort,
			"--kubeconfig="+k.Kubeconfig, "--leader-elect=false", "--profiling=false"); err != nil {
			return k, fmt.Errorf("start kube: %w", err)
		}
	}
	return k, nil
}

// writeSecrets writes the token file and the service-account signing key and returns the admin token.
func (k *Kube) writeSecrets() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	token := hex.EncodeToString(b)
	line := token + ",dunlin-admin,dunlin-admin,system:masters\n"
	if err := os.WriteFile(filepath.Join(k.Dir, "tokens.csv"), []byte(line), 0o600); err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	// ECDSA rather than RSA: generating it is instant, and the apiserver accepts it (ES256).
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("service-account key: %w", err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("service-account key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(filepath.Join(k.Dir, "sa.key"), keyPEM, 0o600); err != nil {
		return "", fmt.Errorf("service-account key: %w", err)
	}
	return token, nil
}

func (k *Kube) writeKubeconfig(server, token string, caPEM []byte) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["dunlin"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["dunlin"] = &clientcmdapi.Context{Cluster: "dunlin", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "dunlin"
	if err := clientcmd.WriteToFile(*cfg, k.Kubeconfig); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// ensureDefaults makes sure the namespaces default and kube-system exist with a "default"
// ServiceAccount each, which ServiceAccount admission requires before it admits a pod. The
// serviceaccount controller would create them too, but not before it has started.
func (k *Kube) ensureDefaults(ctx context.Context) error {
	for _, ns := range []string{metav1.NamespaceDefault, metav1.NamespaceSystem} {
		_, err := k.Client.CoreV1().Namespaces().Create(ctx,
			&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", ns, err)
		}
		_, err = k.Client.CoreV1().ServiceAccounts(ns).Create(ctx,
			&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create service account %s/default: %w", ns, err)
		}
	}
	return nil
}

func (k *Kube) startKCM(ctx context.Context, o KubeOptions, port int) error {
	controllers := o.KCMControllers
	args := []string{
		"--kubeconfig=" + k.Kubeconfig,
		"--leader-elect=false",
		"--service-cluster-ip-range=" + o.ServiceCIDR,
		"--profiling=false",
	}
	if o.ClusterCIDR != "" {
		controllers = append(append([]string(nil), controllers...), "nodeipam")
		args = append(args,
			"--allocate-node-cidrs=true",
			"--cluster-cidr="+o.ClusterCIDR,
			"--node-cidr-mask-size=24",
		)
	}
	args = append(args, "--controllers="+strings.Join(controllers, ","))
	var err error
	k.kcm, err = k.startComponent(ctx, "kube-controller-manager", port, args...)
	return err
}

// startComponent starts kube-controller-manager or kube-scheduler serving /healthz on port and waits
// until it answers.
func (k *Kube) startComponent(ctx context.Context, name string, port int, args ...string) (*process, error) {
	args = append(args,
		// Delegated authn/authz only so that /healthz is served for the readiness check.
		"--authentication-kubeconfig="+k.Kubeconfig,
		"--authorization-kubeconfig="+k.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--cert-dir="+filepath.Join(k.Dir, name+"-pki"),
	)
	p, err := startProcess(name, filepath.Join(k.Dir, name+".log"), nil, filepath.Join(k.BinDir, name), args...)
	if err != nil {
		return nil, err
	}
	// Its serving certificate is self-signed with no CA we could trust, and /healthz carries no secrets.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer client.CloseIdleConnections()
	url := "https://127.0.0.1:" + strconv.Itoa(port) + "/healthz"
	return p, waitReady(ctx, p, kcmReadyTimeout, func(ctx context.Context) error {
		return HTTPOK(ctx, client, url, "")
	})
}

// Stop stops the scheduler, the controller manager, the apiserver and etcd, in that order.
func (k *Kube) Stop() error {
	if err := stopAll(k.scheduler, k.kcm, k.apiserver, k.etcd); err != nil {
		return fmt.Errorf("stop kube: %w", err)
	}
	return nil
}

// HTTPOK returns nil if GET url answers 200 (with a bearer token when token is set).
func HTTPOK(ctx context.Context, client *http.Client, url, token string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// KubeBinDir returns the directory holding kube-apiserver, kube-controller-manager, kubectl and
// etcd: $DUNLIN_KUBEBIN_DIR if set, else what test/kubebin/build.sh prints (it builds missing
// binaries first, which takes minutes the first time).
func KubeBinDir() (string, error) {
	return kubeBinDir()
}

// KubeBinDirWith is KubeBinDir building the named binaries (e2e.test, agnhost, ...) if missing.
func KubeBinDirWith(bins ...string) (string, error) {
	return kubeBinDir(bins...)
}

// kubeBinDir is KubeBinDir building and checking only the named binaries (all when none are named).
func kubeBinDir(bins ...string) (string, error) {
	dir := os.Getenv("DUNLIN_KUBEBIN_DIR")
	if dir == "" {
		script, err := buildScript()
		if err != nil {
			return "", fmt.Errorf("%w; set DUNLIN_KUBEBIN_DIR", err)
		}
		cmd := exec.Command("bash", append([]string{script}, bins...)...)
		// A first build takes minutes; let its progress show.
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("%s: %w", script, err)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		dir = lines[len(lines)-1]
	}
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("kube binaries: %w", err)
	}
	for _, b := range bins {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("kube binaries: %w", err)
		}
	}
	return dir, nil
}

// buildScript finds test/kubebin/build.sh.
func buildScript() (string, error) { return repoFile("test/kubebin/build.sh") }

// repoFile finds a file of this repository from this source file's location, or failing that (a
// binary built with -trimpath or moved elsewhere) by walking up from the working directory.
func repoFile(rel string) (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		p := filepath.Join(filepath.Dir(file), "..", "..", rel)
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find %s: %w", rel, err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		p := filepath.Join(d, rel)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("cannot find %s above %s", rel, wd)
		}
	}
}
