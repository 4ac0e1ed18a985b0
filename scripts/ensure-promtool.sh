#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus's rule checker): the one on PATH,
# or one unpacked from Debian's `prometheus` package into .tools/prometheus.
# The package is downloaded and unpacked, never installed, so no Prometheus
# server is started on this machine. Progress goes to stderr.
set -euo pipefail

log() { echo "ensure-promtool: $*" >&2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
unpacked="$root/.tools/prometheus/usr/bin/promtool"

if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
if [ -x "$unpacked" ]; then
  echo "$unpacked"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "downloading Debian's prometheus package for its promtool"
if ! (cd "$work" && apt-get download prometheus >&2 2>/dev/null); then
  if [ "$(id -u)" -ne 0 ]; then
    log "cannot download the prometheus package; run as root (to update apt's lists) or install promtool"
    exit 1
  fi
  apt-get update -qq >&2
  (cd "$work" && apt-get download prometheus >&2)
fi
mkdir -p "$root/.tools/prometheus"
dpkg -x "$work"/prometheus_*.deb "$root/.tools/prometheus"
[ -x "$unpacked" ] || { log "the package holds no usr/bin/promtool"; exit 1; }
log "promtool $("$unpacked" --version 2>&1 | head -1 | awk '{print $3}') in .tools/prometheus"
echo "$unpacked"
