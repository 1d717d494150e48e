package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/nodeagent/ovs"
)

const (
	linkTimeout = 10 * time.Second
	// gatewayResync re-installs the flows and re-checks the annotation this often even without a change:
	// a restarted ovs-vswitchd has lost the flows, and a hand-edited annotation comes back.
	gatewayResync = time.Minute
)

// gateway keeps the gateway bridge's flows and the node's gateway annotation up to date.
type gateway struct {
	a         *Agent
	state     uplinkState
	chassisID string
	services  corelisters.ServiceLister
	synced    cache.InformerSynced
	factory   informers.SharedInformerFactory
	trigger   chan struct{}

	flows     []string // last installed
	published string   // last annotation value written or seen
	announced sync.Once
}

func (a *Agent) newGateway(chassisID string) *gateway {
	f := informers.NewSharedInformerFactory(a.client, 0)
	inf := f.Core().V1().Services()
	g := &gateway{a: a, chassisID: chassisID, services: inf.Lister(), synced: inf.Informer().HasSynced,
		factory: f, trigger: make(chan struct{}, 1)}
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { g.poke() },
		UpdateFunc: func(any, any) { g.poke() },
		DeleteFunc: func(any) { g.poke() },
	})
	return g
}

func (g *gateway) poke() {
	select {
	case g.trigger <- struct{}{}:
	default:
	}
}

// start moves the uplink (or checks it is moved), installs the flows and starts watching Services.
// It returns once the host's addressing lives on the bridge.
func (g *gateway) start(ctx context.Context) error {
	g.factory.Start(ctx.Done())
	// The first flows must already hold the NodePorts: flows without them, even briefly, would
	// drop a restarted agent's NodePort traffic to the host.
	if !cache.WaitForCacheSync(ctx.Done(), g.synced) {
		return fmt.Errorf("service cache did not sync: %w", ctx.Err())
	}
	gs, err := g.a.setUpGateway(ctx, func(ctx context.Context, st uplinkState) error {
		g.state = st
		return g.syncFlows(ctx, true)
	})
	if err != nil {
		return fmt.Errorf("set up the node gateway: %w", err)
	}
	g.state = gs.state
	return nil
}

// announce tells the controller, once, that this node runs the gateway (annotations.FeatureGateway):
// from then on it reports the node while it has no gateway annotation. It is called once the
// annotation is published, or once the set-up failed, so a starting node is never reported.
func (g *gateway) announce(ctx context.Context) {
	g.announced.Do(func() { go g.a.announceFeatures(ctx, annotations.AgentFeatures(true)) })
}

