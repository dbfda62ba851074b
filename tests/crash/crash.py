#!/usr/bin/env python3
"""Helpers of tests/crash/run (see there): layer tarballs, the random workload of one worker
for one round, and what is checked after each restart against the journal of acknowledged
operations.

    crash.py tars                 layer tarballs and the manifests of their chains
    crash.py worker W ROUND N     worker W of N: random operations until T/stop exists,
                                  journaled in T/journal (start, then ack or fail)
    crash.py dedup-pending ROUND  at a crash: had an acknowledged commit's conversion not finished?
    crash.py settle ROUND         after a restart: check, reconcile the model (T/model.json)
                                  with the journal and the listing, verify every snapshot
    crash.py converted            every committed snapshot has been made stubs (per the log)
    crash.py final                remove every snapshot, children first
    crash.py stats WHAT, bump WHAT  the numbers the "ok:" lines print

Environment: T (the test's directory), SNAPCTL (the binary), SEED.

A manifest maps each path of a snapshot's tree to {"t": "d", "mode"}, {"t": "l", "target"} or
{"t": "f", "mode", "size", "sha", "mtime" (ns), "grp"}; names of one inode share "grp", and
each regular file's link count is the number of names of its group.
"""
import copy
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time

T = os.environ["T"]
SNAPCTL = os.environ["SNAPCTL"]
SEED = int(os.environ.get("SEED", "0"))
SOCK = f"{T}/s.sock"
JOURNAL = f"{T}/journal"
MODEL = f"{T}/model.json"
LOG = f"{T}/snapshotd.log"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"


class Failure(Exception):
    pass


