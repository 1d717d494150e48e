package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/model"
	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/nbstore"
)

// Convergence: NB holds exactly the rows that Dunlin's mapping gives for the objects in the API, whole
// rows compared. The expected rows come from the translator's pure mapping functions (ClusterRows,
// NodeRows, PodRows, ServiceRows, and for NetworkPolicy ClusterPolicyRows, PolicyRows,
// NamespaceDenyRows and PeerRows) fed with the current nodes, pods, Services, EndpointSlices,
// namespaces and NetworkPolicies, so the check follows the mapping as it evolves; NB is read with
// ovn-nbctl, the real client.
// For every row of every table Dunlin manages (translator.TableSpecs) it compares each column Dunlin
// sets (external_ids with the owner key included), and every reference between rows of those tables
// that starts or ends at a Dunlin row: which switch a port is on, which router a router port, which
// group or switch a load balancer is attached to, which groups a switch has. Dunlin's rows beyond the
// expected ones are orphans. Rows are identified by name, or in Keyed tables by owner and ID; member
// columns are compared whole; entry columns (map keys held by several owners) are not compared. The
// expectation is the mapping of the API as it is: after bad input, where the controller keeps the last
// good subnet or address, it differs on purpose.

// ConvergeOptions are the controller settings the expected rows depend on.
type ConvergeOptions struct {
	// ClusterCIDR is dunlin-controller's --cluster-cidr; the zero value means its default.
	ClusterCIDR netip.Prefix
	// AffinityByHash is --session-affinity=hash.
	AffinityByHash bool
	// ACLLogRate is --acl-log-rate; zero means its default.
	ACLLogRate int
	// Nodes, when not nil, are exactly the nodes that must have a switch: it is an error while one of
	// them has no subnet yet or another node has one.
	Nodes []string
	// JoinSubnet is --join-subnet; the zero value means its default.
	JoinSubnet netip.Prefix
	// NodePortRange is --service-node-port-range; the zero value means its default.
	NodePortRange translator.PortRange
}

// ConvergeOptionsFromFlags reads the ConvergeOptions that dunlin-controller flags imply.
func ConvergeOptionsFromFlags(flags []string) (ConvergeOptions, error) {
	def := translator.DefaultConfig()
	o := ConvergeOptions{ClusterCIDR: def.ClusterCIDR, ACLLogRate: def.ACLLogRate}
	for i := 0; i < len(flags); i++ {
		name, value, hasValue := strings.Cut(strings.TrimLeft(flags[i], "-"), "=")
		if name != "cluster-cidr" && name != "session-affinity" && name != "acl-log-rate" &&
			name != "join-subnet" && name != "service-node-port-range" {
			continue
		}
		if !hasValue && i+1 < len(flags) {
			i++
			value = flags[i]
		}
		switch name {
		case "cluster-cidr":
			p, err := netip.ParsePrefix(value)
			if err != nil {
				return o, fmt.Errorf("--cluster-cidr %q: %w", value, err)
			}
			o.ClusterCIDR = p
		case "session-affinity":
			o.AffinityByHash = value == translator.AffinityHash
		case "join-subnet":
			p, err := netip.ParsePrefix(value)
			if err != nil {
				return o, fmt.Errorf("--join-subnet %q: %w", value, err)
			}
			o.JoinSubnet = p
		case "service-node-port-range":
			r, err := translator.ParsePortRange(value)
			if err != nil {
				return o, fmt.Errorf("--service-node-port-range: %w", err)
			}
			o.NodePortRange = r
		case "acl-log-rate":
			r, err := strconv.Atoi(value)
			if err != nil {
				return o, fmt.Errorf("--acl-log-rate %q: %w", value, err)
			}
			o.ACLLogRate = r
		}
	}
	return o, nil
}

// CheckConverged compares NB with what the cluster's API objects map to (see OVN.CheckConverged),
// with the options the cluster's controller flags imply.
func (c *Cluster) CheckConverged(ctx context.Context) error {
	o, err := ConvergeOptionsFromFlags(c.ctrlFlags)
	if err != nil {
		return err
	}
	return c.OVN.CheckConverged(ctx, c.Kube.Client, o)
}

