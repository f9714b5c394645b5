"""The in-toto side of the verification benchmark.

`intoto.py write DIR` writes a three-step supply-chain layout (a reviewed
change, its build, its deployment), signed by an owner key, and one signed
link per step by its functionary, all ed25519: the in-toto equivalent of
custody's chain from commit to production.
`intoto.py time DIR N` verifies it N times in this process with
in_toto.verifylib.in_toto_verify (loading the layout, key and links each
time, as the command does) and prints the mean time.
"""

import hashlib
import json
import os
import sys
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from in_toto import verifylib
from in_toto.models._signer import load_public_key_from_file
from in_toto.models.layout import Layout
from in_toto.models.link import Link
from in_toto.models.metadata import Metablock, Metadata
from securesystemslib.signer import CryptoSigner, SSlibKey


def signer():
    private = Ed25519PrivateKey.generate()
    public = SSlibKey.from_crypto(private.public_key())
    return private, CryptoSigner(private, public), public


def sha(data):
    return {"sha256": hashlib.sha256(data).hexdigest()}


def write(directory):
    os.makedirs(directory, exist_ok=True)
    owner_private, owner, _ = signer()
    with open(os.path.join(directory, "owner.pub"), "wb") as f:
        f.write(owner_private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    functionaries = {name: signer() for name in ("change", "build", "deploy")}
    keys = {}
    for _, _, public in functionaries.values():
        key = public.to_dict()
        key["keyid"] = public.keyid
        keys[public.keyid] = key
    source, artifact = b"version 2\n", b"\x1f\x8b built artifact"

    def step(name, materials, products):
        return {
            "_type": "step", "name": name, "threshold": 1, "expected_command": [],
            "pubkeys": [functionaries[name][2].keyid],
            "expected_materials": materials, "expected_products": products,
        }

    layout = Layout.read({
        "_type": "layout",
        "expires": "2099-01-01T00:00:00Z",
        "readme": "commit, change, build, deploy",
        "keys": keys,
        "steps": [
            step("change", [], [["CREATE", "src/app.txt"], ["DISALLOW", "*"]]),
            step("build", [["MATCH", "src/app.txt", "WITH", "PRODUCTS", "FROM", "change"], ["DISALLOW", "*"]],
                 [["CREATE", "dist/app.tar.gz"], ["DISALLOW", "*"]]),
            step("deploy", [["MATCH", "dist/app.tar.gz", "WITH", "PRODUCTS", "FROM", "build"], ["DISALLOW", "*"]],
                 [["DISALLOW", "*"]]),
        ],
        "inspect": [],
    })
    metablock = Metablock(signed=layout)
    metablock.create_signature(owner)
    metablock.dump(os.path.join(directory, "root.layout"))

    links = {
        "change": ({}, {"src/app.txt": sha(source)}),
        "build": ({"src/app.txt": sha(source)}, {"dist/app.tar.gz": sha(artifact)}),
        "deploy": ({"dist/app.tar.gz": sha(artifact)}, {}),
    }
    for name, (materials, products) in links.items():
        link = Link(name=name, materials=materials, products=products, byproducts={}, command=[], environment={})
        block = Metablock(signed=link)
        _, functionary, public = functionaries[name]
        block.create_signature(functionary)
        block.dump(os.path.join(directory, f"{name}.{public.keyid[:8]}.link"))


def verify_once(directory):
    layout = Metadata.load(os.path.join(directory, "root.layout"))
    key = load_public_key_from_file(os.path.join(directory, "owner.pub"))
    verifylib.in_toto_verify(layout, {key["keyid"]: key}, link_dir_path=directory)


def timed(directory, n):
    verify_once(directory)
    start = time.perf_counter()
    for _ in range(n):
        verify_once(directory)
    mean = (time.perf_counter() - start) / n
    print(json.dumps({"verifications": n, "mean_ms": round(mean * 1000, 4)}))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "write":
        write(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "time":
        timed(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: intoto.py write DIR | intoto.py time DIR N")
