#!/usr/bin/env python3
"""Differential test of snapfs against kernel overlayfs on the same layer stack.

Builds three lower layers and two data-only layers under /var/tmp (--tmp) and mounts them
twice, with the same options (lowerdir=l0:l1:l2::data0::data1): kernel overlayfs on m1
(upper u1) and snapfs on m2 (upper u2). Most regular files of the bottom layer, and some
of the others, are metacopy stubs as snapshotd's layer store makes them: the file's
metadata and size without data blocks, with the xattrs trusted.overlay.metacopy and
trusted.overlay.redirect = the absolute path of the data in a data-only layer (Objects):
some stubs share one data file, two are hard links of one stub, one's data file is
missing. Then, comparing the two and reporting every difference:
  1. the initial merged trees;
  2. a scripted list of operations (SCRIPT): each one's result or errno, and the state
     of the paths it touched afterwards;
  3. a randomized sequence of the same kinds of operations (--seed, --ops);
  4. after each phase, the whole merged trees;
  5. after unmounting, each upper directory read back by kernel overlayfs stacked on the
     same lowers (snapfs's upper must hold overlayfs's whiteouts and opaque dirs);
  6. the lower and data-only layers, which must be unchanged (contents and metadata).
Exits 1 if anything differs, 0 otherwise; the temp dir and mounts are always removed.

Two option sets (--metacopy): by default overlayfs's metacopy=off, under which overlayfs
follows only the bottom layer's stubs (those of l0 and l1 fail with EPERM, on both
mounts), and renaming a directory that has a lower layer gives EXDEV (redirect_dir=off);
with --metacopy, metacopy=on, under which every stub is followed. metacopy=on implies
redirect_dir=on, where overlayfs renames such directories and snapfs does not (EXDEV):
renames of directories are left out (Skip) of that run.

The program under test is $SNAPFS, else $SNAPFS_BIN_DIR/snapfs, else snapfs on PATH.
--self-check mounts kernel overlayfs in its place: it must report no difference, which
shows that whatever the harness reports is a real difference, not its own noise.

What is compared for an entry (describe()): type and mode bits, uid, gid, xattrs (names
and values; the kernel hides trusted.overlay.*), and for non-directories size and nlink,
device numbers, symlink target, content (sha256). mtime only where it is known not to
have been set to "now" by an operation (untouched entries and explicit utime; see
Tracker). Never st_ino, st_dev, atime or ctime, nor a directory's nlink or size.
"""
import argparse
import errno
import hashlib
import itertools
import mmap
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

LOWERS = ('l0', 'l1', 'l2')  # l0 is the topmost layer, as in lowerdir=l0:l1:l2
DATA = ('data0', 'data1')    # data-only layers, searched in this order: lowerdir=...::data0::data1
T0 = 1_500_000_000           # seconds; the lower layers' explicit mtimes count up from here
# Overlay options, the same for both mounts: the defaults of the reference kernel, spelled
# out so that the reference does not move with a kernel's defaults. Renaming a directory
# that has a lower layer gives EXDEV with redirect_dir=off. METACOPY_OPTS (--metacopy):
# overlayfs follows stubs of every layer (and then has redirect_dir=on).
KERNEL_OPTS = 'index=off,redirect_dir=off,metacopy=off,xino=off'
METACOPY_OPTS = 'index=off,metacopy=on,xino=off'
OPTS = KERNEL_OPTS  # the run's (main() sets it)


def P(root, rel):
    """The path of rel ('.' for the root itself) under root."""
    return root if rel == '.' else os.path.join(root, rel)


def parent(rel):
    return os.path.dirname(rel) or '.'


def sha(data):
    return hashlib.sha256(data).hexdigest()[:16]


def errname(e):
    return errno.errorcode.get(e.errno, str(e.errno))


# ---------------------------------------------------------------------------- layers

class Layer:
    """A lower layer being built. Entries get distinct explicit mtimes (with
    nanoseconds), applied by finish() once everything exists."""
    mtime_counter = itertools.count(1)

    def __init__(self, root):
        self.root = root
        self.mtimes = {}
        os.mkdir(root)

    def _new(self, rel):
        """The path for a new entry, making missing parent directories."""
        if parent(rel) != '.' and not os.path.lexists(P(self.root, parent(rel))):
            self.dir(parent(rel))
        return P(self.root, rel)

    def _meta(self, rel, mode, uid, gid, xattrs):
        p = P(self.root, rel)
        os.chown(p, uid, gid, follow_symlinks=False)
        if mode is not None:  # after chown, which clears setuid/setgid
            os.chmod(p, mode)
        for name, value in xattrs.items():
            os.setxattr(p, name, value, follow_symlinks=False)
        n = next(Layer.mtime_counter)
        self.mtimes[rel] = (T0 + 3600 * n) * 10**9 + 123_456_789 + n

    def dir(self, rel, mode=0o755, uid=0, gid=0, xattrs={}, opaque=False):
        os.mkdir(self._new(rel))
        if opaque:
            xattrs = {**xattrs, 'trusted.overlay.opaque': b'y'}
        self._meta(rel, mode, uid, gid, xattrs)

    def file(self, rel, data=b'', mode=0o644, uid=0, gid=0, xattrs={}):
        with open(self._new(rel), 'wb') as f:
            f.write(data)
        self._meta(rel, mode, uid, gid, xattrs)

    def stub(self, rel, data, objects, mode=0o644, uid=0, gid=0, xattrs={}, layer=0, redirect=None):
        """A metacopy stub of data, which objects keeps in data-only layer `layer`; or
        with redirect, a stub that redirects there (whatever is, or is not, there)."""
        redirect = redirect or objects.put(data, layer)
        with open(self._new(rel), 'wb') as f:
            f.truncate(len(data))
        self._meta(rel, mode, uid, gid, {**xattrs, 'trusted.overlay.metacopy': b'',
                                         'trusted.overlay.redirect': redirect.encode()})

    def symlink(self, rel, target, uid=0, gid=0):
        os.symlink(target, self._new(rel))
        self._meta(rel, None, uid, gid, {})

    def node(self, rel, kind, mode, dev=(0, 0), uid=0, gid=0):
        os.mknod(self._new(rel), kind | mode, os.makedev(*dev))
        self._meta(rel, mode, uid, gid, {})

    def whiteout(self, rel):
        os.mknod(self._new(rel), stat.S_IFCHR, os.makedev(0, 0))

    def link(self, rel, existing):
        os.link(P(self.root, existing), self._new(rel))

    def finish(self):
        for rel, ns in self.mtimes.items():
            os.utime(P(self.root, rel), ns=(ns, ns), follow_symlinks=False)


