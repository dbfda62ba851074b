#!/usr/bin/env python3
"""Applies a fixed list of writes below ROOT and prints each one's result.

    writes.py ROOT

ROOT is /proc/PID/root of a container on the image make-image.py builds: the writes go
through the container's own mount, as the container's writes would. Every operation
prints one line `NN-NAME result=ok|ERRNONAME [what it observed]`, the same format as
probe.py's lines, so that compare.py compares both.

Operations that legitimately set a modification time to "now" (content writes, entries
created or removed in a directory) name the paths they touch; at the end each of those
prints whether its mtime was updated (`mtime-updated PATH`), and is then set to a fixed
time, so that a probe afterwards compares every other mtime exactly (those of files whose
metadata alone changed, of copies, of what copy-up carried over) without clock noise.

A rename that fails with EXDEV (overlayfs without redirect_dir) is completed as mv does
it: a copy (cp -a: owners, modes, times, xattrs, hard links within) then a removal; the
result line says which happened.
"""
import errno
import hashlib
import mmap
import os
import shutil
import stat
import sys
import time

root = sys.argv[1].rstrip("/")
FIXED_NS = 1600000000 * 10**9
CAP_NET_RAW = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12
os.umask(0o022)
start_ns = time.time_ns() - 2 * 10**9
touched = []


def R(p):
    return root + p


def short_sha(p):
    try:
        with open(R(p), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def lstat_or_none(p):
    try:
        return os.lstat(R(p))
    except OSError:
        return None


def same_inode(a, b):
    sa, sb = lstat_or_none(a), lstat_or_none(b)
    if sa is None or sb is None:
        return "missing"
    return "yes" if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino) else "no"


def nlink(p):
    st = lstat_or_none(p)
    return st.st_nlink if st else "missing"


def listing(p):
    try:
        return ",".join(sorted(os.listdir(R(p)))) or "-"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def copy_tree(src, dst):
    """cp -a: returns the number of names written as hard links to an earlier copy."""
    links = {}
    kept = 0

    def meta(s, d, st):
        os.lchown(d, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            for n in os.listxattr(s, follow_symlinks=False):
                os.setxattr(d, n, os.getxattr(s, n, follow_symlinks=False), follow_symlinks=False)
            os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def cp(s, d):
        nonlocal kept
        st = os.lstat(s)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o700)
            for n in sorted(os.listdir(s)):
                cp(s + "/" + n, d + "/" + n)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISREG(st.st_mode):
            k = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and k in links:
                os.link(links[k], d)
                kept += 1
                return
            links[k] = d
            with open(s, "rb") as fi, open(d, "wb") as fo:
                shutil.copyfileobj(fi, fo)
        else:
            os.mknod(d, st.st_mode, st.st_rdev)
        meta(s, d, st)

    cp(src, dst)
    return kept


def append(p, b):
    with open(R(p), "ab") as f:
        f.write(b)


def write(p, b):
    with open(R(p), "wb") as f:
        f.write(b)


def mmap_write(p):
    with open(R(p), "r+b") as f:
        m = mmap.mmap(f.fileno(), 0)
        m[100:108] = b"MMAPPED!"
        m[200000:200008] = b"MMAPPED!"
        m.flush()
        m.close()


def rename_or_move(a, b):
    try:
        os.rename(R(a), R(b))
        return "how=renamed"
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    copy_tree(R(a), R(b))
    shutil.rmtree(R(a))
    return "how=EXDEV-then-copied"


def unlink_then_rmdir(d, f):
    os.unlink(R(f))
    os.rmdir(R(d))


def replace_by_dir(p):
    os.unlink(R(p))
    os.mkdir(R(p))


OPS = []


def op(name, fn, touches=(), after=None):
    OPS.append((name, fn, touches, after))


# Ownership and modes of lower files: copy-up, then the change. chown drops setuid and
# setgid bits and security.capability (the kernel's rule for any file system).
op("chown-capability", lambda: os.chown(R("/caps/ping"), 1000, 1000))
op("chmod-capability", lambda: os.chmod(R("/caps/ping"), 0o750))
op("chown-setuid", lambda: os.chown(R("/caps/suid"), 1000, 1000))
op("chmod-setgid", lambda: os.chmod(R("/caps/sgid"), 0o700))
op("chown-dir", lambda: os.lchown(R("/srv/inner"), 2000, 2000))
op("chown-symlink", lambda: os.lchown(R("/links/abs"), 5, 5))
op("chown-huge", lambda: os.chown(R("/ids/huge"), 4000000, 4000001))
op("chmod-dir", lambda: os.chmod(R("/times/olddir"), 0o711))
op("utime-explicit", lambda: os.utime(R("/times/y2040"), ns=(FIXED_NS, 1234567890123456789)))
# Extended attributes.
op("setxattr-new", lambda: os.setxattr(R("/x/file"), "user.new", b"added"))
op("setxattr-replace", lambda: os.setxattr(R("/x/file"), "user.a", b"changed"))
op("removexattr", lambda: os.removexattr(R("/x/file"), "user.bin"))
op("removexattr-missing", lambda: os.removexattr(R("/x/file"), "user.none"))
op("setxattr-dir", lambda: os.setxattr(R("/shared"), "user.y", b"on a dir"))
op("setxattr-symlink", lambda: os.setxattr(R("/links/rel"), "user.z", b"1", follow_symlinks=False))
op("setcap", lambda: os.setxattr(R("/caps/sgid"), "security.capability", CAP_NET_RAW))
# Contents of lower files.
op("append-hardlink", lambda: append("/hl/pair1", b"appended\n"), ["/hl/pair1"],
   lambda: f"other-name={short_sha('/hl/pair2')} same-inode={same_inode('/hl/pair1', '/hl/pair2')}"
           f" nlinks={nlink('/hl/pair1')},{nlink('/hl/pair2')}")
