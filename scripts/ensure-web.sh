#!/usr/bin/env bash
# Makes sure what the web client's build and its end-to-end test need is
# here: Node.js 20.19 or later with npm, and (with --chromium) Debian's
# Chromium. When run as root, missing Debian packages are installed. Prints
# progress lines on stderr only.
set -euo pipefail

log() { echo "ensure-web: $*" >&2; }
install_pkg() { # package binary
  command -v "$2" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "$2 is missing; install the Debian package $1 (or run make as root)"; exit 1
  fi
  log "installing $1"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2
}

install_pkg nodejs node
install_pkg npm npm
version=$(node -p 'process.versions.node')
IFS=. read -r major minor _ <<<"$version"
if [ "$major" -lt 20 ] || { [ "$major" -eq 20 ] && [ "$minor" -lt 19 ]; }; then
  log "Node.js $version is too old for the web client's build (Vite needs 20.19 or later)"; exit 1
fi
if [ "${1:-}" = "--chromium" ]; then
  install_pkg chromium chromium
  log "$(chromium --version 2>/dev/null | head -1)"
fi
