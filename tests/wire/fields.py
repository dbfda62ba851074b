#!/usr/bin/python3
"""Every RPC x every extreme value: sends each method of both services
(containerd.services.snapshots.v1.Snapshots, snapshotd.v1.Store) requests whose fields hold
extreme or malformed values, and calls in odd orders. After every call the daemon must
answer a Stat, and the call must have ended (no hang) with a precise code: never UNKNOWN
or INTERNAL, and where a case names the code, that code.

  fields.py SOCKET WORKDIR PYDIR LOG

PYDIR holds the message modules protoc generated from Protos/ (tests/wire/run makes them);
WORKDIR is a scratch directory the daemon can read (layers, FIFOs, layouts); LOG is the
daemon's log, where a cancelled import must say it stopped.
"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import grpc

SOCK, WORK, PYDIR, LOG = sys.argv[1:5]
sys.path.insert(0, PYDIR)
from containerd.services.snapshots.v1 import snapshots_pb2 as S  # noqa: E402
from snapshotd.v1 import store_pb2 as T  # noqa: E402

C = grpc.StatusCode
SNAP = "/containerd.services.snapshots.v1.Snapshots/"
STORE = "/snapshotd.v1.Store/"
# What a call may end with when the case names nothing more precise.
PRECISE = {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION, C.ALREADY_EXISTS,
           C.RESOURCE_EXHAUSTED, C.PERMISSION_DENIED, C.UNIMPLEMENTED}
MARK = "\x01MARK\x01"  # replaced by invalid UTF-8 of the same length after encoding
INVALID_UTF8 = b"\xff\xfe\xc0\xaf\xed\xa0"
MiB = 1 << 20
STRINGS = ["", "a" * MiB, "..", "../../etc/passwd", "/", "a\x00b", MARK, "\u00e9\u2603", " ", "a/b", "\n"]
TIMES = [2**63 - 1, -2**63, -62135596800, 0, 253402300800, 9223372036, -9223372037]
NANOS = [0, -1, 10**9, 2**31 - 1, -2**31]

channel = grpc.insecure_channel(
    "unix://" + SOCK,
    options=[("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)])
calls = 0
failures = []


def encode(message):
    data = message if isinstance(message, bytes) else message.SerializeToString()
    return data.replace(MARK.encode(), INVALID_UTF8)


def invoke(method, request, shape="unary", timeout=60):
    """Sends one call; its status code and the messages answered."""
    global calls
    calls += 1
    try:
        if shape == "unary":
            return C.OK, [channel.unary_unary(method)(encode(request), timeout=timeout)]
        if shape == "server_stream":
            return C.OK, list(channel.unary_stream(method)(encode(request), timeout=timeout))
        # client_stream: `request` is a list of messages
        return C.OK, [channel.stream_unary(method)(iter([encode(m) for m in request]), timeout=timeout)]
    except grpc.RpcError as e:
        return e.code(), [e.details()]


def alive():
    try:
        channel.unary_unary(SNAP + "Stat")(S.StatSnapshotRequest(key="wire-base").SerializeToString(), timeout=10)
        return True
    except grpc.RpcError as e:
        return e.code() != C.UNAVAILABLE and e.code() != C.DEADLINE_EXCEEDED and e.code() != C.NOT_FOUND


def case(name, method, request, shape="unary", expect=None, timeout=60):
    """One call, judged: the code must be in `expect` (a code or a set), else precise."""
    start = time.monotonic()
    code, answer = invoke(method, request, shape, timeout)
    took = time.monotonic() - start
    allowed = PRECISE if expect is None else (expect if isinstance(expect, set) else {expect})
    if code == C.DEADLINE_EXCEEDED:
        failures.append(f"{name}: no answer within {timeout} s (a hang)")
    elif code not in allowed:
        failures.append(f"{name}: {code.name} ({str(answer[0])[:200]}), expected {' or '.join(sorted(c.name for c in allowed))}")
    if not alive():
        failures.append(f"{name}: the daemon no longer answers Stat after this call")
        report()
    return code, answer, took


def report():
    print(f"{calls} calls, {len(failures)} failures")
    for f in failures:
        print("  " + f)
    sys.exit(1 if failures else 0)


# ---- fixtures ---------------------------------------------------------------------------

def tar_bytes(files, fmt=tarfile.PAX_FORMAT):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


LAYER = tar_bytes({"etc/wire": b"wire test\n", "bin/tool": b"#!/bin/sh\necho hi\n" * 50})
LAYER_GZ = gzip.compress(LAYER, mtime=0)
LAYER_ZST = subprocess.run(["zstd", "-q", "-c"], input=LAYER, capture_output=True, check=True).stdout
TYPES = {
    "application/vnd.oci.image.layer.v1.tar": LAYER,
    "application/vnd.oci.image.layer.v1.tar+gzip": LAYER_GZ,
    "application/vnd.oci.image.layer.v1.tar+zstd": LAYER_ZST,
    "application/vnd.docker.image.rootfs.diff.tar": LAYER,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": LAYER_GZ,
    "application/vnd.docker.image.rootfs.foreign.diff.tar": LAYER_GZ,  # Docker's "may be compressed"
}
fifo = os.path.join(WORK, "fifo")
os.mkfifo(fifo)
os.symlink("/dev/zero", os.path.join(WORK, "zero-link"))
write(os.path.join(WORK, "empty"), b"")
layer_path = write(os.path.join(WORK, "layer.tar"), LAYER)
os.makedirs(os.path.join(WORK, "dir"))


def layout(name, index=None, blobs=None):
    """An OCI layout directory with a one-layer image of its own (a layer the store does not
    have yet); `index` and `blobs` replace its index.json or a blob with something hostile."""
    d = os.path.join(WORK, name)
    os.makedirs(d + "/blobs/sha256")
    layer = tar_bytes({"etc/" + name: name.encode()})
    layer_gz = gzip.compress(layer, mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer_gz), "size": len(layer_gz)}]}).encode()
    for blob in (config, manifest, layer_gz):
        write(d + "/blobs/sha256/" + sha(blob)[7:], blob)
    idx = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(manifest), "size": len(manifest)}]}).encode()
    write(d + "/oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    if index is None:
        write(d + "/index.json", idx)
    else:
        index(d + "/index.json")
    for blob, make in (blobs or {}).items():
        p = d + "/blobs/sha256/" + sha({"layer": layer_gz, "manifest": manifest}[blob])[7:]
        os.unlink(p)
        make(p)
    return d


good_layout = layout("layout")
zero_index = layout("zero-index", index=lambda p: os.symlink("/dev/zero", p))
fifo_index = layout("fifo-index", index=os.mkfifo)
fifo_layer = layout("fifo-layer", blobs={"layer": os.mkfifo})
zero_layer = layout("zero-layer", blobs={"layer": lambda p: os.symlink("/dev/zero", p)})
big_manifest = layout("big-manifest", blobs={"manifest": lambda p: os.truncate(write(p, b""), 64 * MiB)})

# ---- Snapshots service ------------------------------------------------------------------

case("Prepare wire-base", SNAP + "Prepare", S.PrepareSnapshotRequest(key="wire-base"), expect=C.OK)
case("Prepare wire-active", SNAP + "Prepare", S.PrepareSnapshotRequest(key="wire-active"), expect=C.OK)
case("Prepare wire-c", SNAP + "Prepare", S.PrepareSnapshotRequest(key="wire-c"), expect=C.OK)
case("Commit wire-c as wire-committed", SNAP + "Commit", S.CommitSnapshotRequest(name="wire-committed", key="wire-c"), expect=C.OK)

def big_label(key, value):
    """Whether a label is over containerd's 4096 bytes per key and value."""
    return len(key.encode()) + len(value.encode()) > 4096 or value == MARK


