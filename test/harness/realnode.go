package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Real nodes: per harness node a containerd (Debian's, with runc) and a real kubelet, both inside the
// node's network namespace, so that the CNI plugin containerd runs creates its host-side devices there and
// the kubelet's probes reach pods through the node's management port.
//
// They enter only the network namespace (nsenter --net), not a private mount namespace as `ip netns exec`
// does: that remounts /sys and so hides the cgroup v1 hierarchies the kubelet and runc need. Their mounts
// (overlay root filesystems, volumes, pod netns files) are therefore the host's, and Stop removes what they
// leave.

const (
	// PauseImage and PodServerImage are the names the harness imports its images under.
	PauseImage     = "dunlin.test/pause:1"
	PodServerImage = "dunlin.test/podserver:1"
	// ContainerdV2 is the containerd release test/kubebin/build.sh builds (a directory of binaries).
	ContainerdV2 = "containerd-v2.4.2"

	cgroupV1Root        = "/sys/fs/cgroup"
	containerdReadyWait = 30 * time.Second
	kubeletStopWait     = 90 * time.Second
	// containerd 1.6 keeps shim sockets under this fixed directory whatever its state directory.
	containerdShimSockets = "/run/containerd/s"
	// containerd 1.6 sets up every pod's lo with the CNI project's loopback plugin, looked up in its CNI
	// bin_dir; Debian's containernetworking-plugins has it here.
	loopbackPlugin = "/usr/lib/cni/loopback"
	portMapPlugin  = "/usr/lib/cni/portmap"
)

// Images are the OCI layout tars of the real-node tests.
type Images struct {
	Pause, PodServer string
	CoreDNS          string // with coredns given to BuildImages
}

// BuildImages builds the pause program and the pod server as static binaries (no -race: it needs cgo,
// and the image has no libc) and writes their image tars into dir; with coredns (the binary's path), the
// CoreDNS image too.
func BuildImages(ctx context.Context, dir, coredns string) (Images, error) {
	im := Images{Pause: filepath.Join(dir, "pause.tar"), PodServer: filepath.Join(dir, "podserver.tar")}
	bin := filepath.Join(dir, "bin")
	_, self, _, _ := runtime.Caller(0)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin+"/", "./test/pause", "./test/podserver")
	cmd.Dir = filepath.Join(filepath.Dir(self), "..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return im, fmt.Errorf("build image binaries: %w\n%s", err, out)
	}
	if err := WriteImage(ImageOptions{Name: PauseImage, Binary: filepath.Join(bin, "pause"), Path: "/pause"}, im.Pause); err != nil {
		return im, err
	}
	if coredns != "" {
		im.CoreDNS = filepath.Join(dir, "coredns.tar")
		if err := WriteImage(ImageOptions{Name: CoreDNSImage, Binary: coredns, Path: "/coredns"}, im.CoreDNS); err != nil {
			return im, err
		}
	}
	return im, WriteImage(ImageOptions{Name: PodServerImage, Binary: filepath.Join(bin, "podserver"), Path: "/podserver"}, im.PodServer)
}

// tars lists the image tars there are.
func (im Images) tars() []string {
	out := []string{im.Pause, im.PodServer}
	if im.CoreDNS != "" {
		out = append(out, im.CoreDNS)
	}
	return out
}

// ContainerdV2Binary returns the path of containerd 2's daemon, building it first if needed; its shim and
// ctr are next to it.
func ContainerdV2Binary() (string, error) {
	dir, err := kubeBinDir(ContainerdV2)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, ContainerdV2, "containerd"), nil
}

// nsenterNet runs bin in the network namespace of the named netns only.
func nsenterNet(netns, bin string, args ...string) (string, []string) {
	return "nsenter", append([]string{"--net=/var/run/netns/" + netns, "--", bin}, args...)
}

// Containerd is a containerd of one node, with its own root, state, sockets and runc root.
type Containerd struct {
	Dir    string
	Socket string
	proc   *process
	node   *Node
	conf   string
	bin    string
	ctr    string // the ctr of the same release when there is one next to bin, else ctr on PATH
}

// ContainerdOptions configure StartContainerd.
type ContainerdOptions struct {
	Dir              string // root, state, sockets, config and log
	CNIBin, CNIConf  string // where the node agent installs the plugin and the conflist
	SandboxImage     string // default PauseImage
	Images           []string
	ContainerdBinary string // default "containerd" on PATH
}

