package ovsdbtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// issue makes a certificate like ovs-pki's (subject "CN=<cn>", no IP SAN) signed by ca, or self-signed
// as a CA when ca is nil.
func issue(t *testing.T, ca *testCA, cn string, dns ...string) (*testCA, []byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, DNSNames: dns,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	parent, signer := tmpl, key
	if ca == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
	} else {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kder, _ := x509.MarshalECPrivateKey(key)
	return &testCA{cert, key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func TestNameMatches(t *testing.T) {
	ca, _, _ := issue(t, nil, "ca")
	pki, _, _ := issue(t, ca, "ovnnb id:2b4e0c5e-1f7a-4a35-9d0a-0d9a1f4e1c11", "ovnnb id:2b4e0c5e-1f7a-4a35-9d0a-0d9a1f4e1c11")
	dns, _, _ := issue(t, ca, "central", "nb.example.org", "*.ovn.example.org")
	for _, tc := range []struct {
		cert *x509.Certificate
		name string
		want bool
	}{
		{pki.cert, "ovnnb", true},
		{pki.cert, "ovnnb id:2b4e0c5e-1f7a-4a35-9d0a-0d9a1f4e1c11", true},
		{pki.cert, "ovn", false},
		{pki.cert, "ovnsb", false},
		{dns.cert, "nb.example.org", true},
		{dns.cert, "east.ovn.example.org", true},
		{dns.cert, "central", true},
		{dns.cert, "sb.example.org", false},
	} {
		if got := NameMatches(tc.cert, tc.name); got != tc.want {
			t.Errorf("NameMatches(%q, %q) = %v, want %v", tc.cert.Subject.CommonName, tc.name, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		f    Files
		want string
	}{
		{Files{}, ""},
		{Files{CACert: "ca"}, ""},
		{Files{CACert: "ca", Cert: "c", Key: "k"}, ""},
		{Files{Cert: "c", Key: "k"}, "--ovn-ca-cert is required"},
		{Files{CACert: "ca", Cert: "c"}, "go together"},
	} {
		err := tc.f.Validate("ovn")
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.f, err, tc.want)
		}
	}
}

// A handshake with a TLS server: verified against the CA file, refused for another CA, and the CA and
// client certificate files read again once they change; a broken file keeps the last good one.
func TestHandshakeAndReload(t *testing.T) {
	dir := t.TempDir()
	files := Files{CACert: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"),
		Key: filepath.Join(dir, "key.pem"), ServerName: "ovnnb"}
	caA, caAPEM, _ := issue(t, nil, "ca A")
	caB, caBPEM, _ := issue(t, nil, "ca B")
	_, srvCert, srvKey := issue(t, caA, "ovnnb id:1")
	_, cliA, cliAKey := issue(t, caA, "dunlin id:2")
	_, cliB, cliBKey := issue(t, caB, "dunlin id:3")
	write(t, files.CACert, caAPEM)
	write(t, files.Cert, cliA)
	write(t, files.Key, cliAKey)

	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	var seen []string // client certificates' common names, as the server saw them
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair},
		ClientAuth: tls.RequireAnyClientCert})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	cfg, err := files.Config()
	if err != nil {
		t.Fatal(err)
	}
	dial := func() error {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		cert, _ := cfg.GetClientCertificate(nil)
		leaf, _ := x509.ParseCertificate(cert.Certificate[0])
		seen = append(seen, leaf.Subject.CommonName)
		return nil
	}
	if err := dial(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	// A broken CA file (half written) keeps the pool read before.
	write(t, files.CACert, []byte("garbage"))
	if err := dial(); err != nil {
		t.Fatalf("handshake with a broken CA file: %v", err)
	}
	// Rotated to CA B: the server's certificate (CA A) is refused now, naming why.
	write(t, files.CACert, caBPEM)
	write(t, files.Cert, cliB)
	write(t, files.Key, cliBKey)
	err = dial()
	if err == nil || !strings.Contains(err.Error(), "x509: certificate signed by unknown authority") {
		t.Fatalf("handshake with the server of another CA: %v", err)
	}
	if got := strings.Join(seen, ","); got != "dunlin id:2,dunlin id:2" {
		t.Fatalf("client certificates presented %q", got)
	}
	if cert, _ := cfg.GetClientCertificate(nil); cert == nil {
		t.Fatal("no client certificate")
	} else if leaf, _ := x509.ParseCertificate(cert.Certificate[0]); leaf.Subject.CommonName != "dunlin id:3" {
		t.Fatalf("client certificate after rotation: %q", leaf.Subject.CommonName)
	}
}
