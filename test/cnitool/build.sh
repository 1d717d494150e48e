#!/usr/bin/env bash
# Builds the CNI project's cnitool once per pinned libcni version (one small module per version under
# this directory, go.mod and go.sum committed) into a cache directory; later runs only print it.
# test/runtimes drives the installed conflist with each, as a container runtime vendoring that libcni
# would: v1.1.2 is what containerd 1.6 and 1.7 vendor, the other the newest release.
# Usage: build.sh   Prints the cache directory, which holds <version>/cnitool.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${DUNLIN_CNITOOL_CACHE:-/var/cache/dunlin/cnitool}
export CGO_ENABLED=0 GOFLAGS=-mod=mod

for mod in "$here"/v*/go.mod; do
  dir=$(dirname "$mod")
  version=$(basename "$dir")
  out=$cache/$version/cnitool
  [ -x "$out" ] && continue
  echo "building cnitool $version into $cache/$version (first time only)" >&2
  mkdir -p "$cache/$version"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$out.tmp" github.com/containernetworking/cni/cnitool)
  mv "$out.tmp" "$out"
done
echo "$cache"
