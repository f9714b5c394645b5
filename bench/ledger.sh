#!/usr/bin/env bash
# The audit ledger's benchmarks, each against a reference measured in the
# same run (see crates/store/examples/ledger_bench.rs):
#
#   1. durable appends on SQLite from 64 concurrent clients and from one,
#      with the checkpointer signing; reference: plain batched INSERTs of the
#      same rows into a bare SQLite table with the same durability;
#      also the time from an event's commit to a signed checkpoint covering it;
#   2. inclusion proofs in a log of EVENTS events; reference: reading one
#      event by its primary key;
#   3. the full inspection of that log, in-process and as the real
#      `custody audit verify` command; reference: reading the same rows;
#   4. opening a store on that log, which verifies it whole at start-up.
#
#   bash bench/ledger.sh [seconds] [events]
#
# Builds the release binaries first. The big log is kept in
# ${LEDGER_BENCH_DIR:-/tmp/custody-ledger-bench} between runs (delete it to
# refill).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
events="${2:-1000000}"
dir="${LEDGER_BENCH_DIR:-/tmp/custody-ledger-bench}"
cargo build --release --quiet -p custody-store --example ledger_bench
cargo build --release --quiet -p custody-cli
target="${CARGO_TARGET_DIR:-target}/release"

echo "== durable appends, 64 clients, ${seconds}s"
"$target/examples/ledger_bench" append 64 "$seconds"
echo "== durable appends, 1 client, ${seconds}s"
"$target/examples/ledger_bench" append 1 "$seconds"
echo "== a log of $events events: proofs and inspection"
"$target/examples/ledger_bench" big "$events" "$dir"
echo "== the same log opened again: start-up verifies every event's tag and chain and the anchor"
"$target/examples/ledger_bench" big "$events" "$dir" | grep '"open'
echo "== custody audit verify on it (the command, from a cold process)"
TIMEFORMAT='{"measure": "custody audit verify", "seconds": %R}'
time "$target/custody" audit verify --database-url "sqlite://$dir/custody.db" --key "$dir/ledger.vkey"
