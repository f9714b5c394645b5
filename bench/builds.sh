#!/usr/bin/env bash
# Latency from a merge into the mainline to the start of its build, on a
# release build with SQLite: 50 changes pushed, approved and merged one
# after another, each followed until its build has started.
#
#   bash bench/builds.sh [MERGES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release/custody"
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill -TERM "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0 HOME="$work/home" CUSTODY_CONFIG_DIR="$work/cfg"
mkdir -p "$HOME"

CUSTODY_LOG="${CUSTODY_LOG:-warn}" "$bin" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 1 50); do grep -q '^listening on' "$work/out" && break; sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/out")
admin=$(sed -n 's/^token: //p' "$work/out")
export CUSTODY_SERVER="$url"
c() { CUSTODY_TOKEN="$admin" "$bin" "$@"; }
token_of() {
  local code
  code=$(c user add "$1" --email "$1@example.com" --json | sed -E 's/.*"invite_code":"([^"]+)".*/\1/')
  "$bin" token redeem "$code" --json | sed -E 's/.*"token":"([^"]+)".*/\1/'
}
c project create bench >/dev/null
alice=$(token_of alice); bob=$(token_of bob)
c project member add bench alice --role write >/dev/null
c project member add bench bob --role write >/dev/null

# main: a pipeline whose build writes one small artifact (set up by hand,
# as the first reviewed merge would have).
src="$work/src"
git init -q -b main "$src"
git -C "$src" config user.name Alice; git -C "$src" config user.email alice@example.com
mkdir -p "$src/.custody" "$src/scripts"
printf '[review]\napprovals = 1\n[pipeline]\nowners = "platform"\nbuild = "scripts/build.sh"\nartifacts = ["out.txt"]\n' > "$src/.custody/pipeline.toml"
printf '#!/bin/sh\necho "$CUSTODY_COMMIT" > out.txt\n' > "$src/scripts/build.sh"
chmod +x "$src/scripts/build.sh"
git -C "$src" add -A; git -C "$src" commit -q -m base
remote="http://alice:$alice@${url#http://}/bench.git"
git -C "$src" push -q "$remote" main:refs/heads/seed
git --git-dir "$work/data/repositories/bench.git" update-ref refs/heads/main "$(git -C "$src" rev-parse HEAD)"

CUSTODY_SERVER="$url" ADMIN="$admin" ALICE="$alice" BOB="$bob" PROJECT=bench SRC="$src" REMOTE="$remote" \
  MERGES="${1:-50}" python3 bench/builds.py