# Every string field of every request, with every string class.
for i, v in enumerate(STRINGS):
    tag = f"string #{i} ({len(v)} chars)"
    bad_key = v in ("", MARK) or len(v) > 4096 or "\x00" in v
    for method, make in [
        ("Prepare", lambda v: S.PrepareSnapshotRequest(key=v, parent="wire-committed")),
        ("View", lambda v: S.ViewSnapshotRequest(key=v, parent="wire-committed")),
    ]:
        code, _, _ = case(f"{method} key={tag}", SNAP + method, make(v), expect=C.INVALID_ARGUMENT if bad_key else {C.OK, C.ALREADY_EXISTS})
        if code == C.OK:
            case(f"Remove key={tag}", SNAP + "Remove", S.RemoveSnapshotRequest(key=v), expect=C.OK)
    case(f"Prepare parent={tag}", SNAP + "Prepare", S.PrepareSnapshotRequest(key=f"p{i}", parent=v),
         expect=C.OK if not v else {C.NOT_FOUND, C.INVALID_ARGUMENT})
    case(f"Remove p{i}", SNAP + "Remove", S.RemoveSnapshotRequest(key=f"p{i}"), expect={C.OK, C.NOT_FOUND})
    for method, make in [
        ("Mounts", lambda v: S.MountsRequest(key=v)),
        ("Stat", lambda v: S.StatSnapshotRequest(key=v)),
        ("Usage", lambda v: S.UsageRequest(key=v)),
        ("Remove", lambda v: S.RemoveSnapshotRequest(key=v)),
    ]:
        case(f"{method} key={tag}", SNAP + method, make(v), expect={C.INVALID_ARGUMENT, C.NOT_FOUND} if bad_key else C.NOT_FOUND)
    case(f"Store.Describe key={tag}", STORE + "Describe", T.DescribeRequest(key=v),
         expect={C.INVALID_ARGUMENT, C.NOT_FOUND} if bad_key else C.NOT_FOUND)
    # The writable layer's labels with every string: refused or taken, never worse.
    for label in ("containerd.io/snapshot/overlay.volatile", "containerd.io/snapshot/disk_quota"):
        case(f"Prepare {label.rsplit('/', 1)[-1]}={tag}", SNAP + "Prepare",
             S.PrepareSnapshotRequest(key=f"q{i}", parent="wire-committed", labels={label: v}),
             expect=C.INVALID_ARGUMENT if big_label(label, v) else {C.OK, C.INVALID_ARGUMENT})
        case(f"Remove q{i}", SNAP + "Remove", S.RemoveSnapshotRequest(key=f"q{i}"), expect={C.OK, C.NOT_FOUND})
    case(f"Commit name={tag}", SNAP + "Commit", S.CommitSnapshotRequest(name=v, key="nonexistent"),
         expect={C.INVALID_ARGUMENT, C.NOT_FOUND} if bad_key else C.NOT_FOUND)
    case(f"Commit key={tag}", SNAP + "Commit", S.CommitSnapshotRequest(name="x", key=v),
         expect={C.INVALID_ARGUMENT, C.NOT_FOUND} if bad_key else C.NOT_FOUND)
    case(f"Update name={tag}", SNAP + "Update", S.UpdateSnapshotRequest(info=S.Info(name=v)),
         expect={C.INVALID_ARGUMENT, C.NOT_FOUND} if bad_key else C.NOT_FOUND)
    big = len(v) > 4000 or v == MARK
    case(f"Prepare label key={tag}", SNAP + "Prepare", S.PrepareSnapshotRequest(key=f"l{i}", labels={v: "x"}),
         expect=C.INVALID_ARGUMENT if big else C.OK)
    case(f"Update label value={tag}", SNAP + "Update",
         S.UpdateSnapshotRequest(info=S.Info(name="wire-active", labels={"v": v})), expect=C.INVALID_ARGUMENT if big else C.OK)
    case(f"Remove l{i}", SNAP + "Remove", S.RemoveSnapshotRequest(key=f"l{i}"), expect={C.OK, C.NOT_FOUND})
    case(f"List filter={tag}", SNAP + "List", S.ListSnapshotsRequest(filters=[v]), "server_stream",
         expect=C.INVALID_ARGUMENT if v == MARK else None)

