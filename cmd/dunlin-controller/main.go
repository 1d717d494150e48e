// Command dunlin-controller translates Kubernetes objects into the OVN northbound database.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/ovsdbtls"
	"github.com/dunlinplugin/dunlin/translator"
)

type options struct {
	kubeconfig       string
	nbAddress        string
	nbTLS            ovsdbtls.Files
	clusterCIDR      string
	nodeSubnetPrefix int
	sessionAffinity  string
	serviceCIDR      string
	metricsAddr      string
	workers          int
	resync           time.Duration
	leaderElect      bool
	leaderNamespace  string
	leaseDuration    time.Duration
	kubeAPIQPS       float64
	kubeAPIBurst     int
	aclLogRate       int
	nodeSubnetSource string
	podCIDRWait      time.Duration
	joinSubnet       string
	nodePortRange    string
}

func main() {
	klog.InitFlags(nil)
	def := translator.DefaultConfig()
	var o options
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means the in-cluster configuration")
	flag.StringVar(&o.nbAddress, "nb-address", "unix:/var/run/ovn/ovnnb_db.sock",
		"comma-separated OVN NB endpoints: unix:PATH, tcp:IP:PORT or ssl:IP:PORT")
	o.nbTLS.AddFlags(flag.CommandLine, "ovn", "OVN NB")
	// The names of earlier releases, so that an existing ConfigMap keeps working.
	flag.StringVar(&o.nbTLS.Cert, "nb-client-cert", "", "deprecated: --ovn-cert")
	flag.StringVar(&o.nbTLS.Key, "nb-client-key", "", "deprecated: --ovn-key")
	flag.StringVar(&o.nbTLS.CACert, "nb-ca-cert", "", "deprecated: --ovn-ca-cert")
	flag.StringVar(&o.clusterCIDR, "cluster-cidr", def.ClusterCIDR.String(), "CIDR that node pod subnets are taken from")
	flag.IntVar(&o.nodeSubnetPrefix, "node-subnet-prefix", def.NodeSubnetPrefix, "prefix length of each node's pod subnet")
	flag.StringVar(&o.serviceCIDR, "service-cidr", def.ServiceCIDR.String(), "CIDR of Service cluster IPs")
	flag.StringVar(&o.sessionAffinity, "session-affinity", def.SessionAffinity,
		"how ClientIP session affinity is done: timeout (OVN affinity_timeout, honours timeoutSeconds; OVN 23.03 drops the first packet of each new client) or hash (hash of client and VIP address, no timeout)")
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", ":9476", "address serving /metrics, /healthz and /readyz; empty disables")
	flag.IntVar(&o.workers, "workers", def.Workers, "workers per object kind (also bounds keys per NB transaction)")
	flag.DurationVar(&o.resync, "resync-period", def.ResyncPeriod, "how often everything is reconciled again and orphans collected")
	flag.BoolVar(&o.leaderElect, "leader-elect", true, "run only while holding the dunlin-controller Lease")
	flag.StringVar(&o.leaderNamespace, "leader-elect-namespace", "kube-system", "namespace of the leader election Lease")
	flag.DurationVar(&o.leaseDuration, "leader-elect-lease-duration", 15*time.Second, "leader election lease duration")
	// Each new pod costs one patch (its address annotation). The defaults are 4x kube-scheduler's 50/100,
	// which paces how fast pods are bound to nodes, and 10x a kube-controller-manager controller's 20/30
	// (ovn-kubernetes: 50/50 per node; kube-ovn's central controller: 1000/2000), so the controller
	// keeps up with pod creation in large clusters and allocates a backlog of 10,000 pods (a fresh
	// install) in under a minute, while API Priority and Fairness still protects the apiserver.
	flag.Float64Var(&o.kubeAPIQPS, "kube-api-qps", 200,
		"sustained requests per second to the apiserver (client-side limit; each new pod costs one patch); negative: no client-side limit")
	flag.IntVar(&o.kubeAPIBurst, "kube-api-burst", 400,
		"requests that may go out at once before --kube-api-qps paces them, e.g. for a Deployment scaled up by a few hundred pods")
	flag.StringVar(&o.joinSubnet, "join-subnet", def.JoinSubnet.String(),
		"IPv4 subnet of the join switch between ovn_cluster_router (first address) and the nodes' gateway routers")
	flag.StringVar(&o.nodePortRange, "service-node-port-range", def.NodePortRange.String(),
		"range of Service node ports (the apiserver's --service-node-port-range); others are reported and not served")
	flag.StringVar(&o.nodeSubnetSource, "node-subnet-source", def.NodeSubnetSource,
		"where a node's subnet comes from while it has no spec.podCIDRs (which are always used once set): auto (when other nodes have spec.podCIDRs, a new node waits up to --pod-cidr-wait for its own, then Dunlin allocates), pod-cidrs (wait for them: the cluster runs nodeipam, e.g. kubeadm --pod-network-cidr) or dunlin (allocate from --cluster-cidr at once)")
	flag.DurationVar(&o.podCIDRWait, "pod-cidr-wait", def.PodCIDRWait,
		"with --node-subnet-source=auto, how long a new node without spec.podCIDRs waits for them")
	flag.IntVar(&o.aclLogRate, "acl-log-rate", def.ACLLogRate,
		"ACL log messages per second per ACL for namespaces annotated dunlin.io/acl-logging (the rate of the meter dunlin-acl-logging)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	context.AfterFunc(ctx, func() { klog.InfoS("Shutting down") })
	if err := run(ctx, o); err != nil {
		klog.ErrorS(err, "dunlin-controller failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func (o options) config() (translator.Config, error) {
	cfg := translator.DefaultConfig()
	var err error
	if cfg.ClusterCIDR, err = netip.ParsePrefix(o.clusterCIDR); err != nil {
		return cfg, fmt.Errorf("--cluster-cidr: %w", err)
	}
	if cfg.ServiceCIDR, err = netip.ParsePrefix(o.serviceCIDR); err != nil {
		return cfg, fmt.Errorf("--service-cidr: %w", err)
	}
	if cfg.ClusterCIDR.Overlaps(cfg.ServiceCIDR) {
		return cfg, fmt.Errorf("--cluster-cidr %s overlaps --service-cidr %s", cfg.ClusterCIDR, cfg.ServiceCIDR)
	}
	if cfg.JoinSubnet, err = netip.ParsePrefix(o.joinSubnet); err != nil || !cfg.JoinSubnet.Addr().Is4() {
		return cfg, fmt.Errorf("--join-subnet %q must be an IPv4 CIDR", o.joinSubnet)
	}
	for flagName, p := range map[string]netip.Prefix{"--cluster-cidr": cfg.ClusterCIDR, "--service-cidr": cfg.ServiceCIDR} {
		if cfg.JoinSubnet.Overlaps(p) {
			return cfg, fmt.Errorf("--join-subnet %s overlaps %s %s", cfg.JoinSubnet, flagName, p)
		}
	}
	if cfg.NodePortRange, err = translator.ParsePortRange(o.nodePortRange); err != nil {
		return cfg, fmt.Errorf("--service-node-port-range: %w", err)
	}
	switch o.sessionAffinity {
	case translator.AffinityTimeout, translator.AffinityHash:
		cfg.SessionAffinity = o.sessionAffinity
	default:
		return cfg, fmt.Errorf("--session-affinity must be %s or %s, not %q", translator.AffinityTimeout, translator.AffinityHash, o.sessionAffinity)
	}
	switch o.nodeSubnetSource {
	case translator.SubnetSourceAuto, translator.SubnetSourcePodCIDRs, translator.SubnetSourceDunlin:
		cfg.NodeSubnetSource = o.nodeSubnetSource
	default:
		return cfg, fmt.Errorf("--node-subnet-source must be %s, %s or %s, not %q",
			translator.SubnetSourceAuto, translator.SubnetSourcePodCIDRs, translator.SubnetSourceDunlin, o.nodeSubnetSource)
	}
	if o.podCIDRWait < 0 {
		return cfg, fmt.Errorf("--pod-cidr-wait must not be negative")
	}
	cfg.PodCIDRWait = o.podCIDRWait
	if o.workers < 1 {
		return cfg, fmt.Errorf("--workers must be at least 1")
	}
	if o.aclLogRate < 1 {
		return cfg, fmt.Errorf("--acl-log-rate must be at least 1")
	}
	cfg.NodeSubnetPrefix, cfg.Workers, cfg.ResyncPeriod, cfg.ACLLogRate = o.nodeSubnetPrefix, o.workers, o.resync, o.aclLogRate
	return cfg, nil
}

// rateLimit returns the client's QPS and burst. client-go reads a QPS of 0 as its default of 5 and a
// negative one as no limit.
func (o options) rateLimit() (float32, int, error) {
	switch {
	case o.kubeAPIQPS == 0:
		return 0, 0, errors.New("--kube-api-qps must not be 0 (negative turns the client-side limit off)")
	case o.kubeAPIQPS > 0 && o.kubeAPIBurst < 1:
		return 0, 0, fmt.Errorf("--kube-api-burst must be at least 1, not %d", o.kubeAPIBurst)
	}
	return float32(o.kubeAPIQPS), o.kubeAPIBurst, nil
}

// tlsConfig is the configuration for ssl: NB endpoints, nil without TLS flags. Certificates are re-read
// when their files change (see ovsdbtls).
func (o options) tlsConfig() (*tls.Config, error) {
	if !o.nbTLS.Set() {
		return nil, nil
	}
	if err := o.nbTLS.Validate("ovn"); err != nil {
		return nil, err
	}
	cfg, err := o.nbTLS.Config()
	if err != nil {
		return nil, fmt.Errorf("NB TLS: %w", err)
	}
	return cfg, nil
}

func run(ctx context.Context, o options) error {
	cfg, err := o.config()
	if err != nil {
		return err
	}
	tlsCfg, err := o.tlsConfig()
	if err != nil {
		return err
	}
	restCfg, err := restConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	if restCfg.QPS, restCfg.Burst, err = o.rateLimit(); err != nil {
		return err
	}
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	health := &healthState{}
	if o.metricsAddr != "" {
		go serveMetrics(ctx, o.metricsAddr, reg, health)
	}

	// Events outlive the translator and leader election: the Lease's last event is recorded on the way
	// out, and stop writes it before the process exits.
	events := startEvents(kube)
	defer events.stop(eventFlushTimeout)

	// The NB writer claim names the process as the Lease does.
	host, _ := os.Hostname()
	cfg.Identity = fmt.Sprintf("%s_%d", host, os.Getpid())
	work := func(ctx context.Context) error {
		return translate(ctx, o, cfg, tlsCfg, kube, events.recorder, reg, health)
	}
	leader := translator.NewLeaderMetrics(reg)
	if !o.leaderElect {
		leader.Started(float64(time.Now().UnixNano()) / 1e9)
		return stopped(ctx, work(ctx))
	}
	return runElected(ctx, o, kube, events.recorder, health, leader, work)
}

func translate(ctx context.Context, o options, cfg translator.Config, tlsCfg *tls.Config, kube kubernetes.Interface,
	recorder record.EventRecorder, reg prometheus.Registerer, health *healthState) error {
	dbModel, _, err := translator.NBModel()
	if err != nil {
		return err
	}
	nb, err := translator.ConnectNB(ctx, o.nbAddress, tlsCfg, dbModel)
	if err != nil {
		return err
	}
	defer nb.Close()
	c, err := translator.New(cfg, kube, nb, recorder, reg)
	if err != nil {
		return err
	}
	health.setController(c)
	return c.Run(ctx)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config (pass --kubeconfig outside a cluster): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}
