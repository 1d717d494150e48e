package cni

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParsePodArgs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want PodArgs
	}{
		// containerd's, in its order.
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1",
			PodArgs{"default", "web-0", "u-1"}},
		{"K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns", PodArgs{"ns", "p", ""}},
		// Empty values, as runtimes send them for what they do not know.
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=;K8S_POD_UID=", PodArgs{"ns", "p", ""}},
		// Keys of other runtimes and tools, without IgnoreUnknown.
		{"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_RUNTIME=crio;MAC=", PodArgs{"ns", "p", ""}},
		{"", PodArgs{}},
	} {
		got, err := ParsePodArgs("c1", tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParsePodArgs(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}

func TestParsePodArgsErrors(t *testing.T) {
	for _, tc := range []struct {
		in       string
		mentions []string
	}{
		{"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;garbage", []string{"container c1", "pod ns/p", `"garbage"`}},
		{"K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns;K8S_POD_UID=a=b", []string{"container c1", "pod ns/p"}},
		{"=x;K8S_POD_NAME", []string{"container c1"}},
		// A runtime that asks for strictness gets it.
		{"IgnoreUnknown=0;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;OTHER=1", []string{"container c1", "pod ns/p", "OTHER"}},
		{"IgnoreUnknown=maybe;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p", []string{"pod ns/p"}},
	} {
		_, err := ParsePodArgs("c1", tc.in)
		var ce *types.Error
		if !errors.As(err, &ce) || ce.Code != types.ErrInvalidEnvironmentVariables {
			t.Errorf("ParsePodArgs(%q): %v, want a CNI error with code %d", tc.in, err, types.ErrInvalidEnvironmentVariables)
			continue
		}
		for _, m := range tc.mentions {
			if !strings.Contains(ce.Msg, m) {
				t.Errorf("ParsePodArgs(%q): message %q does not mention %s", tc.in, ce.Msg, m)
			}
		}
	}
}
