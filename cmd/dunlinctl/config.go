package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/dunlinplugin/dunlin/internal/ovsdbrows"
	"github.com/dunlinplugin/dunlin/internal/ovsdbtls"
)

// The ConfigMap deploy/dunlin-controller.yaml defines, and its keys dunlinctl reads.
const (
	configMapName   = "dunlin-config"
	keyNBAddress    = "nb-address"
	keySBAddress    = "sb-address"
	keyNBCACert     = "nb-ca-cert"
	keyNBCert       = "nb-client-cert"
	keyNBKey        = "nb-client-key"
	keyNBServerName = "nb-server-name"
	keySBServerName = "sb-server-name"
)

type options struct {
	kubeconfig      string
	nb, sb          string
	tls             ovsdbtls.Files
	sbServerName    string
	configNamespace string
	leaseNamespace  string
	timeout         time.Duration
	traceTimeout    time.Duration
	output          string
	namespace       string
	ovs             string
	// trace
	port, proto, lbDst string
	raw                bool
	// uninstall
	yes bool
}

func newOptions() *options { return &options{} }

func (o *options) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("dunlinctl", flag.ContinueOnError)
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&o.nb, "nb", "", "comma-separated OVN NB endpoints, tcp:IP:PORT, ssl:IP:PORT or unix:PATH (default: nb-address of the dunlin-config ConfigMap)")
	fs.StringVar(&o.sb, "sb", "", "comma-separated OVN SB endpoints (default: sb-address of the dunlin-config ConfigMap)")
	o.tls.AddFlags(fs, "ovn", "OVN NB and SB")
	fs.StringVar(&o.sbServerName, "sb-server-name", "", "name the SB servers' certificates must carry, when it differs from --ovn-server-name")
	fs.StringVar(&o.configNamespace, "config-namespace", "dunlin-system", "namespace of the dunlin-config ConfigMap")
	fs.StringVar(&o.leaseNamespace, "leader-elect-namespace", "kube-system", "namespace of the dunlin-controller Lease (the controller's --leader-elect-namespace)")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "connect and request timeout for the apiserver, NB, SB and OVS")
	fs.DurationVar(&o.traceTimeout, "trace-timeout", 30*time.Second, "how long ovn-trace may run")
	fs.StringVar(&o.output, "o", "", "output format: table (default) or json")
	fs.StringVar(&o.output, "output", "", "same as -o")
	fs.StringVar(&o.namespace, "n", "default", "namespace of pods and Services named without one")
	fs.StringVar(&o.namespace, "namespace", "default", "same as -n")
	fs.StringVar(&o.ovs, "ovs", "", "show pod: the pod's node's OVS database (unix:PATH or tcp:IP:PORT); default: the local unix:/var/run/openvswitch/db.sock when run on the pod's node")
	fs.StringVar(&o.port, "port", "", "trace: destination port (number, or a Service port's name; default: the Service's first port, 80 for pods)")
	fs.StringVar(&o.proto, "proto", "", "trace: tcp, udp or sctp (default: the Service port's, tcp)")
	fs.StringVar(&o.lbDst, "lb-dst", "", "trace: the backend IP[:PORT] ovn-trace should pick at a load balancer (its --lb-dst)")
	fs.BoolVar(&o.raw, "raw", false, "trace: print ovn-trace's own output")
	fs.BoolVar(&o.yes, "yes", false, "uninstall: really delete (without it, only list what would go)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	return fs
}

// env is one command's connections, opened on first use.
type env struct {
	o       *options
	out     io.Writer
	kube    kubernetes.Interface
	kubeErr error
	cm      map[string]string
	cmOK    bool
}

// kubeClient connects to the apiserver as kubectl would find it, checking that it answers.
func (e *env) kubeClient(_ context.Context) (kubernetes.Interface, error) {
	if e.kube != nil || e.kubeErr != nil {
		return e.kube, e.kubeErr
	}
	e.kube, e.kubeErr = e.newKubeClient()
	return e.kube, e.kubeErr
}

func (e *env) newKubeClient() (kubernetes.Interface, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = e.o.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.Timeout = e.o.timeout
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apiserver %s: %w", cfg.Host, err)
	}
	if _, err := kube.Discovery().ServerVersion(); err != nil {
		return nil, fmt.Errorf("apiserver %s unreachable: %s", cfg.Host, oneLine(err.Error()))
	}
	return kube, nil
}