# Sizes for the writable layer's limit: the smallest, too small, too large, overflowing.
for size, want in [("16M", C.OK), ("16777215", C.INVALID_ARGUMENT), ("0", C.OK), ("1T", C.OK), ("16T", C.INVALID_ARGUMENT),
                   ("9223372036854775807", C.INVALID_ARGUMENT), ("99999999999999999999", C.INVALID_ARGUMENT),
                   ("8E", C.INVALID_ARGUMENT), ("-1G", C.INVALID_ARGUMENT), ("1.5G", C.INVALID_ARGUMENT), ("G", C.INVALID_ARGUMENT)]:
    case(f"Prepare disk_quota={size}", SNAP + "Prepare",
         S.PrepareSnapshotRequest(key="quota", parent="wire-committed", labels={"containerd.io/snapshot/disk_quota": size}), expect=want)
    case("Remove quota", SNAP + "Remove", S.RemoveSnapshotRequest(key="quota"), expect={C.OK, C.NOT_FOUND})

# Update's times: containerd's metadata store sends Go's zero time; any value must do.
for s in TIMES:
    for n in NANOS:
        info = S.Info(name="wire-active", labels={"t": "1"}, kind=99, parent="ignored")
        info.created_at.seconds, info.created_at.nanos = s, n
        info.updated_at.seconds, info.updated_at.nanos = s, n
        request = S.UpdateSnapshotRequest(info=info)
        request.update_mask.paths.append("labels.t")
        case(f"Update times {s}.{n}", SNAP + "Update", request, expect=C.OK)

