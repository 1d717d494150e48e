package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dunlinplugin/dunlin/test/harness"
)

func cpuIdle() (idle, total uint64) {
	b, _ := os.ReadFile("/proc/stat")
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:]
	for i, s := range f {
		var v uint64
		fmt.Sscan(s, &v)
		total += v
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return
}

func BenchmarkProbeFloorKube(b *testing.B) {
	ctx := context.Background()
	dir := tempDir(b)
	kube, err := harness.StartKube(ctx, harness.KubeOptions{Dir: filepath.Join(dir, "kube")})
	if err != nil {
		b.Fatal(err)
	}
	defer kube.Stop()
	set := populateServices(b, kube.Client, serviceCount())
	for i := range 4 {
		i0, t0 := cpuIdle()
		f := floorServices(b, filepath.Join(dir, fmt.Sprintf("f%d", i)), set)
		i1, t1 := cpuIdle()
		b.Logf("floor %d: %s (busy %.0f%%)", i, f, 100*(1-float64(i1-i0)/float64(t1-t0)))
		i0, t0 = cpuIdle()
		time.Sleep(5 * time.Second)
		i1, t1 = cpuIdle()
		b.Logf("idle gap busy %.0f%%", 100*(1-float64(i1-i0)/float64(t1-t0)))
	}
}