// CheckConverged returns nil when NB holds exactly Dunlin's rows for the nodes, pods, Services and
// EndpointSlices in the API, else the first difference: the row (table, name, owner), the column or
// reference, what it should be and what it is. It also fails while the API is not settled: a pod
// without its address annotation, two pods with one address. Call it in a retry loop: NB converges
// after the API.
func (o *OVN) CheckConverged(ctx context.Context, kube kubernetes.Interface, opts ConvergeOptions) error {
	if !opts.ClusterCIDR.IsValid() {
		opts.ClusterCIDR = translator.DefaultConfig().ClusterCIDR
	}
	if opts.ACLLogRate == 0 {
		opts.ACLLogRate = translator.DefaultConfig().ACLLogRate
	}
	if !opts.JoinSubnet.IsValid() {
		opts.JoinSubnet = translator.DefaultConfig().JoinSubnet
	}
	nb, err := newNBDescriber()
	if err != nil {
		return err
	}
	join, err := o.joinAddresses()
	if err != nil {
		return err
	}
	want, err := nb.expected(ctx, kube, opts, join)
	if err != nil {
		return err
	}
	got, err := nb.read(o, want)
	if err != nil {
		return err
	}
	return nb.compare(want, got)
}

// joinAddresses are the gateway routers' join addresses in NB, by node: the controller allocates them
// in the order it happens to sync nodes, so the expectation takes them from NB (checking only that
// each is unique and in the join subnet, through the comparison of the rows that use them).
func (o *OVN) joinAddresses() (map[string]netip.Addr, error) {
	out, err := o.NBCtl("--format=csv", "--data=bare", "--no-headings", "--columns=name,networks", "list", "Logical_Router_Port")
	if err != nil {
		return nil, err
	}
	join := map[string]netip.Addr{}
	seen := map[netip.Addr]string{}
	for _, line := range strings.Split(out, "\n") {
		name, networks, _ := strings.Cut(line, ",")
		node, ok := strings.CutPrefix(name, translator.JoinRouterPortName(translator.GatewayRouterName("")))
		if !ok {
			continue
		}
		p, err := netip.ParsePrefix(networks)
		if err != nil {
			return nil, fmt.Errorf("%s networks %q: %w", name, networks, err)
		}
		if other, dup := seen[p.Addr()]; dup {
			return nil, fmt.Errorf("join address %s on the routers of both %s and %s", p.Addr(), other, node)
		}
		seen[p.Addr()] = node
		join[node] = p.Addr()
	}
	return join, nil
}

// expectedRow is a row the mapping gives: its owner and the row with its parent and references.
type expectedRow struct {
	owner string
	row   nbstore.Row
}

