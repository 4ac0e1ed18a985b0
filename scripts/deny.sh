#!/usr/bin/env bash
# `make deny`: cargo deny over the whole dependency graph (advisories,
# licences, duplicate crates, sources; deny.toml says what is allowed).
# The RustSec advisory database comes from GitHub; where GitHub is out of
# reach it comes from a local clone of it (PARLEY_ADVISORY_DB, or the
# snapshot this workplace keeps), and the line below says which and how old.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null || cargo install cargo-deny --locked
# Every package of every target (Windows, Android, ...): an offline check
# reads the whole graph, not only what this machine builds.
cargo fetch --quiet
db=.tools/advisory-dbs/advisory-db-3157b0e258782691  # where cargo deny keeps the default database
if cargo deny fetch db >/dev/null 2>&1; then
  echo "deny: advisories from $(git -C "$db" remote get-url origin) ($(git -C "$db" log -1 --format=%cs))"
  exec cargo deny check
fi
snapshot=${PARLEY_ADVISORY_DB:-/work/.mirror/rustsec+advisory-db/repo}
if [ -d "$snapshot" ]; then
  rm -rf "$db"
  mkdir -p "$(dirname "$db")"
  git clone -q "$snapshot" "$db"
  echo "deny: GitHub unreachable; advisories from $snapshot ($(git -C "$db" log -1 --format=%cs))"
  exec cargo deny --offline check
fi
echo "deny: WARNING: no advisory database (GitHub unreachable, no PARLEY_ADVISORY_DB): advisories NOT checked" >&2
exec cargo deny --offline check bans licenses sources
