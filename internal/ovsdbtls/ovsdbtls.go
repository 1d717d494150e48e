// Package ovsdbtls builds the TLS client configuration Dunlin's programs use for ssl: OVSDB endpoints
// (OVN NB and SB, a local OVS database), from the files OVN operators already have: certificates made
// by ovs-pki. Those carry no IP address and a subject like "CN=ovnnb id:<uuid>", so the usual host name
// check against the dialled address cannot work. Instead the server's chain is verified against the
// configured CA, and the server's name is checked against the one the operator says to expect, the way
// OVN's own clients trust whatever their CA signed. Certificates, keys and the CA are read again when
// their files change, so a rotation needs no restart: the next connection (libovsdb reconnects) uses
// the new files.
package ovsdbtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// Files names what a TLS client reads. CACert is required; Cert and Key come together (a server that
// does not ask for a client certificate needs neither, but ovsdb-server with --ca-cert always asks).
type Files struct {
	CACert string // PEM CA certificate(s) the server's certificate must chain to
	Cert   string // PEM client certificate
	Key    string // PEM private key of Cert
	// ServerName is the name the server's certificate must carry, as a DNS SAN or as its subject's
	// common name, where for ovs-pki certificates the "id:..." that ovs-pki appends is ignored: the
	// certificate of `ovs-pki req+sign ovnnb` matches "ovnnb". Empty: any certificate the CA signed.
	ServerName string
}

// AddFlags registers --PREFIX-ca-cert, --PREFIX-cert, --PREFIX-key and --PREFIX-server-name, what
// to connect to is named after.
func (f *Files) AddFlags(fs *flag.FlagSet, prefix, what string) {
	fs.StringVar(&f.CACert, prefix+"-ca-cert", f.CACert,
		"PEM CA certificate that signed the "+what+" servers' certificates (ovs-pki: pki/controllerca/cacert.pem); needed for ssl: endpoints; re-read when it changes")
	fs.StringVar(&f.Cert, prefix+"-cert", f.Cert, "PEM client certificate for ssl: "+what+" endpoints; re-read when it changes")
	fs.StringVar(&f.Key, prefix+"-key", f.Key, "PEM private key of --"+prefix+"-cert; re-read when it changes")
	fs.StringVar(&f.ServerName, prefix+"-server-name", f.ServerName,
		"name the "+what+" servers' certificates must carry (a DNS SAN, or the common name without ovs-pki's \" id:...\" suffix: \"ovnnb\" for `ovs-pki req+sign ovnnb`); empty: any certificate the CA signed")
}

// Set reports whether any TLS file is configured.
func (f Files) Set() bool { return f.CACert != "" || f.Cert != "" || f.Key != "" }

// Validate says what is missing, naming the flags of prefix (e.g. "ovn" for --ovn-ca-cert).
func (f Files) Validate(prefix string) error {
	switch {
	case !f.Set():
		return nil
	case f.CACert == "":
		return fmt.Errorf("--%s-ca-cert is required with --%s-cert/--%s-key: the server's certificate is verified against it", prefix, prefix, prefix)
	case (f.Cert == "") != (f.Key == ""):
		return fmt.Errorf("--%s-cert and --%s-key go together", prefix, prefix)
	}
	return nil
}

// Config returns a client configuration that reads the files at every handshake when they changed. It
// fails when the files cannot be read now, so a typo shows at start rather than at the first connection.
func (f Files) Config() (*tls.Config, error) {
	if f.CACert == "" {
		return nil, errors.New("TLS: no CA certificate configured")
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("TLS: a client certificate and its key go together")
	}
	r := &reloader{files: f}
	if _, err := r.roots(); err != nil {
		return nil, err
	}
	if f.Cert != "" {
		if _, err := r.clientCert(); err != nil {
			return nil, err
		}
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The standard check would compare the dialled address (an IP, often) with the certificate's
		// SANs, which ovs-pki certificates never match: VerifyConnection does the whole verification
		// instead, chain and name, and a connection it rejects fails its handshake.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection:   r.verify,
	}
	if f.Cert != "" {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.clientCert() }
	}
	return cfg, nil
}

// reloader holds what was last read from the files, with their identity (size and modification time),
// so an unchanged file is not read again.
type reloader struct {
	files Files

	mu       sync.Mutex
	pool     *x509.CertPool
	poolFrom fileStamp
	cert     *tls.Certificate
	certFrom [2]fileStamp
}

