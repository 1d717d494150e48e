package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Dial connects from inside the pod's network namespace: the socket is made there (a socket keeps the
// namespace it was created in), everything else runs here.
func (s Sandbox) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := ns.WithNetNSPath(s.Netns, func(ns.NetNS) error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// HTTPGet fetches url from inside the pod and returns the body of a 200 answer.
func (s Sandbox) HTTPGet(ctx context.Context, url string, timeout time.Duration) ([]byte, error) {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true, DialContext: s.Dial}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return body, fmt.Errorf("read %s: %w (after %d bytes)", url, err, len(body))
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return body, nil
}
