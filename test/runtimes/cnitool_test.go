package runtimes

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dunlinplugin/dunlin/cni"
	"github.com/dunlinplugin/dunlin/nodeagent"
)

// cnitools are the builds of test/cnitool: libcni's version, and the cniVersion it must get results in
// from the installed conflist (cniVersion 1.0.0, cniVersions [1.0.0, 1.1.0]).
var cnitools = []struct {
	version string
	result  string
	// gcStatus: the tool has the gc and status commands (CNI 1.1, libcni 1.2 and later).
	gcStatus bool
}{
	{"v1.1.2", "1.0.0", false}, // containerd 1.6 and 1.7: reads cniVersion only
	{"v1.3.1", "1.1.0", true},  // the newest: picks the highest of cniVersions
}

// TestRuntimes drives the installed conflist and plugin with real libcni versions, through the CNI
// project's cnitool, on a real node.
func TestRuntimes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	for _, tool := range cnitools {
		t.Run("cnitool "+tool.version+" ADD CHECK DEL", func(t *testing.T) {
			pod, addr := e.pod("rt" + strings.ReplaceAll(tool.version, ".", ""))
			netns := e.netns("dlrt")
			out, err := run(e.tool(ctx, tool.version, "add", netns, podArgs(pod)))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("cnitool %s add printed: %s", tool.version, strings.Join(strings.Fields(out), " "))
			res := parseResult(t, out)
			if res.CNIVersion != tool.result || len(res.IPs) != 1 || res.IPs[0].Address != addr {
				t.Errorf("ADD result cniVersion %s, IPs %+v; want cniVersion %s with %s", res.CNIVersion, res.IPs, tool.result, addr)
			}
			if err := e.attached(pod, netns, addr); err != nil {
				t.Error(err)
			}
			if _, err := run(e.tool(ctx, tool.version, "check", netns, podArgs(pod))); err != nil {
				t.Error(err)
			}
			if tool.gcStatus {
				if _, err := run(e.tool(ctx, tool.version, "status", netns, podArgs(pod))); err != nil {
					t.Error(err)
				}
			}
			if _, err := run(e.tool(ctx, tool.version, "del", netns, podArgs(pod))); err != nil {
				t.Fatal(err)
			}
			if err := e.detached(netns); err != nil {
				t.Error(err)
			}
			if _, err := run(e.tool(ctx, tool.version, "del", netns, podArgs(pod))); err != nil {
				t.Errorf("second DEL: %v", err)
			}
		})
	}

	t.Run("cnitool v1.1.2 and a cniVersion 1.1.0 conflist fail", func(t *testing.T) {
		// What the conflist used to say, and why it no longer does: the pod is plumbed, then the runtime
		// cannot read the result.
		b, err := os.ReadFile(filepath.Join(e.n.ConfDir, nodeagent.ConfListName))
		mustOK(t, err)
		var conf map[string]any
		mustOK(t, json.Unmarshal(b, &conf))
		conf["cniVersion"] = "1.1.0"
		delete(conf, "cniVersions")
		b, err = json.Marshal(conf)
		mustOK(t, err)
		dir := t.TempDir()
		mustOK(t, os.WriteFile(filepath.Join(dir, nodeagent.ConfListName), b, 0o644))
		pod, _ := e.pod("rtold")
		netns := e.netns("dlrtold")
		_, err = run(e.toolWithConf(ctx, "v1.1.2", "add", netns, podArgs(pod), dir))
		t.Logf("cnitool v1.1.2 add with cniVersion 1.1.0: %v", err)
		if err == nil || !strings.Contains(err.Error(), `unsupported CNI result version "1.1.0"`) {
			t.Errorf("got %v, want libcni v1.1.2's unsupported CNI result version", err)
		}
		_, err = run(e.toolWithConf(ctx, "v1.1.2", "del", netns, podArgs(pod), dir))
		mustOK(t, err)
		mustOK(t, e.detached(netns))
	})

	t.Run("CNI_ARGS as runtimes send them", func(t *testing.T) {
		// Both cnitools refuse empty values themselves ("invalid CNI_ARGS pair"); runtimes pass their
		// arguments to libcni as pairs, which it joins as they are: do the same.
		pod, addr := e.pod("rtargs")
		netns := e.netns("dlrtargs")
		_, err := run(e.tool(ctx, "v1.3.1", "add", netns, podArgs(pod)+";K8S_POD_INFRA_CONTAINER_ID="))
		t.Logf("cnitool v1.3.1 with an empty CNI_ARGS value: %v", err)

		list, err := libcni.NetworkConfFromFile(filepath.Join(e.n.ConfDir, nodeagent.ConfListName))
		mustOK(t, err)
		lib := libcni.NewCNIConfigWithCacheDir([]string{e.n.BinDir}, t.TempDir(), nil)
		rt := &libcni.RuntimeConf{ContainerID: "rt-args", NetNS: netns, IfName: "eth0", Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", pod.Namespace}, {"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", ""}, {"K8S_POD_UID", ""},
		}}
		res, err := lib.AddNetworkList(ctx, list, rt)
		mustOK(t, err)
		b, err := json.Marshal(res)
		mustOK(t, err)
		if r := parseResult(t, string(b)); len(r.IPs) != 1 || r.IPs[0].Address != addr {
			t.Errorf("ADD with empty CNI_ARGS values gave %s, want %s", b, addr)
		}
		mustOK(t, lib.CheckNetworkList(ctx, list, rt))
		mustOK(t, lib.DelNetworkList(ctx, list, rt))

		// Malformed CNI_ARGS: code 4, naming the container and the pod.
		out, code := execPlugin(t, e, "ADD", netns, "K8S_POD_NAMESPACE=default;K8S_POD_NAME=rtargs;broken")
		if code == 0 || out.Code != cnitypes.ErrInvalidEnvironmentVariables ||
			!strings.Contains(out.Msg, "default/rtargs") || !strings.Contains(out.Msg, "rt-bad-args") {
			t.Errorf("malformed CNI_ARGS: exit %d, %#v", code, out)
		}
		t.Logf("malformed CNI_ARGS: code %d %q", out.Code, out.Msg)
	})

	t.Run("an ADD waiting for its annotation holds up neither GC nor other containers", func(t *testing.T) {
		keep, keepAddr := e.pod("rtkeep")
		fresh, freshAddr := e.pod("rtfresh")
		keepNS, freshNS, blockedNS := e.netns("dlrtkeep"), e.netns("dlrtfresh"), e.netns("dlrtblk")
		_, err := run(e.tool(ctx, "v1.3.1", "add", keepNS, podArgs(keep)))
		mustOK(t, err)
		mustOK(t, e.attached(keep, keepNS, keepAddr))

		// No controller, no annotation: the blocked pod's ADD waits.
		mustOK(t, e.c.Controller.Stop())
		e.createPod("rtblocked")
		blockedPod, err := e.c.Kube.Client.CoreV1().Pods("default").Get(ctx, "rtblocked", metav1.GetOptions{})
		mustOK(t, err)
		blocked := e.tool(ctx, "v1.3.1", "add", blockedNS, podArgs(blockedPod))
		var blockedOut strings.Builder
		blocked.Stdout, blocked.Stderr = &blockedOut, &blockedOut
		mustOK(t, blocked.Start())
		blockedDone := make(chan error, 1)
		go func() { blockedDone <- blocked.Wait() }()
		stillWaiting := func(step string) {
			t.Helper()
			select {
			case err := <-blockedDone:
				t.Fatalf("the blocked ADD ended (%v: %s) before %s", err, blockedOut.String(), step)
			default:
			}
		}
		e.eventually(2*time.Minute, "dunlin-node waiting for rtblocked's annotation", func() error {
			b, err := os.ReadFile(e.n.AgentLog)
			if err != nil || !strings.Contains(string(b), `Waiting for the pod's network annotation" pod="default/rtblocked"`) {
				return errors.New("not yet")
			}
			return nil
		})

		_, err = run(e.tool(ctx, "v1.3.1", "add", freshNS, podArgs(fresh)))
		mustOK(t, err)
		mustOK(t, e.attached(fresh, freshNS, freshAddr))
		stillWaiting("the ADD of another container")

		_, err = run(e.tool(ctx, "v1.3.1", "del", keepNS, podArgs(keep)))
		mustOK(t, err)
		mustOK(t, e.detached(keepNS))
		stillWaiting("the DEL of another container")

		// cnitool's gc names no valid attachment: libcni DELs every attachment in its cache (fresh's),
		// then the plugin's GC removes whatever else is ours, except what has a command in flight.
		_, err = run(e.tool(ctx, "v1.3.1", "gc", freshNS, ""))
		mustOK(t, err)
		mustOK(t, e.detached(freshNS))
		stillWaiting("GC")

		// The controller back: the annotation comes and the waiting ADD completes, untouched by GC.
		mustOK(t, e.c.StartController())
		select {
		case err := <-blockedDone:
			if err != nil {
				t.Fatalf("blocked ADD: %v: %s", err, blockedOut.String())
			}
		case <-time.After(3 * time.Minute):
			t.Fatalf("the blocked ADD did not complete once the controller was back")
		}
		_, blockedAddr := e.annotated("rtblocked")
		if r := parseResult(t, blockedOut.String()); len(r.IPs) != 1 || r.IPs[0].Address != blockedAddr {
			t.Errorf("blocked ADD printed %s, want %s", blockedOut.String(), blockedAddr)
		}
		mustOK(t, e.attached(blockedPod, blockedNS, blockedAddr))
		_, err = run(e.tool(ctx, "v1.3.1", "del", blockedNS, podArgs(blockedPod)))
		mustOK(t, err)
		mustOK(t, e.detached(blockedNS))
	})

	t.Run("dunlin-node start adds iface-id-ver to interfaces an older version plumbed", func(t *testing.T) {
		pod, addr := e.pod("rtold2")
		netns := e.netns("dlrtupg")
		_, err := run(e.tool(ctx, "v1.3.1", "add", netns, podArgs(pod)))
		mustOK(t, err)
		hostIf := nodeagent.HostIfName(cnitoolContainerID(netns), "eth0")
		// What a dunlin-node without iface-id-ver left behind.
		_, err = e.n.VSCtl("remove", "interface", hostIf, "external_ids", "iface-id-ver")
		mustOK(t, err)
		mustOK(t, e.n.StopAgent())
		mustOK(t, e.n.StartAgent(ctx, "--pod-network-timeout=10m"))
		e.eventually(time.Minute, "iface-id-ver back and the port installed", func() error { return e.attached(pod, netns, addr) })
		_, err = run(e.tool(ctx, "v1.3.1", "check", netns, podArgs(pod)))
		mustOK(t, err)
		_, err = run(e.tool(ctx, "v1.3.1", "del", netns, podArgs(pod)))
		mustOK(t, err)
	})

	// Last: it leaves SB down.
	t.Run("STATUS while SB is down", func(t *testing.T) {
		mustOK(t, e.c.OVN.StopSB())
		e.eventually(2*time.Minute, "ovn-controller disconnected from SB", func() error {
			out, err := e.n.AppCtlOVNController("connection-status")
			if err != nil || out != "not connected" {
				return errors.New("connection-status " + out)
			}
			return nil
		})
		netns := e.netns("dlrtstatus")
		if _, err := run(e.tool(ctx, "v1.3.1", "status", netns, "")); err != nil {
			t.Errorf("STATUS with SB down: %v", err)
		}
	})
}

