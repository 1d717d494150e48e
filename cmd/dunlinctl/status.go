package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/ovsdbrows"
)

// NB_Global external_ids keys of the controller (translator/nbstore: WriterKey, CommitKey).
const (
	writerKey = "dunlin.io/writer"
	commitKey = "dunlin.io/commit"
	syncedKey = "dunlin.io/synced"
)

type statusReport struct {
	NB         dbStatus         `json:"nb"`
	SB         dbStatus         `json:"sb"`
	Northd     northdStatus     `json:"northd"`
	Controller controllerStatus `json:"controller"`
	Nodes      []nodeStatus     `json:"nodes"`
	// Chassis registered in SB that are no Kubernetes node (another cloud's hypervisors, or a stale one).
	ChassisWithoutNode []chassisInfo `json:"chassisWithoutNode"`
	Problems           []string      `json:"problems"`
}

type dbStatus struct {
	Addresses     string             `json:"addresses"`
	Reachable     bool               `json:"reachable"`
	Error         string             `json:"error,omitempty"`
	SchemaVersion string             `json:"schemaVersion,omitempty"`
	Leader        string             `json:"leader,omitempty"`
	Members       []ovsdbrows.Member `json:"members,omitempty"`
}

type northdStatus struct {
	Active bool   `json:"active"`
	Detail string `json:"detail"`
	NBCfg  int    `json:"nbCfg"`
	SBCfg  int    `json:"sbCfg"`
	HVCfg  int    `json:"hvCfg"`
}

type controllerStatus struct {
	LeaseHolder  string     `json:"leaseHolder,omitempty"`
	LeaseRenewed *time.Time `json:"leaseRenewed,omitempty"`
	NBWriter     string     `json:"nbWriter,omitempty"`
	LastCommit   string     `json:"lastCommit,omitempty"`
	// LastSync is when the controller last drained its work after reconciling every object.
	LastSync *time.Time `json:"lastSync,omitempty"`
}

type chassisInfo struct {
	Name       string   `json:"name"`
	Hostname   string   `json:"hostname"`
	Encaps     []string `json:"encaps"` // "geneve 192.0.2.11"
	BoundPorts int      `json:"boundPorts"`
}

type nodeStatus struct {
	Name    string       `json:"name"`
	Subnet  string       `json:"subnet"`
	Chassis *chassisInfo `json:"chassis"`
	Agent   string       `json:"agent"`
	Gateway bool         `json:"gateway"`
}

func (e *env) status(ctx context.Context) error {
	r := statusReport{}
	kube, kerr := e.kubeClient(ctx)
	nb, nerr := e.connectNB(ctx)
	defer nb.close()
	sb, serr := e.connectSB(ctx)
	defer sb.close()
	r.NB, r.SB = dbReport(nb, nerr), dbReport(sb, serr)
	for _, err := range []error{kerr, nerr, serr} {
		if err != nil {
			r.Problems = append(r.Problems, oneLine(err.Error()))
		}
	}
	var global ovsdbrows.Row
	if nb != nil && nb.c != nil {
		if rows, err := nb.c.Select("NB_Global", nil); err == nil && len(rows) > 0 {
			global = rows[0]
			ids := global.Map("external_ids")
			r.Controller.NBWriter, _, _ = strings.Cut(ids[writerKey], "/")
			r.Controller.LastCommit = ids[commitKey]
			if t, err := time.Parse(time.RFC3339, ids[syncedKey]); err == nil {
				r.Controller.LastSync = &t
			}
		}
	}
	var sbState *sbState
	if sb != nil && sb.c != nil {
		var err error
		if sbState, err = readSB(sb.c); err != nil {
			r.Problems = append(r.Problems, oneLine(err.Error()))
		}
	}
	if global != nil && sbState != nil {
		r.Northd = northd(nb.c, global, sbState)
		if !r.Northd.Active {
			r.Problems = append(r.Problems, "ovn-northd: "+r.Northd.Detail)
		}
	} else {
		r.Northd.Detail = "unknown: NB and SB must both be read"
	}
	if kerr == nil {
		e.kubeStatus(ctx, kube, &r, sbState)
	}
	// The apiserver's error comes back through every address lookup that needed the ConfigMap.
	r.Problems = slices.Compact(r.Problems)
	if e.json() {
		if err := e.printJSON(r); err != nil {
			return err
		}
	} else {
		e.printStatus(r)
	}
	if kerr != nil || nerr != nil || serr != nil {
		return errors.New(r.Problems[0])
	}
	return nil
}

