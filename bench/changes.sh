#!/usr/bin/env bash
# Gate evaluation for a change of 1,000 commits and 50 reviews, and listing
# 10,000 changes of a project, against a release build on SQLite.
#
#   bash bench/changes.sh
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

git init -q -b big "$work/src"
git -C "$work/src" fast-import --quiet < <(python3 - <<'PY'
import sys
out = sys.stdout.buffer
for i in range(1, 1001):
    data = f"line {i}\n".encode()
    msg = f"commit {i}\n".encode()
    out.write(b"commit refs/heads/big\n")
    out.write(b"author Alice <alice@example.com> %d +0000\ncommitter Alice <alice@example.com> %d +0000\n" % (1700000000 + i, 1700000000 + i))
    out.write(b"data %d\n" % len(msg) + msg)
    out.write(b"M 100644 inline files/f%d.txt\ndata %d\n" % (i % 100, len(data)) + data + b"\n")
PY
)
git -C "$work/src" push -q "http://alice:$alice@${url#http://}/bench.git" big:refs/heads/big big~999:refs/heads/small

CUSTODY_SERVER="$url" ADMIN="$admin" ALICE="$alice" BOB="$bob" PROJECT=bench COMMITS=1000 python3 bench/changes.py