// execPlugin runs the installed dunlin-cni as a runtime would, container id rt-bad-args, and decodes
// the error it prints.
func execPlugin(t *testing.T, e *env, command, netns, args string) (cnitypes.Error, int) {
	t.Helper()
	conf, err := os.ReadFile(filepath.Join(e.n.ConfDir, nodeagent.ConfListName))
	mustOK(t, err)
	list, err := libcni.NetworkConfFromBytes(conf)
	mustOK(t, err)
	cmd := exec.Command(filepath.Join(e.n.BinDir, cni.PluginType))
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=rt-bad-args", "CNI_NETNS="+netns,
		"CNI_IFNAME=eth0", "CNI_ARGS="+args, "CNI_PATH="+e.n.BinDir)
	plugin := list.Plugins[0].Bytes
	var m map[string]any
	mustOK(t, json.Unmarshal(plugin, &m))
	m["name"], m["cniVersion"] = list.Name, list.CNIVersion
	plugin, err = json.Marshal(m)
	mustOK(t, err)
	cmd.Stdin = strings.NewReader(string(plugin))
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err == nil || !errors.As(err, &ee) {
		return cnitypes.Error{}, 0
	}
	var ce cnitypes.Error
	if err := json.Unmarshal(out, &ce); err != nil {
		t.Fatalf("dunlin-cni exit %d printed %q", ee.ExitCode(), out)
	}
	return ce, ee.ExitCode()
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
