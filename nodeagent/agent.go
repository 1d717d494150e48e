// Package nodeagent is dunlin-node, the per-node agent: it points the local OVS and ovn-controller at
// the OVN southbound database, serves the CNI plugin's requests on a unix socket, and plumbs pods into
// br-int.
package nodeagent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/internal/ovsdbtls"
	"github.com/dunlinplugin/dunlin/nodeagent/ovs"
)

// Config is dunlin-node's configuration; the flags of cmd/dunlin-node map onto it one to one.
type Config struct {
	NodeName  string
	OVSDB     string // local OVS database, unix:/var/run/openvswitch/db.sock
	SBAddress string // ovn-remote
	// TLS is for ssl: endpoints of OVSDB and SBAddress (dunlin-node's own check of SB; ovn-controller
	// has TLS settings of its own).
	TLS          ovsdbtls.Files
	EncapType    string // geneve or vxlan
	EncapIP      string // empty: the Node's InternalIP
	MTU          int    // pod MTU; 0: the encap interface's MTU minus the encapsulation overhead
	DatapathType string // system or netdev
	Bridge       string // integration bridge, br-int
	// ClusterCIDR is routed from the host through the management port; invalid: no route.
	ClusterCIDR netip.Prefix
	// ServiceCIDR is routed the same way, so host processes reach ClusterIPs through OVN's load
	// balancers on the node switch; invalid: no route.
	ServiceCIDR netip.Prefix

	CNISocket       string
	CNIConfDir      string
	CNIBinDir       string
	CNIPluginSource string // the dunlin-cni binary to install; empty: none

	// Gateway moves the uplink into br-ex and shares it with the node's OVN gateway router.
	Gateway bool
	// GatewayInterface is the uplink; empty: the interface of the default route.
	GatewayInterface string
	OVSRunDir        string // where ovs-vswitchd keeps the bridges' OpenFlow management sockets
	// GatewayCrashAfter names a step of the gateway set-up after which the process exits at once, as
	// if it crashed there; tests use it to prove a restart recovers. Empty: never.
	GatewayCrashAfter string

	OVNRunDir          string // where ovn-controller keeps its control socket
	MetricsBindAddress string

	PodNetworkTimeout   time.Duration
	OVNInstalledTimeout time.Duration
}

// DefaultConfig returns the defaults of every flag.
func DefaultConfig() Config {
	return Config{
		OVSDB:               "unix:/var/run/openvswitch/db.sock",
		EncapType:           "geneve",
		DatapathType:        "system",
		Bridge:              "br-int",
		ClusterCIDR:         netip.MustParsePrefix("10.244.0.0/16"),
		ServiceCIDR:         netip.MustParsePrefix("10.96.0.0/16"),
		CNISocket:           "/var/run/dunlin/cni.sock",
		CNIConfDir:          "/etc/cni/net.d",
		CNIBinDir:           "/opt/cni/bin",
		OVNRunDir:           "/var/run/ovn",
		OVSRunDir:           "/var/run/openvswitch",
		Gateway:             true,
		MetricsBindAddress:  ":9477",
		PodNetworkTimeout:   60 * time.Second,
		OVNInstalledTimeout: 60 * time.Second,
	}
}

// Encapsulation overheads on an IPv4 underlay: outer IP (20) + UDP (8) + header (8) + inner Ethernet
// (14), plus 8 bytes of OVN's Geneve option.
const (
	geneveOverhead = 58
	vxlanOverhead  = 50
)

// Agent is a running dunlin-node.
type Agent struct {
	cfg     Config
	client  kubernetes.Interface
	ovs     *ovs.Client
	pods    *podWatcher
	metrics *metrics
	reg     *prometheus.Registry
	// recorder records Warning events on the node (nil until Run starts it).
	recorder record.EventRecorder

	locks *attachLocks // one command at a time per attachment; GC works around them
}

// New validates cfg and prepares an agent; Run starts it.
func New(cfg Config, client kubernetes.Interface) (*Agent, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("node name is required (--node-name, or the NODE_NAME environment variable)")
	}
	if cfg.EncapType != "geneve" && cfg.EncapType != "vxlan" {
		return nil, fmt.Errorf("encap type %q: want geneve or vxlan", cfg.EncapType)
	}
	if cfg.DatapathType != "system" && cfg.DatapathType != "netdev" {
		return nil, fmt.Errorf("datapath type %q: want system or netdev", cfg.DatapathType)
	}
	if cfg.EncapIP != "" {
		if _, err := netip.ParseAddr(cfg.EncapIP); err != nil {
			return nil, fmt.Errorf("encap IP: %w", err)
		}
	}
	if err := cfg.TLS.Validate("ovn"); err != nil {
		return nil, err
	}
	if cfg.MTU != 0 && (cfg.MTU < 576 || cfg.MTU > 65535) {
		return nil, fmt.Errorf("MTU %d is out of range 576-65535", cfg.MTU)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return &Agent{cfg: cfg, client: client, metrics: newMetrics(reg), reg: reg, locks: newAttachLocks()}, nil
}

