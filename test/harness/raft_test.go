package harness

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A clustered NB and SB with northd, serving SSL with ovs-pki certificates: the leader's death elects
// another, writes go on through every address, and the killed member rejoins.
func TestClusteredOVNWithTLS(t *testing.T) {
	ctx := context.Background()
	dir := shortDir(t)
	certs, err := NewTLSFixture(filepath.Join(dir, "pki"), "ovndb")
	if err != nil {
		t.Fatal(err)
	}
	srv, cli := certs.Server, certs.Client
	start := time.Now()
	ovn, err := StartOVN(ctx, OVNOptions{Dir: filepath.Join(dir, "ovn"), WithSB: true, Clustered: true, TLS: &srv})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ovn.Stop(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("clustered NB and SB with northd ready in %s", time.Since(start).Round(time.Millisecond))
	if n := len(strings.Split(ovn.NBSSLAddr, ",")); n != 3 {
		t.Fatalf("NBSSLAddr %q: want 3 members", ovn.NBSSLAddr)
	}
	if _, err := ovn.NBCtl("ls-add", "x"); err != nil {
		t.Fatal(err)
	}
	// ovn-nbctl over SSL, with the client certificate the same CA signed.
	sslList := func() string {
		t.Helper()
		out, err := exec.Command("ovn-nbctl", "--db="+ovn.NBSSLAddr, "--timeout=20", "-p", cli.Key, "-c", cli.Cert,
			"-C", cli.CACert, "ls-list").CombinedOutput()
		if err != nil {
			t.Fatalf("ls-list over %s: %s, %v", ovn.NBSSLAddr, out, err)
		}
		return string(out)
	}
	if out := sslList(); !strings.Contains(out, "(x)") {
		t.Fatalf("ls-list over SSL = %q", out)
	}

	leader, err := ovn.RaftLeader(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := ovn.KillRaftMember(false, leader); err != nil {
		t.Fatal(err)
	}
	if err := Eventually(time.Minute, func() error {
		// A first try may commit and still fail (its server died): --may-exist makes it idempotent.
		_, err := ovn.NBCtl("--wait=sb", "--may-exist", "ls-add", "y")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if next, err := ovn.RaftLeader(ctx, false); err != nil || next == leader {
		t.Fatalf("leader after killing %d: %d, %v", leader, next, err)
	}
	// northd follows the NB leader too (its --wait=sb above may have been answered before it did).
	if err := Eventually(time.Minute, func() error {
		out, err := ovn.SBCtl("--columns=external_ids", "list", "Datapath_Binding")
		if err == nil && !strings.Contains(out, "name=y") {
			return errNotYet("no SB datapath for y: " + out)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := ovn.RestartRaftMember(ctx, false, leader); err != nil {
		t.Fatal(err)
	}
	// The restarted member has caught up: it answers reads of its own copy.
	addr, _ := ovn.RaftMemberAddr(false, leader)
	if err := Eventually(time.Minute, func() error {
		out, err := ovn.ctl(ctx, "ovn-nbctl", addr, "--no-leader-only", "ls-list")
		if err == nil && !strings.Contains(out, "(y)") {
			return errNotYet("restarted member lacks y: " + out)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := ovn.RaftMembersAlive(false); err != nil {
		t.Fatal(err)
	}
}

type errNotYet string

func (e errNotYet) Error() string { return string(e) }
