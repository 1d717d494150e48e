package integration

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// dunlin-controller, the binary with its flags, writes NB over SSL with ovs-pki certificates, trusting
// the server by CA and name; with another expected name it refuses the server and says why.
func TestControllerOverTLS(t *testing.T) {
	certs, err := harness.NewTLSFixture(filepath.Join(t.TempDir(), "pki"), "ovnnb")
	if err != nil {
		t.Fatal(err)
	}
	c := newClusterWith(t, harness.OVNOptions{TLS: &certs.Server})
	c.stopController()
	tlsFlags := []string{"--nb-address", c.ovn.NBSSLAddr, "--ovn-ca-cert", certs.Client.CACert,
		"--ovn-cert", certs.Client.Cert, "--ovn-key", certs.Client.Key}

	c.flags = append(tlsFlags, "--ovn-server-name=ovnsb")
	c.startController()
	c.eventually(converge, "the refusal in the log", func() error {
		if log := tail(filepath.Join(c.dir, "controller.log"), 50); !strings.Contains(log, `is not for the expected server name \"ovnsb\"`) {
			return errString("no refusal logged yet")
		}
		return nil
	})
	c.stopController()

	c.flags = append(tlsFlags, "--ovn-server-name=ovnnb")
	c.startController()
	c.createNode("n1")
	c.createPod("default", "p", "n1")
	c.expectPort("default", "p", "n1")
	c.eventually(converge, "convergence", func() error { return c.checkConverged([]string{"n1"}) })
}

type errString string

func (e errString) Error() string { return string(e) }