// RegisterMetrics registers with reg the collectors dunlin-node serves besides Go's and the
// process's, for tests that check dashboards and alert rules against what it exports.
func RegisterMetrics(reg prometheus.Registerer) { newMetrics(reg) }

// Run configures OVS, starts serving CNI requests and installs the CNI configuration, then blocks until
// ctx ends. The configuration is installed last so that the runtime reports the node network-ready only
// once requests can be served.
func (a *Agent) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithValues("node", a.cfg.NodeName)
	var err error
	if a.cfg.EncapIP == "" {
		if a.cfg.EncapIP, err = a.nodeInternalIP(ctx); err != nil {
			return err
		}
	}
	if a.cfg.MTU == 0 {
		if a.cfg.MTU, err = podMTU(a.cfg.EncapIP, a.cfg.EncapType); err != nil {
			return err
		}
	}
	logger.Info("Starting dunlin-node", "encapType", a.cfg.EncapType, "encapIP", a.cfg.EncapIP, "mtu", a.cfg.MTU,
		"datapathType", a.cfg.DatapathType, "ovsdb", a.cfg.OVSDB, "sb", a.cfg.SBAddress)

	tlsCfg, err := a.cfg.tlsConfig()
	if err != nil {
		return err
	}
	if a.cfg.SBAddress != "" {
		go a.watchSB(ctx, tlsCfg)
	}
	if a.ovs, err = ovs.ConnectTLS(ctx, a.cfg.OVSDB, tlsCfg); err != nil {
		return fmt.Errorf("connect to OVS at %s: %w", a.cfg.OVSDB, err)
	}
	defer a.ovs.Close()
	systemID, err := a.ovs.ConfigureChassis(ctx, ovs.ChassisConfig{
		SystemID:     a.cfg.NodeName,
		Hostname:     a.cfg.NodeName,
		Remote:       a.cfg.SBAddress,
		EncapType:    a.cfg.EncapType,
		EncapIP:      a.cfg.EncapIP,
		Bridge:       a.cfg.Bridge,
		DatapathType: a.cfg.DatapathType,
	})
	if err != nil {
		return fmt.Errorf("configure OVS for OVN: %w", err)
	}
	logger.Info("Configured OVS", "systemID", systemID, "bridge", a.cfg.Bridge)
	defer a.startEvents(ctx)()
	// Pods plumbed by an older dunlin-node may lack iface-id-ver and the host-end settings; add them
	// before the controller hears it may require iface-id-ver on this node's ports.
	a.addIfaceIDVer(ctx)
	if a.cfg.Gateway {
		gw := a.newGateway(systemID)
		// The first attempt completes before pods are served, so that a node whose gateway can be
		// set up never serves pods without it. A failed one is reported and retried in the
		// background: the node's pods work meanwhile.
		err := gw.start(ctx)
		if err != nil && ctx.Err() != nil {
			return err
		}
		go gw.run(ctx, err)
	} else {
		go a.announceFeatures(ctx, annotations.AgentFeatures(false))
	}
	if links, err := ourHostLinks(); err == nil {
		for _, l := range links {
			if err := quietHostEnd(l); err != nil {
				logger.Error(err, "Cannot quiet a pod veth's host end", "link", l)
			}
		}
	}

	a.pods = newPodWatcher(a.client, a.cfg.NodeName, 0)
	if err := a.pods.start(ctx); err != nil {
		return err
	}

	ln, err := listenUnix(a.cfg.CNISocket)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: a.cniHandler(ctx), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	defer func() {
		shut, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shut)
		_ = os.Remove(a.cfg.CNISocket)
	}()

	var msrv *http.Server
	if a.cfg.MetricsBindAddress != "" && a.cfg.MetricsBindAddress != "0" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if !a.ovs.Connected() {
				http.Error(w, "OVS database not connected", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok"))
		})
		msrv = &http.Server{Addr: a.cfg.MetricsBindAddress, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := msrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		}()
		defer msrv.Close()
	}

	go a.runManagementPort(ctx)

	if err := installCNI(ctx, a.cfg.CNIConfDir, a.cfg.CNIBinDir, a.cfg.CNIPluginSource, a.cfg.CNISocket); err != nil {
		return err
	}
	logger.Info("Serving CNI", "socket", a.cfg.CNISocket, "conf", filepath.Join(a.cfg.CNIConfDir, ConfListName))

	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return fmt.Errorf("CNI server: %w", err)
	}
}

