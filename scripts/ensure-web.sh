#!/usr/bin/env bash
# Makes sure what the web client's build and its end-to-end test need is
# here: Node.js 20.19 or later with npm, and (with --chromium) Debian's
# Chromium. When run as root, missing Debian packages are installed. Prints
# progress lines on stderr only.
set -euo pipefail

log() { echo "ensure-web: $*" >&2; }
# shellcheck source=install-pkg.sh
. "$(dirname "$0")/install-pkg.sh"

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