class Objects:
    """The data-only layers: file data by content, as snapshotd's object store keeps it,
    at /<2 hex>/<14 hex> of its sha256. put() answers a stub's redirect."""

    def __init__(self, base):
        self.roots = [os.path.join(base, name) for name in DATA]
        for root in self.roots:
            os.mkdir(root)

    def put(self, data, layer=0, content=None):
        """Keeps data (or, to show which layer is read, content of the same size) in
        data-only layer `layer` under data's name."""
        h = hashlib.sha256(data).hexdigest()
        rel = f'{h[:2]}/{h[2:16]}'
        path = os.path.join(self.roots[layer], rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(data if content is None else content)
        os.chmod(path, 0o444)
        return '/' + rel


def build_layers(base):
    l0, l1, l2 = (Layer(os.path.join(base, name)) for name in LOWERS)
    o = Objects(base)

    # l2, the bottom layer: one of each kind of entry; most regular files are stubs.
    l2.file('a.txt', b'alpha\n', xattrs={'user.comment': b'lower a', 'trusted.test': b't'})
    l2.stub('setuid', b'#!/bin/sh\necho suid\n', o, mode=0o4755)
    l2.stub('setgid', b'#!/bin/sh\necho sgid\n', o, mode=0o2755, gid=1000)
    # Also in data1 (different bytes, same size), which must not be read: data0 comes first.
    o.put(b's3cret\n', 1, content=b'WRONG!\n')
    l2.stub('secret', b's3cret\n', o, mode=0o600, uid=1000, gid=1000)
    l2.stub('exec.sh', b'#!/bin/sh\nexit 0\n', o, mode=0o755, xattrs={'user.empty': b''})
    l2.file('empty')
    l2.stub('big.bin', random.Random(5).randbytes(5 << 20), o, uid=1000, gid=0, layer=1)
    l2.symlink('sym-rel', 'a.txt')
    l2.symlink('sym-abs', '/etc/os-release', uid=1000, gid=1000)
    l2.symlink('sym-dangling', 'no-such-file')
    l2.stub('hl1', b'linked\n', o, xattrs={'user.hl': b'1'})  # a stub with two names
    l2.link('hl2', 'hl1')
    l2.node('fifo', stat.S_IFIFO, 0o640, uid=1000)
    l2.node('chr', stat.S_IFCHR, 0o666, dev=(1, 3))
    l2.node('blk', stat.S_IFBLK, 0o660, dev=(7, 200), gid=1000)
    l2.dir('d', mode=0o750, uid=1000, gid=1000, xattrs={'user.dir': b'd-bottom'})
    l2.dir('d/e', mode=0o711)
    l2.dir('d/e/f', mode=0o700, uid=1000, xattrs={'user.f': b'f'})
    l2.stub('d/e/f/deep.txt', b'deep\n', o, mode=0o640, uid=1000, xattrs={'user.deep': b'1'})
    l2.file('gone.txt', b'whited out by l1\n')
    l2.stub('gonedir/x', b'x\n', o)
    l2.file('gonedir/sub/y', b'y\n')
    l2.stub('odir/x', b'hidden by opaque odir in l1\n', o)
    l2.file('odir/y', b'hidden too\n')
    l2.stub('fd/child', b'fd is a file in l1\n', o)
    l2.stub('df', b'df is a dir in l1\n', o)
    l2.stub('alldel/one', b'1\n', o)
    l2.file('alldel/two', b'2\n')
    l2.dir('emptydir', mode=0o775)
    l2.stub('sub/file1', b'file1\n', o)
    l2.stub('sub/file2', b'file2\n', o, mode=0o664)
    l2.stub('xdir/inner', b'xdir\n', o)
    l2.dir('merged', mode=0o755)
    l2.stub('merged/bottom.txt', b'bottom\n', o)
    l2.stub('merged/shadowed.txt', b'from l2\n', o)
    l2.file('merged/hidden.txt', b'whited out by l1\n')
    # Stubs sharing a data file (with sub/file1 too), and one whose data file is missing:
    # it stats, and opening it (or copying it up) fails with ENOENT.
    l2.stub('stubs/twin1', b'file1\n', o, mode=0o600, xattrs={'user.twin': b'1'})
    l2.stub('stubs/twin2', b'file1\n', o, mode=0o640, uid=1000)
    l2.stub('stubs/missing', b'no data\n', o, redirect='/ff/00000000000000')
    l2.stub('stubs/big-twin', random.Random(5).randbytes(5 << 20), o, layer=1)

    # l1: whiteouts, an opaque dir, type changes, merged dirs.
    l1.whiteout('gone.txt')
    l1.dir('odir', mode=0o750, opaque=True)
    l1.stub('odir/z', b'z\n', o)  # (stubs above the bottom layer: EPERM with metacopy=off)
    l1.file('fd', b'a file hiding dir fd\n', mode=0o600)
    l1.file('df/inner', b'a dir hiding file df\n')
    l1.file('alldel/three', b'3\n')
    l1.dir('d', mode=0o750, uid=1000, gid=1000, xattrs={'user.dir': b'd-mid'})
    l1.dir('d/e', mode=0o705, gid=1000, xattrs={'user.layer': b'1'})
    l1.stub('d/e/mid.txt', b'mid\n', o)
    l1.dir('merged', mode=0o750, uid=1000)
    l1.file('merged/mid.txt', b'mid\n')
    l1.stub('merged/shadowed.txt', b'from l1\n', o, mode=0o600)
    l1.whiteout('merged/hidden.txt')

    # l0, the top layer.
    l0.whiteout('gonedir')
    l0.dir('merged', mode=0o770, gid=1000, xattrs={'user.layer': b'0'})
    l0.stub('merged/top.txt', b'top\n', o)
    l0.file('top.txt', b'top\n', mode=0o444)
    l0.symlink('link-top', 'merged/top.txt')

    for layer in (l0, l1, l2):
        layer.finish()


# ------------------------------------------------------------------ trees and entries

def walk(root):
    """{relative path: st_mode} of every entry under root, root itself as '.'. A listed
    name that lstat fails on gets 0 (describe() then gives the errno)."""
    tree = {'.': os.lstat(root).st_mode}

    def rec(rel):
        for name in sorted(os.listdir(P(root, rel))):
            r = name if rel == '.' else f'{rel}/{name}'
            try:
                tree[r] = os.lstat(P(root, r)).st_mode
            except OSError:
                tree[r] = 0
            if stat.S_ISDIR(tree[r]):
                rec(r)
    rec('.')
    return tree


def xattrs_of(p):
    try:
        names = os.listxattr(p, follow_symlinks=False)
    except OSError as e:
        return errname(e)
    out = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(p, name, follow_symlinks=False)
        except OSError as e:
            out[name] = errname(e)
    return out


def describe(root, rel, trusted):
    """What the test compares of one entry (see the module doc), or its errno."""
    p = P(root, rel)
    try:
        st = os.lstat(p)
    except OSError as e:
        return errname(e)
    m = st.st_mode
    d = {'mode': stat.filemode(m), 'uid': st.st_uid, 'gid': st.st_gid, 'xattrs': xattrs_of(p)}
    if not stat.S_ISDIR(m):
        d['size'] = st.st_size
        d['nlink'] = st.st_nlink
    if stat.S_ISCHR(m) or stat.S_ISBLK(m):
        d['rdev'] = (os.major(st.st_rdev), os.minor(st.st_rdev))
    try:
        if stat.S_ISLNK(m):
            d['target'] = os.readlink(p)
        if stat.S_ISREG(m):
            with open(p, 'rb') as f:
                d['content'] = sha(f.read())
    except OSError as e:
        d['error'] = errname(e)
    if rel in trusted:
        d['mtime'] = st.st_mtime_ns
    return d


def snapshot_lowers(base):
    """Everything about the lower and data-only layers' files, to show that nothing changed
    them."""
    snap = {}
    for layer in LOWERS + DATA:
        root = os.path.join(base, layer)
        for rel in walk(root):
            p = P(root, rel)
            st = os.lstat(p)
            entry = {field: getattr(st, 'st_' + field) for field in
                     ('mode', 'uid', 'gid', 'size', 'nlink', 'rdev', 'ino', 'mtime_ns', 'ctime_ns')}
            entry['xattrs'] = xattrs_of(p)
            if stat.S_ISREG(st.st_mode):
                with open(p, 'rb') as f:
                    entry['content'] = sha(f.read())
            if stat.S_ISLNK(st.st_mode):
                entry['target'] = os.readlink(p)
            snap[f'{layer}/{rel}'] = entry
    return snap


# ------------------------------------------------------------------------ operations

class Skip(Exception):
    """An operation the harness refuses to do, the same way on both mounts."""


def inside(root, path):
    real = os.path.realpath(path)
    return real == root or real.startswith(root + '/')


def followed(root, rel):
    """The path of rel for a call that follows symlinks. Refuses a path that leads out of
    the mount (sym-abs: the call would touch the host, and the same file from both
    mounts) and device nodes (a FUSE mount may be nodev; opening them is not the file
    system's business)."""
    p = P(root, rel)
    if not inside(root, p):
        raise Skip('leaves the mount')
    try:
        st = os.stat(p)
    except OSError:
        return p
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        raise Skip('device')
    return p


def flag_bits(flags):
    """'O_WRONLY|O_APPEND' -> the bits, with O_NONBLOCK so a fifo never blocks."""
    bits = os.O_NONBLOCK | os.O_CLOEXEC
    for name in flags.split('|'):
        bits |= getattr(os, name)
    return bits


def read_fd(fd):
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b''.join(chunks)


def op_read(c, rel):
    fd = os.open(followed(c.root, rel), flag_bits('O_RDONLY'))
    try:
        data = read_fd(fd)
    finally:
        os.close(fd)
    return len(data), sha(data)


def op_write(c, rel, flags, offset, data):
    """Opens with flags (mode 0644 if created), writes data at offset (None: at the file
    offset), and returns the count and the file's new content."""
    p = followed(c.root, rel)
    fd = os.open(p, flag_bits(flags), 0o644)
    try:
        n = os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    return n, op_read(c, rel)


def op_mmapwrite(c, rel, offset, data):
    """Writes data at offset through a shared mapping (inside the file's size), then reads
    the file back through the same descriptor."""
    fd = os.open(followed(c.root, rel), flag_bits('O_RDWR'))
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return 'empty file'
        end = min(size, offset + len(data))
        with mmap.mmap(fd, size) as m:
            m[offset:end] = data[:max(0, end - offset)]
            m.flush()
        return sha(os.pread(fd, size + 1, 0))
    finally:
        os.close(fd)


def op_fsync(c, rel):
    fd = os.open(followed(c.root, rel), flag_bits('O_RDONLY'))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def op_rename(c, src, dst):
    """rename(2), but of a directory only where both mounts are meant to agree: not with
    metacopy=on, where overlayfs has redirect_dir=on (see the module doc)."""
    if OPTS == METACOPY_OPTS:
        try:
            if stat.S_ISDIR(os.lstat(P(c.root, src)).st_mode):
                raise Skip('a directory rename with redirect_dir=on')
        except OSError:
            pass  # the rename fails the same way
    os.rename(P(c.root, src), P(c.root, dst))


def op_create(c, rel, mode, excl):
    fd = os.open(followed(c.root, rel), flag_bits('O_WRONLY|O_CREAT' + '|O_EXCL' * excl), mode)
    os.close(fd)


def op_statvfs(c, rel):
    st = os.statvfs(followed(c.root, rel))
    return st.f_bsize > 0 and st.f_namemax > 0


# kind: (function(ctx, *args), the positions of args that are paths in the mount)
OPS = {
    'read': (op_read, (0,)),
    'stat': (lambda c, rel: describe(c.root, rel, c.trusted), (0,)),
    'readdir': (lambda c, rel: sorted(os.listdir(followed(c.root, rel))), (0,)),
    'readlink': (lambda c, rel: os.readlink(P(c.root, rel)), (0,)),
    'getxattr': (lambda c, rel, name: os.getxattr(P(c.root, rel), name, follow_symlinks=False), (0,)),
    # Names sorted: their order is not part of the semantics. Nothing is filtered out.
    'listxattr': (lambda c, rel: sorted(os.listxattr(P(c.root, rel), follow_symlinks=False)), (0,)),
    'write': (op_write, (0,)),
    'mmapwrite': (op_mmapwrite, (0,)),
    'fsync': (op_fsync, (0,)),
    'truncate': (lambda c, rel, size: os.truncate(followed(c.root, rel), size), (0,)),
    'chmod': (lambda c, rel, mode: os.chmod(followed(c.root, rel), mode), (0,)),
    'chown': (lambda c, rel, uid, gid: os.chown(P(c.root, rel), uid, gid, follow_symlinks=False), (0,)),
    'utime': (lambda c, rel, ns: os.utime(P(c.root, rel), ns=(ns, ns), follow_symlinks=False), (0,)),
    'setxattr': (lambda c, rel, name, value: os.setxattr(P(c.root, rel), name, value, follow_symlinks=False), (0,)),
    'removexattr': (lambda c, rel, name: os.removexattr(P(c.root, rel), name, follow_symlinks=False), (0,)),
    'create': (op_create, (0,)),
    'mkdir': (lambda c, rel, mode: os.mkdir(P(c.root, rel), mode), (0,)),
    'mkfifo': (lambda c, rel, mode: os.mkfifo(P(c.root, rel), mode), (0,)),
    'symlink': (lambda c, target, rel: os.symlink(target, P(c.root, rel)), (1,)),
    'link': (lambda c, src, dst: os.link(P(c.root, src), P(c.root, dst), follow_symlinks=False), (0, 1)),
    'unlink': (lambda c, rel: os.unlink(P(c.root, rel)), (0,)),
    'rmdir': (lambda c, rel: os.rmdir(P(c.root, rel)), (0,)),
    'rename': (op_rename, (0, 1)),
    'statvfs': (op_statvfs, (0,)),
}
# Kinds that change the tree: their touched paths are compared after them.
MUTATING = {'write', 'mmapwrite', 'truncate', 'chmod', 'chown', 'utime', 'setxattr', 'removexattr',
            'create', 'mkdir', 'mkfifo', 'symlink', 'link', 'unlink', 'rmdir', 'rename'}
# Kinds that follow a symlink in their last component (to change its target).
FOLLOWING = {'write', 'mmapwrite', 'truncate', 'chmod', 'create'}


class Ctx:
    def __init__(self, root, trusted):
        self.root, self.trusted = root, trusted


def run_op(ctx, op):
    """('ok', result), ('err', 'ENOENT'), ('skip', why) or ('exception', name)."""
    kind, *args = op
    fn, path_args = OPS[kind]
    for i in path_args:  # a path whose directory leads out of the mount is never used
        if not inside(ctx.root, P(ctx.root, parent(args[i]))):
            return ('skip', 'leaves the mount')
    try:
        return ('ok', fn(ctx, *args))
    except Skip as s:
        return ('skip', str(s))
    except OSError as e:
        return ('err', errname(e))
    except Exception as e:  # e.g. ValueError from mmap: the same on both sides or a difference
        return ('exception', type(e).__name__)


def touched(m1, op):
    """The paths an operation may have changed: its path arguments, their parents, and
    for a call that follows symlinks the entry it reached (as on the kernel mount)."""
    kind, *args = op
    out = []
    for i in OPS[kind][1]:
        rel = args[i]
        out += [rel, parent(rel)]
        if kind in FOLLOWING:
            target = os.path.realpath(P(m1, rel))
            if target.startswith(m1 + '/'):
                out.append(os.path.relpath(target, m1))
    return list(dict.fromkeys(out))


class Tracker:
    """The set of paths whose mtime is compared: those not set to "now" by an operation.
    Starts with every entry of the merged tree; an operation that succeeded on the kernel
    mount takes out what it stamps with the current time (a content change stamps the
    file, and all names of its inode; adding or removing an entry stamps the directory),
    and utime puts its path back. A rename carries its subtree's status along."""

    def __init__(self, m1):
        self.m1 = m1
        self.trusted = set(walk(m1)) - {'.'}

    def _drop_subtree(self, rel):
        self.trusted -= {p for p in self.trusted if p == rel or p.startswith(rel + '/')}

    def _stamp_inode(self, rel):
        self.trusted.discard(rel)
        try:
            st = os.lstat(P(self.m1, rel))
        except OSError:
            return
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            for other, mode in walk(self.m1).items():  # (mode 0: cannot be looked up)
                if mode and not stat.S_ISDIR(mode) and os.lstat(P(self.m1, other)).st_ino == st.st_ino:
                    self.trusted.discard(other)

    def after(self, op, result):
        if result[0] != 'ok':
            return
        kind, *args = op
        if kind in ('write', 'mmapwrite', 'truncate', 'create'):
            for rel in touched(self.m1, op):  # the file and the entry it reached
                if rel != parent(args[0]):
                    self._stamp_inode(rel)
            if kind == 'create' or (kind == 'write' and 'O_CREAT' in args[1]):  # may have added an entry
                self.trusted.discard(parent(args[0]))
        elif kind in ('mkdir', 'mkfifo', 'unlink', 'rmdir'):
            self._drop_subtree(args[0])
            self.trusted.discard(parent(args[0]))
        elif kind in ('symlink', 'link'):
            self._drop_subtree(args[1])
            self.trusted.discard(parent(args[1]))
        elif kind == 'rename':
            src, dst = args
            moved = {p for p in self.trusted if p == src or p.startswith(src + '/')}
            self._drop_subtree(src)
            self._drop_subtree(dst)
            self.trusted |= {dst + p[len(src):] for p in moved}
            self.trusted -= {parent(src), parent(dst)}
        elif kind == 'utime':
            self._stamp_inode(args[0])
            self.trusted.add(args[0])


# Scripted operations, in order; later ones see the effects of earlier ones.
NS = (T0 + 10**7) * 10**9 + 999  # an explicit mtime for utime
SCRIPT = [
    # Reading the initial stack.
    ('read', 'a.txt'), ('read', 'big.bin'), ('read', 'empty'), ('read', 'merged/shadowed.txt'),
    ('read', 'sym-rel'), ('read', 'link-top'), ('read', 'sym-dangling'), ('read', 'gone.txt'),
    ('read', 'fd'), ('read', 'fd/child'), ('read', 'df/inner'), ('read', 'odir/x'), ('read', 'fifo'),
    ('read', 'merged'),
    ('stat', 'setuid'), ('stat', 'setgid'), ('stat', 'hl1'), ('stat', 'chr'), ('stat', 'blk'),
    ('stat', 'sym-abs'), ('stat', 'merged'), ('stat', 'd/e'), ('stat', 'gonedir'), ('stat', 'merged/hidden.txt'),
    ('readdir', '.'), ('readdir', 'merged'), ('readdir', 'odir'), ('readdir', 'df'), ('readdir', 'd/e'),
    ('readdir', 'gonedir'), ('readdir', 'fd'), ('readdir', 'emptydir'),
    ('readlink', 'sym-rel'), ('readlink', 'sym-abs'), ('readlink', 'sym-dangling'), ('readlink', 'a.txt'),
    ('getxattr', 'a.txt', 'user.comment'), ('getxattr', 'a.txt', 'trusted.test'),
    ('getxattr', 'exec.sh', 'user.empty'), ('getxattr', 'a.txt', 'user.none'),
    ('getxattr', 'odir', 'trusted.overlay.opaque'), ('getxattr', 'd', 'user.dir'),
    ('listxattr', 'a.txt'), ('listxattr', 'odir'), ('listxattr', 'merged'), ('listxattr', 'sym-rel'),
    # Stubs: the data file's bytes (data0's before data1's), the stub's attributes and xattrs,
    # overlayfs's own hidden; a missing data file: stat works, open fails (ENOENT); stubs
    # above the bottom layer (EPERM unless metacopy=on).
    ('read', 'stubs/twin1'), ('read', 'stubs/twin2'), ('read', 'stubs/big-twin'), ('read', 'secret'),
    ('stat', 'stubs/twin1'), ('stat', 'stubs/twin2'), ('stat', 'hl2'), ('stat', 'stubs/missing'),
    ('read', 'stubs/missing'), ('fsync', 'stubs/missing'), ('listxattr', 'stubs/missing'),
    ('getxattr', 'stubs/twin1', 'trusted.overlay.metacopy'), ('getxattr', 'stubs/twin1', 'trusted.overlay.redirect'),
    ('getxattr', 'stubs/twin1', 'user.twin'), ('listxattr', 'stubs/twin1'), ('listxattr', 'hl1'),
    ('read', 'merged/top.txt'), ('read', 'd/e/mid.txt'), ('stat', 'odir/z'), ('readdir', 'odir'),
    # Copy-up by writing, with each kind of open; hl1 leaves its lower hard link hl2 behind.
    ('write', 'a.txt', 'O_WRONLY', 0, b'ALPHA'),
    ('write', 'exec.sh', 'O_RDWR', 4, b'XX'),
    ('write', 'secret', 'O_WRONLY|O_APPEND', None, b'more\n'),
    ('write', 'setuid', 'O_WRONLY|O_TRUNC', None, b'new\n'),
    ('write', 'hl1', 'O_WRONLY|O_APPEND', None, b'+\n'),
    ('write', 'big.bin', 'O_RDWR', 3_000_000, b'in the middle'),
    ('write', 'sym-rel', 'O_WRONLY|O_APPEND', None, b'through a symlink\n'),
    ('write', 'merged/shadowed.txt', 'O_RDONLY', 0, b'x'),
    ('write', 'merged', 'O_WRONLY', 0, b'x'),
    ('write', 'fifo', 'O_WRONLY', None, b'x'),
    ('stat', 'hl1'), ('stat', 'hl2'),
    # Deep copy-up: the parents come up with their modes, owners, xattrs and mtimes.
    ('write', 'd/e/f/deep.txt', 'O_WRONLY|O_APPEND', None, b'deeper\n'),
    ('stat', 'd'), ('stat', 'd/e'), ('stat', 'd/e/f'), ('readdir', 'd/e'),
    # truncate, chmod, chown, utime.
    ('truncate', 'empty', 10000), ('truncate', 'setgid', 3), ('truncate', 'merged/bottom.txt', 0),
    ('truncate', 'missing', 1), ('truncate', 'merged', 0),
    ('chmod', 'secret', 0o640), ('chmod', 'd/e', 0o755), ('chmod', 'merged/mid.txt', 0o4711),
    ('chown', 'fifo', 1000, 1000), ('chown', 'sym-dangling', 1000, 0), ('chown', 'setuid', 1000, -1),
    ('chown', 'emptydir', 1000, 1000),
    ('utime', 'top.txt', NS), ('utime', 'sym-abs', NS + 1), ('utime', 'merged', NS + 2),
    ('utime', 'missing', NS),
    # xattrs on lower files and dirs; trusted.overlay.* and user.overlay.* set through the
    # mount are plain attributes, never overlay metadata (sub must not turn opaque).
    ('setxattr', 'exec.sh', 'user.new', b'v'), ('setxattr', 'a.txt', 'user.comment', b'changed'),
    ('removexattr', 'hl2', 'user.hl'), ('removexattr', 'a.txt', 'user.none'),
    ('setxattr', 'merged', 'user.layer', b'x'), ('removexattr', 'd', 'user.dir'),
    ('setxattr', 'fifo', 'user.x', b'1'), ('setxattr', 'sym-rel', 'user.x', b'1'),
    ('setxattr', 'sub', 'trusted.overlay.opaque', b'y'), ('setxattr', 'sub', 'user.overlay.opaque', b'y'),
    ('getxattr', 'sub', 'trusted.overlay.opaque'), ('listxattr', 'sub'), ('readdir', 'sub'),
    ('removexattr', 'sub', 'trusted.overlay.opaque'), ('readdir', 'sub'),
    # Copying stubs up: the data file's bytes and the stub's metadata, without overlayfs's
    # xattrs; the other stubs of the data file, and the data file, stay as they were. Every
    # copy-up of the stub without data fails (ENOENT), also O_TRUNC; removing it works.
    ('write', 'stubs/twin1', 'O_WRONLY|O_APPEND', None, b'more\n'), ('read', 'stubs/twin2'), ('read', 'sub/file1'),
    ('listxattr', 'stubs/twin1'), ('getxattr', 'stubs/twin1', 'trusted.overlay.redirect'),
    ('chmod', 'stubs/twin2', 0o604), ('read', 'stubs/twin2'), ('listxattr', 'stubs/twin2'),
    ('setxattr', 'stubs/twin2', 'trusted.overlay.redirect', b'/ff/00000000000000'), ('read', 'stubs/twin2'),
    ('write', 'stubs/missing', 'O_WRONLY|O_TRUNC', None, b'x'), ('truncate', 'stubs/missing', 0),
    ('chmod', 'stubs/missing', 0o600), ('utime', 'stubs/missing', NS + 3), ('setxattr', 'stubs/missing', 'user.x', b'1'),
    ('link', 'stubs/missing', 'stubs/missing-link'), ('rename', 'stubs/missing', 'stubs/missing2'),
    ('mmapwrite', 'stubs/missing', 0, b'x'), ('stat', 'stubs/missing'), ('unlink', 'stubs/missing'),
    ('stat', 'stubs/missing'), ('readdir', 'stubs'),
    ('link', 'stubs/big-twin', 'stubs/big-link'), ('stat', 'stubs/big-twin'), ('read', 'stubs/big-link'),
    ('mmapwrite', 'merged/bottom.txt', 2, b'TT'), ('truncate', 'sub/file2', 3), ('read', 'sub/file2'),
    ('rename', 'merged/bottom.txt', 'sub/moved.txt'), ('read', 'sub/moved.txt'), ('stat', 'sub/moved.txt'),
    ('rename', 'xdir/inner', 'xdir/inner2'), ('read', 'xdir/inner2'), ('chown', 'd/e/mid.txt', 1000, 1000),
    ('write', 'merged/top.txt', 'O_RDWR', 1, b'O'), ('read', 'merged/top.txt'), ('unlink', 'odir/z'),
    # Creating: files, over a whiteout, O_EXCL on existing names, dirs, fifos, symlinks.
    ('write', 'new.txt', 'O_WRONLY|O_CREAT|O_EXCL', None, b'hello\n'),
    ('create', 'gone.txt', 0o600, True), ('read', 'gone.txt'),
    ('create', 'a.txt', 0o600, True), ('create', 'hl2', 0o600, True), ('create', 'merged', 0o600, False),
    ('create', 'merged/hidden.txt', 0o640, False), ('readdir', 'merged'),
    ('mkdir', 'gonedir', 0o755), ('readdir', 'gonedir'), ('stat', 'gonedir'),
    ('mkdir', 'newdir', 0o700), ('mkdir', 'a.txt', 0o755), ('mkdir', 'nodir/x', 0o755),
    ('mkfifo', 'newdir/pipe', 0o600), ('mkfifo', 'fifo', 0o600),
    ('symlink', '../a.txt', 'newdir/up'), ('read', 'newdir/up'), ('symlink', 'x', 'sym-rel'),
    # Hard links of a lower file (copied up; hl1 already was) and of an upper file.
    ('link', 'hl2', 'newdir/hl2-link'), ('stat', 'hl2'), ('stat', 'hl1'),
    ('link', 'new.txt', 'new-link'), ('stat', 'new.txt'), ('link', 'newdir', 'dirlink'),
    ('link', 'missing', 'x'), ('link', 'a.txt', 'top.txt'),
    # Removing.
    ('unlink', 'top.txt'), ('unlink', 'new-link'), ('unlink', 'missing'), ('unlink', 'merged'),
    ('unlink', 'merged/mid.txt'), ('readdir', 'merged'), ('stat', 'new.txt'),
    ('rmdir', 'newdir'), ('rmdir', 'emptydir'), ('rmdir', 'merged'), ('rmdir', 'a.txt'),
    ('unlink', 'alldel/one'), ('unlink', 'alldel/two'), ('rmdir', 'alldel'),
    ('unlink', 'alldel/three'), ('readdir', 'alldel'), ('rmdir', 'alldel'), ('stat', 'alldel'),
    ('mkdir', 'alldel', 0o755), ('readdir', 'alldel'),
    ('rmdir', 'emptydir'), ('mkdir', 'emptydir', 0o700), ('readdir', 'emptydir'),
    # Renaming.
    ('rename', 'sub/file1', 'sub/file1b'), ('rename', 'sub/file2', 'merged/file2'),
    ('rename', 'exec.sh', 'a.txt'), ('rename', 'empty', 'empty-renamed'), ('rename', 'missing', 'x'),
    ('mkdir', 'pure', 0o755), ('create', 'pure/x', 0o644, True), ('rename', 'pure', 'pure2'),
    ('readdir', 'pure2'), ('rename', 'xdir', 'xdir2'), ('rename', 'd', 'merged/d'),
    ('rename', 'a.txt', 'merged'), ('rename', 'pure2', 'merged'), ('rename', 'pure2', 'new.txt'),
    ('rename', 'xdir', 'merged'), ('rename', 'merged/top.txt', 'merged/top2.txt'),
    ('mkdir', 'pure3', 0o755), ('rename', 'pure2', 'pure3'), ('readdir', 'pure3'),
    ('rename', 'pure3', 'pure3/below'), ('rename', 'gonedir', 'gonedir2'),
    # mmap write to a copied-up file and to a lower file, fsync, statvfs.
    ('mmapwrite', 'secret', 0, b'MM'), ('read', 'secret'),
    ('mmapwrite', 'd/e/mid.txt', 1, b'ID'), ('read', 'd/e/mid.txt'),
    ('mmapwrite', 'gone.txt', 0, b'x'),
    ('fsync', 'a.txt'), ('fsync', 'merged'), ('fsync', 'big.bin'),
    ('statvfs', '.'), ('statvfs', 'merged/bottom.txt'),
    # The directories after all that.
    ('readdir', '.'), ('readdir', 'merged'), ('readdir', 'sub'), ('readdir', 'd/e/f'),
]


# Randomized operations: drawn from the op kinds over existing names, names seen before
# (most now gone) and new names.
WEIGHTS = {
    'read': 6, 'stat': 6, 'readdir': 5, 'readlink': 2, 'getxattr': 3, 'listxattr': 3,
    'write': 12, 'mmapwrite': 3, 'fsync': 1, 'truncate': 4, 'chmod': 4, 'chown': 3,
    'utime': 3, 'setxattr': 4, 'removexattr': 3, 'create': 5, 'mkdir': 5, 'mkfifo': 2,
    'symlink': 3, 'link': 4, 'unlink': 6, 'rmdir': 4, 'rename': 8, 'statvfs': 1,
}
XATTR_NAMES = ('user.comment', 'user.a', 'user.overlay.opaque', 'trusted.test', 'trusted.overlay.opaque',
               'trusted.overlay.metacopy', 'trusted.overlay.redirect', 'user.twin')
WRITE_FLAGS = ('O_WRONLY', 'O_RDWR', 'O_WRONLY|O_APPEND', 'O_WRONLY|O_TRUNC', 'O_RDWR|O_CREAT',
               'O_WRONLY|O_CREAT|O_EXCL', 'O_RDWR|O_CREAT|O_TRUNC')
MODES = (0o644, 0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o700, 0o000)
OWNERS = ((0, 0), (1000, 1000), (1000, 0), (-1, 1000), (0, -1))


def random_op(rng, tree, seen, i):
    names = [p for p in tree if p != '.']
    dirs = [p for p, mode in tree.items() if stat.S_ISDIR(mode)]

    def old():
        return rng.choice(names) if names and rng.random() < 0.9 else rng.choice(seen)

    def new():
        return P(rng.choice(dirs), f'r{i}').removeprefix('./')

    def any_name():
        return old() if rng.random() < 0.5 else new()

    kind = rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
    if kind in ('read', 'stat', 'readdir', 'readlink', 'listxattr', 'fsync', 'statvfs', 'unlink', 'rmdir'):
        return (kind, old())
    if kind == 'getxattr' or kind == 'removexattr':
        return (kind, old(), rng.choice(XATTR_NAMES))
    if kind == 'setxattr':
        return (kind, old(), rng.choice(XATTR_NAMES), rng.randbytes(rng.randint(0, 8)))
    if kind == 'write':
        flags = rng.choice(WRITE_FLAGS)
        offset = rng.choice((None, 0, rng.randint(0, 100), 70_000))
        return (kind, any_name() if 'O_CREAT' in flags else old(), flags, offset, rng.randbytes(rng.randint(0, 40)))
    if kind == 'mmapwrite':
        return (kind, old(), rng.randint(0, 10), rng.randbytes(rng.randint(1, 8)))
    if kind == 'truncate':
        return (kind, old(), rng.choice((0, 1, 10, 4096, 100_000)))
    if kind == 'chmod':
        return (kind, old(), rng.choice(MODES))
    if kind == 'chown':
        return (kind, old(), *rng.choice(OWNERS))
    if kind == 'utime':
        return (kind, old(), NS + i * 1000 + rng.randint(0, 999))
    if kind == 'create':
        return (kind, any_name(), rng.choice(MODES), rng.random() < 0.5)
    if kind in ('mkdir', 'mkfifo'):
        return (kind, any_name(), rng.choice((0o755, 0o700, 0o1777)))
    if kind == 'symlink':  # relative targets without '..': they stay inside the mount
        return (kind, rng.choice(('a.txt', 'merged', 'nowhere', os.path.basename(old()))), new())
    if kind == 'link':
        return (kind, old(), any_name())
    if kind == 'rename':
        return (kind, old(), any_name())
    raise AssertionError(kind)


# ----------------------------------------------------------------------- comparisons

class Report:
    def __init__(self, other):
        self.other = other  # the name of the second mount in messages
        self.count = 0
        self.state_diffs = set()  # (path, field, kernel, other) reported after an op

    def diff(self, where, what, kernel, mine):
        self.fail(f'{where}: {what}: kernel={kernel!r} {self.other}={mine!r}')

    def fail(self, message):
        self.count += 1
        print(f'DIFF {message}', flush=True)


def compare_entries(report, where, rel, d1, d2, once=False):
    """Reports each field of an entry that differs. With once, not a difference already
    reported after an earlier op (it persists; the trees at the end of a phase show it)."""
    pairs = ({field: (d1.get(field), d2.get(field)) for field in set(d1) | set(d2)}
             if isinstance(d1, dict) and isinstance(d2, dict) else {'': (d1, d2)})
    for field, (v1, v2) in sorted(pairs.items()):
        key = (rel, field, repr(v1), repr(v2))
        if v1 == v2 or (once and key in report.state_diffs):
            continue
        if once:
            report.state_diffs.add(key)
        report.diff(where, f'{rel}: {field}' if field else rel, v1, v2)


def compare_trees(report, where, m1, m2, trusted):
    try:
        t1 = walk(m1)
    except OSError as e:
        report.fail(f'{where}: walking the kernel mount: {e}')
        return
    try:
        t2 = walk(m2)
    except OSError as e:  # e.g. ENOTCONN: the daemon died
        report.diff(where, 'walking the tree', 'ok', str(e))
        return
    for rel in sorted(set(t1) | set(t2)):
        if rel not in t2 or rel not in t1:
            report.diff(where, rel, 'present' if rel in t1 else 'absent', 'present' if rel in t2 else 'absent')
            continue
        compare_entries(report, where, rel, describe(m1, rel, trusted), describe(m2, rel, trusted))


def apply_both(report, where, op, m1, m2, tracker, gap):
    """Runs op on both mounts, gap seconds apart, and compares the results and then the
    paths it touched."""
    r1 = run_op(Ctx(m1, tracker.trusted), op)
    time.sleep(gap)
    r2 = run_op(Ctx(m2, tracker.trusted), op)
    if r1 != r2:
        report.diff(where, repr(op), r1, r2)
    tracker.after(op, r1)
    if op[0] in MUTATING:
        for rel in touched(m1, op):
            compare_entries(report, f'{where} {op!r}', rel,
                            describe(m1, rel, tracker.trusted), describe(m2, rel, tracker.trusted), once=True)


# ---------------------------------------------------------------------------- mounts

def mounts_under(base):
    with open('/proc/mounts') as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(base + '/')]