// listenUnix listens on path in a directory only root can enter: whoever can connect can plumb pods.
func listenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory %s: %w", dir, err)
	}
	// The directory is made root-only, so it must be Dunlin's own: never /tmp or /run.
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("socket directory %s: %w", dir, err)
	} else if st.Mode()&os.ModeSticky != 0 || dir == "/" || dir == "/run" || dir == "/var/run" {
		return nil, fmt.Errorf("socket directory %s is shared: put --cni-socket in a directory of its own (e.g. /var/run/dunlin)", dir)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict socket directory %s: %w", dir, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict socket %s: %w", path, err)
	}
	return ln, nil
}

func (a *Agent) nodeInternalIP(ctx context.Context) (string, error) {
	node, err := a.client.CoreV1().Nodes().Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read node %s for its InternalIP (or set --encap-ip): %w", a.cfg.NodeName, err)
	}
	for _, ad := range node.Status.Addresses {
		if ad.Type == corev1.NodeInternalIP {
			if ip, err := netip.ParseAddr(ad.Address); err == nil && ip.Is4() {
				return ip.String(), nil
			}
		}
	}
	return "", fmt.Errorf("node %s has no IPv4 InternalIP: set --encap-ip", a.cfg.NodeName)
}

// tlsConfig is the client configuration for ssl: endpoints, nil without TLS flags.
func (cfg Config) tlsConfig() (*tls.Config, error) {
	if !cfg.TLS.Set() {
		return nil, nil
	}
	tlsCfg, err := cfg.TLS.Config()
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return tlsCfg, nil
}

// podMTU derives the pod MTU from the MTU of the interface holding the encap IP.
func podMTU(encapIP, encapType string) (int, error) {
	ip := net.ParseIP(encapIP)
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return 0, fmt.Errorf("list addresses to find the encap interface: %w", err)
	}
	for _, ad := range addrs {
		if !ad.IP.Equal(ip) {
			continue
		}
		link, err := netlink.LinkByIndex(ad.LinkIndex)
		if err != nil {
			return 0, fmt.Errorf("encap interface of %s: %w", encapIP, err)
		}
		overhead := geneveOverhead
		if encapType == "vxlan" {
			overhead = vxlanOverhead
		}
		return link.Attrs().MTU - overhead, nil
	}
	return 0, fmt.Errorf("no interface holds encap IP %s: cannot derive the pod MTU (set --mtu)", encapIP)
}

// addIfaceIDVer gives the OVS interfaces of pods plumbed by a dunlin-node older than iface-id-ver the
// key, with the pod UID they carry. Once dunlin-controller sets iface-id-ver on a pod's logical port,
// ovn-controller releases an interface without it (OVN 23.03, test/runtimes TestIfaceIDVer) and the
// running pod loses its network; the key on an interface whose logical port lacks the option changes
// nothing. Best effort: a failure is logged, and the pod keeps working until the controller sets the
// option.
func (a *Agent) addIfaceIDVer(ctx context.Context) {
	logger := klog.FromContext(ctx)
	for _, p := range a.ovs.PortsWithExternalID(ExtSandboxID) {
		uid := p.ExternalIDs[ExtPodUID]
		if _, ok := p.ExternalIDs[conventions.IfaceIDVer]; ok || uid == "" || p.Bridge == "" {
			continue
		}
		ids := maps.Clone(p.ExternalIDs)
		ids[conventions.IfaceIDVer] = uid
		if err := a.ovs.AddPort(ctx, ovs.PortSpec{Bridge: p.Bridge, Name: p.Name, ExternalIDs: ids}); err != nil {
			logger.Error(err, "Cannot add iface-id-ver to a pod's OVS interface", "port", p.Name, "iface-id", p.ExternalIDs[ExtIfaceID])
			continue
		}
		logger.Info("Added iface-id-ver to a pod's OVS interface", "port", p.Name, "iface-id", p.ExternalIDs[ExtIfaceID], "uid", uid)
	}
}

// announceFeatures writes the node's dunlin.io/node-features annotation, retrying until it is written.
func (a *Agent) announceFeatures(ctx context.Context, features string) {
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotations.NodeFeatures, features)
	delay := time.Second
	for {
		_, err := a.client.CoreV1().Nodes().Patch(ctx, a.cfg.NodeName, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: "dunlin-node"})
		if err == nil {
			klog.FromContext(ctx).Info("Announced node features", "features", features)
			return
		}
		klog.FromContext(ctx).Error(err, "Cannot announce node features, retrying", "retryIn", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
}
