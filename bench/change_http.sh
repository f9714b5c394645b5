#!/usr/bin/env bash
# The single-change API endpoint (the change, its authors, reviews and its
# gate; evaluated again only when the audit log or the target's tip moved)
# at 64 connections, against GET /healthz of the same server in the same
# run.
#
#   bash bench/change_http.sh [sqlite|postgres] [seconds]
#
# Needs wrk (Debian package `wrk`). Builds the release binary first.
set -euo pipefail
cd "$(dirname "$0")/.."
export BACKEND="${1:-sqlite}"
seconds="${2:-10}"
command -v wrk >/dev/null || { echo "install wrk first (apt-get install wrk)" >&2; exit 2; }
. bench/team.sh

# alice's change of one file, approved by bob.
src="$work/src"; remote="http://alice:$alice@${url#http://}/bench.git"
git init -q -b main "$src"
git -C "$src" config user.name Alice; git -C "$src" config user.email alice@example.com
echo base > "$src/base.txt"; git -C "$src" add -A; git -C "$src" commit -q -m base
git -C "$src" push -q "$remote" main:refs/heads/seed
git --git-dir "$work/data/repositories/bench.git" update-ref refs/heads/main "$(git -C "$src" rev-parse HEAD)"
git -C "$src" checkout -q -b feature
echo feature > "$src/feature.txt"; git -C "$src" add -A; git -C "$src" commit -q -m feature
git -C "$src" push -q "$remote" feature
CUSTODY_TOKEN="$alice" "$bin" change open bench --source feature --title Feature >/dev/null
head=$(git -C "$src" rev-parse HEAD)
CUSTODY_TOKEN="$bob" "$bin" change review bench 1 --approve --head "$head" >/dev/null

run() { wrk -t2 -c64 -d"${seconds}s" --latency "$@"; }
# Two seconds of the same load first: the first requests evaluate the gate,
# the rest find it evaluated at the same audit event and target tip.
wrk -t2 -c64 -d2s -H "Authorization: Bearer $bob" "$url/api/v1/projects/bench/changes/1" >/dev/null
anchor=$(run "$url/healthz")
change=$(run -H "Authorization: Bearer $bob" "$url/api/v1/projects/bench/changes/1")
echo "$change" | sed -n "/Latency Distribution/,/99%/p"
rps() { echo "$1" | awk '/Requests\/sec/ {print $2}'; }
p99() { echo "$1" | awk '$1 == "99%" {print $2}'; }
non2xx() { echo "$1" | awk '/Non-2xx/ {print $NF}'; }
echo
echo "backend:                 $BACKEND"
echo "anchor /healthz:         $(rps "$anchor") req/s, p99 $(p99 "$anchor")"
echo "GET one change:          $(rps "$change") req/s, p99 $(p99 "$change"), non-2xx: $(non2xx "$change")"
echo "ratio change/anchor:     $(awk -v a="$(rps "$change")" -v b="$(rps "$anchor")" 'BEGIN {printf "%.3f", a / b}')"
