package harness

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// The apiserver runs on this machine's loopback, outside every node's network namespace, so on its own it
// reaches neither the kubelets (exec, logs, port-forward) nor pods and Services (the proxy
// subresources), which a real control plane reaches over the node network. Its egress selector sends that
// "cluster" traffic through an HTTP CONNECT proxy on a Unix socket (a filesystem object, so the
// apiserver here reaches it); the proxy dials from inside the first node's network namespace, as a
// control plane on that node would.

// EgressProxy is that proxy.
type EgressProxy struct {
	Socket string
	ln     net.Listener
	netns  func() string // the namespace to dial from, known once the first node exists
	wg     sync.WaitGroup
}

// egressConfig is the apiserver's --egress-selector-config-file for a proxy on socket.
func egressConfig(socket string) string {
	return fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: %s
`, socket)
}

// StartEgressProxy listens on socket; netns names the namespace path each connection is dialled from.
func StartEgressProxy(socket string, netns func() string) (*EgressProxy, error) {
	_ = os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("egress proxy: %w", err)
	}
	p := &EgressProxy{Socket: socket, ln: ln, netns: netns}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.handle(c)
		}
	}()
	return p, nil
}

func (p *EgressProxy) handle(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect {
		_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
		return
	}
	path := p.netns()
	if path == "" {
		_, _ = io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\n\r\n")
		return
	}
	var out net.Conn
	err = ns.WithNetNSPath(path, func(ns.NetNS) error {
		var err error
		out, err = net.DialTimeout("tcp", req.Host, 10*time.Second)
		return err
	})
	if err != nil {
		_, _ = fmt.Fprintf(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n%v", err)
		return
	}
	defer out.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(out, br)
		if tc, ok := out.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(c, out)
		done <- struct{}{}
	}()
	<-done
	<-done
}

// Stop closes the listener; open tunnels end with their connections.
func (p *EgressProxy) Stop() error {
	if p == nil {
		return nil
	}
	err := p.ln.Close()
	p.wg.Wait()
	_ = os.Remove(p.Socket)
	return err
}