def run(cmd):
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} exited {r.returncode}: {r.stderr.strip()}')


def mount_kernel(lowerdir, upper, work, target):
    opts = f'{OPTS},lowerdir={lowerdir}'
    if upper:
        opts += f',upperdir={upper},workdir={work}'
    else:
        opts += ',ro'
    run(['mount', '-t', 'overlay', 'overlay', '-o', opts, target])


def mount_snapfs(snapfs, lowerdir, upper, work, target):
    """Mounts in daemon mode, with the kernel mount's options: the program returns once the
    mount is in place (its stderr goes to a file: a pipe would be held open by the daemon)."""
    with tempfile.TemporaryFile() as err:
        r = subprocess.run([snapfs, '-o', f'{OPTS},lowerdir={lowerdir},upperdir={upper},workdir={work}', target],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, timeout=60)
        err.seek(0)
        if r.returncode != 0:
            raise RuntimeError(f'{snapfs} exited {r.returncode}: {err.read().decode(errors="replace").strip()}')
    if target not in mounts_under(os.path.dirname(target)):
        raise RuntimeError(f'{snapfs} exited 0 but {target} is not in /proc/mounts')


def unmount(target):
    run(['umount', target])
    for _ in range(100):  # a FUSE daemon finishes asynchronously
        if target not in mounts_under(os.path.dirname(target)):
            return
        time.sleep(0.05)
    raise RuntimeError(f'{target} still mounted after umount')


