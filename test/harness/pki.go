package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// PKI is a certificate authority made by ovs-pki, as OVN operators make theirs: `ovs-pki init`, then
// `ovs-pki req+sign NAME` per server or client. Its certificates carry no IP address.
type PKI struct {
	Dir    string // holds the ovs-pki directory and every signed certificate
	CACert string // the controller CA's certificate, which signs everything Sign makes
}

// Certs are the files of one signed certificate.
type Certs struct {
	Cert   string
	Key    string
	CACert string // of the CA that signed Cert
}

// NewPKI runs `ovs-pki init` in dir, which must not hold another PKI.
func NewPKI(dir string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("PKI: %w", err)
	}
	p := &PKI{Dir: dir, CACert: filepath.Join(dir, "pki", "controllerca", "cacert.pem")}
	if err := p.run("init"); err != nil {
		return nil, err
	}
	return p, nil
}

// Sign makes a key and a certificate for name, signed by the PKI's controller CA (`ovs-pki req+sign
// NAME controller`); its subject is "CN=NAME id:<uuid>". Signing a name again replaces its files.
func (p *PKI) Sign(name string) (Certs, error) {
	c := Certs{
		Cert:   filepath.Join(p.Dir, name+"-cert.pem"),
		Key:    filepath.Join(p.Dir, name+"-privkey.pem"),
		CACert: p.CACert,
	}
	for _, f := range []string{c.Cert, c.Key, filepath.Join(p.Dir, name+"-req.pem")} {
		os.Remove(f) // ovs-pki refuses to overwrite
	}
	if err := p.run("req+sign", name, "controller"); err != nil {
		return Certs{}, err
	}
	return c, nil
}

func (p *PKI) run(args ...string) error {
	cmd := exec.Command("ovs-pki", append(args, "--dir="+filepath.Join(p.Dir, "pki"),
		"--log="+filepath.Join(p.Dir, "ovs-pki.log"))...)
	cmd.Dir = p.Dir // req+sign writes NAME-*.pem into the working directory
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ovs-pki %v: %w: %s", args, err, bytes.TrimSpace(out))
	}
	return nil
}

// CopyFile copies src over dst through a temporary file and a rename, as a Secret volume update swaps
// files in (a reader never sees half a file).
func CopyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// TLSFixture is what a TLS test needs: two ovs-pki CAs, each with a server certificate for the same
// name and a client certificate. The second CA's are a stranger's, or those of a rotation.
type TLSFixture struct {
	Server, Client           Certs // signed by the first CA
	OtherServer, OtherClient Certs // signed by the second CA
}

// NewTLSFixture makes the two CAs under dir (in "a" and "b") and their certificates; the servers'
// are for serverName, the clients' for "client".
func NewTLSFixture(dir, serverName string) (TLSFixture, error) {
	var f TLSFixture
	for _, ca := range []struct {
		sub            string
		server, client *Certs
	}{{"a", &f.Server, &f.Client}, {"b", &f.OtherServer, &f.OtherClient}} {
		pki, err := NewPKI(filepath.Join(dir, ca.sub))
		if err != nil {
			return f, err
		}
		if *ca.server, err = pki.Sign(serverName); err != nil {
			return f, err
		}
		if *ca.client, err = pki.Sign("client"); err != nil {
			return f, err
		}
	}
	return f, nil
}
