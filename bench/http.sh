#!/usr/bin/env bash
# Authenticated GET throughput and latency at 64 connections on loopback,
# against an unauthenticated GET of the same server in the same run, and
# the idle resident memory of `custody serve`.
#
#   bash bench/http.sh [sqlite|postgres] [seconds]
#
# Needs wrk (Debian package `wrk`). Builds the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."
backend="${1:-sqlite}"
seconds="${2:-10}"
command -v wrk >/dev/null || { echo "install wrk first (apt-get install wrk)" >&2; exit 2; }
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/custody"

work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill -TERM "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

db_args=()
if [ "$backend" = postgres ]; then
  name="custody_bench_$$"
  psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $name" >/dev/null
  trap 'cleanup; psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null' EXIT
  db_args=(--database-url "postgres://postgres@127.0.0.1:5432/$name")
fi

token=$("$bin" init --data-dir "$work/data" --admin root --json "${db_args[@]}" | sed -E 's/.*"token":"([^"]+)".*/\1/')
"$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 "${db_args[@]}" >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 50); do grep -q '^listening on' "$work/out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/out")

sleep 2
rss_idle=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")

run() { wrk -t2 -c64 -d"${seconds}s" --latency "$@"; }
echo "== unauthenticated GET /healthz (anchor)"
anchor=$(run "$url/healthz")
echo "$anchor"
echo "== authenticated GET /api/v1/me ($backend)"
authed=$(run -H "Authorization: Bearer $token" "$url/api/v1/me")
echo "$authed"
rss_after=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")

rps() { echo "$1" | awk '/Requests\/sec/ {print $2}'; }
p99() { echo "$1" | awk '$1 == "99%" {print $2}'; }
non2xx() { echo "$1" | awk '/Non-2xx/ {print $NF}'; }
echo
echo "backend:                 $backend"
echo "anchor /healthz:         $(rps "$anchor") req/s, p99 $(p99 "$anchor")"
echo "authenticated /me:       $(rps "$authed") req/s, p99 $(p99 "$authed"), non-2xx: $(non2xx "$authed")"
echo "ratio authed/anchor:     $(awk -v a="$(rps "$authed")" -v b="$(rps "$anchor")" 'BEGIN {printf "%.2f", a / b}')"
echo "idle RSS:                $((rss_idle / 1024)) MiB ($rss_idle kB)"
echo "RSS after load:          $((rss_after / 1024)) MiB ($rss_after kB)"
