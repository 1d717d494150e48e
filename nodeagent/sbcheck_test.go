package nodeagent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dunlinplugin/dunlin/internal/ovsdbtls"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// dunlin-node's check of --sb-address over SSL, against a real SB serving ovs-pki certificates: it
// passes with a client certificate of the SB's CA and the server's name, and names the failure when
// the server's certificate comes from another CA.
func TestCheckSBOverTLS(t *testing.T) {
	dir, err := os.MkdirTemp("", "dl") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	certs, err := harness.NewTLSFixture(filepath.Join(dir, "pki"), "ovnsb")
	if err != nil {
		t.Fatal(err)
	}
	srv, cli, stranger := certs.Server, certs.Client, certs.OtherClient
	ovn, err := harness.StartOVN(context.Background(), harness.OVNOptions{Dir: filepath.Join(dir, "ovn"), WithSB: true, TLS: &srv})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ovn.Stop() })

	check := func(f ovsdbtls.Files) error {
		t.Helper()
		cfg, err := f.Config()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return CheckSB(ctx, ovn.SBSSLAddr, cfg)
	}
	if err := check(ovsdbtls.Files{CACert: cli.CACert, Cert: cli.Cert, Key: cli.Key, ServerName: "ovnsb"}); err != nil {
		t.Fatalf("SB over SSL: %v", err)
	}
	err = check(ovsdbtls.Files{CACert: stranger.CACert, Cert: stranger.Cert, Key: stranger.Key})
	if err == nil || !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
		t.Fatalf("SB of another CA: %v", err)
	}
	if err := CheckSB(context.Background(), ovn.SBSSLAddr, nil); err == nil || !strings.Contains(err.Error(), "--ovn-ca-cert") {
		t.Fatalf("ssl: without TLS settings: %v", err)
	}
}
