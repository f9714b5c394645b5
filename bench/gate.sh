#!/usr/bin/env bash
# Deployment gate evaluation for a release spanning 500 changes, against a
# release build on SQLite: 500 changes merged one after another (each
# built), then the gate of the production deployment of the last build,
# whose release is all 500, is read again and again.
#
#   bash bench/gate.sh [CHANGES] [READS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/team.sh
changes="${1:-500}"

# main: a pipeline whose build writes one small artifact and whose
# production needs an approval (set up by hand, as the first reviewed merge
# would have).
src="$work/src"
git init -q -b main "$src"
git -C "$src" config user.name Alice; git -C "$src" config user.email alice@example.com
mkdir -p "$src/.custody" "$src/scripts"
cat > "$src/.custody/pipeline.toml" <<'TOML'
[review]
approvals = 1
[pipeline]
owners = "platform"
build = "scripts/build.sh"
artifacts = ["out.txt"]

[[environment]]
name = "production"
deploy = "scripts/deploy.sh"
approvals = 1
approvers = "release-managers"
TOML
printf '#!/bin/sh\necho "$CUSTODY_COMMIT" > out.txt\n' > "$src/scripts/build.sh"
printf '#!/bin/sh\ntrue\n' > "$src/scripts/deploy.sh"
chmod +x "$src/scripts/build.sh" "$src/scripts/deploy.sh"
git -C "$src" add -A; git -C "$src" commit -q -m base
remote="http://alice:$alice@${url#http://}/bench.git"
git -C "$src" push -q "$remote" main:refs/heads/seed
git --git-dir "$work/data/repositories/bench.git" update-ref refs/heads/main "$(git -C "$src" rev-parse HEAD)"
c group create release-managers >/dev/null

# One branch per change, each adding its own file to the base; pushed at once.
base=$(git -C "$src" rev-parse HEAD)
git -C "$src" fast-import --quiet < <(BASE="$base" CHANGES="$changes" python3 - <<'PY'
import os, sys
out, base = sys.stdout.buffer, os.environ["BASE"].encode()
for i in range(1, int(os.environ["CHANGES"]) + 1):
    data, msg = f"change {i}\n".encode(), f"change {i}\n".encode()
    out.write(b"commit refs/heads/c%d\n" % i)
    out.write(b"author Alice <alice@example.com> %d +0000\ncommitter Alice <alice@example.com> %d +0000\n" % (1700000000 + i, 1700000000 + i))
    out.write(b"data %d\n" % len(msg) + msg + b"from " + base + b"\n")
    out.write(b"M 100644 inline changes/c%d.txt\ndata %d\n" % (i, len(data)) + data + b"\n")
PY
)
git -C "$src" push -q "$remote" 'refs/heads/c*:refs/heads/c*'

CUSTODY_SERVER="$url" ADMIN="$admin" ALICE="$alice" BOB="$bob" PROJECT=bench CHANGES="$changes" \
  READS="${2:-200}" REPOSITORY="$work/data/repositories/bench.git" BASE="$base" python3 bench/gate.py
