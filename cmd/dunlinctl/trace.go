package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"github.com/ovn-kubernetes/libovsdb/ovsdb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/internal/conventions"
	"github.com/dunlinplugin/dunlin/internal/ovntrace"
	"github.com/dunlinplugin/dunlin/internal/ovsdbrows"
)

// traceSrcPort is the source port of traced packets: any ephemeral port does.
const traceSrcPort = 40000

// endpoint is a traced source or destination.
type endpoint struct {
	Text  string `json:"text"`            // as given
	Pod   string `json:"pod,omitempty"`   // ns/name
	Svc   string `json:"svc,omitempty"`   // ns/name
	IP    string `json:"ip"`              // the address in the microflow
	Port  int    `json:"port,omitempty"`  // destination only
	Proto string `json:"proto,omitempty"` // destination only
}

type traceReport struct {
	Source      endpoint  `json:"source"`
	Destination endpoint  `json:"destination"`
	Datapath    string    `json:"datapath"`
	Microflow   string    `json:"microflow"`
	Command     []string  `json:"command"`
	Verdict     string    `json:"verdict"`
	Delivered   bool      `json:"delivered"`
	Findings    []finding `json:"stages"`
}

func (e *env) trace(ctx context.Context, src, dst string) error {
	nb, err := e.connectNB(ctx)
	if err != nil {
		return err
	}
	defer nb.close()
	sb, err := e.connectSB(ctx)
	if err != nil {
		return err
	}
	defer sb.close()
	nbc := nb.c

	r := traceReport{Source: endpoint{Text: src}, Destination: endpoint{Text: dst}}
	srcNS, srcName := e.splitName(strings.TrimPrefix(src, "pod/"))
	r.Source.Pod = srcNS + "/" + srcName
	lspName := conventions.PodPortName(srcNS, srcName)
	lsp, err := selectOne(nbc, "Logical_Switch_Port", ovsdb.NewCondition("name", ovsdb.ConditionEqual, lspName))
	if err != nil {
		return fmt.Errorf("source pod %s: %w", r.Source.Pod, err)
	}
	mac, ip, err := lspAddress(lsp)
	if err != nil {
		return fmt.Errorf("source pod %s: %w", r.Source.Pod, err)
	}
	r.Source.IP = ip
	ls, err := selectOne(nbc, "Logical_Switch", holdsPort(lsp.UUID()))
	if err != nil {
		return fmt.Errorf("switch of %s: %w", lspName, err)
	}
	r.Datapath = ls.String("name")
	gwMAC, err := switchGatewayMAC(nbc, ls)
	if err != nil {
		return fmt.Errorf("gateway of switch %s: %w", r.Datapath, err)
	}
	if err := e.resolveDestination(ctx, nbc, &r.Destination); err != nil {
		return err
	}
	d := r.Destination
	r.Microflow = fmt.Sprintf(`inport == %q && eth.src == %s && eth.dst == %s && ip4.src == %s && ip4.dst == %s && ip.ttl == 64 && %s && %s.src == %d && %s.dst == %d`,
		lspName, mac, gwMAC, ip, d.IP, d.Proto, d.Proto, traceSrcPort, d.Proto, d.Port)

	out, cmd, err := e.runTrace(ctx, sb, r.Datapath, r.Microflow)
	r.Command = cmd
	if err != nil {
		return err
	}
	if e.o.raw {
		_, err := fmt.Fprint(e.out, out)
		return err
	}
	t := ovntrace.Parse(out)
	x := &explainer{nb: nbc, sb: sb.c, trace: t}
	r.Findings = x.explain()
	r.Verdict, r.Delivered = x.verdict(r.Findings)
	if e.json() {
		return e.printJSON(r)
	}
	e.printTrace(r)
	return nil
}

func (e *env) splitName(s string) (string, string) {
	if ns, name, ok := strings.Cut(s, "/"); ok {
		return ns, name
	}
	return e.o.namespace, s
}

