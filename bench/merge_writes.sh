#!/usr/bin/env bash
# Unrelated writes while merges run: 16 clients create tokens, as fast as
# they can, while MERGES changes are merged (four at a time), against a
# release build on SQLite (BACKEND=postgres for PostgreSQL). Reports the
# token creations' p50 and p99 while merges run, beside the same clients
# with no merge running (the anchor, in the same run).
#
#   bash bench/merge_writes.sh [MERGES]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/team.sh
merges="${1:-20}"

# main holds one file; one branch per change, each adding its own file.
src="$work/src"
git init -q -b main "$src"
git -C "$src" config user.name Alice; git -C "$src" config user.email alice@example.com
echo base > "$src/base.txt"; git -C "$src" add -A; git -C "$src" commit -q -m base
remote="http://alice:$alice@${url#http://}/bench.git"
git -C "$src" push -q "$remote" main:refs/heads/seed
git --git-dir "$work/data/repositories/bench.git" update-ref refs/heads/main "$(git -C "$src" rev-parse HEAD)"
for i in $(seq 1 "$merges"); do
  git -C "$src" checkout -q -b "m$i" main
  echo "change $i" > "$src/m$i.txt"; git -C "$src" add -A; git -C "$src" commit -q -m "change $i"
done
git -C "$src" push -q "$remote" 'refs/heads/m*:refs/heads/m*'

CUSTODY_SERVER="$url" ADMIN="$admin" ALICE="$alice" BOB="$bob" PROJECT=bench MERGES="$merges" \
  python3 bench/merge_writes.py
