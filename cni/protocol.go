// Package cni is the dunlin-cni plugin: it turns a container runtime's CNI invocation into a request to
// the node agent (dunlin-node) on a unix socket and prints the agent's answer. The request and response
// types here are shared with the agent.
package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

const (
	// PluginType is the "type" of the plugin in a network configuration, and its binary's name.
	PluginType = "dunlin-cni"
	// DefaultSocket is where dunlin-node serves CNI requests unless the configuration says otherwise.
	DefaultSocket = "/var/run/dunlin/cni.sock"
	// requestPath is the HTTP path the agent serves on its socket.
	requestPath = "/cni"
)

// Dunlin's own CNI error codes (the spec leaves 100 and up to plugins).
const (
	// ErrPodNotFound: the pod named in CNI_ARGS does not exist (or not on this node).
	ErrPodNotFound uint = 100
	// ErrPodNetworkTimeout: the pod has no network annotation from dunlin-controller yet.
	ErrPodNetworkTimeout uint = 101
	// ErrOVNInstallTimeout: ovn-controller did not install the pod's port in time.
	ErrOVNInstallTimeout uint = 102
	// ErrAgentUnreachable: dunlin-node does not answer on its socket.
	ErrAgentUnreachable uint = 103
	// ErrPodUIDMismatch: the runtime's K8S_POD_UID is not the UID of the pod of that name.
	ErrPodUIDMismatch uint = 104
)

// NetConf is the plugin's network configuration (one entry of the conflist's "plugins").
type NetConf struct {
	types.PluginConf
	// CNISocket overrides DefaultSocket, for nodes that run the agent elsewhere.
	CNISocket string `json:"cniSocket,omitempty"`
}

// ParseNetConf decodes a configuration as the runtime passed it on stdin.
func ParseNetConf(stdin []byte) (*NetConf, error) {
	var c NetConf
	if err := json.Unmarshal(stdin, &c); err != nil {
		return nil, fmt.Errorf("parse network configuration: %w", err)
	}
	return &c, nil
}

// Request is one CNI invocation, forwarded as received so that the agent sees exactly what the runtime
// asked for.
type Request struct {
	Command     string          `json:"command"` // ADD, DEL, CHECK, GC, STATUS
	ContainerID string          `json:"containerID,omitempty"`
	Netns       string          `json:"netns,omitempty"`
	IfName      string          `json:"ifName,omitempty"`
	Args        string          `json:"args,omitempty"` // CNI_ARGS
	Path        string          `json:"path,omitempty"`
	Config      json.RawMessage `json:"config"` // stdin
}

// Response is the agent's answer: Result (already in the requested cniVersion) or Error.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *types.Error    `json:"error,omitempty"`
}

// Forward sends req to the agent listening on socket and returns the result bytes to print (empty for
// commands without output). A failure is always a *types.Error that says what to check.
func Forward(ctx context.Context, socket string, req Request) ([]byte, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, types.NewError(types.ErrInternal, "encode request", err.Error())
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	httpReq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://dunlin-node"+requestPath, bytes.NewReader(body))
	if err != nil {
		return nil, types.NewError(types.ErrInternal, "build request", err.Error())
	}
	httpReq.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(httpReq)
	if err != nil {
		return nil, types.NewError(ErrAgentUnreachable, "dunlin-node is not reachable",
			fmt.Sprintf("%v; check that the dunlin-node pod is running on this node and serving %s", err, socket))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, types.NewError(ErrAgentUnreachable, "read dunlin-node response", err.Error())
	}
	var r Response
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, types.NewError(types.ErrInternal, "malformed dunlin-node response",
			fmt.Sprintf("HTTP %d: %s", resp.StatusCode, truncate(raw, 200)))
	}
	if r.Error != nil {
		return nil, r.Error
	}
	return r.Result, nil
}

// ErrorOf turns any error into a *types.Error for the runtime.
func ErrorOf(err error) *types.Error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

// DefaultTimeout bounds one forwarded request; the agent bounds its own waits well below it.
const DefaultTimeout = 4 * time.Minute

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