// resolveDestination fills the address, port and protocol of d from d.Text: IP:PORT/PROTO, a Service
// (svc/NS/NAME) or a pod (NS/NAME, pod/NS/NAME).
func (e *env) resolveDestination(ctx context.Context, nb *ovsdbrows.Client, d *endpoint) error {
	d.Proto = strings.ToLower(e.o.proto)
	if ap, proto, ok := strings.Cut(d.Text, "/"); ok {
		if addrPort, err := netip.ParseAddrPort(ap); err == nil {
			d.IP, d.Port, d.Proto = addrPort.Addr().String(), int(addrPort.Port()), strings.ToLower(proto)
			return checkProto(d.Proto)
		}
	}
	if rest, ok := strings.CutPrefix(d.Text, "svc/"); ok || strings.HasPrefix(d.Text, "service/") {
		if !ok {
			rest = strings.TrimPrefix(d.Text, "service/")
		}
		ns, name := e.splitName(rest)
		d.Svc = ns + "/" + name
		kube, err := e.kubeClient(ctx)
		if err != nil {
			return err
		}
		svc, err := kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("service %s: %s", d.Svc, oneLine(err.Error()))
		}
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			return fmt.Errorf("service %s has no cluster IP (headless): trace to one of its pods instead", d.Svc)
		}
		p, err := servicePort(svc, e.o.port)
		if err != nil {
			return err
		}
		d.IP, d.Port = svc.Spec.ClusterIP, int(p.Port)
		if d.Proto == "" {
			d.Proto = strings.ToLower(string(p.Protocol))
		}
		return checkProto(d.Proto)
	}
	ns, name := e.splitName(strings.TrimPrefix(d.Text, "pod/"))
	d.Pod = ns + "/" + name
	lsp, err := selectOne(nb, "Logical_Switch_Port", ovsdb.NewCondition("name", ovsdb.ConditionEqual, conventions.PodPortName(ns, name)))
	if err != nil && !strings.HasPrefix(d.Text, "pod/") {
		// Not a pod's port: a Service of that name, if there is one.
		if kube, kerr := e.kubeClient(ctx); kerr == nil {
			if _, serr := kube.CoreV1().Services(ns).Get(ctx, name, metav1.GetOptions{}); serr == nil {
				d.Pod, d.Text = "", "svc/"+ns+"/"+name
				return e.resolveDestination(ctx, nb, d)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("destination pod %s: %w", d.Pod, err)
	}
	if _, d.IP, err = lspAddress(lsp); err != nil {
		return fmt.Errorf("destination pod %s: %w", d.Pod, err)
	}
	d.Port = 80
	if e.o.port != "" {
		if d.Port, err = strconv.Atoi(e.o.port); err != nil {
			return fmt.Errorf("%w: --port %q: a pod destination takes a number", errUsage, e.o.port)
		}
	}
	if d.Proto == "" {
		d.Proto = "tcp"
	}
	return checkProto(d.Proto)
}

func checkProto(p string) error {
	switch p {
	case "tcp", "udp", "sctp":
		return nil
	}
	return fmt.Errorf("%w: protocol %q: tcp, udp or sctp", errUsage, p)
}

func servicePort(svc *corev1.Service, want string) (corev1.ServicePort, error) {
	if len(svc.Spec.Ports) == 0 {
		return corev1.ServicePort{}, fmt.Errorf("service %s/%s has no ports", svc.Namespace, svc.Name)
	}
	if want == "" {
		return svc.Spec.Ports[0], nil
	}
	for _, p := range svc.Spec.Ports {
		if p.Name == want || strconv.Itoa(int(p.Port)) == want {
			return p, nil
		}
	}
	return corev1.ServicePort{}, fmt.Errorf("service %s/%s has no port %q", svc.Namespace, svc.Name, want)
}

// selectOne returns the one NB row of table matching cond.
func selectOne(c *ovsdbrows.Client, table string, cond ovsdb.Condition) (ovsdbrows.Row, error) {
	rows, err := c.Select(table, []ovsdb.Condition{cond})
	if err != nil {
		return nil, err
	}
	if len(rows) != 1 {
		return nil, fmt.Errorf("%d NB %s rows %v (has the controller written it?)", len(rows), table, cond)
	}
	return rows[0], nil
}

// holdsPort is the condition that a switch's or port group's ports include the port with UUID u.
func holdsPort(u string) ovsdb.Condition {
	return ovsdb.NewCondition("ports", ovsdb.ConditionIncludes, ovsdb.UUID{GoUUID: u})
}

// lspAddress is the MAC and IPv4 address of a logical switch port's "MAC IP..." addresses.
func lspAddress(lsp ovsdbrows.Row) (string, string, error) {
	for _, a := range lsp.Set("addresses") {
		f := strings.Fields(a)
		for _, ip := range f[1:] {
			if addr, err := netip.ParseAddr(ip); err == nil && addr.Is4() {
				return f[0], ip, nil
			}
		}
	}
	return "", "", fmt.Errorf("logical port %s has no IPv4 address (addresses %v)", lsp.String("name"), lsp.Set("addresses"))
}

// switchGatewayMAC is the MAC of the router port the switch's router-type port peers with: the pods'
// default gateway.
func switchGatewayMAC(c *ovsdbrows.Client, ls ovsdbrows.Row) (string, error) {
	for _, u := range ls.Set("ports") {
		p, err := selectOne(c, "Logical_Switch_Port", ovsdbrows.UUIDIs(u))
		if err != nil || p.String("type") != "router" {
			continue
		}
		lrp, err := selectOne(c, "Logical_Router_Port", ovsdb.NewCondition("name", ovsdb.ConditionEqual, p.Map("options")["router-port"]))
		if err != nil {
			return "", err
		}
		return lrp.String("mac"), nil
	}
	return "", errors.New("the switch has no router port")
}

// runTrace runs ovn-trace against SB, with the NB connection's TLS files.
func (e *env) runTrace(ctx context.Context, sb *database, datapath, flow string) (string, []string, error) {
	args := []string{"--db=" + sb.addresses}
	if f := sb.files; f.Set() {
		args = append(args, "-C", f.CACert)
		if f.Cert != "" {
			args = append(args, "-p", f.Key, "-c", f.Cert)
		}
	}
	// Every conntrack lookup sees a new connection, as for a first packet (ovn-trace's default is an
	// established one, which skips the ACLs that decide).
	args = append(args, "--ct=new", "--ct=new", "--ct=new", "--ct=new", "--ct=new", "--ct=new")
	if e.o.lbDst != "" {
		args = append(args, "--lb-dst="+e.o.lbDst)
	}
	args = append(args, datapath, flow)
	tctx, cancel := context.WithTimeout(ctx, e.o.traceTimeout)
	defer cancel()
	cmd := exec.CommandContext(tctx, "ovn-trace", args...)
	out, err := cmd.CombinedOutput()
	full := append([]string{"ovn-trace"}, args...)
	if tctx.Err() != nil {
		return "", full, fmt.Errorf("ovn-trace against SB %s did not finish within %s", sb.addresses, e.o.traceTimeout)
	}
	if err != nil {
		return "", full, fmt.Errorf("ovn-trace: %w: %s", err, oneLine(strings.TrimSpace(string(out))))
	}
	return string(out), full, nil
}

func (e *env) printTrace(r traceReport) {
	dst := r.Destination.Text
	switch {
	case r.Destination.Svc != "":
		dst = fmt.Sprintf("Service %s (%s:%d/%s)", r.Destination.Svc, r.Destination.IP, r.Destination.Port, r.Destination.Proto)
	case r.Destination.Pod != "":
		dst = fmt.Sprintf("pod %s (%s:%d/%s)", r.Destination.Pod, r.Destination.IP, r.Destination.Port, r.Destination.Proto)
	}
	fmt.Fprintf(e.out, "trace: pod %s (%s) -> %s\n", r.Source.Pod, r.Source.IP, dst)
	fmt.Fprintf(e.out, "verdict: %s\n", r.Verdict)
	e.section("STAGES THAT DECIDED")
	if len(r.Findings) == 0 {
		fmt.Fprintln(e.out, "(plain switching and routing)")
	} else {
		t := newTable(e.out, "WHAT", "WHERE", "DETAIL")
		for _, f := range r.Findings {
			t.row(f.Kind, f.Where, f.Detail)
		}
		t.flush()
	}
	fmt.Fprintf(e.out, "\nmicroflow (on %s): %s\n", r.Datapath, r.Microflow)
	fmt.Fprintln(e.out, "raw trace: add --raw")
}
