#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Hand-made hostile images for the fuzz corpus (tools/testing/fuzz/corpus/).

  craft.py OUTDIR [NAME...]

Each image is made with qemu-img/qemu-io (and tools/testing/mk-dedup-table.py
for a dedup table), then patched; OUTDIR gets NAME.qcow2.xz and NAME.txt:
line 1 what the image is and what it once triggered, "ops: ..." the ops the
helper runs on its read-write activation (qfuzz-helper.c), "strict: CLASS..."
the suspect classes that fail it (data: a write read back wrong; mode: the
device went read-only; op: an op marked "!" failed; after-rw: untouched data
changed).  Deterministic: the same files every run.
"""
import hashlib
import lzma
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "../../.."))
sys.path.insert(0, HERE)
import qfuzz  # noqa: E402

K64 = 65536
M = 1 << 20


def sh(*a):
    subprocess.run(a, check=True, stdout=subprocess.DEVNULL)


def base(path, size="16M", opts="", writes=()):
    sh("qemu-img", "create", "-q", "-f", "qcow2", *(["-o", opts] if opts else []), path, size)
    for w in writes:
        sh("qemu-io", "-f", "qcow2", "-c", w, path)
    b = bytearray(open(path, "rb").read())
    cb = qfuzz.be(b, 20, 4)
    b += bytes(-len(b) % (1 << cb))
    open(path, "wb").write(b)


def table(path, *args):
    sh("python3", os.path.join(REPO, "tools/testing/mk-dedup-table.py"), path, *args)


def load(path):
    b = bytearray(open(path, "rb").read())
    return b, qfuzz.Image(b, len(b) + 8 * M)


def l2_entry(img, guest):
    """File offset of the active L2 entry of @guest, and its value."""
    per = img.cs // 8
    l1 = qfuzz.be(img.buf, img.l1_off + 8 * (guest // img.cs // per), 8) & qfuzz.OFF_MASK
    o = l1 + 8 * (guest // img.cs % per)
    return o, qfuzz.be(img.buf, o, 8)


def c_dup_copied_table(t):
    """Known defect: two COPIED L2 entries on one cluster of refcount 2, the
    dedup table naming it; a whole-cluster write to one of them oopsed."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k", "write -P 0x22 64k 64k", "write -P 0x33 1m 64k"])
    b, img = load(p)
    o0, e0 = l2_entry(img, 0)
    o1, e1 = l2_entry(img, K64)
    qfuzz.put(b, o1, 8, qfuzz.COPIED | (e0 & qfuzz.OFF_MASK))
    qfuzz.set_refcount(img, b, (e0 & qfuzz.OFF_MASK) // img.cs, 2)
    qfuzz.set_refcount(img, b, (e1 & qfuzz.OFF_MASK) // img.cs, 0)
    open(p, "wb").write(b)
    table(p)
    return p, ("two COPIED L2 entries (guest 0 and 64 KiB) on one host cluster of refcount 2, "
               "named by the dedup table, aimed at known defect 1 (code review: a whole-cluster write to one "
               "of them oopses); on the kernel of commit fd5b3c2 it did not oops (the write went in "
               "place and guest 64 KiB changed with it)"), \
        ["w:0:65536:0", "f", "v", "s"], []


def c_qdt_dir_is_l2(t):
    """Known defect: a dedup table whose directory pointer is the L2 table."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k", "write -P 0x22 1m 128k"])
    table(p)
    b, img = load(p)
    qfuzz.put(b, img.qdt_ptrs[0], 8, img.l2_tables[0])
    open(p, "wb").write(b)
    return p, ("the dedup table's root names the L2 table as its directory; the load "
               "must not write into the L2 table; aimed at known defect 2, the kernel of commit fd5b3c2 "
               "refuses this table (table cluster offset invalid: the L2 entries carry COPIED)"), \
        ["w:4194304:65536:1", "w:8388608:65536:1", "f", "v", "s"], ["after-rw", "data"]


def c_qdt_dir_is_l2_nocopied(t):
    """The root names the L2 table as a directory, whose one entry (COPIED
    cleared, as QEMU leaves it after some copy-on-writes) then names the
    data cluster of guest 0 as a leaf."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k"])
    table(p)
    b, img = load(p)
    o, e = l2_entry(img, 0)
    qfuzz.put(b, o, 8, e & ~qfuzz.COPIED)
    qfuzz.put(b, img.qdt_ptrs[0], 8, img.l2_tables[0])
    open(p, "wb").write(b)
    return p, ("the dedup table's root names the L2 table as a directory (its one entry without "
               "COPIED, so a valid leaf offset: the data cluster of guest 0)"), \
        ["w:4194304:65536:1", "w:8388608:65536:1", "f", "v", "s"], ["after-rw", "data"]


