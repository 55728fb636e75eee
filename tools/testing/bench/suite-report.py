#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""suite-report.py DIR: the tables of tools/testing/bench/suite from
DIR/results.csv (and DIR/stats-*.txt): medians over the runs, per cluster
size; ratios to dm-linear and to nodedup; a chart in DIR/suite.png when
matplotlib is there (python3-matplotlib)."""
import collections
import csv
import glob
import os
import statistics
import sys

out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
ROWS = ["linear", "nodedup", "sha256", "blake2b", "xxh+vfy", "thin", "nbd", "vdo"]
JOBS = ["seq-new", "seq-dup", "seq-mix50", "rnd-new-qd1", "rnd-new-qd16",
        "rnd-over-qd16", "seq-read", "seq-read-dup", "rnd-read", "rnd-read-dup",
        "rnd-over-dup-qd16", "ext4-copy2x"]


def main_metric(job):
    # 1 MiB jobs and the ext4 copy in MB/s, 4 KiB ones in IOPS.
    return "iops" if job.startswith("rnd") else "MBps"


med = {}
by = collections.defaultdict(list)
for r in rows:
    by[(r["cluster"], r["row"], r["job"])].append(r)
for key, rs in by.items():
    med[key] = {k: statistics.median(float(r[k]) for r in rs)
                for k in ("MBps", "iops", "p50_us", "p99_us", "cpu_s")}
    med[key]["n"] = len(rs)

clusters = sorted({r["cluster"] for r in rows}, key=lambda c: int(c.rstrip("kKmM")) * (1024 if c[-1] in "mM" else 1))
present = [x for x in ROWS if any(r["row"] == x for r in rows)]


def table(cs, title, fmt, value):
    print("\n%s (%s clusters)" % (title, cs))
    print("%-18s" % "job" + "".join("%10s" % x for x in present))
    for job in JOBS:
        cells = []
        for x in present:
            m = med.get((cs, x, job))
            cells.append("%10s" % (fmt % value(m, job, cs) if m and value(m, job, cs) is not None else "-"))
        print("%-18s" % job + "".join(cells))


def ratio_to(base):
    def v(m, job, cs):
        b = med.get((cs, base, job))
        k = main_metric(job)
        return m[k] / b[k] if b and b[k] else None
    return v


for cs in clusters:
    n = max(v["n"] for k, v in med.items() if k[0] == cs)
    print("\n==== %s clusters: medians of %d boot(s); MB/s for 1 MiB jobs, IOPS for 4 KiB jobs ====" % (cs, n))
    table(cs, "throughput", "%.1f", lambda m, job, cs: m[main_metric(job)])
    table(cs, "ratio to dm-linear", "%.2f", ratio_to("linear"))
    if "nodedup" in present:
        table(cs, "ratio to nodedup", "%.2f", ratio_to("nodedup"))
    table(cs, "p50 completion latency, us", "%.0f", lambda m, job, cs: m["p50_us"])
    table(cs, "p99 completion latency, us", "%.0f", lambda m, job, cs: m["p99_us"])
    table(cs, "CPU busy during the job (UML kernel + fio), s", "%.2f", lambda m, job, cs: m["cpu_s"])
    # The bound of each row's own boot: the mean of the runs before and
    # after it; the fraction per boot, then medians over the boots.
    hb = collections.defaultdict(list)
    if os.path.exists(os.path.join(out, "hash-bound.csv")):
        for b in csv.DictReader(open(os.path.join(out, "hash-bound.csv"))):
            hb[(b["cluster"], b["run"], b["row"], b["alg"], int(b["size"]))].append(float(b["MBps"]))
    csb = int(cs.rstrip("kK")) * 1024 if cs[-1] in "kK" else int(cs)
    for x, alg in (("sha256", "sha256"), ("blake2b", "blake2b-256"), ("xxh+vfy", "xxhash64")):
        bounds, fnew, fdup = [], [], []
        for r in rows:
            if r["cluster"] != cs or r["row"] != x or r["job"] not in ("seq-new", "seq-dup"):
                continue
            b = hb.get((cs, r["run"], x, alg, csb))
            if not b:
                continue
            bound = statistics.mean(b)
            (fnew if r["job"] == "seq-new" else fdup).append(float(r["MBps"]) / bound)
            if r["job"] == "seq-new":
                bounds.append((bound, min(b), max(b)))
        if fnew and fdup:
            print("hash bound %-8s %7.0f MB/s (boots: %s); seq-new %.2f of it (%s), seq-dup %.2f (%s)" % (
                alg, statistics.median(v[0] for v in bounds),
                " ".join("%.0f-%.0f" % (v[1], v[2]) for v in bounds),
                statistics.median(fnew), " ".join("%.2f" % v for v in fnew),
                statistics.median(fdup), " ".join("%.2f" % v for v in fdup)))
    for f in sorted(glob.glob(os.path.join(out, "stats-%s-*.txt" % cs)))[:1]:
        st = {}
        for line in open(f):
            p = line.split()
            if len(p) == 4:
                st[(p[1], p[2])] = p[3]
        for x in ("sha256", "blake2b", "xxh+vfy"):
            if (x, "index_entries") in st and int(st[(x, "index_entries")]):
                print("index %-8s %s entries, %s bytes, %s bytes per entry, %.1f MiB saved" % (
                    x, st[(x, "index_entries")], st[(x, "index_bytes")],
                    st[(x, "index_entry_bytes")], int(st[(x, "bytes_saved")]) / 2**20))

    ext4 = collections.defaultdict(list)
    for f in sorted(glob.glob(os.path.join(out, "ext4-%s-*.txt" % cs))):
        for line in open(f):
            p = line.split()
            if len(p) == 4 and p[3] != "-":
                ext4[p[1]].append((int(p[2]), int(p[3])))
    for x in present:
        if ext4.get(x):
            copied = ext4[x][0][0]
            st = statistics.median(v[1] for v in ext4[x])
            print("ext4 copy   %-8s %.1f MB written, %.1f MB stored (%.2f of it)" % (
                x, copied / 1e6, st / 1e6, st / copied))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("\n(no chart: python3-matplotlib is not installed)")
    sys.exit(0)
fig, axes = plt.subplots(len(clusters), 1, figsize=(14, 4.5 * len(clusters)), squeeze=False)
for ax, cs in zip(axes[:, 0], clusters):
    w = 0.8 / max(1, len(present))
    for i, x in enumerate(present):
        vals = [ratio_to("linear")(med[(cs, x, j)], j, cs) if (cs, x, j) in med else 0 for j in JOBS]
        ax.bar([k + i * w for k in range(len(JOBS))], [v or 0 for v in vals], w, label=x)
    ax.set_xticks([k + 0.4 - w / 2 for k in range(len(JOBS))])
    ax.set_xticklabels(JOBS, rotation=20)
    ax.axhline(1.0, color="black", linewidth=0.5)
    ax.set_ylabel("ratio to dm-linear")
    ax.set_title("%s clusters (UML, medians)" % cs)
    ax.legend(ncol=len(present), fontsize=8)
fig.tight_layout()
fig.savefig(os.path.join(out, "suite.png"), dpi=90)
print("\nchart: %s" % os.path.join(out, "suite.png"))
