package ovs

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dunlinplugin/dunlin/internal/ovsdbtls"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// The agent's OVSDB client over SSL with ovs-pki certificates: it connects and writes with a client
// certificate of the server's CA, and refuses a server whose certificate another CA signed.
func TestConnectTLS(t *testing.T) {
	certs, err := harness.NewTLSFixture(t.TempDir(), "ovsdb")
	if err != nil {
		t.Fatal(err)
	}
	srv, cli, stranger := certs.Server, certs.Client, certs.OtherClient
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := newServer(t)
	s.stop()
	s.extra = []string{"--remote=pssl:" + strconv.Itoa(port) + ":127.0.0.1",
		"--private-key=" + srv.Key, "--certificate=" + srv.Cert, "--ca-cert=" + srv.CACert}
	s.start(t)
	endpoint := "ssl:127.0.0.1:" + strconv.Itoa(port)

	if _, err := ConnectTLS(context.Background(), endpoint, nil); err == nil || !strings.Contains(err.Error(), "--ovn-ca-cert") {
		t.Fatalf("ssl: without TLS settings: %v", err)
	}
	cfg, err := ovsdbtls.Files{CACert: stranger.CACert, Cert: stranger.Cert, Key: stranger.Key}.Config()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second) // several attempts, even on a loaded machine
	_, err = ConnectTLS(ctx, endpoint, cfg)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
		t.Fatalf("server of another CA: %v", err)
	}

	cfg, err = ovsdbtls.Files{CACert: cli.CACert, Cert: cli.Cert, Key: cli.Key, ServerName: "ovsdb"}.Config()
	if err != nil {
		t.Fatal(err)
	}
	c, err := ConnectTLS(testCtx(t), endpoint, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ConfigureChassis(testCtx(t), chassis); err != nil {
		t.Fatal(err)
	}
	if got := s.vsctlStr(t, "Open_vSwitch", ".", "external_ids:ovn-remote"); got != chassis.Remote {
		t.Fatalf("ovn-remote %q", got)
	}
}