// StartContainerd writes the configuration, starts containerd in n's network namespace, waits until it
// answers and imports the image tars.
func StartContainerd(ctx context.Context, n *Node, o ContainerdOptions) (c *Containerd, err error) {
	if o.SandboxImage == "" {
		o.SandboxImage = PauseImage
	}
	if o.ContainerdBinary == "" {
		o.ContainerdBinary = "containerd"
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	for _, d := range []string{dir, o.CNIBin, o.CNIConf} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("start containerd on %s: %w", n.Name, err)
		}
	}
	// portmap too, as a node's CNI bin directory has it: dunlin-node chains it for hostPorts.
	for _, p := range []string{loopbackPlugin, portMapPlugin} {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("start containerd on %s: the CNI %s plugin (apt-get install containernetworking-plugins): %w", n.Name, filepath.Base(p), err)
		}
		if err := os.WriteFile(filepath.Join(o.CNIBin, filepath.Base(p)), b, 0o755); err != nil {
			return nil, fmt.Errorf("start containerd on %s: %w", n.Name, err)
		}
	}
	c = &Containerd{Dir: dir, Socket: filepath.Join(dir, "c.sock"), node: n, conf: filepath.Join(dir, "config.toml")}
	// restrict_oom_score_adj: runc cannot lower oom_score_adj without CAP_SYS_RESOURCE, which this kind of
	// VM lacks, and sandbox creation fails. runc's state goes under our directory (Root) rather than
	// /run/containerd/runc.
	conf := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[7]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[8]q
    conf_dir = %[9]q
    max_conf_num = 1
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.Socket, c.Socket+".ttrpc", filepath.Join(dir, "opt"),
		o.SandboxImage, filepath.Join(dir, "runc"), o.CNIBin, o.CNIConf)
	if err := os.WriteFile(c.conf, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("start containerd on %s: %w", n.Name, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("start containerd on %s: %w", n.Name, err), c.Stop())
			c = nil
		}
	}()
	c.bin, c.ctr = o.ContainerdBinary, "ctr"
	if next := filepath.Join(filepath.Dir(o.ContainerdBinary), "ctr"); filepath.IsAbs(next) {
		if _, err := os.Stat(next); err == nil {
			c.ctr = next
		}
	}
	if err := c.start(ctx); err != nil {
		return c, err
	}
	for _, im := range o.Images {
		if out, err := c.Ctr(ctx, "images", "import", im); err != nil {
			return c, fmt.Errorf("import %s: %w: %s", im, err, out)
		}
	}
	return c, nil
}

func (c *Containerd) start(ctx context.Context) error {
	os.Remove(c.Socket)
	name, args := nsenterNet(c.node.Netns, c.bin, "--config", c.conf)
	// containerd finds its runtime shim on PATH: the one next to it first.
	env := []string{"PATH=" + filepath.Dir(c.bin) + ":" + os.Getenv("PATH")}
	if !filepath.IsAbs(c.bin) {
		env = nil
	}
	p, err := startProcess(c.node.Name+" containerd", filepath.Join(c.Dir, "containerd.log"), env, name, args...)
	if err != nil {
		return err
	}
	c.proc = p
	return waitReady(ctx, p, containerdReadyWait, func(ctx context.Context) error {
		_, err := c.Ctr(ctx, "version")
		return err
	})
}

// Restart stops containerd (SIGTERM; the shims and so the containers keep running) and starts it again.
func (c *Containerd) Restart(ctx context.Context) error {
	if err := c.proc.Stop(); err != nil {
		return err
	}
	return c.start(ctx)
}