def cleanup(base):
    for target in reversed(mounts_under(base)):
        if subprocess.run(['umount', target], capture_output=True).returncode != 0:
            subprocess.run(['umount', '-l', target], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def find_snapfs():
    if os.environ.get('SNAPFS'):
        found = os.environ['SNAPFS']
    elif os.environ.get('SNAPFS_BIN_DIR'):
        found = os.path.join(os.environ['SNAPFS_BIN_DIR'], 'snapfs')
    else:
        found = shutil.which('snapfs')
    if not found:
        sys.exit('difftest: no snapfs: set SNAPFS or SNAPFS_BIN_DIR, or put snapfs on PATH')
    if not (os.path.isfile(found) and os.access(found, os.X_OK)):
        sys.exit(f'difftest: {found} is not an executable')
    return found


# ------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--seed', type=int, default=1, help='seed of the randomized operations')
    ap.add_argument('--ops', type=int, default=400, help='how many randomized operations (0: none)')
    ap.add_argument('--tmp', default='/var/tmp',
                    help='where to make the temp dir (a file system with trusted.* xattrs; default /var/tmp)')
    ap.add_argument('--metacopy', action='store_true',
                    help='mount both with metacopy=on (stubs of every layer followed; no directory renames)')
    ap.add_argument('--self-check', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()
    global OPTS
    OPTS = METACOPY_OPTS if args.metacopy else KERNEL_OPTS
    snapfs = None if args.self_check else find_snapfs()
    report = Report('kernel#2' if args.self_check else 'snapfs')
    os.umask(0o022)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit('difftest: terminated'))  # cleans up too
    started = time.monotonic()
    base = tempfile.mkdtemp(prefix='snapfs-difftest-', dir=os.path.realpath(args.tmp))
    try:
        d = {name: os.path.join(base, name) for name in ('u1', 'w1', 'm1', 'u2', 'w2', 'm2')}
        for path in d.values():
            os.mkdir(path)
        m1, m2 = d['m1'], d['m2']
        build_layers(base)
        lowers_before = snapshot_lowers(base)
        lowerdir = ':'.join(os.path.join(base, name) for name in LOWERS)
        lowerdir += ''.join('::' + os.path.join(base, name) for name in DATA)

        mount_kernel(lowerdir, d['u1'], d['w1'], m1)
        if args.self_check:
            mount_kernel(lowerdir, d['u2'], d['w2'], m2)
        else:
            mount_snapfs(snapfs, lowerdir, d['u2'], d['w2'], m2)
        tracker = Tracker(m1)
        # In a self-check, both mounts stamp "now" more than a clock tick apart, so that a
        # mtime the tracker wrongly keeps shows up as a difference.
        gap = 0.005 if args.self_check else 0
        compare_trees(report, 'initial tree', m1, m2, tracker.trusted)

        for i, op in enumerate(SCRIPT):
            apply_both(report, f'scripted op {i}', op, m1, m2, tracker, gap)
        compare_trees(report, 'tree after scripted ops', m1, m2, tracker.trusted)

        rng = random.Random(args.seed)
        seen = sorted(walk(m1))
        for i in range(args.ops):
            tree = walk(m1)
            seen += sorted(set(tree) - set(seen))
            apply_both(report, f'random op {i} (seed {args.seed})', random_op(rng, tree, seen, i), m1, m2, tracker, gap)
        compare_trees(report, 'tree after random ops', m1, m2, tracker.trusted)

        # Each upper read back by the kernel on top of the same lowers, read-only.
        unmount(m1)
        unmount(m2)
        mount_kernel(f'{d["u1"]}:{lowerdir}', None, None, m1)
        mount_kernel(f'{d["u2"]}:{lowerdir}', None, None, m2)
        compare_trees(report, 'uppers read back by the kernel', m1, m2, tracker.trusted)
        unmount(m1)
        unmount(m2)

        lowers_after = snapshot_lowers(base)
        for rel in sorted(set(lowers_before) | set(lowers_after)):
            before, after = lowers_before.get(rel, {}), lowers_after.get(rel, {})
            for field in sorted(set(before) | set(after)):
                if before.get(field) != after.get(field):
                    report.fail(f'lower layers: {rel}: {field}: before={before.get(field)!r} after={after.get(field)!r}')
    except RuntimeError as e:  # a mount or unmount failed
        sys.exit(f'difftest: FAIL: {e}')
    finally:
        cleanup(base)
    print(f'difftest: {len(SCRIPT)} scripted and {args.ops} random ops (seed {args.seed}, {OPTS}) '
          f'against {snapfs or "kernel overlayfs (self-check)"}: {report.count} differences '
          f'in {time.monotonic() - started:.1f}s', flush=True)
    sys.exit(1 if report.count else 0)


if __name__ == '__main__':
    main()
