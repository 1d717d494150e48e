package bench

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dunlinplugin/dunlin/internal/annotations"
	"github.com/dunlinplugin/dunlin/test/harness"
)

// patchFloor measures the apiserver's own rate for the pod annotation patches of a fresh allocation,
// and returns how long they took: the merge patch the controller sends (the pod-network annotation
// under a UID precondition, with the controller's field manager) on every pod of d, from workers
// concurrent goroutines (the controller's pod workers), through a client without a rate limit. The
// annotations are removed again afterwards, untimed, so the controller then allocates from scratch.
func patchFloor(b *testing.B, kube *harness.Kube, d desired, workers int) time.Duration {
	ctx := context.Background()
	cfg := rest.CopyConfig(kube.Config)
	cfg.QPS = -1 // no client-side limit
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	subnets := map[string]netip.Prefix{}
	for _, n := range d.nodes {
		subnets[n.Name] = n.Subnet
	}
	patches := make([][]byte, len(d.pods))
	for i, p := range d.pods {
		patches[i] = fmt.Appendf(nil, `{"metadata":{"uid":%q,"annotations":{%q:%q}}}`,
			p.UID, annotations.PodNetwork, podNetworkValue(p.Addr, subnets[p.Node]))
	}
	patch := func(i int, body []byte) error {
		p := d.pods[i]
		_, err := client.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.MergePatchType, body,
			metav1.PatchOptions{FieldManager: "dunlin-controller"})
		if err != nil {
			return fmt.Errorf("patch pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		return nil
	}

	start := time.Now()
	if err := parallel(len(d.pods), workers, func(i int) error { return patch(i, patches[i]) }); err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)

	remove := fmt.Appendf(nil, `{"metadata":{"annotations":{%q:null}}}`, annotations.PodNetwork)
	if err := parallel(len(d.pods), workers, func(i int) error { return patch(i, remove) }); err != nil {
		b.Fatal(err)
	}
	b.Logf("patch floor: %d pod annotation patches from %d workers in %s (%.0f/s)",
		len(d.pods), workers, took.Round(time.Millisecond), float64(len(d.pods))/took.Seconds())
	return took
}
