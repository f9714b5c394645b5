#!/usr/bin/env bash
# Gate evaluation for a change of 1,000 commits and 50 reviews, and listing
# 10,000 changes of a project, against a release build on SQLite.
#
#   bash bench/changes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/team.sh

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

# The anchor, in the same run: git listing the same 1,000 commits, as a process.
python3 - "$work/src" <<'PY'
import statistics, subprocess, sys, time
times = []
for _ in range(200):
    started = time.perf_counter()
    subprocess.run(["git", "-C", sys.argv[1], "rev-list", "--count", "big"], check=True, capture_output=True)
    times.append((time.perf_counter() - started) * 1000)
times.sort()
print(f"anchor git rev-list --count over the change's 1,000 commits, 200 runs: p50 {statistics.median(times):.2f} ms, p99 {times[197]:.2f} ms")
PY
