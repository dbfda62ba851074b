"""scripts/bench-fuse-requests' timed part: prints warm small reads/s, GETXATTR/s and sparse GETXATTR/s of MOUNT."""
import errno
import importlib.util
import os
import sys
import time

# bench-fuse.py's read loop, so both benchmarks read files the same way.
spec = importlib.util.spec_from_file_location("bench_fuse", os.path.join(os.path.dirname(__file__), "bench-fuse.py"))
bench_fuse = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_fuse)

root = sys.argv[1]
files = [os.path.join(root, d, f) for d in sorted(os.listdir(root)) for f in sorted(os.listdir(os.path.join(root, d)))]
buf = bytearray(65536)
size = sum(os.lstat(p).st_size for p in files)


def read_all():
    n = sum(bench_fuse.read_file(p, buf) for p in files)
    if n != size:
        sys.exit(f"read {n} bytes, the files hold {size}")


read_all()  # the first pass: data and attributes cached from here on
reads = []
for _ in range(5):
    t = time.perf_counter()
    read_all()
    reads.append(len(files) / (time.perf_counter() - t))


def getxattr_missing():
    try:
        os.getxattr(files[0], "user.none")
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise


xattrs = []
for _ in range(3):
    t = time.perf_counter()
    for _ in range(20000):
        getxattr_missing()
    xattrs.append(20000 / (time.perf_counter() - t))
# A sparse stream: one GETXATTR every 200 us (what busy polling must not pay for).
t = time.perf_counter()
for _ in range(3000):
    getxattr_missing()
    time.sleep(0.0002)
sparse = 3000 / (time.perf_counter() - t)
print(f"{sorted(reads)[2]:.0f} {sorted(xattrs)[1]:.0f} {sparse:.0f}")
