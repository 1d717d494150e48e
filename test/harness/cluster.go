package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/dunlinplugin/dunlin/translator"
)

// Binaries are Dunlin's programs, built from this tree.
type Binaries struct {
	Dir        string
	Controller string
	Node       string
	CNI        string
	PodServer  string
	Ctl        string // dunlinctl
}

// GoBuildFlags are `go build` and its flags for the programs a test starts: with -race when the test
// binary has it, so that their data races are caught too (see DataRaces).
func GoBuildFlags() []string {
	if RaceEnabled {
		return []string{"build", "-race"}
	}
	return []string{"build"}
}

// BuildBinaries builds dunlin-controller, dunlin-node, dunlin-cni, dunlinctl and the test pod server into dir,
// with -race when the calling binary has it.
func BuildBinaries(ctx context.Context, dir string) (Binaries, error) {
	b := Binaries{
		Dir:        dir,
		Controller: filepath.Join(dir, "dunlin-controller"),
		Node:       filepath.Join(dir, "dunlin-node"),
		CNI:        filepath.Join(dir, "dunlin-cni"),
		PodServer:  filepath.Join(dir, "podserver"),
		Ctl:        filepath.Join(dir, "dunlinctl"),
	}
	_, self, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(self), "..", "..")
	cmd := exec.CommandContext(ctx, "go", append(GoBuildFlags(), "-o", dir+"/",
		"./cmd/dunlin-controller", "./cmd/dunlin-node", "./cmd/dunlin-cni", "./cmd/dunlinctl", "./test/podserver")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return b, fmt.Errorf("go build: %w\n%s", err, out)
	}
	return b, nil
}

// ClusterOptions describe a whole Dunlin cluster on one machine.
type ClusterOptions struct {
	Dir       string // short
	Bins      Binaries
	Nodes     int    // default 2
	EncapType string // geneve (default) or vxlan
	// ControllerFlags are added to dunlin-controller's.
	ControllerFlags []string
	// ControllerManager also runs kube-controller-manager (EndpointSlices for Services).
	ControllerManager bool
	// Gateway gives every node a plain uplink (NodeOptions.Gateway) that its dunlin-node moves into
	// br-ex, and starts the Outside namespace. Without it dunlin-node runs with --gateway=false.
	Gateway bool
	// APIServerOnNode publishes the apiserver at the first node's IP, as a kubeadm control plane on
	// that node would be: the apiserver advertises it (KubeOptions.AdvertiseAddress), so its endpoint
	// reconciler gives default/kubernetes that endpoint, and the harness relays NodeIP(0):Kube.APIPort
	// inside the node's netns to the apiserver on this machine's loopback. Pods then reach the API
	// through the kubernetes Service, on either node. Without it default/kubernetes has no endpoints.
	APIServerOnNode bool
	// DNS runs CoreDNS as a pod on the last node behind kube-system/kube-dns at ClusterDNSIP
	// (Cluster.StartDNS; Cluster.WaitDNSReady waits for it). It implies APIServerOnNode and
	// ControllerManager. With RealNodes it is a Deployment of two replicas instead, as kubeadm runs it
	// (Cluster.StartCoreDNSDeployment, ready when StartCluster returns), and implies KubeletDNS.
	DNS bool
	// RealNodes gives every node a containerd and a real kubelet (realnode.go) instead of the stand-in
	// kubelet, and runs kube-scheduler and the Deployment controllers. The kubelets register the Nodes.
	RealNodes bool
	// NodeIPAM, with RealNodes, runs kube-controller-manager's nodeipam over the controller's default
	// cluster CIDR, so that the kubelets' Nodes get spec.podCIDR as in kubeadm clusters.
	NodeIPAM bool
	// Containerd is the containerd binary of RealNodes (default: containerd on PATH, Debian's).
	Containerd string
	// With RealNodes: KubeletDNS makes the kubelets give pods ClusterDNSIP and ClusterDomain as their
	// resolver (kubelet clusterDNS, clusterDomain; the caller runs the DNS server); ExtraImages are
	// more image tars every node's containerd imports; KCMControllers replace the kube-controller-
	// manager controllers the real nodes run.
	KubeletDNS     bool
	ExtraImages    []string
	KCMControllers []string
	// ClusterEgress gives the apiserver a way to the kubelets, pods and Services (exec, logs, the
	// proxy subresources): an EgressProxy dialling from the first node's namespace.
	ClusterEgress bool
}

