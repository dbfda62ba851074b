#!/usr/bin/env python3
"""Builds the synthetic three-layer OCI image archive tests/differential/run compares.

    make-image.py OUT.tar NAME

The archive is what `ctr images export` writes (oci-layout, index.json naming the image
NAME, blobs/sha256/...), with gzip layers and a config listing their diff_ids; both
`ctr images import` and `snapctl import-image` take it. The output is deterministic (no
clock, seeded contents), so two runs write the same bytes.

Layer 1 is a small system (static busybox with applet links, /proc /dev /sys /run as
mount points so that runc creates nothing in the root) plus the cases:
  caps/      a file with security.capability (cap_net_raw+ep), a setuid and a setgid file
  srv/       0700 1000:1000 with srv/inner 0750; shared/ 2775 0:1000 with user.x
  hl/        a file, a hard link to it in other/ (as tar writes it: the inode's metadata)
             and then one in hl/ carrying its own mode, owner and mtime (the last header
             wins); a pair for the append test; tree/ with links across its directories
  times/     mtimes before 1970 (-86399.5, pax), after 2038, after 2262 (pax; containerd
             clamps what it cannot represent), fractional; a directory before 1970
  ids/       uid/gid above 65535 and above the ustar field (pax)
  twice/a    written twice in the layer (the second wins)
  wh/, opq/  what layer 2 deletes (whiteouts) and makes opaque
  ftod, dtof a file that layer 2 turns into a directory, a directory it turns into a file
  devs/      a character device, a block device, a fifo
  links/     absolute, relative, dangling and directory symlinks
  empty/     empty files; x/file with user.* xattrs (binary values too)
  big/       files of several hundred KB; many/ 10000 small files in 100 directories
             (every tenth the same as another), which keep snapshotd's background
             deduplication busy for a while after containerd's import returns
  mv/, rmd/, emptydir/   lower directories the write test renames and removes
Layer 2 writes below srv/, srv/inner/ and shared/ without entries for them (implicit
parents), deletes wh/gone and wh/gonedir, makes opq/ opaque, turns ftod into a directory
and dtof into a file, and repeats big/b1 (same content and metadata) and big/b2 (same
content, other mode) elsewhere. Layer 3 writes twice/b (a lower file) twice and repeats
small files of many/.
"""
import gzip
import hashlib
import io
import json
import os
import platform
import random
import shutil
import sys
import tarfile

out, name = sys.argv[1], sys.argv[2]
MTIME = 1700000000
# security.capability as `setcap cap_net_raw+ep` writes it: VFS_CAP_REVISION_2 with the
# effective flag, permitted = 1 << CAP_NET_RAW (13), nothing inheritable.
CAP_NET_RAW = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12


def data(seed, size):
    return random.Random(seed).randbytes(size)


class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, path, kind="file", mode=0o644, uid=0, gid=0, mtime=MTIME, content=b"",
            link="", dev=(0, 0), xattrs=None):
        ti = tarfile.TarInfo(path)
        ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                   "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE,
                   "block": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
        ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, mtime
        ti.uname = ti.gname = ""
        ti.linkname = link
        ti.devmajor, ti.devminor = dev
        if xattrs:
            # Values are bytes: surrogateescape makes tarfile write them back unchanged.
            ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                              for k, v in xattrs.items()}
        if kind == "file":
            ti.size = len(content)
            self.tar.addfile(ti, io.BytesIO(content))
        else:
            self.tar.addfile(ti)

    def dir(self, path, mode=0o755, **kw):
        self.add(path, kind="dir", mode=mode, **kw)

    def finish(self):
        self.tar.close()
        raw = self.buf.getvalue()
        gz = io.BytesIO()
        with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="", compresslevel=6) as g:
            g.write(raw)
        return raw, gz.getvalue()


busybox_path = shutil.which("busybox") or "/bin/busybox"
with open(busybox_path, "rb") as f:
    busybox = f.read()
APPLETS = ["sh", "sleep", "cat", "ls", "true", "false", "echo", "test", "mkdir", "rm", "cp",
           "mv", "ln", "stat", "find", "tar", "touch", "chmod", "chown", "id", "env"]
MANY_DIRS, MANY_FILES = 100, 100

# Layer 1: the base system and every case's lower half.
l1 = Layer()
l1.dir("./")
l1.dir("bin")
l1.add("bin/busybox", mode=0o755, content=busybox)
for a in APPLETS:
    l1.add("bin/" + a, kind="symlink", mode=0o777, link="busybox")
