// Builds containerd 2 (the version matched to the Kubernetes release the tests run), its runc shim and
// ctr, for the real-node tests' second runtime. A separate module so the project's own dependency
// graph stays small.
module github.com/dunlinplugin/dunlin/test/kubebin/containerd

go 1.26.6

require github.com/containerd/containerd/v2 v2.4.2
