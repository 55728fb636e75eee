#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Damage a qcow2 image on purpose, for tools/testing/tool-test.

  qcow2-poke.py IMG refcount CLUSTER VALUE   set a refcount (any width);
                                             prints the old one
  qcow2-poke.py IMG data-cluster [N]         host cluster of the N-th (0)
                                             normal data cluster of the
                                             active L1 table
  qcow2-poke.py IMG l1-zero INDEX            clear an active L1 entry
  qcow2-poke.py IMG autoclear-clear BIT      clear an autoclear feature bit
  qcow2-poke.py IMG qdt FIELD VALUE          set a field of the dedup table
                                             extension: version, flags,
                                             root_offset, key_len, hash
  qcow2-poke.py IMG slot CLUSTER HEX         write the slot of host CLUSTER
                                             (its leaf must exist)
  qcow2-poke.py IMG flip OFFSET              invert the byte at OFFSET
  qcow2-poke.py IMG set-size BYTES           header virtual size = BYTES
  qcow2-poke.py IMG l2 GUEST_OFF [VALUE]     print (0x...) or set the raw L2
                                             entry of a guest byte offset
  qcow2-poke.py IMG l2-table INDEX           byte offset of the L2 table of
                                             active L1 entry INDEX
  qcow2-poke.py IMG leaf-pointer LEAF VALUE  point the dedup table's
                                             directory entry for LEAF at VALUE
  qcow2-poke.py IMG dir-pointer DIR VALUE    point the dedup table root's
                                             entry for directory DIR at VALUE
  qcow2-poke.py IMG refblock INDEX           byte offset of refcount block INDEX
  qcow2-poke.py IMG slot-offset CLUSTER      byte offset of the dedup table slot
                                             of host CLUSTER

