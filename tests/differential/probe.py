#!/usr/bin/env python3
"""Lists what a process sees of a root file system, one sorted line per path.

    probe.py ROOT

ROOT is normally /proc/PID/root of a container's process: the container's own mount of
its root, as the process sees it. Not entered: /proc, /sys and /dev, and any directory
that is a mount point of another file system (from /proc/PID/mountinfo when ROOT is a
/proc/PID/root, and wherever a directory's st_dev is not the root's).

Each line is `PATH key=value ...` (PATH and values escaped: no spaces, no newlines):
  type    f d l c b p s
  mode    permission bits with setuid/setgid/sticky, octal
  uid gid
  size    (not of directories: that is the file system's business)
  mtime   in ns (not of the root itself: snapshotters make a new one for every snapshot,
          and containerd's overlayfs does not carry the image's over)
  nlink   (directories too)
  rdev    major:minor of devices
  target  of symlinks
  sha256  of regular files' contents
  xattrs  every extended attribute, name=hex value, comma-separated (- for none)
  group   the first path (sorted) with the same (st_dev, st_ino): hard links, and
          anything else the file system makes one inode
Never atime, ctime, st_dev or st_ino themselves.

Then `#fact NAME VALUE` lines, what tools that find hard links by st_nlink > 1 and
(st_dev, st_ino) (cp -a, tar, rsync -H) make of the tree:
  links-kept     names such a tool would write as a hard link to a name seen before
  nlink-wrong    non-directories whose st_nlink is not the number of names found for
                 their inode (1 for a lower file whose other names were removed is fine
                 on overlayfs: it is reported, both sides compared)
  nlink-zero     non-directories with st_nlink 0
  shared-inodes  inode groups of more than one name
  other-devices  entries whose st_dev is not the root's (find -xdev, du -x skip them)
"""
import hashlib
import os
import re
import stat
import sys

root = sys.argv[1].rstrip("/") or "/"
SKIP_TOP = {"/proc", "/sys", "/dev"}


def esc(s):
    if isinstance(s, bytes):
        s = s.decode("utf-8", "surrogateescape")
    out = []
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif o <= 0x20 or o == 0x7f or 0xdc80 <= o <= 0xdcff or ch == "=":
            out.append("\\x%02x" % (o - 0xdc00 if o >= 0xdc80 else o))
        else:
            out.append(ch)
    return "".join(out)


def mount_points():
    """Mount points below ROOT, as paths inside it, from the process's mountinfo."""
    m = re.fullmatch(r"/proc/(\d+)/root", root)
    points = set()
    if not m:
        return points
    with open(f"/proc/{m.group(1)}/mountinfo", "rb") as f:
        for line in f:
            p = line.split(b" ")[4].decode("utf-8", "surrogateescape")
            p = re.sub(r"\\([0-7]{3})", lambda g: chr(int(g.group(1), 8)), p)
            if p != "/":
                points.add(p)
    return points


def sha256(path):
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        return "error-" + (os.strerror(e.errno) if e.errno else str(e)).replace(" ", "-")
    return h.hexdigest()


def xattrs(path):
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError as e:
        return "error-" + str(e.errno)
    parts = []
    for n in names:
        try:
            v = os.getxattr(path, n, follow_symlinks=False).hex()
        except OSError as e:
            v = "error-" + str(e.errno)
        parts.append(esc(n) + ":" + (v or "-"))
    return ",".join(parts) or "-"


TYPES = [(stat.S_ISREG, "f"), (stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"), (stat.S_ISCHR, "c"),
         (stat.S_ISBLK, "b"), (stat.S_ISFIFO, "p"), (stat.S_ISSOCK, "s")]


def main():
    skip = SKIP_TOP | mount_points()
    # os.stat: /proc/PID/root is a symlink (a magic one: paths through it are the process's)
    rootdev = os.stat(root).st_dev
    entries = []  # (path, lstat)

    def walk(rel):
        full = root + rel if rel != "/" else root
        try:
            names = sorted(os.listdir(full))
        except OSError as e:
            entries.append((rel + "/(listdir)", e))
            return
        for n in names:
            p = (rel.rstrip("/")) + "/" + n
            if p in skip:
                continue
            try:
                st = os.lstat(root + p)
            except OSError as e:
                entries.append((p, e))
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_dev != rootdev:
                continue  # a mount point of another file system
            entries.append((p, st))
            if stat.S_ISDIR(st.st_mode):
                walk(p)

    entries.append(("/", os.stat(root)))
    walk("/")
    entries.sort(key=lambda e: e[0].encode("utf-8", "surrogateescape"))

    first = {}
    names_of = {}
    for p, st in entries:
        if isinstance(st, os.stat_result):
            k = (st.st_dev, st.st_ino)
            first.setdefault(k, p)
            names_of[k] = names_of.get(k, 0) + 1

    links_kept = nlink_wrong = nlink_zero = 0
    seen = set()
    for p, st in entries:
        if not isinstance(st, os.stat_result):
            print(f"{esc(p)} error={esc(os.strerror(st.errno) if st.errno else str(st))}")
            continue
        full = root + p if p != "/" else root
        mode = st.st_mode
        t = next(c for f, c in TYPES if f(mode))
        fields = [("type", t), ("mode", "%04o" % stat.S_IMODE(mode)), ("uid", st.st_uid),
                  ("gid", st.st_gid)]
        if t != "d":
            fields.append(("size", st.st_size))
        fields.append(("mtime", "-" if p == "/" else st.st_mtime_ns))
        fields.append(("nlink", st.st_nlink))
        if t in "cb":
            fields.append(("rdev", f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"))
        if t == "l":
            fields.append(("target", esc(os.readlink(full))))
        if t == "f":
            fields.append(("sha256", sha256(full)))
        fields.append(("xattrs", xattrs(full + "/" if p == "/" else full)))
        k = (st.st_dev, st.st_ino)
        fields.append(("group", esc(first[k])))
        print(esc(p) + " " + " ".join(f"{a}={b}" for a, b in fields))
        if t != "d":
            if st.st_nlink == 0:
                nlink_zero += 1
            if st.st_nlink != names_of[k]:
                nlink_wrong += 1
            if st.st_nlink > 1:
                if k in seen:
                    links_kept += 1
                seen.add(k)
    print(f"#fact links-kept {links_kept}")
    print(f"#fact nlink-wrong {nlink_wrong}")
    print(f"#fact nlink-zero {nlink_zero}")
    print(f"#fact shared-inodes {sum(1 for n in names_of.values() if n > 1)}")
    # find -xdev, du -x, tar --one-file-system: every entry on the root's device
    print(f"#fact other-devices {sum(1 for _, st in entries if isinstance(st, os.stat_result) and st.st_dev != rootdev)}")


main()
