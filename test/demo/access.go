package main

import (
	"fmt"
	"os/exec"
	"path/filepath"

	"github.com/dunlinplugin/dunlin/test/harness"
)

// printAccess tells how to look at the running cluster with the usual tools, for -keep.
func (d *demo) printAccess() {
	c := d.cluster
	heading("Everything keeps running until Ctrl-C; in another shell:")
	fmt.Printf("  export OVN_NB_DB=%s\n", c.OVN.NBAddr)
	fmt.Printf("  export OVN_SB_DB=%s\n", c.OVN.SBAddr)
	fmt.Printf("  export KUBECONFIG=%s\n", c.Kube.Kubeconfig)
	if d.kubectl != "" {
		fmt.Printf("  export PATH=%s:$PATH   # for kubectl\n", filepath.Dir(d.kubectl))
	}
	fmt.Println("  ovn-nbctl show; ovn-sbctl show; kubectl get nodes,pods -A -o wide")

	n := c.Nodes[0]
	fmt.Printf("\n  # a node is a netns (%s) with its own OVS:\n", n.Netns)
	fmt.Printf("  ovs-vsctl --db=%s show\n", n.OVSDB)
	fmt.Printf("  OVS_RUNDIR=%s ovs-ofctl dump-flows br-int\n", n.RunDir)
	fmt.Printf("  ip netns exec %s ip -br addr\n", n.Netns)

	src, dst := d.examplePair()
	fmt.Printf("\n  # a pod is a netns too (%s is %s, %s is %s):\n", src.name, src.sb.NetnsName, dst.name, dst.sb.IP)
	fmt.Printf("  ip netns exec %s ip addr show eth0\n", src.sb.NetnsName)
	fmt.Printf("  ip netns exec %s ping -c 3 %s\n", src.sb.NetnsName, dst.sb.IP)
	if _, err := exec.LookPath("curl"); err == nil {
		fmt.Printf("  ip netns exec %s curl -s http://%s:%d/   # answers %s\n", src.sb.NetnsName, dst.sb.IP, podPort, dst.name)
	} else {
		fmt.Printf("  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | ip netns exec %s nc -q 1 %s %d   # answers %s\n",
			src.sb.NetnsName, dst.sb.IP, podPort, dst.name)
	}
	if d.serviceIP != "" {
		vip := fmt.Sprintf("http://%s:%d/", d.serviceIP, servicePort)
		if _, err := exec.LookPath("curl"); err == nil {
			fmt.Printf("  ip netns exec %s curl -s %s   # Service %s/%s: a different pod at times\n", src.sb.NetnsName, vip, namespace, serviceName)
		} else {
			fmt.Printf("  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | ip netns exec %s nc -q 1 %s %d   # Service %s/%s: a different pod at times\n",
				src.sb.NetnsName, d.serviceIP, servicePort, namespace, serviceName)
		}
	}
	if c.Outside != nil {
		fmt.Printf("\n  # the outside (%s) reaches the NodePort %d on every node:\n", c.Outside.IP, nodePort)
		fmt.Printf("  printf 'GET / HTTP/1.0\\r\\n\\r\\n' | ip netns exec %s nc -q 1 %s %d\n", c.Outside.Netns, c.Nodes[0].EncapIP, nodePort)
	}
	if c.DNS != nil {
		fmt.Printf("\n  # cluster DNS: CoreDNS is pod kube-system/%s, its log %s; with dig (apt-get install dnsutils):\n", c.DNS.Pod, c.DNS.Log)
		fmt.Printf("  ip netns exec %s dig @%s %s.%s.svc.%s\n", src.sb.NetnsName, harness.ClusterDNSIP, serviceName, namespace, harness.ClusterDomain)
	}
	last := c.Nodes[len(c.Nodes)-1]
	fmt.Printf("\n  # each node's stand-in kubelet runs podserver in any pod bound to it (ip netns list shows the new netns):\n")
	fmt.Printf("  kubectl -n %s run %s-x --image=%s --overrides='{\"spec\":{\"nodeName\":\"%s\"}}'\n", namespace, last.Name, podImage, last.Name)

	fmt.Printf("\n  # the CNI plugin as a container runtime calls it, with the CNI project's cnitool\n")
	fmt.Printf("  # (go install github.com/containernetworking/cni/cnitool@v1.3.1). A second sandbox of %s takes\n", src.name)
	fmt.Printf("  # over its logical port (one OVS port per pod); delete the pod afterwards and the kubelet makes a new one.\n")
	fmt.Printf("  ip netns add by-hand\n")
	fmt.Printf("  NETCONFPATH=%s CNI_PATH=%s CNI_ARGS='K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s' cnitool add dunlin /var/run/netns/by-hand\n",
		src.node.ConfDir, src.node.BinDir, namespace, src.name)

	fmt.Println()
	fmt.Printf("  controller log:   %s\n", filepath.Join(c.Dir, "controller.log"))
	fmt.Printf("  node logs:        %s/node*/{dunlin-node,ovn-controller,ovs-vswitchd}.log, pods/*.log\n", c.Dir)
	fmt.Printf("  other logs:       %s/ovn/*.log, %s/kube/*.log\n", c.Dir, c.Dir)
	fmt.Println("\nPress Ctrl-C to tear everything down.")
}

// examplePair picks the first pod and one on another node, or failing that another pod.
func (d *demo) examplePair() (src, dst *pod) {
	src, dst = d.pods[0], d.pods[len(d.pods)-1]
	for _, p := range d.pods {
		if p.node != src.node {
			return src, p
		}
	}
	return src, dst
}
