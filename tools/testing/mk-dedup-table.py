#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Give a qcow2 image made by qemu-img and qemu-io a dm-qcow2dedup table.

  mk-dedup-table.py IMAGE [--hash ALG] [--key-len N] [--open]
                          [--no-autoclear] [--generation N]

Writes, as the target would (include/uapi/qcow2dedup/dedup-table.h):
  - root, directory and leaf clusters appended at the end of the file, each
    with refcount 1 and referenced by no qcow2 structure (qemu-img check
    reports them as leaked);
  - one 32-byte slot per allocated data cluster of the active L1 table: its
    digest cut or zero-padded to key_len (default: the digest's length, at
    most 24 bytes, as the target keeps it), then zero-padded to 32 bytes;
  - the QCOW2_EXT_DEDUP_TABLE header extension, inserted before the end
    marker (a backing file name after the extensions is moved behind the new
    end marker and backing_file_offset updated), and "dedup table" in the
    feature name table;
  - autoclear bit 60 (unless --no-autoclear) and QDT_FLAG_OPEN (--open).

Kept simple on purpose: version 3 images without extended L2 entries, an
external data file or encryption, small enough that the refcount blocks
that exist already cover the new clusters.  Prints key=value lines:
root_offset, clusters, entries, first_slot_offset, first_slot_cluster.
"""
import argparse
import hashlib
import struct
import sys

QCOW2_MAGIC = 0x514649FB
EXT_END = 0x00000000
EXT_FEATURE_TABLE = 0x6803F857
EXT_DEDUP_TABLE = 0x71646474
AUTOCLEAR_DEDUP_TABLE = 1 << 60
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_EXTL2 = 1 << 4
QDT_VERSION = 1
QDT_FLAG_OPEN = 1
SLOT = 32
TARGET_KEY = 24
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1


def die(msg):
    sys.exit("mk-dedup-table: " + msg)


def digest_fn(alg):
    """The kernel shash @alg as a function of bytes."""
    if alg.startswith("blake2b-"):
        n = int(alg[len("blake2b-"):]) // 8
        return lambda b: hashlib.blake2b(b, digest_size=n).digest()
    if alg == "xxhash64":
        try:
            import xxhash
        except ImportError:
            die("xxhash64 needs the python3 xxhash module")
        return lambda b: xxhash.xxh64(b, seed=0).intdigest().to_bytes(8, "little")
    name = alg.replace("-", "_")
    if name not in hashlib.algorithms_available:
        die("unknown hash %s" % alg)
    return lambda b: hashlib.new(name, b).digest()


class Image:
    def __init__(self, path):
        self.f = open(path, "r+b")
        h = self.read(0, 104)
        (magic, self.version, self.backing_offset, self.backing_size,
         self.cluster_bits, self.size, self.crypt, self.l1_size, self.l1_offset,
         self.rt_offset, self.rt_clusters, _nb_snap, _snap_off, self.incompat,
         _compat, self.autoclear, self.refcount_order,
         self.header_length) = struct.unpack(">IIQIIQIIQQIIQQQQII", h)
        if magic != QCOW2_MAGIC or self.version != 3:
            die("%s: not a qcow2 version 3 image" % path)
        if self.incompat & (INCOMPAT_DATA_FILE | INCOMPAT_EXTL2) or self.crypt:
            die("%s: external data file, extended L2 or encryption" % path)
        self.cs = 1 << self.cluster_bits
        self.f.seek(0, 2)
        self.file_size = self.f.tell()

    def read(self, off, n):
        self.f.seek(off)
        b = self.f.read(n)
        return b + bytes(n - len(b))

    def write(self, off, b):
        self.f.seek(off)
        self.f.write(b)

    def data_clusters(self):
        """Host clusters of the active L1 table's normal data clusters."""
        out = set()
        l1 = self.read(self.l1_offset, 8 * self.l1_size)
        for (e,) in struct.iter_unpack(">Q", l1):
            l2_off = e & L1E_OFFSET_MASK
            if not l2_off:
                continue
            for (l2e,) in struct.iter_unpack(">Q", self.read(l2_off, self.cs)):
                off = l2e & L2E_OFFSET_MASK
                if off and not l2e & (OFLAG_COMPRESSED | OFLAG_ZERO):
                    out.add(off >> self.cluster_bits)
        return sorted(out)

    def set_refcount(self, cluster, value, dry_run=False):
        """Refcount of free @cluster = @value, in an existing refcount block."""
        order = self.refcount_order
        rb_bits = self.cluster_bits + 3 - order
        i = cluster >> rb_bits
        if i >= self.rt_clusters * self.cs // 8:
            die("cluster %d is beyond the refcount table" % cluster)
        (rb,) = struct.unpack(">Q", self.read(self.rt_offset + 8 * i, 8))
        rb &= 0xFFFFFFFFFFFFFE00
        if not rb:
            die("no refcount block for cluster %d: use a smaller image" % cluster)
        idx = cluster & ((1 << rb_bits) - 1)
        bits = 1 << order
        if bits >= 8:
            n = bits // 8
            off = rb + idx * n
            if int.from_bytes(self.read(off, n), "big"):
                die("cluster %d is in use" % cluster)
            if not dry_run:
                self.write(off, value.to_bytes(n, "big"))
            return
        off = rb + idx * bits // 8
        shift = (idx * bits) % 8
        mask = ((1 << bits) - 1) << shift
        byte = self.read(off, 1)[0]
        if byte & mask:
            die("cluster %d is in use" % cluster)
        if not dry_run:
            self.write(off, bytes([(byte & ~mask) | (value << shift)]))

    def extensions(self):
        """[(type, data)] up to the end marker, and where the area ends."""
        end = self.backing_offset or self.cs
        off, exts = self.header_length, []
        while off + 8 <= end:
            t, n = struct.unpack(">II", self.read(off, 8))
            off += 8
            if t == EXT_END:
                return exts, off
            exts.append((t, self.read(off, n)))
            off += (n + 7) & ~7
        die("header extension area without an end marker")