# update_mask paths: only labels may change.
for paths, want in [(["labels."], C.OK), (["labels"], C.OK), (["labels.a.b"], C.OK), (["foo"], C.INVALID_ARGUMENT),
                    (["name"], C.INVALID_ARGUMENT), (["kind"], C.INVALID_ARGUMENT), (["parent"], C.INVALID_ARGUMENT),
                    ([""], C.INVALID_ARGUMENT), (["labels.\x00"], C.OK), ([f"labels.k{i}" for i in range(20000)], C.OK),
                    ([MARK], C.INVALID_ARGUMENT)]:
    request = S.UpdateSnapshotRequest(info=S.Info(name="wire-active", labels={"a.b": "1"}))
    request.update_mask.paths.extend(paths)
    case(f"Update mask {paths[0]!r} (+{len(paths) - 1})", SNAP + "Update", request, expect=want)

# Label maps: 100k entries, huge keys.
many = {f"k{i}": "v" for i in range(100000)}
case("Update 100k labels", SNAP + "Update", S.UpdateSnapshotRequest(info=S.Info(name="wire-active", labels=many)), expect=C.OK)
case("Prepare 100k labels", SNAP + "Prepare", S.PrepareSnapshotRequest(key="many", labels=many), expect=C.OK)
case("List 100k labels", SNAP + "List", S.ListSnapshotsRequest(filters=["labels.k99999==v"]), "server_stream", expect=C.OK)
case("Remove many", SNAP + "Remove", S.RemoveSnapshotRequest(key="many"), expect=C.OK)
case("Update labels reset", SNAP + "Update", S.UpdateSnapshotRequest(info=S.Info(name="wire-active")), expect=C.OK)
case("Prepare 1 MiB label key", SNAP + "Prepare", S.PrepareSnapshotRequest(key="huge", labels={"k" * MiB: "v"}), expect=C.INVALID_ARGUMENT)
case("Prepare 17 MiB request", SNAP + "Prepare", S.PrepareSnapshotRequest(key="k" * (17 * MiB)), expect=C.RESOURCE_EXHAUSTED)

