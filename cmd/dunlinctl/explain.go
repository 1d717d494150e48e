package main

import (
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"

	"github.com/dunlinplugin/dunlin/internal/ovntrace"
	"github.com/dunlinplugin/dunlin/internal/ovsdbrows"
)

// finding is one stage of a trace said in Kubernetes terms.
type finding struct {
	Kind   string `json:"kind"`   // load balancer, gateway router, SNAT, NetworkPolicy, ...
	Where  string `json:"where"`  // stage and datapath
	Detail string `json:"detail"` // Kubernetes terms
	// Drop is set when this stage dropped or rejected the packet.
	Drop bool `json:"drop,omitempty"`
}

// stageExplainers turn a trace's stages into findings. Each feature that programs its own logical
// flows (load balancing, gateways, NetworkPolicy, ...) adds one.
var stageExplainers = []func(*explainer) []finding{
	explainLoadBalancers,
	explainGateways,
	explainRouterPolicies,
	explainPolicies,
	explainARP,
}

// explainer maps a trace back to NB rows and their owners, reading NB and SB on demand.
type explainer struct {
	nb, sb *ovsdbrows.Client
	trace  *ovntrace.Trace
	cache  map[string][]ovsdbrows.Row
}

func (x *explainer) explain() []finding {
	out := []finding{}
	for _, f := range stageExplainers {
		out = append(out, f(x)...)
	}
	return out
}

// rows returns (and caches) every row of an NB table.
func (x *explainer) rows(table string, columns ...string) []ovsdbrows.Row {
	if x.cache == nil {
		x.cache = map[string][]ovsdbrows.Row{}
	}
	if r, ok := x.cache[table]; ok {
		return r
	}
	r, _ := x.nb.Select(table, nil, columns...)
	x.cache[table] = r
	return r
}

func where(s *ovntrace.Stage) string {
	return fmt.Sprintf("%s %s (table %d)", s.Pipeline.Datapath, s.Name, s.Table)
}

// owner describes an NB row's owner in Kubernetes terms.
func owner(row ovsdbrows.Row) string {
	o := row.Map("external_ids")[ownerKey]
	kind, key, _ := strings.Cut(o, "/")
	switch kind {
	case "":
		return "not Dunlin's"
	case "PolicyNamespace":
		return "namespace " + key + " default deny"
	case "Gateway":
		return "node " + key + " gateway"
	}
	return kind + " " + key
}

var (
	vipIPRe   = regexp.MustCompile(`(?:ip4\.dst|reg0) == ([0-9.]+)`)
	vipPortRe = regexp.MustCompile(`(?:(?:tcp|udp|sctp)\.dst|reg9\[16\.\.31\]) == (\d+)`)
	backendRe = regexp.MustCompile(`backends=([^;)]*)`)
	snatRe    = regexp.MustCompile(`^ct_snat\w*\((?:ip4\.src=)?([0-9.]+)[,)]`)
)

// explainLoadBalancers finds the load balancer stages (a VIP DNATed to backends, or rejected) and the
// Service whose load balancer holds the VIP.
func explainLoadBalancers(x *explainer) []finding {
	var out []finding
	for _, s := range x.trace.Stages() {
		action, lb := s.HasAction("ct_lb_mark(")
		if !lb {
			action, lb = s.HasAction("ct_lb(")
		}
		_, reject := s.HasAction("reject")
		isLBStage := strings.Contains(s.Name, "_lb") || strings.Contains(s.Name, "dnat")
		if !lb && !(reject && isLBStage) {
			continue
		}
		ipm, portm := vipIPRe.FindStringSubmatch(s.Match), vipPortRe.FindStringSubmatch(s.Match)
		if ipm == nil || portm == nil {
			continue
		}
		vip := ipm[1] + ":" + portm[1]
		f := finding{Kind: "load balancer", Where: where(s)}
		name, svc := x.loadBalancer(vip, portm[1])
		if reject {
			f.Detail, f.Drop = fmt.Sprintf("%s: %s (%s) has no ready endpoint: rejected", vip, svc, name), true
			out = append(out, f)
			continue
		}
		var backends []string
		if m := backendRe.FindStringSubmatch(action); m != nil {
			backends = strings.Split(m[1], ",")
		}
		f.Detail = fmt.Sprintf("%s: %s (%s), backends %s", vip, svc, name, strings.Join(backends, ","))
		if b := x.chosenBackend(backends); b != "" {
			f.Detail += "; chose " + b
		}
		out = append(out, f)
	}
	return out
}