def snapctl(*args, timeout=180):
    try:
        p = subprocess.run([SNAPCTL, "--address", SOCK, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"snapctl {' '.join(args)} did not return within {timeout} s")
    return p.returncode, p.stdout, p.stderr


def must(*args):
    rc, out, err = snapctl(*args)
    if rc != 0:
        raise Failure(f"snapctl {' '.join(args)} exited {rc}: {err.strip() or out.strip()}")
    return out


def live():
    """name -> (kind, parent) of every snapshot the daemon lists."""
    return {s["name"]: (s["kind"], s["parent"] or None) for s in json.loads(must("--json", "list"))}


def load(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def save(path, value):
    with open(path + ".new", "w") as f:
        json.dump(value, f)
    os.rename(path + ".new", path)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def pool():
    """Contents shared by the layers and the workload (equal files across both), none empty;
    two of them above the 256 KiB the store hashes before writing."""
    rng = random.Random(SEED)
    small = [f"shared content {i}\n".encode() * (1 + 7 * i) for i in range(12)]
    return small + [rng.randbytes(100 << 10), rng.randbytes(300 << 10)]


def bigs():
    rng = random.Random(SEED + 1)
    return [rng.randbytes(4 << 20), rng.randbytes(1 << 20)]


# --- Layer tarballs ---------------------------------------------------------------------------

class Layer:
    def __init__(self, name):
        self.name, self.members, self.man = name, [], {}

    def _add(self, info, data=None):
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        self.members.append((info, data))

    def dir(self, path, mode=0o755):
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 1600000000
        self._add(info)
        self.man[path] = {"t": "d", "mode": mode}

    def file(self, path, data, mode=0o644, mtime=1600000000):
        info = tarfile.TarInfo(path)
        info.size, info.mode, info.mtime = len(data), mode, mtime
        self._add(info, data)
        self.man[path] = {"t": "f", "mode": mode, "size": len(data), "sha": sha(data), "mtime": mtime * 10**9,
                          "grp": f"{self.name}:{path}"}

    def hardlink(self, path, target):
        # As tar writes one: the link's header carries its inode's mode and mtime (the
        # applier, as containerd's, applies a link header to the inode it shares).
        info = tarfile.TarInfo(path)
        of = next(i for i, _ in self.members if i.name == target)
        info.type, info.linkname, info.mode, info.mtime = tarfile.LNKTYPE, target, of.mode, of.mtime
        self._add(info)
        self.man[path] = dict(self.man[target])

    def symlink(self, path, target):
        info = tarfile.TarInfo(path)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self._add(info)
        self.man[path] = {"t": "l", "target": target}

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for info, data in self.members:
                t.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def make_layers():
    rng = random.Random(SEED + 2)
    contents = pool()
    modes = [0o644, 0o600, 0o755, 0o640, 0o444]
    base = Layer("base")  # many small files, equal contents, empty files, a hard link, setuid
    for d in ["etc", "etc/conf.d", "usr", "usr/bin", "usr/share", "usr/share/doc", "var", "var/empty"]:
        base.dir(d)
    base.dir("secret", 0o700)
    for i in range(8):
        base.dir(f"usr/share/doc/d{i}", rng.choice([0o755, 0o750]))
    for i in range(160):
        base.file(f"usr/share/doc/d{i % 8}/f{i}", rng.choice(contents), rng.choice(modes), 1600000000 + i)
    for i in range(10):
        base.file(f"etc/conf{i}", f"conf {i}\n".encode())
    for i in range(8):
        base.file(f"etc/empty{i}", b"", rng.choice(modes))
    base.file("usr/bin/tool", contents[-1], 0o755)
    base.hardlink("usr/bin/tool-alias", "usr/bin/tool")
    base.file("usr/bin/suid", contents[3], 0o4755)
    base.file("secret/key", b"secret\n", 0o600)
    base.symlink("usr/bin/t", "tool")
    base.symlink("etc/link", "conf.d")

    extra = Layer("extra")  # on base or other: overrides three files, a three-name hard link
    for d in ["etc", "opt", "opt/extra"] + [f"opt/extra/s{j}" for j in range(6)]:
        extra.dir(d)
    for i in range(120):
        extra.file(f"opt/extra/s{i % 6}/g{i}", rng.choice(contents), rng.choice(modes), 1610000000 + i)
    for i in range(3):
        extra.file(f"etc/conf{i}", f"conf {i} from extra\n".encode(), 0o640)
    extra.file("opt/extra/h1", contents[5])
    extra.hardlink("opt/extra/h2", "opt/extra/h1")
    extra.hardlink("opt/extra/h3", "opt/extra/h1")
    for i in range(5):
        extra.file(f"opt/extra/empty{i}", b"")
    extra.symlink("opt/extra/up", "../../etc/conf0")

    big = Layer("big")  # a few MiB
    big.dir("big")
    b = bigs()
    big.file("big/blob0", b[0])
    big.file("big/blob1", b[1], 0o600)
    big.file("big/small", contents[0])
    big.file("big/empty", b"")

    other = Layer("other")  # the same contents as base's under other names, modes and times
    for d in ["etc", "opt", "opt/other"]:
        other.dir(d)
    for i in range(100):
        other.file(f"opt/other/o{i}", rng.choice(contents), rng.choice(modes), 1620000000 + i)
    other.file("opt/other/tool", contents[-1], 0o700)
    other.hardlink("opt/other/tool2", "opt/other/tool")
    other.file("opt/other/empty", b"")
    other.symlink("opt/other/link", "o1")
    return {"base": (base, False), "extra": (extra, True), "big": (big, True), "other": (other, False)}


def cmd_tars():
    d = f"{T}/tars"
    os.makedirs(d, exist_ok=True)
    layers = {}
    for name, (layer, gz) in make_layers().items():
        raw = layer.tar()
        path = f"{d}/{name}.tar" + (".gz" if gz else "")
        with open(path, "wb") as f:
            f.write(gzip.compress(raw, mtime=0) if gz else raw)
        layers[name] = (path, OCI_TAR + ("+gzip" if gz else ""), "sha256:" + sha(raw), layer.man)
    chains = []
    for stack in [["base"], ["base", "extra"], ["base", "big"], ["big"], ["other"], ["other", "extra"],
                  ["base", "extra", "big"]]:
        chain, man = None, {}
        for name in stack:
            parent = chain
            diff = layers[name][2]
            chain = diff if parent is None else "sha256:" + sha(f"{parent} {diff}".encode())
            man.update(layers[name][3])
        mpath = f"{d}/{'-'.join(stack)}.json"
        save(mpath, man)
        path, media = layers[stack[-1]][:2]
        chains.append({"id": chain, "name": "/".join(stack), "file": path, "media": media, "parent": parent,
                       "man": mpath})
    save(f"{d}/chains.json", chains)
    for c in chains:
        print(f"{c['name']:16} {c['id']}")


# --- Checking a mounted tree against a manifest -----------------------------------------------

def compare(root, man):
    """What differs between the tree mounted at root and the manifest."""
    bad, seen, ino_of, grp_of = [], set(), {}, {}
    sizes = {}
    for e in man.values():
        if e["t"] == "f":
            sizes[e["grp"]] = sizes.get(e["grp"], 0) + 1
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            seen.add(rel)
            try:
                st = os.lstat(p)
            except OSError as e:
                bad.append(f"{rel}: lstat: {e}")
                continue
            want = man.get(rel)
            if want is None:
                bad.append(f"{rel}: not written, yet there (mode {oct(st.st_mode)})")
                continue
            fmt = st.st_mode & 0o170000
            kind = {0o040000: "d", 0o100000: "f", 0o120000: "l"}.get(fmt, oct(fmt))
            if kind != want["t"]:
                bad.append(f"{rel}: a {kind}, written as a {want['t']}")
                continue
            if kind == "l":
                if os.readlink(p) != want["target"]:
                    bad.append(f"{rel}: symlink to {os.readlink(p)!r}, written {want['target']!r}")
                continue
            if st.st_mode & 0o7777 != want["mode"]:
                bad.append(f"{rel}: mode {oct(st.st_mode & 0o7777)}, written {oct(want['mode'])}")
            if kind == "d":
                continue
            if st.st_size != want["size"]:
                bad.append(f"{rel}: size {st.st_size}, written {want['size']}")
            try:
                with open(p, "rb") as f:
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                if h.hexdigest() != want["sha"]:
                    bad.append(f"{rel}: content differs from what was written ({st.st_size} bytes)")
            except OSError as e:
                bad.append(f"{rel}: read: {e}")
            if st.st_mtime_ns != want["mtime"]:
                bad.append(f"{rel}: mtime {st.st_mtime_ns}, written {want['mtime']}")
            g = want["grp"]
            if st.st_nlink != sizes[g]:
                bad.append(f"{rel}: {st.st_nlink} links, written {sizes[g]}")
            if ino_of.setdefault(g, st.st_ino) != st.st_ino:
                bad.append(f"{rel}: inode {st.st_ino}, yet a hard link of the file with inode {ino_of[g]}")
            if grp_of.setdefault(st.st_ino, (g, rel))[0] != g:
                bad.append(f"{rel}: shares inode {st.st_ino} with {grp_of[st.st_ino][1]}, another file")
    for rel in sorted(set(man) - seen):
        bad.append(f"{rel}: written, missing")
    return bad


def verify_mounted(key, mnt, man_path, what):
    bad = compare(mnt, load(man_path))
    if bad:
        more = f"\n  ... and {len(bad) - 25} more" if len(bad) > 25 else ""
        raise Failure(f"{what} {key}: the mounted view differs from the manifest {man_path}:\n  "
                      + "\n  ".join(bad[:25]) + more)


# --- The workload -----------------------------------------------------------------------------

MODES = [0o644, 0o600, 0o755, 0o640, 0o444]


def write_tree(mnt, man, rng, key, contents, big):
    """Writes into the mounted active snapshot: new files of shared contents, an empty file, a
    hard link, a symlink, sometimes a few MiB, and changes to the parent's files (rewrite,
    chmod, delete). Returns the manifest of the result."""
    man = copy.deepcopy(man)
    touched = []  # regular files whose mtime is read back
    d = f"n.{key}"
    for path, mode in [(d, 0o755), (f"{d}/sub", 0o750)]:
        os.mkdir(f"{mnt}/{path}")
        os.chmod(f"{mnt}/{path}", mode)
        man[path] = {"t": "d", "mode": mode}
    files = []
    for i in range(rng.randint(3, 12)):
        p = f"{rng.choice([d, d + '/sub'])}/f{i}"
        data, mode = rng.choice(contents), rng.choice(MODES)
        with open(f"{mnt}/{p}", "wb") as f:
            f.write(data)
        os.chmod(f"{mnt}/{p}", mode)
        man[p] = {"t": "f", "mode": mode, "size": len(data), "sha": sha(data), "grp": f"{key}:{p}"}
        files.append(p)
        touched.append(p)
    with open(f"{mnt}/{d}/empty", "wb"):
        pass
    os.chmod(f"{mnt}/{d}/empty", 0o644)
    man[f"{d}/empty"] = {"t": "f", "mode": 0o644, "size": 0, "sha": sha(b""), "grp": f"{key}:{d}/empty"}
    touched.append(f"{d}/empty")
    src = rng.choice(files)
    for j in range(rng.randint(1, 2)):
        os.link(f"{mnt}/{src}", f"{mnt}/{d}/hl{j}")
        man[f"{d}/hl{j}"] = man[src]  # the same dict: its mtime is filled once
    os.symlink("sub/../f0", f"{mnt}/{d}/sym")
    man[f"{d}/sym"] = {"t": "l", "target": "sub/../f0"}
    if rng.random() < 0.3:  # many: a conversion that takes a while
        os.mkdir(f"{mnt}/{d}/many")
        man[f"{d}/many"] = {"t": "d", "mode": 0o755}
        for i in range(rng.randint(100, 300)):
            p, data = f"{d}/many/m{i}", rng.choice(contents)
            with open(f"{mnt}/{p}", "wb") as f:
                f.write(data)
            man[p] = {"t": "f", "mode": 0o644, "size": len(data), "sha": sha(data), "grp": f"{key}:{p}"}
            touched.append(p)
    if rng.random() < 0.35:
        data = rng.choice(big + [rng.randbytes(rng.randint(1 << 20, 3 << 20))])
        with open(f"{mnt}/{d}/big", "wb") as f:
            f.write(data)
        man[f"{d}/big"] = {"t": "f", "mode": 0o644, "size": len(data), "sha": sha(data), "grp": f"{key}:{d}/big"}
        touched.append(f"{d}/big")
    # The parent's regular files with a single name (a hard link's other name would keep the
    # lower inode's link count).
    counts = {}
    for e in man.values():
        if e["t"] == "f":
            counts[e["grp"]] = counts.get(e["grp"], 0) + 1
    lower = sorted(p for p, e in man.items() if e["t"] == "f" and counts[e["grp"]] == 1 and not p.startswith(d + "/"))
    rng.shuffle(lower)
    if lower and rng.random() < 0.5:  # rewritten: a full copy-up
        p = lower.pop()
        data = rng.choice(contents)
        with open(f"{mnt}/{p}", "wb") as f:
            f.write(data)
        man[p] = dict(man[p], size=len(data), sha=sha(data), grp=f"{key}:{p}")
        touched.append(p)
    if lower and rng.random() < 0.3:  # chmod: a metadata-only copy-up (metacopy=on)
        p = lower.pop()
        mode = 0o600 if man[p]["mode"] != 0o600 else 0o644
        os.chmod(f"{mnt}/{p}", mode)
        man[p] = dict(man[p], mode=mode, grp=f"{key}:{p}")
    if lower and rng.random() < 0.3:  # deleted: a whiteout
        p = lower.pop()
        os.unlink(f"{mnt}/{p}")
        del man[p]
    for p in touched:
        man[p]["mtime"] = os.lstat(f"{mnt}/{p}").st_mtime_ns
    return man


def cmd_worker(w, rnd, nworkers):
    w, rnd, nworkers = int(w), int(rnd), int(nworkers)
    rng = random.Random(f"{SEED}/{rnd}/{w}")
    contents, big = pool(), bigs()
    model = load(MODEL)
    chains = load(f"{T}/tars/chains.json")
    snaps = model["snap"]
    # Snapshots this worker may build on (every committed one), and those it owns.
    known = {n: s["man"] for n, s in snaps.items() if s["kind"] == "committed"}
    actives = {n: dict(s) for n, s in snaps.items() if s["kind"] == "active" and s["owner"] == w}
    mine = [n for n, s in snaps.items() if s["kind"] == "committed" and s["owner"] == w and s["src"] == "commit"]
    my_chains = [c for i, c in enumerate(chains) if i % nworkers == w]
    fd = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seq = 0
    open(f"{T}/ready.{rnd}.{w}", "w").close()  # the round's clock starts when every worker is

    def journal(**entry):
        os.write(fd, (json.dumps(entry) + "\n").encode())

    def op(kind, args, **fields):
        """Runs one snapctl call as a journaled operation; its exit code."""
        nonlocal seq
        seq += 1
        oid = f"{rnd}.{w}.{seq}"
        journal(id=oid, r=rnd, w=w, ph="start", op=kind, t=time.time(), **fields)
        rc, out, err = snapctl(*args)
        journal(id=oid, ph="ack" if rc == 0 else "fail", rc=rc, t=time.time(), err=err.strip()[-400:],
                out=out.strip()[-2000:] if kind in ("import", "check") or rc else "")
        return rc, out

    def usable(rc):
        # 3 (a parent removed meanwhile) and 5 (a snapshot with children) are answers; any other
        # failure ends the round for this worker: the daemon is gone, or settle will judge.
        if rc not in (0, 3, 5):
            sys.exit(0)
        return rc == 0

    n = 0
    while not os.path.exists(f"{T}/stop"):
        n += 1
        unwritten = [k for k, a in actives.items() if a["man"] is None]
        written = [k for k, a in actives.items() if a["man"] is not None]
        importable = [c for c in my_chains if c["id"] not in known and (c["parent"] is None or c["parent"] in known)]
        present = [c for c in my_chains if c["id"] in known]
        mine = [m for m in mine if m in known]
        choices = [("write", 6 if unwritten else 0), ("commit", 6 if written else 0),
                   ("prepare", 4 if len(actives) < 2 else 0), ("import", 3 if importable else 0),
                   ("reimport", 0.3 if present else 0), ("remove", (1 + 3 * (len(mine) >= 4)) if mine else 0),
                   ("remove-layer", 0.6 if present else 0), ("view", 1 if known else 0),
                   ("remove-active", 0.3 if unwritten else 0), ("gc", 0.25), ("check", 0.25)]
        kind = rng.choices([c[0] for c in choices], [c[1] for c in choices])[0]
        if kind in ("import", "reimport"):
            c = rng.choice(importable if kind == "import" else present)
            args = ["import-layer", c["file"], "--media-type", c["media"]] + (["--parent", c["parent"]] if c["parent"] else [])
            rc, out = op("import", args, name=c["id"], parent=c["parent"], man=c["man"])
            if usable(rc):
                got = out.strip().splitlines()[-1] if out.strip() else ""
                if got != c["id"]:
                    raise Failure(f"import-layer {c['name']} printed chainID {got!r}, expected {c['id']}")
                known[c["id"]] = c["man"]
        elif kind == "prepare":
            parent = rng.choice(sorted(known)) if known and rng.random() < 0.85 else None
            key = f"a{rnd}.{w}.{n}"
            if usable(op("prepare", ["prepare", key] + ([parent] if parent else []), name=key, parent=parent)[0]):
                actives[key] = {"parent": parent, "man": None}
        elif kind == "write":
            key = rng.choice(unwritten)
            mnt = f"{T}/mnt/{key}"
            os.makedirs(mnt, exist_ok=True)
            parent = actives[key]["parent"]
            base = load(known[parent] if parent in known else snaps[parent]["man"]) if parent else {}
            if not usable(op("mount", ["mount", key, mnt], name=key)[0]):
                continue
            man = write_tree(mnt, base, rng, key, contents, big)
            must("umount", mnt)  # needs no daemon
            path = f"{T}/man/{key}.json"
            save(path, man)
            journal(id=f"{rnd}.{w}.w{n}", r=rnd, w=w, ph="start", op="write", name=key, man=path, t=time.time())
            journal(id=f"{rnd}.{w}.w{n}", ph="ack", rc=0, t=time.time())
            actives[key]["man"] = path
        elif kind == "commit":
            key = rng.choice(written)
            name = f"c{rnd}.{w}.{n}"
            if usable(op("commit", ["commit", name, key], name=name, key=key, man=actives[key]["man"])[0]):
                known[name] = actives.pop(key)["man"]
                mine.append(name)
                open(f"{T}/committed.{rnd}", "a").close()
        elif kind in ("remove", "remove-layer", "remove-active"):
            name = rng.choice(mine if kind == "remove" else [c["id"] for c in present] if kind == "remove-layer" else unwritten)
            if usable(op("remove", ["remove", name], name=name)[0]):
                known.pop(name, None)
                actives.pop(name, None)
        elif kind == "view":
            parent = rng.choice(sorted(known))
            v = f"v{rnd}.{w}.{n}"
            if not usable(op("view", ["view", v, parent], name=v, parent=parent)[0]):
                continue
            mnt = f"{T}/mnt/{v}"
            os.makedirs(mnt, exist_ok=True)
            if not usable(op("mount", ["mount", v, mnt], name=v)[0]):
                continue
            try:
                verify_mounted(parent, mnt, known[parent], f"round {rnd}: worker {w}'s view {v} of")
            finally:
                must("umount", mnt)
            usable(op("remove", ["remove", v], name=v)[0])
        elif kind == "gc":
            usable(op("gc", ["gc"])[0])
        elif kind == "check":
            usable(op("check", ["check"])[0])


# --- After a restart --------------------------------------------------------------------------

def entries(rnd):
    """This round's operations, each a start entry with its end ("ack"/"fail", or None)."""
    ops, order = {}, []
    if os.path.exists(JOURNAL):
        with open(JOURNAL) as f:
            for line in f:
                e = json.loads(line)
                if e["ph"] == "start":
                    if e["r"] != rnd:
                        continue
                    ops[e["id"]] = {"start": e, "end": None}
                    order.append(e["id"])
                elif e["id"] in ops:
                    ops[e["id"]]["end"] = e
    return [ops[i] for i in order]


def new_model():
    return {"snap": {}, "gone": [], "stats": {"acked": {}, "uncertain": {}, "verified": 0, "checks": 0,
                                              "startup_crashes": 0, "dedup_pending": 0}}


def count(stats, kind, op):
    stats[kind][op] = stats[kind].get(op, 0) + 1


def cmd_settle(rnd):
    rnd = int(rnd)
    # 1. Right after the restart, before anything else: the store is consistent.
    rc, out, err = snapctl("check")
    if rc != 0:
        orphans = "orphan" in out
        raise Failure(("ORPHANS reported by `snapctl check` right after the crash" if orphans else "`snapctl check` failed right after the crash")
                      + f" of round {rnd} (exit {rc}):\n{out}{err}")
    model = load(MODEL) or new_model()
    snaps, gone, stats = model["snap"], set(model["gone"]), model["stats"]
    stats["checks"] += 1
    chains = {c["id"]: c for c in load(f"{T}/tars/chains.json")}
    owner_of_chain = {c["id"]: i for i, c in enumerate(load(f"{T}/tars/chains.json"))}
    kill = load(f"{T}/kill.{rnd}")  # when the daemon was killed (None: round 0, no workload)
    now = live()

    # 2. Apply this round's acknowledged operations to the model; resolve the uncertain ones
    # (in flight at the crash) from what the daemon lists: either outcome is allowed.
    def created(name, **s):
        snaps[name] = s
        gone.discard(name)

    def removed(name):
        snaps.pop(name, None)
        gone.add(name)

    removed_now = set()
    for o in entries(rnd):
        s, e = o["start"], o["end"]
        kind, name = s["op"], s.get("name")
        if e is not None and e["rc"] in (3, 5):
            continue  # refused: nothing changed (the listing below would show otherwise)
        if e is not None and e["rc"] != 0 and (kill is None or e["t"] < kill):
            raise Failure(f"round {rnd}: {kind} {name or ''} failed while the daemon was up (exit {e['rc']}): {e['err']} {e['out']}")
        if e is not None and e["rc"] == 0:
            count(stats, "acked", kind)
            if kind == "import":
                created(name, kind="committed", parent=s["parent"], man=s["man"], owner=owner_of_chain[name], src="import")
            elif kind == "prepare":
                created(name, kind="active", parent=s["parent"], man=None, owner=s["w"], src="prepare")
            elif kind == "write":
                snaps[name]["man"] = s["man"]
            elif kind == "commit":
                a = snaps.pop(s["key"])
                gone.add(s["key"])
                created(name, kind="committed", parent=a["parent"], man=a["man"], owner=s["w"], src="commit")
            elif kind == "view":
                created(name, kind="view", parent=s["parent"], man=None, owner=s["w"], src="view")
            elif kind == "remove":
                removed(name)
                removed_now.add(name)
            continue
        # In flight when the daemon died (or failed because it did).
        count(stats, "uncertain", kind)
        if kind == "import":
            if name in now:
                created(name, kind="committed", parent=s["parent"], man=s["man"], owner=owner_of_chain[name], src="import")
        elif kind == "prepare":
            if name in now:
                created(name, kind="active", parent=s["parent"], man=None, owner=s["w"], src="prepare")
        elif kind == "view":
            if name in now:
                created(name, kind="view", parent=s["parent"], man=None, owner=s["w"], src="view")
        elif kind == "commit":
            key, a = s["key"], snaps[s["key"]]
            if (name in now) == (key in now):
                raise Failure(f"round {rnd}: commit {name} {key} was in flight at the crash; after the restart "
                              f"{'both' if name in now else 'neither'} of {name} (committed) and {key} (active) exist")
            if name in now:
                snaps.pop(key)
                gone.add(key)
                created(name, kind="committed", parent=a["parent"], man=a["man"], owner=s["w"], src="commit")
        elif kind == "remove":
            if name not in now:
                removed(name)

    # 3. Acknowledged snapshots are there, as they were made; removed ones are gone; nothing else.
    problems = []
    for name, s in sorted(snaps.items()):
        if name not in now:
            problems.append(f"{s['kind']} snapshot {name} ({s['src']} acknowledged) is gone")
        elif now[name] != (s["kind"], s["parent"]):
            problems.append(f"{name}: listed as {now[name]}, made as {(s['kind'], s['parent'])}")
    for name in sorted(gone & set(now)):
        problems.append(f"{name}: removed (acknowledged), yet listed as {now[name]}")
    for name in sorted(set(now) - set(snaps) - gone):
        problems.append(f"{name}: listed as {now[name]}, yet never acknowledged nor in flight")
    for name in sorted(removed_now & gone):  # stat agrees: not found
        rc, out, err = snapctl("stat", name)
        if rc != 3:
            problems.append(f"{name}: removed (acknowledged), yet `snapctl stat` exits {rc}: {out.strip()} {err.strip()}")
    if problems:
        raise Failure(f"after the crash of round {rnd}:\n  " + "\n  ".join(problems))

    # 4. Views, and active snapshots whose writes are not known, go (leaves: nothing builds on them).
    garbage = sorted(n for n, s in snaps.items() if s["kind"] == "view" or (s["kind"] == "active" and s["man"] is None))
    if garbage:
        must("remove", *garbage)
        count(stats, "acked", "remove")
        for n in garbage:
            removed(n)

    # 5. Every committed snapshot and imported chain, through a view mounted read-only.
    committed = sorted(n for n, s in snaps.items() if s["kind"] == "committed")
    views = []
    try:
        for i, name in enumerate(committed):
            v, mnt = f"chk{rnd}.{i}", f"{T}/chk/{rnd}.{i}"
            os.makedirs(mnt)
            info = json.loads(must("--json", "stat", name))
            if (info["kind"], info["parent"] or None) != ("committed", snaps[name]["parent"]):
                raise Failure(f"after the crash of round {rnd}: snapctl stat {name}: {info}, made as committed on {snaps[name]['parent']}")
            must("view", v, name)
            views.append(v)
            must("mount", v, mnt)
            try:
                verify_mounted(name, mnt, snaps[name]["man"], f"after the crash of round {rnd}: {WHAT[snaps[name]['src']]}")
            finally:
                must("umount", mnt)
            stats["verified"] += 1
    finally:
        if views:
            must("remove", *views)
    model["gone"] = sorted(gone)
    save(MODEL, model)
    print(f"round {rnd}: {len(committed)} committed verified, "
          f"{sum(1 for s in snaps.values() if s['kind'] == 'active')} written active, removed {len(garbage)}")


WHAT = {"import": "imported chain", "commit": "committed snapshot"}


def converted_pending():
    """Committed snapshots made by commit whose conversion (image or stubs) the log does not show."""
    model = load(MODEL)
    with open(LOG, errors="replace") as f:
        done = {w[4:] for line in f if "deduplicated snapshot" in line for w in line.split() if w.startswith("key=")}
    return sorted(n for n, s in model["snap"].items() if s["src"] == "commit" and n not in done)


def cmd_converted():
    # Up to a minute: after the last restart the daemon converts every snapshot a crash left
    # unconverted, one after another (a debug build on a busy 2-core machine took over 10 s).
    for _ in range(600):
        pending = converted_pending()
        if not pending:
            return
        time.sleep(0.1)
    raise Failure(f"committed snapshots never converted (no 'deduplicated snapshot' in the log): {pending}")


def cmd_dedup_pending(rnd):
    """At a crash: commits acknowledged this round whose conversion had not finished."""
    model = load(MODEL)
    with open(LOG, errors="replace") as f:
        done = {w[4:] for line in f if "deduplicated snapshot" in line for w in line.split() if w.startswith("key=")}
    acked = {o["start"]["name"]: o["end"]["t"] for o in entries(int(rnd))
             if o["start"]["op"] == "commit" and o["end"] and o["end"]["rc"] == 0}
    pending = [n for n in acked if n not in done]
    model["stats"]["dedup_pending"] += bool(pending)
    save(MODEL, model)


def cmd_final():
    model = load(MODEL)
    now = live()
    order, left = [], dict(now)
    while left:  # children first
        parents = {p for _, p in left.values()}
        leaves = sorted(n for n in left if n not in parents)
        order += leaves
        for n in leaves:
            del left[n]
    if order:
        must("remove", *order)
        model["stats"]["acked"]["remove"] = model["stats"]["acked"].get("remove", 0) + 1
    if live():
        raise Failure(f"snapshots left after removing all: {live()}")
    model["snap"], model["gone"] = {}, sorted(set(model["gone"]) | set(order))
    save(MODEL, model)
    print(len(order))


def cmd_stats(what):
    s = load(MODEL)["stats"]
    if what == "acked":
        a = s["acked"]
        print(f"{sum(a.values())} operations acknowledged ("
              + ", ".join(f"{k} {v}" for k, v in sorted(a.items())) + "), "
              + f"{sum(s['uncertain'].values())} in flight at a crash ("
              + ", ".join(f"{k} {v}" for k, v in sorted(s["uncertain"].items())) + ")")
    else:
        print(s[what])


def cmd_bump(what):
    model = load(MODEL)
    model["stats"][what] += 1
    save(MODEL, model)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    try:
        {"tars": cmd_tars, "worker": cmd_worker, "settle": cmd_settle, "converted": cmd_converted,
         "final": cmd_final, "stats": cmd_stats, "dedup-pending": cmd_dedup_pending, "bump": cmd_bump}[cmd](*args)
    except Failure as e:
        print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