// expectedRows computes every row Dunlin should have for what is in the API.
func expectedRows(ctx context.Context, kube kubernetes.Interface, opts ConvergeOptions, join map[string]netip.Addr) ([]expectedRow, error) {
	var rows []expectedRow
	add := func(owner string, rs []nbstore.Row) {
		for _, r := range rs {
			rows = append(rows, expectedRow{owner, r})
		}
	}
	add(translator.ClusterOwner, translator.ClusterRows())
	gwEnv := translator.GatewayEnv{ClusterCIDR: opts.ClusterCIDR, JoinSubnet: opts.JoinSubnet, NodePortRange: opts.NodePortRange}
	add(translator.ClusterOwner, translator.GatewayClusterRows(gwEnv))

	nodes, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	subnets := map[string]netip.Prefix{}
	byName := map[string]*corev1.Node{}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		byName[n.Name] = n
		ps, _, err := annotations.DeclaredNodeSubnets(n)
		if p := annotations.IPv4Subnet(ps); err == nil && p.IsValid() {
			subnets[n.Name] = p
		}
	}
	switchNodes := slices.Sorted(maps.Keys(subnets))
	if opts.Nodes != nil {
		if want := slices.Sorted(slices.Values(opts.Nodes)); !slices.Equal(switchNodes, want) {
			return nil, fmt.Errorf("nodes with a subnet: %v, want %v", switchNodes, want)
		}
	}
	var gateways []translator.GatewayAddr
	for _, name := range switchNodes {
		add(translator.Owner(translator.KindNode, name), translator.NodeRows(translator.NodeNetwork{Name: name, Subnet: subnets[name]}))
		g, err := translator.NodeGatewayOf(byName[name])
		if err != nil {
			continue // the controller keeps what the node had: not the mapping of the API as it is
		}
		gn := translator.GatewayNode{Name: name, Subnet: subnets[name], HostIPs: translator.NodeHostIPs(byName[name]), Gateway: g}
		if g != nil {
			if gn.JoinIP = join[name]; !gn.JoinIP.IsValid() {
				return nil, fmt.Errorf("node %s has no gateway router yet", name)
			}
			for _, p := range g.Addresses() {
				if p.Addr().Is4() {
					gateways = append(gateways, translator.GatewayAddr{Node: name, IP: p.Addr()})
				}
			}
		}
		add(translator.Owner(translator.KindGateway, name), translator.GatewayRows(gn, gwEnv))
	}

	pods, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	byAddr := map[netip.Addr]string{}
	networked := map[string][]translator.PolicyPod{} // by namespace, in name order
	for _, p := range pods.Items {
		if p.Spec.NodeName == "" || p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		key := p.Namespace + "/" + p.Name
		subnet, ok := subnets[p.Spec.NodeName]
		if !ok {
			return nil, fmt.Errorf("pod %s is on node %s, which has no subnet", key, p.Spec.NodeName)
		}
		s, ok := p.Annotations[annotations.PodNetwork]
		if !ok {
			return nil, fmt.Errorf("pod %s has no address yet", key)
		}
		info, err := annotations.ParsePodNetwork(s)
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", key, err)
		}
		v4, _ := info.IPv4()
		addr := v4.Addr()
		if !subnet.Contains(addr) {
			return nil, fmt.Errorf("pod %s: address %s outside the subnet %s of node %s", key, addr, subnet, p.Spec.NodeName)
		}
		if other, dup := byAddr[addr]; dup {
			return nil, fmt.Errorf("address %s given to both %s and %s", addr, other, key)
		}
		byAddr[addr] = key
		networked[p.Namespace] = append(networked[p.Namespace], translator.PolicyPod{Pod: &p, Addr: addr})
		add(translator.Owner(translator.KindPod, key), translator.PodRows(translator.PodNetwork{
			Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), Node: p.Spec.NodeName, Addr: addr,
			IfaceIDVer: annotations.HasFeature(byName[p.Spec.NodeName], annotations.FeatureIfaceIDVer),
		}))
	}

	svcs, err := kube.CoreV1().Services("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	slicesList, err := kube.DiscoveryV1().EndpointSlices("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for i := range slicesList.Items {
		s := &slicesList.Items[i]
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
			bySvc[s.Namespace+"/"+name] = append(bySvc[s.Namespace+"/"+name], s)
		}
	}
	env := translator.ServiceEnv{
		Ranges:         endpointRanges(nodes.Items, opts.ClusterCIDR),
		AffinityByHash: opts.AffinityByHash,
		Nodes:          switchNodes,
		NodePortRange:  opts.NodePortRange,
		Gateways:       gateways,
	}
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		key := svc.Namespace + "/" + svc.Name
		rs, _ := translator.ServiceRows(svc, bySvc[key], env)
		add(translator.Owner(translator.KindService, key), rs)
	}

	var mgmt []netip.Addr
	for _, name := range switchNodes {
		mgmt = append(mgmt, conventions.ManagementIP(subnets[name]))
	}
	add(translator.ClusterOwner, translator.ClusterPolicyRows(mgmt, opts.ACLLogRate))
	prs, err := policyRows(ctx, kube, networked, opts)
	if err != nil {
		return nil, err
	}
	return append(rows, prs...), nil
}

