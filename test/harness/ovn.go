package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	nbSchema = "/usr/share/ovn/ovn-nb.ovsschema"
	sbSchema = "/usr/share/ovn/ovn-sb.ovsschema"

	ovnReadyTimeout = 20 * time.Second
	// unix(7): sun_path holds 108 bytes including the terminating NUL.
	maxUnixPath = 107
)

// OVNOptions configures StartOVN.
type OVNOptions struct {
	Dir    string // holds databases, sockets, pidfiles and logs; must be short (unix socket paths)
	WithSB bool   // also run the SB ovsdb-server and ovn-northd
	// TLS, when set, is the servers' certificate: NB (and SB) also listen for SSL on a loopback port
	// (NBSSLAddr, SBSSLAddr) and accept only clients whose certificate TLS.CACert signed.
	TLS *Certs
	// Clustered runs NB (and SB) as 3-member RAFT clusters (ovsdb-tool create-cluster, join-cluster)
	// on loopback ports; every address field then lists the three members, comma-separated.
	Clustered bool
}

// OVN is a running OVN central: an NB ovsdb-server and, with WithSB, an SB ovsdb-server and ovn-northd.
type OVN struct {
	Dir       string
	NBSocket  string // filesystem path of the NB unix socket
	NBAddr    string // "unix:<NBSocket>", for the controller's --nb-address
	NBTCPAddr string // "tcp:127.0.0.1:<port>"; NB listens here too
	SBSocket  string // filesystem path of the SB unix socket, when WithSB
	SBAddr    string // "unix:<SBSocket>", when WithSB
	NBSSLAddr string // "ssl:127.0.0.1:<port>", with OVNOptions.TLS
	SBSSLAddr string // "ssl:127.0.0.1:<port>", with OVNOptions.TLS and WithSB

	nbPort    int
	nbSSLPort int
	sbSSLPort int
	tls       *Certs
	env       []string // OVN_RUNDIR and friends, so no CLI or daemon touches /var/run
	nb        *process
	sb        *process
	northd    *process
	// nbCluster and sbCluster replace nb and sb with OVNOptions.Clustered.
	nbCluster *raftDB
	sbCluster *raftDB
}

// StartOVN creates fresh databases in o.Dir and starts the daemons, returning once they answer.
func StartOVN(ctx context.Context, o OVNOptions) (*OVN, error) {
	if o.Dir == "" {
		return nil, errors.New("start OVN: OVNOptions.Dir is required")
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("start OVN: %w", err)
	}
	// northd.ctl is the longest socket name we create.
	if p := filepath.Join(dir, "northd.ctl"); len(p) > maxUnixPath {
		return nil, fmt.Errorf("start OVN: directory %s too long for unix socket paths (%d > %d bytes)", dir, len(p), maxUnixPath)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("start OVN: %w", err)
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, fmt.Errorf("start OVN: %w", err)
	}
	ovn := &OVN{
		Dir:       dir,
		NBSocket:  filepath.Join(dir, "nb.sock"),
		NBTCPAddr: "tcp:127.0.0.1:" + strconv.Itoa(ports[0]),
		nbPort:    ports[0],
		tls:       o.TLS,
		env: []string{
			"OVN_RUNDIR=" + dir, "OVS_RUNDIR=" + dir,
			"OVN_LOGDIR=" + dir, "OVS_LOGDIR=" + dir,
			"OVN_DBDIR=" + dir, "OVS_DBDIR=" + dir,
		},
	}
	ovn.NBAddr = "unix:" + ovn.NBSocket
	if o.TLS != nil {
		ovn.nbSSLPort, ovn.sbSSLPort = ports[1], ports[2]
		ovn.NBSSLAddr = "ssl:127.0.0.1:" + strconv.Itoa(ports[1])
	}
	if o.Clustered {
		return startClusteredOVN(ctx, ovn, o.WithSB)
	}

	if err := ovn.createDB("nb", nbSchema); err != nil {
		return nil, err
	}
	if err := ovn.StartNB(ctx); err != nil {
		return nil, err
	}
	if !o.WithSB {
		return ovn, nil
	}

	ovn.SBSocket = filepath.Join(dir, "sb.sock")
	ovn.SBAddr = "unix:" + ovn.SBSocket
	if o.TLS != nil {
		ovn.SBSSLAddr = "ssl:127.0.0.1:" + strconv.Itoa(ovn.sbSSLPort)
	}
	if err := ovn.startSB(ctx); err != nil {
		return nil, errors.Join(err, ovn.Stop())
	}
	if err := ovn.startNorthd(ctx); err != nil {
		return nil, errors.Join(err, ovn.Stop())
	}
	return ovn, nil
}