// NodeIP is the IP of the node with index i (StartCluster's node i+1): its encap IP and InternalIP.
func NodeIP(i int) string { return underlayPrefix + strconv.Itoa(10+i) }

// Cluster is OVN central (NB, SB, northd), kube-apiserver, dunlin-controller and simulated nodes, each
// with OVS, ovn-controller, dunlin-node and a stand-in kubelet.
type Cluster struct {
	Dir        string
	Bins       Binaries
	OVN        *OVN
	Kube       *Kube
	Underlay   *Underlay
	Controller *Process
	Nodes      []*ClusterNode
	Outside    *Outside // with ClusterOptions.Gateway
	DNS        *DNS     // with ClusterOptions.DNS
	Images     Images   // with ClusterOptions.RealNodes
	gateway    bool
	realNodes  bool
	podNetns   []string // the pods' netns files seen by Stop, for LeftBehind
	egress     *EgressProxy
	mu         sync.Mutex // guards Nodes for the egress proxy
	encap      string
	ctrlFlags  []string
}

// ClusterNode is one simulated node.
type ClusterNode struct {
	*Node
	Agent    *Process // dunlin-node, inside the node's netns
	Kubelet  *Kubelet
	ConfDir  string
	BinDir   string
	Socket   string
	AgentLog string
	// Containerd and RealKubelet run instead of Kubelet with ClusterOptions.RealNodes.
	Containerd  *Containerd
	RealKubelet *RealKubelet
	// UplinkBefore is LinkState(NodeUplink) before dunlin-node first started, on gateway nodes.
	UplinkBefore string
	forwarder    *Forwarder
	apiRelay     *Forwarder // NodeIP:APIPort to the apiserver, with ClusterOptions.APIServerOnNode
	cluster      *Cluster
}

