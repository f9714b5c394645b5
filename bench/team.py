"""What the Python bench scripts share: the API of the server bench/team.sh
started, called as admin, alice or bob, and percentiles."""
import http.client
import json
import os
import re
import statistics
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


def sign_in(who):
    """A browser's session for `who`, made through the sign-in form with
    their token, as a browser makes it: the session cookie's value."""
    origin = f"http://{server.hostname}:{server.port}"
    conn.request("GET", "/login")
    answer = conn.getresponse()
    page = answer.read().decode()
    nonce = re.search(r"custody_login=([^;]+)", answer.getheader("Set-Cookie")).group(1)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode({"csrf": csrf, "next": "/work", "method": "token", "token": tokens[who]})
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": origin, "Cookie": f"custody_login={nonce}"}
    conn.request("POST", "/login", body=form, headers=headers)
    answer = conn.getresponse()
    answer.read()
    return re.search(r"custody_session=([^;]+)", answer.getheader("Set-Cookie")).group(1)


def read_page(path, session, reads, check=lambda body: None, warm=20):
    """Reads `path` with `session` `reads` times after `warm` unmeasured
    reads, each checked: p50 and p99 in milliseconds, and the last body."""
    times = []
    for i in range(warm + reads):
        started = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": f"custody_session={session}"})
        answer = conn.getresponse()
        body = answer.read()
        assert answer.status == 200, (path, answer.status)
        check(body)
        if i >= warm:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), percentile(times, 99), body
