package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// KubeletOptions configure a stand-in kubelet and container runtime for one node.
type KubeletOptions struct {
	NodeName string
	Client   kubernetes.Interface
	// ConfDir and BinDir are the CNI directories the node agent installs into; CacheDir is libcni's.
	ConfDir, BinDir, CacheDir string
	// PodServer is test/podserver, started inside every pod's netns to serve the pod's declared
	// container ports (TCP 8080 when it declares none); empty: none. A pod whose first container has a
	// command runs that instead (an absolute path on this machine: pods share its filesystem), with
	// the container's args, as CoreDNS does (Cluster.StartDNS).
	PodServer string
	Dir       string // logs of the pod servers
	Workers   int    // sandboxes set up in parallel (default 8)
	// Netns is the node's network namespace (ip netns name), where a pod's HTTP readiness probe runs
	// from, as kubelet probes from the host: the pod is Ready once the probe first succeeds (later
	// failures are not looked at). Empty, or a pod without a probe: Ready at once.
	Netns string
}

// probePeriod is how often a pod's readiness probe is retried until it succeeds.
const probePeriod = time.Second

// Sandbox is a running pod as the stand-in runtime sees it.
type Sandbox struct {
	ID        string // CNI_CONTAINERID
	NetnsName string // ip netns name
	Netns     string // /var/run/netns/<name>
	UID       string
	IP        string
	AddTime   time.Duration // how long the CNI ADD took
	server    *process
}

// Kubelet watches the pods bound to its node and does what kubelet and a CRI runtime do for networking:
// a netns per pod, CNI ADD through libcni with the installed conflist (as containerd does, including
// CNI_ARGS), a workload process, the pod status; and CNI DEL and netns removal when the pod goes.
type Kubelet struct {
	o      KubeletOptions
	cni    *libcni.CNIConfig
	lister corelisters.PodLister
	queue  workqueue.TypedRateLimitingInterface[string]
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	sandboxes map[string]*Sandbox // namespace/name
	lastErr   map[string]error
}

// StartKubelet starts watching; pods are set up as soon as the CNI configuration is installed.
func StartKubelet(ctx context.Context, o KubeletOptions) (*Kubelet, error) {
	if o.Workers == 0 {
		o.Workers = 8
	}
	for _, d := range []string{o.ConfDir, o.BinDir, o.CacheDir, o.Dir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("kubelet dir: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := informers.NewSharedInformerFactoryWithOptions(o.Client, 0, informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
		lo.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", o.NodeName).String()
	}))
	inf := f.Core().V1().Pods()
	k := &Kubelet{
		o: o,
		// libcni creates a default Exec lazily when given none, unsynchronized: racy with several
		// workers, so give it one.
		cni: libcni.NewCNIConfigWithCacheDir([]string{o.BinDir}, o.CacheDir,
			&invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}),
		lister:    inf.Lister(),
		queue:     workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, 2*time.Second)),
		cancel:    cancel,
		sandboxes: map[string]*Sandbox{},
		lastErr:   map[string]error{},
	}
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	_, _ = inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue,
	})
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		cancel()
		return nil, errors.New("kubelet pod cache did not sync")
	}
	for range o.Workers {
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			for k.work(ctx) {
			}
		}()
	}
	go func() { <-ctx.Done(); k.queue.ShutDown() }()
	return k, nil
}

func (k *Kubelet) work(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	err := k.sync(ctx, key)
	k.mu.Lock()
	if err != nil {
		k.lastErr[key] = err
	} else {
		delete(k.lastErr, key)
	}
	k.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}

