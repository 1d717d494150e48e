package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// raftMembers is the size of the clusters OVNOptions.Clustered starts: the smallest that survives the
// loss of one member.
const raftMembers = 3

// raftDB is a RAFT-clustered database: one ovsdb-server per member, each with its own file, unix
// socket, loopback TCP (and SSL) port for clients, and loopback port for RAFT.
type raftDB struct {
	name    string // "nb" or "sb"; member i is name+(i+1): nb1, nb2, nb3
	dbName  string // OVN_Northbound or OVN_Southbound
	ctl     string // ovn-nbctl or ovn-sbctl
	raft    []string
	remotes [][]string // each member's client remotes besides its unix socket
	procs   []*process
	paused  map[int]bool // members stopped by PauseRaftMember
}

func (r *raftDB) member(i int) string { return r.name + strconv.Itoa(i+1) }

// startClusteredOVN is StartOVN for OVNOptions.Clustered: it replaces the single NB (and SB) server
// with three-member clusters, and points ovn-northd at every member.
func startClusteredOVN(ctx context.Context, o *OVN, withSB bool) (*OVN, error) {
	var err error
	if o.nbCluster, err = o.startRaftDB(ctx, "nb", nbSchema, "OVN_Northbound", "ovn-nbctl"); err != nil {
		return nil, errors.Join(err, o.Stop())
	}
	o.NBSocket = ""
	o.NBAddr, o.NBTCPAddr, o.NBSSLAddr = o.nbCluster.addresses(o)
	if !withSB {
		return o, nil
	}
	if o.sbCluster, err = o.startRaftDB(ctx, "sb", sbSchema, "OVN_Southbound", "ovn-sbctl"); err != nil {
		return nil, errors.Join(err, o.Stop())
	}
	o.SBAddr, _, o.SBSSLAddr = o.sbCluster.addresses(o)
	if err := o.startNorthd(ctx); err != nil {
		return nil, errors.Join(err, o.Stop())
	}
	return o, nil
}

// addresses returns the comma-separated unix, tcp and (with TLS) ssl addresses of every member.
func (r *raftDB) addresses(o *OVN) (unix, tcp, ssl string) {
	var u, t, s []string
	for i := range raftMembers {
		u = append(u, "unix:"+filepath.Join(o.Dir, r.member(i)+".sock"))
		for _, rem := range r.remotes[i] {
			proto, rest, _ := strings.Cut(rem, ":")
			port, _, _ := strings.Cut(rest, ":")
			addr := strings.TrimPrefix(proto, "p") + ":127.0.0.1:" + port
			if proto == "ptcp" {
				t = append(t, addr)
			} else {
				s = append(s, addr)
			}
		}
	}
	return strings.Join(u, ","), strings.Join(t, ","), strings.Join(s, ",")
}

// startRaftDB creates the cluster's files (the first member creates the cluster, the others join it)
// and starts every member, returning once each is a cluster member and the cluster has a leader.
func (o *OVN) startRaftDB(ctx context.Context, name, schema, dbName, ctl string) (*raftDB, error) {
	ports, err := freePorts(3 * raftMembers)
	if err != nil {
		return nil, fmt.Errorf("start %s cluster: %w", name, err)
	}
	r := &raftDB{name: name, dbName: dbName, ctl: ctl, procs: make([]*process, raftMembers), paused: map[int]bool{}}
	for i := range raftMembers {
		r.raft = append(r.raft, "tcp:127.0.0.1:"+strconv.Itoa(ports[3*i]))
		rem := []string{"ptcp:" + strconv.Itoa(ports[3*i+1]) + ":127.0.0.1"}
		if o.tls != nil {
			rem = append(rem, "pssl:"+strconv.Itoa(ports[3*i+2])+":127.0.0.1")
		}
		r.remotes = append(r.remotes, rem)
	}
	for i := range raftMembers {
		db := filepath.Join(o.Dir, r.member(i)+".db")
		args := []string{"create-cluster", db, schema, r.raft[0]}
		if i > 0 {
			args = []string{"join-cluster", db, dbName, r.raft[i], r.raft[0]}
		}
		if out, err := exec.Command("ovsdb-tool", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ovsdb-tool %s: %w: %s", args[0], err, bytes.TrimSpace(out))
		}
	}
	for i := range raftMembers {
		if r.procs[i], err = o.startDBServer(r.member(i), r.remotes[i]...); err != nil {
			return r, fmt.Errorf("start %s: %w", r.member(i), err)
		}
	}
	for i := range raftMembers {
		if err := o.waitMember(ctx, r, i); err != nil {
			return r, err
		}
	}
	return r, nil
}

