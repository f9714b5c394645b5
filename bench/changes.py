"""Gate evaluation and change listing, measured against a running custody.

    python3 bench/changes.py            (builds nothing; run bench/changes.sh)

Reads CUSTODY_SERVER, ADMIN, ALICE, BOB and PROJECT from the environment:
bench/changes.sh sets them up.
"""
import http.client
import os
import statistics
import time
import urllib.parse

from team import call, percentile, project


server = urllib.parse.urlparse(os.environ["CUSTODY_SERVER"])
base = f"/api/v1/projects/{project}/changes"
change, _ = call("POST", base, "alice", {"source": "big", "target": "main", "title": "a thousand commits"})
number = change["number"]
for i in range(50):
    call("POST", f"{base}/{number}/reviews", "bob", {"verdict": "comment" if i % 2 else "approve", "message": f"review {i}", "head": change["head"]})

gate_times = []
for _ in range(20):
    call("GET", f"{base}/{number}/gate", "bob")
for _ in range(300):
    report, elapsed = call("GET", f"{base}/{number}/gate", "bob")
    gate_times.append(elapsed * 1000)
metrics = http.client.HTTPConnection(server.hostname, server.port)
metrics.request("GET", "/metrics")
text = metrics.getresponse().read().decode()
buckets = [l for l in text.splitlines() if l.startswith("custody_http_request_duration_seconds_bucket") and "changes/{number}/gate" in l]
counts = [(float(l.split('le="')[1].split('"')[0]), float(l.rsplit(" ", 1)[1])) for l in buckets]
total = max(c for _, c in counts)
p99_bucket = next(le for le, c in sorted(counts) if c >= 0.99 * total)
print(f"gate of a change with {os.environ.get('COMMITS', '?')} commits and 50 reviews, 300 requests:")
print(f"  p50 {statistics.median(gate_times):.2f} ms, p99 {percentile(gate_times, 99):.2f} ms (HTTP round trip on loopback)")
print(f"  gate open: {report['open']}")
print(f"  server-side p99 (Prometheus histogram bucket, {int(total)} requests): <= {p99_bucket * 1000:.2f} ms")

started = time.perf_counter()
for i in range(10_000):
    call("POST", base, "alice", {"source": "small", "target": f"t{i}", "title": f"change {i}"})
print(f"opened 10,000 changes in {time.perf_counter() - started:.1f} s")

def route_seconds(route):
    """The server's own total time answering `route` so far."""
    metrics = http.client.HTTPConnection(server.hostname, server.port)
    metrics.request("GET", "/metrics")
    text = metrics.getresponse().read().decode()
    for line in text.splitlines():
        if line.startswith("custody_http_request_duration_seconds_sum") and f'route="{route}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


list_route = "/api/v1/projects/{name}/changes"
server_before = route_seconds(list_route)
list_times = []
for _ in range(20):
    started = time.perf_counter()
    total, after = 0, None
    while True:
        path = f"{base}?state=open&limit=500" + (f"&after={after}" if after else "")
        page, _ = call("GET", path, "alice")
        total += len(page["items"])
        after = page.get("next_cursor")
        if after is None:
            break
    list_times.append((time.perf_counter() - started) * 1000)
server_each = (route_seconds(list_route) - server_before) / 20 * 1000
print(f"listing all {total} open changes (21 pages of 500), 20 times:")
print(f"  server-side: {server_each:.1f} ms per listing (sum of the 21 requests, from custody's histogram)")
print(f"  p50 {statistics.median(list_times):.1f} ms, max {max(list_times):.1f} ms")
