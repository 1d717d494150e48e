#!/usr/bin/env bash
# Builds Prometheus's promtool once, at a pinned release, from the Go module proxy into a cache
# directory; later runs only print its path. deploy/monitoring's tests validate the alert rules with it
# (`promtool check rules`, `promtool test rules`): Prometheus's own parser, not a copy of it.
# The first build takes a few minutes (Prometheus is a large module).
# Usage: build.sh   Prints the path of promtool.
set -euo pipefail
version=v0.316.0
cache=${DUNLIN_PROMTOOL_CACHE:-/var/cache/dunlin/promtool}
out=$cache/$version/promtool
if [ ! -x "$out" ]; then
  echo "building promtool $version into $cache/$version (first time only)" >&2
  mkdir -p "$cache/$version"
  tmp=$(mktemp -d "$cache/$version/build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # remove_all_sd leaves out the service discoveries (cloud SDKs): rule checks need none, and the build is shorter.
  CGO_ENABLED=0 GOBIN=$tmp go install -tags remove_all_sd "github.com/prometheus/prometheus/cmd/promtool@$version"
  mv "$tmp/promtool" "$out"
fi
echo "$out"