// config is the dunlin-config ConfigMap's data, nil when there is none.
func (e *env) config(ctx context.Context) (map[string]string, error) {
	if e.cmOK {
		return e.cm, nil
	}
	kube, err := e.kubeClient(ctx)
	if err != nil {
		return nil, err
	}
	cm, err := kube.CoreV1().ConfigMaps(e.o.configNamespace).Get(ctx, configMapName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("ConfigMap %s/%s: %s", e.o.configNamespace, configMapName, oneLine(err.Error()))
	default:
		e.cm = cm.Data
	}
	e.cmOK = true
	return e.cm, nil
}

// address is the flag's value, else the ConfigMap's key, else the environment variable ovn-nbctl and
// ovn-sbctl read.
func (e *env) address(ctx context.Context, flagValue, flagName, key, envVar string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	cm, err := e.config(ctx)
	if err != nil {
		return "", err
	}
	if v := cm[key]; v != "" {
		return v, nil
	}
	if v := os.Getenv(envVar); v != "" {
		return v, nil
	}
	return "", fmt.Errorf("no %s address: pass --%s, or set %s in ConfigMap %s/%s, or %s", key[:2], flagName, key,
		e.o.configNamespace, configMapName, envVar)
}

// tlsFiles are the --ovn-* files, else the ConfigMap's when they exist here (they are paths inside the
// controller's pod).
func (e *env) tlsFiles(ctx context.Context, serverNameKey string) (ovsdbtls.Files, error) {
	f := e.o.tls
	if !f.Set() {
		if cm, _ := e.config(ctx); cm != nil {
			c := ovsdbtls.Files{CACert: cm[keyNBCACert], Cert: cm[keyNBCert], Key: cm[keyNBKey], ServerName: cm[serverNameKey]}
			if c.Set() && exists(c.CACert) && exists(c.Cert) && exists(c.Key) {
				f = c
			}
		}
	}
	if err := f.Validate("ovn"); err != nil {
		return f, err
	}
	return f, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return path == "" || err == nil
}

func tlsConfig(f ovsdbtls.Files) (*tls.Config, error) {
	if !f.Set() {
		return nil, nil
	}
	return f.Config()
}

// bigRequestTimeout bounds each request once a member has answered.
const bigRequestTimeout = 2 * time.Minute

// database is a connection to NB or SB: what each member said, and a client to the leader.
type database struct {
	what, addresses string
	files           ovsdbtls.Files
	members         []ovsdbrows.Member
	c               *ovsdbrows.Client
	version         string
}

func (e *env) connectNB(ctx context.Context) (*database, error) {
	return e.connectDB(ctx, "NB", e.o.nb, keyNBAddress, "OVN_NB_DB", keyNBServerName, "", "OVN_Northbound")
}

func (e *env) connectSB(ctx context.Context) (*database, error) {
	return e.connectDB(ctx, "SB", e.o.sb, keySBAddress, "OVN_SB_DB", keySBServerName, e.o.sbServerName, "OVN_Southbound")
}

// connectDB connects to NB or SB at the flag's addresses (else the ConfigMap's key, else envVar), over
// TLS with the --ovn-* files and serverName (when set, else the ConfigMap's serverNameKey).
func (e *env) connectDB(ctx context.Context, what, flagValue, key, envVar, serverNameKey, serverName, db string) (*database, error) {
	addr, err := e.address(ctx, flagValue, strings.ToLower(what), key, envVar)
	if err != nil {
		return nil, err
	}
	files, err := e.tlsFiles(ctx, serverNameKey)
	if err != nil {
		return nil, err
	}
	if serverName != "" {
		files.ServerName = serverName
	}
	return e.connect(ctx, what, addr, db, files)
}

func (e *env) connect(ctx context.Context, what, addr, db string, files ovsdbtls.Files) (*database, error) {
	d := &database{what: what, addresses: addr, files: files}
	cfg, err := tlsConfig(files)
	if err != nil {
		return d, fmt.Errorf("%s TLS: %w", what, err)
	}
	d.members, d.c, err = ovsdbrows.Connect(ctx, what, addr, db, cfg, e.o.timeout)
	if err != nil {
		return d, err
	}
	// The member answered within --timeout; reading (or, for uninstall, rewriting) a large NB may take
	// longer than that.
	d.c.SetTimeout(max(e.o.timeout, bigRequestTimeout))
	d.version = d.c.Schema().Version
	return d, nil
}

func (d *database) close() {
	if d != nil && d.c != nil {
		d.c.Close()
	}
}

// kubeInterface is the apiserver client.
type kubeInterface = kubernetes.Interface
