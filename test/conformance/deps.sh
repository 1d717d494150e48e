#!/usr/bin/env bash
# What `make conformance` needs beyond `make deps`: the Debian tools copied into the upstream suite's
# images (busybox-static, dig/nslookup/host, curl, OpenBSD nc, getent), and e2e.test and agnhost built once
# at the pinned Kubernetes version (e2e.test: several minutes the first time; then cached).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
for f in /bin/busybox /usr/bin/dig /usr/bin/curl /bin/nc.openbsd /usr/bin/getent; do
  [ -x "$f" ] || need+=("$f")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages (missing: ${need[*]})" >&2
  [ "$(id -u)" = 0 ] || { echo "run as root (apt-get install is needed)" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends busybox-static bind9-dnsutils curl netcat-openbsd libc-bin >/dev/null
fi
"$here/../kubebin/build.sh" e2e.test agnhost >/dev/null
