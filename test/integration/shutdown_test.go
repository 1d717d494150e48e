package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/utils/ptr"
)

// The controller's leader election Lease with the default --leader-elect-namespace.
const (
	shutdownLeaseNamespace = "kube-system"
	shutdownLeaseName      = "dunlin-controller"
	// shutdownExitTimeout bounds how long a stopping controller may take on a loaded machine; no test
	// asserts how fast it is.
	shutdownExitTimeout = 2 * time.Minute
)

// TestSIGTERMReleasesLeaseAndRecordsStoppedLeading stops a leading controller the way the kubelet does
// and checks what must be true once the process has exited: the Lease is released (so the standby
// takes over at once), the "stopped leading" LeaderElection event is in the API, and nothing was
// logged as an error on the way out.
func TestSIGTERMReleasesLeaseAndRecordsStoppedLeading(t *testing.T) {
	c := newCluster(t, "--leader-elect=true")
	holder := c.shutdownWaitLeaseHeld()
	// Leading and translating: a new node gets its switch.
	c.createNode("n1")
	c.eventually(time.Minute, "switch n1 in NB", func() error {
		out, err := c.ovn.NBCtl("--bare", "--columns=name", "find", "Logical_Switch", "name=n1")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "n1" {
			return fmt.Errorf("no switch n1 yet")
		}
		return nil
	})
	c.eventually(time.Minute, "the became-leader event", func() error {
		return c.shutdownLeaderEvent(holder + " became leader")
	})

	from := c.shutdownLogSize()
	if err := c.ctrl.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.ctrl.WaitExit(shutdownExitTimeout); err != nil {
		t.Fatalf("controller did not exit with status 0 on SIGTERM: %v", err)
	}
	c.ctrl = nil
	t.Logf("controller log from SIGTERM on:\n%s", c.shutdownLogSince(from))

	// All of this happened before the process exited: no waiting from here on.
	lease, err := c.client.CoordinationV1().Leases(shutdownLeaseNamespace).Get(context.Background(), shutdownLeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get lease: %v", err)
	}
	if h := ptr.Deref(lease.Spec.HolderIdentity, ""); h != "" {
		t.Errorf("lease still held by %q after SIGTERM, want released", h)
	}
	if err := c.shutdownLeaderEvent(holder + " stopped leading"); err != nil {
		t.Errorf("after the controller exited: %v", err)
	}
	if lines := c.shutdownErrorLines(from); len(lines) > 0 {
		t.Errorf("controller logged errors while shutting down:\n%s", strings.Join(lines, "\n"))
	}
}

