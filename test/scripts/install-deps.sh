#!/usr/bin/env bash
# Installs what `make test` and `make demo` need on a fresh Debian machine (run as root): OVS and OVN
# from Debian, and the Kubernetes binaries, cnitool and CoreDNS built once from the Go module proxy into a cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

need=()
for cmd in ovsdb-server ovsdb-tool ovn-nbctl ovn-northd ovn-controller ovs-vswitchd ovn-trace ethtool ping nc ip openssl gcc \
  containerd ctr runc nsenter /usr/lib/cni/loopback; do
  command -v "$cmd" >/dev/null 2>&1 || need+=("$cmd")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages (missing: ${need[*]})" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "run as root (apt-get install is needed)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends openvswitch-switch ovn-central ovn-host ovn-common \
    ethtool iputils-ping netcat-openbsd iproute2 openssl gcc libc6-dev containerd runc containernetworking-plugins util-linux >/dev/null # gcc: cgo for -race
fi
command -v go >/dev/null 2>&1 || { echo "Go is required (https://go.dev/dl)" >&2; exit 1; }

# Kubernetes control-plane binaries and etcd, and kubelet and kube-scheduler for the real-node tests
# (first run: several minutes; then cached).
"$here/../kubebin/build.sh" "$@" >/dev/null
[ $# -gt 0 ] || "$here/../kubebin/build.sh" kubelet kube-scheduler containerd-v2.4.2 >/dev/null
# The CNI project's cnitool at the libcni versions test/runtimes drives the plugin with (seconds; cached).
"$here/../cnitool/build.sh" >/dev/null
# CoreDNS at its pinned release, the cluster DNS of the e2e tests and the demo (first run: minutes; cached).
"$here/../coredns/build.sh" >/dev/null
# Prometheus's promtool, which validates deploy/monitoring's alert rules (minutes the first time; cached).
"$here/../promtool/build.sh" >/dev/null
