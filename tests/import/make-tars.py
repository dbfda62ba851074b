#!/usr/bin/env python3
"""Writes the layer blobs tests/import/run imports, and OUTDIR/cases.json describing them.

    make-tars.py OUTDIR

cases.json maps each blob's file name to
  kind        good | top | dup | many | hostile | big
  media_type  the OCI (or Docker) media type to import it with
  digest      "sha256:<hex>" of the blob (deliberately wrong for wrong-digest.tar.gz)
  diff_id     "sha256:<hex>" of the uncompressed tar, or null when it must not be passed
  expect      for hostile blobs: a substring stderr must contain (the offending entry, or for
              broken streams and digests the reason, in snapshotd's words)
good blobs also carry tar (the uncompressed tar), tree (a file of the expected `stat` line
of each entry, see expect_line) and xattrs ({path: {name: hex}}, every xattr of the layer).

Hostile entries that would escape point at names starting "snapshotd-import-evil" (created
nowhere by a correct importer) or at "../../../snapshotd-import-victim", which from a
staging directory ROOT/l/new-N is a file the test creates next to ROOT.
"""
import gzip
import hashlib
import io
import json
import os
import random
import stat
import subprocess
import sys
import tarfile

MIB = 1 << 20
MTIME = 1600000000
OCI = "application/vnd.oci.image.layer.v1.tar"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# security.capability, VFS_CAP_REVISION_2 with the effective flag: cap_net_raw+ep.
CAP_NET_RAW = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
cases = {}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def data(seed, size):
    return random.Random(seed).randbytes(size)


class Entry:
    """One tar member: kind is dir, file, symlink, hardlink, char, block or fifo."""

    def __init__(self, name, kind="file", mode=None, uid=0, gid=0, mtime=MTIME,
                 content=b"", link="", dev=(0, 0), xattrs=None):
        if mode is None:
            mode = {"dir": 0o755, "symlink": 0o777}.get(kind, 0o644)
        self.name, self.kind, self.mode, self.uid, self.gid = name, kind, mode, uid, gid
        self.mtime, self.content, self.link, self.dev = mtime, content, link, dev
        self.xattrs = xattrs or {}

    def tarinfo(self):
        ti = tarfile.TarInfo(self.name)
        ti.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
                   "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE,
                   "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[self.kind]
        ti.mode, ti.uid, ti.gid, ti.mtime = self.mode, self.uid, self.gid, self.mtime
        ti.uname = ti.gname = ""
        ti.linkname = self.link
        ti.devmajor, ti.devminor = self.dev
        ti.size = len(self.content) if self.kind == "file" else 0
        # Raw bytes survive: tarfile writes undecodable values back with hdrcharset=BINARY.
        ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                          for k, v in self.xattrs.items()}
        return ti


def write_tar(path, entries):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            tar.addfile(e.tarinfo(), io.BytesIO(e.content) if e.kind == "file" else None)
    return sha256_file(path)


