#!/usr/bin/env python3
"""Lists a layer tar (gzip or plain, from stdin or a file) as sorted lines: name, type,
mode, uid, gid, size, link target, xattrs, and mtime but of directories (the time their
contents last changed: a write's "now") and whiteouts (the differ writes the time of the diff). For comparing what
containerd's walking differ writes of the same change on two snapshotters.

    tar-listing.py LAYER.tar[.gz]
"""
import sys
import tarfile

with tarfile.open(sys.argv[1], "r:*") as t:
    lines = []
    for m in t.getmembers():
        xattrs = ",".join(f"{k}={v.encode('utf-8', 'surrogateescape').hex()}"
                          for k, v in sorted(m.pax_headers.items()) if k.startswith("SCHILY.xattr."))
        whiteout = m.name.rsplit("/", 1)[-1].startswith(".wh.")  # the differ's time: "now"
        mtime = "-" if m.isdir() or whiteout else str(m.mtime)
        lines.append(f"{m.name} {m.type!r} {m.mode:o} {m.uid} {m.gid} {m.size} {m.linkname or '-'} {mtime} {xattrs or '-'}")
for line in sorted(lines):
    print(line)
