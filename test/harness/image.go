package harness

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"runtime"
	"sort"
	"time"
)

// Container images without Docker or a registry: an OCI image layout (https://github.com/opencontainers/
// image-spec/blob/main/image-layout.md) written as a tar, holding one layer with one static binary.
// `ctr -n k8s.io images import` reads it, and the index's io.containerd.image.name annotation makes the
// CRI see it under exactly that name, so pods with imagePullPolicy IfNotPresent never pull.

// ImageOptions describe a one-binary image.
type ImageOptions struct {
	Name       string   // full reference, e.g. "registry.k8s.io/pause:3.10" or "dunlin.test/podserver:1"
	Binary     string   // a static executable on this machine
	Path       string   // where it goes in the image, e.g. "/podserver"
	Entrypoint []string // default: [Path]
	Cmd        []string // the image's default arguments
	// Files are more files of the layer (shell tools and their shared libraries, for the upstream
	// suite's images), and Links symlinks in it: path in the image -> target.
	Files []ImageFile
	Links map[string]string
}

// ImageFile is one more file of an image: Source on this machine copied to Path.
type ImageFile struct {
	Path, Source string
}

// WriteImage writes the OCI layout tar of o to out.
func WriteImage(o ImageOptions, out string) error {
	if o.Name == "" || o.Binary == "" || o.Path == "" {
		return fmt.Errorf("image %q: Name, Binary and Path are required", o.Name)
	}
	if len(o.Entrypoint) == 0 {
		o.Entrypoint = []string{o.Path}
	}
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}
	layer, err := layerTar(o, bin)
	if err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(layer); err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}

	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       imageConfig(o),
		// diff_ids name the uncompressed layers; the manifest names the compressed blobs.
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digest(layer)}},
	})
	if err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor("application/vnd.oci.image.config.v1+json", config, nil),
		"layers":        []any{descriptor("application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes(), nil)},
	})
	if err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{descriptor("application/vnd.oci.image.manifest.v1+json", manifest,
			map[string]string{"io.containerd.image.name": o.Name})},
	})
	if err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{blobPath(config), config},
		{blobPath(gz.Bytes()), gz.Bytes()},
		{blobPath(manifest), manifest},
		{"index.json", index},
	}
	for _, f := range files {
		if err := addFile(tw, f.name, 0o644, f.data); err != nil {
			return fmt.Errorf("image %s: %w", o.Name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("image %s: %w", o.Name, err)
	}
	return nil
}

// layerTar is the uncompressed layer: the binary at o.Path, o.Files and o.Links, and /tmp for programs
// that want one.
func layerTar(o ImageOptions, bin []byte) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: mtime}); err != nil {
		return nil, err
	}
	dirs := map[string]bool{"tmp": true}
	if err := addDirs(tw, dirs, path.Clean(o.Path)[1:]); err != nil {
		return nil, err
	}
	if err := addFile(tw, path.Clean(o.Path)[1:], 0o755, bin); err != nil {
		return nil, err
	}
	for _, f := range o.Files {
		data, err := os.ReadFile(f.Source)
		if err != nil {
			return nil, err
		}
		st, err := os.Stat(f.Source)
		if err != nil {
			return nil, err
		}
		if err := addDirs(tw, dirs, path.Clean(f.Path)[1:]); err != nil {
			return nil, err
		}
		if err := addFile(tw, path.Clean(f.Path)[1:], int64(st.Mode().Perm()), data); err != nil {
			return nil, err
		}
	}
	links := make([]string, 0, len(o.Links))
	for l := range o.Links {
		links = append(links, l)
	}
	sort.Strings(links)
	for _, l := range links {
		name := path.Clean(l)[1:]
		if err := addDirs(tw, dirs, name); err != nil {
			return nil, err
		}
		h := &tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: o.Links[l], Mode: 0o777, ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func imageConfig(o ImageOptions) map[string]any {
	c := map[string]any{"Entrypoint": o.Entrypoint, "WorkingDir": "/",
		"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
	if len(o.Cmd) > 0 {
		c["Cmd"] = o.Cmd
	}
	return c
}

// addDirs writes the parent directories of name not yet in the layer.
func addDirs(tw *tar.Writer, done map[string]bool, name string) error {
	d := path.Dir(name)
	if d == "." || done[d] {
		return nil
	}
	if err := addDirs(tw, done, d); err != nil {
		return err
	}
	done[d] = true
	return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: time.Unix(0, 0)})
}

func addFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobPath(b []byte) string {
	sum := sha256.Sum256(b)
	return "blobs/sha256/" + hex.EncodeToString(sum[:])
}

func descriptor(mediaType string, b []byte, annotations map[string]string) map[string]any {
	d := map[string]any{"mediaType": mediaType, "digest": digest(b), "size": len(b)}
	if annotations != nil {
		d["annotations"] = annotations
	}
	return d
}