# Filters, a catastrophic regexp among them: the call must end at once.
case("Prepare aaa...!", SNAP + "Prepare", S.PrepareSnapshotRequest(key="a" * 4000 + "!"), expect=C.OK)
for f in ["name~=/^(a+)+$/", "name~=^(a|a)*$", "name~=(a*)*b", "labels.x~=((a{1000}){1000})", "name~=(", "name~=/a{1001}/",
          "kind==", ",", "name==\"x", "labels.\"a\"\"b\"", "parent!=", "name~=[[:foo:]]"]:
    _, _, took = case(f"List {f!r}", SNAP + "List", S.ListSnapshotsRequest(filters=[f]), "server_stream", timeout=20)
    if took > 5:
        failures.append(f"List {f!r}: took {took:.1f} s")
case("Remove aaa...!", SNAP + "Remove", S.RemoveSnapshotRequest(key="a" * 4000 + "!"), expect=C.OK)
case("List 48 filters", SNAP + "List", S.ListSnapshotsRequest(filters=["kind==active"] * 48), "server_stream", expect=C.OK)

# Calls in odd orders.
odd = [
    ("Commit of a missing key", "Commit", S.CommitSnapshotRequest(name="n1", key="missing"), C.NOT_FOUND),
    ("Prepare on a missing parent", "Prepare", S.PrepareSnapshotRequest(key="o1", parent="missing"), C.NOT_FOUND),
    ("Prepare on an active parent", "Prepare", S.PrepareSnapshotRequest(key="o1", parent="wire-active"), {C.FAILED_PRECONDITION, C.INVALID_ARGUMENT}),
    ("View on an active parent", "View", S.ViewSnapshotRequest(key="o1", parent="wire-active"), {C.FAILED_PRECONDITION, C.INVALID_ARGUMENT}),
    ("Prepare twice", "Prepare", S.PrepareSnapshotRequest(key="wire-active"), C.ALREADY_EXISTS),
    ("Prepare over a committed name", "Prepare", S.PrepareSnapshotRequest(key="wire-committed"), C.ALREADY_EXISTS),
    ("Commit onto an existing name", "Commit", S.CommitSnapshotRequest(name="wire-committed", key="wire-active"), C.ALREADY_EXISTS),
    ("Commit of a committed snapshot", "Commit", S.CommitSnapshotRequest(name="n2", key="wire-committed"), {C.FAILED_PRECONDITION, C.NOT_FOUND}),
    ("Prepare child", "Prepare", S.PrepareSnapshotRequest(key="child", parent="wire-committed"), C.OK),
    ("Remove a parent with children", "Remove", S.RemoveSnapshotRequest(key="wire-committed"), C.FAILED_PRECONDITION),
    ("Commit child onto itself", "Commit", S.CommitSnapshotRequest(name="child", key="child"), C.ALREADY_EXISTS),
    ("Remove child", "Remove", S.RemoveSnapshotRequest(key="child"), C.OK),
    ("Remove child again", "Remove", S.RemoveSnapshotRequest(key="child"), C.NOT_FOUND),
    ("Mounts of a removed key", "Mounts", S.MountsRequest(key="child"), C.NOT_FOUND),
    ("Mounts of a committed snapshot", "Mounts", S.MountsRequest(key="wire-committed"), {C.FAILED_PRECONDITION, C.INVALID_ARGUMENT, C.NOT_FOUND}),
    ("Usage of a committed snapshot", "Usage", S.UsageRequest(key="wire-committed"), C.OK),
    ("Usage of an active snapshot", "Usage", S.UsageRequest(key="wire-active"), C.OK),
    ("Cleanup", "Cleanup", S.CleanupRequest(), C.OK),
    ("Cleanup again", "Cleanup", S.CleanupRequest(), C.OK),
    ("View twice (1)", "View", S.ViewSnapshotRequest(key="v1", parent="wire-committed"), C.OK),
    ("View twice (2)", "View", S.ViewSnapshotRequest(key="v1", parent="wire-committed"), C.ALREADY_EXISTS),
    ("Commit a view", "Commit", S.CommitSnapshotRequest(name="n3", key="v1"), {C.FAILED_PRECONDITION, C.INVALID_ARGUMENT}),
    ("Remove a view", "Remove", S.RemoveSnapshotRequest(key="v1"), C.OK),
]
for name, method, request, want in odd:
    case(name, SNAP + method, request, expect=want)