// fileStamp identifies a file's content cheaply; the inode changes when a Secret volume swaps its
// files in.
type fileStamp struct {
	size  int64
	mod   time.Time
	inode uint64
}

func stamp(path string) (fileStamp, error) {
	st, err := os.Stat(path) // follows the symlinks of a Kubernetes Secret volume
	if err != nil {
		return fileStamp{}, err
	}
	s := fileStamp{size: st.Size(), mod: st.ModTime()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.inode = sys.Ino
	}
	return s, nil
}

// roots returns the CA pool, read again when the CA file changed. A file that cannot be read or holds
// no certificate keeps the last good pool (a rotation may be half written) and is reported.
func (r *reloader) roots() (*x509.CertPool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := stamp(r.files.CACert)
	if err == nil && r.pool != nil && st == r.poolFrom {
		return r.pool, nil
	}
	pool, err := readPool(r.files.CACert, err)
	if err != nil {
		if r.pool != nil {
			klog.ErrorS(err, "Keeping the CA certificates read before", "file", r.files.CACert)
			return r.pool, nil
		}
		return nil, err
	}
	if r.pool != nil {
		klog.InfoS("Reloaded the CA certificate", "file", r.files.CACert)
	}
	r.pool, r.poolFrom = pool, st
	return pool, nil
}

func readPool(path string, statErr error) (*x509.CertPool, error) {
	if statErr != nil {
		return nil, fmt.Errorf("CA certificate: %w", statErr)
	}
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA certificate %s holds no PEM certificate", path)
	}
	return pool, nil
}

// clientCert returns the client certificate, read again when the certificate or key file changed. A
// pair that does not load (the certificate replaced, the key not yet) keeps the last good one.
func (r *reloader) clientCert() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cs, err1 := stamp(r.files.Cert)
	ks, err2 := stamp(r.files.Key)
	now := [2]fileStamp{cs, ks}
	if err1 == nil && err2 == nil && r.cert != nil && now == r.certFrom {
		return r.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		err = fmt.Errorf("client certificate %s with key %s: %w", r.files.Cert, r.files.Key, err)
		if r.cert != nil {
			klog.ErrorS(err, "Keeping the client certificate read before")
			return r.cert, nil
		}
		return nil, err
	}
	if r.cert != nil {
		klog.InfoS("Reloaded the client certificate", "file", r.files.Cert)
	}
	r.cert, r.certFrom = &cert, now
	return r.cert, nil
}

// verify checks the server's chain against the CA pool and its name against Files.ServerName.
func (r *reloader) verify(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the OVSDB server sent no certificate")
	}
	pool, err := r.roots()
	if err != nil {
		return err
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	// Any usage: ovs-pki marks no extended key usage, and OVS's own peers do not check it either.
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("OVSDB server certificate %q does not verify against the CA in %s: %w",
			leaf.Subject.CommonName, r.files.CACert, err)
	}
	if want := r.files.ServerName; want != "" && !NameMatches(leaf, want) {
		return fmt.Errorf("OVSDB server certificate %q (DNS names %q) is not for the expected server name %q",
			leaf.Subject.CommonName, leaf.DNSNames, want)
	}
	return nil
}

// NameMatches reports whether cert is for name: a DNS SAN matching it (wildcards included), or the
// subject's common name or DNS SAN equal to it once ovs-pki's " id:<uuid>" suffix is cut.
func NameMatches(cert *x509.Certificate, name string) bool {
	if cert.VerifyHostname(name) == nil {
		return true
	}
	for _, n := range append([]string{cert.Subject.CommonName}, cert.DNSNames...) {
		if n == name {
			return true
		}
		if base, _, ok := strings.Cut(n, " id:"); ok && base == name {
			return true
		}
	}
	return false
}

// Endpoints splits a comma-separated OVSDB address list (what names the database in errors) and
// refuses ssl: endpoints without a TLS configuration, so every client says so the same way.
func Endpoints(what, addresses string, tlsConfig *tls.Config) ([]string, error) {
	var out []string
	for _, ep := range strings.Split(addresses, ",") {
		if ep = strings.TrimSpace(ep); ep == "" {
			continue
		}
		if strings.HasPrefix(ep, "ssl:") && tlsConfig == nil {
			return nil, fmt.Errorf("%s endpoint %s needs --ovn-ca-cert (and --ovn-cert, --ovn-key when the server asks for a client certificate, as ovsdb-server does)", what, ep)
		}
		out = append(out, ep)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s endpoint in %q", what, addresses)
	}
	return out, nil
}
