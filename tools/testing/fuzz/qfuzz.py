# SPDX-License-Identifier: GPL-2.0
"""Structure-aware qcow2 mutator and per-image plans for `make fuzz`.

Python 3 standard library only; every choice comes from a random.Random the
caller seeds, so a campaign seed reproduces the same images.

  parse(buf, dev_size)        -> Image: where every structure of the image is
  mutate(buf, dev_size, rng)  -> [description]: 1..k mutations, in place
  plan(buf, dev_size)         -> the helper's job line (ops derived from the
                                 image's own sha256, so a saved image replays
                                 with exactly the same writes)
  pattern(p, i, n)            -> the bytes the helper writes (qfuzz-helper.c)

The on-disk formats: include/uapi/qcow2dedup/qcow2.h and dedup-table.h.
"""
import hashlib
import random
import struct

MAGIC = 0x514649FB
EXT_DEDUP = 0x71646474
EXT_FEATURES = 0x6803F857
OFF_MASK = 0x00FFFFFFFFFFFE00
COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO = 1

# Header fields: name -> (offset, width); v3 adds the last six.
HEADER_FIELDS = {
    "magic": (0, 4), "version": (4, 4), "backing_file_offset": (8, 8),
    "backing_file_size": (16, 4), "cluster_bits": (20, 4), "size": (24, 8),
    "crypt_method": (32, 4), "l1_size": (36, 4), "l1_table_offset": (40, 8),
    "refcount_table_offset": (48, 8), "refcount_table_clusters": (56, 4),
    "nb_snapshots": (60, 4), "snapshots_offset": (64, 8),
    "incompatible_features": (72, 8), "compatible_features": (80, 8),
    "autoclear_features": (88, 8), "refcount_order": (96, 4),
    "header_length": (100, 4), "compression_type": (104, 1),
}
QDT_FIELDS = {"version": (0, 4), "flags": (4, 4), "root_offset": (8, 8),
              "entries": (16, 8), "generation": (24, 8), "key_len": (32, 1),
              "reserved": (33, 7), "hash": (40, 32)}


def be(buf, off, n):
    if off < 0 or off + n > len(buf):
        return 0
    return int.from_bytes(buf[off:off + n], "big")


def put(buf, off, n, val):
    if off < 0 or off + n > len(buf):
        return False
    buf[off:off + n] = (val & ((1 << (8 * n)) - 1)).to_bytes(n, "big")
    return True


