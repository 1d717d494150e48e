package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// The upstream suite's images, built here from what this machine has: agnhost (built from its Go package
// at the pinned Kubernetes version) and, for the shell commands the tests run in them, Debian's
// busybox-static applets and the dynamically linked dig, nslookup, host, curl, nc (OpenBSD's, which the
// suite's nc flags are written for) and getent, each with the shared libraries ldd lists. The names are
// what e2e.test asks for (its --list-images); pods use IfNotPresent, so nothing is pulled.
const (
	agnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	busyboxImage = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	glibcDNS     = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
	// The suite's nginx pods (the Endpoints and EndpointSlice API tests) only have to run and declare
	// ports; agnhost's test-webserver serves HTTP on port 80 in its place.
	nginxImage = "registry.k8s.io/e2e-test-images/nginx:1.27.0-2"
	pauseImage = "registry.k8s.io/pause:3.10.2"
)

// dynamicTools are copied with their shared libraries.
var dynamicTools = []string{"/bin/dash", "/bin/bash", "/usr/bin/dig", "/usr/bin/nslookup", "/usr/bin/host", "/usr/bin/curl", "/bin/nc.openbsd", "/usr/bin/getent"}

// toolFiles is the shell layer every test image gets: busybox and its applets in /bin, the dynamic tools
// in /usr/bin with their libraries, and /etc files glibc reads.
func toolFiles() ([]harness.ImageFile, map[string]string, error) {
	files := []harness.ImageFile{{Path: "/bin/busybox", Source: "/bin/busybox"}}
	links := map[string]string{}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, nil, fmt.Errorf("busybox --list (apt-get install busybox-static): %w", err)
	}
	own := map[string]bool{}
	for _, t := range dynamicTools {
		own[strings.TrimSuffix(filepath.Base(t), ".openbsd")] = true
	}
	for _, a := range strings.Fields(string(out)) {
		if !own[a] && a != "busybox" && a != "sh" {
			links["/bin/"+a] = "busybox"
		}
	}
	// Debian's busybox sh runs its own applets before any file on PATH (its nc lacks the OpenBSD flags
	// the suite uses); dash runs what PATH finds.
	links["/bin/sh"] = "/usr/bin/dash"
	libs := map[string]bool{}
	for _, t := range dynamicTools {
		name := "/usr/bin/" + strings.TrimSuffix(filepath.Base(t), ".openbsd")
		files = append(files, harness.ImageFile{Path: name, Source: t})
		out, err := exec.Command("ldd", t).Output()
		if err != nil {
			return nil, nil, fmt.Errorf("ldd %s (apt-get install bind9-dnsutils curl netcat-openbsd): %w", t, err)
		}
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				libs[f[2]] = true
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				libs[f[0]] = true
			}
		}
	}
	for l := range libs {
		files = append(files, harness.ImageFile{Path: l, Source: l})
	}
	for _, e := range []string{"/etc/nsswitch.conf", "/etc/services", "/etc/protocols"} {
		if _, err := os.Stat(e); err == nil {
			files = append(files, harness.ImageFile{Path: e, Source: e})
		}
	}
	// The suite's images run as root; glibc and busybox look the user up.
	return files, links, nil
}

// buildImages writes the image tars into dir and returns their paths.
func buildImages(dir, kubeBin, pauseBin string) ([]string, error) {
	files, links, err := toolFiles()
	if err != nil {
		return nil, err
	}
	passwd := filepath.Join(dir, "passwd")
	group := filepath.Join(dir, "group")
	if err := os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(group, []byte("root:x:0:\nnogroup:x:65534:\n"), 0o644); err != nil {
		return nil, err
	}
	files = append(files, harness.ImageFile{Path: "/etc/passwd", Source: passwd}, harness.ImageFile{Path: "/etc/group", Source: group})
	agnhost := filepath.Join(kubeBin, "agnhost")
	// porter's TLS ports serve with /localhost.crt and /localhost.key, as in the upstream image (without
	// them the proxy spec's https ports answer nothing and the apiserver's proxy says 503).
	agnhostFiles := append([]harness.ImageFile(nil), files...)
	for _, f := range []string{"localhost.crt", "localhost.key"} {
		agnhostFiles = append(agnhostFiles, harness.ImageFile{Path: "/" + f, Source: filepath.Join(kubeBin, "agnhost-tls", f)})
	}
	images := []harness.ImageOptions{
		{Name: agnhostImage, Binary: agnhost, Path: "/agnhost", Cmd: []string{"pause"}, Files: agnhostFiles, Links: links},
		{Name: nginxImage, Binary: agnhost, Path: "/agnhost", Entrypoint: []string{"/agnhost", "test-webserver", "--port=80"}, Files: files, Links: links},
		{Name: glibcDNS, Binary: agnhost, Path: "/agnhost", Entrypoint: []string{"/bin/sh"}, Files: files, Links: links},
		// busybox as the entrypoint runs an applet named by the first argument, as `sleep 3600` args do.
		{Name: busyboxImage, Binary: "/bin/busybox", Path: "/bin/busybox", Entrypoint: []string{"/bin/busybox"}, Cmd: []string{"sh"},
			Files: files[1:], Links: links},
		{Name: pauseImage, Binary: pauseBin, Path: "/pause"},
	}
	var tars []string
	for i, o := range images {
		p := filepath.Join(dir, fmt.Sprintf("image%d.tar", i))
		if err := harness.WriteImage(o, p); err != nil {
			return nil, err
		}
		tars = append(tars, p)
	}
	return tars, nil
}
