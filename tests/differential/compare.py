#!/usr/bin/env python3
"""Compares two listings of probe.py or writes.py, field by field.

    compare.py --phase PHASE --allow FILE [--names REF,TEST] REF TEST

Each line of a listing is `KEY field=value ...` (`#fact NAME VALUE` lines are read as
fields NAME of the KEY `#fact`). Every difference is printed on a line:
    DIFF PHASE KEY FIELD: REF-NAME=VALUE TEST-NAME=VALUE
and an entry on one side only as FIELD `presence` (below a directory on one side only,
its entries are counted on the directory's line, not printed). Differences of the same
kind (phase, field, change: the values for small fields, the xattr names added, removed or
changed for xattrs, "differs" for hashes, sizes, times, targets and inode groups) are
printed up to --lines (10; 0: all) each, then counted; --full FILE gets every line, and
--summary FILE one line per kind: `PHASE FIELD CHANGE COUNT EXAMPLE-KEY REF-VALUE TEST-VALUE`.
The allow file holds the justified exceptions, one a line: `PHASE-GLOB KEY-GLOB FIELD-GLOB
REASON...` (fnmatch patterns, # comments). A difference one matches is printed as
    allowed: PHASE KEY FIELD: ... (REASON)
Exits 1 if any difference is not allowed.
"""
import argparse
import fnmatch
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--phase", required=True)
ap.add_argument("--allow", required=True)
ap.add_argument("--names", default="overlayfs,snapshotd")
ap.add_argument("--lines", type=int, default=10)
ap.add_argument("--full")
ap.add_argument("--summary")
ap.add_argument("ref")
ap.add_argument("test")
a = ap.parse_args()
ref_name, test_name = a.names.split(",")


def parse(path):
    entries = {}
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            if line.startswith("#fact "):
                _, name, value = line.split(" ", 2)
                entries["#fact"] = dict(entries.get("#fact", {}), **{name: value})
                continue
            key, _, rest = line.partition(" ")
            fields = {}
            for tok in rest.split(" "):
                if not tok:
                    continue
                k, eq, v = tok.partition("=")
                fields[k] = v if eq else ""
            entries[key] = fields
    return entries


allow = []
with open(a.allow) as f:
    for line in f:
        line = line.strip()
        if line and not line.startswith("#"):
            p, k, fl, reason = line.split(None, 3)
            allow.append((p, k, fl, reason))


def allowed(key, field):
    for p, k, fl, reason in allow:
        if fnmatch.fnmatchcase(a.phase, p) and fnmatch.fnmatchcase(key, k) and fnmatch.fnmatchcase(field, fl):
            return reason
    return None


ref, test = parse(a.ref), parse(a.test)
diffs = []  # (key, field, ref value, test value)
only = {}   # key -> side
for key in sorted(set(ref) | set(test)):
    if key not in test:
        only[key] = ref_name
    elif key not in ref:
        only[key] = test_name
    else:
        r, t = ref[key], test[key]
        for field in list(r) + [f for f in t if f not in r]:
            rv, tv = r.get(field, "(none)"), t.get(field, "(none)")
            if rv != tv:
                diffs.append((key, field, rv, tv))

# Entries on one side only: a directory's line counts what is below it.
below = {}
tops = []
for key in sorted(only):
    parent = next((p for p in tops if key.startswith(p.rstrip("/") + "/") and only[p] == only[key]), None)
    if parent:
        below[parent] += 1
    else:
        tops.append(key)
        below[key] = 0
for key in tops:
    side = only[key]
    entry = (ref if side == ref_name else test)[key]
    desc = f"only on {side}" + (f" (type={entry['type']})" if "type" in entry else "")
    if below[key]:
        desc += f" and {below[key]} entries below it"
    rv, tv = (desc, "-") if side == ref_name else ("-", desc)
    diffs.append((key, "presence", rv, tv))



def xattr_map(v):
    if v in ("-", "(none)") or v.startswith("error"):
        return {}
    return dict(item.rsplit(":", 1) for item in v.split(","))


def change(field, rv, tv):
    """What kind of difference this is: the grouping key with the phase and field."""
    if field == "xattrs":
        r, t = xattr_map(rv), xattr_map(tv)
        parts = [f"+{n}" for n in sorted(set(t) - set(r))] + [f"-{n}" for n in sorted(set(r) - set(t))]
        parts += [f"~{n}" for n in sorted(set(r) & set(t)) if r[n] != t[n]]
        return " ".join(parts) or "differs"
    if field == "presence":
        return "only-on-" + (ref_name if rv != "-" else test_name)
    if field in ("sha256", "size", "mtime", "target", "group", "content", "other-name",
                 "other-names", "other-copy", "original", "same-content"):
        return "differs"
    return f"{rv}->{tv}"


bad = 0
groups = {}
allowed_lines = []
for key, field, rv, tv in sorted(diffs):
    reason = allowed(key, field)
    text = f"{a.phase} {key} {field}: {ref_name}={rv} {test_name}={tv}"
    if reason:
        allowed_lines.append(f"allowed: {text} ({reason})")
    else:
        bad += 1
        groups.setdefault((field, change(field, rv, tv)), []).append((key, rv, tv, "DIFF " + text))
full = open(a.full, "a") if a.full else None
summary = open(a.summary, "a") if a.summary else None
for (field, kind), items in sorted(groups.items(), key=lambda g: g[1][0][0]):
    for i, (key, rv, tv, line) in enumerate(items):
        if a.lines == 0 or i < a.lines:
            print(line)
        if full:
            print(line, file=full)
    if a.lines and len(items) > a.lines:
        print(f"  ... and {len(items) - a.lines} more {a.phase} {field} differences like these ({kind})")
    if summary:
        key, rv, tv, _ = items[0]
        print(f"{a.phase} {field} {kind.replace(' ', ',')} {len(items)} {key} {rv} {tv}", file=summary)
for line in allowed_lines:
    print(line)
    if full:
        print(line, file=full)
print(f"{a.phase}: {bad} difference(s) of {len(groups)} kind(s), {len(diffs) - bad} allowed, "
      f"{len(ref)} vs {len(test)} entries")
sys.exit(1 if bad else 0)