// TestSIGTERMOnStandby stops a controller that never got the Lease (another replica holds it): it
// exits cleanly, leaves the other replica's Lease alone and never wrote to NB.
func TestSIGTERMOnStandby(t *testing.T) {
	// The first controller exits at once on a bad flag, having written nothing; the one under test
	// starts while another replica holds the Lease for an hour.
	c := newCluster(t, "--workers=0")
	if err := c.ctrl.WaitExit(shutdownExitTimeout); err == nil {
		t.Fatal("controller with --workers=0 exited with status 0")
	}
	c.shutdownTakeLease("other-replica")
	c.flags = []string{"--leader-elect=true"}

	from := c.shutdownLogSize()
	c.startController()
	c.eventually(time.Minute, "standby trying to acquire the lease", func() error {
		if !strings.Contains(c.shutdownLogSince(from), "Attempting to acquire leader lease") {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	if err := c.ctrl.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.ctrl.WaitExit(shutdownExitTimeout); err != nil {
		t.Fatalf("standby did not exit with status 0 on SIGTERM: %v", err)
	}
	c.ctrl = nil

	if h := c.shutdownLeaseHolder(); h != "other-replica" {
		t.Errorf("lease holder after the standby exited is %q, want other-replica", h)
	}
	if out := c.nbctl("--bare", "--columns=name", "list", "Logical_Router"); strings.TrimSpace(out) != "" {
		t.Errorf("a standby wrote to NB: routers %q", out)
	}
	if lines := c.shutdownErrorLines(from); len(lines) > 0 {
		t.Errorf("standby logged errors:\n%s", strings.Join(lines, "\n"))
	}
}

// TestLostLeaseExits takes the Lease away from a leading controller (as when it was cut off from the
// apiserver and the standby took over): it must stop and exit with an error status, so that it is
// restarted as a standby, and must not touch the new holder's Lease.
func TestLostLeaseExits(t *testing.T) {
	c := newCluster(t, "--leader-elect=true", "--leader-elect-lease-duration=6s")
	c.shutdownWaitLeaseHeld()
	c.shutdownTakeLease("other-replica")
	err := c.ctrl.WaitExit(shutdownExitTimeout)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
		t.Fatalf("controller that lost its lease: %v, want an exit with an error status", err)
	}
	c.ctrl = nil
	if h := c.shutdownLeaseHolder(); h != "other-replica" {
		t.Errorf("lease holder after the controller exited is %q, want other-replica", h)
	}
}

// shutdownWaitLeaseHeld waits until a controller holds the Lease and returns its identity.
func (c *cluster) shutdownWaitLeaseHeld() string {
	c.t.Helper()
	var holder string
	c.eventually(time.Minute, "controller holding the lease", func() error {
		holder = c.shutdownLeaseHolder()
		if holder == "" {
			return fmt.Errorf("lease not held")
		}
		return nil
	})
	return holder
}

// shutdownLeaseHolder is the Lease's holder, "" when it is released or does not exist.
func (c *cluster) shutdownLeaseHolder() string {
	c.t.Helper()
	lease, err := c.client.CoordinationV1().Leases(shutdownLeaseNamespace).Get(context.Background(), shutdownLeaseName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return ""
	}
	if err != nil {
		c.t.Fatalf("get lease: %v", err)
	}
	return ptr.Deref(lease.Spec.HolderIdentity, "")
}

// shutdownTakeLease makes holder the Lease's holder for an hour, as another replica would.
func (c *cluster) shutdownTakeLease(holder string) {
	c.t.Helper()
	leases := c.client.CoordinationV1().Leases(shutdownLeaseNamespace)
	now := metav1.NewMicroTime(time.Now())
	spec := coordinationv1.LeaseSpec{HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To[int32](3600),
		AcquireTime: &now, RenewTime: &now}
	err := harnessRetry(func() error {
		lease, err := leases.Get(context.Background(), shutdownLeaseName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = leases.Create(context.Background(), &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Namespace: shutdownLeaseNamespace, Name: shutdownLeaseName}, Spec: spec,
			}, metav1.CreateOptions{})
			return err
		}
		if err != nil {
			return err
		}
		lease.Spec = spec
		_, err = leases.Update(context.Background(), lease, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		c.t.Fatalf("take the lease for %s: %v", holder, err)
	}
}

// harnessRetry retries f while it fails with a conflict (the controller renews the same Lease).
func harnessRetry(f func() error) error {
	var err error
	for range 20 {
		if err = f(); err == nil || !apierrors.IsConflict(err) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// shutdownLeaderEvent returns nil when a LeaderElection event on the Lease carries message.
func (c *cluster) shutdownLeaderEvent(message string) error {
	sel := fields.Set{
		"involvedObject.kind": "Lease", "involvedObject.name": shutdownLeaseName, "reason": "LeaderElection",
	}.AsSelector()
	evs, err := c.client.CoreV1().Events(shutdownLeaseNamespace).List(context.Background(), metav1.ListOptions{FieldSelector: sel.String()})
	if err != nil {
		return err
	}
	var seen []string
	for _, e := range evs.Items {
		if e.Message == message {
			return nil
		}
		seen = append(seen, e.Message)
	}
	return fmt.Errorf("no LeaderElection event %q on lease %s/%s (have %q)", message, shutdownLeaseNamespace, shutdownLeaseName, seen)
}

func (c *cluster) shutdownLogPath() string { return filepath.Join(c.dir, "controller.log") }

// shutdownLogSize is the controller log's current size, the start of what a step logs.
func (c *cluster) shutdownLogSize() int64 {
	c.t.Helper()
	st, err := os.Stat(c.shutdownLogPath())
	if err != nil {
		c.t.Fatal(err)
	}
	return st.Size()
}

// shutdownLogSince is what the controller logged from offset on.
func (c *cluster) shutdownLogSince(offset int64) string {
	c.t.Helper()
	b, err := os.ReadFile(c.shutdownLogPath())
	if err != nil {
		c.t.Fatal(err)
	}
	if offset > int64(len(b)) {
		offset = int64(len(b))
	}
	return string(b[offset:])
}

// klogErrorLine matches klog's header of error and fatal lines: "E0102 15:04:05.000000 ...".
var klogErrorLine = regexp.MustCompile(`^[EF]\d{4} `)

// shutdownErrorLines are the error lines the controller logged from offset on.
func (c *cluster) shutdownErrorLines(offset int64) []string {
	var lines []string
	for _, l := range strings.Split(c.shutdownLogSince(offset), "\n") {
		if klogErrorLine.MatchString(l) {
			lines = append(lines, l)
		}
	}
	return lines
}
