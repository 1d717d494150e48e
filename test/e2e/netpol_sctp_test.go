package e2e

// SCTP probes for the NetworkPolicy truth table. This kernel has no SCTP sockets (no sctp module:
// socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT), so test/podserver cannot
// serve SCTP. Raw IP sockets of protocol 132 need no module: a probe sends an SCTP INIT chunk from the
// source pod, and a raw socket in the destination pod records which INITs arrive. That checks the
// datapath and the policy in one direction, which is what a policy verdict is about; an association
// is never set up.
//
// OVS 3.1's userspace conntrack has no SCTP tracker: it keeps SCTP as a generic protocol, one entry per
// pair of addresses without ports (dpctl/dump-conntrack shows sport=0,dport=0), and takes every later
// packet of an entry for established. Once one SCTP packet between two pods was allowed (and OVN
// committed it), SCTP to any port between them passes the ACLs as established, in either direction.
// probeRounds therefore flushes conntrack before each round and never probes two cells of the same
// address pair in one round, so each verdict is the ACLs' own; sctpSharedConntrack shows the
// limitation.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// npSCTPReceiver records the SCTP INITs that reach a pod: "<source address>:<source port>><destination port>".
type npSCTPReceiver struct {
	fd   int
	mu   sync.Mutex
	seen map[string]bool
	stop chan struct{}
	done chan struct{}
}

// npRawSCTPSocket opens a raw IPv4 socket of protocol SCTP inside the sandbox's netns.
func npRawSCTPSocket(sb harness.Sandbox) (int, error) {
	fd := -1
	err := ns.WithNetNSPath(sb.Netns, func(ns.NetNS) error {
		var err error
		fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, syscall.IPPROTO_SCTP)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("raw SCTP socket in %s: %w", sb.NetnsName, err)
	}
	return fd, nil
}

func npListenSCTP(sb harness.Sandbox) (*npSCTPReceiver, error) {
	fd, err := npRawSCTPSocket(sb)
	if err != nil {
		return nil, err
	}
	// A receive timeout lets the loop notice stop.
	tv := syscall.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	r := &npSCTPReceiver{fd: fd, seen: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go r.loop()
	return r, nil
}

func (r *npSCTPReceiver) loop() {
	defer close(r.done)
	buf := make([]byte, 2048)
	for {
		select {
		case <-r.stop:
			return
		default:
		}
		n, _, err := syscall.Recvfrom(r.fd, buf, 0)
		if err != nil {
			continue // the timeout, or EINTR
		}
		// An IPv4 raw socket receives the IP header too.
		pkt := buf[:n]
		if len(pkt) < 20 {
			continue
		}
		ihl := int(pkt[0]&0x0f) * 4
		if len(pkt) < ihl+13 || pkt[ihl+12] != 1 { // common header (12 bytes), then an INIT chunk
			continue
		}
		src := net.IP(pkt[12:16]).String()
		sport, dport := binary.BigEndian.Uint16(pkt[ihl:]), binary.BigEndian.Uint16(pkt[ihl+2:])
		r.mu.Lock()
		r.seen[fmt.Sprintf("%s:%d>%d", src, sport, dport)] = true
		r.mu.Unlock()
	}
}

func (r *npSCTPReceiver) saw(src string, sport, dport int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[fmt.Sprintf("%s:%d>%d", src, sport, dport)]
}

func (r *npSCTPReceiver) close() {
	close(r.stop)
	<-r.done
	syscall.Close(r.fd)
}

// npSCTPInit is an SCTP packet holding one INIT chunk (RFC 9260 3.1, 3.3.2), with its CRC32c.
func npSCTPInit(sport, dport int, tag uint32) []byte {
	p := make([]byte, 12+20)
	binary.BigEndian.PutUint16(p[0:], uint16(sport))
	binary.BigEndian.PutUint16(p[2:], uint16(dport))
	// Verification tag 0 (an INIT's), checksum computed last.
	p[12] = 1                                   // chunk type INIT
	binary.BigEndian.PutUint16(p[14:], 20)      // chunk length
	binary.BigEndian.PutUint32(p[16:], tag)     // initiate tag
	binary.BigEndian.PutUint32(p[20:], 1<<16)   // advertised receiver window
	binary.BigEndian.PutUint16(p[24:], 1)       // outbound streams
	binary.BigEndian.PutUint16(p[26:], 1)       // inbound streams
	binary.BigEndian.PutUint32(p[28:], tag^0x5) // initial TSN
	binary.LittleEndian.PutUint32(p[8:], crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli)))
	return p
}

