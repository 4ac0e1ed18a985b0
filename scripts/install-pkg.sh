# Sourced by the ensure-*.sh scripts, after they define log():
# install_pkg PACKAGE BINARY installs the Debian package when BINARY is
# missing, as root; otherwise says what to install and fails.
install_pkg() { # package binary
  command -v "$2" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "$2 is missing; install the Debian package $1 (or run make as root)"; exit 1
  fi
  log "installing $1"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2
}
