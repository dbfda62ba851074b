#!/usr/bin/env python3
"""Helper of scripts/bench-fuse (python 3.11, standard library only).

  bench-fuse.py layer1 ROOT --big-mib N --files N --dirs N
  bench-fuse.py layer2 ROOT --files N --dirs N
  bench-fuse.py session NAME MNT --upper DIR --driver D --round R --big-mib N
                        --create N --write-mib N    (prints one JSON line per case)
  bench-fuse.py report RAW.jsonl OUTDIR [--meta KEY=VALUE]...

Every timed case is measured with time.perf_counter_ns (CLOCK_MONOTONIC) around the
system calls only; setup (dropping caches, listing, checks) is outside the timed span.
"""
import argparse
import errno
import html
import json
import os
import random
import stat
import statistics
import sys
import time

MiB = 1 << 20
BIG = "big.bin"
SEED = 20261123

# Warm cases repeat their pass this many times and count the median pass.
WARM_PASSES = {"walk-warm": 9, "small-read-warm": 5, "view-read-warm": 5}

# Every case in the order it is reported: (name, unit, what its amount counts, description).
CASES = [
    ("big-read-cold", "MiB/s", "MiB", "sequential read of the big lower file, fresh mount, caches dropped (1 MiB reads)"),
    ("big-read-warm", "MiB/s", "MiB", "the same read again right after (new open, page cache warm)"),
    ("walk-cold", "entries/s", "entries", "os.scandir recursion + lstat of every entry, fresh mount, caches dropped"),
    ("walk-warm", "entries/s", "entries", "the same walk again right after, 9 times (the median pass: one takes "
     "about 15 ms, within this machine's noise)"),
    ("small-read", "files/s", "files", "open+read+close of every small file after the cold walk (metadata warm, data cold)"),
    ("small-read-warm", "files/s", "files", "the same reads again (data warm), 5 times (the median pass)"),
    ("round-trip", "requests/s", "requests", "getxattr of a name the file lacks, 20,000 times: one request each, which "
     "no cache answers (the kernel: none)"),
    ("view-read", "files/s", "files", "read-only mount of the same layers (a view): open+read+close of every small file, "
     "fresh mount, caches dropped, after a walk"),
    ("view-read-warm", "files/s", "files", "the same reads again on the view (data warm), 5 times (the median pass)"),
    ("create", "files/s", "files", "create new dirs of 100 files, 4 KiB each (mkdir, open O_WRONLY|O_CREAT|O_EXCL, write, "
     "close; no fsync)"),
    ("create-trunc", "files/s", "files", "the same with open O_RDWR|O_CREAT|O_TRUNC, mode 0666, as Go's os.Create and the "
     "shell's > do"),
    ("copy-up", "MiB/s", "MiB", "open the big lower file for append, write 1 byte, close (full copy-up), caches dropped; "
     "kernel overlayfs fsyncs the copied-up file (it does unless mounted volatile), fuse-overlayfs does not"),
    ("seq-write", "MiB/s", "MiB", "write a new file with 1 MiB writes, then close (no fsync)"),
    ("seq-write-fsync", "MiB/s", "MiB", "the same with fsync before close"),
]
CASE_INFO = {c[0]: c for c in CASES}
DRIVERS = ["kernel", "snapfs", "fuse-overlayfs"]


def small_name(i, dirs):
    return f"d{i % dirs:02d}/f{i:05d}.bin"


def small_size(rng):
    return rng.randint(1, 16) * 1024 - rng.randint(0, 1023)


def write_file(path, data):
    with open(path, "wb") as f:
        f.write(data)


def cmd_layer1(a):
    rng = random.Random(SEED)
    for d in range(a.dirs):
        os.mkdir(os.path.join(a.root, f"d{d:02d}"))
    with open(os.path.join(a.root, BIG), "wb") as f:
        for _ in range(a.big_mib):
            f.write(os.urandom(MiB))
    total = 0
    for i in range(a.files):
        n = small_size(rng)
        write_file(os.path.join(a.root, small_name(i, a.dirs)), os.urandom(n))
        total += n
    print(f"layer1: {a.big_mib} MiB {BIG}, {a.files} files ({total / MiB:.1f} MiB) in {a.dirs} dirs")