// policyRows are the NetworkPolicy rows, computed as the controller does: per policy its rows, per
// namespace with policies its default deny, per distinct peer its address set. networked are the
// networked pods by namespace.
func policyRows(ctx context.Context, kube kubernetes.Interface, networked map[string][]translator.PolicyPod, opts ConvergeOptions) ([]expectedRow, error) {
	for _, pods := range networked {
		slices.SortFunc(pods, func(a, b translator.PolicyPod) int { return strings.Compare(a.Pod.Name, b.Pod.Name) })
	}
	nsList, err := kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	policies, err := kube.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	peerPods := func(peer translator.PolicyPeer) []translator.PolicyPod {
		var out []translator.PolicyPod
		for _, n := range nsList.Items {
			if peer.Namespaces == nil && n.Name != peer.Namespace || peer.Namespaces != nil && !peer.Namespaces.Matches(labels.Set(n.Labels)) {
				continue
			}
			for _, p := range networked[n.Name] {
				if peer.Pods.Matches(labels.Set(p.Pod.Labels)) {
					out = append(out, p)
				}
			}
		}
		return out
	}
	logging := map[string]string{}
	for _, n := range nsList.Items {
		logging[n.Name] = n.Annotations[translator.ACLLoggingAnnotation]
	}
	env := func(ns string) translator.PolicyEnv {
		return translator.PolicyEnv{Pods: networked[ns], PeerPods: peerPods, Logging: logging[ns], PodNetwork: opts.ClusterCIDR}
	}
	var rows []expectedRow
	add := func(owner string, rs []nbstore.Row) {
		for _, r := range rs {
			rows = append(rows, expectedRow{owner, r})
		}
	}
	byNS := map[string][]*networkingv1.NetworkPolicy{}
	peers := map[string]translator.PolicyPeer{}
	for i := range policies.Items {
		np := &policies.Items[i]
		byNS[np.Namespace] = append(byNS[np.Namespace], np)
		rs, _ := translator.PolicyRows(np, env(np.Namespace))
		add(translator.Owner(translator.KindPolicy, np.Namespace+"/"+np.Name), rs)
		ps, _ := translator.PolicyPeers(np)
		for _, p := range ps {
			peers[p.Hash()] = p
		}
	}
	for _, ns := range slices.Sorted(maps.Keys(byNS)) {
		add(translator.Owner(translator.KindPolicyNamespace, ns),
			translator.NamespaceIsolationRows(ns, byNS[ns], networked[ns], logging[ns]))
	}
	for _, h := range slices.Sorted(maps.Keys(peers)) {
		var addrs []netip.Addr
		for _, p := range peerPods(peers[h]) {
			addrs = append(addrs, p.Addr)
		}
		add(peers[h].Owner(), translator.PeerRows(peers[h], addrs))
	}
	return rows, nil
}

// endpointRanges are the addresses Service backends may have, as the controller computes them: the
// cluster CIDR, node subnets outside it, and the nodes' internal and external addresses.
func endpointRanges(nodes []corev1.Node, clusterCIDR netip.Prefix) translator.EndpointRanges {
	r := translator.EndpointRanges{Pods: []netip.Prefix{clusterCIDR}, Nodes: map[netip.Addr]bool{}}
	for i := range nodes {
		if ps, _, err := annotations.DeclaredNodeSubnets(&nodes[i]); err == nil {
			for _, p := range ps {
				if !clusterCIDR.Contains(p.Addr()) {
					r.Pods = append(r.Pods, p)
				}
			}
		}
		for _, a := range nodes[i].Status.Addresses {
			if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
				continue
			}
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				r.Nodes[ip.Unmap()] = true
			}
		}
	}
	return r
}

// rowID names a row: its table and name.
type rowID struct{ table, name string }

func (id rowID) String() string { return id.table + " " + id.name }

// edge is a reference from a row's column to another row.
type edge struct {
	from   rowID
	column string
	to     rowID
}

// rowState is a row as compared: owner, the columns Dunlin sets in canonical text, its references.
type rowState struct {
	owner   string
	columns map[string]string
}

// nbState is the rows of the managed tables and the references among them.
type nbState struct {
	rows  map[rowID]rowState
	edges map[edge]bool
}

// nbDescriber knows the managed tables, their columns and how to put rows into canonical text.
type nbDescriber struct {
	db     model.DatabaseModel
	schema ovsdb.DatabaseSchema
	specs  map[string]nbstore.TableSpec
	tables []string // managed tables, sorted
}