// loadBalancer names the NB load balancer serving vip and its owner, preferring Dunlin's; a NodePort
// template (^NODEIP:port) matches any node address.
func (x *explainer) loadBalancer(vip, port string) (string, string) {
	var template ovsdbrows.Row
	for _, lb := range x.rows("Load_Balancer", "_uuid", "name", "vips", "external_ids") {
		for k := range lb.Map("vips") {
			if k == vip {
				return lb.String("name"), owner(lb)
			}
			if strings.HasPrefix(k, "^") && strings.HasSuffix(k, ":"+port) && template == nil {
				template = lb
			}
		}
	}
	if template != nil {
		return template.String("name"), owner(template)
	}
	return "no NB load balancer has it", "?"
}

// chosenBackend is the backend whose address the packet was delivered to.
func (x *explainer) chosenBackend(backends []string) string {
	for _, o := range x.trace.Delivered() {
		_, ip, err := x.portAddress(o.Port)
		if err != nil {
			continue
		}
		for _, b := range backends {
			if ap, err := netip.ParseAddrPort(strings.TrimSpace(b)); err == nil && ap.Addr().String() == ip {
				return b + " (" + x.portOwner(o.Port) + ")"
			}
		}
	}
	return ""
}

func (x *explainer) port(name string) ovsdbrows.Row {
	for _, p := range x.rows("Logical_Switch_Port", "name", "addresses", "type", "external_ids") {
		if p.String("name") == name {
			return p
		}
	}
	return nil
}

func (x *explainer) portAddress(name string) (string, string, error) {
	p := x.port(name)
	if p == nil {
		return "", "", fmt.Errorf("no port %s", name)
	}
	return lspAddress(p)
}

// portOwner says what a logical switch port is in Kubernetes terms.
func (x *explainer) portOwner(name string) string {
	p := x.port(name)
	if p == nil {
		return "port " + name
	}
	ids := p.Map("external_ids")
	if ids["pod"] != "" {
		return "pod " + ids["namespace"] + "/" + ids["pod"]
	}
	if node, ok := strings.CutPrefix(name, "k8s-"); ok {
		return "node " + node + "'s host (management port)"
	}
	return "port " + name + " (" + owner(p) + ")"
}

// explainGateways names the gateway routers the packet crossed, their SNAT and where it left the
// cluster.
func explainGateways(x *explainer) []finding {
	var out []finding
	seen := map[string]bool{}
	for _, p := range x.trace.Pipelines {
		if !strings.HasPrefix(p.Datapath, "GR_") || seen[p.Datapath] {
			continue
		}
		seen[p.Datapath] = true
		out = append(out, finding{Kind: "gateway router", Where: p.Datapath,
			Detail: fmt.Sprintf("node %s's gateway router, entered from %s", strings.TrimPrefix(p.Datapath, "GR_"), p.InPort)})
	}
	for _, s := range x.trace.Stages() {
		for _, a := range s.Actions {
			// ct_snat(172.18.0.2); ct_snat_in_czone(...); ct_snat(ip4.src=...) in some versions.
			m := snatRe.FindStringSubmatch(a)
			if m == nil {
				continue
			}
			out = append(out, finding{Kind: "SNAT", Where: where(s), Detail: "source rewritten to " + m[1] + x.natOwner(s.Pipeline.Datapath, m[1])})
		}
		if _, ok := s.HasAction("flags.force_snat_for_lb = 1"); ok && strings.HasPrefix(s.Pipeline.Datapath, "GR_") {
			out = append(out, finding{Kind: "SNAT", Where: where(s), Detail: "load-balanced traffic SNATed to the router's address (lb_force_snat_ip)"})
		}
	}
	for _, o := range x.trace.Delivered() {
		if o.Type == "localnet" {
			out = append(out, finding{Kind: "uplink", Where: o.Datapath, Detail: "leaves through localnet port " + o.Port + " (the node's br-ex)"})
		}
	}
	return out
}

func (x *explainer) natOwner(router, ip string) string {
	for _, n := range x.rows("NAT", "_uuid", "external_ip", "logical_ip", "type", "external_ids") {
		if n.String("external_ip") == ip && n.String("type") == "snat" {
			return fmt.Sprintf(" (NAT of %s, %s)", n.String("logical_ip"), owner(n))
		}
	}
	return ""
}

// explainRouterPolicies names the router policies (reroutes to a node's management port, ...) that
// matched.
func explainRouterPolicies(x *explainer) []finding {
	var out []finding
	for _, s := range x.trace.Stages() {
		if s.Name != "lr_in_policy" || s.Priority == 0 {
			continue
		}
		for _, p := range x.rows("Logical_Router_Policy", "_uuid", "priority", "match", "action", "nexthops", "external_ids") {
			if p.Int("priority") == s.Priority && strings.Contains(s.Match, p.String("match")) {
				out = append(out, finding{Kind: "router policy", Where: where(s),
					Detail: fmt.Sprintf("%s %s (priority %d, %s)", p.String("action"), strings.Join(p.Set("nexthops"), ","), s.Priority, owner(p))})
				break
			}
		}
	}
	return out
}

