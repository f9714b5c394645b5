#!/usr/bin/env bash
# Latency from a merge into the mainline to the start of its build, and
# from the build's success to the start of its automatic staging
# deployment, on a release build with SQLite: 50 changes pushed, approved
# and merged one after another, each followed until it is live in staging.
# With `remote`, the server runs no jobs: a builder and a deployer that share
# nothing with it (their own directories, key and credential) run them.
#
#   bash bench/builds.sh [MERGES] [local|remote]
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${2:-local}"
[ "$mode" = remote ] && export SERVE_ARGS="--builders 0"
. bench/team.sh

if [ "$mode" = remote ]; then
  # The only admin's grants apply at once (bootstrap).
  for role in builder deployer; do
    dir="$work/worker-$role"
    digest=$("$bin" worker init --dir "$dir" --name "bench-$role" --role "$role" --json \
      | sed -E 's/.*"credential_sha256":"([0-9a-f]+)".*/\1/')
    c worker register "bench-$role" --role "$role" --public-key "$dir/worker.pub" --credential-sha256 "$digest" >/dev/null
    CUSTODY_LOG=warn "$bin" worker run --server "$url" --dir "$dir" >"$work/$role.out" 2>"$work/$role.err" &
    extra_pids+=($!)
  done
fi

# main: a pipeline whose build writes one small artifact (set up by hand,
# as the first reviewed merge would have).
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
  MERGES="${1:-50}" python3 bench/builds.py