# Malformed protobuf on every method, and an unknown method.
for method, shape in [("Prepare", "unary"), ("View", "unary"), ("Mounts", "unary"), ("Commit", "unary"),
                      ("Remove", "unary"), ("Stat", "unary"), ("Update", "unary"), ("Usage", "unary"),
                      ("Cleanup", "unary"), ("List", "server_stream")]:
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05ab", b"\x12" + MARK.encode()):
        case(f"{method} malformed {garbage[:4]!r}", SNAP + method, garbage, shape, expect=C.INVALID_ARGUMENT)
for method, shape in [("ImportImage", "server_stream"), ("Pull", "server_stream"), ("Usage", "unary"),
                      ("GC", "unary"), ("Check", "server_stream"), ("Info", "unary"), ("Describe", "unary")]:
    for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f"):
        case(f"Store.{method} malformed", STORE + method, garbage, shape, expect=C.INVALID_ARGUMENT)
case("ImportLayer malformed", STORE + "ImportLayer", [b"\xff\xff\xff\xff"], "client_stream", expect=C.INVALID_ARGUMENT)
case("unknown method", SNAP + "Nothing", b"", expect=C.UNIMPLEMENTED)

# ---- Store service ------------------------------------------------------------------------

def header(**fields):
    return T.ImportLayerRequest(header=T.LayerHeader(**fields))


def data(b):
    return T.ImportLayerRequest(data=b)


tar_type = "application/vnd.oci.image.layer.v1.tar"
for path, want in [("/dev/zero", C.INVALID_ARGUMENT), ("/proc/self/mem", C.INVALID_ARGUMENT), ("/", C.INVALID_ARGUMENT),
                   ("..", C.INVALID_ARGUMENT), (fifo, C.INVALID_ARGUMENT), (WORK + "/zero-link", C.INVALID_ARGUMENT),
                   (WORK + "/dir", C.INVALID_ARGUMENT), (WORK + "/missing", C.INVALID_ARGUMENT), ("a\x00b", C.INVALID_ARGUMENT),
                   (MARK, C.INVALID_ARGUMENT), ("a" * MiB, C.INVALID_ARGUMENT), (WORK + "/empty", {C.OK, C.INVALID_ARGUMENT}),
                   (layer_path, C.OK)]:
    case(f"ImportLayer path {path[:40]!r}", STORE + "ImportLayer", [header(media_type=tar_type, path=path)], "client_stream",
         expect=want, timeout=30)
for digest in ["sha256:abc", "sha256:" + "g" * 64, "md5:00", "SHA256:" + "a" * 64, "sha256:" + "A" * 64, MARK, "sha256:" + "a" * 65]:
    case(f"ImportLayer digest {digest[:20]!r}", STORE + "ImportLayer", [header(media_type=tar_type, digest=digest), data(LAYER)],
         "client_stream", expect=C.INVALID_ARGUMENT)
    case(f"ImportLayer diff_id {digest[:20]!r}", STORE + "ImportLayer", [header(media_type=tar_type, diff_id=digest), data(LAYER)],
         "client_stream", expect=C.INVALID_ARGUMENT)
for media in ["", "x", "application/vnd.oci.image.layer.v1.tar+bzip2", MARK, "a" * MiB]:
    case(f"ImportLayer media type {media[:30]!r}", STORE + "ImportLayer", [header(media_type=media), data(LAYER)], "client_stream",
         expect=C.INVALID_ARGUMENT)
