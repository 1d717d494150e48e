package nodeagent

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/dunlinplugin/dunlin/cni"
)

func TestHostIfName(t *testing.T) {
	a := HostIfName("0123456789abcdef0123456789abcdef", "eth0")
	if len(a) > 15 || !hostIfPattern.MatchString(a) {
		t.Errorf("HostIfName = %q: want dl + 13 hex digits, at most 15 characters", a)
	}
	if b := HostIfName("0123456789abcdef0123456789abcdef", "eth0"); b != a {
		t.Errorf("not deterministic: %q then %q", a, b)
	}
	if b := HostIfName("0123456789abcdef0123456789abcdef", "net1"); b == a {
		t.Errorf("two interfaces of one container share %q", a)
	}
	// Any container id works, including ones with characters an interface name may not hold.
	if c := HostIfName("cnitool-77383ca0a0715733ca6f/x y", "eth0"); !hostIfPattern.MatchString(c) {
		t.Errorf("HostIfName of an odd id = %q", c)
	}
}

func TestConfList(t *testing.T) {
	b, err := confList("/run/x/cni.sock", false, confVersions)
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		CNIVersion  string   `json:"cniVersion"`
		CNIVersions []string `json:"cniVersions"`
		Name        string
		Plugins     []map[string]string
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	if c.CNIVersion != "1.0.0" || !slices.Equal(c.CNIVersions, []string{"1.0.0", "1.1.0"}) || c.Name != NetworkName || len(c.Plugins) != 1 ||
		c.Plugins[0]["type"] != cni.PluginType || c.Plugins[0]["cniSocket"] != "/run/x/cni.sock" {
		t.Errorf("conflist %s", b)
	}
	for _, v := range append(c.CNIVersions, c.CNIVersion) {
		if !slices.Contains(cni.SupportedVersions(), v) {
			t.Errorf("conflist names version %s, which dunlin-cni does not support", v)
		}
	}
	// libcni 1.2 and later (the main module's) pick the highest version they support: GC and STATUS work.
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.1.0" {
		t.Errorf("libcni chose cniVersion %s, want 1.1.0", list.CNIVersion)
	}
}

// TestInstallCNIPortMap: hostPort (an upstream [Conformance] test) needs portmap chained after dunlin-cni
// when the runtime has it, and a conflist without it when it does not (a missing chained plugin fails
// every ADD). The conflist offers only the versions portmap supports: containerd 2 calls STATUS at 1.1.0
// on every plugin, and Debian 12's portmap (1.0.0 at most) answered "missing containerID".
func TestInstallCNIPortMap(t *testing.T) {
	// A portmap that answers VERSION as the CNI project's plugins do.
	script := func(versions string) string {
		return "#!/bin/sh\n[ \"$CNI_COMMAND\" = VERSION ] || exit 1\n" +
			`echo '{"cniVersion":"1.0.0","supportedVersions":[` + versions + `]}'` + "\n"
	}
	for _, tc := range []struct {
		name     string
		portmap  string // script, or "" for none
		chained  bool
		versions []string
	}{
		{"none", "", false, confVersions},
		{"1.1.0", script(`"0.3.1","0.4.0","1.0.0","1.1.0"`), true, []string{"1.0.0", "1.1.0"}},
		{"debian 12", script(`"0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0"`), true, []string{"1.0.0"}},
		{"too old", script(`"0.3.1","0.4.0"`), false, confVersions},
		{"not a plugin", "#!/bin/sh\nexit 1\n", false, confVersions},
	} {
		conf, bin := t.TempDir(), t.TempDir()
		if tc.portmap != "" {
			if err := os.WriteFile(filepath.Join(bin, "portmap"), []byte(tc.portmap), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := installCNI(context.Background(), conf, bin, "", "/run/x/cni.sock"); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(conf, ConfListName))
		if err != nil {
			t.Fatal(err)
		}
		list, err := libcni.ConfListFromBytes(b)
		if err != nil {
			t.Fatal(err)
		}
		var types []string
		for _, p := range list.Plugins {
			types = append(types, p.Network.Type)
		}
		want := []string{cni.PluginType}
		if tc.chained {
			want = append(want, "portmap")
			if caps := list.Plugins[1].Network.Capabilities; !caps["portMappings"] {
				t.Errorf("%s: portmap capabilities %v, want portMappings", tc.name, caps)
			}
		}
		if !slices.Equal(types, want) {
			t.Errorf("%s: plugins %v, want %v", tc.name, types, want)
		}
		var raw struct {
			CNIVersions []string `json:"cniVersions"`
		}
		if err := json.Unmarshal(b, &raw); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(raw.CNIVersions, tc.versions) {
			t.Errorf("%s: cniVersions %v, want %v", tc.name, raw.CNIVersions, tc.versions)
		}
	}
}

func TestAddResultVersions(t *testing.T) {
	mac, _ := net.ParseMAC("0a:58:0a:f4:00:05")
	att := attachment{
		Netns: "/var/run/netns/p", IfName: "eth0", HostIf: "dl0123456789abc", MAC: mac,
		Addr: netip.MustParsePrefix("10.244.0.5/24"), Gateway: netip.MustParseAddr("10.244.0.1"), MTU: 1400,
	}
	hostMAC, _ := net.ParseMAC("aa:bb:cc:dd:ee:ff")
	for _, v := range cni.SupportedVersions() {
		out, err := addResult(v, att, hostMAC)
		if err != nil {
			t.Fatalf("cniVersion %s: %v", v, err)
		}
		s := string(out)
		for _, want := range []string{`"cniVersion":"` + v + `"`, `"10.244.0.5/24"`, `"gateway":"10.244.0.1"`, `"0a:58:0a:f4:00:05"`, `"sandbox":"/var/run/netns/p"`} {
			if !strings.Contains(s, want) {
				t.Errorf("cniVersion %s result %s lacks %s", v, s, want)
			}
		}
	}
}

func TestListenUnixRefusesSharedDirectories(t *testing.T) {
	if _, err := listenUnix("/tmp/dunlin-test.sock"); err == nil || !strings.Contains(err.Error(), "shared") {
		t.Errorf("listenUnix in /tmp: %v, want a refusal", err)
	}
	dir := t.TempDir()
	ln, err := listenUnix(dir + "/own/cni.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	st, err := os.Stat(dir + "/own")
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("socket directory mode %v (%v), want 0700", st.Mode().Perm(), err)
	}
}
