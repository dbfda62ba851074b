#!/usr/bin/env python3
"""Writes the layer tests/upgrade's fixture store imports: distinct files with equal
content and metadata (which the store before stubs hard-linked together), empty files,
a hard link of the tar's own, an xattr, a setuid file, a symlink, a directory.

    layer.py OUT.tar
"""
import io
import sys
import tarfile

MTIME = 1600000000
entries = [("d/", None, 0o755), ("d/same1", b"same data\n", 0o644), ("d/same2", b"same data\n", 0o644),
           ("d/empty1", b"", 0o644), ("d/empty2", b"", 0o644), ("d/suid", b"#!/bin/sh\n", 0o4755),
           ("d/xattr", b"with xattr\n", 0o600)]
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as tar:
    for name, data, mode in entries:
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
        ti.mode, ti.mtime, ti.size = mode, MTIME, len(data or b"")
        if name == "d/xattr":
            ti.pax_headers = {"SCHILY.xattr.user.k": "v"}
        tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    ti = tarfile.TarInfo("d/hard")
    ti.type, ti.linkname, ti.mtime = tarfile.LNKTYPE, "d/same1", MTIME
    tar.addfile(ti)
    ti = tarfile.TarInfo("d/link")
    ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, "same1", MTIME
    tar.addfile(ti)
