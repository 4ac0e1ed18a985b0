#!/usr/bin/env bash
# The chart checks need python3 with venv; as root, installs Debian's.
set -euo pipefail
if command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-python: python3 with venv is missing; install the Debian packages python3 python3-venv" >&2
  exit 1
fi
echo "ensure-python: installing python3 python3-venv" >&2
apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
