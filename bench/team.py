"""What the Python bench scripts share: the API of the server bench/team.sh
started, called as admin, alice or bob, and percentiles."""
import http.client
import json
import os
import time
import urllib.parse

server = urllib.parse.urlparse(os.environ["CUSTODY_SERVER"])
project = os.environ["PROJECT"]
tokens = {name: os.environ[name.upper()] for name in ("admin", "alice", "bob")}
conn = http.client.HTTPConnection(server.hostname, server.port)


def call(method, path, who, body=None, connection=None):
    """One API call as `who` (on `connection`, the shared one by default):
    the JSON answer and the seconds it took."""
    connection = connection or conn
    headers = {"Authorization": f"Bearer {tokens[who]}"}
    data = None
    if body is not None:
        data = json.dumps(body)
        headers["Content-Type"] = "application/json"
    started = time.perf_counter()
    connection.request(method, path, body=data, headers=headers)
    response = connection.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - started
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {payload[:300]!r}")
    return json.loads(payload) if payload else None, elapsed


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]
