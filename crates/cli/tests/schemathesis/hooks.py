"""custody's identities for Schemathesis.

The fuzzer works as a throwaway user that it may lock out of its own token:
revoking it, or changing its password, is part of what it tests. So the token
is fetched by signing in, again whenever an answer is 401, with the password
the fuzzer last set. Sign-ins come from 127.0.0.2, so the failed sign-ins the
fuzzer sends from 127.0.0.1 do not throttle them.
"""

import http.client
import json
import os
import urllib.parse

import schemathesis

SERVER = urllib.parse.urlsplit(os.environ["CUSTODY_FUZZ_URL"])
NAME = os.environ["CUSTODY_FUZZ_NAME"]
SCOPES = os.environ.get("CUSTODY_FUZZ_SCOPES", "read,write").split(",")
STATE = {"password": os.environ["CUSTODY_FUZZ_PASSWORD"]}


def sign_in():
    connection = http.client.HTTPConnection(SERVER.hostname, SERVER.port, timeout=30, source_address=("127.0.0.2", 0))
    body = json.dumps({"name": NAME, "password": STATE["password"], "scopes": SCOPES})
    connection.request("POST", "/api/v1/auth/token", body=body, headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    text = answer.read().decode()
    connection.close()
    if answer.status != 200:
        raise RuntimeError(f"signing {NAME} in failed: {answer.status} {text}")
    return json.loads(text)["token"]


@schemathesis.auth()
class SignedIn:
    def get(self, case, context):
        return sign_in()

    def set(self, case, token, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {token}"


@schemathesis.hook
def after_call(context, case, response):
    # The fuzzer set a new password for its user: sign in with it from now on.
    if case.method.upper() == "PUT" and case.path == "/api/v1/me/password" and response.status_code == 204:
        STATE["password"] = case.body["password"]
