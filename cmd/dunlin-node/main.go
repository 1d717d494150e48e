// Command dunlin-node is Dunlin's per-node agent (a DaemonSet): it configures the local OVS for
// ovn-controller and serves the dunlin-cni plugin.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/cni"
	"github.com/dunlinplugin/dunlin/nodeagent"
)

func main() {
	klog.InitFlags(nil)
	cfg := nodeagent.DefaultConfig()
	var kubeconfig, clusterCIDR, serviceCIDR string
	var cleanup bool
	flag.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file; empty means the in-cluster configuration")
	flag.StringVar(&cfg.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's Kubernetes name (default $NODE_NAME); also the OVS system-id unless one is set")
	flag.StringVar(&cfg.OVSDB, "ovs-db", cfg.OVSDB, "local OVS database endpoint")
	flag.StringVar(&cfg.SBAddress, "sb-address", "", "OVN southbound DB for ovn-controller (ovn-remote), comma-separated tcp:IP:6642 or ssl:IP:6642 endpoints (one per RAFT member); dunlin-node checks it is reachable, with --ovn-* for ssl:, ovn-controller uses its own TLS settings")
	cfg.TLS.AddFlags(flag.CommandLine, "ovn", "OVN SB (and an ssl: --ovs-db)")
	flag.StringVar(&cfg.EncapType, "encap-type", cfg.EncapType, "tunnel encapsulation between nodes: geneve or vxlan")
	flag.StringVar(&cfg.EncapIP, "encap-ip", "", "this node's tunnel endpoint IP (default: the Node's InternalIP)")
	flag.IntVar(&cfg.MTU, "mtu", 0, "pod interface MTU (default: the encap interface's MTU minus the encapsulation overhead)")
	flag.StringVar(&cfg.DatapathType, "datapath-type", cfg.DatapathType, "OVS datapath of br-int: system (kernel) or netdev (userspace)")
	flag.StringVar(&cfg.Bridge, "bridge", cfg.Bridge, "OVN integration bridge")
	flag.StringVar(&clusterCIDR, "cluster-cidr", cfg.ClusterCIDR.String(), "pod CIDR of the cluster, routed from the host through the management port (as dunlin-controller's --cluster-cidr)")
	flag.StringVar(&serviceCIDR, "service-cidr", cfg.ServiceCIDR.String(), "Service ClusterIP range, routed from the host through the management port (as the API server's --service-cluster-ip-range)")
	flag.StringVar(&cfg.CNISocket, "cni-socket", cfg.CNISocket, "unix socket serving dunlin-cni")
	flag.StringVar(&cfg.CNIConfDir, "cni-conf-dir", cfg.CNIConfDir, "CNI configuration directory the runtime reads")
	flag.StringVar(&cfg.CNIBinDir, "cni-bin-dir", cfg.CNIBinDir, "CNI plugin directory the runtime executes from")
	flag.StringVar(&cfg.CNIPluginSource, "cni-plugin-source", "", "dunlin-cni binary to install into --cni-bin-dir (default: dunlin-cni beside this binary, if there)")
	flag.StringVar(&cfg.OVNRunDir, "ovn-rundir", cfg.OVNRunDir, "ovn-controller's run directory (OVN_RUNDIR), for CNI STATUS")
	flag.StringVar(&cfg.MetricsBindAddress, "metrics-bind-address", cfg.MetricsBindAddress, "address serving /metrics and /healthz; empty disables")
	flag.BoolVar(&cfg.Gateway, "gateway", cfg.Gateway, "move the uplink into the OVS bridge "+nodeagent.GatewayBridge+" and share it with the node's OVN gateway router (pod egress, NodePorts); false leaves the uplink alone")
	flag.StringVar(&cfg.GatewayInterface, "gateway-interface", "", "the uplink moved into "+nodeagent.GatewayBridge+" (default: the interface of the default route)")
	flag.StringVar(&cfg.OVSRunDir, "ovs-rundir", cfg.OVSRunDir, "ovs-vswitchd's run directory (OVS_RUNDIR), where ovs-ofctl finds the bridges' management sockets")
	flag.BoolVar(&cleanup, "cleanup", false, "undo the node gateway and exit: give the uplink back its addresses, routes and MAC, delete "+nodeagent.GatewayBridge+", remove the physnet bridge mapping and the node's gateway annotation")
	flag.DurationVar(&cfg.PodNetworkTimeout, "pod-network-timeout", cfg.PodNetworkTimeout, "how long ADD waits for the pod's network annotation")
	flag.DurationVar(&cfg.OVNInstalledTimeout, "ovn-installed-timeout", cfg.OVNInstalledTimeout, "how long ADD waits for ovn-controller to install the port")
	flag.Parse()
	cfg.GatewayCrashAfter = os.Getenv("DUNLIN_TEST_GATEWAY_CRASH_AFTER") // tests only

	for _, f := range []struct {
		flag string
		val  string
		dst  *netip.Prefix
	}{{"cluster-cidr", clusterCIDR, &cfg.ClusterCIDR}, {"service-cidr", serviceCIDR, &cfg.ServiceCIDR}} {
		p, err := netip.ParsePrefix(f.val)
		if err != nil {
			fmt.Fprintf(os.Stderr, "--%s: %v\n", f.flag, err)
			os.Exit(2)
		}
		*f.dst = p.Masked()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cleanup {
		if err := runCleanup(klog.NewContext(ctx, klog.Background()), kubeconfig, cfg); err != nil {
			klog.ErrorS(err, "dunlin-node --cleanup failed")
			klog.Flush()
			os.Exit(1)
		}
		klog.Flush()
		return
	}
	if err := run(ctx, kubeconfig, cfg); err != nil {
		klog.ErrorS(err, "dunlin-node failed")
		klog.Flush()
		os.Exit(1)
	}
	klog.Flush()
}

func run(ctx context.Context, kubeconfig string, cfg nodeagent.Config) error {
	if cfg.CNIPluginSource == "" {
		// The image ships dunlin-cni beside dunlin-node. Without it (a binary built alone, a plugin
		// installed by other means) only the configuration is written.
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("locate dunlin-cni: %w", err)
		}
		if p := filepath.Join(filepath.Dir(self), cni.PluginType); fileExists(p) {
			cfg.CNIPluginSource = p
		} else {
			klog.InfoS("No dunlin-cni beside dunlin-node: not installing the plugin binary, only the configuration",
				"looked", p, "cniBinDir", cfg.CNIBinDir)
		}
	}
	client, err := kubeClient(kubeconfig)
	if err != nil {
		return err
	}
	agent, err := nodeagent.New(cfg, client)
	if err != nil {
		return err
	}
	return agent.Run(klog.NewContext(ctx, klog.Background()))
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var restCfg *rest.Config
	var err error
	if kubeconfig != "" {
		restCfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		restCfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	restCfg.UserAgent = "dunlin-node"
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// runCleanup undoes the node gateway. The API server is optional: without it the annotation stays
// (the controller then sees a gateway that is gone, until the node is re-annotated or deleted).
func runCleanup(ctx context.Context, kubeconfig string, cfg nodeagent.Config) error {
	var client kubernetes.Interface
	if c, err := kubeClient(kubeconfig); err != nil {
		klog.ErrorS(err, "No Kubernetes client: the node's gateway annotation stays")
	} else {
		client = c
	}
	return nodeagent.Cleanup(ctx, cfg, client)
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
