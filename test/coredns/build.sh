#!/usr/bin/env bash
# Builds CoreDNS, the cluster DNS server of the e2e harness and the demo, from its Go module at a pinned
# release into a cache directory, once; later runs only print the directory.
# `go install module@version` builds with the module's own go.mod and go.sum (checked against the Go
# checksum database), so the pin is the release tag alone.
# Usage: build.sh   Prints the directory holding the coredns binary.
set -euo pipefail
version=v1.14.7
cache=${DUNLIN_COREDNS_CACHE:-/var/cache/dunlin/coredns}/$version
mkdir -p "$cache"
# Two test binaries may ask at once: one builds, the other waits for it.
exec 9>"$cache/.lock"
flock 9
if [ ! -x "$cache/coredns" ]; then
  echo "building coredns $version into $cache (first time only; a few minutes)" >&2
  mkdir -p "$cache/tmp"
  # Built into a temporary directory first, so an interrupted build never leaves a partial binary.
  CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN="$cache/tmp" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$version"
  mv "$cache/tmp/coredns" "$cache/coredns"
  rmdir "$cache/tmp"
fi
echo "$cache"
