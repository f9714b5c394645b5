"""Token creation latency from 16 clients while merges run, and without.

    python3 bench/merge_writes.py    (run bench/merge_writes.sh, which sets it up)
"""
import http.client
import os
import threading
import time
import urllib.parse

from team import call, percentile, project

server = urllib.parse.urlparse(os.environ["CUSTODY_SERVER"])
merges = int(os.environ["MERGES"])
CLIENTS = 16


def writers(stop, taken):
    """CLIENTS threads creating tokens until `stop` is set."""
    def client():
        conn = http.client.HTTPConnection(server.hostname, server.port)
        while not stop.is_set():
            _, elapsed = call("POST", "/api/v1/tokens", "admin", {"name": "bench", "scopes": ["read"], "expires_in": 600}, conn)
            taken.append(elapsed)
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    return threads


def measure(seconds=None, during=None):
    stop, taken = threading.Event(), []
    threads = writers(stop, taken)
    started = time.perf_counter()
    if during is not None:
        during()
    else:
        time.sleep(seconds)
    elapsed = time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join()
    return taken, elapsed


base = f"/api/v1/projects/{project}/changes"
opened = []
for i in range(1, merges + 1):
    change, _ = call("POST", base, "alice", {"source": f"m{i}", "title": f"change {i}"})
    call("POST", f"{base}/{change['number']}/reviews", "bob", {"verdict": "approve", "head": change["head"]})
    opened.append(change["number"])


def merge_all():
    def merger(numbers):
        conn = http.client.HTTPConnection(server.hostname, server.port)
        for number in numbers:
            call("POST", f"{base}/{number}/merge", "alice", {}, conn)
    groups = [opened[i::4] for i in range(4)]
    threads = [threading.Thread(target=merger, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


quiet, quiet_s = measure(seconds=5)
busy, busy_s = measure(during=merge_all)
for label, taken, seconds in [("no merges (anchor)", quiet, quiet_s), (f"{merges} merges running", busy, busy_s)]:
    print(f"{label}: {len(taken)} token creations in {seconds:.1f} s, "
          f"p50 {percentile(taken, 50) * 1000:.1f} ms, p99 {percentile(taken, 99) * 1000:.1f} ms")
print(f"{merges} merges took {busy_s:.1f} s; p99 ratio {percentile(busy, 99) / percentile(quiet, 99):.2f}")
