"""Merge-to-build-start and build-success-to-staging-deploy-start
latencies, measured against a running custody.

    python3 bench/builds.py       (run bench/builds.sh, which sets it up)

Each merge's `change.merge` audit event, its build's `build.start` and
`build.finish` events and its staging deployment's `deploy.start` event
carry the server's commit-time clock; the latencies are the differences.
"""
import os
import statistics
import subprocess
import time
from datetime import datetime

from team import call as timed_call, percentile, project

src, remote, merges = os.environ["SRC"], os.environ["REMOTE"], int(os.environ["MERGES"])


def call(method, path, who, body=None):
    return timed_call(method, path, who, body)[0]


def git(*args):
    subprocess.run(["git", "-C", src, *args], check=True, capture_output=True)


def events(action):
    page = call("GET", f"/api/v1/audit/events?action={action}&limit=500", "admin")
    return page["items"]


base = f"/api/v1/projects/{project}"
for i in range(1, merges + 1):
    git("fetch", "-q", remote, "refs/heads/main")
    git("checkout", "-q", "-B", f"f{i}", "FETCH_HEAD")
    with open(os.path.join(src, "change.txt"), "w") as f:
        f.write(f"change {i}\n")
    git("add", "change.txt")
    git("commit", "-q", "-m", f"change {i}")
    git("push", "-q", remote, f"f{i}")
    change = call("POST", f"{base}/changes", "alice", {"source": f"f{i}", "title": f"change {i}"})
    number = change["number"]
    call("POST", f"{base}/changes/{number}/reviews", "bob", {"verdict": "approve", "head": change["head"]})
    call("POST", f"{base}/changes/{number}/merge", "alice", {})
    for _ in range(1000):
        build = call("GET", f"{base}/builds/{i}", "alice")
        if build["status"] not in ("queued", "running"):
            break
        time.sleep(0.01)
    # Each deployment runs alone, so that none waits behind the one before.
    for _ in range(1000):
        deployed = call("GET", f"{base}/deployments?environment=staging", "alice")
        items = deployed["items"] if isinstance(deployed, dict) else deployed
        if items and items[0]["build"] == i and items[0]["status"] not in ("pending", "queued", "running"):
            break
        time.sleep(0.01)

merged = {e["details"]["build"]: e["at"] for e in events("change.merge")}
started = {int(e["subject"].rsplit("/", 1)[1]): e["at"] for e in events("build.start")}


def ms(stamp):
    # RFC 3339 with milliseconds, UTC.
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000


latencies = sorted(ms(started[n]) - ms(merged[n]) for n in merged if n in started)
succeeded = {
    int(e["subject"].rsplit("/", 1)[1]): e["at"] for e in events("build.finish") if e["details"]["status"] == "succeeded"
}
building = sorted(ms(succeeded[n]) - ms(started[n]) for n in succeeded if n in started)
deploying = {e["details"]["build"]: e["at"] for e in events("deploy.start") if e["details"]["environment"] == "staging"}
promoted = sorted(ms(deploying[n]) - ms(succeeded[n]) for n in succeeded if n in deploying)


def report(label, values):
    print(f"{label}: p50 {percentile(values, 50):.0f} ms, p95 {percentile(values, 95):.0f} ms, "
          f"max {values[-1]:.0f} ms, mean {statistics.mean(values):.1f} ms ({len(values)} samples)")


report("merge -> build start", latencies)
report("build start -> build success", building)
report("build success -> staging deploy start", promoted)