for parent in ["missing", "..", MARK, "a\x00b", "wire-active"]:
    case(f"ImportLayer parent {parent!r}", STORE + "ImportLayer", [header(media_type=tar_type, parent=parent), data(LAYER)],
         "client_stream", expect={C.NOT_FOUND, C.INVALID_ARGUMENT, C.FAILED_PRECONDITION})
# Streamed blobs of every media type: valid, cut, garbage, empty, the wrong compression.
for media, blob in TYPES.items():
    short = media.rsplit("/", 1)[-1]
    case(f"ImportLayer streamed {short}", STORE + "ImportLayer", [header(media_type=media), data(blob[:1000]), data(b""), data(blob[1000:])],
         "client_stream", expect=C.OK)
    case(f"ImportLayer streamed {short} with digest", STORE + "ImportLayer",
         [header(media_type=media, digest=sha(blob), diff_id=sha(LAYER)), data(blob)], "client_stream", expect=C.OK)
    case(f"ImportLayer streamed {short} wrong digest", STORE + "ImportLayer",
         [header(media_type=media, digest=sha(b"x")), data(blob)], "client_stream", expect=C.INVALID_ARGUMENT)
    # Cut inside the last file's data (a plain tar cut in its end-of-archive padding is whole).
    cut = LAYER.find(b"echo hi") + 10 if blob is LAYER else len(blob) // 2
    case(f"ImportLayer streamed {short} cut", STORE + "ImportLayer", [header(media_type=media), data(blob[:cut])],
         "client_stream", expect=C.INVALID_ARGUMENT)
    case(f"ImportLayer streamed {short} garbage", STORE + "ImportLayer", [header(media_type=media), data(os.urandom(70000))],
         "client_stream", expect=C.INVALID_ARGUMENT)
    case(f"ImportLayer streamed {short} empty", STORE + "ImportLayer", [header(media_type=media)], "client_stream",
         expect={C.OK, C.INVALID_ARGUMENT})
    wrong = LAYER_ZST if blob is LAYER_GZ else LAYER_GZ
    if "docker.image.rootfs" in media and "gzip" not in media:
        continue  # any compression is right for it
    case(f"ImportLayer streamed {short} wrong compression", STORE + "ImportLayer", [header(media_type=media), data(wrong)],
         "client_stream", expect=C.INVALID_ARGUMENT)
case("ImportLayer no messages", STORE + "ImportLayer", [], "client_stream", expect=C.INVALID_ARGUMENT)
case("ImportLayer data first", STORE + "ImportLayer", [data(LAYER)], "client_stream", expect=C.INVALID_ARGUMENT)
case("ImportLayer two headers", STORE + "ImportLayer", [header(media_type=tar_type), header(media_type=tar_type)], "client_stream",
     expect=C.INVALID_ARGUMENT)
case("ImportLayer empty header", STORE + "ImportLayer", [T.ImportLayerRequest()], "client_stream", expect=C.INVALID_ARGUMENT)
case("ImportLayer 16 MiB + 1 message", STORE + "ImportLayer", [header(media_type=tar_type), data(b"\0" * (16 * MiB + 1))],
     "client_stream", expect=C.RESOURCE_EXHAUSTED)

for path, want in [("", C.INVALID_ARGUMENT), ("/dev/zero", C.INVALID_ARGUMENT), ("/", C.INVALID_ARGUMENT), (fifo, C.INVALID_ARGUMENT),
                   ("/proc/self/mem", C.INVALID_ARGUMENT), (WORK + "/missing", C.INVALID_ARGUMENT), (MARK, C.INVALID_ARGUMENT),
                   (zero_index, C.INVALID_ARGUMENT), (fifo_index, C.INVALID_ARGUMENT), (fifo_layer, C.INVALID_ARGUMENT),
                   (zero_layer, C.INVALID_ARGUMENT), (big_manifest, C.INVALID_ARGUMENT), (layer_path, C.INVALID_ARGUMENT),
                   (good_layout, C.OK)]:
    case(f"ImportImage {path[len(WORK):] if path.startswith(WORK) else path!r}", STORE + "ImportImage", T.ImportImageRequest(path=path),
         "server_stream", expect=want, timeout=30)

