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

CUSTODY_SERVER="$url" BOB="$bob" READS="${2:-200}" CHANGES="$changes" python3 - <<'PY'
import http.client, json, os, re, statistics, time, urllib.parse
server = urllib.parse.urlparse(os.environ["CUSTODY_SERVER"])
conn = http.client.HTTPConnection(server.hostname, server.port)
origin = f"http://{server.hostname}:{server.port}"
conn.request("GET", "/login")
answer = conn.getresponse()
page = answer.read().decode()
nonce = re.search(r"custody_login=([^;]+)", answer.getheader("Set-Cookie")).group(1)
csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
form = urllib.parse.urlencode({"csrf": csrf, "next": "/work", "method": "token", "token": os.environ["BOB"]})
conn.request("POST", "/login", body=form, headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": origin, "Cookie": f"custody_login={nonce}"})
answer = conn.getresponse(); answer.read()
session = re.search(r"custody_session=([^;]+)", answer.getheader("Set-Cookie")).group(1)
def timed(path, check):
    times = []
    for i in range(20 + int(os.environ["READS"])):
        started = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": f"custody_session={session}"})
        answer = conn.getresponse(); body = answer.read()
        assert answer.status == 200, answer.status
        check(body)
        if i >= 20:
            times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
n = int(os.environ["CHANGES"])
def counted(body):
    assert json.loads(body)["count"] == n, body[:200]
def listed(body):
    assert body.count(b'data-change="bench/') == n, "not every change is listed"
for path, check in [("/work/count", counted), ("/work", listed)]:
    p50, p99 = timed(path, check)
    print(f"{path} with {n} changes to review, {os.environ['READS']} reads: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
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