Version 3 and 2 images; no extended L2 entries for data-cluster.
"""
import struct
import sys

EXT_DEDUP_TABLE = 0x71646474
QDT_FIELDS = {  # offset in struct qdt_ext, struct format
    "version": (0, ">I"), "flags": (4, ">I"), "root_offset": (8, ">Q"),
    "key_len": (32, ">B"), "hash": (40, "32s"),
}
OFFSET_MASK = 0x00FFFFFFFFFFFE00


class Image:
    def __init__(self, path):
        self.f = open(path, "r+b")
        h = self.read(0, 104)
        (_magic, self.version, self.backing_offset, _bsize, self.cluster_bits,
         _size, _crypt, self.l1_size, self.l1_offset, self.rt_offset,
         self.rt_clusters) = struct.unpack(">IIQIIQIIQQI", h[:60])
        self.cs = 1 << self.cluster_bits
        if self.version >= 3:
            self.refcount_order, self.header_length = struct.unpack(">II", h[96:104])
        else:
            self.refcount_order, self.header_length = 4, 72

    def read(self, off, n):
        self.f.seek(off)
        b = self.f.read(n)
        return b + bytes(n - len(b))

    def write(self, off, b):
        self.f.seek(off)
        self.f.write(b)

    def refcount(self, cluster, value=None):
        """The refcount of @cluster; set it to @value if given."""
        order = self.refcount_order
        rb_bits = self.cluster_bits + 3 - order
        (rb,) = struct.unpack(">Q", self.read(self.rt_offset + 8 * (cluster >> rb_bits), 8))
        rb &= 0xFFFFFFFFFFFFFE00
        if not rb:
            sys.exit("qcow2-poke: no refcount block for cluster %d" % cluster)
        idx, bits = cluster & ((1 << rb_bits) - 1), 1 << order
        if bits >= 8:
            off, n = rb + idx * bits // 8, bits // 8
            old = int.from_bytes(self.read(off, n), "big")
            if value is not None:
                self.write(off, value.to_bytes(n, "big"))
            return old
        off, shift = rb + idx * bits // 8, (idx * bits) % 8
        mask = ((1 << bits) - 1) << shift
        byte = self.read(off, 1)[0]
        if value is not None:
            self.write(off, bytes([(byte & ~mask) | (value << shift)]))
        return (byte & mask) >> shift

    def data_clusters(self):
        for i in range(self.l1_size):
            (e,) = struct.unpack(">Q", self.read(self.l1_offset + 8 * i, 8))
            if not e & OFFSET_MASK:
                continue
            l2 = self.read(e & OFFSET_MASK, self.cs)
            for (l2e,) in struct.iter_unpack(">Q", l2):
                if l2e & OFFSET_MASK and not l2e & ((1 << 62) | 1):
                    yield (l2e & OFFSET_MASK) >> self.cluster_bits

    def l2_entry_offset(self, guest_off):
        l2_bits = self.cluster_bits - 3
        i = guest_off >> (self.cluster_bits + l2_bits)
        (e,) = struct.unpack(">Q", self.read(self.l1_offset + 8 * i, 8))
        if not e & OFFSET_MASK:
            sys.exit("qcow2-poke: no L2 table for guest offset %d" % guest_off)
        return (e & OFFSET_MASK) + 8 * ((guest_off >> self.cluster_bits) & ((1 << l2_bits) - 1))

    def qdt_offset(self):
        end = self.backing_offset or self.cs
        off = self.header_length
        while off + 8 <= end:
            t, n = struct.unpack(">II", self.read(off, 8))
            if t == 0:
                break
            if t == EXT_DEDUP_TABLE:
                return off + 8
            off += 8 + ((n + 7) & ~7)
        sys.exit("qcow2-poke: no dedup table extension")

    def slot_offset(self, cluster):
        slot_bits, ptr_bits = self.cluster_bits - 5, self.cluster_bits - 3
        (root,) = struct.unpack(">Q", self.read(self.qdt_offset() + 8, 8))
        leaf = cluster >> slot_bits
        (d,) = struct.unpack(">Q", self.read(root + 8 * (leaf >> ptr_bits), 8))
        (lf,) = struct.unpack(">Q", self.read(d + 8 * (leaf & ((1 << ptr_bits) - 1)), 8))
        if not d or not lf:
            sys.exit("qcow2-poke: no leaf for cluster %d" % cluster)
        return lf + 32 * (cluster & ((1 << slot_bits) - 1))


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    img, op, args = Image(argv[1]), argv[2], argv[3:]
    if op == "refcount":
        print(img.refcount(int(args[0]), int(args[1])))
    elif op == "data-cluster":
        n = int(args[0]) if args else 0
        print(list(img.data_clusters())[n])
    elif op == "l1-zero":
        img.write(img.l1_offset + 8 * int(args[0]), bytes(8))
    elif op == "autoclear-clear":
        (w,) = struct.unpack(">Q", img.read(88, 8))
        img.write(88, struct.pack(">Q", w & ~(1 << int(args[0]))))
    elif op == "qdt":
        off, fmt = QDT_FIELDS[args[0]]
        val = args[1].encode() if fmt == "32s" else int(args[1], 0)
        img.write(img.qdt_offset() + off, struct.pack(fmt, val))
    elif op == "slot":
        img.write(img.slot_offset(int(args[0])), bytes.fromhex(args[1]).ljust(32, b"\0"))
    elif op == "flip":
        off = int(args[0], 0)
        img.write(off, bytes([img.read(off, 1)[0] ^ 0xFF]))
    elif op == "set-size":
        img.write(24, struct.pack(">Q", int(args[0])))
    elif op == "l2":
        off = img.l2_entry_offset(int(args[0], 0))
        if len(args) > 1:
            img.write(off, struct.pack(">Q", int(args[1], 0)))
        else:
            print("0x%x" % struct.unpack(">Q", img.read(off, 8))[0])
    elif op == "l2-table":
        (e,) = struct.unpack(">Q", img.read(img.l1_offset + 8 * int(args[0]), 8))
        print(e & OFFSET_MASK)
    elif op == "refblock":
        (e,) = struct.unpack(">Q", img.read(img.rt_offset + 8 * int(args[0]), 8))
        print(e & 0xFFFFFFFFFFFFFE00)
    elif op == "slot-offset":
        print(img.slot_offset(int(args[0])))
    elif op in ("leaf-pointer", "dir-pointer"):
        ptr_bits = img.cluster_bits - 3
        (root,) = struct.unpack(">Q", img.read(img.qdt_offset() + 8, 8))
        n = int(args[0])
        if op == "dir-pointer":
            pos = root + 8 * n
        else:
            (d,) = struct.unpack(">Q", img.read(root + 8 * (n >> ptr_bits), 8))
            if not d:
                sys.exit("qcow2-poke: no directory for leaf %d" % n)
            pos = d + 8 * (n & ((1 << ptr_bits) - 1))
        img.write(pos, struct.pack(">Q", int(args[1], 0)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
