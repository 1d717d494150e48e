// Builds the CNI project's cnitool at v1.3.1 for test/runtimes: a real libcni v1.3.1 driving the
// installed conflist, as a container runtime vendoring it would. Its own module so that its libcni
// version is not the main module's.
module github.com/dunlinplugin/dunlin/test/cnitool/v1.3.1

go 1.26.0

tool github.com/containernetworking/cni/cnitool

require (
	github.com/containernetworking/cni v1.3.1 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/cobra v1.9.1 // indirect
	github.com/spf13/pflag v1.0.6 // indirect
	go.opentelemetry.io/otel v1.29.0 // indirect
	go.opentelemetry.io/otel/trace v1.29.0 // indirect
)