func (o *OVN) createDB(name, schema string) error {
	out, err := exec.Command("ovsdb-tool", "create", filepath.Join(o.Dir, name+".db"), schema).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ovsdb-tool create %s.db: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// startDBServer runs ovsdb-server for <name>.db in the foreground; -vconsole:off because the log
// file and the captured stderr are the same file.
func (o *OVN) startDBServer(name string, extraRemotes ...string) (*process, error) {
	path := func(ext string) string { return filepath.Join(o.Dir, name+ext) }
	// A socket left behind by a killed server would make the readiness check pass too early.
	os.Remove(path(".sock"))
	args := []string{
		path(".db"),
		"--remote=punix:" + path(".sock"),
		"--unixctl=" + path(".ctl"),
		"--pidfile=" + path(".pid"),
		"--log-file=" + path(".log"),
		"-vconsole:off",
	}
	for _, r := range extraRemotes {
		args = append(args, "--remote="+r)
	}
	if o.tls != nil {
		args = append(args, "--private-key="+o.tls.Key, "--certificate="+o.tls.Cert, "--ca-cert="+o.tls.CACert)
	}
	return startProcess(name+" ovsdb-server", path(".log"), o.env, "ovsdb-server", args...)
}

// StartNB starts the NB ovsdb-server on its existing database file, unix socket and TCP port. StartOVN
// calls it; call it again after StopNB to bring a "dead" NB back. It does not wait for ovn-northd to
// reconnect.
func (o *OVN) StartNB(ctx context.Context) error {
	if o.nbCluster != nil {
		return errors.New("start NB: clustered; use RestartRaftMember")
	}
	if o.nb != nil && !o.nb.exited() {
		return errors.New("start NB: already running")
	}
	remotes := []string{"ptcp:" + strconv.Itoa(o.nbPort) + ":127.0.0.1"}
	if o.tls != nil {
		remotes = append(remotes, "pssl:"+strconv.Itoa(o.nbSSLPort)+":127.0.0.1")
	}
	nb, err := o.startDBServer("nb", remotes...)
	if err != nil {
		return fmt.Errorf("start NB: %w", err)
	}
	o.nb = nb
	err = waitReady(ctx, nb, ovnReadyTimeout, func(ctx context.Context) error {
		_, err := o.ctl(ctx, "ovn-nbctl", o.NBAddr, "show")
		return err
	})
	if err != nil {
		return errors.Join(fmt.Errorf("start NB: %w", err), nb.Stop())
	}
	return nil
}

// StopNB stops only the NB ovsdb-server, keeping its database, to simulate an NB outage.
func (o *OVN) StopNB() error {
	if o.nbCluster != nil {
		return errors.New("stop NB: clustered; use KillRaftMember")
	}
	if err := o.nb.Stop(); err != nil {
		return fmt.Errorf("stop NB: %w", err)
	}
	return nil
}

func (o *OVN) startSB(ctx context.Context) error {
	if err := o.createDB("sb", sbSchema); err != nil {
		return err
	}
	var remotes []string
	if o.tls != nil {
		remotes = append(remotes, "pssl:"+strconv.Itoa(o.sbSSLPort)+":127.0.0.1")
	}
	sb, err := o.startDBServer("sb", remotes...)
	if err != nil {
		return fmt.Errorf("start SB: %w", err)
	}
	o.sb = sb
	err = waitReady(ctx, sb, ovnReadyTimeout, func(ctx context.Context) error {
		_, err := o.ctl(ctx, "ovn-sbctl", o.SBAddr, "show")
		return err
	})
	if err != nil {
		return fmt.Errorf("start SB: %w", err)
	}
	return nil
}

func (o *OVN) startNorthd(ctx context.Context) error {
	logPath := filepath.Join(o.Dir, "northd.log")
	northd, err := startProcess("ovn-northd", logPath, o.env, "ovn-northd",
		"--ovnnb-db="+o.NBAddr,
		"--ovnsb-db="+o.SBAddr,
		"--unixctl="+filepath.Join(o.Dir, "northd.ctl"),
		"--pidfile="+filepath.Join(o.Dir, "northd.pid"),
		"--log-file="+logPath,
		"-vconsole:off",
	)
	if err != nil {
		return fmt.Errorf("start northd: %w", err)
	}
	o.northd = northd
	// --wait=sb returns once northd has carried an NB change through to SB, i.e. it is connected to both.
	err = waitReady(ctx, northd, ovnReadyTimeout, func(ctx context.Context) error {
		_, err := o.ctl(ctx, "ovn-nbctl", o.NBAddr, "--wait=sb", "sync")
		return err
	})
	if err != nil {
		return fmt.Errorf("start northd: %w", err)
	}
	return nil
}

// NBCtl runs `ovn-nbctl --db=<NBAddr> --timeout=10 args...` and returns its trimmed stdout.
func (o *OVN) NBCtl(args ...string) (string, error) {
	return o.ctl(context.Background(), "ovn-nbctl", o.NBAddr, args...)
}

// SBCtl runs `ovn-sbctl --db=<SBAddr> --timeout=10 args...` and returns its trimmed stdout.
func (o *OVN) SBCtl(args ...string) (string, error) {
	if o.SBAddr == "" {
		return "", errors.New("ovn-sbctl: OVN started without SB")
	}
	return o.ctl(context.Background(), "ovn-sbctl", o.SBAddr, args...)
}

// Trace runs `ovn-trace --db=<SBAddr> args...` (logical flows only; it has no --timeout) and returns
// its trimmed stdout.
func (o *OVN) Trace(args ...string) (string, error) {
	if o.SBAddr == "" {
		return "", errors.New("ovn-trace: OVN started without SB")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ovn-trace", append([]string{"--db=" + o.SBAddr}, args...)...)
	cmd.Env = append(os.Environ(), o.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ovn-trace %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

func (o *OVN) ctl(ctx context.Context, tool, db string, args ...string) (string, error) {
	db = o.reachable(db)
	cmd := exec.CommandContext(ctx, tool, append([]string{"--db=" + db, "--timeout=10"}, args...)...)
	cmd.Env = append(os.Environ(), o.env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// Stop stops northd, SB and NB, in that order so northd does not log the databases vanishing.
func (o *OVN) Stop() error {
	ps := []*process{o.northd, o.sb, o.nb}
	for _, c := range []*raftDB{o.sbCluster, o.nbCluster} {
		if c != nil {
			ps = append(ps, c.procs...)
		}
	}
	if err := stopAll(ps...); err != nil {
		return fmt.Errorf("stop OVN: %w", err)
	}
	return nil
}

// LBVIPs reads the vips of the NB load balancer named name through ovn-nbctl: VIP to backends (none
// for a VIP without backends), or nil when there is no such load balancer.
func (o *OVN) LBVIPs(name string) (map[string][]string, error) {
	out, err := o.NBCtl("--bare", "--columns=vips", "find", "Load_Balancer", "name="+name)
	if err != nil || out == "" {
		return nil, err
	}
	vips := map[string][]string{}
	// --bare prints each entry as vip=backends, quoted where needed.
	for _, kv := range strings.Fields(out) {
		k, v, _ := strings.Cut(kv, "=")
		var backends []string
		if v = strings.Trim(v, `"`); v != "" {
			backends = strings.Split(v, ",")
		}
		vips[strings.Trim(k, `"`)] = backends
	}
	return vips, nil
}

// PauseNB stops the standalone NB ovsdb-server with SIGSTOP (pause false resumes it with SIGCONT): a
// server that hangs, holding the transactions sent to it, and commits them once it goes on.
func (o *OVN) PauseNB(pause bool) error {
	if o.nb == nil || o.nb.exited() {
		return errors.New("pause NB: not running (or clustered)")
	}
	sig := syscall.SIGCONT
	if pause {
		sig = syscall.SIGSTOP
	}
	if err := syscall.Kill(o.nb.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("pause NB (%v): %w", sig, err)
	}
	return nil
}
