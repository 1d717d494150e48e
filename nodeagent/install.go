package nodeagent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

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

// confList is the conflist the container runtime reads. With portMap, portmap is chained after
// dunlin-cni, so that pods' hostPorts work; it is left out when the runtime's CNI bin directory lacks
// it, since a chained plugin that is missing fails every ADD.
func confList(socket string, portMap bool) ([]byte, error) {
	plugins := []map[string]any{{
		"type":      cni.PluginType,
		"cniSocket": socket,
	}}
	if portMap {
		plugins = append(plugins, map[string]any{"type": portMapPlugin, "capabilities": map[string]bool{"portMappings": true}})
	}
	return json.MarshalIndent(map[string]any{
		"cniVersion":  confVersion,
		"cniVersions": confVersions,
		"name":        NetworkName,
		"plugins":     plugins,
	}, "", "  ")
}

// installCNI writes the conflist and copies the plugin binary. Both are written to a temporary file and
// renamed, so a runtime never reads half a file or executes half a binary.
func installCNI(confDir, binDir, pluginSource, socket string) error {
	_, err := os.Stat(filepath.Join(binDir, portMapPlugin))
	portMap := err == nil
	if !portMap {
		klog.InfoS("No portmap plugin in the CNI bin directory: pods' hostPorts are not published", "dir", binDir)
	}
	data, err := confList(socket, portMap)
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
