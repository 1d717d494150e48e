package translator_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/dunlinplugin/dunlin/internal/ovsdbtls"
	"github.com/dunlinplugin/dunlin/test/harness"
	"github.com/dunlinplugin/dunlin/translator"
)

// tlsFiles are copies of a PKI's files at fixed paths, as a mounted Secret keeps them: rotating means
// replacing the files under the reader.
type tlsFiles struct{ dir string }

func (f tlsFiles) files(serverName string) ovsdbtls.Files {
	return ovsdbtls.Files{CACert: filepath.Join(f.dir, "ca.pem"), Cert: filepath.Join(f.dir, "cert.pem"),
		Key: filepath.Join(f.dir, "key.pem"), ServerName: serverName}
}

func (f tlsFiles) certs() harness.Certs {
	x := f.files("")
	return harness.Certs{Cert: x.Cert, Key: x.Key, CACert: x.CACert}
}

// install copies c's files in, each replaced in one rename.
func (f tlsFiles) install(t *testing.T, c harness.Certs) {
	t.Helper()
	dst := f.certs()
	for src, to := range map[string]string{c.Cert: dst.Cert, c.Key: dst.Key, c.CACert: dst.CACert} {
		if err := harness.CopyFile(src, to); err != nil {
			t.Fatal(err)
		}
	}
}

func newTLSFiles(t *testing.T, dir string, c harness.Certs) tlsFiles {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := tlsFiles{dir: dir}
	f.install(t, c)
	return f
}

// The controller's NB client and store over SSL, with certificates made by ovs-pki (no IP SAN, a subject
// of "CN=ovnnb id:<uuid>"): it connects and writes; a server certificate of another CA, or of another
// name, is refused with an error naming why; and a rotation to a new CA, server and client
// certificates alike, is picked up by the running client when it reconnects, without a restart.
func TestNBOverTLSWithOVSPKICertificates(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir, err := os.MkdirTemp("", "dl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	certs, err := harness.NewTLSFixture(filepath.Join(dir, "pki"), "ovnnb")
	if err != nil {
		t.Fatal(err)
	}
	serverA, clientA, serverB, clientB := certs.Server, certs.Client, certs.OtherServer, certs.OtherClient

	server := newTLSFiles(t, filepath.Join(dir, "server"), serverA)
	client := newTLSFiles(t, filepath.Join(dir, "client"), clientA)
	srvCerts := server.certs()
	ovn, err := harness.StartOVN(ctx, harness.OVNOptions{Dir: filepath.Join(dir, "ovn"), TLS: &srvCerts})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ovn.Stop() })
	dbModel, _, err := translator.NBModel()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("refused", func(t *testing.T) {
		other := newTLSFiles(t, filepath.Join(dir, "other"), clientB)
		for _, tc := range []struct {
			name  string
			files ovsdbtls.Files
			want  []string
		}{
			{"another CA", other.files("ovnnb"), []string{"does not verify against the CA", "x509: certificate signed by unknown authority"}},
			{"another name", client.files("ovnsb"), []string{`not for the expected server name "ovnsb"`}},
		} {
			cfg, err := tc.files.Config()
			if err != nil {
				t.Fatal(err)
			}
			cctx, cancel := context.WithTimeout(ctx, 8*time.Second) // several attempts, even on a loaded machine
			nb, err := translator.ConnectNB(cctx, ovn.NBSSLAddr, cfg, dbModel)
			cancel()
			if err == nil {
				nb.Close()
				t.Fatalf("%s: connected", tc.name)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%s: error %q does not say %q", tc.name, err, w)
				}
			}
			t.Logf("%s: %v", tc.name, err)
		}
	})

	cfg, err := client.files("ovnnb").Config()
	if err != nil {
		t.Fatal(err)
	}
	nb, err := translator.ConnectNB(ctx, ovn.NBSSLAddr, cfg, dbModel)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nb.Close)
	kube := fake.NewClientset(newNode("n1", "10.244.1.0/24"))
	tcfg := translator.DefaultConfig()
	tcfg.Identity = "tls-test"
	c, err := translator.New(tcfg, kube, nb, record.NewFakeRecorder(100), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	syncSwitch := func() error {
		if err := c.SyncNode(ctx, "n1"); err != nil {
			return err
		}
		if out, err := ovn.NBCtl("ls-list"); err != nil || !strings.Contains(out, "(n1)") {
			return errors.Join(errors.New("no switch n1: "+out), err)
		}
		return nil
	}
	if err := harness.Eventually(30*time.Second, syncSwitch); err != nil {
		t.Fatal(err)
	}

	// Rotation: everything moves to CA B while the client runs. The server restarts on B's files; the
	// client, reconnecting by itself, must present B's certificate and trust B's CA.
	if err := ovn.StopNB(); err != nil {
		t.Fatal(err)
	}
	server.install(t, serverB)
	client.install(t, clientB)
	if err := ovn.StartNB(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ovn.NBCtl("ls-del", "n1"); err != nil {
		t.Fatal(err)
	}
	if err := harness.Eventually(time.Minute, syncSwitch); err != nil {
		t.Fatalf("after rotating to a new CA: %v", err)
	}
}