func (k *Kubelet) sync(ctx context.Context, key string) error {
	ns, name, _ := strings.Cut(key, "/")
	pod, err := k.lister.Pods(ns).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	k.mu.Lock()
	sb := k.sandboxes[key]
	k.mu.Unlock()
	gone := pod == nil || pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
	if sb != nil && (gone || sb.UID != string(pod.UID)) {
		if err := k.teardown(ctx, key, pod, sb); err != nil {
			return err
		}
		sb = nil
	}
	if pod != nil && pod.DeletionTimestamp != nil {
		// What kubelet does once the containers are gone: finish the deletion.
		uid := pod.UID
		err := k.o.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64), Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("finish deleting pod %s: %w", key, err)
		}
		return nil
	}
	if gone {
		return nil
	}
	if sb == nil {
		if sb, err = k.setup(ctx, key, pod); err != nil {
			return err
		}
	}
	// Once Ready, a pod stays so: only the first success of a readiness probe counts here.
	ready := (podReady(pod) && pod.Status.PodIP == sb.IP) || k.probeReady(ctx, pod, sb)
	if !ready {
		k.queue.AddAfter(key, probePeriod)
	}
	return k.writeStatus(ctx, pod, sb, ready)
}

// ConfList reads the network configuration a runtime would use: the first file of the conf dir.
func (k *Kubelet) ConfList() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(k.o.ConfDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("read CNI conf dir: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("network not ready: no CNI configuration in %s", k.o.ConfDir)
	}
	sort.Strings(files)
	return libcni.NetworkConfFromFile(files[0])
}

// CNI is the libcni handle the runtime uses, for tests that invoke the plugin themselves.
func (k *Kubelet) CNI() *libcni.CNIConfig { return k.cni }

// RuntimeConf is what a CRI runtime passes for a pod sandbox.
func RuntimeConf(sandboxID, netns, namespace, name, uid string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: sandboxID,
		NetNS:       netns,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", namespace},
			{"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", sandboxID},
			{"K8S_POD_UID", uid},
		},
	}
}

func (k *Kubelet) setup(ctx context.Context, key string, pod *corev1.Pod) (*Sandbox, error) {
	list, err := k.ConfList()
	if err != nil {
		return nil, err
	}
	sb := &Sandbox{ID: randomHex(32), NetnsName: "dlp" + randomHex(4), UID: string(pod.UID)}
	sb.Netns = "/var/run/netns/" + sb.NetnsName
	if err := NewNetns(ctx, sb.NetnsName); err != nil {
		return nil, err
	}
	rt := RuntimeConf(sb.ID, sb.Netns, pod.Namespace, pod.Name, string(pod.UID))
	start := time.Now()
	res, err := k.cni.AddNetworkList(ctx, list, rt)
	sb.AddTime = time.Since(start)
	if err != nil {
		// A runtime cleans up a failed sandbox with DEL before retrying.
		_ = k.cni.DelNetworkList(context.WithoutCancel(ctx), list, rt)
		_ = DeleteNetns(sb.NetnsName)
		return nil, fmt.Errorf("CNI ADD for pod %s: %w", key, err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		_ = k.cni.DelNetworkList(context.WithoutCancel(ctx), list, rt)
		_ = DeleteNetns(sb.NetnsName)
		return nil, fmt.Errorf("CNI ADD for pod %s returned no IP (%v): %v", key, err, res)
	}
	sb.IP = r.IPs[0].Address.IP.String()
	var args []string
	if c := pod.Spec.Containers; len(c) > 0 && len(c[0].Command) > 0 {
		args = append(append([]string{"netns", "exec", sb.NetnsName}, c[0].Command...), c[0].Args...)
	} else if k.o.PodServer != "" {
		args = append([]string{"netns", "exec", sb.NetnsName, k.o.PodServer, "-name", pod.Name}, podServerPorts(pod)...)
	}
	if args != nil {
		sb.server, err = startProcess("pod "+key, filepath.Join(k.o.Dir, pod.Namespace+"_"+pod.Name+".log"), nil, "ip", args...)
		if err != nil {
			return nil, err
		}
	}
	k.mu.Lock()
	k.sandboxes[key] = sb
	k.mu.Unlock()
	return sb, nil
}

func (k *Kubelet) teardown(ctx context.Context, key string, pod *corev1.Pod, sb *Sandbox) error {
	_ = sb.server.Stop()
	list, err := k.ConfList()
	if err != nil {
		return err
	}
	ns, name, _ := strings.Cut(key, "/")
	if err := k.cni.DelNetworkList(ctx, list, RuntimeConf(sb.ID, sb.Netns, ns, name, sb.UID)); err != nil {
		return fmt.Errorf("CNI DEL for pod %s: %w", key, err)
	}
	if err := DeleteNetns(sb.NetnsName); err != nil {
		return err
	}
	k.mu.Lock()
	delete(k.sandboxes, key)
	k.mu.Unlock()
	return nil
}

// probeReady runs the pod's first container's HTTP readiness probe from the node's netns, if it has
// one; a probe the stand-in kubelet cannot run counts as passed.
func (k *Kubelet) probeReady(ctx context.Context, pod *corev1.Pod, sb *Sandbox) bool {
	if k.o.Netns == "" || len(pod.Spec.Containers) == 0 {
		return true
	}
	c := pod.Spec.Containers[0]
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil {
		return true
	}
	get := c.ReadinessProbe.HTTPGet
	port := get.Port.IntValue()
	for _, p := range c.Ports {
		if get.Port.Type == intstr.String && p.Name == get.Port.StrVal {
			port = int(p.ContainerPort)
		}
	}
	url := "http://" + net.JoinHostPort(sb.IP, strconv.Itoa(port)) + get.Path
	host := Sandbox{NetnsName: k.o.Netns, Netns: "/var/run/netns/" + k.o.Netns}
	_, err := host.HTTPGet(ctx, url, probePeriod)
	return err == nil
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (k *Kubelet) writeStatus(ctx context.Context, pod *corev1.Pod, sb *Sandbox, ready bool) error {
	if pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP == sb.IP && podReady(pod) == ready {
		return nil
	}
	p := pod.DeepCopy()
	now := metav1.Now()
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = sb.IP
	p.Status.PodIPs = []corev1.PodIP{{IP: sb.IP}}
	p.Status.StartTime = &now
	p.Status.Conditions = nil
	readiness := corev1.ConditionFalse
	if ready {
		readiness = corev1.ConditionTrue
	}
	for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		status := corev1.ConditionTrue
		if c == corev1.ContainersReady || c == corev1.PodReady {
			status = readiness
		}
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: c, Status: status, LastTransitionTime: now})
	}
	// kubectl's READY column counts container statuses, not the Ready condition.
	p.Status.ContainerStatuses = nil
	for _, c := range p.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: ready, Started: &ready,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	if _, err := k.o.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// Sandbox returns the running sandbox of a pod.
