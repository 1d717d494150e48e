package ovntrace

import (
	"os"
	"path/filepath"
	"testing"
)

func parseFile(t *testing.T, name string) *Trace {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return Parse(string(b))
}

func TestPodToPod(t *testing.T) {
	tr := parseFile(t, "pod-to-pod.txt")
	d := tr.Delivered()
	if len(d) != 1 || d[0].Port != "default_c" || d[0].Type != "" || d[0].Datapath != "n2" {
		t.Fatalf("delivered %+v, want default_c on n2", d)
	}
	if len(tr.Pipelines) != 6 {
		t.Errorf("%d pipelines, want 6", len(tr.Pipelines))
	}
	first := tr.Pipelines[0]
	if first.Direction != "ingress" || first.Datapath != "n1" || first.InPort != "default_a" {
		t.Errorf("first pipeline %+v", first)
	}
	if tr.Flow == "" {
		t.Error("no microflow")
	}
}

func TestPodToService(t *testing.T) {
	tr := parseFile(t, "pod-to-service.txt")
	var lb *Stage
	for _, s := range tr.Stages() {
		if _, ok := s.HasAction("ct_lb_mark(backends="); ok {
			lb = s
		}
	}
	if lb == nil || lb.Name != "ls_in_lb" || lb.Priority != 120 || lb.UUID != "aef5af39" ||
		lb.Match != "ct.new && ip4.dst == 10.96.0.10 && tcp.dst == 80" || lb.Pipeline.Datapath != "n1" {
		t.Fatalf("load balancer stage %+v", lb)
	}
	if d := tr.Delivered(); len(d) != 1 || d[0].Port != "default_b" {
		t.Errorf("delivered %+v, want default_b", d)
	}
}

func TestDenied(t *testing.T) {
	for _, name := range []string{"pod-denied.txt", "pod-denied-logged.txt"} {
		tr := parseFile(t, name)
		if !tr.Dropped() {
			t.Errorf("%s: not dropped: %+v", name, tr.Delivered())
		}
		last := tr.Last()
		if last == nil || last.Name != "ls_out_acl" || last.Priority != 2000 || last.Pipeline.OutPort != "default_c" {
			t.Errorf("%s: last stage %+v", name, last)
		}
	}
	if logs := parseFile(t, "pod-denied-logged.txt").Logs; len(logs) != 1 {
		t.Errorf("logs %q", logs)
	}
}

// A pod's packet to the outside, captured in TestDunlinctl: through the node's gateway router, SNATed,
// out of the localnet port that a multicast group (unknown MACs) fans out to.
func TestPodToOutside(t *testing.T) {
	tr := parseFile(t, "pod-to-outside.txt")
	d := tr.Delivered()
	if len(d) != 1 || d[0].Port != "br-ex_node1" || d[0].Type != "localnet" || d[0].Datapath != "ext_node1" {
		t.Fatalf("delivered %+v, want br-ex_node1 on ext_node1", d)
	}
	last := tr.Pipelines[len(tr.Pipelines)-1]
	if last.Direction != "egress" || last.Datapath != "ext_node1" || last.OutPort != "br-ex_node1" || len(last.Stages) != 3 {
		t.Errorf("last pipeline %+v", last)
	}
	var snat *Stage
	for _, s := range tr.Stages() {
		if _, ok := s.HasAction("ct_snat(172.30.0.10);"); ok {
			snat = s
		}
	}
	if snat == nil || snat.Name != "lr_out_snat" || snat.Pipeline.Datapath != "GR_node1" {
		t.Errorf("SNAT stage %+v", snat)
	}
}
