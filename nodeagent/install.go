package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/pkg/invoke"
	"k8s.io/klog/v2"

	"github.com/dunlinplugin/dunlin/cni"
)

const (
	// ConfListName is the file dunlin-node writes into the CNI configuration directory.
	ConfListName = "10-dunlin.conflist"
	// NetworkName is the CNI network name in that file.
	NetworkName = "dunlin"
)

// The conflist's versions. libcni before 1.2 (containerd 1.6 and 1.7, the packaged runtimes of Debian 12
// and Ubuntu 24.04) reads only cniVersion and cannot decode a 1.1.0 result: with cniVersion 1.1.0 it
// plumbs the pod, then fails the ADD with `unsupported CNI result version "1.1.0"` and tears the
// sandbox down. libcni 1.2 and later pick the highest of cniVersions they support, so they get 1.1.0
// and with it GC and STATUS. The plugin answers in whatever version the runtime passes it.
const confVersion = "1.0.0"

var confVersions = []string{"1.0.0", "1.1.0"}

// portMapPlugin is the CNI project's plugin for hostPort (a container port published on the node's
// addresses, through iptables DNAT in the node's namespace); runtimes pass the pod's hostPorts to it as
// the portMappings capability.
const portMapPlugin = "portmap"

// confList is the conflist the container runtime reads, offering versions. With portMap, portmap is
// chained after dunlin-cni, so that pods' hostPorts work.
func confList(socket string, portMap bool, versions []string) ([]byte, error) {
	plugins := []map[string]any{{
		"type":      cni.PluginType,
		"cniSocket": socket,
	}}
	if portMap {
		plugins = append(plugins, map[string]any{"type": portMapPlugin, "capabilities": map[string]bool{"portMappings": true}})
	}
	return json.MarshalIndent(map[string]any{
		"cniVersion":  confVersion,
		"cniVersions": versions,
		"name":        NetworkName,
		"plugins":     plugins,
	}, "", "  ")
}

// chainVersions says whether portmap can be chained and which versions the conflist may then offer:
// only those every plugin of the chain supports. A runtime with libcni 1.2+ picks the highest offered
// and calls STATUS and GC on every plugin at 1.1.0, which an older portmap (Debian 12's plugins 1.1.1)
// answers with "missing containerID", keeping the node NotReady. portmap is left out when it is missing
// (a missing chained plugin fails every ADD) or does not speak confVersion.
func chainVersions(ctx context.Context, binDir string) (portMap bool, versions []string) {
	path := filepath.Join(binDir, portMapPlugin)
	if _, err := os.Stat(path); err != nil {
		klog.InfoS("No portmap plugin in the CNI bin directory: pods' hostPorts are not published", "dir", binDir)
		return false, confVersions
	}
	info, err := invoke.GetVersionInfo(ctx, path, nil)
	if err != nil {
		klog.InfoS("The portmap plugin does not say its CNI versions: pods' hostPorts are not published", "path", path, "err", err)
		return false, confVersions
	}
	supported := info.SupportedVersions()
	versions = slices.DeleteFunc(slices.Clone(confVersions), func(v string) bool { return !slices.Contains(supported, v) })
	if !slices.Contains(versions, confVersion) {
		klog.InfoS("The portmap plugin does not speak the conflist's CNI version: pods' hostPorts are not published",
			"path", path, "cniVersion", confVersion, "supported", supported)
		return false, confVersions
	}
	if len(versions) < len(confVersions) {
		klog.InfoS("Offering only the CNI versions portmap supports", "versions", versions, "portmapSupports", supported)
	}
	return true, versions
}

// installCNI writes the conflist and copies the plugin binary. Both are written to a temporary file and
// renamed, so a runtime never reads half a file or executes half a binary.
func installCNI(ctx context.Context, confDir, binDir, pluginSource, socket string) error {
	portMap, versions := chainVersions(ctx, binDir)
	data, err := confList(socket, portMap, versions)
	if err != nil {
		return err
	}
	// The binary first: a runtime that sees the configuration must find the plugin.
	if pluginSource != "" {
		src, err := os.Open(pluginSource)
		if err != nil {
			return fmt.Errorf("open CNI plugin %s: %w", pluginSource, err)
		}
		defer src.Close()
		if err := writeAtomic(filepath.Join(binDir, cni.PluginType), src, 0o755); err != nil {
			return err
		}
	}
	return writeAtomic(filepath.Join(confDir, ConfListName), bytes.NewReader(data), 0o644)
}

func writeAtomic(path string, r io.Reader, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := io.Copy(tmp, r); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("install %s: %w", path, err)
	}
	return nil
}
