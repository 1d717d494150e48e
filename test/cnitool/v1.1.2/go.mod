// Builds the CNI project's cnitool at v1.1.2 for test/runtimes: a real libcni v1.1.2 driving the
// installed conflist, as a container runtime vendoring it would. Its own module so that its libcni
// version is not the main module's.
module github.com/dunlinplugin/dunlin/test/cnitool/v1.1.2

go 1.26.0

tool github.com/containernetworking/cni/cnitool

require github.com/containernetworking/cni v1.1.2 // indirect
