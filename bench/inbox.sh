#!/usr/bin/env bash
# My work and its count in the navigation bar, for a reviewer with N open
# changes to review (200 by default), against a release build on SQLite;
# anchored to SQLite reading the same open changes and their reviews from
# the same database file, in the same run.
#
#   bash bench/inbox.sh [CHANGES] [READS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/team.sh
changes="${1:-200}"

src="$work/src"
git init -q -b main "$src"
git -C "$src" fast-import --quiet < <(CHANGES="$changes" python3 - <<'PY'
import os, sys
out = sys.stdout.buffer
def commit(ref, n, path, data, message, parent=None):
    msg = message.encode()
    out.write(b"commit %s\n" % ref)
    out.write(b"author Alice <alice@example.com> %d +0000\ncommitter Alice <alice@example.com> %d +0000\n" % (1700000000 + n, 1700000000 + n))
    out.write(b"data %d\n" % len(msg) + msg)
    if parent:
        out.write(b"from %s\n" % parent)
    out.write(b"M 100644 inline %s\ndata %d\n" % (path, len(data)) + data + b"\n")
commit(b"refs/heads/main", 0, b"README", b"base\n", "base\n")
for i in range(1, int(os.environ["CHANGES"]) + 1):
    commit(b"refs/heads/part-%04d" % i, i, b"src/part-%04d.txt" % i, b"part %d\n" % i, f"part {i}\n", b"refs/heads/main")
PY
)
remote="http://alice:$alice@${url#http://}/bench.git"
git -C "$src" push -q "$remote" main:refs/heads/seed 'refs/heads/part-*:refs/heads/part-*'
git --git-dir "$work/data/repositories/bench.git" update-ref refs/heads/main "$(git -C "$src" rev-parse main)"
for i in $(seq -f %04g 1 "$changes"); do
  CUSTODY_TOKEN="$alice" "$bin" change open bench --source "part-$i" --title "part $i" --json >/dev/null
done

PYTHONPATH=bench PROJECT=bench ADMIN="$admin" ALICE="$alice" BOB="$bob" READS="${2:-200}" CHANGES="$changes" python3 - <<'PY'
import json, os, team
session = team.sign_in("bob")
n, reads = int(os.environ["CHANGES"]), int(os.environ["READS"])
def counted(body):
    assert json.loads(body)["count"] == n, body[:200]
def listed(body):
    assert body.count(b'data-change="bench/') == n, "not every change is listed"
for path, check in [("/work/count", counted), ("/work", listed)]:
    p50, p99, _ = team.read_page(path, session, reads, check)
    print(f"{path} with {n} changes to review, {reads} reads: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
PY

# The anchor: SQLite reading the open changes and their reviews from the
# same database file.
python3 - "$work/data/custody.db" <<'PY'
import sqlite3, statistics, sys, time
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
times = []
for _ in range(200):
    started = time.perf_counter()
    rows = db.execute(
        "SELECT c.number, c.title, c.head, (SELECT COUNT(*) FROM reviews r WHERE r.change_id = c.id) "
        "FROM changes c WHERE c.state = 'open' ORDER BY c.number"
    ).fetchall()
    times.append((time.perf_counter() - started) * 1000)
times.sort()
print(f"anchor: SQLite reading {len(rows)} open changes and their review counts, 200 runs: "
      f"p50 {statistics.median(times):.3f} ms, p99 {times[197]:.3f} ms")
PY