// explainPolicies maps ACL stages to the NetworkPolicy (or namespace default deny) whose ACL they
// come from: the SB logical flow's stage-hint is the first 8 hex digits of the NB ACL's UUID.
func explainPolicies(x *explainer) []finding {
	var out []finding
	hints := map[string]map[string]string{} // stage name -> lflow uuid prefix -> stage-hint
	for _, s := range x.trace.Stages() {
		if !strings.Contains(s.Name, "_acl") || strings.Contains(s.Name, "hint") {
			continue
		}
		if hints[s.Name] == nil {
			hints[s.Name] = map[string]string{}
			flows, _ := x.sb.Select("Logical_Flow", []ovsdb.Condition{ovsdbrows.Includes("external_ids", "stage-name", s.Name)}, "_uuid", "external_ids")
			for _, f := range flows {
				if h := f.Map("external_ids")["stage-hint"]; h != "" {
					hints[s.Name][f.UUID()[:8]] = h
				}
			}
		}
		hint := hints[s.Name][s.UUID]
		if hint == "" {
			continue
		}
		for _, acl := range x.rows("ACL", "_uuid", "name", "action", "priority", "direction", "external_ids") {
			if !strings.HasPrefix(acl.UUID(), hint) {
				continue
			}
			action := acl.String("action")
			kind := "ACL"
			if o := acl.Map("external_ids")[ownerKey]; strings.HasPrefix(o, "NetworkPolicy/") || strings.HasPrefix(o, "PolicyNamespace/") {
				kind = "NetworkPolicy"
			}
			f := finding{Kind: kind, Where: where(s), Detail: fmt.Sprintf("%s by %s (ACL %s, %s priority %d)",
				action, owner(acl), orDash(acl.String("name")), acl.String("direction"), acl.Int("priority"))}
			f.Drop = action == "drop" || action == "reject"
			if f.Drop && strings.HasPrefix(acl.Map("external_ids")[ownerKey], "PolicyNamespace/") {
				f.Detail += x.isolatedBy(s)
			}
			out = append(out, f)
			break
		}
	}
	return out
}

// isolatedBy names the NetworkPolicies that select the pod whose port a default-deny stage s guards:
// they isolate it, and none of their rules allowed the packet.
func (x *explainer) isolatedBy(s *ovntrace.Stage) string {
	port := s.Pipeline.InPort
	if s.Pipeline.Direction == "egress" {
		port = s.Pipeline.OutPort
	}
	lsp, err := selectOne(x.nb, "Logical_Switch_Port", ovsdb.NewCondition("name", ovsdb.ConditionEqual, port))
	if err != nil {
		return ""
	}
	pgs, err := x.nb.Select("Port_Group", []ovsdb.Condition{holdsPort(lsp.UUID())}, "name", "external_ids")
	if err != nil {
		return ""
	}
	var names []string
	for _, pg := range pgs {
		if o, ok := strings.CutPrefix(pg.Map("external_ids")[ownerKey], "NetworkPolicy/"); ok {
			names = append(names, o)
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	return fmt.Sprintf("; %s isolated by NetworkPolicy %s, whose rules do not allow it", x.portOwner(port), strings.Join(names, ", "))
}

// verdict says where the packet went, or what stopped it.
func (x *explainer) verdict(findings []finding) (string, bool) {
	var parts []string
	for _, o := range x.trace.Delivered() {
		switch o.Type {
		case "":
			parts = append(parts, fmt.Sprintf("delivered to %s (port %s on %s)", x.portOwner(o.Port), o.Port, o.Datapath))
		case "localnet":
			parts = append(parts, fmt.Sprintf("leaves the cluster network through %s on %s", o.Port, o.Datapath))
		default:
			parts = append(parts, fmt.Sprintf("output to %s (type %s) on %s", o.Port, o.Type, o.Datapath))
		}
	}
	if len(parts) > 0 {
		return strings.Join(parts, "; "), true
	}
	for _, f := range findings {
		if f.Drop {
			return "dropped: " + f.Detail, false
		}
	}
	if s := x.trace.Last(); s != nil {
		return fmt.Sprintf("dropped at %s: %s, priority %d (actions: %s)", where(s), s.Match, s.Priority, strings.Join(s.Actions, " ")), false
	}
	return "dropped before any stage (does the microflow match the port?)", false
}

// explainARP notes a trace that ends in an ARP request: ovn-trace cannot answer it, so a router that
// has not learnt the next hop's MAC yet (no SB MAC_Binding) ends the trace there.
func explainARP(x *explainer) []finding {
	for _, s := range x.trace.Stages() {
		if _, ok := s.HasAction("arp {"); ok && strings.Contains(s.Name, "arp_request") {
			return []finding{{Kind: "ARP", Where: where(s),
				Detail: "the router has no MAC for the next hop yet (no SB MAC_Binding): the packet becomes an ARP request; real traffic resolves it"}}
		}
	}
	return nil
}