// sctpReceivers opens, once, a receiver in every pod of the model.
func (m *npModel) sctpReceivers() error {
	m.sctpOnce.Do(func() {
		m.sctp = map[*npPod]*npSCTPReceiver{}
		for _, p := range m.pods {
			r, err := npListenSCTP(p.sb)
			if err != nil {
				m.sctpErr = err
				return
			}
			m.sctp[p] = r
		}
	})
	return m.sctpErr
}

// closeSCTP closes the receivers.
func (m *npModel) closeSCTP() {
	for _, r := range m.sctp {
		r.close()
	}
	m.sctp = nil
}

// probeSCTP sends INITs from a fresh source port (again within the timeout when it is long) and
// reports whether one reached dst's receiver.
func (m *npModel) probeSCTP(sb harness.Sandbox, dst *npPod, port npPort, timeout time.Duration) error {
	if err := m.sctpReceivers(); err != nil {
		return err
	}
	r := m.sctp[dst]
	if r == nil {
		return fmt.Errorf("no SCTP receiver in %s", dst)
	}
	src, err := m.nextSrcPort()
	if err != nil {
		return err
	}
	fd, err := npRawSCTPSocket(sb)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var to [4]byte
	copy(to[:], net.ParseIP(dst.ip).To4())
	sends := 1
	if timeout > 2*time.Second {
		sends = 3
	}
	pkt := npSCTPInit(src, int(port.port), uint32(src)<<8|0x5a)
	srcIP := sb.IP
	for range sends {
		if err := syscall.Sendto(fd, pkt, 0, &syscall.SockaddrInet4{Addr: to}); err != nil {
			return fmt.Errorf("send SCTP INIT from port %d: %w", src, err)
		}
		deadline := time.Now().Add(timeout / time.Duration(sends))
		for time.Now().Before(deadline) {
			if r.saw(srcIP, src, int(port.port)) {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return errors.New("no INIT from port " + fmt.Sprint(src) + " arrived")
}

// flushConntrack empties every node's userspace conntrack.
func (m *npModel) flushConntrack() error {
	for _, n := range m.e.c.Nodes {
		if _, err := n.AppCtlVSwitchd("dpctl/flush-conntrack"); err != nil {
			return err
		}
	}
	return nil
}

// probeRounds probes TCP and UDP cells with the first round and SCTP cells in rounds, conntrack
// flushed before each, such that a round holds one SCTP cell at most per pair of addresses: per port,
// the cells from an earlier pod of the model to a later one, then the others.
func (m *npModel) probeRounds(cells []npCell, timeout time.Duration) map[npCell]error {
	type roundKey struct {
		port    npPort
		forward bool
	}
	rounds := [][]npCell{nil} // the first also holds the TCP and UDP cells
	index := map[roundKey]int{}
	for _, c := range cells {
		i := 0
		if c.port.proto == corev1.ProtocolSCTP {
			k := roundKey{c.port, slices.Index(m.pods, c.from) < slices.Index(m.pods, c.to)}
			var ok bool
			if i, ok = index[k]; !ok && len(index) > 0 {
				i = len(rounds)
				rounds = append(rounds, nil)
			}
			index[k] = i
		}
		rounds[i] = append(rounds[i], c)
	}
	results := map[npCell]error{}
	for i, round := range rounds {
		if len(round) == 0 {
			continue
		}
		if err := m.flushConntrack(); err != nil {
			for _, c := range round {
				results[c] = fmt.Errorf("flush conntrack before round %d: %w", i, err)
			}
			continue
		}
		for c, err := range m.probeAll(round, timeout) {
			results[c] = err
		}
	}
	return results
}

// sctpCase runs a policy with SCTP ports, when the datapath carries SCTP at all.
func (m *npModel) sctpCase(t *testing.T) {
	defer m.closeSCTP()
	ports := []npPort{npSCTP80, npSCTP81, npTCP80}
	xa, xb := m.pod("x/a"), m.pod("x/b") // on different nodes
	if err := m.probe(xa.sb, xb, npSCTP80, npRetryTimeout); err != nil {
		t.Skipf("the datapath does not carry SCTP between pods (%s -> %s: %v); no SCTP policy case", xa, xb, err)
	}
	m.checkWith(t, "SCTP without policies", m.pods, m.pods, ports, func(npCell) bool { return true }, m.probeRounds)
	const sctp = corev1.ProtocolSCTP
	t.Run("ingress and egress rules with SCTP ports", func(t *testing.T) {
		defer m.removePolicies(t)
		m.apply(t,
			npPolicy("x", "allow-sctp-80", npSel(), npIngress(nil, npRulePort(sctp, intstr.FromInt32(80)))),
			npPolicy("y", "a-to-sctp-81", npSel("pod", "a"), npEgress(nil, npRulePort(sctp, intstr.FromInt32(81)))))
		m.checkWith(t, "SCTP ports in ingress and egress rules", m.pods, m.pods, ports, func(c npCell) bool {
			ingressOK := !npIn(c.to, "x") || c.port == npSCTP80
			egressOK := !c.from.is("y/a") || c.port == npSCTP81
			return ingressOK && egressOK
		}, m.probeRounds)
	})
	t.Run("ports within one address pair (known OVS 3.1 userspace limitation)", m.sctpSharedConntrack)
}

// sctpSharedConntrack: with x/a isolated for ingress and only SCTP 80 allowed into it,
//   - an allowed SCTP packet from z/b to x/a's port 80 must not open port 81 in the same direction:
//     OVN evaluates the ACLs again for established packets in their original direction, so this holds;
//   - an SCTP packet from x/a to z/b (x's egress is open) must not let z/b reach x/a on another
//     port: a new association, not a reply. OVS 3.1's port-less entry makes it one, and OVN passes
//     replies without the ACLs. This fails unless conntrack shows that cause, in which case it is
//     skipped with the evidence.
func (m *npModel) sctpSharedConntrack(t *testing.T) {
	defer m.removePolicies(t)
	const sctp = corev1.ProtocolSCTP
	m.apply(t, npPolicy("x", "allow-sctp-80", npSel("pod", "a"), npIngress(nil, npRulePort(sctp, intstr.FromInt32(80)))))
	xa, zb := m.pod("x/a"), m.pod("z/b") // on different nodes
	mustOK(t, m.flushConntrack())
	if err := m.probe(zb.sb, xa, npSCTP81, npRetryTimeout); err == nil {
		t.Fatalf("%s reached %s on SCTP 81: the rule allows only 80", zb, xa)
	}
	if err := m.probe(zb.sb, xa, npSCTP80, npRetryTimeout); err != nil {
		t.Fatalf("%s to %s on SCTP 80, which the rule allows: %v", zb, xa, err)
	}
	if err := m.probe(zb.sb, xa, npSCTP81, npRetryTimeout); err == nil {
		t.Fatalf("%s reached %s on SCTP 81 after an allowed packet to 80: the rule allows only 80", zb, xa)
	}
	t.Logf("%s -> %s: SCTP 80 allowed, SCTP 81 blocked before and after it", zb, xa)

	// The other direction.
	mustOK(t, m.flushConntrack())
	if err := m.probe(xa.sb, zb, npSCTP80, npRetryTimeout); err != nil {
		t.Fatalf("%s to %s on SCTP 80 (x's egress is open): %v", xa, zb, err)
	}
	err := m.probe(zb.sb, xa, npSCTP81, npRetryTimeout)
	if err != nil {
		t.Logf("%s -> %s on SCTP 81 after %s sent to %s: blocked, as it must be", zb, xa, xa, zb)
		return
	}
	var out string
	for _, n := range m.e.c.Nodes {
		if n.Name == xa.node {
			out, _ = n.AppCtlVSwitchd("dpctl/dump-conntrack")
		}
	}
	want := fmt.Sprintf("sctp,orig=(src=%s,dst=%s,sport=0,dport=0)", xa.ip, zb.ip)
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, want) {
			t.Skipf("KNOWN LIMITATION (OVS 3.1 userspace conntrack, not Dunlin's rows): after %s sent SCTP to %s:80, "+
				"%s reaches %s on SCTP 81, which no rule allows. Conntrack on %s keeps SCTP without ports, so the "+
				"packet counts as a reply of that entry and OVN passes replies without the ACLs:\n  %s",
				xa, zb, zb, xa, xa.node, line)
		}
	}
	t.Errorf("%s reached %s on SCTP 81, which no rule allows (no port-less SCTP entry in %s's conntrack):\n%s",
		zb, xa, xa.node, out)
}
