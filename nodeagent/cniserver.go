package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"

	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/cni"
	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/nodeagent/ovs"
)

// Interface external_ids dunlin-node sets on the OVS port of a pod, besides iface-id (what ovn-controller
// binds to the logical switch port).
const (
	ExtIfaceID   = "iface-id"
	ExtPodUID    = "dunlin.io/pod-uid"
	ExtSandboxID = "dunlin.io/sandbox-id"
	ExtIfName    = "dunlin.io/ifname"
	ExtNetns     = "dunlin.io/netns"
	extInstalled = "ovn-installed"
)

const maxRequestBytes = 1 << 20

func (a *Agent) cniHandler(base context.Context) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /cni", func(w http.ResponseWriter, r *http.Request) {
		var req cni.Request
		var resp cni.Response
		body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBytes))
		if err == nil {
			err = json.Unmarshal(body, &req)
		}
		if err != nil {
			resp.Error = cnitypes.NewError(cnitypes.ErrDecodingFailure, "malformed request from dunlin-cni", err.Error())
		} else {
			// A request outlives neither the agent nor the plugin that waits for it.
			ctx, cancel := context.WithCancel(klog.NewContext(r.Context(), klog.FromContext(base)))
			stop := context.AfterFunc(base, cancel)
			resp.Result, err = a.serve(ctx, req)
			stop()
			cancel()
			if err != nil {
				resp.Error = cni.ErrorOf(err)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	})
	return mux
}

