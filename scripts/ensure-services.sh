#!/usr/bin/env bash
# Makes sure MariaDB and Redis answer on 127.0.0.1 for the tests: starts them
# when they are not running and, when run as root, installs the Debian packages
# when they are missing. Prints nothing but progress lines on stderr.
set -euo pipefail

log() { echo "ensure-services: $*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { # port name
  for _ in $(seq 1 120); do listening "$1" && return 0; sleep 0.5; done
  log "$2 did not start listening on 127.0.0.1:$1"; exit 1
}
# shellcheck source=install-pkg.sh
. "$(dirname "$0")/install-pkg.sh"

if listening 3306; then
  log "MariaDB already running on 127.0.0.1:3306"
else
  install_pkg mariadb-server mariadbd
  [ -x /usr/sbin/mariadbd ] || { log "mariadbd not found in /usr/sbin"; exit 1; }
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    log "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  log "starting MariaDB"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql --bind-address=127.0.0.1
  wait_for 3306 MariaDB
fi

# Tests connect as root over TCP with no password (PARLEY_TEST_MYSQL_URL
# overrides). A fresh Debian install authenticates root by socket only; allow
# the loopback login when we can.
if [ -z "${PARLEY_TEST_MYSQL_URL:-}" ] && command -v mariadb >/dev/null 2>&1 \
   && ! mariadb -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    log "allowing root@127.0.0.1 without a password for the tests"
    mariadb -uroot -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
  else
    log "cannot log in to MariaDB as root over TCP; set PARLEY_TEST_MYSQL_URL"; exit 1
  fi
fi

if listening 6379; then
  log "Redis already running on 127.0.0.1:6379"
else
  install_pkg redis-server redis-server
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/parley-test.log
  wait_for 6379 Redis
fi

# Tests that restart Redis run a redis-server of their own on a free port.
install_pkg redis-server redis-server
