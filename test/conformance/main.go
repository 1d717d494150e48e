// Command conformance runs the upstream Kubernetes [sig-network] [Conformance] tests (e2e.test, built at the
// pinned Kubernetes version), then its NetworkPolicy tests ([sig-network] Netpol), against a Dunlin
// cluster of real nodes on this machine: two nodes, each with containerd, runc and a kubelet, CoreDNS as
// a Deployment behind kube-dns at 10.96.0.10, no kube-proxy. It prints a table of the results of each
// part (passed, failed, skipped with the reason) and writes them next to the JUnit reports.
// `make conformance` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// group is one part of the run: the specs focus selects, less skip; each of envSkips names specs that
// cannot run on this machine, and why (they show in the table as skipped, with that reason).
type group struct {
	title, focus, skip string
	envSkips           []envSkip
}

type envSkip struct{ re, why string }

func main() {
	focus := flag.String("focus", `\[sig-network\].*\[Conformance\]`, "ginkgo focus of the conformance part")
	skip := flag.String("skip", "", "ginkgo skip of the conformance part")
	netpol := flag.Bool("netpol", true, "then run the upstream NetworkPolicy tests ([sig-network] Netpol)")
	netpolFocus := flag.String("netpol-focus", `\[sig-network\] Netpol`, "ginkgo focus of the NetworkPolicy part")
	out := flag.String("out", "", "directory for the JUnit reports, the e2e.test logs and the tables (default a new /tmp/dunlin-conformance-*)")
	keep := flag.Bool("keep", false, "leave the cluster running after the run, until Ctrl-C")
	flag.Parse()
	groups := []group{{title: "[sig-network] [Conformance]", focus: *focus, skip: *skip}}
	if *netpol {
		groups = append(groups, group{title: "[sig-network] Netpol (NetworkPolicy)", focus: *netpolFocus,
			envSkips: []envSkip{{re: `\[Feature:SCTPConnectivity\]`,
				why: "no SCTP on this machine: the kernel has no sctp module, so no pod can open an SCTP socket"}}})
	}
	if err := run(groups, *out, *keep); err != nil {
		klog.ErrorS(err, "conformance")
		os.Exit(1)
	}
}

func run(groups []group, out string, keep bool) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if out == "" {
		d, err := os.MkdirTemp("/tmp", "dunlin-conformance-")
		if err != nil {
			return err
		}
		out = d
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	kubeBin, err := harness.KubeBinDirWith("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd",
		"kubelet", "e2e.test", "agnhost")
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("/tmp", "dlcw")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bins, err := harness.BuildBinaries(ctx, filepath.Join(work, "bin"))
	if err != nil {
		return err
	}
	pauseBin := filepath.Join(work, "pause")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", pauseBin, "./test/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build pause: %w\n%s", err, b)
	}
	images, err := buildImages(work, kubeBin, pauseBin)
	if err != nil {
		return err
	}
	fmt.Printf("results in %s\n", out)
	var tables []string
	nfailed := 0
	round := 0
	for i, g := range groups {
		table, n, err := runGroup(ctx, g, &round, out, kubeBin, bins, images, keep && i == len(groups)-1)
		if err != nil {
			return err
		}
		tables = append(tables, "## "+g.title+"\n\n"+table)
		nfailed += n
		if ctx.Err() != nil {
			break
		}
	}
	all := strings.Join(tables, "\n")
	fmt.Print("\n" + all)
	tablePath := filepath.Join(out, "results.md")
	if err := os.WriteFile(tablePath, []byte(all), 0o644); err != nil {
		return err
	}
	fmt.Printf("table: %s\n", tablePath)
	if nfailed > 0 {
		return fmt.Errorf("%d failed", nfailed)
	}
	return nil
}

