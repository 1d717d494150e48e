// Package ovntrace reads the output of `ovn-trace --detailed` (its default format) into pipelines and
// stages, and says what happened to the packet: which logical ports it was output to, and where it
// stopped when it was not. It knows nothing of Kubernetes; dunlinctl maps the stages back to objects.
package ovntrace

import (
	"bufio"
	"regexp"
	"strconv"
	"strings"
)

// Trace is one parsed trace.
type Trace struct {
	// Flow is the microflow as ovn-trace understood it (its first line, without "# ").
	Flow      string
	Pipelines []*Pipeline
	// Outputs are the ports the packet was output to, in order, patch ports included.
	Outputs []Output
	// Logs are the "LOG:" lines (ACLs with logging).
	Logs []string
}

// Pipeline is one pass through a datapath's ingress or egress pipeline, including the stages that ran
// after a conntrack recirculation (ct_next, ct_lb_mark, ct_dnat, ...) in the same datapath.
type Pipeline struct {
	Direction string // ingress or egress
	Datapath  string
	InPort    string
	OutPort   string
	Stages    []*Stage
}

// Stage is one logical flow that matched.
type Stage struct {
	Table    int
	Name     string // ls_in_acl, lr_in_dnat, ...
	Match    string
	Priority int
	UUID     string // the first 8 hex digits of the SB Logical_Flow's UUID
	Actions  []string
	// Pipeline is the pipeline the stage ran in.
	Pipeline *Pipeline `json:"-"`
}

// Output is a port the packet left a datapath through.
type Output struct {
	Port string
	Type string // "" (a VIF), patch, localnet, router, ...
	// Datapath is the datapath whose egress pipeline output it.
	Datapath string
}

var (
	headerRe = regexp.MustCompile(`^(ingress|egress)\((.*)\)$`)
	fieldRe  = regexp.MustCompile(`(\w+)="([^"]*)"`)
	// "13. lr_in_ip_routing (northd.c:10388): ip4.dst == 10.244.1.0/24, priority 74, uuid 2954058a";
	// the source location is absent in some versions.
	stageRe  = regexp.MustCompile(`^\s*(\d+)\. (\S+)(?: \([^)]*\))?: (.*), priority (\d+), uuid ([0-9a-f]+)$`)
	outputRe = regexp.MustCompile(`/\* output to "([^"]*)", type "([^"]*)" \*/`)
)

// Parse reads ovn-trace's detailed output.
func Parse(out string) *Trace {
	t := &Trace{}
	var cur *Pipeline
	var stage *Stage
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "# ") && t.Flow == "":
			t.Flow = strings.TrimPrefix(line, "# ")
		// Pipelines a multicast group fans out to are indented under it.
		case headerRe.MatchString(trimmed) && strings.Contains(trimmed, `dp="`):
			m := headerRe.FindStringSubmatch(trimmed)
			cur = &Pipeline{Direction: m[1]}
			for _, f := range fieldRe.FindAllStringSubmatch(m[2], -1) {
				switch f[1] {
				case "dp":
					cur.Datapath = f[2]
				case "inport":
					cur.InPort = f[2]
				case "outport":
					cur.OutPort = f[2]
				}
			}
			t.Pipelines = append(t.Pipelines, cur)
			stage = nil
		case stageRe.MatchString(line):
			m := stageRe.FindStringSubmatch(line)
			table, _ := strconv.Atoi(m[1])
			prio, _ := strconv.Atoi(m[4])
			if cur == nil { // a trace that starts in a recirculation: keep the stages anyway
				cur = &Pipeline{}
				t.Pipelines = append(t.Pipelines, cur)
			}
			stage = &Stage{Table: table, Name: m[2], Match: m[3], Priority: prio, UUID: m[5], Pipeline: cur}
			cur.Stages = append(cur.Stages, stage)
		case strings.HasPrefix(trimmed, "LOG:"):
			t.Logs = append(t.Logs, trimmed)
		case outputRe.MatchString(trimmed):
			m := outputRe.FindStringSubmatch(trimmed)
			o := Output{Port: m[1], Type: m[2]}
			if cur != nil {
				o.Datapath = cur.Datapath
			}
			t.Outputs = append(t.Outputs, o)
		case trimmed == "" || strings.Trim(trimmed, "-") == "":
			stage = nil
		case strings.HasPrefix(line, "    ") && stage != nil:
			stage.Actions = append(stage.Actions, trimmed)
		default:
			// A recirculation header (ct_lb_mark, ct_next(ct_state=...), ct_dnat, ...): the stages below
			// it continue the current pipeline.
			stage = nil
		}
	}
	return t
}

// Stages returns every stage of the trace in order.
func (t *Trace) Stages() []*Stage {
	var out []*Stage
	for _, p := range t.Pipelines {
		out = append(out, p.Stages...)
	}
	return out
}

// Delivered returns the outputs to ports that lead out of the logical network (VIFs, localnet ports,
// ...), not to another datapath: where the packet ends up.
func (t *Trace) Delivered() []Output {
	var out []Output
	for _, o := range t.Outputs {
		switch o.Type {
		case "patch", "l3gateway", "router", "chassisredirect":
		default:
			out = append(out, o)
		}
	}
	return out
}

// Last is the last stage that ran: when nothing was delivered, the one that dropped the packet.
func (t *Trace) Last() *Stage {
	s := t.Stages()
	if len(s) == 0 {
		return nil
	}
	return s[len(s)-1]
}

// Dropped reports whether the packet reached no port: its last stage dropped it (drop;, a log of
// verdict drop, reject, or simply no next;).
func (t *Trace) Dropped() bool { return len(t.Delivered()) == 0 }

// HasAction reports whether the stage has an action starting with prefix.
func (s *Stage) HasAction(prefix string) (string, bool) {
	for _, a := range s.Actions {
		if strings.HasPrefix(a, prefix) {
			return a, true
		}
	}
	return "", false
}
