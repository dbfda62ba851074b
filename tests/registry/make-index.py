#!/usr/bin/env python3
"""Turns the OCI layout of tests/make-test-image (extracted in DIR) into a multi-platform
one: an image index, tagged TAG in DIR/index.json, holding the image for its own
architecture and a copy whose config says linux/arm64/v8 (same layers, another config,
so another manifest digest), plus an attestation-like entry with platform unknown/unknown.
    make-index.py DIR TAG
"""
import hashlib
import json
import os
import sys

d, tag = sys.argv[1], sys.argv[2]
blobs = os.path.join(d, "blobs", "sha256")


def put(data):
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, h), "wb") as f:
        f.write(data)
    return "sha256:" + h, len(data)


def get(digest):
    with open(os.path.join(blobs, digest.split(":", 1)[1]), "rb") as f:
        return f.read()


index = json.load(open(os.path.join(d, "index.json")))
entry = index["manifests"][0]
manifest = json.loads(get(entry["digest"]))
config = json.loads(get(manifest["config"]["digest"]))

entries = [{"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"],
            "platform": {"os": "linux", "architecture": config["architecture"]}}]

arm = dict(config, architecture="arm64", variant="v8")
cd, cs = put(json.dumps(arm, separators=(",", ":")).encode())
arm_manifest = dict(manifest, config=dict(manifest["config"], digest=cd, size=cs))
md, ms = put(json.dumps(arm_manifest, separators=(",", ":")).encode())
entries.insert(0, {"mediaType": entry["mediaType"], "digest": md, "size": ms,
                   "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}})

idx = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}
idd, ids = put(json.dumps(idx, separators=(",", ":")).encode())
index["manifests"] = [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": idd, "size": ids,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]
json.dump(index, open(os.path.join(d, "index.json"), "w"))
print(json.dumps({"index": idd, "amd64": entry["digest"], "arm64": md, "arm64_config": cd}))