// StartCluster brings everything up and returns once every node's agent serves CNI requests.
func StartCluster(ctx context.Context, o ClusterOptions) (c *Cluster, err error) {
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.EncapType == "" {
		o.EncapType = "geneve"
	}
	if o.DNS {
		o.APIServerOnNode, o.ControllerManager = true, true
		o.KubeletDNS = o.KubeletDNS || o.RealNodes
	}
	if o.NodeIPAM {
		// As a kubeadm cluster with --pod-network-cidr should be run: every node waits for its podCIDRs.
		o.ControllerFlags = append(slices.Clone(o.ControllerFlags), "--node-subnet-source=pod-cidrs")
	}
	c = &Cluster{Dir: o.Dir, Bins: o.Bins, encap: o.EncapType, ctrlFlags: o.ControllerFlags, gateway: o.Gateway, realNodes: o.RealNodes}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	if c.OVN, err = StartOVN(ctx, OVNOptions{Dir: filepath.Join(o.Dir, "ovn"), WithSB: true}); err != nil {
		return c, err
	}
	ko := KubeOptions{Dir: filepath.Join(o.Dir, "kube"), ControllerManager: o.ControllerManager}
	if o.APIServerOnNode {
		ko.AdvertiseAddress = NodeIP(0)
	}
	var kubeletBin string
	if o.RealNodes {
		ko.ControllerManager, ko.Scheduler = true, true
		ko.KCMControllers = []string{"endpointslice", "serviceaccount", "namespace", "garbagecollector", "deployment", "replicaset",
			// kube-root-ca.crt in every namespace: service-account token volumes (CoreDNS's) mount it.
			"root-ca-cert-publisher",
			// The kubelet registers its Node tainted not-ready; node lifecycle lifts the taint once Ready.
			"nodelifecycle"}
		if len(o.KCMControllers) > 0 {
			ko.KCMControllers = o.KCMControllers
		}
		if o.NodeIPAM {
			ko.ClusterCIDR = translator.DefaultConfig().ClusterCIDR.String()
		}
		var coredns string
		if o.DNS {
			if coredns, err = CoreDNSBinary(); err != nil {
				return c, err
			}
		}
		if c.Images, err = BuildImages(ctx, filepath.Join(o.Dir, "images"), coredns); err != nil {
			return c, err
		}
		if kubeletBin, err = kubeBinDir("kubelet"); err != nil {
			return c, err
		}
	}
	if o.ClusterEgress {
		sock := filepath.Join(o.Dir, "egress.sock")
		c.egress, err = StartEgressProxy(sock, func() string {
			c.mu.Lock()
			defer c.mu.Unlock()
			if len(c.Nodes) == 0 {
				return ""
			}
			return "/var/run/netns/" + c.Nodes[0].Netns
		})
		if err != nil {
			return c, err
		}
		ko.EgressSocket = sock
	}
	if c.Kube, err = StartKube(ctx, ko); err != nil {
		return c, err
	}
	if err := c.StartController(); err != nil {
		return c, err
	}
	if c.Underlay, err = StartUnderlay(ctx, UnderlayOptions{Dir: filepath.Join(o.Dir, "ul")}); err != nil {
		return c, err
	}
	if o.Gateway {
		if c.Outside, err = c.Underlay.StartOutside(ctx); err != nil {
			return c, err
		}
	}
	for i := range o.Nodes {
		name := fmt.Sprintf("node%d", i+1)
		n, err := StartNode(ctx, NodeOptions{Name: name, Index: i, Dir: filepath.Join(o.Dir, name), Underlay: c.Underlay, Gateway: o.Gateway})
		if err != nil {
			return c, err
		}
		cn := &ClusterNode{Node: n, cluster: c,
			ConfDir: filepath.Join(n.Dir, "net.d"), BinDir: filepath.Join(n.Dir, "cnibin"),
			Socket: filepath.Join(n.Dir, "cni", "cni.sock"), AgentLog: filepath.Join(n.Dir, "dunlin-node.log")}
		c.mu.Lock()
		c.Nodes = append(c.Nodes, cn)
		c.mu.Unlock()
		apiAddr := strings.TrimPrefix(c.Kube.Config.Host, "https://")
		if cn.forwarder, err = ForwardInto("/var/run/netns/"+n.Netns, apiAddr); err != nil {
			return c, err
		}
		if o.APIServerOnNode && i == 0 {
			listen := net.JoinHostPort(n.EncapIP, strconv.Itoa(c.Kube.APIPort))
			if cn.apiRelay, err = ForwardAddrInto("/var/run/netns/"+n.Netns, listen, apiAddr); err != nil {
				return c, err
			}
		}
		if o.RealNodes {
			if err := cn.startRealNode(ctx, o, kubeletBin); err != nil {
				return c, err
			}
		} else if err := c.createNode(ctx, name, n.EncapIP); err != nil {
			return c, err
		}
		if o.Gateway {
			if cn.UplinkBefore, err = n.LinkState(ctx, NodeUplink); err != nil {
				return c, err
			}
		}
		if err := cn.StartAgent(ctx); err != nil {
			return c, err
		}
	}
	var peers []string
	for _, n := range c.Nodes {
		peers = append(peers, n.EncapIP)
	}
	for _, n := range c.Nodes {
		if err := n.WaitChassis(ctx, c.OVN, n.Name); err != nil {
			return c, err
		}
		if err := n.PrimeUnderlay(ctx, peers...); err != nil {
			return c, err
		}
		if o.RealNodes {
			if err := n.WaitNodeReady(ctx); err != nil {
				return c, err
			}
			continue
		}
		if n.Kubelet, err = StartKubelet(ctx, KubeletOptions{
			NodeName: n.Name, Client: c.Kube.Client, ConfDir: n.ConfDir, BinDir: n.BinDir,
			CacheDir: filepath.Join(n.Dir, "cnicache"), PodServer: o.Bins.PodServer, Dir: filepath.Join(n.Dir, "pods"),
			Netns: n.Netns,
		}); err != nil {
			return c, err
		}
	}
	switch {
	case o.DNS && o.RealNodes:
		if err := c.StartCoreDNSDeployment(ctx); err != nil {
			return c, err
		}
	case o.DNS:
		if _, err := c.StartDNS(ctx, c.Nodes[len(c.Nodes)-1]); err != nil {
			return c, err
		}
	}
	return c, nil
}