op("truncate", lambda: os.truncate(R("/big/b3"), 1000), ["/big/b3"])
op("truncate-hardlink", lambda: os.truncate(R("/hl/target"), 5), ["/hl/target"],
   lambda: f"other-names={short_sha('/hl/link')},{short_sha('/other/xlink')}"
           f" same-inode={same_inode('/hl/target', '/hl/link')}")
op("mmap-write", lambda: mmap_write("/big/b2"), ["/big/b2"],
   lambda: f"content={short_sha('/big/b2')} same-content={short_sha('/big2/b2mode')}")
op("overwrite", lambda: write("/twice/b", b"overwritten\n"), ["/twice/b"])
# Names: link, unlink, rename, rmdir of lower entries.
op("link-lower", lambda: os.link(R("/empty/e3"), R("/empty/e3link")), ["/empty"],
   lambda: f"nlinks={nlink('/empty/e3')},{nlink('/empty/e3link')} same-inode={same_inode('/empty/e3', '/empty/e3link')}")
op("link-hardlinked", lambda: os.link(R("/hl/pair2"), R("/other/pair3")), ["/other"],
   lambda: f"nlinks={nlink('/hl/pair1')},{nlink('/hl/pair2')},{nlink('/other/pair3')}"
           f" same-inode={same_inode('/hl/pair2', '/other/pair3')}")
op("unlink-lower", lambda: os.unlink(R("/wh/keep")), ["/wh"])
op("unlink-hardlink-name", lambda: os.unlink(R("/hl/link")), ["/hl"],
   lambda: f"nlink-other={nlink('/other/xlink')}")
op("rmdir-nonempty", lambda: os.rmdir(R("/tree")))
op("rmdir-emptied", lambda: unlink_then_rmdir("/rmd", "/rmd/f"), ["/"])
op("rmdir-empty", lambda: os.rmdir(R("/emptydir")), ["/"])
op("rename-dir", lambda: rename_or_move("/mv", "/moved"), ["/"],
   lambda: f"inside={listing('/moved')} old={listing('/mv')}"
           f" same-inode={same_inode('/moved/f', '/moved/sub/h')}")
op("rename-file", lambda: os.rename(R("/links/rel"), R("/x/rel")), ["/links", "/x"])
op("rename-over", lambda: os.rename(R("/empty/e1"), R("/empty/e2")), ["/empty"])
op("rename-hardlink", lambda: os.rename(R("/other/xlink"), R("/other/xlink2")), ["/other"])
# A copy of a tree with hard links (cp -a), then a write to the copy.
op("copy-tree", lambda: f"links-kept={copy_tree(R('/tree'), R('/treecopy'))}", ["/"])
op("write-copy", lambda: append("/treecopy/a", b"written to the copy\n"), ["/treecopy/a"],
   lambda: f"other-copy={short_sha('/treecopy/sub/b')} original={short_sha('/tree/a')}")
op("rename-into-opaque", lambda: os.rename(R("/tree/c"), R("/opq/c")), ["/tree", "/opq"])
# New entries below lower directories: opaque, restrictive, setgid, replaced.
op("create-in-opaque", lambda: write("/opq/created", b"new\n"), ["/opq", "/opq/created"],
   lambda: f"entries={listing('/opq')}")
op("mkdir-restrictive", lambda: os.mkdir(R("/srv/inner/made"), 0o755), ["/srv/inner", "/srv/inner/made"])
op("create-in-setgid", lambda: write("/shared/c.txt", b"c\n"), ["/shared", "/shared/c.txt"])
op("mkdir-in-setgid", lambda: os.mkdir(R("/shared/subdir")), ["/shared", "/shared/subdir"])
op("file-to-dir", lambda: replace_by_dir("/dtof"), ["/", "/dtof"],
   lambda: f"entries={listing('/dtof')}")
op("mkfifo", lambda: os.mkfifo(R("/devs/fifo2")), ["/devs", "/devs/fifo2"])
op("symlink", lambda: os.symlink("../etc/group", R("/links/new")), ["/links", "/links/new"])
op("create-in-implicit-parent", lambda: write("/srv/made.txt", b"m\n"), ["/srv", "/srv/made.txt"])

for i, (name, fn, touches, after) in enumerate(OPS, 1):
    try:
        r = fn()
        res = "ok" + ("" if r is None else " " + r)
    except OSError as e:
        res = errno.errorcode.get(e.errno, str(e.errno))
    line = f"{i:02}-{name} result={res}"
    if after:
        line += " " + after()
    print(line)
    touched.extend(touches)

for p in sorted(set(touched)):
    try:
        st = os.lstat(R(p))
    except OSError:
        print(f"mtime-updated{p} result=missing")
        continue
    print(f"mtime-updated{p} result={'yes' if st.st_mtime_ns >= start_ns else 'no'}")
    os.utime(R(p), ns=(FIXED_NS, FIXED_NS), follow_symlinks=False)