class Image:
    """Offsets of the structures of a qcow2 image held in @buf (best effort:
    a damaged image yields what could be found)."""

    def __init__(self, buf, dev_size):
        self.buf, self.dev = buf, dev_size
        g = lambda k: be(buf, *HEADER_FIELDS[k])
        self.version = g("version")
        self.cb = g("cluster_bits") if 9 <= g("cluster_bits") <= 21 else 16
        self.cs = 1 << self.cb
        self.size = g("size")
        self.order = g("refcount_order") if self.version >= 3 else 4
        if self.order > 6:
            self.order = 4
        self.hlen = g("header_length") if self.version >= 3 else 72
        self.l1_off, self.l1_size = g("l1_table_offset"), g("l1_size")
        self.rt_off = g("refcount_table_offset")
        self.rt_len = min(g("refcount_table_clusters"), 64) * self.cs // 8
        self.meta = {0: "header"}          # host cluster offset -> what
        self.l1e = []                      # file offsets of L1 entries
        self.l2e = []                      # (file offset, value) of used L2 entries
        self.l2_tables = []
        self.rte = []                      # file offsets of refcount table entries
        self.rblocks = []
        self.ext = []                      # (offset of the type field, type, length)
        self.qdt = None                    # offset of the dedup extension's data
        self.qdt_root = 0
        self.qdt_ptrs = []                 # file offsets of root and directory entries
        self.qdt_leaves = []
        self.slots = []                    # file offsets of non-zero slots
        self.snap_fields = []              # (offset, width, name) in the snapshot table
        self.snap_l1e = []
        self._data = None
        self._extensions()
        self._l1(self.l1_off, self.l1_size, self.l1e, "L1")
        self._refcounts()
        self._snapshots(g("nb_snapshots"), g("snapshots_offset"))
        self._qdt()

    def ok(self, off, n=1):
        return 0 <= off and off + n <= len(self.buf)

    def _extensions(self):
        off, end = self.hlen, min(self.cs, len(self.buf))
        while off + 8 <= end and len(self.ext) < 32:
            t, n = be(self.buf, off, 4), be(self.buf, off + 4, 4)
            self.ext.append((off, t, n))
            if t == 0:
                break
            if t == EXT_DEDUP and n >= 72:
                self.qdt = off + 8
            off += 8 + ((n + 7) & ~7)

    def _l1(self, off, size, out, what):
        n = min(size, 1 << 16)
        if not off or off % self.cs or not self.ok(off, 8 * n):
            return
        for c in range(off, off + 8 * n + self.cs - 1, self.cs):
            self.meta.setdefault(c - c % self.cs, what)
        for i in range(n):
            out.append(off + 8 * i)
            l2 = be(self.buf, off + 8 * i, 8) & OFF_MASK
            if l2 and not l2 % self.cs and self.ok(l2, self.cs) and l2 not in self.l2_tables:
                self.l2_tables.append(l2)
                self.meta.setdefault(l2, "L2")
                t = struct.unpack_from(">%dQ" % (self.cs // 8), self.buf, l2)
                self.l2e += [(l2 + 8 * j, e) for j, e in enumerate(t) if e]

    def _refcounts(self):
        if not self.rt_off or self.rt_off % self.cs or not self.ok(self.rt_off, 8):
            return
        for k in range(0, 8 * self.rt_len, self.cs):
            self.meta.setdefault(self.rt_off + k, "reftable")
        n = max(0, min(self.rt_len, (len(self.buf) - self.rt_off) // 8))
        t = struct.unpack_from(">%dQ" % n, self.buf, self.rt_off)
        for i, e in enumerate(t):
            o = self.rt_off + 8 * i
            rb = e & OFF_MASK
            if rb:
                self.rte.append(o)
                if not rb % self.cs and self.ok(rb, self.cs):
                    self.rblocks.append((i, rb))
                    self.meta.setdefault(rb, "refblock")

    def refcount_at(self, cluster):
        """(file offset, bit shift, bits) of the refcount of host @cluster."""
        bits = 1 << self.order
        per = self.cs * 8 // bits
        for i, rb in self.rblocks:
            if i == cluster // per:
                idx = cluster % per
                return rb + idx * bits // 8, (idx * bits) % 8, bits
        return None

    def _snapshots(self, nb, off):
        if not nb or not off or not self.ok(off, 40):
            return
        self.meta.setdefault(off - off % self.cs, "snapshots")
        for _ in range(min(nb, 16)):
            if not self.ok(off, 40):
                return
            for name, o, w in (("l1_table_offset", 0, 8), ("l1_size", 8, 4),
                               ("id_str_size", 12, 2), ("name_size", 14, 2),
                               ("vm_state_size", 32, 4), ("extra_data_size", 36, 4)):
                self.snap_fields.append((off + o, w, name))
            self._l1(be(self.buf, off, 8), be(self.buf, off + 8, 4), self.snap_l1e, "snapshot L1")
            extra, ids, names = be(self.buf, off + 36, 4), be(self.buf, off + 12, 2), be(self.buf, off + 14, 2)
            if extra >= 16:
                self.snap_fields.append((off + 40 + 8, 8, "disk_size"))
            off += (40 + extra + ids + names + 7) & ~7

    def _qdt(self):
        if self.qdt is None:
            return
        root = be(self.buf, self.qdt + 8, 8)
        if not root or root % self.cs or not self.ok(root, self.cs):
            return
        self.qdt_root = root
        self.meta[root] = "qdt root"
        for i in range(self.cs // 8):
            d = be(self.buf, root + 8 * i, 8) & OFF_MASK
            if not d:
                continue
            self.qdt_ptrs.append(root + 8 * i)
            if d % self.cs or not self.ok(d, self.cs):
                continue
            self.meta[d] = "qdt directory"
            for j in range(self.cs // 8):
                lf = be(self.buf, d + 8 * j, 8) & OFF_MASK
                if not lf:
                    continue
                self.qdt_ptrs.append(d + 8 * j)
                if lf % self.cs or not self.ok(lf, self.cs):
                    continue
                self.meta[lf] = "qdt leaf"
                self.qdt_leaves.append(lf)
                t = struct.unpack_from(">%dQ" % (self.cs // 8), self.buf, lf)
                self.slots += [lf + 32 * s for s in range(self.cs // 32) if any(t[4 * s:4 * s + 4])]

    def data_clusters(self):
        if self._data is None:
            self._data = sorted({e & OFF_MASK for _, e in self.l2e
                                 if e & OFF_MASK and not e & COMPRESSED and not e & ZERO})
        return self._data

    def compressed(self):
        return [(o, e) for o, e in self.l2e if e & COMPRESSED]

    def guest_data(self):
        """Guest offsets whose active L2 entry is set (for the write plan)."""
        out, per = [], self.cs // 8
        for i, o in enumerate(self.l1e):
            l2 = be(self.buf, o, 8) & OFF_MASK
            if not l2 or l2 % self.cs or not self.ok(l2, self.cs):
                continue
            t = struct.unpack_from(">%dQ" % per, self.buf, l2)
            out += [(i * per + j) * self.cs for j, e in enumerate(t) if e]
            if len(out) > 4096:
                return out
        return out


# ---- Interesting values ----

def interesting_int(rng, width, img=None):
    bits = 8 * width
    k = rng.randrange(bits)
    v = rng.choice([0, 1, (1 << bits) - 1, 1 << k, (1 << k) - 1, (1 << k) + 1,
                    (1 << (bits - 1)), (1 << (bits - 1)) - 1, 0x7F, 0x80, 0xFF, 0xFFFF,
                    rng.getrandbits(bits)])
    if img is not None and width >= 4 and rng.random() < 0.4:
        v = interesting_offset(rng, img)
    return v & ((1 << bits) - 1)


def interesting_offset(rng, img):
    """A host offset: another metadata cluster, a data cluster, the device
    end and just past it, misaligned, huge."""
    cs, dev = img.cs, img.dev
    end = dev - dev % cs
    choices = [end, end + cs, end - cs, dev + 512, 1 << 55, (1 << 56) - cs,
               1 << 40, cs, 0]
    meta = list(img.meta)
    data = img.data_clusters()
    kind = rng.randrange(6)
    if kind == 0 and meta:
        v = rng.choice(meta)
    elif kind == 1 and data:
        v = rng.choice(data)
    elif kind == 2:
        v = rng.choice(choices)
    elif kind == 3:
        base = rng.choice(meta + data) if meta or data else cs
        v = base + rng.choice([512, 8, 1, cs // 2 if cs > 512 else 256, -512])
    elif kind == 4:
        v = rng.randrange(0, max(cs, end + 4 * cs)) & ~511
    else:
        v = rng.choice(choices)
    return max(v, 0)


def with_flags(rng, old, new_off):
    """An L1/L2-style entry with offset @new_off and flags kept or changed."""
    flags = old & ~OFF_MASK
    r = rng.random()
    if r < 0.3:
        flags |= COPIED
    elif r < 0.4:
        flags &= ~COPIED
    return flags | (new_off & OFF_MASK) if rng.random() < 0.85 else flags | new_off


# ---- Mutation operators: each returns a description or None ----

def m_header(rng, img, buf):
    v3 = img.version >= 3
    names = [k for k, (o, w) in HEADER_FIELDS.items() if v3 or o < 72]
    name = rng.choice(names)
    off, w = HEADER_FIELDS[name]
    old = be(buf, off, w)
    if name in ("l1_table_offset", "refcount_table_offset", "snapshots_offset",
                "backing_file_offset") and rng.random() < 0.7:
        new = interesting_offset(rng, img)
    elif name in ("incompatible_features", "compatible_features", "autoclear_features") \
            and rng.random() < 0.7:
        new = old ^ (1 << rng.randrange(64))
    elif name in ("l1_size", "refcount_table_clusters", "nb_snapshots", "size") and rng.random() < 0.5:
        new = max(0, old + rng.choice([-1, 1, 2, old, -old // 2 if old else 1]))
    else:
        new = interesting_int(rng, w, img)
    put(buf, off, w, new)
    return "header.%s @%d: %#x -> %#x" % (name, off, old, new)


def m_extension(rng, img, buf):
    if not img.ext:
        return None
    off, t, n = rng.choice(img.ext)
    r = rng.random()
    if r < 0.3:
        new = interesting_int(rng, 4)
        if rng.random() < 0.5:
            new = rng.choice([n + 8, n - 1, 0, 4096, 1 << 16, img.cs, 0xFFFFFFFF, n + img.cs])
        put(buf, off + 4, 4, new)
        return "extension %#x @%d length %d -> %d" % (t, off, n, new & 0xFFFFFFFF)
    if r < 0.45:
        new = rng.choice([0, EXT_DEDUP, EXT_FEATURES, 0x6803F857, 0x44415441, 0xE2792ACA,
                          0x23852875, rng.getrandbits(32)])
        put(buf, off, 4, new)
        return "extension @%d type %#x -> %#x" % (off, t, new)
    if n == 0:
        return None
    o = off + 8 + rng.randrange(min(n, img.cs))
    k = rng.randint(1, 8)
    old = bytes(buf[o:o + k])
    buf[o:o + k] = bytes(rng.getrandbits(8) for _ in range(len(old)))
    return "extension %#x data @%d: %s -> %s" % (t, o, old.hex(), bytes(buf[o:o + k]).hex())


def m_qdt_ext(rng, img, buf):
    if img.qdt is None:
        return None
    name = rng.choice(list(QDT_FIELDS))
    o, w = QDT_FIELDS[name]
    old = be(buf, img.qdt + o, w)
    if name == "root_offset":
        new = interesting_offset(rng, img)
    elif name == "flags":
        new = rng.choice([1, 2, 4, 3, 7, 8, 1 << 31, old ^ (1 << rng.randrange(32))])
    elif name == "key_len":
        new = rng.choice([0, 1, 8, 15, 16, 31, 32, 33, 64, 255])
    elif name == "hash":
        s = rng.choice([b"sha512", b"blake2b-256", b"xxhash64", b"crc32c", b"", b"sha256\x01",
                        b"A" * 32, b"md5"])
        buf[img.qdt + o:img.qdt + o + 32] = s.ljust(32, b"\0")[:32]
        return "qdt.hash -> %r" % s
    else:
        new = interesting_int(rng, w)
    put(buf, img.qdt + o, w, new)
    return "qdt.%s: %#x -> %#x" % (name, old, new)


def m_l1(rng, img, buf):
    pool = img.l1e if (not img.snap_l1e or rng.random() < 0.8) else img.snap_l1e
    if not pool:
        return None
    used = [o for o in pool if be(buf, o, 8)]
    o = rng.choice(used if used and rng.random() < 0.8 else pool)
    old = be(buf, o, 8)
    r = rng.random()
    if r < 0.6:
        new = with_flags(rng, old, interesting_offset(rng, img))
    elif r < 0.8:
        new = old ^ (1 << rng.randrange(64))
    else:
        new = interesting_int(rng, 8, img)
    put(buf, o, 8, new)
    return "L1 entry @%d: %#x -> %#x" % (o, old, new)


def m_l2(rng, img, buf):
    if not img.l2e:
        return None
    o, old = rng.choice(img.l2e)
    r = rng.random()
    data = img.data_clusters()
    if r < 0.35:
        new = with_flags(rng, old & ~COMPRESSED, interesting_offset(rng, img))
        what = "points elsewhere"
    elif r < 0.55 and data:
        # Two entries on one cluster, COPIED kept on both.
        new = COPIED | rng.choice(data)
        what = "duplicates a data pointer with COPIED"
    elif r < 0.65:
        new = old ^ rng.choice([COPIED, COMPRESSED, ZERO, 1 << rng.randrange(1, 9),
                                1 << rng.randrange(56, 62)])
        what = "flag flip"
    elif r < 0.75:
        new = 0 if rng.random() < 0.5 else ZERO | (old & OFF_MASK)
        what = "cleared/zero"
    elif r < 0.9:
        new = old ^ (1 << rng.randrange(64))
        what = "bit flip"
    else:
        new = interesting_int(rng, 8, img)
        what = "interesting"
    put(buf, o, 8, new)
    return "L2 entry @%d (%s): %#x -> %#x" % (o, what, old, new)


def m_dup_copied(rng, img, buf):
    """Two COPIED L2 entries on one cluster, its refcount 1, 2 or left."""
    std = [(o, e) for o, e in img.l2e if e & OFF_MASK and not e & (COMPRESSED | ZERO)]
    if len(std) < 2:
        return None
    (o1, e1), (o2, e2) = rng.sample(std, 2)
    put(buf, o2, 8, COPIED | (e1 & OFF_MASK))
    d = "L2 entry @%d: %#x -> %#x (same cluster as @%d, both COPIED)" % (o2, e2, COPIED | (e1 & OFF_MASK), o1)
    put(buf, o1, 8, e1 | COPIED)
    rc = rng.choice([None, 2, 2, 1])
    if rc is not None:
        d += "; " + (set_refcount(img, buf, (e1 & OFF_MASK) // img.cs, rc) or "")
    return d


def set_refcount(img, buf, cluster, value):
    at = img.refcount_at(cluster)
    if at is None:
        return None
    off, shift, bits = at
    if bits >= 8:
        old = be(buf, off, bits // 8)
        value &= (1 << bits) - 1
        put(buf, off, bits // 8, value)
    else:
        byte = buf[off]
        mask = ((1 << bits) - 1) << shift
        old = (byte & mask) >> shift
        value &= (1 << bits) - 1
        buf[off] = (byte & ~mask) | (value << shift)
    return "refcount of cluster %d: %d -> %d" % (cluster, old, value)


def m_refcount(rng, img, buf):
    targets = img.data_clusters() + list(img.meta)
    if not targets or not img.rblocks:
        return None
    c = rng.choice(targets) // img.cs
    at = img.refcount_at(c)
    if at is None:
        return None
    bits = at[2]
    cur = be(buf, at[0], max(1, bits // 8))
    if bits < 8:
        cur = (buf[at[0]] >> at[1]) & ((1 << bits) - 1)
    v = rng.choice([0, 0, 1, 2, cur + 1, cur - 1 if cur else 0, (1 << bits) - 1, (1 << bits) - 2])
    return set_refcount(img, buf, c, v)


def m_reftable(rng, img, buf):
    if not img.rte:
        return None
    o = rng.choice(img.rte)
    old = be(buf, o, 8)
    new = interesting_offset(rng, img) if rng.random() < 0.7 else old ^ (1 << rng.randrange(64))
    put(buf, o, 8, new)
    return "refcount table entry @%d: %#x -> %#x" % (o, old, new)


def m_refblock_bytes(rng, img, buf):
    if not img.rblocks:
        return None
    _, rb = rng.choice(img.rblocks)
    o = rb + rng.randrange(min(img.cs, 4096))
    k = rng.randint(1, 16)
    buf[o:o + k] = bytes(rng.getrandbits(8) for _ in range(k))
    return "refcount block %#x: %d random bytes @%d" % (rb, k, o)


def m_snapshot(rng, img, buf):
    if not img.snap_fields:
        return None
    o, w, name = rng.choice(img.snap_fields)
    old = be(buf, o, w)
    new = interesting_offset(rng, img) if name == "l1_table_offset" and rng.random() < 0.7 \
        else interesting_int(rng, w)
    put(buf, o, w, new)
    return "snapshot.%s @%d: %#x -> %#x" % (name, o, old, new)


def m_compressed(rng, img, buf):
    comp = img.compressed()
    if not comp:
        return None
    o, old = rng.choice(comp)
    x = 62 - (img.cb - 8)
    off_mask, nmask = (1 << x) - 1, (1 << (62 - x)) - 1
    host, n = old & off_mask, (old >> x) & nmask
    dev = img.dev
    r = rng.random()
    if r < 0.35:
        n = nmask                                   # length runs far
    elif r < 0.55:
        host = (dev - 512) & off_mask               # starts at the last sector
    elif r < 0.7:
        host = (dev + rng.choice([0, 512, img.cs])) & off_mask
    elif r < 0.8:
        host = rng.choice(list(img.meta)) & off_mask
    elif r < 0.9:
        n = rng.choice([0, n + 1, n + 8, max(0, n - 1)]) & nmask
    else:
        host ^= 1 << rng.randrange(x)
    new = (old & ~((1 << 62) - 1)) | (n << x) | host
    if rng.random() < 0.1:
        new |= COPIED
    put(buf, o, 8, new)
    return "compressed descriptor @%d: %#x -> %#x (host %#x, %d extra sectors)" % (o, old, new, host, n)


def m_qdt_ptr(rng, img, buf):
    if not img.qdt_ptrs:
        if img.qdt is None or not img.qdt_root:
            return None
        o = img.qdt_root + 8 * rng.randrange(4)
    else:
        o = rng.choice(img.qdt_ptrs)
    old = be(buf, o, 8)
    r = rng.random()
    if r < 0.3 and img.l2_tables:
        new = rng.choice(img.l2_tables)
        what = "an L2 table"
    elif r < 0.45 and img.rblocks:
        new = rng.choice(img.rblocks)[1]
        what = "a refcount block"
    elif r < 0.55 and img.l1_off:
        new = img.l1_off - img.l1_off % img.cs
        what = "the L1 table"
    elif r < 0.65 and img.data_clusters():
        new = rng.choice(img.data_clusters())
        what = "a data cluster"
    else:
        new = interesting_offset(rng, img)
        what = "interesting"
    put(buf, o, 8, new)
    return "qdt pointer @%d -> %s: %#x -> %#x" % (o, what, old, new)


def m_qdt_slot(rng, img, buf):
    if not img.qdt_leaves:
        return None
    lf = rng.choice(img.qdt_leaves)
    r = rng.random()
    if img.slots and r < 0.35:
        # The digest of one cluster claimed for another.
        src = rng.choice(img.slots)
        dst = lf + 32 * rng.randrange(img.cs // 32)
        if rng.random() < 0.6 and len(img.slots) > 1:
            dst = rng.choice(img.slots)
        buf[dst:dst + 32] = buf[src:src + 32]
        return "qdt slot @%d = copy of slot @%d" % (dst, src)
    if img.slots and r < 0.5:
        a, b = rng.choice(img.slots), rng.choice(img.slots)
        sa, sb = bytes(buf[a:a + 32]), bytes(buf[b:b + 32])
        buf[a:a + 32], buf[b:b + 32] = sb, sa
        return "qdt slots @%d and @%d swapped" % (a, b)
    # A slot for a cluster: metadata, beyond the device, random bytes.
    s = rng.randrange(img.cs // 32)
    o = lf + 32 * s
    if rng.random() < 0.5:
        buf[o:o + 32] = bytes(rng.getrandbits(8) for _ in range(32))
        return "qdt slot @%d random" % o
    buf[o:o + 32] = bytes(32)
    return "qdt slot @%d zeroed" % o


def m_random_bytes(rng, img, buf):
    c = rng.choice(list(img.meta))
    o = c + rng.randrange(min(img.cs, len(buf) - c) if len(buf) > c else 1)
    k = rng.choice([1, 1, 2, 4, 8, 16, 64])
    if rng.random() < 0.5:
        b = buf[o] if o < len(buf) else 0
        if o < len(buf):
            buf[o] = b ^ (1 << rng.randrange(8))
        return "bit flip in %s cluster %#x @%d" % (img.meta[c], c, o)
    buf[o:o + k] = bytes(rng.getrandbits(8) for _ in range(len(buf[o:o + k])))
    return "%d random bytes in %s cluster %#x @%d" % (k, img.meta[c], c, o)


def m_swap_meta(rng, img, buf):
    """A pointer to one metadata cluster swapped for another's."""
    pools = [p for p in (img.l1e, img.rte, img.qdt_ptrs) if p]
    if not pools:
        return None
    o = rng.choice(rng.choice(pools))
    old = be(buf, o, 8)
    new = (old & ~OFF_MASK) | rng.choice(list(img.meta))
    put(buf, o, 8, new)
    return "pointer @%d: %#x -> %#x (another metadata cluster)" % (o, old, new)


OPERATORS = [
    (m_header, 10), (m_extension, 4), (m_qdt_ext, 6), (m_l1, 8), (m_l2, 16),
    (m_dup_copied, 6), (m_refcount, 10), (m_reftable, 5), (m_refblock_bytes, 3),
    (m_snapshot, 5), (m_compressed, 8), (m_qdt_ptr, 8), (m_qdt_slot, 8),
    (m_random_bytes, 6), (m_swap_meta, 4),
]


def mutate(buf, dev_size, rng, kmax=4):
    """Apply 1..kmax mutations to @buf in place; their descriptions."""
    out = []
    k = rng.choice([1, 1, 1, 2, 2, 3, kmax])
    tries = 0
    while len(out) < k and tries < 50:
        tries += 1
        img = Image(buf, dev_size)
        ops = [f for f, w in OPERATORS for _ in range(w)]
        d = rng.choice(ops)(rng, img, buf)
        if d:
            out.append(d)
    return out


# ---- What the helper writes (qfuzz-helper.c pattern()) ----

M64 = (1 << 64) - 1


def splitmix(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def pattern(p, i, n):
    """Block @i of pattern @p, @n bytes: word j is splitmix(p << 40 | i << 20 | j)
    little-endian (the helper's pattern())."""
    base = (p << 40) | (i << 20)
    return b"".join(struct.pack("<Q", splitmix(base + j)) for j in range((n + 7) // 8))[:n]


# ---- The per-image plan ----

def header_geometry(buf):
    """(virtual size in sectors for the table line, cluster size for the plan)."""
    cb = be(buf, 20, 4)
    cs = 1 << cb if 9 <= cb <= 21 else 65536
    size = be(buf, 24, 8)
    sectors = size // 512
    if sectors == 0:
        sectors = 1
    return min(sectors, (1 << 63) // 512), cs


def plan(buf, dev_size, name, slot_sectors=0, slot_offset=0, seedgen=False, ops=None, strict=False):
    """The helper's job line for image @name (see qfuzz-helper.c): @ops as
    given, or derived from the image (every op must succeed when @strict);
    @strict True (every suspect class fails the image) or a list of classes."""
    sectors, cs = header_geometry(buf)
    if ops is None:
        ops = plan_ops(buf, dev_size, seedgen)
        if strict:
            ops = [o + "!" if o[0] in "wdzfm" else o for o in ops]
    if strict is True:
        strict = "strict"
    elif strict:
        strict = "strict=" + "+".join(strict)
    return "IMG %s %d %d %d %d %s%s %s" % (name, slot_offset // 512, slot_sectors or dev_size // 512,
                                         sectors, cs, "rw" if seedgen else "ro,rw",
                                         "," + strict if strict else "", " ".join(ops))


def plan_ops(buf, dev_size, seedgen=False):
    """Ops derived from the image's sha256."""
    rng = random.Random(hashlib.sha256(bytes(buf)).digest())
    sectors, cs = header_geometry(buf)
    vsize = sectors * 512
    img = Image(buf, dev_size)
    guest = img.guest_data()
    ops = []

    def pick(nclusters):
        span = nclusters * cs
        if vsize < span:
            return None
        if guest and rng.random() < 0.6:
            g = rng.choice(guest)
            if g + span <= vsize:
                return g
        return rng.randrange(0, vsize - span + 1) // cs * cs

    n = 1 if cs >= (1 << 20) else rng.choice([1, 2, 3])
    taken = []

    def free(o, ln):
        return o is not None and all(o + ln <= a or a + al <= o for a, al in taken)

    a = pick(n)
    if a is not None:
        taken.append((a, n * cs))
        p = rng.randrange(4)
        ops.append("w:%d:%d:%d" % (a, n * cs, p))
        b = None
        for _ in range(8):
            b = pick(n)
            if free(b, n * cs):
                break
            b = None
        if b is not None:
            taken.append((b, n * cs))
            ops.append("w:%d:%d:%d" % (b, n * cs, p))
        # Partial overwrite inside A.
        plen = min(n * cs, rng.choice([512, 1024, 4096, 7680]))
        po = a + rng.randrange(0, (n * cs - plen) // 512 + 1) * 512
        ops.append("w:%d:%d:%d" % (po, plen, 4 + rng.randrange(4)))
        if seedgen:
            # More copies of the same contents: refcounts above 2.
            for _ in range(3):
                c = pick(n)
                if free(c, n * cs):
                    taken.append((c, n * cs))
                    ops.append("w:%d:%d:%d" % (c, n * cs, p))
        # Discard a range (over existing data more often than not).
        dn = rng.choice([1, 2, 4])
        d = pick(dn)
        if not seedgen and d is not None and free(d, dn * cs):
            taken.append((d, dn * cs))
            if rng.random() < 0.3 and dn * cs > 2048:
                # Misaligned: partial clusters at both ends.
                ops.append("d:%d:%d" % (d + 512 * rng.randrange(1, 4), dn * cs - 2048))
            else:
                ops.append("d:%d:%d" % (d, dn * cs))
        # Write-zeroes, over the duplicated range B half the time.
        if not seedgen:
            if b is not None and rng.random() < 0.5:
                ops.append("z:%d:%d" % (b, n * cs))
            else:
                zn = rng.choice([1, 2])
                z = pick(zn)
                if free(z, zn * cs):
                    taken.append((z, zn * cs))
                    ops.append("z:%d:%d" % (z, zn * cs))
    return ops + ["f", "m", "v", "s"]
