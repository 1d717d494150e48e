package harness

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Forwarder makes a TCP service of this (host) network namespace reachable at the same address inside
// another namespace: a node namespace reaches the host's kube-apiserver at 127.0.0.1:port as a real node
// reaches its control plane. The listening socket is created inside the target namespace (a socket keeps
// the namespace it was created in), the dialing side stays in ours.
type Forwarder struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// ForwardInto listens on addr inside the netns at netnsPath and forwards every connection to addr here.
func ForwardInto(netnsPath, addr string) (*Forwarder, error) {
	return ForwardAddrInto(netnsPath, addr, addr)
}

// ForwardAddrInto listens on listen inside the netns at netnsPath and forwards every connection to
// target here.
func ForwardAddrInto(netnsPath, listen, target string) (*Forwarder, error) {
	ln, err := listenIn(netnsPath, "tcp", listen)
	if err != nil {
		return nil, err
	}
	f := &Forwarder{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f, nil
}

func (f *Forwarder) serve() {
	defer f.wg.Done()
	for {
		in, err := f.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", f.target)
		if err != nil {
			in.Close()
			continue
		}
		if !f.track(in, out) {
			return
		}
		f.wg.Add(2)
		go f.pipe(in, out)
		go f.pipe(out, in)
	}
}

func (f *Forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *Forwarder) pipe(dst, src net.Conn) {
	defer f.wg.Done()
	_, _ = io.Copy(dst, src)
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

// Stop closes the listener and every forwarded connection.
func (f *Forwarder) Stop() error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	err := f.ln.Close()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// listenIn listens on addr inside the netns at netnsPath (a socket keeps the namespace it was made in).
func listenIn(netnsPath, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s inside %s: %w", addr, netnsPath, err)
	}
	return ln, nil
}