func dbReport(d *database, err error) dbStatus {
	s := dbStatus{}
	if d == nil {
		s.Error = oneLine(err.Error())
		return s
	}
	s.Addresses, s.Members, s.SchemaVersion = d.addresses, d.members, d.version
	s.Reachable = d.c != nil
	if err != nil {
		s.Error = oneLine(err.Error())
	}
	for _, m := range d.members {
		if m.Leader && m.Model == "clustered" {
			s.Leader = m.Endpoint
		}
	}
	return s
}

// sbState is what status needs of SB.
type sbState struct {
	chassis     []ovsdbrows.Row
	encaps      map[string]ovsdbrows.Row
	bindings    []ovsdbrows.Row
	datapaths   map[string]bool // NB logical switch and router UUIDs with a Datapath_Binding
	sbGlobalCfg int
}

func readSB(c *ovsdbrows.Client) (*sbState, error) {
	res, err := c.Transact(
		ovsdbrows.SelectOp("Chassis", nil, "_uuid", "name", "hostname", "encaps"),
		ovsdbrows.SelectOp("Encap", nil, "_uuid", "type", "ip"),
		ovsdbrows.SelectOp("Port_Binding", nil, "logical_port", "chassis", "up"),
		ovsdbrows.SelectOp("Datapath_Binding", nil, "external_ids"),
		ovsdbrows.SelectOp("SB_Global", nil, "nb_cfg"),
	)
	if err != nil {
		return nil, fmt.Errorf("read SB: %w", err)
	}
	s := &sbState{chassis: res[0], encaps: map[string]ovsdbrows.Row{}, bindings: res[2], datapaths: map[string]bool{}}
	for _, r := range res[1] {
		s.encaps[r.UUID()] = r
	}
	for _, r := range res[3] {
		ids := r.Map("external_ids")
		for _, k := range []string{"logical-switch", "logical-router"} {
			if ids[k] != "" {
				s.datapaths[ids[k]] = true
			}
		}
	}
	if len(res[4]) > 0 {
		s.sbGlobalCfg = res[4][0].Int("nb_cfg")
	}
	return s, nil
}

// northd says whether ovn-northd has processed NB, read-only: every NB logical switch and router has its
// SB Datapath_Binding, every NB logical switch port its Port_Binding, and the last nb_cfg an NB client
// asked to be synced (ovn-nbctl --wait) has been copied to SB_Global and NB_Global.sb_cfg. Only a
// running northd connected to both databases does that; a stopped one leaves new rows without SB
// counterparts. It cannot tell an idle standby northd from none: that takes its unixctl socket.
func northd(nb *ovsdbrows.Client, global ovsdbrows.Row, sb *sbState) northdStatus {
	s := northdStatus{NBCfg: global.Int("nb_cfg"), SBCfg: global.Int("sb_cfg"), HVCfg: global.Int("hv_cfg")}
	res, err := nb.Transact(
		ovsdbrows.SelectOp("Logical_Switch", nil, "_uuid"),
		ovsdbrows.SelectOp("Logical_Router", nil, "_uuid"),
		ovsdbrows.SelectOp("Logical_Switch_Port", nil, "name"),
	)
	if err != nil {
		s.Detail = oneLine(err.Error())
		return s
	}
	missingDP := 0
	for _, r := range append(res[0], res[1]...) {
		if !sb.datapaths[r.UUID()] {
			missingDP++
		}
	}
	bound := map[string]bool{}
	for _, b := range sb.bindings {
		bound[b.String("logical_port")] = true
	}
	missingPorts := 0
	for _, r := range res[2] {
		if !bound[r.String("name")] {
			missingPorts++
		}
	}
	nDP, nPorts := len(res[0])+len(res[1]), len(res[2])
	switch {
	case missingDP > 0 || missingPorts > 0:
		s.Detail = fmt.Sprintf("%d of %d NB datapaths and %d of %d NB switch ports have nothing in SB yet: is ovn-northd running and connected to both databases?",
			missingDP, nDP, missingPorts, nPorts)
	case s.SBCfg < s.NBCfg:
		s.Detail = fmt.Sprintf("NB_Global nb_cfg %d not yet processed (sb_cfg %d)", s.NBCfg, s.SBCfg)
	default:
		s.Active = true
		s.Detail = fmt.Sprintf("SB holds all %d NB datapaths and %d switch ports; nb_cfg %d processed", nDP, nPorts, s.NBCfg)
	}
	return s
}

