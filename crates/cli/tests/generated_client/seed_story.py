"""The seed's API steps, played by a client that openapi-python-client
generated from the OpenAPI document custody serves: nothing here is written
by hand against the API but the order of the steps.

alice opens a change, bob approves the head he read, alice merges it; the
build service builds it and staging deploys it; dave signs off production's
manual test and carol approves it; alice asks for a redeploy of the build to
staging; erin, an auditor, exports the evidence of production's deployment.
"""

import json
import os
import sys
import time

from custody_client import AuthenticatedClient
from custody_client.api.builds import get_build
from custody_client.api.changes import get_change, merge, open_change, review
from custody_client.api.deployments import approve, get_deployment, request, sign_off
from custody_client.api.evidence import deployment_evidence
from custody_client.models import DecisionRequest, DeployRequest, OpenChangeRequest, ReviewRequest, SignOffRequest

URL = os.environ["CUSTODY_URL"]
PROJECT = os.environ["CUSTODY_PROJECT"]


def client(who):
    return AuthenticatedClient(base_url=URL, token=os.environ[f"CUSTODY_TOKEN_{who.upper()}"], timeout=60)


def answer(response, statuses, step):
    """The answer's JSON, once the generated client read it as its model."""
    if response.status_code not in statuses:
        sys.exit(f"{step}: {int(response.status_code)} {response.content!r}")
    if response.parsed is None:
        sys.exit(f"{step}: the generated client could not read the answer: {response.content!r}")
    print(f"{step}: {int(response.status_code)}")
    return json.loads(response.content)


def until(step, probe, wanted):
    last = None
    for _ in range(600):
        last = probe()
        if last.get("status") in wanted:
            print(f"{step}: {last['status']}")
            return last
        time.sleep(0.1)
    sys.exit(f"{step}: never reached {wanted}: {last}")


alice, bob, carol, dave, erin = (client(who) for who in ("alice", "bob", "carol", "dave", "erin"))

change = answer(
    open_change.sync_detailed(PROJECT, client=alice, body=OpenChangeRequest(source="feature", title="Version 2")),
    {201},
    "alice opens a change",
)
number = change["number"]
head = answer(get_change.sync_detailed(PROJECT, number, client=bob), {200}, "bob reads it")["head"]
answer(
    review.sync_detailed(PROJECT, number, client=bob, body=ReviewRequest(verdict="approve", head=head, message="right")),
    {201},
    "bob approves the head he read",
)
merged = answer(merge.sync_detailed(PROJECT, number, client=alice), {200}, "alice merges it")

build = until(
    "the build service builds it",
    lambda: json.loads(get_build.sync_detailed(PROJECT, 1, client=alice).content),
    {"succeeded", "failed"},
)
assert build["status"] == "succeeded", build
assert build["commit"] == merged["change"]["merge_commit"], (build, merged)


def deployment(number):
    return lambda: json.loads(get_deployment.sync_detailed(PROJECT, number, client=alice).content)


staging = until("staging deploys it", deployment(1), {"succeeded", "failed"})
assert staging["status"] == "succeeded", staging
until("production waits for its gate", deployment(2), {"pending"})
answer(
    sign_off.sync_detailed(PROJECT, 2, client=dave, body=SignOffRequest(passed=True, message="checkout works")),
    {200},
    "dave signs off the manual test",
)
approved = answer(
    approve.sync_detailed(PROJECT, 2, client=carol, body=DecisionRequest(message="ship it")),
    {200},
    "carol approves production",
)
assert approved["gate"]["open"] is True, approved
production = until("production deploys it", deployment(2), {"succeeded", "failed"})
assert production["status"] == "succeeded", production

redeploy = answer(
    request.sync_detailed(PROJECT, client=alice, body=DeployRequest(environment="staging", build=1)),
    {201},
    "alice asks for a redeploy to staging",
)
again = until("the redeploy runs", deployment(redeploy["deployment"]["number"]), {"succeeded", "failed"})
assert again["status"] == "succeeded", again

bundle = answer(deployment_evidence.sync_detailed(PROJECT, 2, client=erin), {200}, "the evidence is exported")
print(json.dumps({"bundle_keys": sorted(bundle)}))