// Ctr runs `ctr --address <socket> --namespace k8s.io args...` and returns its stdout (containerd 2's
// ctr warns on stderr about cgroup v1 on every call).
func (c *Containerd) Ctr(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.ctr, append([]string{"--address", c.Socket, "--namespace", "k8s.io"}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// Stop kills every task containerd still runs (their shims would outlive it), then stops containerd.
func (c *Containerd) Stop() error {
	if c == nil || c.proc == nil {
		return nil
	}
	var errs []error
	if !c.proc.exited() {
		ctx := context.Background()
		if out, err := c.Ctr(ctx, "tasks", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				_, _ = c.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
				if _, err := c.Ctr(ctx, "tasks", "delete", "-f", id); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	errs = append(errs, c.proc.Stop(), killMatching(c.Socket))
	return errors.Join(errs...)
}

// killMatching SIGKILLs processes whose command line contains s (a path of ours: the shims carry
// containerd's socket in theirs) and waits a little for them to go.
func killMatching(s string) error {
	var left []int
	for range 50 {
		left = processesMatching(s)
		if len(left) == 0 {
			return nil
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("processes %v with %s in their command line survive SIGKILL", left, s)
}

// processesMatching returns the pids of live processes whose command line contains s.
func processesMatching(s string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		if strings.Contains(strings.ReplaceAll(string(b), "\x00", " "), s) {
			if _, err := procStartTime(pid); err == nil { // not a zombie
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// RealKubelet is a kubelet of one node.
type RealKubelet struct {
	Dir        string
	CgroupRoot string
	Log        string
	proc       *process
	node       *Node
	args       []string
}

// RealKubeletOptions configure StartRealKubelet.
type RealKubeletOptions struct {
	Dir        string // --root-dir, configuration, pod logs, kubelet log
	KubeBinDir string // holds kubelet
	Kubeconfig string // reaches the apiserver from inside the node's namespace
	Runtime    string // containerd's socket
	ClusterDNS bool   // pods resolve through ClusterDNSIP, in ClusterDomain
}

// StartRealKubelet starts the kubelet in n's network namespace, registering the Node named n.Name with
// its encap IP as the node IP. cgroups go under a cgroup root of its own in every v1 hierarchy.
func StartRealKubelet(ctx context.Context, n *Node, o RealKubeletOptions) (*RealKubelet, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	k := &RealKubelet{Dir: dir, CgroupRoot: "/" + filepath.Base(n.Netns), Log: filepath.Join(dir, "kubelet.log"), node: n}
	for _, d := range []string{filepath.Join(dir, "root"), filepath.Join(dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("start kubelet on %s: %w", n.Name, err)
		}
	}
	if err := createCgroup(k.CgroupRoot); err != nil {
		return nil, fmt.Errorf("start kubelet on %s: %w", n.Name, err)
	}
	// failCgroupV1: this machine has cgroup v1 only. Image GC is off: the images are imported, never
	// pulled. Eviction thresholds are tiny so that a full shared disk does not taint the node. The
	// kubelet's own API trusts everyone: nothing outside the test reaches the node's namespace.
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %[1]s
containerRuntimeEndpoint: unix://%[2]s
address: %[3]s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
podLogsDir: %[4]s
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
hairpinMode: none
serializeImagePulls: false
nodeStatusReportFrequency: 10s
`, k.CgroupRoot, o.Runtime, n.EncapIP, filepath.Join(dir, "logs"))
	if o.ClusterDNS {
		conf += fmt.Sprintf("clusterDNS: [%s]\nclusterDomain: %s\n", ClusterDNSIP, ClusterDomain)
	}
	confPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("start kubelet on %s: %w", n.Name, err)
	}
	k.args = []string{
		"--config=" + confPath,
		"--kubeconfig=" + o.Kubeconfig,
		"--root-dir=" + filepath.Join(dir, "root"),
		"--hostname-override=" + n.Name,
		"--node-ip=" + n.EncapIP,
		"-v=2",
	}
	k.args = append([]string{filepath.Join(o.KubeBinDir, "kubelet")}, k.args...)
	if err := k.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("start kubelet on %s: %w", n.Name, err), k.Stop())
	}
	return k, nil
}

// Start starts the kubelet again after StopProcess.
func (k *RealKubelet) Start() error {
	name, args := nsenterNet(k.node.Netns, k.args[0], k.args[1:]...)
	p, err := startProcess(k.node.Name+" kubelet", k.Log, nil, name, args...)
	if err != nil {
		return err
	}
	k.proc = p
	return nil
}

// StopProcess stops the kubelet process only; pods keep running.
func (k *RealKubelet) StopProcess() error { return k.proc.Stop() }

// Exited reports whether the kubelet has exited.
func (k *RealKubelet) Exited() bool { return k.proc == nil || k.proc.exited() }

// Stop stops the kubelet and removes what it left: mounts under its directory and its cgroups. Stop
// the pods (delete them, or kill containerd's tasks) before, or their cgroups stay busy.
func (k *RealKubelet) Stop() error {
	if k == nil {
		return nil
	}
	var errs []error
	if k.proc != nil {
		errs = append(errs, k.proc.Stop())
	}
	errs = append(errs, unmountUnder(k.Dir), removeCgroup(k.CgroupRoot))
	return errors.Join(errs...)
}

// cgroupHierarchies returns the mounted cgroup v1 hierarchies (named ones included) and, with v2, the
// cgroup2 mount of a hybrid host (/sys/fs/cgroup/unified), where runc mirrors the kubelet's cgroups.
func cgroupHierarchies(v2 bool) ([]string, error) {
	mounts, err := readMounts()
	if err != nil {
		return nil, err
	}
	var hs []string
	for _, m := range mounts {
		if (m.fstype == "cgroup" || v2 && m.fstype == "cgroup2") && strings.HasPrefix(m.point, cgroupV1Root+"/") {
			hs = append(hs, m.point)
		}
	}
	return hs, nil
}

// createCgroup creates path in every v1 hierarchy (the kubelet requires its cgroup root to exist), with
// the cpuset of the root: a new v1 cpuset is empty and takes no tasks.
func createCgroup(path string) error {
	hs, err := cgroupHierarchies(false)
	if err != nil {
		return err
	}
	for _, h := range hs {
		d := filepath.Join(h, path)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				if err := os.WriteFile(filepath.Join(d, f), b, 0o644); err != nil {
					return fmt.Errorf("cgroup %s: %w", d, err)
				}
			}
		}
	}
	return nil
}

// removeCgroup removes path and its descendants from every hierarchy, deepest first, killing what still
// runs in them.
func removeCgroup(path string) error {
	hs, err := cgroupHierarchies(true)
	if err != nil {
		return err
	}
	var errs []error
	for _, h := range hs {
		root := filepath.Join(h, path)
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			var last error
			for range 50 {
				if last = syscall.Rmdir(d); last == nil || errors.Is(last, syscall.ENOENT) {
					last = nil
					break
				}
				if b, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
					for _, f := range strings.Fields(string(b)) {
						if pid, err := strconv.Atoi(f); err == nil {
							_ = syscall.Kill(pid, syscall.SIGKILL)
						}
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
			if last != nil {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", d, last))
			}
		}
	}
	return errors.Join(errs...)
}

type mount struct{ point, fstype string }

// readMounts parses /proc/self/mountinfo.
func readMounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var ms []mount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		i := slices.Index(fields, "-")
		if len(fields) < 5 || i < 0 || i+1 >= len(fields) {
			continue
		}
		ms = append(ms, mount{point: unescapeMount(fields[4]), fstype: fields[i+1]})
	}
	return ms, sc.Err()
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// MountsUnder returns the mount points at or below dir, deepest (last mounted) first.
func MountsUnder(dir string) ([]string, error) {
	ms, err := readMounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if m.point == dir || strings.HasPrefix(m.point, dir+"/") {
			out = append(out, m.point)
		}
	}
	slices.Reverse(out)
	return out, nil
}

// unmountUnder detaches every mount at or below dir.
func unmountUnder(dir string) error {
	points, err := MountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// CgroupsLeft returns the hierarchies (v1 and the hybrid cgroup2 one) that still hold path.
func CgroupsLeft(path string) []string {
	hs, _ := cgroupHierarchies(true)
	var left []string
	for _, h := range hs {
		if _, err := os.Stat(filepath.Join(h, path)); err == nil {
			left = append(left, filepath.Join(h, path))
		}
	}
	return left
}

// staleShimSockets returns the sockets in containerd 1.6's fixed shim directory that nobody listens on
// any more (a shim killed with its containers does not remove its socket). Shims listen in the network
// namespaces they run in, so /proc/net/unix here may not list them: connecting by path works from any.
func staleShimSockets() []string {
	entries, _ := os.ReadDir(containerdShimSockets)
	var stale []string
	for _, e := range entries {
		p := filepath.Join(containerdShimSockets, e.Name())
		conn, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			conn.Close()
			continue
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			stale = append(stale, p)
		}
	}
	return stale
}

// removeStaleShimSockets removes the stale shim sockets, and the directories containerd 1.6 made under
// /run/containerd when they are left empty. Live sockets, ours or anyone's, stay.
func removeStaleShimSockets() error {
	var errs []error
	for _, p := range staleShimSockets() {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	// os.Remove removes only empty directories: someone else's containerd keeps its files.
	for _, d := range []string{containerdShimSockets, "/run/containerd/fifo", "/run/containerd/runc/k8s.io", "/run/containerd/runc", "/run/containerd"} {
		_ = os.Remove(d)
	}
	return errors.Join(errs...)
}

// startRealNode starts the node's containerd (importing the images) and kubelet, and waits until the
// kubelet has registered the Node.
func (n *ClusterNode) startRealNode(ctx context.Context, o ClusterOptions, kubeBinDir string) error {
	c := n.cluster
	var err error
	n.Containerd, err = StartContainerd(ctx, n.Node, ContainerdOptions{
		Dir: filepath.Join(n.Dir, "ctrd"), CNIBin: n.BinDir, CNIConf: n.ConfDir,
		Images: append(c.Images.tars(), o.ExtraImages...), ContainerdBinary: o.Containerd,
	})
	if err != nil {
		return err
	}
	n.RealKubelet, err = StartRealKubelet(ctx, n.Node, RealKubeletOptions{
		Dir: filepath.Join(n.Dir, "kubelet"), KubeBinDir: kubeBinDir, Kubeconfig: c.Kube.Kubeconfig, Runtime: n.Containerd.Socket,
		ClusterDNS: o.KubeletDNS,
	})
	if err != nil {
		return err
	}
	return waitReady(ctx, n.RealKubelet.proc, 60*time.Second, func(ctx context.Context) error {
		_, err := c.Kube.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		return err
	})
}

// WaitNodeReady waits until the Node's Ready condition is True: the kubelet runs and the runtime
// reports its network ready (the conflist is installed).
func (n *ClusterNode) WaitNodeReady(ctx context.Context) error {
	return n.WaitNodeReadySince(ctx, time.Time{})
}

// WaitNodeReadySince is WaitNodeReady with a Ready condition posted at or after since (to the second),
// e.g. by a kubelet restarted then.
func (n *ClusterNode) WaitNodeReadySince(ctx context.Context, since time.Time) error {
	if n.RealKubelet == nil {
		return fmt.Errorf("node %s has no real kubelet", n.Name)
	}
	return waitReady(ctx, n.RealKubelet.proc, 120*time.Second, func(ctx context.Context) error {
		node, err := n.cluster.Kube.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.LastHeartbeatTime.Time.Before(since.Truncate(time.Second)) {
					return fmt.Errorf("node %s: no status from the kubelet since %s", n.Name, since.Format(time.RFC3339))
				}
				if cond.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("node %s not ready: %s", n.Name, cond.Message)
			}
		}
		return fmt.Errorf("node %s has no Ready condition yet", n.Name)
	})
}

// drainRealNodes deletes the Deployments, ReplicaSets and pods of every namespace and waits until the
// kubelets have stopped them (CNI DEL, the sandbox's netns removed) and no runtime runs a task.
func (c *Cluster) drainRealNodes() error {
	ctx, cancel := context.WithTimeout(context.Background(), kubeletStopWait)
	defer cancel()
	cs := c.Kube.Client
	all := metav1.ListOptions{}
	nss, err := cs.CoreV1().Namespaces().List(ctx, all)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	for _, ns := range nss.Items {
		_ = cs.AppsV1().Deployments(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, all)
		_ = cs.AppsV1().ReplicaSets(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, all)
		_ = cs.CoreV1().Pods(ns.Name).DeleteCollection(ctx, metav1.DeleteOptions{}, all)
	}
	err = Eventually(kubeletStopWait, func() error {
		pods, err := cs.CoreV1().Pods("").List(ctx, all)
		if err != nil {
			return err
		}
		if len(pods.Items) > 0 {
			return fmt.Errorf("%d pods left, e.g. %s/%s", len(pods.Items), pods.Items[0].Namespace, pods.Items[0].Name)
		}
		for _, n := range c.Nodes {
			if n.Containerd == nil || n.Containerd.proc == nil || n.Containerd.proc.exited() {
				continue
			}
			out, err := n.Containerd.Ctr(ctx, "tasks", "ls", "-q")
			if err != nil {
				return err
			}
			if ids := strings.Fields(out); len(ids) > 0 {
				return fmt.Errorf("containerd on %s still runs tasks %v", n.Name, ids)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	return nil
}

// sandboxNetns returns the network namespace files of containerd's containers.
func (c *Containerd) sandboxNetns(ctx context.Context) []string {
	out, err := c.Ctr(ctx, "containers", "ls", "-q")
	if err != nil {
		return nil
	}
	var paths []string
	for _, id := range strings.Fields(out) {
		info, err := c.Ctr(ctx, "containers", "info", id)
		if err != nil {
			continue
		}
		var v struct {
			Spec struct {
				Linux struct {
					Namespaces []struct{ Type, Path string }
				}
			}
		}
		if json.Unmarshal([]byte(info), &v) != nil {
			continue
		}
		for _, ns := range v.Spec.Linux.Namespaces {
			if ns.Type == "network" && ns.Path != "" && !slices.Contains(paths, ns.Path) {
				paths = append(paths, ns.Path)
			}
		}
	}
	return paths
}

// stopRealNode stops the kubelet and containerd (killing what still runs) and removes their mounts,
// cgroups and the pods' netns files.
func (n *ClusterNode) stopRealNode() error {
	if n.RealKubelet == nil && n.Containerd == nil {
		return nil
	}
	var errs []error
	if n.RealKubelet != nil && n.RealKubelet.proc != nil {
		errs = append(errs, n.RealKubelet.proc.Stop())
	}
	var netns []string
	if n.Containerd != nil {
		if n.Containerd.proc != nil && !n.Containerd.proc.exited() {
			netns = n.Containerd.sandboxNetns(context.Background())
		}
		errs = append(errs, n.Containerd.Stop())
	}
	errs = append(errs, n.RealKubelet.Stop())
	if n.Containerd != nil {
		errs = append(errs, unmountUnder(n.Containerd.Dir))
	}
	for _, p := range netns {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	n.cluster.podNetns = append(n.cluster.podNetns, netns...)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop real node %s: %w", n.Name, err)
	}
	return nil
}

// LeftBehind lists what a stopped cluster with real nodes left on the machine: processes with the
// cluster's directory in their command line (kubelets, containerds, shims), mounts under it, the
// kubelets' cgroups, pod and node network namespaces. Empty when Stop cleaned up.
func (c *Cluster) LeftBehind() []string {
	var left []string
	dir, _ := filepath.Abs(c.Dir)
	for _, pid := range processesMatching(dir) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		left = append(left, fmt.Sprintf("process %d: %s", pid, strings.ReplaceAll(string(b), "\x00", " ")))
	}
	mounts, _ := MountsUnder(dir)
	for _, m := range mounts {
		left = append(left, "mount "+m)
	}
	for _, n := range c.Nodes {
		if n.RealKubelet != nil {
			for _, cg := range CgroupsLeft(n.RealKubelet.CgroupRoot) {
				left = append(left, "cgroup "+cg)
			}
		}
		if _, err := os.Stat("/var/run/netns/" + n.Netns); err == nil {
			left = append(left, "netns "+n.Netns)
		}
	}
	for _, p := range staleShimSockets() {
		left = append(left, "stale shim socket "+p)
	}
	all, _ := readMounts()
	for _, p := range c.podNetns {
		if _, err := os.Stat(p); err == nil {
			left = append(left, "pod netns file "+p)
		}
		for _, m := range all {
			if m.point == p {
				left = append(left, "pod netns mount "+p)
			}
		}
	}
	return left
}

// PodSandbox finds the running sandbox of pod namespace/name in the node's containerd and returns it
// with its network namespace file, to send traffic from inside the pod.
func (n *ClusterNode) PodSandbox(ctx context.Context, namespace, name string) (Sandbox, error) {
	if n.Containerd == nil {
		return Sandbox{}, fmt.Errorf("node %s has no containerd", n.Name)
	}
	out, err := n.Containerd.Ctr(ctx, "containers", "ls", "-q", "labels.\"io.cri-containerd.kind\"==sandbox")
	if err != nil {
		return Sandbox{}, err
	}
	for _, id := range strings.Fields(out) {
		info, err := n.Containerd.Ctr(ctx, "containers", "info", id)
		if err != nil {
			continue
		}
		var v struct {
			Labels map[string]string
			Spec   struct {
				Linux struct {
					Namespaces []struct{ Type, Path string }
				}
			}
		}
		if json.Unmarshal([]byte(info), &v) != nil {
			continue
		}
		if v.Labels["io.kubernetes.pod.namespace"] != namespace || v.Labels["io.kubernetes.pod.name"] != name {
			continue
		}
		if _, err := n.Containerd.Ctr(ctx, "tasks", "ps", id); err != nil {
			continue // a sandbox of an earlier pod by that name, stopped
		}
		for _, ns := range v.Spec.Linux.Namespaces {
			if ns.Type == "network" && ns.Path != "" {
				return Sandbox{ID: id, Netns: ns.Path, NetnsName: filepath.Base(ns.Path), UID: v.Labels["io.kubernetes.pod.uid"]}, nil
			}
		}
	}
	return Sandbox{}, fmt.Errorf("no running sandbox of %s/%s in containerd on %s", namespace, name, n.Name)
}