func (e *env) kubeStatus(ctx context.Context, kube kubeInterface, r *statusReport, sb *sbState) {
	lease, err := kube.CoordinationV1().Leases(e.o.leaseNamespace).Get(ctx, "dunlin-controller", metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		r.Controller.LeaseHolder = "(no Lease " + e.o.leaseNamespace + "/dunlin-controller: leader election off?)"
	case err != nil:
		r.Problems = append(r.Problems, "Lease: "+oneLine(err.Error()))
	default:
		if lease.Spec.HolderIdentity != nil {
			r.Controller.LeaseHolder = *lease.Spec.HolderIdentity
		}
		if lease.Spec.RenewTime != nil {
			t := lease.Spec.RenewTime.Time
			r.Controller.LeaseRenewed = &t
		}
	}
	nodes, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		r.Problems = append(r.Problems, "list nodes: "+oneLine(err.Error()))
		return
	}
	agents := map[string]*corev1.Pod{}
	if pods, err := kube.CoreV1().Pods(e.o.configNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=dunlin-node"}); err == nil {
		for i := range pods.Items {
			agents[pods.Items[i].Spec.NodeName] = &pods.Items[i]
		}
	}
	chassis := chassisByName(sb)
	used := map[string]bool{}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		ns := nodeStatus{Name: n.Name, Agent: agentState(n, agents[n.Name])}
		if subnets, _, err := annotations.DeclaredNodeSubnets(n); err == nil && len(subnets) > 0 {
			ns.Subnet = annotations.FormatNodeSubnets(subnets)
		}
		_, ns.Gateway = n.Annotations[annotations.NodeGateway]
		if name := nodeChassis(n, chassis); name != "" {
			c := chassis[name]
			ns.Chassis = &c
			used[name] = true
		} else if sb != nil {
			r.Problems = append(r.Problems, fmt.Sprintf("node %s has no chassis in SB (is ovn-controller running there, with system-id or hostname %s?)", n.Name, n.Name))
		}
		r.Nodes = append(r.Nodes, ns)
	}
	for _, name := range sortedKeys(chassis) {
		if !used[name] {
			r.ChassisWithoutNode = append(r.ChassisWithoutNode, chassis[name])
		}
	}
}

func agentState(n *corev1.Node, pod *corev1.Pod) string {
	features := n.Annotations[annotations.NodeFeatures]
	if pod == nil {
		if features != "" {
			return "running (no dunlin-node pod; features " + features + ")"
		}
		return "no dunlin-node"
	}
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
			return "Ready"
		}
	}
	return "NotReady (" + string(pod.Status.Phase) + ")"
}

// chassisByName gives each SB chassis with its encapsulations and bound ports.
func chassisByName(sb *sbState) map[string]chassisInfo {
	out := map[string]chassisInfo{}
	if sb == nil {
		return out
	}
	bound := map[string]int{}
	for _, b := range sb.bindings {
		if c := b.String("chassis"); c != "" {
			bound[c]++
		}
	}
	for _, c := range sb.chassis {
		ci := chassisInfo{Name: c.String("name"), Hostname: c.String("hostname"), BoundPorts: bound[c.UUID()]}
		for _, u := range c.Set("encaps") {
			if en, ok := sb.encaps[u]; ok {
				ci.Encaps = append(ci.Encaps, en.String("type")+" "+en.String("ip"))
			}
		}
		sort.Strings(ci.Encaps)
		out[ci.Name] = ci
	}
	return out
}