func newNBDescriber() (*nbDescriber, error) {
	client, schema, err := translator.NBModel()
	if err != nil {
		return nil, err
	}
	db, errs := model.NewDatabaseModel(schema, client)
	if len(errs) > 0 {
		return nil, fmt.Errorf("NB model: %w", errors.Join(errs...))
	}
	specs := translator.TableSpecs()
	d := &nbDescriber{db: db, schema: schema, specs: specs, tables: slices.Sorted(maps.Keys(specs))}
	for _, t := range d.tables {
		if !specs[t].Keyed && d.schema.Table(t).Column("name") == nil {
			return nil, fmt.Errorf("table %s has neither a name column nor Keyed rows", t)
		}
	}
	return d, nil
}

// key identifies a row: by name, or in a Keyed table by its owner and ID.
func (d *nbDescriber) key(table, owner, nameOrID string) rowID {
	if d.specs[table].Keyed {
		return rowID{table, owner + " " + nameOrID}
	}
	return rowID{table, nameOrID}
}

// entriesKeyPrefix starts the external_ids keys in which nbstore records which owners hold entries of a
// shared map column (nbstore's unexported entriesKeyPrefix): bookkeeping of other owners, not the row's.
const entriesKeyPrefix = "dunlin.io/entries:"

// compared lists the columns of table compared as values: the columns Dunlin sets or changes member by
// member, other than the name (the row's identity) and references to managed tables (compared as
// edges). Entry columns, whose keys several owners hold, are not compared.
func (d *nbDescriber) compared(table string) []string {
	spec := d.specs[table]
	var cols []string
	for _, col := range append(slices.Clone(spec.Columns), spec.MemberColumns...) {
		if (col != "name" || spec.Keyed) && d.refTable(table, col) == "" {
			cols = append(cols, col)
		}
	}
	return cols
}

// refTable is the managed table a column references, or "".
func (d *nbDescriber) refTable(table, column string) string {
	c := d.schema.Table(table).Column(column)
	if c == nil || c.TypeObj == nil || c.TypeObj.Key == nil {
		return ""
	}
	if ref, err := c.TypeObj.Key.RefTable(); err == nil && d.specs[ref].Columns != nil {
		return ref
	}
	return ""
}

// expected turns the mapping's rows into rows and edges.
func (d *nbDescriber) expected(ctx context.Context, kube kubernetes.Interface, opts ConvergeOptions, join map[string]netip.Addr) (nbState, error) {
	rows, err := expectedRows(ctx, kube, opts, join)
	if err != nil {
		return nbState{}, err
	}
	st := nbState{rows: map[rowID]rowState{}, edges: map[edge]bool{}}
	for _, er := range rows {
		info, err := d.db.NewModelInfo(er.row.Model)
		if err != nil {
			return st, err
		}
		table := info.Metadata.TableName
		spec := d.specs[table]
		nameOrID := er.row.ID
		if !spec.Keyed {
			name, err := info.FieldByColumn("name")
			if err != nil {
				return st, err
			}
			nameOrID = name.(string)
		}
		id := d.key(table, er.owner, nameOrID)
		if other, dup := st.rows[id]; dup {
			return st, fmt.Errorf("the mapping gives %s twice (owners %s and %s)", id, other.owner, er.owner)
		}
		rs := rowState{owner: er.owner, columns: map[string]string{}}
		for _, col := range d.compared(table) {
			native, err := info.FieldByColumn(col)
			if err != nil {
				return st, err
			}
			if col == "external_ids" && !spec.NameOwned {
				ids := maps.Clone(native.(map[string]string))
				if ids == nil {
					ids = map[string]string{}
				}
				ids[nbstore.OwnerKey] = er.owner
				if spec.Keyed {
					ids[nbstore.IDKey] = er.row.ID
				}
				native = ids
			}
			cs := info.Metadata.TableSchema.Column(col)
			ovs, err := ovsdb.NativeToOvs(cs, native)
			if err != nil {
				return st, fmt.Errorf("%s column %s: %w", id, col, err)
			}
			rs.columns[col] = canonical(cs, ovs)
		}
		st.rows[id] = rs
		for _, p := range er.row.Parents {
			pt, pc := spec.ParentTable, spec.ParentColumn
			if p.Table != "" {
				pt, pc = p.Table, p.Column
			}
			st.edges[edge{d.key(pt, p.Owner, p.Name), pc, id}] = true
		}
		for col, refs := range er.row.Refs {
			rt := d.refTable(table, col)
			for _, ref := range refs {
				st.edges[edge{id, col, d.key(rt, ref.Owner, ref.Name)}] = true
			}
		}
	}
	return st, nil
}

