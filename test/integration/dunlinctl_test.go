package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

var (
	ctlOnce sync.Once
	ctlBin  string
	ctlErr  error
)

// dunlinctl builds cmd/dunlinctl once for the package.
func dunlinctl(t *testing.T) string {
	t.Helper()
	ctlOnce.Do(func() {
		ctlBin = filepath.Join(filepath.Dir(controllerBin), "dunlinctl")
		_, self, _, _ := runtime.Caller(0)
		build := exec.Command("go", append(harness.GoBuildFlags(), "-o", ctlBin, "./cmd/dunlinctl")...)
		build.Dir = filepath.Join(filepath.Dir(self), "..", "..")
		if out, err := build.CombinedOutput(); err != nil {
			ctlErr = fmt.Errorf("build dunlinctl: %w\n%s", err, out)
		}
	})
	if ctlErr != nil {
		t.Fatal(ctlErr)
	}
	return ctlBin
}

type ctlStatus struct {
	NB, SB struct {
		Reachable bool
		Leader    string
		Members   []struct {
			Endpoint, Error, Model string
			Leader                 bool
		}
	}
	Northd     struct{ Active bool }
	Controller struct {
		LeaseHolder, NBWriter string
		LastSync              *time.Time
	}
	Problems []string
}

// dunlinctl status and trace against a 3-member NB and SB over SSL with ovs-pki certificates: the
// leaders named, the TLS flags the controller takes, a wrong server name refused in one line, a killed
// leader reported unreachable while another leads, and ovn-trace run over SSL.
func TestDunlinctlClusteredTLS(t *testing.T) {
	certs, err := harness.NewTLSFixture(filepath.Join(t.TempDir(), "pki"), "ovndb")
	if err != nil {
		t.Fatal(err)
	}
	c := newClusterWith(t, harness.OVNOptions{WithSB: true, Clustered: true, TLS: &certs.Server}, "--leader-elect=true")
	c.createNode("n1")
	c.createPod("default", "a", "n1")
	c.createPod("default", "b", "n1")
	c.expectPort("default", "a", "n1")
	c.expectPort("default", "b", "n1")
	bin := dunlinctl(t)
	tlsFlags := []string{"--nb", c.ovn.NBSSLAddr, "--sb", c.ovn.SBSSLAddr, "--ovn-ca-cert", certs.Client.CACert,
		"--ovn-cert", certs.Client.Cert, "--ovn-key", certs.Client.Key, "--ovn-server-name", "ovndb", "--timeout", "3s"}
	var stderr bytes.Buffer
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append(append([]string{"--kubeconfig", c.kube.Kubeconfig}, tlsFlags...), args...)...)
		var stdout bytes.Buffer
		stderr.Reset()
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return stdout.String(), err
	}
	status := func() (ctlStatus, error) {
		var s ctlStatus
		out, err := run("status", "-o", "json")
		if jerr := json.Unmarshal([]byte(out), &s); jerr != nil {
			return s, fmt.Errorf("status -o json: %v (%v)\n%s", jerr, err, out)
		}
		return s, err
	}
	leaderAddr := func(sb bool) string {
		i, err := c.ovn.RaftLeader(context.Background(), sb)
		if err != nil {
			t.Fatal(err)
		}
		addrs := c.ovn.NBSSLAddr
		if sb {
			addrs = c.ovn.SBSSLAddr
		}
		return strings.Split(addrs, ",")[i]
	}

	s, err := status()
	// The node has no chassis (no ovn-controller runs here): the only problem allowed.
	if err != nil || !s.NB.Reachable || !s.SB.Reachable || !s.Northd.Active || len(s.NB.Members) != 3 ||
		s.NB.Leader != leaderAddr(false) || s.SB.Leader != leaderAddr(true) || len(s.Problems) != 1 || !strings.Contains(s.Problems[0], "n1 has no chassis") {
		t.Fatalf("status: %v %+v", err, s)
	}
	// The controller holding the Lease is the one whose claim NB carries, and it has synced.
	c.eventually(converge, "the controller's sync time in NB", func() error {
		if s, err = status(); err != nil || s.Controller.LastSync == nil {
			return fmt.Errorf("%v, controller %+v", err, s.Controller)
		}
		return nil
	})
	if s.Controller.LeaseHolder == "" || s.Controller.LeaseHolder != s.Controller.NBWriter {
		t.Errorf("Lease holder %q, NB writer %q", s.Controller.LeaseHolder, s.Controller.NBWriter)
	}
	out, err := run("status")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("$ dunlinctl status\n%s", out)
	if !strings.Contains(out, s.NB.Leader+" (leader)") || strings.Count(out, "(follower)") != 4 {
		t.Errorf("status does not show the leaders:\n%s", out)
	}

	// Uninstall while the controller holds its Lease: a warning, and nothing written without --yes.
	if out, err = run("uninstall"); err != nil || !strings.Contains(stderr.String(), "stop it first") || !strings.Contains(out, "would delete") {
		t.Errorf("uninstall dry run with the controller running: %v\n%s\n%s", err, stderr.String(), out)
	}

	out, err = run("trace", "default/a", "default/b", "--port", "8080")
	if err != nil || !strings.Contains(out, "verdict: delivered to pod default/b") {
		t.Errorf("trace over SSL: %v\n%s", err, out)
	}

	// A server certificate of another name is refused, in one line naming the endpoints.
	_, err = run("status", "--ovn-server-name", "ovnsb")
	if err == nil || !strings.Contains(err.Error(), "NB "+c.ovn.NBSSLAddr+" unreachable") ||
		!strings.Contains(err.Error(), `not for the expected server name "ovnsb"`) || strings.Contains(err.Error(), "\n") {
		t.Errorf("status with a wrong server name: %v", err)
	}

	// The NB leader dies: status names it unreachable and the new leader.
	dead := leaderAddr(false)
	i, _ := c.ovn.RaftLeader(context.Background(), false)
	if err := c.ovn.KillRaftMember(false, i); err != nil {
		t.Fatal(err)
	}
	c.eventually(converge, "a new NB leader in dunlinctl status", func() error {
		s, err := status()
		if err != nil {
			return err
		}
		if s.NB.Leader == "" || s.NB.Leader == dead {
			return fmt.Errorf("NB leader %q", s.NB.Leader)
		}
		for _, m := range s.NB.Members {
			if m.Endpoint == dead && m.Error == "" {
				return fmt.Errorf("the dead member %s looks reachable", dead)
			}
		}
		return nil
	})
}
