package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/internal/ovsdbrows"
)

type showReport struct {
	Kind        string            `json:"kind"`
	Namespace   string            `json:"namespace,omitempty"`
	Name        string            `json:"name"`
	Annotations map[string]string `json:"annotations"`
	NBRows      []nbRow           `json:"nbRows"`
	// PortGroups are the NetworkPolicy port groups (of any owner) holding a pod's port.
	PortGroups []nbRow         `json:"portGroups,omitempty"`
	SB         *sbBinding      `json:"sb,omitempty"`
	Chassis    *chassisInfo    `json:"chassis,omitempty"`
	OVS        *ovsInterface   `json:"ovs,omitempty"`
	SBLBs      []sbLoadBalance `json:"sbLoadBalancers,omitempty"`
	Notes      []string        `json:"notes,omitempty"`
}

type sbBinding struct {
	LogicalPort      string `json:"logicalPort"`
	Chassis          string `json:"chassis"`
	RequestedChassis string `json:"requestedChassis,omitempty"`
	Up               bool   `json:"up"`
	MAC              string `json:"mac"`
}

type ovsInterface struct {
	Source     string            `json:"source"` // the OVS database read
	Name       string            `json:"name"`
	OFPort     int               `json:"ofport"`
	ExternalID map[string]string `json:"externalIDs"`
}

type sbLoadBalance struct {
	Name      string `json:"name"`
	Datapaths int    `json:"datapaths"`
}

func (e *env) show(ctx context.Context, kind, name string) error {
	kube, err := e.kubeClient(ctx)
	if err != nil {
		return err
	}
	ns, name := e.o.namespace, name
	if a, b, ok := strings.Cut(name, "/"); ok {
		ns, name = a, b
	}
	r := showReport{Name: name}
	var owners []string
	var obj metav1.Object
	switch kind {
	case "pod", "pods", "po":
		r.Kind, r.Namespace = "Pod", ns
		p, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("pod %s/%s: %s", ns, name, oneLine(err.Error()))
		}
		obj, owners = p, []string{"Pod/" + ns + "/" + name}
	case "node", "nodes", "no":
		r.Kind = "Node"
		n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("node %s: %s", name, oneLine(err.Error()))
		}
		obj, owners = n, []string{"Node/" + name, "Gateway/" + name}
	case "service", "services", "svc":
		r.Kind, r.Namespace = "Service", ns
		s, err := kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("service %s/%s: %s", ns, name, oneLine(err.Error()))
		}
		obj, owners = s, []string{"Service/" + ns + "/" + name}
	default:
		return fmt.Errorf("%w: show pod|node|service NAME, not %q", errUsage, kind)
	}
	r.Annotations = map[string]string{}
	for k, v := range obj.GetAnnotations() {
		if strings.HasPrefix(k, "dunlin.io/") {
			r.Annotations[k] = v
		}
	}
	nb, err := e.connectNB(ctx)
	if err != nil {
		return err
	}
	defer nb.close()
	if r.NBRows, err = ownedRows(nb.c, owners...); err != nil {
		return err
	}
	sb, err := e.connectSB(ctx)
	if err != nil {
		return err
	}
	defer sb.close()
	switch r.Kind {
	case "Pod":
		port := conventions.PodPortName(ns, name)
		if r.PortGroups, err = portGroupsOf(nb.c, r.NBRows); err != nil {
			return err
		}
		if r.SB, r.Chassis, err = binding(sb.c, port); err != nil {
			return err
		}
		e.podOVS(ctx, &r, port)
	case "Node":
		st, err := readSB(sb.c)
		if err != nil {
			return err
		}
		n, _ := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		chassis := chassisByName(st)
		if c := nodeChassis(n, chassis); c != "" {
			ci := chassis[c]
			r.Chassis = &ci
		} else {
			r.Notes = append(r.Notes, "no SB chassis for this node")
		}
	case "Service":
		for _, row := range r.NBRows {
			if row.Table != "Load_Balancer" {
				continue
			}
			rows, err := sb.c.Select("Load_Balancer", []ovsdb.Condition{ovsdb.NewCondition("name", ovsdb.ConditionEqual, row.Name)})
			if err != nil {
				return err
			}
			for _, l := range rows {
				n := len(l.Set("datapaths"))
				// Newer northd puts the datapaths in a group shared by load balancers.
				if g := l.String("datapath_group"); g != "" {
					if groups, err := sb.c.Select("Logical_DP_Group", []ovsdb.Condition{ovsdbrows.UUIDIs(g)}, "datapaths"); err == nil && len(groups) == 1 {
						n += len(groups[0].Set("datapaths"))
					}
				}
				r.SBLBs = append(r.SBLBs, sbLoadBalance{Name: l.String("name"), Datapaths: n})
			}
		}
	}
	if e.json() {
		return e.printJSON(r)
	}
	e.printShow(r)
	return nil
}

// portGroupsOf returns the port groups holding the pod's logical switch port (NetworkPolicy selection).
func portGroupsOf(c *ovsdbrows.Client, rows []nbRow) ([]nbRow, error) {
	var out []nbRow
	for _, r := range rows {
		if r.Table != "Logical_Switch_Port" {
			continue
		}
		pgs, err := c.Select("Port_Group", []ovsdb.Condition{holdsPort(r.UUID)}, "_uuid", "name", "external_ids")
		if err != nil {
			return nil, fmt.Errorf("NB port groups: %w", err)
		}
		for _, pg := range pgs {
			out = append(out, describe("Port_Group", pg))
		}
	}
	return out, nil
}