func (k *Kubelet) Sandbox(namespace, name string) (Sandbox, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	sb, ok := k.sandboxes[namespace+"/"+name]
	if !ok {
		return Sandbox{}, false
	}
	return *sb, true
}

// LastError is the last failure setting up or tearing down a pod, if the pod is still failing.
func (k *Kubelet) LastError(namespace, name string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lastErr[namespace+"/"+name]
}

// Stop stops watching and tears every sandbox down (CNI DEL, netns removal).
func (k *Kubelet) Stop() error {
	k.cancel()
	k.wg.Wait()
	k.mu.Lock()
	sbs := k.sandboxes
	k.sandboxes = map[string]*Sandbox{}
	k.mu.Unlock()
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, listErr := k.ConfList()
	for key, sb := range sbs {
		_ = sb.server.Stop()
		if listErr == nil {
			ns, name, _ := strings.Cut(key, "/")
			if err := k.cni.DelNetworkList(ctx, list, RuntimeConf(sb.ID, sb.Netns, ns, name, sb.UID)); err != nil {
				errs = append(errs, err)
			}
		}
		if err := DeleteNetns(sb.NetnsName); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// podServerPorts are test/podserver's -tcp and -udp flags for the pod's declared container ports.
func podServerPorts(pod *corev1.Pod) []string {
	var tcp, udp []string
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			switch p.Protocol {
			case corev1.ProtocolUDP:
				udp = append(udp, strconv.Itoa(int(p.ContainerPort)))
			case corev1.ProtocolTCP, "":
				tcp = append(tcp, strconv.Itoa(int(p.ContainerPort)))
			}
		}
	}
	if len(tcp) == 0 && len(udp) == 0 {
		tcp = []string{"8080"}
	}
	return []string{"-tcp", strings.Join(tcp, ","), "-udp", strings.Join(udp, ",")}
}
