#!/usr/bin/env bash
# `make dev`: the services built so far, on localhost, on embedded SQLite files
# under ./data/ (no database or Redis to install). Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin parley-message --bin parley-receipt
mkdir -p data
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
PARLEY_RECEIPT_DATABASE_URL=sqlite:data/receipt.db target/debug/parley-receipt & pids+=($!)
PARLEY_MESSAGE_DATABASE_URL=sqlite:data/message.db target/debug/parley-message & pids+=($!)
cat <<MSG
parley dev suite (embedded SQLite under ./data/):
  message  127.0.0.1:50052   (parley.message.v1.MessageService)
  receipt  127.0.0.1:50054   (parley.receipt.v1.ReceiptService)
  gateway, presence and notification are not built yet (issues #3 and #4).
Calls carry the acting user in metadata, e.g. with grpcurl:
  grpcurl -plaintext -H 'x-parley-uid: alice' -d '{"kind":"GROUP_KIND_GROUP","name":"Design","member_uids":["bob"]}' \\
    127.0.0.1:50052 parley.message.v1.MessageService/CreateGroup
Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