// retryStart reports why the set-up failed (a Warning event on the node, once per distinct error, and a
// log line each attempt) and tries again, backing off, until it succeeds (true) or ctx ends. The uplink
// may appear later (a NIC renamed or brought up by the host's network configuration).
func (g *gateway) retryStart(ctx context.Context, err error) bool {
	logger := klog.FromContext(ctx)
	delay := time.Second
	reported := ""
	for {
		reason := reasonGatewayFailed
		if uplinkMissing(err) {
			reason = reasonUplinkMissing
		}
		msg := fmt.Sprintf("%v (retrying; the node's pods work meanwhile, but get no egress through this node "+
			"and its NodePorts do not answer)", err)
		if msg != reported {
			g.a.warnNode(ctx, reason, msg)
			reported = msg
		}
		g.announce(ctx)
		logger.Error(err, "Node gateway not set up, retrying", "reason", reason, "retryIn", delay)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
		if err = g.start(ctx); err == nil {
			logger.Info("Node gateway set up after earlier failures", "uplink", g.state.Interface)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
	}
}

// run keeps flows and annotation in sync until ctx ends. startErr is the first set-up's failure, if
// any: the set-up is retried first.
func (g *gateway) run(ctx context.Context, startErr error) {
	logger := klog.FromContext(ctx)
	if startErr != nil && !g.retryStart(ctx, startErr) {
		return
	}
	ports, unsubscribe := g.a.ovs.SubscribePorts()
	defer unsubscribe()
	// Address changes wake the loop: a restarted ovs-vswitchd recreates br-ex's device without them.
	addrs := make(chan netlink.AddrUpdate, 16)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{ErrorCallback: func(err error) {
		logger.Error(err, "Address change notifications failed; relying on the periodic check")
	}}); err != nil {
		logger.Error(err, "Cannot subscribe to address changes; relying on the periodic check")
	}
	ticker := time.NewTicker(gatewayResync)
	defer ticker.Stop()
	delay := time.Second
	force := true
	for {
		err := g.ensureAddressing(ctx)
		if err == nil {
			err = g.syncFlows(ctx, force)
		}
		if err == nil {
			err = g.publish(ctx, force)
		}
		if err == nil {
			g.announce(ctx)
		}
		var retry <-chan time.Time
		switch {
		case err != nil && ctx.Err() == nil:
			logger.Error(err, "Node gateway not in sync, retrying", "retryIn", delay)
			retry = time.After(delay)
			delay = min(2*delay, 30*time.Second)
		default:
			delay = time.Second
		}
		force = false
		select {
		case <-ctx.Done():
			return
		case <-g.trigger:
		case <-ports:
		case _, ok := <-addrs:
			if !ok { // the subscription failed (logged): the periodic check remains
				addrs = nil
			}
		case <-retry:
			force = true
		case <-ticker.C:
			force = true
		}
	}
}

// params gathers what the flows depend on now. The uplink must have its OpenFlow port.
func (g *gateway) params() (gatewayFlowParams, error) {
	p := gatewayFlowParams{EncapPort: 6081}
	if g.a.cfg.EncapType == "vxlan" {
		p.EncapPort = 4789
	}
	for _, port := range g.a.ovs.BridgePorts(GatewayBridge) {
		switch {
		case port.Name == g.state.Interface:
			p.Uplink = port.OFPort
		case port.Type == "patch" && port.OFPort > 0:
			if p.Patch != 0 {
				return p, fmt.Errorf("%s has more than one patch port (%s too): check ovn-bridge-mappings", GatewayBridge, port.Name)
			}
			p.Patch = port.OFPort
		}
	}
	if p.Uplink <= 0 {
		return p, fmt.Errorf("uplink %s has no OpenFlow port on %s yet", g.state.Interface, GatewayBridge)
	}
	for _, s := range g.state.Addresses {
		if pr, err := netip.ParsePrefix(s); err == nil {
			p.NodeAddrs = append(p.NodeAddrs, pr.Addr().Unmap())
		}
	}
	svcs, err := g.services.List(labels.Everything())
	if err != nil {
		return p, fmt.Errorf("list services: %w", err)
	}
	for _, svc := range svcs {
		p.Targets = append(p.Targets, serviceTargets(svc, p.NodeAddrs)...)
	}
	return p, nil
}

// syncFlows installs the flows when they differ from the last installed, or always with force.
func (g *gateway) syncFlows(ctx context.Context, force bool) error {
	var p gatewayFlowParams
	err := waitFor(ctx, linkTimeout, g.a.ovs, func() error {
		var err error
		p, err = g.params()
		return err
	})
	if err != nil {
		return err
	}
	flows := gatewayFlows(p)
	if !force && slices.Equal(flows, g.flows) {
		return nil
	}
	if err := replaceFlows(ctx, g.a.cfg.OVSRunDir, GatewayBridge, flows); err != nil {
		return err
	}
	if !slices.Equal(flows, g.flows) {
		klog.FromContext(ctx).Info("Installed gateway bridge flows", "bridge", GatewayBridge, "flows", len(flows),
			"uplinkPort", p.Uplink, "patchPort", p.Patch, "targets", len(p.Targets))
	}
	g.flows = flows
	return nil
}

// waitFor retries check on every OVS port change until it succeeds or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cli *ovs.Client, check func() error) error {
	changed, unsubscribe := cli.SubscribePorts()
	defer unsubscribe()
	deadline := time.After(timeout)
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-deadline:
			return err
		case <-changed:
		case <-time.After(time.Second):
		}
	}
}