def c_qdt_leaf_is_l2_small(t):
    """A leaf pointer naming an L2 table whose only entry maps guest 0."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k"])
    table(p)
    b, img = load(p)
    qfuzz.put(b, img.qdt_ptrs[1], 8, img.l2_tables[0])
    open(p, "wb").write(b)
    return p, ("the dedup table's directory names the L2 table as a leaf; its one entry (guest 0) "
               "reads as the slot of host cluster 0, whose refcount does not match: the load must "
               "not zero that 'slot' into the L2 table"), \
        ["w:4194304:65536:1", "w:8388608:65536:1", "f", "v", "s"], ["after-rw", "data"]


def c_qdt_leaf_is_l2(t):
    """A dedup table whose leaf pointer is the L2 table."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k", "write -P 0x22 1m 128k"])
    table(p)
    b, img = load(p)
    qfuzz.put(b, img.qdt_ptrs[1], 8, img.l2_tables[0])
    open(p, "wb").write(b)
    return p, ("the dedup table's directory names the L2 table as a leaf: its entries "
               "read as slots; the load must not zero them into the L2 table"), \
        ["w:4194304:65536:1", "w:8388608:65536:1", "f", "v", "s"], ["after-rw", "data"]


def c_compressed_past_end(t):
    """Known defect: a compressed descriptor whose length runs past the
    device end; discarding it is an invalid decrement."""
    p = os.path.join(t, "i.qcow2")
    src = os.path.join(t, "src.raw")
    with open(src, "wb") as f:
        for i in range(32):
            f.write((b"compressible line %d\n" % i) * (K64 // 24) + bytes(K64 - (K64 // 24) * 24))
    sh("qemu-img", "convert", "-c", "-O", "qcow2", src, p)
    sh("qemu-img", "resize", "-q", p, "16M")
    b = bytearray(open(p, "rb").read())
    b += bytes(-len(b) % K64)
    dev = -(-len(b) // M) * M + 8 * M                  # the runner's slot_size()
    img = qfuzz.Image(b, dev)
    o, e = l2_entry(img, 0)
    x = 62 - (img.cb - 8)
    nmask = (1 << (62 - x)) - 1
    qfuzz.put(b, o, 8, (e & ~((1 << 62) - 1)) | (nmask << x) | (dev - 4096))
    open(p, "wb").write(b)
    return p, ("the compressed descriptor of guest cluster 0 starts 4 KiB before the device end "
               "and claims 256 sectors, past it; discarding it (an invalid decrement) turned "
               "the device read-only (known defect 3: 'refcount of host cluster 143 is 0; cannot add -1', "
               "'metadata commit failed (-117): switching to read-only mode')"), \
        ["d:0:65536", "w:1048576:65536:2!", "f!", "v", "s"], ["mode", "op"]


def c_refcount_zero(t):
    """Known defect: a data cluster whose refcount is already 0."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 128k", "write -P 0x22 1m 64k"])
    b, img = load(p)
    _, e = l2_entry(img, 0)
    qfuzz.set_refcount(img, b, (e & qfuzz.OFF_MASK) // img.cs, 0)
    open(p, "wb").write(b)
    return p, ("guest cluster 0 maps a cluster whose refcount is 0; discarding it (an invalid "
               "decrement) must not turn the device read-only; aimed at known defect 3, on the kernel of "
               "commit fd5b3c2 it did not"), \
        ["d:0:65536", "w:4194304:65536:2!", "f!", "v", "s"], ["mode", "op"]


def c_slot_wrong_digest(t):
    """Known defect: a slot claiming the digest of other bytes."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k", "write -P 0x22 1m 64k"])
    table(p)
    b, img = load(p)
    _, e = l2_entry(img, 0)
    cl = (e & qfuzz.OFF_MASK) // img.cs
    slot_bits, ptr_bits = img.cb - 5, img.cb - 3
    root = img.qdt_root
    leaf = cl >> slot_bits
    d = qfuzz.be(b, root + 8 * (leaf >> ptr_bits), 8) & qfuzz.OFF_MASK
    lf = qfuzz.be(b, d + 8 * (leaf & ((1 << ptr_bits) - 1)), 8) & qfuzz.OFF_MASK
    so = lf + 32 * (cl & ((1 << slot_bits) - 1))
    b[so:so + 32] = hashlib.sha256(qfuzz.pattern(0, 0, K64)).digest()
    open(p, "wb").write(b)
    return p, ("the dedup table's slot for the cluster of guest 0 (0x11 bytes) holds the digest "
               "of the helper's pattern 0; writing pattern 0 elsewhere shared the 0x11 cluster "
               "and read back wrong (known defect 4)"), \
        ["w:4194304:65536:0!", "f!", "v", "s"], ["data", "op"]


def c_zeroes_over_dedup(t):
    """Known defect: write-zeroes over deduplicated data failed with EIO."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k"])
    return p, ("a healthy image: pattern 0 written twice (deduplicated), then write-zeroes "
               "over the second copy must succeed; aimed at known defect 5, it succeeded on the kernel "
               "of commit fd5b3c2"), \
        ["w:1048576:131072:0!", "w:4194304:131072:0!", "z:4194304:131072!", "f!", "v", "s",
         "z:1048576:65536!", "f!", "v", "s"], ["data", "op", "mode", "after-rw"]


def c_l2_points_at_l1(t):
    """An L2 entry (COPIED) naming the L1 table's cluster: writing it in
    place would overwrite the L1 table."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k", "write -P 0x22 1m 64k"])
    b, img = load(p)
    o, e = l2_entry(img, K64 * 16)
    qfuzz.put(b, o, 8, qfuzz.COPIED | img.l1_off)
    open(p, "wb").write(b)
    return p, "an L2 entry with COPIED names the L1 table's cluster; a whole-cluster write goes to it", \
        ["w:1048576:65536:1", "w:0:65536:1", "f", "v"], []