// serve runs one CNI command.
func (a *Agent) serve(ctx context.Context, req cni.Request) (out []byte, err error) {
	start := time.Now()
	defer func() { a.metrics.observe(req.Command, time.Since(start).Seconds(), err) }()
	conf, err := cni.ParseNetConf(req.Config)
	if err != nil {
		return nil, cnitypes.NewError(cnitypes.ErrDecodingFailure, "cannot parse the network configuration", err.Error())
	}
	switch req.Command {
	case "GC":
		return nil, a.cmdGC(ctx, conf)
	case "STATUS":
		return nil, a.cmdStatus(ctx)
	}
	if req.ContainerID == "" || req.IfName == "" {
		return nil, cnitypes.NewError(cnitypes.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_CONTAINERID (%q) and CNI_IFNAME (%q) are required", req.ContainerID, req.IfName), "")
	}
	pa, err := cni.ParsePodArgs(req.ContainerID, req.Args)
	if err != nil {
		if req.Command != "DEL" {
			return nil, err
		}
		// DEL needs no pod: failing it would leave the attachment behind for ever.
		klog.FromContext(ctx).Info("Ignoring malformed CNI_ARGS for DEL", "container", req.ContainerID, "err", err)
	}
	unlock, err := a.locks.lock(ctx, HostIfName(req.ContainerID, req.IfName), req.ContainerID)
	if err != nil {
		return nil, fmt.Errorf("waiting for the previous command of container %s: %w", req.ContainerID, err)
	}
	defer unlock()
	switch req.Command {
	case "ADD":
		return a.cmdAdd(ctx, req, conf, pa)
	case "DEL":
		return nil, a.cmdDel(ctx, req)
	case "CHECK":
		return nil, a.cmdCheck(ctx, req, pa)
	default:
		return nil, cnitypes.NewError(cnitypes.ErrInvalidEnvironmentVariables, fmt.Sprintf("unknown CNI_COMMAND %q", req.Command), "")
	}
}

// requirePod fails a command that needs the pod when CNI_ARGS does not name it.
func requirePod(req cni.Request, pa cni.PodArgs) error {
	if pa.Namespace == "" || pa.Name == "" {
		return cnitypes.NewError(cnitypes.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_ARGS of container %s lacks K8S_POD_NAMESPACE or K8S_POD_NAME", req.ContainerID),
			"dunlin-cni plumbs Kubernetes pods only: the runtime (or cnitool's CNI_ARGS) must name the pod")
	}
	return nil
}

func (a *Agent) cmdAdd(ctx context.Context, req cni.Request, conf *cni.NetConf, pa cni.PodArgs) ([]byte, error) {
	logger := klog.FromContext(ctx)
	start := time.Now()
	if err := requirePod(req, pa); err != nil {
		return nil, err
	}
	podKey := pa.Key()
	if req.Netns == "" {
		return nil, cnitypes.NewError(cnitypes.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("CNI_NETNS is required for ADD (pod %s, container %s)", podKey, req.ContainerID), "")
	}
	waitCtx, cancel := context.WithTimeout(ctx, a.cfg.PodNetworkTimeout)
	pod, info, err := a.pods.podNetwork(waitCtx, pa.Namespace, pa.Name, pa.UID)
	cancel()
	if err != nil {
		return nil, err
	}
	tNetwork := time.Since(start)
	att, err := a.attachmentFor(req, info)
	if err != nil {
		return nil, cnitypes.NewError(cnitypes.ErrInvalidNetworkConfig, fmt.Sprintf("pod %s: %v", podKey, err), "")
	}
	ifaceID := conventions.PodPortName(pa.Namespace, pa.Name)

	// A sandbox of the same pod that was never deleted would compete for the logical port.
	for _, p := range a.ovs.PortsByIfaceID(ifaceID) {
		if p.Name == att.HostIf {
			continue
		}
		logger.Info("Removing stale OVS port of the same pod", "pod", podKey, "port", p.Name, "sandbox", p.ExternalIDs[ExtSandboxID])
		if err := a.detach(ctx, p.Name, p.ExternalIDs[ExtNetns], p.ExternalIDs[ExtIfName]); err != nil {
			return nil, fmt.Errorf("remove stale port %s of pod %s: %w", p.Name, podKey, err)
		}
	}

	// A repeated ADD of this container recreates the veth: its old OVS port (and the ovn-installed mark
	// ovn-controller put on it) must go first, or the mark of the old device would be taken as done.
	if _, ok := a.ovs.Port(att.HostIf); ok {
		if err := a.ovs.DeletePort(ctx, att.HostIf); err != nil {
			return nil, fmt.Errorf("remove previous port %s of pod %s: %w", att.HostIf, podKey, err)
		}
		if err := a.ovs.WaitGone(ctx, att.HostIf); err != nil {
			return nil, err
		}
	}
	hostMAC, err := plumb(att)
	if err != nil {
		return nil, fmt.Errorf("plumb pod %s: %w", podKey, err)
	}
	uid := string(pod.UID) // podNetwork checked it against K8S_POD_UID
	err = a.ovs.AddPort(ctx, ovs.PortSpec{Bridge: a.cfg.Bridge, Name: att.HostIf, ExternalIDs: map[string]string{
		ExtIfaceID: ifaceID,
		// ovn-controller binds the port only while this matches the logical port's iface-id-ver.
		conventions.IfaceIDVer: uid,
		ExtPodUID:              uid,
		ExtSandboxID:           req.ContainerID,
		ExtIfName:              req.IfName,
		ExtNetns:               req.Netns,
	}})
	if err != nil {
		a.undo(ctx, att)
		return nil, fmt.Errorf("add OVS port %s for pod %s to %s: %w", att.HostIf, podKey, a.cfg.Bridge, err)
	}
	tPlumbed := time.Since(start)

	instCtx, cancel := context.WithTimeout(ctx, a.cfg.OVNInstalledTimeout)
	err = a.ovs.WaitInstalled(instCtx, att.HostIf)
	cancel()
	if err != nil {
		a.undo(ctx, att)
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return nil, cnitypes.NewError(cni.ErrOVNInstallTimeout,
				fmt.Sprintf("ovn-controller did not install port %s (logical port %s) within %s", att.HostIf, ifaceID, a.cfg.OVNInstalledTimeout),
				fmt.Sprintf("check that ovn-controller runs on this node and is connected to the southbound DB, and that logical switch port %s exists in NB with no options:%s other than the pod UID %s",
					ifaceID, conventions.IfaceIDVer, uid))
		}
		return nil, fmt.Errorf("wait for ovn-controller to install %s: %w", att.HostIf, err)
	}
	total := time.Since(start)
	a.metrics.phase.WithLabelValues("pod_network").Observe(tNetwork.Seconds())
	a.metrics.phase.WithLabelValues("plumbing").Observe((tPlumbed - tNetwork).Seconds())
	a.metrics.phase.WithLabelValues("ovn_installed").Observe((total - tPlumbed).Seconds())
	logger.Info("CNI ADD", "pod", podKey, "container", req.ContainerID, "port", att.HostIf, "ip", att.Addr,
		"podNetworkWait", tNetwork, "plumbing", tPlumbed-tNetwork, "ovnInstalledWait", total-tPlumbed, "total", total)

	return addResult(conf.CNIVersion, att, hostMAC)
}

// detach removes an attachment's OVS port and veth; whatever is already gone counts as removed. netns
// and ifName may be empty when unknown: the veth's host end takes its peer with it anyway.
func (a *Agent) detach(ctx context.Context, hostIf, netns, ifName string) error {
	if err := a.ovs.DeletePort(ctx, hostIf); err != nil {
		return fmt.Errorf("delete OVS port %s: %w", hostIf, err)
	}
	return unplumb(hostIf, netns, ifName)
}

// undo removes a half-made attachment after a failed ADD, so that nothing stray is left.
func (a *Agent) undo(ctx context.Context, att attachment) {
	if err := a.detach(context.WithoutCancel(ctx), att.HostIf, att.Netns, att.IfName); err != nil {
		klog.FromContext(ctx).Error(err, "Cleaning up after failed ADD", "port", att.HostIf)
	}
}