// read reads the managed tables with ovn-nbctl and keeps Dunlin's rows (by owner key, or in a
// NameOwned table by one of the names want has) and every reference from or to one of them.
func (d *nbDescriber) read(o *OVN, want nbState) (nbState, error) {
	type nbRow struct {
		id    rowID
		uuid  string
		owner string
		row   ovsdb.Row
	}
	var all []nbRow
	ids := map[string]rowID{} // uuid -> row
	for _, table := range d.tables {
		out, err := o.NBCtl("--format=json", "list", table)
		if err != nil {
			return nbState{}, err
		}
		var list struct {
			Headings []string            `json:"headings"`
			Data     [][]json.RawMessage `json:"data"`
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			return nbState{}, fmt.Errorf("ovn-nbctl list %s: %w", table, err)
		}
		for _, cells := range list.Data {
			obj := map[string]json.RawMessage{}
			for i, h := range list.Headings {
				obj[h] = cells[i]
			}
			b, _ := json.Marshal(obj)
			var row ovsdb.Row
			if err := json.Unmarshal(b, &row); err != nil {
				return nbState{}, fmt.Errorf("ovn-nbctl list %s: %w", table, err)
			}
			r := nbRow{row: row}
			uuid, _ := row["_uuid"].(ovsdb.UUID)
			r.uuid = uuid.GoUUID
			extIDs, _ := row["external_ids"].(ovsdb.OvsMap)
			r.owner, _ = extIDs.GoMap[nbstore.OwnerKey].(string)
			nameOrID, _ := row["name"].(string)
			if d.specs[table].Keyed {
				nameOrID, _ = extIDs.GoMap[nbstore.IDKey].(string)
			}
			r.id = d.key(table, r.owner, nameOrID)
			if w, ok := want.rows[r.id]; ok && d.specs[table].NameOwned {
				r.owner = w.owner
			}
			ids[r.uuid] = r.id
			all = append(all, r)
		}
	}
	st := nbState{rows: map[rowID]rowState{}, edges: map[edge]bool{}}
	owned := map[string]bool{} // uuid
	for _, r := range all {
		if r.owner == "" {
			continue
		}
		owned[r.uuid] = true
		if _, dup := st.rows[r.id]; dup {
			return st, fmt.Errorf("%s (owner %s) exists more than once", r.id, r.owner)
		}
		rs := rowState{owner: r.owner, columns: map[string]string{}}
		ts := d.schema.Table(r.id.table)
		for _, col := range d.compared(r.id.table) {
			v := r.row[col]
			if m, ok := v.(ovsdb.OvsMap); ok && col == "external_ids" {
				v = withoutEntryKeys(m)
			}
			rs.columns[col] = canonical(ts.Column(col), v)
		}
		st.rows[r.id] = rs
	}
	for _, r := range all {
		for col := range r.row {
			if d.refTable(r.id.table, col) == "" {
				continue
			}
			for _, u := range uuids(r.row[col]) {
				to, ok := ids[u]
				if !ok {
					continue // a reference to a row of a table we did not read
				}
				if owned[r.uuid] || owned[u] {
					st.edges[edge{r.id, col, to}] = true
				}
			}
		}
	}
	return st, nil
}

// withoutEntryKeys drops the keys nbstore keeps for owners holding entries in the row's map columns.
func withoutEntryKeys(m ovsdb.OvsMap) ovsdb.OvsMap {
	out := ovsdb.OvsMap{GoMap: map[any]any{}}
	for k, v := range m.GoMap {
		if ks, ok := k.(string); !ok || !strings.HasPrefix(ks, entriesKeyPrefix) {
			out.GoMap[k] = v
		}
	}
	return out
}