def ext_bytes(t, data):
    return struct.pack(">II", t, len(data)) + data + bytes(-len(data) % 8)


def feature_entry():
    return struct.pack(">BB46s", 2, 60, b"dedup table")


def new_ext_area(exts, qdt):
    """Extensions with ours replaced or added, and the feature name."""
    out, named = [], False
    for t, data in exts:
        if t == EXT_DEDUP_TABLE:
            continue
        if t == EXT_FEATURE_TABLE:
            data = data[: len(data) // 48 * 48]
            if not any(data[i] == 2 and data[i + 1] == 60
                       for i in range(0, len(data), 48)):
                data += feature_entry()
            named = True
        out.append(ext_bytes(t, data))
    if not named:
        out.append(ext_bytes(EXT_FEATURE_TABLE, feature_entry()))
    out.append(ext_bytes(EXT_DEDUP_TABLE, qdt))
    return b"".join(out) + bytes(8)


def rewrite_header(img, qdt, autoclear):
    exts, old_end = img.extensions()
    backing = b""
    if img.backing_offset:
        backing = img.read(img.backing_offset, img.backing_size)
        old_end = img.backing_offset + img.backing_size
    area = new_ext_area(exts, qdt)
    new_end = img.header_length + len(area) + len(backing)
    if new_end > img.cs:
        die("the header extensions do not fit in the first cluster")
    img.write(img.header_length, area + backing + bytes(max(0, old_end - new_end)))
    if img.backing_offset:
        img.write(8, struct.pack(">Q", img.header_length + len(area)))
    if autoclear:
        img.write(88, struct.pack(">Q", img.autoclear | AUTOCLEAR_DEDUP_TABLE))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("image")
    ap.add_argument("--hash", default="sha256")
    ap.add_argument("--key-len", type=int)
    ap.add_argument("--open", action="store_true", help="set QDT_FLAG_OPEN")
    ap.add_argument("--no-autoclear", action="store_true")
    ap.add_argument("--generation", type=int, default=1)
    a = ap.parse_args()

    img = Image(a.image)
    fn = digest_fn(a.hash)
    # As the target keeps them (DEDUP_KEY_MAX): at most 24 bytes.
    key_len = a.key_len or min(len(fn(b"")), TARGET_KEY)
    if not 1 <= key_len <= SLOT:
        die("key_len must be 1..32")
    slot_bits, ptr_bits = img.cluster_bits - 5, img.cluster_bits - 3

    data = img.data_clusters()
    leaves = sorted({h >> slot_bits for h in data})
    dirs = sorted({leaf >> ptr_bits for leaf in leaves})
    first = (img.file_size + img.cs - 1) // img.cs
    root = first
    dir_at = {d: first + 1 + i for i, d in enumerate(dirs)}
    leaf_at = {l: first + 1 + len(dirs) + i for i, l in enumerate(leaves)}
    nclusters = 1 + len(dirs) + len(leaves)

    # Check every refcount first: a refusal leaves the image as it was.
    for dry_run in (True, False):
        for k in range(first, first + nclusters):
            img.set_refcount(k, 1, dry_run)

    tables = {k: bytearray(img.cs) for k in range(first, first + nclusters)}
    for d, k in dir_at.items():
        struct.pack_into(">Q", tables[root], 8 * d, k * img.cs)
    for l, k in leaf_at.items():
        struct.pack_into(">Q", tables[dir_at[l >> ptr_bits]],
                         8 * (l & ((1 << ptr_bits) - 1)), k * img.cs)
    first_slot = None
    for h in data:
        key = fn(img.read(h * img.cs, img.cs))[:key_len].ljust(key_len, b"\0")
        k = leaf_at[h >> slot_bits]
        pos = (h & ((1 << slot_bits) - 1)) * SLOT
        tables[k][pos:pos + SLOT] = key.ljust(SLOT, b"\0")
        if first_slot is None:
            first_slot = (k * img.cs + pos, h)
    for k in sorted(tables):
        img.write(k * img.cs, bytes(tables[k]))

    qdt = struct.pack(">IIQQQB7s32s", QDT_VERSION,
                      QDT_FLAG_OPEN if a.open else 0, root * img.cs, len(data),
                      a.generation, key_len, bytes(7), a.hash.encode())
    rewrite_header(img, qdt, not a.no_autoclear)
    img.f.close()

    print("root_offset=%d" % (root * img.cs))
    print("clusters=%d" % nclusters)
    print("entries=%d" % len(data))
    if first_slot:
        print("first_slot_offset=%d" % first_slot[0])
        print("first_slot_cluster=%d" % first_slot[1])


if __name__ == "__main__":
    main()