for d in ("dev", "proc", "sys", "run"):
    l1.dir(d)
l1.dir("tmp", mode=0o1777)
l1.dir("etc")
l1.add("etc/passwd", content=b"root:x:0:0:root:/:/bin/sh\nsrv:x:1000:1000:srv:/srv:/bin/sh\n")
l1.add("etc/group", content=b"root:x:0:\nsrv:x:1000:\n")

l1.dir("caps")
l1.add("caps/ping", mode=0o755, content=b"#!/bin/sh\necho raw sockets\n",
       xattrs={"security.capability": CAP_NET_RAW})
l1.add("caps/suid", mode=0o4755, content=b"setuid root\n")
l1.add("caps/sgid", mode=0o2755, gid=50, content=b"setgid staff\n")

l1.dir("srv", mode=0o700, uid=1000, gid=1000)
l1.add("srv/keep.txt", mode=0o600, uid=1000, gid=1000, content=b"kept in srv\n")
l1.dir("srv/inner", mode=0o750, uid=1000, gid=1000, mtime=MTIME - 50)
l1.add("srv/inner/i.txt", mode=0o640, uid=1000, gid=1000, content=b"inner\n")
l1.dir("shared", mode=0o2775, uid=0, gid=1000, mtime=MTIME - 60, xattrs={"user.x": b"shared-dir"})
l1.add("shared/a.txt", mode=0o664, gid=1000, content=b"shared a\n")

l1.dir("hl")
l1.dir("other")
l1.add("hl/target", mode=0o644, content=b"one inode, three names\n")
# As tar writes a second name of an inode: the inode's own metadata.
l1.add("other/xlink", kind="hardlink", mode=0o644, link="hl/target")
# A header of its own: containerd applies each header to the inode, the last one wins.
l1.add("hl/link", kind="hardlink", mode=0o600, uid=1234, gid=1235, mtime=MTIME + 1000,
       link="hl/target")
l1.add("hl/pair1", mode=0o644, content=b"pair content\n")
l1.add("hl/pair2", kind="hardlink", link="hl/pair1")
l1.dir("tree")
l1.dir("tree/sub")
l1.add("tree/a", content=b"tree a, linked from tree/sub/b\n")
l1.add("tree/sub/b", kind="hardlink", link="tree/a")
l1.add("tree/c", content=b"tree c\n")
l1.add("tree/sub/d", mode=0o600, uid=7, gid=8, content=b"tree d\n", xattrs={"user.t": b"d"})

l1.dir("times")
l1.add("times/pre1970", mtime=-86399.5, content=b"before 1970\n")
l1.add("times/y2040", mtime=2208988800, content=b"2040\n")
l1.add("times/y2300", mtime=10413792000, content=b"2300\n")
l1.add("times/frac", mtime=MTIME + 0.25, content=b"a quarter second\n")
l1.dir("times/olddir", mtime=-1)

l1.dir("ids")
l1.add("ids/big", uid=70000, gid=70001, content=b"uid 70000\n")
l1.add("ids/huge", uid=3000000, gid=4000000000, content=b"uid 3000000\n")

l1.dir("twice")
l1.add("twice/a", content=b"the first a, replaced in the same layer\n")
l1.add("twice/b", content=b"lower b\n")
l1.add("twice/a", mode=0o600, content=b"the second a\n")

l1.dir("wh")
l1.add("wh/gone", content=b"deleted by layer 2\n")
l1.add("wh/keep", content=b"kept\n")
l1.dir("wh/gonedir")
l1.add("wh/gonedir/f", content=b"deleted with its dir\n")
l1.dir("opq")
l1.add("opq/old1", content=b"hidden by the opaque dir\n")
l1.dir("opq/sub")
l1.add("opq/sub/old2", content=b"hidden too\n")

l1.add("ftod", content=b"a file, a directory in layer 2\n")
l1.dir("dtof")
l1.add("dtof/child", content=b"gone when dtof becomes a file\n")

l1.dir("devs")
l1.add("devs/chr", kind="char", mode=0o666, dev=(1, 3))
l1.add("devs/blk", kind="block", mode=0o660, gid=6, dev=(7, 0))
l1.add("devs/fifo", kind="fifo", mode=0o644)