// nodeChassis finds a node's chassis: the one its gateway annotation names, else the one named after
// the node (dunlin-node's default system-id), else the one whose hostname is the node's name.
func nodeChassis(n *corev1.Node, chassis map[string]chassisInfo) string {
	if gw, err := annotations.ParseNodeGateway(n.Annotations[annotations.NodeGateway]); err == nil && gw.ChassisID != "" {
		if _, ok := chassis[gw.ChassisID]; ok {
			return gw.ChassisID
		}
	}
	if _, ok := chassis[n.Name]; ok {
		return n.Name
	}
	for name, c := range chassis {
		if c.Hostname == n.Name {
			return name
		}
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (e *env) printStatus(r statusReport) {
	t := newTable(e.out, "DATABASE", "REACHABLE", "SCHEMA", "LEADER", "MEMBERS")
	for _, d := range []struct {
		name string
		s    dbStatus
	}{{"NB", r.NB}, {"SB", r.SB}} {
		var members []string
		for _, m := range d.s.Members {
			state := m.Model
			switch {
			case m.Error != "":
				state = "unreachable"
			case m.Leader && m.Model == "clustered":
				state = "leader"
			case m.Model == "clustered":
				state = "follower"
			}
			members = append(members, m.Endpoint+" ("+state+")")
		}
		leader := d.s.Leader
		if leader == "" && d.s.Reachable {
			leader = "(standalone)"
		}
		t.row(d.name, strconv.FormatBool(d.s.Reachable), d.s.SchemaVersion, leader, strings.Join(members, ", "))
	}
	t.flush()
	fmt.Fprintf(e.out, "\novn-northd: ")
	switch {
	case r.Northd.Active:
		fmt.Fprintf(e.out, "active: %s\n", r.Northd.Detail)
	case r.NB.Reachable && r.SB.Reachable:
		fmt.Fprintf(e.out, "NOT PROCESSING: %s\n", r.Northd.Detail)
	default:
		fmt.Fprintf(e.out, "%s\n", r.Northd.Detail)
	}
	c := r.Controller
	fmt.Fprintf(e.out, "controller: Lease holder %s", orDash(c.LeaseHolder))
	if c.LeaseRenewed != nil {
		fmt.Fprintf(e.out, ", renewed %s ago", time.Since(*c.LeaseRenewed).Round(time.Second))
	}
	fmt.Fprintf(e.out, "; NB writer %s, last commit %s", orDash(c.NBWriter), orDash(c.LastCommit))
	if c.LastSync != nil {
		fmt.Fprintf(e.out, ", last full sync %s (%s ago)", c.LastSync.Format(time.RFC3339), time.Since(*c.LastSync).Round(time.Second))
	} else {
		fmt.Fprint(e.out, ", no full sync recorded")
	}
	fmt.Fprintln(e.out)
	e.section("NODES")
	t = newTable(e.out, "NODE", "SUBNET", "CHASSIS", "ENCAP", "BOUND PORTS", "GATEWAY", "DUNLIN-NODE")
	for _, n := range r.Nodes {
		ch, encap, bound := "NONE", "", ""
		if n.Chassis != nil {
			ch, encap, bound = n.Chassis.Name, strings.Join(n.Chassis.Encaps, ","), strconv.Itoa(n.Chassis.BoundPorts)
		}
		gw := "no"
		if n.Gateway {
			gw = "yes"
		}
		t.row(n.Name, n.Subnet, ch, encap, bound, gw, n.Agent)
	}
	t.flush()
	if len(r.ChassisWithoutNode) > 0 {
		e.section("CHASSIS WITHOUT A NODE")
		t = newTable(e.out, "CHASSIS", "HOSTNAME", "ENCAP", "BOUND PORTS")
		for _, c := range r.ChassisWithoutNode {
			t.row(c.Name, c.Hostname, strings.Join(c.Encaps, ","), strconv.Itoa(c.BoundPorts))
		}
		t.flush()
	}
	if len(r.Problems) > 0 {
		e.section("PROBLEMS")
		for _, p := range r.Problems {
			fmt.Fprintf(e.out, "- %s\n", p)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