// binding is the SB Port_Binding of a logical port and the chassis that claimed it.
func binding(c *ovsdbrows.Client, port string) (*sbBinding, *chassisInfo, error) {
	rows, err := c.Select("Port_Binding", []ovsdb.Condition{ovsdb.NewCondition("logical_port", ovsdb.ConditionEqual, port)},
		"logical_port", "chassis", "requested_chassis", "up", "mac")
	if err != nil {
		return nil, nil, fmt.Errorf("SB port binding: %w", err)
	}
	if len(rows) == 0 {
		return nil, nil, nil
	}
	b := &sbBinding{LogicalPort: port, Up: rows[0].Bool("up"), MAC: strings.Join(rows[0].Set("mac"), ",")}
	var ci *chassisInfo
	for col, dst := range map[string]*string{"chassis": &b.Chassis, "requested_chassis": &b.RequestedChassis} {
		u := rows[0].String(col)
		if u == "" {
			continue
		}
		chs, err := c.Select("Chassis", []ovsdb.Condition{ovsdbrows.UUIDIs(u)}, "name", "hostname")
		if err != nil || len(chs) == 0 {
			*dst = u
			continue
		}
		*dst = chs[0].String("name")
		if col == "chassis" {
			ci = &chassisInfo{Name: chs[0].String("name"), Hostname: chs[0].String("hostname")}
		}
	}
	return b, ci, nil
}

const localOVS = "/var/run/openvswitch/db.sock"

// podOVS reads the pod's OVS interface from --ovs, or from the local OVS when run on the pod's node.
func (e *env) podOVS(ctx context.Context, r *showReport, port string) {
	addr := e.o.ovs
	if addr == "" {
		host, _ := os.Hostname()
		if _, err := os.Stat(localOVS); err != nil || r.Chassis == nil || (r.Chassis.Hostname != host && r.Chassis.Name != host) {
			r.Notes = append(r.Notes, "OVS interface not read: pass --ovs=ADDRESS of the pod's node's OVS database, or run on that node")
			return
		}
		addr = "unix:" + localOVS
	}
	c, err := ovsdbrows.Dial(ctx, addr, "Open_vSwitch", nil, e.o.timeout)
	if err != nil {
		r.Notes = append(r.Notes, fmt.Sprintf("OVS %s unreachable: %v", addr, err))
		return
	}
	defer c.Close()
	rows, err := c.Select("Interface", []ovsdb.Condition{ovsdbrows.Includes("external_ids", "iface-id", port)}, "name", "ofport", "external_ids")
	if err != nil {
		r.Notes = append(r.Notes, fmt.Sprintf("OVS %s: %v", addr, err))
		return
	}
	if len(rows) == 0 {
		r.Notes = append(r.Notes, fmt.Sprintf("OVS %s has no interface with iface-id %s", addr, port))
		return
	}
	r.OVS = &ovsInterface{Source: addr, Name: rows[0].String("name"), OFPort: rows[0].Int("ofport"), ExternalID: rows[0].Map("external_ids")}
}

func (e *env) printShow(r showReport) {
	title := r.Kind + " " + r.Name
	if r.Namespace != "" {
		title = r.Kind + " " + r.Namespace + "/" + r.Name
	}
	fmt.Fprintln(e.out, title)
	e.section("ANNOTATIONS")
	if len(r.Annotations) == 0 {
		fmt.Fprintln(e.out, "(none)")
	}
	for _, k := range sortedKeys(r.Annotations) {
		fmt.Fprintf(e.out, "%s: %s\n", k, r.Annotations[k])
	}
	e.section("NB ROWS DUNLIN OWNS FOR IT")
	e.printRows(r.NBRows)
	if r.Kind == "Pod" {
		e.section("NETWORKPOLICY PORT GROUPS HOLDING ITS PORT")
		e.printRows(r.PortGroups)
		e.section("SB PORT BINDING")
		if r.SB == nil {
			fmt.Fprintln(e.out, "(none: ovn-northd has not created it yet)")
		} else {
			t := newTable(e.out, "LOGICAL PORT", "CHASSIS", "REQUESTED CHASSIS", "UP", "MAC")
			t.row(r.SB.LogicalPort, r.SB.Chassis, r.SB.RequestedChassis, fmt.Sprint(r.SB.Up), r.SB.MAC)
			t.flush()
		}
		if r.OVS != nil {
			e.section("OVS INTERFACE (from " + r.OVS.Source + ")")
			t := newTable(e.out, "NAME", "OFPORT", "EXTERNAL_IDS")
			var ids []string
			for _, k := range sortedKeys(r.OVS.ExternalID) {
				ids = append(ids, k+"="+r.OVS.ExternalID[k])
			}
			t.row(r.OVS.Name, fmt.Sprint(r.OVS.OFPort), strings.Join(ids, " "))
			t.flush()
		}
	}
	if r.Kind == "Node" && r.Chassis != nil {
		e.section("SB CHASSIS")
		t := newTable(e.out, "CHASSIS", "HOSTNAME", "ENCAP", "BOUND PORTS")
		t.row(r.Chassis.Name, r.Chassis.Hostname, strings.Join(r.Chassis.Encaps, ","), fmt.Sprint(r.Chassis.BoundPorts))
		t.flush()
	}
	if r.Kind == "Service" {
		e.section("SB LOAD BALANCERS")
		if len(r.SBLBs) == 0 {
			fmt.Fprintln(e.out, "(none)")
		}
		for _, l := range r.SBLBs {
			fmt.Fprintf(e.out, "%s on %d datapaths\n", l.Name, l.Datapaths)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(e.out, "\nnote: %s\n", n)
	}
}
