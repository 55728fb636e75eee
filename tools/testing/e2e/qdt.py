#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Look at an image's dedup table without the project's tools (for 45-47).

  qdt.py clusters IMAGE      the table's clusters (root, directories,
                             leaves) as host cluster numbers, one a line;
                             nothing if the image has no table extension
  qdt.py leaks IMAGE FILE... `qemu-img check` finds no corruption and no
                             check error, and the clusters it calls leaked
                             are exactly those listed in the FILEs (outputs
                             of "clusters"); prints a summary, exit 1 if not
  qdt.py copy-slot IMAGE FROM TO
                             write the slot of host cluster FROM over the
                             slot of host cluster TO (a crafted table: two
                             slots with one key, for 62)

Reads the header extension 0x71646474 (include/uapi/qcow2dedup/
dedup-table.h) and follows the root's and the directories' offsets; the
slots are not read.  Written from the format description, independently of
tools/qcow2dedup, so that the scenarios have a second opinion.
"""
import json
import re
import struct
import subprocess
import sys

EXT_DEDUP_TABLE = 0x71646474
OFFSET_MASK = 0x00FFFFFFFFFFFE00


def root_offset(f):
    """(cluster_bits, the root's offset or None) of the open image @f."""
    f.seek(0)
    h = f.read(104)
    cluster_bits = struct.unpack(">I", h[20:24])[0]
    hdr_len = struct.unpack(">I", h[100:104])[0]
    f.seek(hdr_len)
    ext = f.read((1 << cluster_bits) - hdr_len)
    pos = 0
    while pos + 8 <= len(ext):
        typ, n = struct.unpack(">II", ext[pos:pos + 8])
        if typ == 0:
            break
        if typ == EXT_DEDUP_TABLE:
            return cluster_bits, struct.unpack(">Q", ext[pos + 16:pos + 24])[0]
        pos += 8 + (n + 7) // 8 * 8
    return cluster_bits, None


def slot_offset(f, host):
    """Byte offset of host cluster @host's 32-byte slot: root -> directory -> leaf."""
    cluster_bits, root = root_offset(f)
    slot_bits, ptr_bits = cluster_bits - 5, cluster_bits - 3
    leaf = host >> slot_bits

    def ptr(table, i):
        f.seek(table + 8 * i)
        return struct.unpack(">Q", f.read(8))[0] & OFFSET_MASK

    d = ptr(root, leaf >> ptr_bits)
    lo = ptr(d, leaf & ((1 << ptr_bits) - 1))
    if not root or not d or not lo:
        sys.exit("qdt.py: no leaf holds the slot of host cluster %d" % host)
    return lo + 32 * (host & ((1 << slot_bits) - 1))


def copy_slot(path, src, dst):
    with open(path, "r+b") as f:
        so, do = slot_offset(f, src), slot_offset(f, dst)
        f.seek(so)
        slot = f.read(32)
        if slot == bytes(32):
            sys.exit("qdt.py: the slot of host cluster %d is empty" % src)
        f.seek(do)
        f.write(slot)


def table_clusters(path):
    with open(path, "rb") as f:
        h = f.read(104)
        cluster_bits = struct.unpack(">I", h[20:24])[0]
        hdr_len = struct.unpack(">I", h[100:104])[0]
        cs = 1 << cluster_bits
        f.seek(hdr_len)
        ext = f.read(cs - hdr_len)
        pos, root = 0, None
        while pos + 8 <= len(ext):
            typ, n = struct.unpack(">II", ext[pos:pos + 8])
            if typ == 0:
                break
            if typ == EXT_DEDUP_TABLE:
                root = struct.unpack(">Q", ext[pos + 16:pos + 24])[0]
            pos += 8 + (n + 7) // 8 * 8
        if root is None:
            return []
        out = [root >> cluster_bits]

        def offsets(off):
            f.seek(off)
            b = f.read(cs)
            return [v & OFFSET_MASK for v in struct.unpack(">%dQ" % (cs // 8), b) if v]

        for d in offsets(root):
            out.append(d >> cluster_bits)
            out.extend(leaf >> cluster_bits for leaf in offsets(d))
        return out


def leaks(path, files):
    want = set()
    for fn in files:
        want.update(int(x) for x in open(fn).read().split())
    p = subprocess.run(["qemu-img", "check", "--output=json", path],
                       capture_output=True, text=True)
    try:
        j = json.loads(p.stdout)
    except ValueError:
        print("qemu-img check: no report: %s %s" % (p.stdout, p.stderr))
        return 1
    got = set()
    for m in re.finditer(r"Leaked cluster (\d+) ", p.stderr):
        got.add(int(m.group(1)))
    bad = j.get("corruptions", 0) + j.get("check-errors", 0)
    extra, missing = sorted(got - want), sorted(want - got)
    print("# %s: qemu-img check: %d corruptions/errors, %d leaked clusters "
          "(%d expected as table clusters, %d unexpected, %d expected but not leaked)"
          % (path, bad, len(got), len(want), len(extra), len(missing)))
    if bad:
        print(p.stderr)
    if extra:
        print("unexpected leaked clusters: %s" % extra[:20])
    if missing:
        print("table clusters not reported as leaked: %s" % missing[:20])
    return 1 if bad or extra or missing else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "clusters":
        print("\n".join(str(c) for c in table_clusters(sys.argv[2])))
    elif len(sys.argv) == 5 and sys.argv[1] == "copy-slot":
        copy_slot(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "leaks":
        sys.exit(leaks(sys.argv[2], sys.argv[3:]))
    else:
        sys.exit(__doc__)
