// Package runtimes tests Dunlin against what container runtimes really run: the CNI project's cnitool
// built with the libcni of containerd 1.6/1.7 (v1.1.2) and with the newest libcni, driving the conflist
// dunlin-node installs on a real node (OVS on the userspace datapath, ovn-controller, dunlin-node,
// dunlin-controller, kube-apiserver); and the installed OVN's behaviour that Dunlin relies on.
package runtimes

import (
	"fmt"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "runtimes: needs root (network namespaces, veths, OVS); run make test as root")
		os.Exit(1)
	}
	os.Exit(m.Run())
}