// uuids lists the UUIDs in a reference column's value.
func uuids(v any) []string {
	switch v := v.(type) {
	case ovsdb.UUID:
		return []string{v.GoUUID}
	case ovsdb.OvsSet:
		var out []string
		for _, e := range v.GoSet {
			if u, ok := e.(ovsdb.UUID); ok {
				out = append(out, u.GoUUID)
			}
		}
		return out
	}
	return nil
}

// compare returns the first difference between want and got: rows in table and name order (missing,
// then their columns), then Dunlin rows nobody wants, then references per row and column.
func (d *nbDescriber) compare(want, got nbState) error {
	ids := slices.SortedFunc(maps.Keys(want.rows), cmpRowID)
	for _, id := range ids {
		w := want.rows[id]
		g, ok := got.rows[id]
		if !ok {
			return fmt.Errorf("%s (owner %s): missing", id, w.owner)
		}
		for _, col := range slices.Sorted(maps.Keys(w.columns)) {
			if w.columns[col] != g.columns[col] {
				return fmt.Errorf("%s (owner %s): column %s: want %s, got %s", id, w.owner, col, w.columns[col], g.columns[col])
			}
		}
	}
	for _, id := range slices.SortedFunc(maps.Keys(got.rows), cmpRowID) {
		if _, ok := want.rows[id]; !ok {
			return fmt.Errorf("%s (owner %s): exists, but nothing in the API maps to it", id, got.rows[id].owner)
		}
	}
	// References, grouped by the referring row and column: want and got are the referenced rows.
	type refCol struct {
		from   rowID
		column string
	}
	targets := func(edges map[edge]bool) map[refCol][]string {
		m := map[refCol][]string{}
		for e := range edges {
			k := refCol{e.from, e.column}
			m[k] = append(m[k], e.to.String())
		}
		return m
	}
	wt, gt := targets(want.edges), targets(got.edges)
	keys := slices.Collect(maps.Keys(wt))
	for k := range gt {
		if _, ok := wt[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool {
		if c := cmpRowID(keys[i].from, keys[j].from); c != 0 {
			return c < 0
		}
		return keys[i].column < keys[j].column
	})
	for _, k := range keys {
		w, g := slices.Sorted(slices.Values(wt[k])), slices.Sorted(slices.Values(gt[k]))
		if !slices.Equal(w, g) {
			owner := want.rows[k.from].owner
			if owner == "" {
				owner = got.rows[k.from].owner
			}
			if owner == "" {
				owner = "none: not Dunlin's"
			}
			return fmt.Errorf("%s (owner %s): references in column %s: want %q, got %q", k.from, owner, k.column, w, g)
		}
	}
	return nil
}

func cmpRowID(a, b rowID) int {
	if c := strings.Compare(a.table, b.table); c != 0 {
		return c
	}
	return strings.Compare(a.name, b.name)
}

// canonical renders a column value in OVSDB notation as text that is equal for equal values: a set's
// elements sorted, a map's keys sorted, a single-element set the same whether or not written as an
// atom.
func canonical(cs *ovsdb.ColumnSchema, v any) string {
	atom := func(a any) string {
		switch a := a.(type) {
		case string:
			return strconv.Quote(a)
		case ovsdb.UUID:
			return a.GoUUID
		case float64:
			return strconv.FormatFloat(a, 'f', -1, 64)
		default:
			return fmt.Sprint(a)
		}
	}
	switch cs.Type {
	case ovsdb.TypeMap:
		m, _ := v.(ovsdb.OvsMap)
		var kv []string
		for k, val := range m.GoMap {
			kv = append(kv, atom(k)+":"+atom(val))
		}
		sort.Strings(kv)
		return "{" + strings.Join(kv, ", ") + "}"
	case ovsdb.TypeSet:
		var elems []string
		if s, ok := v.(ovsdb.OvsSet); ok {
			for _, e := range s.GoSet {
				elems = append(elems, atom(e))
			}
		} else if v != nil {
			elems = append(elems, atom(v))
		}
		sort.Strings(elems)
		return "[" + strings.Join(elems, ", ") + "]"
	default:
		return atom(v)
	}
}
