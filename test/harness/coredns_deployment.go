package harness

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

// On real nodes (ClusterOptions.RealNodes with DNS) CoreDNS runs as kubeadm runs it: a Deployment, its
// image built here from the binary of test/coredns/build.sh.

// CoreDNSImage is the name of that image.
const CoreDNSImage = "dunlin.test/coredns:1"

// deploymentCorefile is a kubeadm cluster's, less `forward` (this machine has no upstream resolver to
// give pods) and `cache`: `pods insecure` answers the pod A records the upstream suite asks for.
const deploymentCorefile = `.:53 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }
    loadbalance
}
`

// StartCoreDNSDeployment runs CoreDNS as kubeadm does: a Deployment of two replicas in kube-system,
// reading the API in-cluster (its service account's token, the kubernetes Service), behind kube-dns at
// ClusterDNSIP; it returns once both replicas are ready.
func (c *Cluster) StartCoreDNSDeployment(ctx context.Context) error {
	const ns, name = dnsNamespace, dnsName
	cs := c.Kube.Client
	labels := map[string]string{dnsLabel: dnsApp}
	if err := c.createDNSIdentity(ctx); err != nil {
		return fmt.Errorf("coredns: %w", err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"Corefile": deploymentCorefile}}
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("coredns: %w", err)
	}
	if err := c.createDNSService(ctx); err != nil {
		return fmt.Errorf("coredns: %w", err)
	}
	probe := func(path string, port int32) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(port)}},
			PeriodSeconds: 5, TimeoutSeconds: 5, FailureThreshold: 5}
	}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					ServiceAccountName: name,
					DNSPolicy:          corev1.DNSDefault,
					PriorityClassName:  "system-cluster-critical",
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{Weight: 100,
							PodAffinityTerm: corev1.PodAffinityTerm{LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
								TopologyKey: "kubernetes.io/hostname"}}},
					}},
					Containers: []corev1.Container{{
						Name:            name,
						Image:           CoreDNSImage,
						ImagePullPolicy: corev1.PullIfNotPresent,
						Args:            []string{"-conf", "/etc/coredns/Corefile"},
						Ports: []corev1.ContainerPort{
							{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
							{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: probe("/ready", DNSReadyPort),
						LivenessProbe:  probe("/health", DNSHealthPort),
						VolumeMounts:   []corev1.VolumeMount{{Name: "config", MountPath: "/etc/coredns", ReadOnly: true}},
					}},
					Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
						LocalObjectReference: corev1.LocalObjectReference{Name: name}}}}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("coredns: %w", err)
	}
	var last string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("%d of 2 ready", d.Status.ReadyReplicas)
		return d.Status.ReadyReplicas == 2, nil
	})
	if err != nil {
		return fmt.Errorf("coredns not ready (%s; %s): %w", last, c.podStates(ns, dnsLabel+"="+dnsApp), err)
	}
	return nil
}

// podStates says, for the pods the selector picks, where each runs and why it is not ready, as far as
// its status tells: for errors that would otherwise say only "not ready".
func (c *Cluster) podStates(ns, selector string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pods, err := c.Kube.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return "pods: " + err.Error()
	}
	var out []string
	for _, p := range pods.Items {
		st := fmt.Sprintf("%s on %q %s ip %q", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.PodIP)
		for _, cs := range p.Status.ContainerStatuses {
			switch {
			case cs.State.Waiting != nil:
				st += fmt.Sprintf(" %s waiting (%s: %s)", cs.Name, cs.State.Waiting.Reason, cs.State.Waiting.Message)
			case cs.State.Terminated != nil:
				st += fmt.Sprintf(" %s terminated (%s, exit %d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode)
			default:
				st += fmt.Sprintf(" %s running, ready %v, restarts %d", cs.Name, cs.Ready, cs.RestartCount)
			}
		}
		out = append(out, st)
	}
	events, err := c.Kube.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err == nil {
		for _, e := range events.Items {
			if e.Type == corev1.EventTypeWarning {
				out = append(out, fmt.Sprintf("event %s %s: %s", e.InvolvedObject.Name, e.Reason, e.Message))
			}
		}
	}
	return strings.Join(out, "; ")
}