def cmd_layer2(a):
    rng = random.Random(SEED + 1)
    gone_dir = f"d{a.dirs - 1:02d}"
    eligible = [i for i in range(a.files) if i % a.dirs != a.dirs - 1]
    rng.shuffle(eligible)
    rewrite, delete = eligible[: a.files // 4], eligible[a.files // 4: a.files // 4 + a.files // 20]
    for i in rewrite:
        write_file(os.path.join(a.root, small_name(i, a.dirs)), os.urandom(small_size(rng)))
    for i in delete:
        os.unlink(os.path.join(a.root, small_name(i, a.dirs)))
    in_gone = sum(1 for i in range(a.files) if i % a.dirs == a.dirs - 1)
    for e in os.scandir(os.path.join(a.root, gone_dir)):
        os.unlink(e.path)
    os.rmdir(os.path.join(a.root, gone_dir))
    print(f"layer2: rewrote {len(rewrite)} files, deleted {len(delete)} files and {gone_dir}/ ({in_gone} files)")
    # What a walk of the merged tree must find: the big file, the dirs left, the files left.
    print(f"expected entries: {1 + (a.dirs - 1) + a.files - in_gone - len(delete)}")


# ---------------------------------------------------------------- timed cases


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(fn):
    t0 = time.perf_counter_ns()
    r = fn()
    return (time.perf_counter_ns() - t0) / 1e9, r


def read_file(path, buf):
    n = 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n


def walk(root):
    """os.scandir recursion with an lstat of every entry; returns (entries, [(path, size)])."""
    entries, files, stack = 0, [], [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = os.lstat(e.path)
                entries += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                elif stat.S_ISREG(st.st_mode):
                    files.append((e.path, st.st_size))
    return entries, files


def write_new(path, mib, chunk, do_fsync):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(mib):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        if do_fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def cmd_session(a):
    out = []
    mnt = a.mnt

    def emit(case, seconds, amount, **extra):
        unit = CASE_INFO[case][2]
        out.append({"round": a.round, "driver": a.driver, "case": case, "seconds": seconds,
                    "amount": amount, "amount_unit": unit, "rate": amount / seconds, **extra})

    def read_small(files, cases, **extra):
        """Reads every small file of a walk's (path, size) list once per case, checking the bytes."""
        small = [p for p, _ in files if os.path.basename(p) != BIG]
        expect = sum(sz for p, sz in files if os.path.basename(p) != BIG)
        sbuf = bytearray(65536)
        for case in cases:
            passes = []
            for _ in range(WARM_PASSES.get(case, 1)):
                s, n = timed(lambda: sum(read_file(p, sbuf) for p in small))
                if n != expect:
                    sys.exit(f"{a.driver}: {case}: read {n} bytes of small files, their sizes add up to {expect}")
                passes.append(s)
            emit(case, statistics.median(passes), len(small), bytes=n, **extra)

    buf = bytearray(MiB)
    big = os.path.join(mnt, BIG)
    if a.name == "bigread":
        drop_caches()
        for case in ("big-read-cold", "big-read-warm"):
            s, n = timed(lambda: read_file(big, buf))
            if n != a.big_mib * MiB:
                sys.exit(f"{a.driver}: read {n} bytes of {BIG}, expected {a.big_mib * MiB}")
            emit(case, s, n / MiB)
    elif a.name == "tree":
        drop_caches()
        listing = None
        for case in ("walk-cold", "walk-warm"):
            passes = []
            for _ in range(WARM_PASSES.get(case, 1)):
                s, (entries, files) = timed(lambda: walk(mnt))
                passes.append(s)
            emit(case, statistics.median(passes), entries)
            listing = listing or files
        read_small(listing, ("small-read", "small-read-warm"), entries=entries)
    elif a.name == "roundtrip":
        path = os.path.join(mnt, BIG)
        n = 20000

        def getxattrs():
            for _ in range(n):
                try:
                    os.getxattr(path, "user.snapfs-bench-none")
                except OSError as e:
                    if e.errno != errno.ENODATA:
                        raise
        s, _ = timed(getxattrs)
        emit("round-trip", s, n)
    elif a.name == "view":
        drop_caches()
        _, files = walk(mnt)
        read_small(files, ("view-read", "view-read-warm"))
    elif a.name in ("create", "create-trunc"):
        data = os.urandom(MiB)
        dirs = (a.create + 99) // 100
        if a.name == "create":
            flags, mode = os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
        else:
            flags, mode = os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666

        def create():
            i = 0
            for d in range(dirs):
                dp = os.path.join(mnt, f"new{d:03d}")
                os.mkdir(dp)
                for _ in range(min(100, a.create - i)):
                    fd = os.open(os.path.join(dp, f"n{i:05d}"), flags, mode)
                    off = (i * 4096) % (MiB - 4096)
                    os.write(fd, data[off:off + 4096])
                    os.close(fd)
                    i += 1

        drop_caches()
        s, _ = timed(create)
        # (fuse-overlayfs also puts opaque markers, .wh..opq and .wh..wh..opq, in a new dir)
        got = sum(1 for d in range(dirs) for n in os.listdir(os.path.join(a.upper, f"new{d:03d}"))
                  if n.startswith("n"))
        if got != a.create:
            sys.exit(f"{a.driver}: {got} new files in the upper dir, expected {a.create}")
        emit(a.name, s, a.create)
    elif a.name == "copyup":
        def copy_up():
            fd = os.open(big, os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"x")
            os.close(fd)

        drop_caches()
        s, _ = timed(copy_up)
        size = os.stat(os.path.join(a.upper, BIG)).st_size
        if size != a.big_mib * MiB + 1:
            sys.exit(f"{a.driver}: copied-up {BIG} in the upper dir has {size} bytes, expected {a.big_mib * MiB + 1}")
        emit("copy-up", s, a.big_mib)
    elif a.name in ("seqwrite", "seqwrite-fsync"):
        chunk = os.urandom(MiB)
        do_fsync = a.name == "seqwrite-fsync"
        path = os.path.join(mnt, "new.bin")
        drop_caches()
        s, _ = timed(lambda: write_new(path, a.write_mib, chunk, do_fsync))
        size = os.stat(os.path.join(a.upper, "new.bin")).st_size
        if size != a.write_mib * MiB:
            sys.exit(f"{a.driver}: new.bin in the upper dir has {size} bytes, expected {a.write_mib * MiB}")
        emit("seq-write-fsync" if do_fsync else "seq-write", s, a.write_mib)
    else:
        sys.exit(f"unknown session {a.name}")
    for r in out:
        print(json.dumps(r))
        print(f"  {r['case']:<16} {a.driver:<15} {r['seconds']:8.3f} s  "
              f"{fmt_rate(r['rate'])} {CASE_INFO[r['case']][1]}", file=sys.stderr)


# ---------------------------------------------------------------- report


def fmt_rate(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def fmt_ratio(v):
    return "-" if v is None else f"{v:.2f}x"


def ratio(a, b):
    return a / b if a is not None and b else None


def svg_chart(rows, meta, path):
    """Grouped horizontal bars per case, each driver's median rate over the kernel's."""
    colors = {"kernel": "#9e9e9e", "snapfs": "#1f77b4", "fuse-overlayfs": "#ff7f0e"}
    names = {"kernel": "kernel overlayfs", "snapfs": "snapfs", "fuse-overlayfs": "fuse-overlayfs"}
    vals = [r["norm"][d] for r in rows for d in DRIVERS if r["norm"][d] is not None]
    top = max([1.2] + [v * 1.1 for v in vals])
    step = next(s for s in (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50) if top / s <= 10)
    top = step * -(-top // step)
    left, right, bar, gap, head = 200, 70, 14, 16, 92
    width = 960
    plot = width - left - right
    group = bar * len(DRIVERS) + gap
    height = head + group * len(rows) + 40
    x = lambda v: left + plot * v / top
    e = lambda s: html.escape(str(s), quote=True)
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="20" y="22" font-size="16" font-weight="bold">Median rate relative to kernel overlayfs (= 1.0); longer is faster</text>',
         f'<text x="20" y="40" fill="#555">{e(meta.get("subtitle", ""))}</text>']
    lx = left
    for d in DRIVERS:
        o.append(f'<rect x="{lx}" y="52" width="12" height="12" fill="{colors[d]}"/>')
        label = names[d] + (" (stand-in: " + meta["snapfs"] + ")" if d == "snapfs" and meta.get("standin") == "yes" else "")
        o.append(f'<text x="{lx + 16}" y="62">{e(label)}</text>')
        lx += 24 + 7 * len(label)
    y0, y1 = head - 8, head + group * len(rows) - gap + 8
    v = 0.0
    while v <= top + 1e-9:
        o.append(f'<line x1="{x(v):.1f}" y1="{y0}" x2="{x(v):.1f}" y2="{y1}" stroke="#e0e0e0"/>')
        o.append(f'<text x="{x(v):.1f}" y="{y1 + 16}" text-anchor="middle" fill="#555">{v:g}</text>')
        v += step
    for i, r in enumerate(rows):
        gy = head + i * group
        o.append(f'<text x="{left - 8}" y="{gy + bar * 1.5 - 2}" text-anchor="end" font-weight="bold">{e(r["case"])}</text>')
        o.append(f'<text x="{left - 8}" y="{gy + bar * 2.5}" text-anchor="end" fill="#555">kernel {e(fmt_rate(r["rate"]["kernel"]))} {e(r["unit"])}</text>')
        for j, d in enumerate(DRIVERS):
            n = r["norm"][d]
            by = gy + j * bar
            if n is None:
                o.append(f'<text x="{left + 4}" y="{by + bar - 3}" fill="#555">n/a</text>')
                continue
            o.append(f'<rect x="{left}" y="{by}" width="{max(x(n) - left, 1):.1f}" height="{bar - 2}" fill="{colors[d]}">'
                     f'<title>{e(d)}: {e(fmt_rate(r["rate"][d]))} {e(r["unit"])} ({n:.2f}x kernel)</title></rect>')
            o.append(f'<text x="{x(n) + 4:.1f}" y="{by + bar - 4}" font-size="11">{n:.2f}</text>')
    o.append(f'<line x1="{x(1):.1f}" y1="{y0}" x2="{x(1):.1f}" y2="{y1}" stroke="#333" stroke-dasharray="4,3"/>')
    o.append(f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{y1}" stroke="#333"/>')
    o.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(o) + "\n")


def goals(med):
    """The goals for snapfs, each (text, holds or None when a number is missing, detail)."""
    out = []
    fo = {c: ratio(med[c]["snapfs"], med[c]["fuse-overlayfs"]) for c in med}
    worst = min(((v, c) for c, v in fo.items() if v is not None), default=(None, None))
    out.append(("snapfs >= 1.0x fuse-overlayfs on every case",
                None if None in fo.values() else worst[0] >= 1.0,
                f"lowest {fmt_ratio(worst[0])} on {worst[1]}"))
    for c in ("create", "create-trunc"):
        out.append((f"snapfs >= 1.2x fuse-overlayfs on {c}", None if fo.get(c) is None else fo[c] >= 1.2,
                    fmt_ratio(fo.get(c))))
    k = ratio(med["view-read-warm"]["snapfs"], med["view-read-warm"]["kernel"]) if "view-read-warm" in med else None
    out.append(("snapfs >= 0.8x kernel on view-read-warm", None if k is None else k >= 0.8, fmt_ratio(k)))
    return out


def cmd_report(a):
    meta = dict(m.split("=", 1) for m in a.meta)
    runs = [json.loads(line) for line in open(a.raw) if line.strip()]
    per = {}
    for r in runs:
        per.setdefault(r["case"], {}).setdefault(r["driver"], []).append(r["rate"])
    med, rows = {}, []
    for case, unit, _, desc in CASES:
        if case not in per:
            continue
        rates = {d: (statistics.median(per[case][d]) if per[case].get(d) else None) for d in DRIVERS}
        med[case] = rates
        rows.append({"case": case, "unit": unit, "description": desc, "rate": rates,
                     "min": {d: min(per[case].get(d)) if per[case].get(d) else None for d in DRIVERS},
                     "max": {d: max(per[case].get(d)) if per[case].get(d) else None for d in DRIVERS},
                     "n": {d: len(per[case].get(d, [])) for d in DRIVERS},
                     "norm": {d: ratio(rates[d], rates["kernel"]) for d in DRIVERS}})
    # Every driver must have seen the same tree.
    seen = {}
    for r in runs:
        if r["case"] == "walk-cold":
            seen.setdefault(r["driver"], set()).add(r["amount"])
    consistent = len({frozenset(v) for v in seen.values()}) <= 1 and all(len(v) == 1 for v in seen.values())
    g = goals(med)

    head = ["case", "unit", "kernel", "snapfs", "fuse-overlayfs", "snapfs/fuse-overlayfs", "snapfs/kernel"]
    table = [[r["case"], r["unit"], fmt_rate(r["rate"]["kernel"]), fmt_rate(r["rate"]["snapfs"]),
              fmt_rate(r["rate"]["fuse-overlayfs"]),
              fmt_ratio(ratio(r["rate"]["snapfs"], r["rate"]["fuse-overlayfs"])),
              fmt_ratio(r["norm"]["snapfs"])] for r in rows]
    widths = [max(len(x[i]) for x in [head] + table) for i in range(len(head))]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    verdict = lambda h: "n/a " if h is None else ("PASS" if h else "FAIL")
    standin = meta.get("standin") == "yes"

    print()
    print(f"Medians of {meta.get('rounds', '?')} rounds (higher is faster):")
    print(line(head))
    for t in table:
        print(line(t))
    print()
    if not consistent:
        print(f"WARNING: the drivers did not all see the same tree (walk entries per driver: "
              f"{ {d: sorted(v) for d, v in seen.items()} })")
    if standin:
        print(f"NOTE: snapfs is a stand-in ({meta.get('snapfs')}), so its goals say nothing about snapfs; "
              "its snapfs/fuse-overlayfs column shows the run's noise (1.00x if there were none).")
    if int(meta.get("rounds", "0") or 0) < 3:
        print("NOTE: fewer than 3 rounds: medians of so few runs are noisy.")
    print("Goals for snapfs:")
    for text, h, detail in g:
        print(f"  {verdict(h)}  {text}: {detail}")

    os.makedirs(a.outdir, exist_ok=True)
    md = ["# snapfs against kernel overlayfs and fuse-overlayfs", "",
          f"`{meta.get('command', 'scripts/bench-fuse')}` on {meta.get('cores', '?')} cores, kernel "
          f"{meta.get('kernel', '?')}, {meta.get('fs', '?')}, {meta.get('date', '?')}. "
          f"Median of {meta.get('rounds', '?')} rounds; the drivers one after the other for each case, "
          f"their order turning each round; every case on a fresh mount of the same two plain layers "
          f"with its own empty upper and work dirs (none for the view).", ""]
    if standin:
        md += [f"**snapfs is a stand-in here: `{meta.get('snapfs')}`.** Its snapfs/fuse-overlayfs column "
               "shows the run's noise (1.00x if there were none).", ""]
    if not consistent:
        md += ["**Warning: the drivers did not all see the same tree.**", ""]
    md += [f"Tree: {meta.get('tree', '')}. snapfs: `{meta.get('snapfs')}`; fuse-overlayfs: "
           f"`{meta.get('fuse_overlayfs')}` ({meta.get('fuse_overlayfs_version', '?')}).", "",
           "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    md += ["| " + " | ".join(t) + " |" for t in table]
    md += ["", "## Goals for snapfs", ""]
    md += [f"- {verdict(h).strip()}: {text} ({detail})" for text, h, detail in g]
    md += ["", "## Cases", ""]
    md += [f"- **{r['case']}** ({r['unit']}): {r['description']}" for r in rows]
    md += ["", f"Big file {meta.get('big_mib')} MiB, {meta.get('create')} files created, "
           f"{meta.get('write_mib')} MiB written. Rates are amount / time of the timed system calls "
           "(CLOCK_MONOTONIC, python worker); mounting, dropping caches and checks are not timed. "
           "Cold cases: `sync; echo 3 > /proc/sys/vm/drop_caches` right after a fresh mount.", "",
           "## Spread (min - max over rounds)", "",
           "| case | " + " | ".join(DRIVERS) + " |", "|---|" + "---:|" * len(DRIVERS)]
    md += [f"| {r['case']} | " + " | ".join(
        f"{fmt_rate(r['min'][d])} - {fmt_rate(r['max'][d])}" if r["n"][d] else "-" for d in DRIVERS) + " |"
        for r in rows]
    md += ["", "![chart](chart.svg)", ""]
    with open(os.path.join(a.outdir, "results.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(a.outdir, "results.json"), "w") as f:
        json.dump({"meta": meta, "consistent_tree": consistent,
                   "cases": [{k: r[k] for k in ("case", "unit", "description")} for r in rows],
                   "medians": med,
                   "goals": [{"goal": t, "holds": h, "detail": d} for t, h, d in g],
                   "runs": runs}, f, indent=1)
    meta["subtitle"] = (f"{meta.get('date', '')}, {meta.get('cores', '?')} cores, kernel {meta.get('kernel', '?')}, "
                        f"{meta.get('fs', '?')}, median of {meta.get('rounds', '?')} rounds, big file "
                        f"{meta.get('big_mib')} MiB")
    svg_chart(rows, meta, os.path.join(a.outdir, "chart.svg"))
    print(f"\nwrote {a.outdir}/results.md, results.json, chart.svg")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("layer1")
    s.add_argument("root"); s.add_argument("--big-mib", type=int, required=True)
    s.add_argument("--files", type=int, required=True); s.add_argument("--dirs", type=int, required=True)
    s = sub.add_parser("layer2")
    s.add_argument("root"); s.add_argument("--files", type=int, required=True)
    s.add_argument("--dirs", type=int, required=True)
    s = sub.add_parser("session")
    s.add_argument("name"); s.add_argument("mnt"); s.add_argument("--upper", required=True)
    s.add_argument("--driver", required=True); s.add_argument("--round", type=int, required=True)
    s.add_argument("--big-mib", type=int, required=True); s.add_argument("--create", type=int, required=True)
    s.add_argument("--write-mib", type=int, required=True)
    s = sub.add_parser("report")
    s.add_argument("raw"); s.add_argument("outdir"); s.add_argument("--meta", action="append", default=[])
    a = p.parse_args()
    {"layer1": cmd_layer1, "layer2": cmd_layer2, "session": cmd_session, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