// runGroup runs one group's specs in rounds and returns its table and how many failed.
func runGroup(ctx context.Context, g group, round *int, out, kubeBin string, bins harness.Binaries, images []string, keep bool) (string, int, error) {
	start := time.Now()
	// ovs-vswitchd 3.1's userspace conntrack, the only datapath this machine has, can abort on the
	// suite's traffic (harness.Health names it). A round ends as soon as a daemon dies; the specs that
	// failed or did not run in it run again on a fresh cluster. A failure on a healthy cluster is final,
	// and so is a spec's third failure in rounds that lost a daemon.
	const maxAttempts, maxRounds = 3, 15
	skip := g.skip
	for _, e := range g.envSkips {
		skip = joinRE(skip, e.re)
	}
	todo, err := listSpecs(ctx, kubeBin, g.focus, skip, out)
	if err != nil {
		return "", 0, err
	}
	final := map[string]result{}
	if len(g.envSkips) > 0 {
		// The specs the machine rules out are listed (with their labels, which the regular expressions
		// match) and reported as skipped, with why.
		names, err := listSpecs(ctx, kubeBin, g.focus, g.skip, out)
		if err != nil {
			return "", 0, err
		}
		skipREs := make([]*regexp.Regexp, len(g.envSkips))
		for i, e := range g.envSkips {
			if skipREs[i], err = regexp.Compile(e.re); err != nil {
				return "", 0, fmt.Errorf("%s: skip %q: %w", g.title, e.re, err)
			}
		}
		for _, n := range names {
			if slices.Contains(todo, n) {
				continue
			}
			for i, e := range g.envSkips {
				if skipREs[i].MatchString(n) {
					final[n] = result{Name: n, Status: "skipped", Message: e.why}
				}
			}
		}
	}
	fmt.Printf("%s: %d specs to run, %d skipped\n", g.title, len(todo), len(final))
	attempts := map[string]int{}
	var notes []string
	var suite time.Duration
	for rounds := 1; rounds <= maxRounds && len(todo) > 0; rounds++ {
		*round++
		names := make([]string, 0, len(todo))
		for _, n := range todo {
			names = append(names, regexp.QuoteMeta(n))
		}
		rs, health, took, err := runRound(ctx, *round, strings.Join(names, "|"), skip, out, kubeBin, bins, images, keep)
		suite += took
		if err != nil {
			return "", 0, err
		}
		got := map[string]result{}
		for _, r := range rs {
			got[r.Name] = r
		}
		var again []string
		for _, n := range todo {
			r, ran := got[n]
			if ran && r.Status == "skipped" && strings.Contains(strings.ToLower(r.Message), "interrupt") {
				ran = false // left out when the round ended early
			}
			switch {
			case ran && (r.Status != "failed" || health == ""):
				final[n] = r
			case ran:
				attempts[n]++
				r.Message = fmt.Sprintf("(failed in %d rounds in which ovs-vswitchd died) %s", attempts[n], r.Message)
				if attempts[n] >= maxAttempts {
					final[n] = r
				} else {
					again = append(again, n)
				}
			default:
				again = append(again, n)
			}
		}
		if health != "" {
			notes = append(notes, fmt.Sprintf("round %d: %s", *round, health))
			fmt.Printf("round %d: %s; %d specs run again on a fresh cluster\n", *round, health, len(again))
		}
		todo = again
		if ctx.Err() != nil {
			break
		}
	}
	var results []result
	for _, r := range final {
		results = append(results, r)
	}
	why := "not run: the rounds ran out"
	if ctx.Err() != nil {
		why = "not run: interrupted"
	}
	for _, n := range todo {
		results = append(results, result{Name: n, Status: "failed", Message: why})
	}
	sortResults(results)
	table := formatTable(results, suite, time.Since(start))
	for _, n := range notes {
		table += "\n" + n + "\n"
	}
	return table, failed(results), nil
}

// joinRE is the alternation of two regular expressions, either of which may be empty.
func joinRE(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "|" + b
}

// listSpecs is the names of the specs focus and skip select (a dry run of e2e.test).
func listSpecs(ctx context.Context, kubeBin, focus, skip, out string) ([]string, error) {
	report := filepath.Join(out, "specs.xml")
	args := []string{"--ginkgo.dry-run", "--ginkgo.focus=" + focus, "--ginkgo.junit-report=" + report, "--kubeconfig=/dev/null"}
	if skip != "" {
		args = append(args, "--ginkgo.skip="+skip)
	}
	if b, err := exec.CommandContext(ctx, filepath.Join(kubeBin, "e2e.test"), args...).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("e2e.test --ginkgo.dry-run: %w\n%s", err, b)
	}
	rs, err := parseJUnit(report)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range rs {
		names = append(names, r.Name)
	}
	return names, nil
}

