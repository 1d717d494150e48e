#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd (and, when named, kube-scheduler,
# kubelet and containerd-v2.x.y (a directory) for the real-node tests; e2e.test, the upstream end-to-end
# suite, and agnhost, its test server, for `make conformance`) from the Go module proxy into a cache directory, once per pinned
# version; later runs only print the directory.
# Usage: build.sh [binary...]   (default: the control plane above). Prints the directory holding them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kube_version=v1.37.2
etcd_version=v3.6.16
containerd_version=v2.4.2
cache=${DUNLIN_KUBEBIN_CACHE:-/var/cache/dunlin/kubebin}/${kube_version}-etcd${etcd_version}
mkdir -p "$cache"
export CGO_ENABLED=0 GOFLAGS=-mod=mod

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(kube-apiserver kube-controller-manager kubectl etcd)
minor=${kube_version#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${kube_version} \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=${kube_version}"

for b in "${want[@]}"; do
  [ -x "$cache/$b" ] && continue
  # containerd 2 is a directory: the daemon, its runc shim (looked up next to it) and ctr.
  [ "$b" = containerd-$containerd_version ] && [ -x "$cache/$b/ctr" ] && continue
  # nice: the build takes both cores for minutes, and tests may be running beside it.
  echo "building $b into $cache (first time only; several minutes)" >&2
  case $b in
    etcd) (cd "$here/etcd" && nice -n 19 go build -trimpath -ldflags "-s -w" -o "$cache/$b.tmp" go.etcd.io/etcd/server/v3) ;;
    containerd-$containerd_version)
      rm -rf "$cache/$b.tmp"
      (cd "$here/containerd" && nice -n 19 go build -trimpath -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version" \
        -o "$cache/$b.tmp/" github.com/containerd/containerd/v2/cmd/containerd \
        github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr) ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl|kubelet)
      (cd "$here/kube" && nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$cache/$b.tmp" "k8s.io/kubernetes/cmd/$b") ;;
    e2e.test)
      (cd "$here/kube" && nice -n 19 go test -c -trimpath -ldflags "$ldflags" -o "$cache/$b.tmp" k8s.io/kubernetes/test/e2e) ;;
    agnhost)
      (cd "$here/kube" && nice -n 19 go build -trimpath -ldflags "-s -w" -o "$cache/$b.tmp" k8s.io/kubernetes/test/images/agnhost) ;;
    *) echo "unknown binary $b" >&2; exit 2 ;;
  esac
  mv "$cache/$b.tmp" "$cache/$b"
done
# agnhost's image carries porter's self-signed certificate as /localhost.crt and /localhost.key (its TLS
# ports serve with them; the upstream Dockerfile adds them): kept next to the binary.
for b in "${want[@]}"; do
  [ "$b" = agnhost ] && [ ! -f "$cache/agnhost-tls/localhost.key" ] || continue
  src=$(cd "$here/kube" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/test/images/agnhost/porter
  mkdir -p "$cache/agnhost-tls.tmp"
  cp "$src/localhost.crt" "$src/localhost.key" "$cache/agnhost-tls.tmp/"
  chmod 0644 "$cache/agnhost-tls.tmp/"*
  rm -rf "$cache/agnhost-tls"; mv "$cache/agnhost-tls.tmp" "$cache/agnhost-tls"
done
echo "$cache"
