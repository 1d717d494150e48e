package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// repoRoot finds the module root from this file's location (go run keeps absolute source paths), else
// by walking up from the working directory.
func repoRoot() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		if dir := filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..")); isRepoRoot(dir) {
			return dir, nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isRepoRoot(dir) {
			return dir, nil
		}
		if dir == filepath.Dir(dir) {
			return "", fmt.Errorf("no go.mod of %s above %s: run the demo from the repository", module, wd)
		}
	}
}

func isRepoRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) == 2 && fields[0] == "module" {
			return fields[1] == module
		}
	}
	return false
}

// timed prints what is being done, runs f and prints how it went.
func timed(what string, f func() error) error {
	fmt.Printf("--> %s ... ", what)
	start := time.Now()
	if err := f(); err != nil {
		fmt.Println("failed")
		return err
	}
	fmt.Printf("ok (%s)\n", time.Since(start).Round(10*time.Millisecond))
	return nil
}

// start builds the controller while the servers start (linking takes seconds), then runs it.
func (e *env) start(ctx context.Context, root string) error {
	buildCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	built := make(chan error, 1)
	go func() { built <- buildController(buildCtx, root, e.ctrlBin) }()
	fmt.Printf("--> Building dunlin-controller from %s in the background\n", root)

	serversErr := e.startServers(ctx)
	if serversErr != nil {
		cancel()
	}
	// Wait even after a failure, so that teardown does not remove the directory under the build.
	var buildErr error
	if serversErr == nil {
		buildErr = timed("Waiting for the dunlin-controller build", func() error { return <-built })
	} else {
		<-built
	}
	if err := errors.Join(serversErr, buildErr); err != nil {
		return err
	}
	return timed("Starting dunlin-controller (ready = startup sync done, NB connected)",
		func() error { return e.startController(ctx) })
}

func buildController(ctx context.Context, root, bin string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/dunlin-controller")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/dunlin-controller: %w\n%s", err, out)
	}
	return nil
}

func (e *env) startServers(ctx context.Context) error {
	err := timed("Starting OVN: NB and SB ovsdb-server, ovn-northd", func() error {
		var err error
		e.ovn, err = harness.StartOVN(ctx, harness.OVNOptions{Dir: filepath.Join(e.dir, "ovn"), WithSB: true})
		return err
	})
	if err != nil {
		return err
	}
	err = timed("Starting etcd and kube-apiserver", func() error {
		var err error
		e.kube, err = harness.StartKube(ctx, harness.KubeOptions{Dir: filepath.Join(e.dir, "kube"), ServiceCIDR: serviceCIDR})
		return err
	})
	if err != nil {
		return err
	}
	// kubectl only shows things; StartKube builds just the servers, `make demo` builds kubectl too.
	if k := filepath.Join(e.kube.BinDir, "kubectl"); fileExists(k) {
		e.kubectl = k
	} else {
		fmt.Printf("    (no kubectl in %s, skipping kubectl output; test/kubebin/build.sh kubectl builds it)\n", e.kube.BinDir)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func (e *env) startController(ctx context.Context) error {
	addr, err := harness.FreeLoopbackAddr()
	if err != nil {
		return err
	}
	e.metrics = addr
	e.ctrl, err = harness.StartProcess("dunlin-controller", e.ctrlLog, nil, e.ctrlBin,
		"--kubeconfig", e.kube.Kubeconfig,
		"--nb-address", e.ovn.NBAddr,
		"--metrics-bind-address", e.metrics,
		"--leader-elect=false",
		"--cluster-cidr", clusterCIDR,
		"--node-subnet-prefix", subnetBits,
		"--service-cidr", serviceCIDR,
	)
	if err != nil {
		return fmt.Errorf("start dunlin-controller: %w", err)
	}
	url := "http://" + e.metrics + "/readyz"
	return e.poll(ctx, readyTimeout, func() error { return harness.HTTPOK(ctx, http.DefaultClient, url, "") },
		func(last error) error { return fmt.Errorf("dunlin-controller not ready: %w", last) })
}

// poll calls check until it returns nil. On timeout it returns fail(last check error); it stops early
// when the controller exits or ctx ends. Either way the error carries the controller's log tail,
// because that log is where the reason is.
func (e *env) poll(ctx context.Context, timeout time.Duration, check func() error, fail func(last error) error) error {
	deadline := time.Now().Add(timeout)
	for {
		last := check()
		if last == nil {
			return nil
		}
		switch {
		case e.ctrl != nil && e.ctrl.Exited():
			return fmt.Errorf("dunlin-controller exited (last check: %v)%s", last, e.ctrlLogTail())
		case time.Now().After(deadline):
			return fmt.Errorf("gave up after %s: %w%s", timeout, fail(last), e.ctrlLogTail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting stopped: %w", ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

func (e *env) ctrlLogTail() string {
	if e.ctrl == nil {
		return ""
	}
	return fmt.Sprintf("\n--- last lines of %s ---\n%s", e.ctrlLog, e.ctrl.LogTail(logTailLines))
}

func (e *env) teardown() error {
	err := timed("Tearing down: dunlin-controller, kube-apiserver and etcd, OVN, "+e.dir, func() error {
		var errs []error
		// The controller first, so that it does not log its servers vanishing.
		if e.ctrl != nil {
			errs = append(errs, e.ctrl.Stop())
		}
		if e.kube != nil {
			errs = append(errs, e.kube.Stop())
		}
		if e.ovn != nil {
			errs = append(errs, e.ovn.Stop())
		}
		errs = append(errs, os.RemoveAll(e.dir))
		return errors.Join(errs...)
	})
	if err != nil {
		return &teardownError{err}
	}
	return nil
}

// teardownError is a failure to stop something or remove the directory: processes or files may be
// left behind, which the user must hear about even after an interruption.
type teardownError struct{ err error }

func (e *teardownError) Error() string { return "teardown: " + e.err.Error() }
func (e *teardownError) Unwrap() error { return e.err }