for ref, platform, want in [("", "", C.INVALID_ARGUMENT), ("../x", "", C.INVALID_ARGUMENT), (".x/y", "", C.INVALID_ARGUMENT),
                            ("a..b/c", "", C.INVALID_ARGUMENT), ("127.0.0.1:1/x/y:1", "", C.UNAVAILABLE),
                            ("127.0.0.1:1/x/y:1", "linux\x00/amd64", C.INVALID_ARGUMENT), ("127.0.0.1:1/x", "a/b/c/d", C.INVALID_ARGUMENT),
                            ("127.0.0.1:1/x", "linux/../amd64", C.INVALID_ARGUMENT), ("a" * MiB, "", C.INVALID_ARGUMENT),
                            (MARK, "", C.INVALID_ARGUMENT), ("127.0.0.1:1/x", MARK, C.INVALID_ARGUMENT),
                            ("127.0.0.1:99999/x", "", C.INVALID_ARGUMENT), ("x@sha256:abc", "", C.INVALID_ARGUMENT),
                            ("UPPER/case", "", C.INVALID_ARGUMENT)]:
    case(f"Pull {ref[:30]!r} {platform!r}", STORE + "Pull", T.PullRequest(reference=ref, platform=platform), "server_stream",
         expect=want, timeout=60)

for method, request, shape in [("Usage", T.StoreUsageRequest(), "unary"), ("Info", T.InfoRequest(), "unary"),
                               ("GC", T.GCRequest(), "unary"), ("Check", T.CheckRequest(), "server_stream"),
                               ("Check", T.CheckRequest(repair=True), "server_stream"),
                               ("Describe", T.DescribeRequest(key="wire-active"), "unary")]:
    case(f"Store.{method}", STORE + method, request, shape, expect=C.OK)

# An import the client cancels stops: a sparse 1 TiB file read as a plain tar (zeros end
# the archive at once, but the whole blob is hashed) would take ten minutes or more. The
# deadline is generous (a fresh machine's disk, still writing out a build, has held the
# import's start for 20 s); what it tells apart is stopping from running to the end.


def daemon_threads():
    """What each snapshotd thread waits in (kernel wchan), to explain a stop that hangs."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            if not pid.isdigit() or open(f"/proc/{pid}/comm").read().strip() != "snapshotd":
                continue
            for tid in os.listdir(f"/proc/{pid}/task"):
                wchan = open(f"/proc/{pid}/task/{tid}/wchan").read()
                out.append(wchan if wchan not in ("", "0") else "running")
        except OSError:
            pass
    return ", ".join(sorted(out))


big = os.path.join(WORK, "sparse.tar")
with open(big, "wb") as f:
    f.truncate(1 << 40)
calls += 1
future = channel.stream_unary(STORE + "ImportLayer").future(iter([encode(header(media_type=tar_type, path=big))]), timeout=3600)
time.sleep(1.5)
future.cancel()
cancelled = time.monotonic()
deadline = cancelled + 90
while time.monotonic() < deadline:
    with open(LOG, errors="replace") as f:
        if "ImportLayer cancelled by the client" in f.read():
            print(f"a cancelled ImportLayer of a 1 TiB file stopped in {time.monotonic() - cancelled:.1f} s")
            break
    time.sleep(0.2)
else:
    failures.append(f"a cancelled ImportLayer of a 1 TiB file did not stop within 90 s; threads wait in: {daemon_threads()}")
if not alive():
    failures.append("the daemon no longer answers after a cancelled import")
os.unlink(big)

report()
