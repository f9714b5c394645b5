#!/usr/bin/env bash
# An online backup of an instance with history, against copying the same
# files without custody: SQLite's VACUUM INTO of the database (the same
# call custody makes) and `cp -a` of the repositories and blobs. On a
# release build with SQLite: MERGES changes merged, built and deployed to
# staging first (bench/builds.py), then ROUNDS backups of each kind.
#
#   bash bench/backup.sh [MERGES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
merges="${1:-200}"; rounds="${2:-5}"
. bench/team.sh

src="$work/src"
git init -q -b main "$src"
git -C "$src" config user.name Alice; git -C "$src" config user.email alice@example.com
mkdir -p "$src/.custody" "$src/scripts"
printf '[review]\napprovals = 1\n[pipeline]\nowners = "platform"\nbuild = "scripts/build.sh"\nartifacts = ["out.txt"]\n' > "$src/.custody/pipeline.toml"
printf '\n[[environment]]\nname = "staging"\ndeploy = "scripts/deploy.sh"\n' >> "$src/.custody/pipeline.toml"
printf '#!/bin/sh\necho "$CUSTODY_COMMIT" > out.txt\n' > "$src/scripts/build.sh"
printf '#!/bin/sh\ncat "$CUSTODY_ARTIFACTS_DIR/out.txt"\n' > "$src/scripts/deploy.sh"
chmod +x "$src/scripts/build.sh" "$src/scripts/deploy.sh"
git -C "$src" add -A; git -C "$src" commit -q -m base
remote="http://alice:$alice@${url#http://}/bench.git"
git -C "$src" push -q "$remote" main:refs/heads/seed
git --git-dir "$work/data/repositories/bench.git" update-ref refs/heads/main "$(git -C "$src" rev-parse HEAD)"
CUSTODY_SERVER="$url" ADMIN="$admin" ALICE="$alice" BOB="$bob" PROJECT=bench SRC="$src" REMOTE="$remote" \
  MERGES="$merges" python3 bench/builds.py >/dev/null

events=$(sqlite3 "$work/data/custody.db" "SELECT COUNT(*) FROM audit_events")
size=$(du -sh "$work/data" | cut -f1)
seconds() { local start end; start=$(date +%s.%N); "$@" >/dev/null; end=$(date +%s.%N); echo "$end - $start" | bc; }
plain_copy() {
  local to="$1"; mkdir -p "$to"
  python3 -c "import sqlite3,sys; sqlite3.connect(sys.argv[1]).execute(\"VACUUM INTO '\" + sys.argv[2] + \"'\")" \
    "$work/data/custody.db" "$to/custody.db"
  cp -a "$work/data/repositories" "$work/data/blobs" "$to/"
}
custody_times=(); plain_times=()
for i in $(seq 1 "$rounds"); do
  custody_times+=("$(seconds "$bin" backup --data-dir "$work/data" --to "$work/backup-$i")")
  plain_times+=("$(seconds plain_copy "$work/plain-$i")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
c_med=$(median "${custody_times[@]}"); p_med=$(median "${plain_times[@]}")
echo "instance: $events audit events, data directory $size"
echo "custody backup: median $c_med s over $rounds rounds (${custody_times[*]})"
echo "VACUUM INTO + cp -a (anchor): median $p_med s (${plain_times[*]})"
echo "ratio: $(echo "scale=1; $c_med / $p_med" | bc)"