// waitMember waits until member i has joined the cluster and the cluster answers through it.
func (o *OVN) waitMember(ctx context.Context, r *raftDB, i int) error {
	unix, _, _ := r.addresses(o)
	err := waitReady(ctx, r.procs[i], ovnReadyTimeout, func(ctx context.Context) error {
		st, err := o.clusterStatus(ctx, r, i)
		if err != nil {
			return err
		}
		if !strings.Contains(st, "Status: cluster member") {
			return fmt.Errorf("%s not a cluster member yet", r.member(i))
		}
		// Through every member, leader-only: answers once the cluster has a leader (and creates
		// NB_Global, as StartNB's check does).
		_, err = o.ctl(ctx, r.ctl, unix, "show")
		return err
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", r.member(i), err)
	}
	return nil
}

func (o *OVN) clusterStatus(ctx context.Context, r *raftDB, i int) (string, error) {
	cmd := exec.CommandContext(ctx, "ovs-appctl", "-t", filepath.Join(o.Dir, r.member(i)+".ctl"), "cluster/status", r.dbName)
	cmd.Env = append(os.Environ(), o.env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("cluster/status of %s: %w: %s", r.member(i), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func (o *OVN) cluster(sb bool) (*raftDB, error) {
	r := o.nbCluster
	if sb {
		r = o.sbCluster
	}
	if r == nil {
		return nil, errors.New("OVN was not started with OVNOptions.Clustered (and WithSB for SB)")
	}
	return r, nil
}

// RaftLeader returns the index (0-2) of the member that leads the NB cluster (SB with sb), asking
// every running member; an error while none says it leads (an election is under way).
func (o *OVN) RaftLeader(ctx context.Context, sb bool) (int, error) {
	r, err := o.cluster(sb)
	if err != nil {
		return -1, err
	}
	for i, p := range r.procs {
		if p == nil || p.exited() {
			continue
		}
		st, err := o.clusterStatus(ctx, r, i)
		if err == nil && strings.Contains(st, "Role: leader") {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no %s member leads (yet)", r.name)
}

// KillRaftMember ends member i of the NB cluster (SB with sb) with SIGKILL, as a crash would.
func (o *OVN) KillRaftMember(sb bool, i int) error {
	r, err := o.cluster(sb)
	if err != nil {
		return err
	}
	return (&Process{p: r.procs[i]}).Kill()
}

// RestartRaftMember starts member i of the NB cluster (SB with sb) again on its database file, and
// returns once it is a cluster member again, caught up enough to answer through the cluster.
func (o *OVN) RestartRaftMember(ctx context.Context, sb bool, i int) error {
	r, err := o.cluster(sb)
	if err != nil {
		return err
	}
	if r.procs[i] != nil && !r.procs[i].exited() {
		return fmt.Errorf("%s is running", r.member(i))
	}
	if r.procs[i], err = o.startDBServer(r.member(i), r.remotes[i]...); err != nil {
		return fmt.Errorf("restart %s: %w", r.member(i), err)
	}
	return o.waitMember(ctx, r, i)
}

// RaftMemberAddr returns member i's unix address in the NB cluster (SB with sb).
func (o *OVN) RaftMemberAddr(sb bool, i int) (string, error) {
	r, err := o.cluster(sb)
	if err != nil {
		return "", err
	}
	return "unix:" + filepath.Join(o.Dir, r.member(i)+".sock"), nil
}

// RaftMembersAlive returns an error naming a member of the NB cluster (SB with sb) that died without
// being killed through KillRaftMember.
func (o *OVN) RaftMembersAlive(sb bool) error {
	r, err := o.cluster(sb)
	if err != nil {
		return err
	}
	for i, p := range r.procs {
		if p != nil && p.exited() && !p.stopping.Load() {
			return fmt.Errorf("%s died: %v\n%s", r.member(i), p.waitErr, p.logTail())
		}
	}
	return nil
}

// PauseRaftMember stops member i of the NB cluster (SB with sb) with SIGSTOP, or resumes it with
// SIGCONT: a member that hangs (a frozen VM, say) while its sockets stay open.
func (o *OVN) PauseRaftMember(sb bool, i int, pause bool) error {
	r, err := o.cluster(sb)
	if err != nil {
		return err
	}
	sig := syscall.SIGCONT
	if pause {
		sig = syscall.SIGSTOP
	}
	if err := syscall.Kill(r.procs[i].cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("signal %s (%v): %w", r.member(i), sig, err)
	}
	r.paused[i] = pause
	return nil
}

// reachable is addr (a comma-separated list of members' unix addresses) without the paused members:
// the CLIs would wait on a paused one for their whole timeout.
func (o *OVN) reachable(addr string) string {
	for _, r := range []*raftDB{o.nbCluster, o.sbCluster} {
		if r == nil {
			continue
		}
		for i, paused := range r.paused {
			if paused {
				addr = strings.Join(slices.DeleteFunc(strings.Split(addr, ","), func(a string) bool {
					return a == "unix:"+filepath.Join(o.Dir, r.member(i)+".sock")
				}), ",")
			}
		}
	}
	return addr
}