def c_l2_points_at_refblock(t):
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k", "write -P 0x22 1m 64k"])
    b, img = load(p)
    o, e = l2_entry(img, K64 * 16)
    qfuzz.put(b, o, 8, qfuzz.COPIED | img.rblocks[0][1])
    open(p, "wb").write(b)
    return p, "an L2 entry with COPIED names the refcount block; partial and whole writes go to it", \
        ["w:1049088:4096:2", "w:1048576:65536:1", "d:1048576:65536", "f", "v"], []


def c_qdt_leaf_is_refblock(t):
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k", "write -P 0x22 1m 64k"])
    table(p)
    b, img = load(p)
    qfuzz.put(b, img.qdt_ptrs[1], 8, img.rblocks[0][1])
    open(p, "wb").write(b)
    return p, "the dedup table's leaf pointer names the refcount block", \
        ["w:4194304:65536:0", "w:8388608:65536:0", "f", "v"], []


def c_reftable_at_l1(t):
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k"])
    b, img = load(p)
    qfuzz.put(b, img.rte[0], 8, img.l1_off)
    open(p, "wb").write(b)
    return p, "the refcount table's first entry names the L1 table as a refcount block", \
        ["w:4194304:65536:0", "w:8388608:65536:0", "d:0:65536", "f", "v"], []


def c_snapshot_garbage(t):
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k"])
    sh("qemu-img", "snapshot", "-c", "s", p)
    sh("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 0 4k", p)
    b, img = load(p)
    so = qfuzz.be(b, 64, 8)
    b[so + 16:so + 24] = bytes(8)                      # the date: deterministic
    qfuzz.put(b, so, 8, img.l2_tables[0])              # snapshot L1 = an L2 table
    qfuzz.put(b, so + 8, 4, 0x7FFFFFFF)                # and huge
    open(p, "wb").write(b)
    return p, "the snapshot's L1 table is an L2 table, with l1_size 0x7fffffff", \
        ["w:0:65536:3", "w:65536:4096:3", "f", "v"], []