// runRound starts a cluster, runs e2e.test on it and stops it; health is the first line of each dead
// daemon's report, empty when all ran to the end.
func runRound(ctx context.Context, round int, focus, skip, out, kubeBin string, bins harness.Binaries, images []string, keep bool) (rs []result, health string, took time.Duration, err error) {
	start := time.Now()
	// The cluster's directory holds Unix sockets: keep its path short.
	dir, err := os.MkdirTemp("/tmp", "dlc")
	if err != nil {
		return nil, "", 0, err
	}
	defer os.RemoveAll(dir)
	startCtx, startCancel := context.WithTimeout(ctx, 8*time.Minute)
	defer startCancel()
	c, err := harness.StartCluster(startCtx, harness.ClusterOptions{
		// Gateway: every node's uplink in br-ex, as on a real node; pods reach node IPs (the API's
		// endpoint, NodePorts) through it.
		// DNS: CoreDNS as a Deployment behind kube-dns, the kubelets' cluster DNS; ready on return.
		Dir: dir, Bins: bins, RealNodes: true, APIServerOnNode: true, ClusterEgress: true, Gateway: true,
		DNS: true, ExtraImages: images,
		// Every default controller of kube-controller-manager, as a kubeadm cluster runs it (nodeipam
		// stays off: it needs --allocate-node-cidrs, and Dunlin allocates the node subnets).
		KCMControllers: []string{"*"},
	})
	if err != nil {
		return nil, "", 0, fmt.Errorf("start cluster: %w", err)
	}
	defer func() {
		if err := c.Stop(); err != nil {
			klog.ErrorS(err, "stop cluster")
		}
	}()
	fmt.Printf("round %d: cluster in %s up, CoreDNS ready, in %s\n", round, dir, time.Since(start).Round(time.Second))
	report := filepath.Join(out, fmt.Sprintf("junit-%d.xml", round))
	logPath := filepath.Join(out, fmt.Sprintf("e2e-%d.log", round))
	suiteStart := time.Now()
	// A dead daemon fails every spec after it: the round ends with it.
	suiteCtx, stopSuite := context.WithCancel(ctx)
	defer stopSuite()
	go func() {
		for suiteCtx.Err() == nil {
			if c.Health() != nil {
				stopSuite()
				return
			}
			select {
			case <-suiteCtx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}()
	runErr := runSuite(suiteCtx, kubeBin, c.Kube.Kubeconfig, focus, skip, out, report, logPath)
	stopSuite()
	took = time.Since(suiteStart)
	if h := c.Health(); h != nil {
		var lines []string
		for _, l := range strings.Split(h.Error(), "\n") {
			if strings.Contains(l, "DIED") {
				lines = append(lines, l)
			}
		}
		health = strings.Join(lines, "; ")
	}
	rs, err = parseJUnit(report)
	if err != nil {
		return nil, health, took, fmt.Errorf("e2e.test (%v): %w; see %s", runErr, err, logPath)
	}
	// Kept only when no further round follows.
	if keep && (health == "" || failed(rs) == 0) {
		fmt.Printf("cluster kept: KUBECONFIG=%s; Ctrl-C to stop\n", c.Kube.Kubeconfig)
		<-ctx.Done()
	}
	return rs, health, took, nil
}

// runSuite runs e2e.test against the cluster and copies its output to logPath.
func runSuite(ctx context.Context, kubeBin, kubeconfig, focus, skip, out, report, logPath string) error {
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--provider=local",
		"--kubectl-path=" + filepath.Join(kubeBin, "kubectl"),
		"--dns-domain=" + harness.ClusterDomain,
		"--node-os-distro=debian",
		"--disable-log-dump",
		"--allowed-not-ready-nodes=0",
		"--report-dir=" + out,
		"--ginkgo.focus=" + focus,
		"--ginkgo.junit-report=" + report,
		"--ginkgo.no-color",
		"--ginkgo.v",
		"--ginkgo.timeout=3h",
	}
	if skip != "" {
		args = append(args, "--ginkgo.skip="+skip)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(kubeBin, "e2e.test"), args...)
	cmd.Dir = out
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+kubeBin+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	// Interrupted, ginkgo still cleans up and writes its report.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute
	fmt.Printf("running e2e.test (log: %s)\n", logPath)
	return cmd.Run()
}