func (a *Agent) attachmentFor(req cni.Request, info annotations.PodNetworkInfo) (attachment, error) {
	mac, err := net.ParseMAC(info.MACAddress)
	if err != nil {
		return attachment{}, fmt.Errorf("MAC %q: %w", info.MACAddress, err)
	}
	addr, ok := info.IPv4()
	if !ok {
		return attachment{}, fmt.Errorf("no IPv4 address in %v", info.IPAddresses)
	}
	var gw netip.Addr
	for _, g := range info.Gateways() {
		if g.Is4() {
			gw = g
		}
	}
	if !gw.IsValid() {
		return attachment{}, fmt.Errorf("no IPv4 gateway in %v", info.GatewayIPs)
	}
	att := attachment{
		ContainerID:   req.ContainerID,
		Netns:         req.Netns,
		IfName:        req.IfName,
		HostIf:        HostIfName(req.ContainerID, req.IfName),
		MAC:           mac,
		Addr:          addr,
		Gateway:       gw,
		MTU:           a.cfg.MTU,
		TxChecksumOff: a.cfg.DatapathType == "netdev",
	}
	if info.MTU > 0 {
		att.MTU = info.MTU
	}
	for _, r := range info.Routes {
		dst, err := netip.ParsePrefix(r.Dest)
		if err != nil {
			return attachment{}, fmt.Errorf("route destination %q: %w", r.Dest, err)
		}
		rt := route{Dst: dst}
		if r.NextHop != "" {
			if rt.NextHop, err = netip.ParseAddr(r.NextHop); err != nil {
				return attachment{}, fmt.Errorf("route next hop %q: %w", r.NextHop, err)
			}
		}
		att.Routes = append(att.Routes, rt)
	}
	return att, nil
}

func addResult(cniVersion string, att attachment, hostMAC net.HardwareAddr) ([]byte, error) {
	gw := net.IP(att.Gateway.AsSlice())
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: att.HostIf, Mac: hostMAC.String()},
			{Name: att.IfName, Mac: att.MAC.String(), Mtu: att.MTU, Sandbox: att.Netns},
		},
		IPs:    []*current.IPConfig{{Interface: current.Int(1), Address: *prefixToIPNet(att.Addr), Gateway: gw}},
		Routes: []*cnitypes.Route{{Dst: net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, GW: gw}},
	}
	for _, r := range att.Routes {
		rt := &cnitypes.Route{Dst: *prefixToIPNet(r.Dst)}
		if r.NextHop.IsValid() {
			rt.GW = net.IP(r.NextHop.AsSlice())
		}
		res.Routes = append(res.Routes, rt)
	}
	if cniVersion == "" {
		cniVersion = current.ImplementedSpecVersion
	}
	versioned, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return nil, cnitypes.NewError(cnitypes.ErrIncompatibleCNIVersion, fmt.Sprintf("cannot express the result in cniVersion %s", cniVersion), err.Error())
	}
	return json.Marshal(versioned)
}

// cmdDel removes the OVS port and the veth of the attachment. Whatever is already gone counts as removed.
func (a *Agent) cmdDel(ctx context.Context, req cni.Request) error {
	hostIf := HostIfName(req.ContainerID, req.IfName)
	if err := a.detach(ctx, hostIf, req.Netns, req.IfName); err != nil {
		return err
	}
	klog.FromContext(ctx).V(2).Info("CNI DEL", "container", req.ContainerID, "port", hostIf, "args", req.Args)
	return nil
}

// cmdCheck verifies that the attachment is still as ADD made it, for the pod CNI_ARGS names.
func (a *Agent) cmdCheck(ctx context.Context, req cni.Request, pa cni.PodArgs) error {
	if err := requirePod(req, pa); err != nil {
		return err
	}
	podKey := pa.Key()
	pod, ok := a.pods.pod(pa.Namespace, pa.Name)
	switch {
	case !ok:
		return cnitypes.NewError(cni.ErrPodNotFound, fmt.Sprintf("pod %s is not known on node %s", podKey, a.cfg.NodeName), "")
	case pa.UID != "" && string(pod.UID) != pa.UID:
		return cnitypes.NewError(cni.ErrPodUIDMismatch, fmt.Sprintf("pod %s has UID %s, the runtime asked for UID %s", podKey, pod.UID, pa.UID),
			"the sandbox belongs to a pod that was deleted and recreated with the same name")
	}
	info, err := annotations.ParsePodNetwork(pod.Annotations[annotations.PodNetwork])
	if err != nil {
		return cnitypes.NewError(cnitypes.ErrInvalidNetworkConfig, fmt.Sprintf("pod %s network annotation", podKey), err.Error())
	}
	att, err := a.attachmentFor(req, info)
	if err != nil {
		return err
	}
	ifaceID := conventions.PodPortName(pa.Namespace, pa.Name)
	port, ok := a.ovs.Port(att.HostIf)
	switch {
	case !ok:
		return fmt.Errorf("OVS port %s of pod %s is missing", att.HostIf, podKey)
	case port.ExternalIDs[ExtIfaceID] != ifaceID:
		return fmt.Errorf("OVS port %s has iface-id %q, want %q", att.HostIf, port.ExternalIDs[ExtIfaceID], ifaceID)
	case port.ExternalIDs[conventions.IfaceIDVer] != string(pod.UID):
		return fmt.Errorf("OVS port %s of pod %s has %s %q, want the pod UID %s", att.HostIf, podKey,
			conventions.IfaceIDVer, port.ExternalIDs[conventions.IfaceIDVer], pod.UID)
	case port.ExternalIDs[extInstalled] != "true":
		return fmt.Errorf("OVS port %s is not marked ovn-installed by ovn-controller", att.HostIf)
	}
	return checkPlumbing(att)
}

