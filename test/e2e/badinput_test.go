package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	cnitypes "github.com/containernetworking/cni/pkg/types"

	"github.com/dunlinplugin/dunlin/cni"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// badInput runs the plugin with bad requests on node1 and checks each gives a clear CNI error (or the
// idempotent result) and leaves no stray OVS ports or veths.
func badInput(t *testing.T, e *env) {
	n := e.node("node1")
	ctx := context.Background()
	list, err := n.Kubelet.ConfList()
	mustOK(t, err)
	portsBefore, vethsBefore := e.ovsPorts(n), e.veths(n)
	defer func() {
		if p, v := e.ovsPorts(n), e.veths(n); !slices.Equal(p, portsBefore) || !slices.Equal(v, vethsBefore) {
			t.Errorf("stray state: ports %v -> %v, veths %v -> %v", portsBefore, p, vethsBefore, v)
		}
	}()

	t.Run("ADD for a pod that does not exist", func(t *testing.T) {
		netns := "dlpghost"
		mustOK(t, harness.NewNetns(ctx, netns))
		defer harness.DeleteNetns(netns)
		rt := harness.RuntimeConf("ghost-sandbox", "/var/run/netns/"+netns, "default", "ghost", "")
		_, err := n.Kubelet.CNI().AddNetworkList(ctx, list, rt)
		ce := cniError(t, err)
		if ce.Code != cni.ErrPodNotFound || !strings.Contains(ce.Msg, "default/ghost") {
			t.Errorf("got %#v, want code %d naming default/ghost", ce, cni.ErrPodNotFound)
		}
		// DEL twice of what never got added: success both times.
		mustOK(t, n.Kubelet.CNI().DelNetworkList(ctx, list, rt))
		mustOK(t, n.Kubelet.CNI().DelNetworkList(ctx, list, rt))
	})
	t.Run("ADD with another pod's UID", func(t *testing.T) {
		// A sandbox of a deleted pod whose name was reused: the live pod's port must stay untouched.
		netns := "dlpstale"
		mustOK(t, harness.NewNetns(ctx, netns))
		defer harness.DeleteNetns(netns)
		rt := harness.RuntimeConf("stale-sandbox", "/var/run/netns/"+netns, "default", "a1", "00000000-0000-0000-0000-000000000000")
		_, err := n.Kubelet.CNI().AddNetworkList(ctx, list, rt)
		if ce := cniError(t, err); ce.Code != cni.ErrPodUIDMismatch {
			t.Errorf("got %#v, want code %d", ce, cni.ErrPodUIDMismatch)
		}
		mustOK(t, n.Kubelet.CNI().DelNetworkList(ctx, list, rt))
	})
	t.Run("ADD without Kubernetes args", func(t *testing.T) {
		out, code := execPlugin(t, n, "ADD", "/var/run/netns/none", "", confBytes(t, "1.1.0"))
		if code == 0 || out.Code != cnitypes.ErrInvalidEnvironmentVariables || !strings.Contains(out.Msg, "K8S_POD_NAME") {
			t.Errorf("exit %d, error %#v", code, out)
		}
	})
	t.Run("unparsable config", func(t *testing.T) {
		out, code := execPlugin(t, n, "ADD", "/var/run/netns/none", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a1", []byte("{not json"))
		if code == 0 || out.Code == 0 || out.Msg == "" {
			t.Errorf("exit %d, error %#v", code, out)
		}
		t.Logf("unparsable config: code %d %q", out.Code, out.Msg)
	})
	t.Run("unknown cniVersion", func(t *testing.T) {
		out, code := execPlugin(t, n, "ADD", "/var/run/netns/none", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a1", confBytes(t, "9.9.9"))
		if code == 0 || out.Code != cnitypes.ErrIncompatibleCNIVersion {
			t.Errorf("exit %d, error %#v, want code %d", code, out, cnitypes.ErrIncompatibleCNIVersion)
		}
	})
	t.Run("supported versions", func(t *testing.T) {
		for _, v := range cni.SupportedVersions() {
			out, code := execPlugin(t, n, "VERSION", "", "", confBytes(t, v))
			if code != 0 {
				t.Errorf("VERSION with cniVersion %s: %#v", v, out)
			}
		}
	})
	t.Run("agent unreachable", func(t *testing.T) {
		conf := map[string]any{"cniVersion": "1.0.0", "name": "dunlin", "type": cni.PluginType, "cniSocket": "/tmp/dunlin-no-such.sock"}
		b, _ := json.Marshal(conf)
		out, code := execPlugin(t, n, "ADD", "/var/run/netns/none", "K8S_POD_NAMESPACE=default;K8S_POD_NAME=a1", b)
		if code == 0 || out.Code != cni.ErrAgentUnreachable || !strings.Contains(out.Details, "dunlin-node") {
			t.Errorf("exit %d, error %#v", code, out)
		}
	})
}

func cniError(t *testing.T, err error) *cnitypes.Error {
	t.Helper()
	var ce *cnitypes.Error
	if !errors.As(err, &ce) {
		t.Fatalf("want a CNI error, got %v", err)
	}
	t.Logf("CNI error %d: %s (%s)", ce.Code, ce.Msg, ce.Details)
	return ce
}

func confBytes(t *testing.T, version string) []byte {
	b, err := json.Marshal(map[string]any{"cniVersion": version, "name": "dunlin", "type": cni.PluginType})
	mustOK(t, err)
	return b
}

// execPlugin runs the installed plugin binary as a runtime would, with the node's socket in the config
// when the config is JSON, and decodes the error it prints.
func execPlugin(t *testing.T, n *harness.ClusterNode, command, netns, args string, conf []byte) (cnitypes.Error, int) {
	t.Helper()
	var m map[string]any
	if json.Unmarshal(conf, &m) == nil {
		if _, ok := m["cniSocket"]; !ok {
			m["cniSocket"] = n.Socket
		}
		conf, _ = json.Marshal(m)
	}
	cmd := exec.Command(n.BinDir + "/" + cni.PluginType)
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command, "CNI_CONTAINERID=bad-input", "CNI_NETNS="+netns, "CNI_IFNAME=eth0",
		"CNI_ARGS="+args, "CNI_PATH="+n.BinDir)
	cmd.Stdin = strings.NewReader(string(conf))
	out, err := cmd.Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var ce cnitypes.Error
	if code != 0 {
		if err := json.Unmarshal(out, &ce); err != nil {
			t.Fatalf("plugin exit %d printed non-JSON %q", code, out)
		}
	}
	return ce, code
}