// publish writes the node's gateway annotation when what the bridge shows differs from what was last
// written; with force it compares with the Node itself.
func (g *gateway) publish(ctx context.Context, force bool) error {
	bridge, err := netlink.LinkByName(GatewayBridge)
	if err != nil {
		return fmt.Errorf("gateway bridge device: %w", err)
	}
	info, err := gatewayInfo(bridge, g.state.Interface, g.chassisID)
	if err != nil {
		return err
	}
	if len(info.IPAddresses) == 0 {
		return fmt.Errorf("%s holds no address yet", GatewayBridge)
	}
	val := info.Marshal()
	if force || g.published == "" {
		node, err := g.a.client.CoreV1().Nodes().Get(ctx, g.a.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read node %s: %w", g.a.cfg.NodeName, err)
		}
		g.published = node.Annotations[annotations.NodeGateway]
	}
	if val == g.published {
		return nil
	}
	if err := patchNodeAnnotation(ctx, g.a.client, g.a.cfg.NodeName, annotations.NodeGateway, &val); err != nil {
		return err
	}
	g.published = val
	klog.FromContext(ctx).Info("Published the node gateway", "annotation", annotations.NodeGateway, "value", val)
	return nil
}

// patchNodeAnnotation sets (val nil: removes) one annotation of the node with a merge patch, which
// touches no other field.
func patchNodeAnnotation(ctx context.Context, client kubernetes.Interface, node, key string, val *string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]*string{key: val}}})
	if err != nil {
		return err
	}
	_, err = client.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "dunlin-node"})
	if err != nil {
		return fmt.Errorf("patch node %s annotation %s: %w", node, key, err)
	}
	return nil
}

// RemoveGatewayAnnotation removes the node's gateway annotation and the gateway from its announced
// features (for --cleanup: the controller no longer expects a gateway there); a missing node or
// annotation is fine.
func RemoveGatewayAnnotation(ctx context.Context, client kubernetes.Interface, node string) error {
	n, err := client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read node %s: %w", node, err)
	}
	if annotations.HasFeature(n, annotations.FeatureGateway) {
		features := annotations.WithoutFeature(n.Annotations[annotations.NodeFeatures], annotations.FeatureGateway)
		if err := patchNodeAnnotation(ctx, client, node, annotations.NodeFeatures, &features); err != nil {
			return err
		}
	}
	if _, ok := n.Annotations[annotations.NodeGateway]; !ok {
		return nil
	}
	return patchNodeAnnotation(ctx, client, node, annotations.NodeGateway, nil)
}

// ensureAddressing puts the recorded addresses and routes back on br-ex when it lost any: ovs-vswitchd
// recreates the device of a userspace bridge when it restarts, and someone may flush it by hand.
func (g *gateway) ensureAddressing(ctx context.Context) error {
	bridge, err := netlink.LinkByName(GatewayBridge)
	if err != nil {
		return fmt.Errorf("gateway bridge device: %w", err)
	}
	have, err := netlink.AddrList(bridge, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", GatewayBridge, err)
	}
	missing := slices.ContainsFunc(g.state.Addresses, func(want string) bool {
		return !slices.ContainsFunc(have, func(a netlink.Addr) bool { return a.IPNet.String() == want })
	})
	if !missing && bridge.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	klog.FromContext(ctx).Info("The gateway bridge lost its addressing (ovs-vswitchd restarted?): putting it back",
		"bridge", GatewayBridge, "addresses", g.state.Addresses)
	uplink, err := netlink.LinkByName(g.state.Interface)
	if err != nil {
		return fmt.Errorf("uplink %s: %w", g.state.Interface, err)
	}
	if err := g.a.prepareBridgeLink(bridge, g.state); err != nil {
		return err
	}
	return moveAddressing(uplink, bridge, g.state.Addresses, g.state.Routes, func(string) {})
}