// StartController runs dunlin-controller against the cluster's NB and apiserver.
func (c *Cluster) StartController() error {
	args := append([]string{"--kubeconfig", c.Kube.Kubeconfig, "--nb-address", c.OVN.NBAddr,
		"--metrics-bind-address=", "--leader-elect=false", "-v=2"}, c.ctrlFlags...)
	p, err := StartProcess("dunlin-controller", filepath.Join(c.Dir, "controller.log"), nil, c.Bins.Controller, args...)
	if err != nil {
		return err
	}
	c.Controller = p
	return nil
}

func (c *Cluster) createNode(ctx context.Context, name, ip string) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}},
	}
	nodes := c.Kube.Client.CoreV1().Nodes()
	if _, err := nodes.Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	// The controller annotates the node meanwhile: read, modify, write until no conflict.
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := nodes.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status.Addresses = node.Status.Addresses
		_, err = nodes.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("set node %s status: %w", name, err)
	}
	return nil
}

// StartAgent runs dunlin-node inside the node's netns and waits until it serves CNI requests.
func (n *ClusterNode) StartAgent(ctx context.Context, extra ...string) error {
	p, err := n.StartProcess("dunlin-node "+n.Name, n.AgentLog, nil, n.cluster.Bins.Node, n.agentArgs(extra...)...)
	if err != nil {
		return err
	}
	n.Agent = p
	// Serving once the conflist (written last) and the socket are there.
	return waitReady(ctx, p.p, 60*time.Second, func(context.Context) error {
		for _, f := range []string{filepath.Join(n.ConfDir, "10-dunlin.conflist"), n.Socket} {
			if _, err := os.Stat(f); err != nil {
				return err
			}
		}
		return nil
	})
}

// RunAgent runs dunlin-node with the flags StartAgent gives plus extra (e.g. --cleanup) inside the
// node's netns, with env added to the environment, until it exits; it returns its combined output.
func (n *ClusterNode) RunAgent(ctx context.Context, env []string, extra ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Netns, n.cluster.Bins.Node}, n.agentArgs(extra...)...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("dunlin-node %s on %s: %w", strings.Join(extra, " "), n.Name, err)
	}
	return string(out), nil
}

func (n *ClusterNode) agentArgs(extra ...string) []string {
	c := n.cluster
	return append([]string{
		"--kubeconfig", c.Kube.Kubeconfig,
		"--node-name", n.Name,
		"--ovs-db", n.OVSDB,
		"--sb-address", c.OVN.SBAddr,
		"--encap-type", c.encap,
		"--encap-ip", n.EncapIP,
		"--datapath-type", "netdev",
		"--cni-socket", n.Socket,
		"--cni-conf-dir", n.ConfDir,
		"--cni-bin-dir", n.BinDir,
		"--cni-plugin-source", c.Bins.CNI,
		"--ovn-rundir", n.RunDir,
		"--ovs-rundir", n.RunDir,
		"--gateway=" + strconv.FormatBool(n.Gateway),
		"--metrics-bind-address=",
		"-v=2",
	}, extra...)
}

// StopAgent stops dunlin-node (SIGTERM), leaving OVS, ovn-controller and the pods running.
func (n *ClusterNode) StopAgent() error {
	if n.Agent == nil {
		return nil
	}
	err := n.Agent.Stop()
	n.Agent = nil
	return err
}

// Stop tears everything down; errors are collected, nothing is skipped.
func (c *Cluster) Stop() error {
	var errs []error
	if c.realNodes && c.Kube != nil {
		errs = append(errs, c.drainRealNodes())
	}
	for _, n := range c.Nodes {
		if n.Kubelet != nil {
			errs = append(errs, n.Kubelet.Stop())
		}
		errs = append(errs, n.stopRealNode(), n.StopAgent(), n.forwarder.Stop(), n.apiRelay.Stop(), n.Node.Stop())
	}
	if c.realNodes {
		errs = append(errs, removeStaleShimSockets())
	}
	if c.Underlay != nil {
		errs = append(errs, c.Underlay.Stop())
	}
	if c.Controller != nil {
		errs = append(errs, c.Controller.Stop())
	}
	if c.Kube != nil {
		errs = append(errs, c.Kube.Stop())
	}
	if c.OVN != nil {
		errs = append(errs, c.OVN.Stop())
	}
	errs = append(errs, c.egress.Stop())
	return errors.Join(errs...)
}
