// Command dunlin-cni is the CNI plugin binary the container runtime executes; the work is done by
// dunlin-node, which it reaches over a unix socket.
package main

import "github.com/dunlinplugin/dunlin/cni"

func main() { cni.Main() }
