package cni

import (
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// K8sArgs are the keys of CNI_ARGS that Kubernetes runtimes (containerd, CRI-O) send, parsed by the CNI
// library: "K=V" pairs joined by ";", where a value may be empty ("K8S_POD_INFRA_CONTAINER_ID=").
// types.LoadArgs matches keys to field names, hence the names.
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString
	K8S_POD_NAME               types.UnmarshallableString
	K8S_POD_UID                types.UnmarshallableString
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString
}

// PodArgs are the pod a CNI request is for, as CNI_ARGS names it. Any field may be empty.
type PodArgs struct{ Namespace, Name, UID string }

// Key is namespace/name, or "" when CNI_ARGS does not name a pod.
func (p PodArgs) Key() string {
	if p.Namespace == "" && p.Name == "" {
		return ""
	}
	return p.Namespace + "/" + p.Name
}

// ParsePodArgs reads CNI_ARGS with the CNI library's types.LoadArgs. Keys other than the Kubernetes
// ones are ignored unless the runtime sends IgnoreUnknown=0: dunlin-cni is alone in its conflist, so no
// other plugin's keys can be misaddressed to it, and runtimes add keys of their own. A malformed value
// (a pair without "=", or with two) is an ErrInvalidEnvironmentVariables error naming the container and,
// as far as it can be read, the pod.
func ParsePodArgs(containerID, args string) (PodArgs, error) {
	a := K8sArgs{CommonArgs: types.CommonArgs{IgnoreUnknown: true}}
	if err := types.LoadArgs(args, &a); err != nil {
		return PodArgs{}, types.NewError(types.ErrInvalidEnvironmentVariables,
			fmt.Sprintf("cannot parse CNI_ARGS of container %s%s: %v", containerID, podHint(args), err),
			"CNI_ARGS must be K=V pairs separated by \";\", e.g. K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
	}
	return PodArgs{
		Namespace: string(a.K8S_POD_NAMESPACE),
		Name:      string(a.K8S_POD_NAME),
		UID:       string(a.K8S_POD_UID),
	}, nil
}

// podHint names the pod of CNI_ARGS that LoadArgs rejected, reading the well-formed pairs only, as
// " (pod ns/name)", or "" when they do not name one.
func podHint(args string) string {
	var p PodArgs
	for _, pair := range strings.Split(args, ";") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || strings.Contains(v, "=") {
			continue
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		}
	}
	if p.Key() == "" {
		return ""
	}
	return " (pod " + p.Key() + ")"
}
