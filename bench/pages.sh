#!/usr/bin/env bash
# The change page of a change of 1,000 commits touching 200 files, rendered
# for a signed-in reviewer, against a release build on SQLite; anchored to
# the git work the page itself asks for (the log of its first 200 commits
# and its diff), run as processes in the same run.
#
#   bash bench/pages.sh [READS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/team.sh

src="$work/src"
git init -q -b main "$src"
git -C "$src" fast-import --quiet < <(python3 - <<'PY'
import sys
out = sys.stdout.buffer
def commit(ref, n, files, message, parent=None):
    msg = message.encode()
    out.write(b"commit %s\n" % ref)
    out.write(b"author Alice <alice@example.com> %d +0000\ncommitter Alice <alice@example.com> %d +0000\n" % (1700000000 + n, 1700000000 + n))
    out.write(b"data %d\n" % len(msg) + msg)
    if parent:
        out.write(b"from %s\n" % parent)
    for path, data in files:
        out.write(b"M 100644 inline %s\ndata %d\n" % (path, len(data)) + data + b"\n")
# main: 200 files of 40 lines each.
commit(b"refs/heads/main", 0, [(b"src/f%03d.txt" % f, b"".join(b"line %d of file %d\n" % (l, f) for l in range(40))) for f in range(200)], "base\n")
# feature: 1,000 commits, each rewriting one of the 200 files.
for i in range(1, 1001):
    f = i % 200
    data = b"".join((b"line %d of file %d, changed by commit %d\n" % (l, f, i)) if l == i % 40 else (b"line %d of file %d\n" % (l, f)) for l in range(40))
    commit(b"refs/heads/feature", i, [(b"src/f%03d.txt" % f, data)], f"commit {i}\n", b"refs/heads/main" if i == 1 else None)
PY
)
remote="http://alice:$alice@${url#http://}/bench.git"
git -C "$src" push -q "$remote" main:refs/heads/seed feature:refs/heads/feature
git --git-dir "$work/data/repositories/bench.git" update-ref refs/heads/main "$(git -C "$src" rev-parse main)"
number=$(CUSTODY_TOKEN="$alice" "$bin" change open bench --source feature --title "a thousand commits" --json \
  | sed -E 's/.*"number":([0-9]+).*/\1/')

PYTHONPATH=bench PROJECT=bench ADMIN="$admin" ALICE="$alice" BOB="$bob" NUMBER="$number" READS="${1:-300}" python3 - <<'PY'
import os, team
session = team.sign_in("bob")
path = f"/projects/bench/changes/{os.environ['NUMBER']}"
reads = int(os.environ["READS"])
p50, p99, body = team.read_page(path, session, reads)
print(f"change page of 1,000 commits and 200 files ({len(body) // 1024} KiB of HTML), {reads} reads: "
      f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")
PY

# The anchor: the git the page asks for, as processes (the first 200
# commits' log, and the diff from main).
python3 - "$src" <<'PY'
import statistics, subprocess, sys, time
src = sys.argv[1]
commits = subprocess.run(["git", "-C", src, "rev-list", "--reverse", "main..feature"], check=True, capture_output=True, text=True).stdout.split()[:200]
times = []
for _ in range(100):
    started = time.perf_counter()
    subprocess.run(["git", "-C", src, "log", "--no-walk=unsorted", "--format=%H%x1f%an <%ae>%x1f%s", *commits], check=True, capture_output=True)
    subprocess.run(["git", "-C", src, "diff", "main", "feature"], check=True, capture_output=True)
    times.append((time.perf_counter() - started) * 1000)
times.sort()
print(f"anchor: git log of 200 commits and git diff of 200 files, 100 runs: p50 {statistics.median(times):.2f} ms, p99 {times[98]:.2f} ms")
PY