def gzip_file(src, dst, level=9):
    with open(src, "rb") as f, open(dst, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as g:
            while chunk := f.read(MIB):
                g.write(chunk)
    return sha256_file(dst)


def zstd_file(src, dst):
    subprocess.run(["zstd", "-q", "-f", "-19", src, "-o", dst], check=True)
    return sha256_file(dst)


def add(name, kind, media_type, digest, diff_id, **extra):
    cases[name] = dict(kind=kind, media_type=media_type, digest=digest, diff_id=diff_id,
                       expect=extra.pop("expect", None), **extra)


def layer(stem, entries, kind="good", compress=("",), **extra):
    """Writes STEM.tar (kept only when "" is in compress) and its compressed forms."""
    tar = os.path.join(out, stem + ".tar")
    diff_id = write_tar(tar, entries)
    for c in compress:
        if c == ".gz":
            add(stem + ".tar.gz", kind, OCI + "+gzip", gzip_file(tar, tar + ".gz"), diff_id, **extra)
        elif c == ".zst":
            add(stem + ".tar.zst", kind, OCI + "+zstd", zstd_file(tar, tar + ".zst"), diff_id, **extra)
        else:
            add(stem + ".tar", kind, OCI, diff_id, diff_id, **extra)
    if "" not in compress:
        os.remove(tar)
    return diff_id


def expect_line(e, entries):
    """What `stat -c '%f %u %g %Y %s %t %T'` shows for an entry (size "-" for directories),
    tab, the symlink target (empty for others): the format tests/import/run compares."""
    if e.kind == "hardlink":
        target = next(x for x in entries if x.name == e.link)
        return expect_line(Entry(e.name, **{k: getattr(target, k) for k in
                                            ("kind", "mode", "uid", "gid", "mtime", "content", "dev")}), entries)
    fmt = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK,
           "char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}[e.kind]
    mode = fmt | (0o777 if e.kind == "symlink" else e.mode)
    size = "-" if e.kind == "dir" else len(e.link.encode()) if e.kind == "symlink" else len(e.content)
    return f"{e.name.rstrip('/')}\t{mode:x} {e.uid} {e.gid} {e.mtime} {size} {e.dev[0]:x} {e.dev[1]:x}\t" \
           f"{e.link if e.kind == 'symlink' else ''}"


# The base layer: every kind of entry and metadata an importer must reproduce.
U, G = 1234, 5678
base = [
    Entry("bin/", "dir", 0o755, mtime=MTIME + 1),
    Entry("bin/suid", mode=0o4755, uid=U, gid=G, mtime=MTIME + 2, content=b"setuid\n"),
    Entry("bin/sgid", mode=0o2755, uid=U, gid=G, mtime=MTIME + 3, content=b"setgid\n"),
    Entry("bin/ping", mode=0o755, mtime=MTIME + 4, content=b"ping\n",
          xattrs={"security.capability": CAP_NET_RAW}),
    Entry("dev/", "dir", 0o755, mtime=MTIME + 5),
    Entry("dev/null", "char", 0o666, mtime=MTIME + 6, dev=(1, 3)),
    Entry("dev/loop0", "block", 0o660, gid=6, mtime=MTIME + 7, dev=(7, 0)),
    Entry("dev/fifo", "fifo", 0o640, uid=U, gid=G, mtime=MTIME + 8),
    Entry("etc/", "dir", 0o755, mtime=MTIME + 9),
    Entry("etc/keep.txt", mtime=MTIME + 10, content=b"keep\n"),
    Entry("etc/removed.txt", mtime=MTIME + 11, content=b"removed by the top layer\n"),
    Entry("etc/xattr.txt", mode=0o640, uid=U, gid=G, mtime=MTIME + 12, content=b"xattr\n",
          xattrs={"user.test": b"hello"}),
    Entry("private/", "dir", 0o700, uid=U, gid=G, mtime=MTIME + 13),
    Entry("private/secret", mode=0o600, uid=U, gid=G, mtime=MTIME + 14, content=b"secret\n"),
    Entry("tmp/", "dir", 0o1777, mtime=MTIME + 15),
    Entry("data/", "dir", 0o755, uid=U, gid=G, mtime=MTIME + 16),
    Entry("data/empty", mode=0o644, uid=U, gid=G, mtime=MTIME + 17),
    Entry("data/three-mib", mode=0o444, mtime=MTIME + 18, content=data("three", 3 * MIB)),
    Entry("data/exec", mode=0o511, uid=U, mtime=MTIME + 19, content=b"#!/bin/sh\n"),
    Entry("links/", "dir", 0o755, mtime=MTIME + 20),
    Entry("links/relative", "symlink", uid=U, gid=G, mtime=MTIME + 21, link="../etc/keep.txt"),
    Entry("links/dangling", "symlink", mtime=MTIME + 22, link="nowhere/missing"),
    Entry("links/absolute", "symlink", mtime=MTIME + 23, link="/etc/keep.txt"),
    Entry("hl/", "dir", 0o755, mtime=MTIME + 24),
    Entry("hl/a", mode=0o600, uid=U, gid=G, mtime=MTIME + 25, content=b"hard link pair\n"),
    Entry("hl/b", "hardlink", 0o600, uid=U, gid=G, mtime=MTIME + 25, link="hl/a"),
    Entry("opq/", "dir", 0o755, mtime=MTIME + 26),
    Entry("opq/old.txt", mtime=MTIME + 27, content=b"old\n"),
    Entry("opq/sub/", "dir", 0o750, mtime=MTIME + 28),
    Entry("opq/sub/x", mtime=MTIME + 29, content=b"x\n"),
]
with open(os.path.join(out, "base.expect"), "w") as f:
    f.writelines(expect_line(e, base) + "\n" for e in sorted(base, key=lambda e: e.name.rstrip("/")))
extra = dict(tar="base.tar", tree="base.expect",
             xattrs={e.name: {k: v.hex() for k, v in e.xattrs.items()} for e in base if e.xattrs})
layer("base", base, compress=("", ".gz", ".zst"), **extra)
# The same tar under Docker's media type, compressed differently (another blob digest).
tar = os.path.join(out, "base.tar")
add("base-docker.tar.gz", "good", DOCKER_GZIP, gzip_file(tar, os.path.join(out, "base-docker.tar.gz"), 1),
    cases["base.tar"]["diff_id"], **extra)

# On top of base: a whiteout, an opaque directory with a new file, an added file.
layer("top", [
    Entry("etc/", "dir", 0o755, mtime=MTIME + 9),
    Entry("etc/.wh.removed.txt", mtime=MTIME + 100),
    Entry("etc/added.txt", mtime=MTIME + 101, content=b"added\n"),
    Entry("opq/", "dir", 0o755, mtime=MTIME + 26),
    Entry("opq/.wh..wh..opq", mtime=MTIME + 102),
    Entry("opq/new.txt", mtime=MTIME + 103, content=b"new\n"),
], kind="top", compress=(".gz",))


# Dedup: dupA and dupB hold the same three 1 MiB files (same bytes, mode, owner, mtime) and
# differ by one small file; dupC has the same bytes with another mtime. Each also holds
# distinct files with equal content and metadata (three empty ones, two small ones), which
# must stay distinct inodes, and one hard link of the tar's, which must stay one.
def dup(extra_files, mtime=MTIME):
    return [Entry("dup/", "dir", 0o755, mtime=MTIME)] + [
        Entry(f"dup/f{i}", mode=0o640, uid=U, gid=G, mtime=mtime, content=data(f"dup{i}", MIB))
        for i in (1, 2, 3)] + [
        Entry(f"dup/empty{i}", mode=0o644, mtime=mtime) for i in (1, 2, 3)] + [
        Entry(f"dup/small{i}", mode=0o644, mtime=mtime, content=b"same small file\n") for i in (1, 2)] + [
        # As tar writes a link: with its inode's metadata (the last header wins, as in containerd).
        Entry("dup/hard", "hardlink", mode=0o640, uid=U, gid=G, mtime=mtime, link="dup/f1")] + extra_files


layer("dupA", dup([]), kind="dup", compress=(".gz",))
layer("dupB", dup([Entry("dup/onlyB", content=b"only in B\n")]), kind="dup", compress=(".gz",))
layer("dupC", dup([], mtime=MTIME + 1000), kind="dup", compress=(".gz",))

# many.tar.gz: 200,000 empty files and 70,000 one-byte files, each group with equal metadata:
# more than ext4's 65,000 links per inode, had equal files been hard-linked together.
many = os.path.join(out, "many.tar")
with tarfile.open(many, "w", format=tarfile.PAX_FORMAT) as tar:
    for d in range(27):
        tar.addfile(Entry(f"m{d}/", "dir", 0o755).tarinfo())
    for i in range(270000):
        e = Entry(f"m{i // 10000}/f{i}", mode=0o644, content=b"" if i < 200000 else b"x")
        tar.addfile(e.tarinfo(), io.BytesIO(e.content))
diff_id = sha256_file(many)
add("many.tar.gz", "many", OCI + "+gzip", gzip_file(many, many + ".gz", level=1), diff_id)
os.remove(many)

# Hostile layers. Each starts with good entries, so the importer has begun staging.
ok = [Entry("ok/", "dir", 0o755), Entry("ok/file", content=b"fine\n")]
for stem, entries in [
    ("dotdot", [Entry("../../../snapshotd-import-evil-dotdot", content=b"evil\n")]),
    ("abs", [Entry("/etc/snapshotd-import-evil-abs", content=b"evil\n")]),
    ("symlink-escape", [Entry("escape-link", "symlink", link="/etc"),
                        Entry("escape-link/snapshotd-import-evil-symlink", content=b"evil\n")]),
    ("symlink-relative-escape", [Entry("up-link", "symlink", link="../../.."),
                                 Entry("up-link/snapshotd-import-evil-relsymlink", content=b"evil\n")]),
    ("symlink-inside-then-write", [Entry("sub/", "dir", 0o755), Entry("inner-link", "symlink", link="sub"),
                                   Entry("inner-link/file", content=b"through a link\n")]),
    ("hardlink-escape", [Entry("evil-hardlink", "hardlink", link="../../../snapshotd-import-victim")]),
    # (mode and owner those of /etc/passwd, should a broken importer apply them to the target)
    ("hardlink-abs", [Entry("evil-abs-hardlink", "hardlink", link="/etc/passwd")]),
    ("overlay-xattr", [Entry("overlay-xattr-file", content=b"x\n",
                             xattrs={"trusted.overlay.opaque": b"y"})]),
]:
    layer(stem, ok + entries, kind="hostile", expect=entries[-1].name)

# Broken streams: the blob's digest is right (so the stream itself must be refused); no diff_id.
filler = [Entry("filler/", "dir")] + [
    Entry(f"filler/{i}", content=(b"compressible %d\n" % i) * 20000) for i in range(8)]
gz = os.path.join(out, "truncated.tar.gz")
layer("truncated", ok + filler, compress=(".gz",))
with open(gz, "rb") as f:
    blob = f.read()
with open(gz, "wb") as f:
    f.write(blob[: len(blob) // 2])
add("truncated.tar.gz", "hostile", OCI + "+gzip", sha256_file(gz), None, expect="truncated")

zst = os.path.join(out, "corrupt.tar.zst")
layer("corrupt", ok + filler, compress=(".zst",))
with open(zst, "r+b") as f:
    f.seek(os.path.getsize(zst) // 2)
    chunk = f.read(16)
    f.seek(-len(chunk), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in chunk))
if subprocess.run(["zstd", "-q", "-t", zst], stderr=subprocess.DEVNULL).returncode == 0:
    sys.exit("corrupt.tar.zst still decodes")
add("corrupt.tar.zst", "hostile", OCI + "+zstd", sha256_file(zst), None, expect="corrupt")


# Good layers declared with a wrong blob digest, and with a wrong diff_id.
def wrong(digest):
    return digest[:-8] + ("0" * 8 if not digest.endswith("0" * 8) else "1" * 8)


for stem, key, why in [("wrong-digest", "digest", "digest mismatch"),
                       ("wrong-diffid", "diff_id", "diffID mismatch")]:
    layer(stem, ok + [Entry(stem + "/", "dir"), Entry(stem + "/file", content=stem.encode())], compress=(".gz",))
    case = cases[stem + ".tar.gz"]
    case.update(kind="hostile", expect=why, **{key: wrong(case[key])})


# big.tar: one 200 MiB file of incompressible bytes, streamed (never all in memory).
class RandomStream:
    def __init__(self, size):
        self.left, self.rng = size, random.Random("big")

    def read(self, n=-1):
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


ti = Entry("big/file").tarinfo()
ti.size = 200 * MIB
with tarfile.open(os.path.join(out, "big.tar"), "w", format=tarfile.PAX_FORMAT) as tar:
    tar.addfile(Entry("big/", "dir").tarinfo())
    tar.addfile(ti, RandomStream(ti.size))
d = sha256_file(os.path.join(out, "big.tar"))
add("big.tar", "big", OCI, d, d)

with open(os.path.join(out, "cases.json"), "w") as f:
    json.dump(cases, f, indent=1, sort_keys=True)
