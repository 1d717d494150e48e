// Command conformance runs the upstream Kubernetes [sig-network] [Conformance] tests (e2e.test, built at the
// pinned Kubernetes version) against a Dunlin cluster of real nodes on this machine: two nodes, each with
// containerd, runc and a kubelet, CoreDNS as a Deployment behind kube-dns at 10.96.0.10, no kube-proxy.
// It prints a table of the results (passed, failed, skipped with the reason) and writes it next to the
// JUnit report. `make conformance` runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/test/harness"
)

func main() {
	focus := flag.String("focus", `\[sig-network\].*\[Conformance\]`, "ginkgo focus of the e2e.test run")
	skip := flag.String("skip", "", "ginkgo skip of the e2e.test run")
	out := flag.String("out", "", "directory for the JUnit report, the e2e.test log and the table (default a new /tmp/dunlin-conformance-*)")
	keep := flag.Bool("keep", false, "leave the cluster running after the run, until Ctrl-C")
	flag.Parse()
	if err := run(*focus, *skip, *out, *keep); err != nil {
		klog.ErrorS(err, "conformance")
		os.Exit(1)
	}
}

func run(focus, skip, out string, keep bool) error {
	start := time.Now()
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
	// The cluster's directory holds Unix sockets: keep its path short.
	dir, err := os.MkdirTemp("/tmp", "dlc")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	fmt.Printf("results in %s, cluster in %s\n", out, dir)

	kubeBin, err := harness.KubeBinDirWith("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd",
		"kubelet", "e2e.test", "agnhost")
	if err != nil {
		return err
	}
	corednsBin, err := harness.CoreDNSBinary()
	if err != nil {
		return err
	}
	bins, err := harness.BuildBinaries(ctx, filepath.Join(dir, "bin"))
	if err != nil {
		return err
	}
	imgDir := filepath.Join(dir, "upstream-images")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		return err
	}
	pauseBin := filepath.Join(imgDir, "pause")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", pauseBin, "./test/pause")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build pause: %w\n%s", err, b)
	}
	images, err := buildImages(imgDir, kubeBin, corednsBin, pauseBin)
	if err != nil {
		return err
	}

	startCtx, startCancel := context.WithTimeout(ctx, 5*time.Minute)
	defer startCancel()
	c, err := harness.StartCluster(startCtx, harness.ClusterOptions{
		// Gateway: every node's uplink in br-ex, as on a real node; pods reach node IPs (the API's
		// endpoint, NodePorts) through it.
		Dir: dir, Bins: bins, RealNodes: true, APIServerOnNode: true, ClusterEgress: true, Gateway: true,
		KubeletDNS: true, ExtraImages: images,
		// Every default controller of kube-controller-manager, as a kubeadm cluster runs it (nodeipam
		// stays off: it needs --allocate-node-cidrs, and Dunlin allocates the node subnets).
		KCMControllers: []string{"*"},
	})
	if err != nil {
		return fmt.Errorf("start cluster: %w", err)
	}
	defer func() {
		if err := c.Stop(); err != nil {
			klog.ErrorS(err, "stop cluster")
		}
	}()
	fmt.Printf("cluster up in %s\n", time.Since(start).Round(time.Second))
	if err := startCoreDNS(startCtx, c); err != nil {
		return err
	}
	fmt.Printf("CoreDNS ready after %s\n", time.Since(start).Round(time.Second))

	report := filepath.Join(out, "junit.xml")
	logPath := filepath.Join(out, "e2e.log")
	suiteStart := time.Now()
	runErr := runSuite(ctx, kubeBin, c.Kube.Kubeconfig, focus, skip, out, report, logPath)
	suite := time.Since(suiteStart)
	// A daemon that died during the run (ovs-vswitchd above all) explains the failures after it.
	health := c.Health()
	results, err := parseJUnit(report)
	if err != nil {
		return fmt.Errorf("e2e.test (%v): %w; see %s", runErr, err, logPath)
	}
	table := formatTable(results, suite, time.Since(start))
	if health != nil {
		table += fmt.Sprintf("\nDead daemons after the run: %v\n", health)
	}
	fmt.Print(table)
	tablePath := filepath.Join(out, "results.md")
	if err := os.WriteFile(tablePath, []byte(table), 0o644); err != nil {
		return err
	}
	fmt.Printf("table: %s\nlog: %s\n", tablePath, logPath)
	if keep {
		fmt.Printf("cluster kept: KUBECONFIG=%s; Ctrl-C to stop\n", c.Kube.Kubeconfig)
		<-ctx.Done()
	}
	if failed(results) > 0 {
		return fmt.Errorf("%d failed", failed(results))
	}
	return nil
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