l1.dir("links")
l1.add("links/abs", kind="symlink", mode=0o777, link="/etc/passwd")
l1.add("links/rel", kind="symlink", mode=0o777, link="../bin/busybox")
l1.add("links/dangling", kind="symlink", mode=0o777, link="/nowhere")
l1.add("links/dirlink", kind="symlink", mode=0o777, link="../srv")

l1.dir("empty")
l1.add("empty/e1")
l1.add("empty/e2")
l1.add("empty/e3", mode=0o600, uid=5, gid=5)

l1.dir("x")
l1.add("x/file", content=b"with xattrs\n",
       xattrs={"user.a": b"1", "user.bin": bytes(range(1, 17)), "user.text": b"hello world"})

l1.dir("big")
l1.add("big/b1", content=data(1, 300 * 1024))
l1.add("big/b2", content=data(2, 500 * 1024))
l1.add("big/b3", mode=0o755, content=data(3, 800 * 1024))

l1.dir("mv")
l1.dir("mv/sub", mode=0o750, uid=3, gid=4)
l1.add("mv/f", content=b"in a lower directory that gets renamed\n")
l1.add("mv/sub/g", content=b"below it\n", xattrs={"user.m": b"v"})
l1.add("mv/sub/h", kind="hardlink", link="mv/f")
l1.dir("rmd")
l1.add("rmd/f", content=b"removed before its directory\n")
l1.dir("emptydir")

l1.dir("many")
for d in range(MANY_DIRS):
    l1.dir(f"many/d{d:02}")
    for i in range(MANY_FILES):
        # every tenth file has the same content as file 0 of its directory
        n = 0 if i % 10 == 0 else i
        l1.add(f"many/d{d:02}/f{i:03}", content=f"small file {d}/{n}\n".encode() * (1 + n % 7))

# Layer 2: implicit parents, whiteouts, opaque dir, type changes, repeated contents.
l2 = Layer()
l2.add("srv/new.txt", mode=0o640, uid=1000, gid=1000, content=b"new in srv\n")
l2.add("srv/inner/deep.txt", mode=0o640, uid=1000, gid=1000, content=b"deep\n")
l2.add("shared/b.txt", mode=0o664, gid=1000, content=b"shared b\n")
l2.dir("wh")
l2.add("wh/.wh.gone")
l2.add("wh/.wh.gonedir")
l2.dir("opq", mode=0o755)
l2.add("opq/.wh..wh..opq")
l2.add("opq/new", content=b"the only entry of the opaque dir\n")
l2.dir("ftod", mode=0o750)
l2.add("ftod/inner.txt", content=b"inside the former file\n")
l2.add("dtof", mode=0o600, content=b"a file now\n")
l2.dir("big2")
l2.add("big2/b1same", content=data(1, 300 * 1024))
l2.add("big2/b2mode", mode=0o600, content=data(2, 500 * 1024))

# Layer 3: a lower file written twice, and small files seen before.
l3 = Layer()
l3.dir("twice")
l3.add("twice/b", content=b"upper b, first\n")
l3.add("twice/b", mode=0o640, content=b"upper b, the last\n")
l3.dir("again")
for d in range(0, MANY_DIRS, 4):
    for i in range(0, MANY_FILES, 3):
        n = 0 if i % 10 == 0 else i
        l3.add(f"again/d{d:02}-f{i:03}", content=f"small file {d}/{n}\n".encode() * (1 + n % 7))

arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
blobs = {}


def blob(b):
    h = hashlib.sha256(b).hexdigest()
    blobs[h] = b
    return "sha256:" + h


layers = []
diff_ids = []
for layer in (l1, l2, l3):
    raw, gz = layer.finish()
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "digest": blob(gz), "size": len(gz)})


def js(o):
    return json.dumps(o, separators=(",", ":"), sort_keys=True).encode()


config = js({"architecture": arch, "os": "linux",
             "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
             "rootfs": {"type": "layers", "diff_ids": diff_ids}})
manifest = js({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                          "digest": blob(config), "size": len(config)},
               "layers": layers})
index = js({"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": blob(manifest), "size": len(manifest),
    "platform": {"architecture": arch, "os": "linux"},
    "annotations": {"io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}}]})

with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
    def put(path, b):
        ti = tarfile.TarInfo(path)
        ti.size, ti.mtime, ti.mode = len(b), 0, 0o644
        t.addfile(ti, io.BytesIO(b))
    put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    put("index.json", index)
    for h in sorted(blobs):
        put("blobs/sha256/" + h, blobs[h])
