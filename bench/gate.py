"""Deployment gate evaluation for a release of many changes, measured
against a running custody.

    python3 bench/gate.py       (run bench/gate.sh, which sets it up)

Merges CHANGES changes (each opened by alice, approved by bob, merged by
alice), waits for the last build's production deployment, then times
READS reads of its gate: custody reads the mainline's pipeline file, lists
the commits between what is live and the candidate with git, finds the
changes merged as them, gathers who held which duty in each, and evaluates
every rule. The anchor, in the same run: `git rev-list --count` of the same
commits, as a process.
"""
import os
import statistics
import subprocess
import time

from team import call as timed_call, percentile, project

changes, reads = int(os.environ["CHANGES"]), int(os.environ["READS"])
repository, base = os.environ["REPOSITORY"], os.environ["BASE"]


def call(method, path, who, body=None):
    return timed_call(method, path, who, body)[0]


prefix = f"/api/v1/projects/{project}"
started = time.perf_counter()
for i in range(1, changes + 1):
    opened = call("POST", f"{prefix}/changes", "alice", {"source": f"c{i}", "title": f"change {i}"})
    number = opened["number"]
    call("POST", f"{prefix}/changes/{number}/reviews", "bob", {"verdict": "approve", "head": opened["head"]})
    call("POST", f"{prefix}/changes/{number}/merge", "alice", {})
print(f"{changes} changes merged in {time.perf_counter() - started:.1f} s")

deployment = None
for _ in range(6000):
    pending = [d for d in call("GET", f"{prefix}/deployments?environment=production", "alice") if d["build"] == changes]
    if pending:
        deployment = pending[0]["number"]
        break
    time.sleep(0.05)
if deployment is None:
    raise SystemExit(f"build {changes} never reached production")

gate = call("GET", f"{prefix}/deployments/{deployment}/gate", "alice")
print(f"deployment {deployment} of build {changes}: gate {'open' if gate['gate']['open'] else 'closed'}, "
      f"release of {len(gate['release'])} changes")
if len(gate["release"]) != changes:
    raise SystemExit(f"the release holds {len(gate['release'])} changes, not {changes}")

timings = []
for _ in range(reads):
    timings.append(timed_call("GET", f"{prefix}/deployments/{deployment}/gate", "alice")[1] * 1000)
tip = subprocess.run(["git", "--git-dir", repository, "rev-parse", "refs/heads/main"], capture_output=True,
                     text=True, check=True).stdout.strip()
anchor = []
for _ in range(reads):
    t = time.perf_counter()
    out = subprocess.run(["git", "--git-dir", repository, "rev-list", "--count", tip], capture_output=True, text=True,
                         check=True).stdout.strip()
    anchor.append((time.perf_counter() - t) * 1000)
p50, anchor_p50 = percentile(timings, 50), percentile(anchor, 50)
print(f"release commits on main: {out}")
print(f"gate of a {changes}-change release: p50 {p50:.2f} ms, p95 {percentile(timings, 95):.2f} ms, "
      f"mean {statistics.mean(timings):.2f} ms ({reads} reads)")
print(f"anchor git rev-list --count: p50 {anchor_p50:.2f} ms; ratio {p50 / anchor_p50:.2f}")