def c_compressed_last_sector(t):
    p = os.path.join(t, "i.qcow2")
    src = os.path.join(t, "src.raw")
    with open(src, "wb") as f:
        for i in range(16):
            f.write((b"line %d\n" % i) * (K64 // 8))
    sh("qemu-img", "convert", "-c", "-O", "qcow2", src, p)
    b = bytearray(open(p, "rb").read())
    b += bytes(-len(b) % K64)
    dev = -(-len(b) // M) * M + 8 * M                  # the runner's slot_size()
    img = qfuzz.Image(b, dev)
    o, e = l2_entry(img, 0)
    x = 62 - (img.cb - 8)
    qfuzz.put(b, o, 8, (e & ~((1 << 62) - 1)) | (dev - 512))
    open(p, "wb").write(b)
    return p, "a compressed cluster starting at the device's last sector (one sector of it inside)", \
        ["w:0:4096:1", "d:65536:65536", "f", "v"], []


def c_reftable_entry_zero(t):
    """Found by make fuzz (FUZZ_SEED=100, image 42, minimized): no refcount
    block for the first clusters; the first allocating write never ends
    and fills kmalloc-128 until allocations fail."""
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k"])
    b, img = load(p)
    qfuzz.put(b, img.rte[0], 8, 0)
    open(p, "wb").write(b)
    return p, ("refcount table entry 0 is 0 (no refcount block for the clusters the header, "
               "L1 and data use); the first allocating write hung, the target filling kmalloc-128 "
               "until page allocation failures (found by make fuzz, seed 100 image 42)"), \
        ["w:1048576:65536:0", "f", "v"], []


def l2_maps_leaf(t, flags):
    p = os.path.join(t, "i.qcow2")
    base(p, writes=["write -P 0x11 0 64k", "write -P 0x22 1m 64k", "write -P 0x33 2m 64k"])
    table(p)
    b, img = load(p)
    o, _ = l2_entry(img, 2 * M)
    qfuzz.put(b, o, 8, qfuzz.COPIED | img.qdt_leaves[0])
    qfuzz.put(b, img.qdt + 4, 4, flags)
    open(p, "wb").write(b)
    return p, ("the L2 entry of guest 2 MiB names the dedup table's leaf (table flags %d); the "
               "read-write activation must read guest 2 MiB as the read-only one did (found by "
               "make fuzz, seed 4242 image 769: the table load wrote into the leaf mapped as guest "
               "data)" % flags), ["w:4194304:65536:0", "w:8388608:65536:0", "f", "v", "s"], []


CASES = {
    "known-dup-copied-table": c_dup_copied_table,
    "known-qdt-dir-is-l2": c_qdt_dir_is_l2,
    "known-compressed-past-end": c_compressed_past_end,
    "known-refcount-zero": c_refcount_zero,
    "known-slot-wrong-digest": c_slot_wrong_digest,
    "known-zeroes-over-dedup": c_zeroes_over_dedup,
    "qdt-leaf-is-l2": c_qdt_leaf_is_l2,
    "qdt-leaf-is-l2-small": c_qdt_leaf_is_l2_small,
    "qdt-dir-is-l2-nocopied": c_qdt_dir_is_l2_nocopied,
    "l2-points-at-l1": c_l2_points_at_l1,
    "l2-points-at-refblock": c_l2_points_at_refblock,
    "qdt-leaf-is-refblock": c_qdt_leaf_is_refblock,
    "reftable-at-l1": c_reftable_at_l1,
    "snapshot-garbage": c_snapshot_garbage,
    "compressed-last-sector": c_compressed_last_sector,
    "fuzz-reftable-entry-zero": c_reftable_entry_zero,
    "fuzz-l2-maps-qdt-leaf-clean": lambda t: l2_maps_leaf(t, 0),
    "fuzz-l2-maps-qdt-leaf-incomplete": lambda t: l2_maps_leaf(t, 4),
    "fuzz-l2-maps-qdt-leaf-open": lambda t: l2_maps_leaf(t, 1),
}


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name in sys.argv[2:] or CASES:
        with tempfile.TemporaryDirectory() as t:
            p, desc, ops, strict = CASES[name](t)
            data = open(p, "rb").read()
        with lzma.open(os.path.join(out, name + ".qcow2.xz"), "wb", preset=9) as f:
            f.write(data)
        with open(os.path.join(out, name + ".txt"), "w") as f:
            f.write(desc + "\n")
            f.write("ops: " + " ".join(ops) + "\n")
            if strict:
                f.write("strict: %s\n" % " ".join(strict))
        print("%s: %d bytes, %s" % (name, len(data), desc))


if __name__ == "__main__":
    main()