// cmdGC removes the OVS ports and veths of attachments the runtime no longer lists as valid. It never
// waits for other commands: attachments with a command in flight, or one since the GC began, are left
// for the next GC (see attachLocks); each of the others is removed under its own lock.
func (a *Agent) cmdGC(ctx context.Context, conf *cni.NetConf) error {
	logger := klog.FromContext(ctx)
	gc := a.locks.beginGC()
	defer a.locks.endGC(gc)
	valid := map[string]bool{}
	for _, v := range conf.ValidAttachments {
		valid[HostIfName(v.ContainerID, v.IfName)] = true
	}
	var errs []error
	removed, skipped := 0, 0
	// remove runs del under the attachment's lock, unless GC must leave the attachment alone.
	remove := func(hostIf, container string, del func() error) bool {
		unlock := a.locks.tryGC(gc, hostIf, container)
		if unlock == nil {
			skipped++
			return false
		}
		defer unlock()
		if err := del(); err != nil {
			errs = append(errs, err)
			return false
		}
		return true
	}
	for _, p := range a.ovs.PortsWithExternalID(ExtSandboxID) {
		if valid[p.Name] {
			continue
		}
		if remove(p.Name, p.ExternalIDs[ExtSandboxID], func() error {
			return a.detach(ctx, p.Name, p.ExternalIDs[ExtNetns], p.ExternalIDs[ExtIfName])
		}) {
			removed++
			logger.Info("GC removed OVS port", "port", p.Name, "iface-id", p.ExternalIDs[ExtIfaceID], "sandbox", p.ExternalIDs[ExtSandboxID])
		}
	}
	links, err := ourHostLinks()
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		if !valid[l] && remove(l, "", func() error { return deleteLink(l) }) {
			logger.Info("GC removed veth", "link", l)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("GC: %w", err)
	}
	logger.V(2).Info("CNI GC", "valid", len(valid), "removedPorts", removed, "skippedInFlight", skipped)
	return nil
}

// cmdStatus reports whether this node can serve ADDs, judging only what is local to the node. A
// runtime turns a failed STATUS into NetworkReady=false: the node goes NotReady and, after a while, its
// pods are evicted (NoExecute). So a fault every node shares must not fail it.
//
//   - The local OVS database: dunlin-node plumbs nothing without it.
//   - ovn-controller answering on its control socket: a per-node daemon (a process on this node,
//     restarted by its own supervisor) without which no port here is ever marked ovn-installed, so every
//     ADD here would fail. Its absence is this node's fault alone.
//   - Not ovn-controller's southbound connection: an SB outage (or leader election) cuts every node at
//     once while running pods keep their flows, and failing STATUS then would make all nodes NotReady
//     together and evict the cluster's pods over a central fault. ADDs wait for SB meanwhile (and fail
//     with code 102 when that takes too long), and the runtime retries them.
func (a *Agent) cmdStatus(ctx context.Context) error {
	if !a.ovs.Connected() {
		return cnitypes.NewError(cnitypes.ErrPluginNotAvailable, "dunlin-node is not connected to the local OVS database",
			"check that ovsdb-server runs and that --ovs-db ("+a.cfg.OVSDB+") is right")
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	status, err := ovnControllerStatus(sctx, a.cfg.OVNRunDir)
	if err != nil {
		return cnitypes.NewError(cnitypes.ErrPluginNotAvailable, "ovn-controller is not reachable", err.Error())
	}
	if status != "connected" {
		klog.FromContext(ctx).V(2).Info("STATUS ready although ovn-controller is not connected to the southbound database",
			"connectionStatus", status, "sb", a.cfg.SBAddress)
	}
	return nil
}
