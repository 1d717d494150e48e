package monitoring

import (
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/dunlinplugin/dunlin/nodeagent"
	"github.com/dunlinplugin/dunlin/translator"
	"github.com/dunlinplugin/dunlin/translator/ipam"
)

const (
	rulesFile     = "dunlin-alerts.yaml"
	ruleTestsFile = "dunlin-alerts_test.yaml"
	dashboardFile = "dunlin-dashboard.json"
)

// promtool builds (once, cached) Prometheus's promtool with test/promtool/build.sh.
func promtool(t *testing.T) string {
	t.Helper()
	_, self, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(self), "..", "..", "test", "promtool", "build.sh")
	out, err := exec.Command(script).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s: %v\n%s", script, err, stderr)
	}
	return strings.TrimSpace(string(out))
}

// The rule file is what Prometheus itself accepts, and each alert fires on the input meant to trigger
// it, only after its `for`, and not on healthy input (dunlin-alerts_test.yaml).
func TestAlertRulesWithPromtool(t *testing.T) {
	tool := promtool(t)
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", ruleTestsFile}} {
		out, err := exec.Command(tool, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
}

// Every alert of the rule file has a unit test that expects it to fire.
func TestEveryAlertIsTested(t *testing.T) {
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `json:"alertname"`
				ExpAlerts []map[string]any `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	readYAML(t, ruleTestsFile, &tests)
	fired := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			}
		}
	}
	for _, r := range rules(t) {
		if !fired[r.Alert] {
			t.Errorf("alert %s has no test in %s in which it fires", r.Alert, ruleTestsFile)
		}
	}
}

type rule struct {
	Alert string `json:"alert"`
	Expr  string `json:"expr"`
}

func rules(t *testing.T) []rule {
	t.Helper()
	var f struct {
		Groups []struct {
			Rules []rule `json:"rules"`
		} `json:"groups"`
	}
	readYAML(t, rulesFile, &f)
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no rule", rulesFile)
	}
	return out
}

func readYAML(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, v); err != nil && !strings.Contains(err.Error(), "unknown field") {
		t.Fatalf("%s: %v", name, err)
	}
}

// dashboardExprs returns every query of the dashboard (panels, rows' panels, template variables),
// keyed by the panel's title.
func dashboardExprs(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Type    string `json:"type"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		UID        string            `json:"uid"`
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: no uid or no panels", dashboardFile)
	}
	out := map[string][]string{}
	var walk func(raw []json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: panel: %v", dashboardFile, err)
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", dashboardFile, p.Title)
			}
			for _, tg := range p.Targets {
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s: panel %q has an empty query", dashboardFile, p.Title)
				}
				out[p.Title] = append(out[p.Title], tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) == nil && q.Query != "" {
			out["variable "+v.Name] = append(out["variable "+v.Name], q.Query)
		}
	}
	return out
}

var (
	metricName = regexp.MustCompile(`\bdunlin_[a-z0-9_]+`)
	// descName reads the name out of a prometheus.Desc, which has no getter for it.
	descName = regexp.MustCompile(`fqName: "([^"]+)"`)
)

// describer is a Registerer that keeps the names of the metrics registered with it.
type describer struct{ names map[string]bool }

func (d *describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	for desc := range ch {
		if m := descName.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	return nil
}

func (d *describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}

func (d *describer) Unregister(prometheus.Collector) bool { return false }

// exported is every metric name dunlin-controller and dunlin-node serve, from the collectors they
// register, whether or not they have a series yet.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	cluster, err := ipam.NewCluster(netip.MustParsePrefix("10.244.0.0/16"), 24)
	if err != nil {
		t.Fatal(err)
	}
	d := &describer{names: map[string]bool{}}
	translator.RegisterMetrics(d, cluster)
	nodeagent.RegisterMetrics(d)
	if len(d.names) < 10 {
		t.Fatalf("only %d metrics described: %v", len(d.names), d.names)
	}
	return d.names
}

// known says whether a name read in a query is an exported metric, or a histogram's series of one.
func known(names map[string]bool, n string) bool {
	for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
		if names[strings.TrimSuffix(n, suffix)] && (suffix == "" || strings.HasSuffix(n, suffix)) {
			return true
		}
	}
	return false
}

// A metric renamed or dropped in the code breaks the alert or panel that reads it: every dunlin_ name
// in the rules and the dashboard must be one the binaries export, and the rules and the dashboard
// must cover what operators are told to watch.
func TestRulesAndDashboardUseExportedMetrics(t *testing.T) {
	names := exported(t)
	used := map[string]bool{}
	check := func(where, expr string) {
		found := metricName.FindAllString(expr, -1)
		if len(found) == 0 {
			t.Errorf("%s reads no dunlin_ metric: %s", where, expr)
		}
		for _, n := range found {
			used[n] = true
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				used[strings.TrimSuffix(n, suffix)] = true
			}
			if !known(names, n) {
				t.Errorf("%s reads %s, which neither dunlin-controller nor dunlin-node exports", where, n)
			}
		}
	}
	for _, r := range rules(t) {
		check("alert "+r.Alert, r.Expr)
	}
	for title, exprs := range dashboardExprs(t) {
		for _, e := range exprs {
			check("dashboard panel "+title, e)
		}
	}
	// What issue 13 asks to watch: NB write errors, programming latency, IPAM exhaustion, CNI errors
	// and leader changes.
	for _, n := range []string{"dunlin_nb_transaction_errors_total", "dunlin_network_programming_duration_seconds",
		"dunlin_ipam_node_pod_addresses_capacity", "dunlin_ipam_node_subnets_capacity", "dunlin_cni_errors_total",
		"dunlin_controller_leader_since_timestamp_seconds", "dunlin_controller_is_leader"} {
		if !used[n] {
			t.Errorf("neither the rules nor the dashboard read %s", n)
		}
	}
	var unused []string
	for n := range names {
		if !used[n] && !used[n+"_bucket"] && !used[n+"_count"] {
			unused = append(unused, n)
		}
	}
	slices.Sort(unused)
	t.Logf("exported metrics in no rule or panel: %v", unused)
}
