// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit fuzzing of the pure on-disk decoders of dm-qcow2dedup
 * (qcow2-format.c, dedup-table-format.c): valid seeds built at random,
 * then mutated (bit flips, random bytes, interesting values written into
 * the fields, truncation, random device sizes).  A decoder must refuse
 * cleanly, for a reason that holds, or return values inside the bounds its
 * comments and the format headers promise; where a reference is simple
 * (entries, extension walks, tree clusters) the result must match it.
 *
 * Inputs come from a deterministic generator, one stream per decoder:
 * input i of a decoder is the same in the fast and the slow case and on
 * every run with the same seed.  The seed is printed; to replay a run, or
 * to explore others, run kunit.py as the Makefile's kunit target does,
 * adding:
 *
 *	--kernel_args dm_qcow2dedup_test.fuzz_seed=N 'qcow2dedup-fuzz*'
 *
 * Buffers handed to a decoder are allocated with their exact length, so
 * that KASAN reports any read or write past their end.
 */
#include <kunit/test.h>
#include <kunit/visibility.h>
#include <linux/bitops.h>
#include <linux/blk_types.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/minmax.h>
#include <linux/module.h>
#include <linux/prandom.h>
#include <linux/sizes.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "dm-qcow2dedup-compat.h"
#include "dedup-table-format.h"
#include "qcow2-format.h"

MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);

static unsigned long long fuzz_seed = 20250917;
module_param(fuzz_seed, ullong, 0444);
MODULE_PARM_DESC(fuzz_seed, "seed of the qcow2dedup-fuzz inputs (printed by each case)");

#define FZ_FAST_INPUTS	2000U
#define FZ_SLOW_INPUTS	100000U

/* The largest buffer a decoder is given; tree clusters up to 8 KiB. */
#define FZ_SCRATCH	8192U
#define FZ_MAX_TREE_CB	13U
#define FZ_MAX_EXT	(FZ_SCRATCH / sizeof(struct qcow2_ext_hdr))

#define FZ_KNOWN_INCOMPAT	(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | \
				 QCOW2_INCOMPAT_DATA_FILE | QCOW2_INCOMPAT_COMPRESSION | \
				 QCOW2_INCOMPAT_EXTL2)

/* One header extension as a reference walk sees it. */
struct fz_ext {
	u32 off;
	u32 type;
	u32 len;
};

/* How a reference walk of an extension area ended. */
enum fz_walk_end {
	FZ_WALK_END,		/* end marker at @at */
	FZ_WALK_RUNOFF,		/* the area ran out without an end marker */
	FZ_WALK_BAD,		/* extension at @at is truncated or too long */
};

struct fz_walk {
	enum fz_walk_end how;
	u32 at;
	u32 n;
	struct fz_ext e[FZ_MAX_EXT];
};

struct fz {
	struct kunit *test;
	struct rnd_state rnd;
	const char *name;
	u32 input;
	bool failed;
	/* Context of the interesting values: the current geometry. */
	u64 cs;
	u64 dev_size;
	/* The input as built and mutated; decoders get exact-size copies. */
	u8 *a;
	u8 *b;
	u32 nr_ext;		/* extensions fz_make_area() laid out */
	u32 ext_off[16];
	u32 end_off;		/* and its end marker, 0 for none */
	struct fz_walk w1;
	struct fz_walk w2;
	/* Statistics, to show that both outcomes are reached. */
	u64 accepted;
	u64 refused;
	u64 reasons;		/* bit mask of the refusal reasons seen */
};

/*
 * A failed check names the decoder, the input and the seed, and stops the
 * decoder's loop after this input.
 */
#define FZ_EXPECT(ctx, cond, fmt, ...) do {					\
	struct fz *__fz = (ctx);						\
										\
	if (unlikely(!(cond))) {						\
		__fz->failed = true;						\
		KUNIT_FAIL(__fz->test, "%s input %u (seed %llu): %s: " fmt,	\
			   __fz->name, __fz->input, fuzz_seed, #cond,		\
			   ##__VA_ARGS__);					\
	}									\
} while (0)

/* --- Random numbers --------------------------------------------------- */

static u32 fz_u32(struct fz *fz)
{
	return prandom_u32_state(&fz->rnd);
}

static u64 fz_u64(struct fz *fz)
{
	return (u64)fz_u32(fz) << 32 | fz_u32(fz);
}

/* Uniform in [0, n), n > 0. */
static u32 fz_below(struct fz *fz, u32 n)
{
	return ((u64)fz_u32(fz) * n) >> 32;
}

/* One time in @n. */
static bool fz_one_in(struct fz *fz, u32 n)
{
	return !fz_below(fz, n);
}

/* Uniform in [lo, hi]. */
static u64 fz_range(struct fz *fz, u64 lo, u64 hi)
{
	u64 span = hi - lo + 1;

	if (!span)
		return fz_u64(fz);
	return lo + mul_u64_u64_shr(fz_u64(fz), span, 64);
}

static void fz_bytes(struct fz *fz, void *buf, size_t n)
{
	prandom_bytes_state(&fz->rnd, buf, n);
}

/*
 * A value of @bytes bytes that tends to sit on a boundary: 0, 1, all ones,
 * powers of two and their neighbours, the signed extremes, the device size
 * and cluster boundaries give or take a sector or a byte.
 */
static u64 fz_interesting(struct fz *fz, u32 bytes)
{
	static const s64 deltas[] = { -512, -1, 0, 1, 512 };
	u32 bits = bytes * 8, n = fz_below(fz, bits);
	u64 v, k;

	switch (fz_below(fz, 13)) {
	case 0:
		v = 0;
		break;
	case 1:
		v = 1;
		break;
	case 2:
		v = U64_MAX;
		break;
	case 3:
		v = BIT_ULL(n);
		break;
	case 4:
		v = BIT_ULL(n) - 1;
		break;
	case 5:
		v = BIT_ULL(n) + 1;
		break;
	case 6:
		v = BIT_ULL(bits - 1) - 1;	/* INT_MAX, LLONG_MAX */
		break;
	case 7:
		v = BIT_ULL(bits - 1);		/* INT_MIN, LLONG_MIN */
		break;
	case 8:
		v = fz->dev_size + deltas[fz_below(fz, ARRAY_SIZE(deltas))];
		break;
	case 9:
		v = fz->dev_size - fz->cs + deltas[fz_below(fz, ARRAY_SIZE(deltas))];
		break;
	case 10:
		k = fz_below(fz, 1U << fz_below(fz, 24));
		v = k * fz->cs + deltas[fz_below(fz, ARRAY_SIZE(deltas))];
		break;
	case 11:
		v = fz_below(fz, 256);
		break;
	default:
		v = fz_u64(fz);
		break;
	}
	return bits < 64 ? v & (BIT_ULL(bits) - 1) : v;
}

static void fz_put_be(void *p, u32 bytes, u64 v)
{
	switch (bytes) {
	case 1:
		*(u8 *)p = v;
		break;
	case 2:
		put_unaligned_be16(v, p);
		break;
	case 4:
		put_unaligned_be32(v, p);
		break;
	default:
		put_unaligned_be64(v, p);
		break;
	}
}

/* One generic mutation of @buf[0, @n). */
static void fz_mutate(struct fz *fz, u8 *buf, size_t n)
{
	static const u8 bytes[] = { 0, 1, 0x7f, 0x80, 0xff };
	size_t i, k;

	if (!n)
		return;
	i = fz_below(fz, n);
	switch (fz_below(fz, 6)) {
	case 0:
		buf[i] ^= BIT(fz_below(fz, 8));
		break;
	case 1:
		buf[i] = fz_u32(fz);
		break;
	case 2:
		buf[i] = bytes[fz_below(fz, ARRAY_SIZE(bytes))];
		break;
	case 3:
		if (n < 4)
			break;
		i = fz_one_in(fz, 2) ? round_down(i, 4) : i;
		i = min(i, n - 4);
		fz_put_be(buf + i, 4, fz_interesting(fz, 4));
		break;
	case 4:
		if (n < 8)
			break;
		i = fz_one_in(fz, 2) ? round_down(i, 8) : i;
		i = min(i, n - 8);
		fz_put_be(buf + i, 8, fz_interesting(fz, 8));
		break;
	default:
		k = fz_range(fz, 1, min_t(size_t, n - i, 64));
		memset(buf + i, fz_one_in(fz, 2) ? 0 : 0xff, k);
		break;
	}
}

/* A copy of @src[0, @len) in a buffer of exactly @len bytes. */
static void *fz_dup(const void *src, size_t len)
{
	return kmemdup(src, len, GFP_KERNEL);
}

/* --- Geometry ----------------------------------------------------------- */

/* A device size of at least one cluster, often on an edge. */
static u64 fz_dev_size(struct fz *fz, u64 cs)
{
	u64 v;

	switch (fz_below(fz, 9)) {
	case 0:
		v = cs;
		break;
	case 1:
		v = 2 * cs + (fz_one_in(fz, 2) ? 512 : 0);
		break;
	case 2:
		v = fz_range(fz, 2, 1U << 20) * cs;
		break;
	case 3:
		v = fz_range(fz, cs, 1ULL << 40);
		break;
	case 4:
		v = BIT_ULL(56) + (fz_one_in(fz, 2) ? 0 : cs);
		break;
	case 5:
		v = BIT_ULL(56) - fz_below(fz, 2) * cs;
		break;
	case 6:
		v = U64_MAX - fz_below(fz, 2) * (cs - 1);
		break;
	default:
		v = fz_u64(fz);
		break;
	}
	return max(v, cs);
}

/*
 * A geometry as qcow2_decode_header() leaves it, with cluster_bits up to
 * @max_cb; the header length is set by the callers that use it.
 */
static void fz_geometry(struct fz *fz, struct qcow2_geometry *g, u32 max_cb)
{
	u32 cb = fz_range(fz, QCOW2_MIN_CLUSTER_BITS, max_cb);

	memset(g, 0, sizeof(*g));
	g->version = 3;
	g->cluster_bits = cb;
	g->cluster_size = BIT_ULL(cb);
	g->l2_bits = cb - 3;
	g->refcount_order = fz_below(fz, QCOW2_MAX_REFCOUNT_ORDER + 1);
	g->header_length = QCOW2_HEADER_V3_LEN;
	g->dev_size = fz_dev_size(fz, g->cluster_size);
	fz->cs = g->cluster_size;
	fz->dev_size = g->dev_size;
}

/* Whole clusters of the device that a 56-bit offset field can name. */
static u64 fz_clusters(const struct qcow2_geometry *g)
{
	return min(g->dev_size >> g->cluster_bits, BIT_ULL(56 - g->cluster_bits));
}

/*
 * The offset of a whole cluster inside the device, cluster @min or later,
 * often the first or the last; 0 (none) if the device has no such cluster.
 */
static u64 fz_cluster(struct fz *fz, const struct qcow2_geometry *g, u64 min)
{
	u64 n = fz_clusters(g), k;

	if (n <= min)
		return 0;
	switch (fz_below(fz, 4)) {
	case 0:
		k = min;
		break;
	case 1:
		k = n - 1;
		break;
	default:
		k = fz_range(fz, min, n - 1);
		break;
	}
	return k << g->cluster_bits;
}

/* A table of @bytes at @off: cluster-aligned, not at 0, inside the device. */
static bool fz_table_fits(const struct qcow2_geometry *g, u64 off, u64 bytes)
{
	return off && !(off & (g->cluster_size - 1)) && off <= g->dev_size &&
	       bytes <= g->dev_size - off;
}

/* A version 3 header length: a multiple of 8 from 104 to the cluster or 1 KiB. */
static u32 fz_header_length(struct fz *fz, u64 cs)
{
	u32 max = min_t(u64, cs, SZ_1K);

	return QCOW2_HEADER_V3_LEN + 8 * fz_below(fz, (max - QCOW2_HEADER_V3_LEN) / 8 + 1);
}

static u64 fz_l1_needed(u64 size, u32 cb)
{
	return size ? ((size - 1) >> (2 * cb - 3)) + 1 : 0;
}

/* --- Header ------------------------------------------------------------- */

struct fz_field {
	u16 off;
	u16 size;
};

#define FZ_OFF(f)	offsetof(struct qcow2_header, f)
#define FZ_LEN(f)	sizeof_field(struct qcow2_header, f)

static const struct fz_field fz_header_fields[] = {
	{ FZ_OFF(magic), FZ_LEN(magic) },
	{ FZ_OFF(version), FZ_LEN(version) },
	{ FZ_OFF(backing_file_offset), FZ_LEN(backing_file_offset) },
	{ FZ_OFF(backing_file_size), FZ_LEN(backing_file_size) },
	{ FZ_OFF(cluster_bits), FZ_LEN(cluster_bits) },
	{ FZ_OFF(size), FZ_LEN(size) },
	{ FZ_OFF(crypt_method), FZ_LEN(crypt_method) },
	{ FZ_OFF(l1_size), FZ_LEN(l1_size) },
	{ FZ_OFF(l1_table_offset), FZ_LEN(l1_table_offset) },
	{ FZ_OFF(refcount_table_offset), FZ_LEN(refcount_table_offset) },
	{ FZ_OFF(refcount_table_clusters), FZ_LEN(refcount_table_clusters) },
	{ FZ_OFF(nb_snapshots), FZ_LEN(nb_snapshots) },
	{ FZ_OFF(snapshots_offset), FZ_LEN(snapshots_offset) },
	{ FZ_OFF(incompatible_features), FZ_LEN(incompatible_features) },
	{ FZ_OFF(compatible_features), FZ_LEN(compatible_features) },
	{ FZ_OFF(autoclear_features), FZ_LEN(autoclear_features) },
	{ FZ_OFF(refcount_order), FZ_LEN(refcount_order) },
	{ FZ_OFF(header_length), FZ_LEN(header_length) },
	{ FZ_OFF(compression_type), FZ_LEN(compression_type) },
};

/* The header fields, read from the raw bytes the way the format says. */
struct fz_hdr {
	u32 magic, version, cb, crypt, l1_size, rtc, nb, order, hl, ctype;
	u64 backing, size, l1_off, rt_off, sn_off, incompat, compat, autoclear;
};

static void fz_read_header(const u8 *buf, struct fz_hdr *r)
{
	const struct qcow2_header *h = (const void *)buf;

	r->magic = get_unaligned_be32(&h->magic);
	r->version = get_unaligned_be32(&h->version);
	r->backing = get_unaligned_be64(&h->backing_file_offset);
	r->cb = get_unaligned_be32(&h->cluster_bits);
	r->size = get_unaligned_be64(&h->size);
	r->crypt = get_unaligned_be32(&h->crypt_method);
	r->l1_size = get_unaligned_be32(&h->l1_size);
	r->l1_off = get_unaligned_be64(&h->l1_table_offset);
	r->rt_off = get_unaligned_be64(&h->refcount_table_offset);
	r->rtc = get_unaligned_be32(&h->refcount_table_clusters);
	r->nb = get_unaligned_be32(&h->nb_snapshots);
	r->sn_off = get_unaligned_be64(&h->snapshots_offset);
	r->incompat = get_unaligned_be64(&h->incompatible_features);
	r->compat = get_unaligned_be64(&h->compatible_features);
	r->autoclear = get_unaligned_be64(&h->autoclear_features);
	r->order = get_unaligned_be32(&h->refcount_order);
	r->hl = get_unaligned_be32(&h->header_length);
	r->ctype = r->hl >= QCOW2_HEADER_COMPRESSION_LEN ? h->compression_type : 0;
}

/*
 * A valid image's first bytes in @buf (FZ_SCRATCH bytes): random version,
 * cluster size, refcount width, header length, compression, virtual size,
 * L1, refcount and snapshot tables laid out one after the other, and a
 * device from exactly large enough to huge.  Random bytes elsewhere: a
 * version 2 decoder must not look at them.
 */
static void fz_make_header(struct fz *fz, u8 *buf, size_t *len, u64 *dev)
{
	struct qcow2_header *h = (struct qcow2_header *)buf;
	u32 version = fz_one_in(fz, 4) ? 2 : 3;
	u32 cb = fz_range(fz, QCOW2_MIN_CLUSTER_BITS, QCOW2_MAX_CLUSTER_BITS);
	u64 cs = BIT_ULL(cb), max_l1 = QCOW2_MAX_L1_BYTES / sizeof(u64);
	u32 l1_bits = 2 * cb - 3, hl = QCOW2_HEADER_V2_LEN, rtc, nb = 0;
	u64 size, needed, l1_size, c, l1_off, rt_off, sn_off, end;
	bool zstd = false;

	switch (fz_below(fz, 5)) {
	case 0:
		size = 0;
		break;
	case 1:
		size = round_down(fz_range(fz, 0, BIT_ULL(fz_below(fz, 48))), SECTOR_SIZE);
		break;
	case 2:
		size = fz_range(fz, 1, 1024) << l1_bits;
		break;
	case 3:
		size = (fz_range(fz, 0, 1024) << l1_bits) + SECTOR_SIZE;
		break;
	default:
		size = max_l1 << l1_bits;
		break;
	}
	size = min(size, max_l1 << l1_bits);
	needed = fz_l1_needed(size, cb);
	l1_size = needed;
	if (fz_one_in(fz, 3))
		l1_size += fz_range(fz, 0, min(16ULL, max_l1 - needed));

	rtc = fz_range(fz, 1, min_t(u64, QCOW2_MAX_REFTABLE_BYTES >> cb, 8));
	rt_off = cs;
	c = 1 + rtc;
	l1_off = l1_size || fz_one_in(fz, 2) ? c << cb : 0;
	c += DIV_ROUND_UP(l1_size * sizeof(u64), cs);
	if (fz_one_in(fz, 4))
		nb = fz_one_in(fz, 8) ? QCOW2_MAX_SNAPSHOTS : fz_range(fz, 1, 100);
	sn_off = nb || fz_one_in(fz, 2) ? c << cb : 0;
	c += DIV_ROUND_UP((u64)nb * sizeof(struct qcow2_snapshot_hdr), cs);

	end = max(rt_off + ((u64)rtc << cb), l1_off + l1_size * sizeof(u64));
	end = max(end, sn_off + (u64)nb * sizeof(struct qcow2_snapshot_hdr));
	switch (fz_below(fz, 5)) {
	case 0:
		*dev = end;
		break;
	case 1:
		*dev = c << cb;
		break;
	case 2:
		*dev = end + fz_range(fz, 0, cs);
		break;
	case 3:
		*dev = U64_MAX;
		break;
	default:
		*dev = fz_range(fz, end, BIT_ULL(fz_range(fz, 41, 63)));
		break;
	}
	*dev = max(*dev, end);

	if (version == 3) {
		switch (fz_below(fz, 3)) {
		case 0:
			hl = QCOW2_HEADER_V3_LEN;
			break;
		case 1:
			hl = QCOW2_HEADER_V3_LEN + 8;
			break;
		default:
			hl = fz_header_length(fz, cs);
			break;
		}
		zstd = hl >= QCOW2_HEADER_COMPRESSION_LEN && fz_one_in(fz, 4);
	}
	*len = hl + (fz_one_in(fz, 2) ? 0 : fz_below(fz, 256));
	if (fz_one_in(fz, 8))
		*len = max_t(size_t, *len, min_t(u64, cs, FZ_SCRATCH - 16));

	fz_bytes(fz, buf, *len + 16);
	put_unaligned_be32(QCOW2_MAGIC, &h->magic);
	put_unaligned_be32(version, &h->version);
	put_unaligned_be64(0, &h->backing_file_offset);
	put_unaligned_be32(cb, &h->cluster_bits);
	put_unaligned_be64(size, &h->size);
	put_unaligned_be32(QCOW2_CRYPT_NONE, &h->crypt_method);
	put_unaligned_be32(l1_size, &h->l1_size);
	put_unaligned_be64(l1_off, &h->l1_table_offset);
	put_unaligned_be64(rt_off, &h->refcount_table_offset);
	put_unaligned_be32(rtc, &h->refcount_table_clusters);
	put_unaligned_be32(nb, &h->nb_snapshots);
	put_unaligned_be64(sn_off, &h->snapshots_offset);
	if (version == 3) {
		put_unaligned_be64(zstd ? QCOW2_INCOMPAT_COMPRESSION : 0,
				   &h->incompatible_features);
		put_unaligned_be32(fz_below(fz, QCOW2_MAX_REFCOUNT_ORDER + 1),
				   &h->refcount_order);
		put_unaligned_be32(hl, &h->header_length);
		if (hl >= QCOW2_HEADER_COMPRESSION_LEN)
			h->compression_type = zstd ? QCOW2_COMPRESSION_ZSTD :
						     QCOW2_COMPRESSION_ZLIB;
	}
	fz->cs = cs;
	fz->dev_size = *dev;
}

/* Does the reason qcow2_decode_header() gave hold for this input? */
static bool fz_header_refusal_holds(const u8 *buf, size_t len, u64 dev,
				    enum qcow2_err err)
{
	struct qcow2_geometry g = { .dev_size = dev };
	bool v3;
	struct fz_hdr r;

	if (err == QCOW2_ERR_SHORT)
		return len < QCOW2_HEADER_V2_LEN ||
		       (len < QCOW2_HEADER_V3_LEN &&
			get_unaligned_be32(buf + FZ_OFF(version)) == 3);
	if (len < QCOW2_HEADER_V2_LEN)
		return false;
	fz_read_header(buf, &r);
	v3 = r.version == 3;
	if (r.cb >= QCOW2_MIN_CLUSTER_BITS && r.cb <= QCOW2_MAX_CLUSTER_BITS) {
		g.cluster_bits = r.cb;
		g.cluster_size = BIT_ULL(r.cb);
	}
	switch (err) {
	case QCOW2_ERR_MAGIC:
		return r.magic != QCOW2_MAGIC;
	case QCOW2_ERR_VERSION:
		return r.version != 2 && r.version != 3;
	case QCOW2_ERR_CLUSTER_BITS:
		return !g.cluster_size;
	case QCOW2_ERR_DEV_TOO_SMALL:
		return dev < g.cluster_size;
	case QCOW2_ERR_HEADER_LENGTH:
		return v3 && (r.hl < QCOW2_HEADER_V3_LEN || r.hl % 8 ||
			      r.hl > g.cluster_size || r.hl > len);
	case QCOW2_ERR_REFCOUNT_ORDER:
		return v3 && r.order > QCOW2_MAX_REFCOUNT_ORDER;
	case QCOW2_ERR_UNKNOWN_INCOMPAT:
		return v3 && (r.incompat & ~FZ_KNOWN_INCOMPAT);
	case QCOW2_ERR_CORRUPT:
		return v3 && (r.incompat & QCOW2_INCOMPAT_CORRUPT);
	case QCOW2_ERR_DIRTY:
		return v3 && (r.incompat & QCOW2_INCOMPAT_DIRTY);
	case QCOW2_ERR_DATA_FILE:
		return v3 && (r.incompat & QCOW2_INCOMPAT_DATA_FILE);
	case QCOW2_ERR_EXTL2:
		return v3 && (r.incompat & QCOW2_INCOMPAT_EXTL2);
	case QCOW2_ERR_COMPRESSION_TYPE:
		return v3 && (r.ctype > QCOW2_COMPRESSION_ZSTD ||
			      (r.ctype == QCOW2_COMPRESSION_ZSTD) !=
			      !!(r.incompat & QCOW2_INCOMPAT_COMPRESSION));
	case QCOW2_ERR_ENCRYPTED:
		return r.crypt != QCOW2_CRYPT_NONE;
	case QCOW2_ERR_BACKING_FILE:
		return r.backing;
	case QCOW2_ERR_SIZE:
		return r.size % SECTOR_SIZE;
	case QCOW2_ERR_L1_TOO_LARGE:
		return (u64)r.l1_size * sizeof(u64) > QCOW2_MAX_L1_BYTES;
	case QCOW2_ERR_L1_TOO_SMALL:
		return g.cluster_size && r.l1_size < fz_l1_needed(r.size, r.cb);
	case QCOW2_ERR_L1_OFFSET:
		return g.cluster_size && r.l1_size &&
		       !fz_table_fits(&g, r.l1_off, (u64)r.l1_size * sizeof(u64));
	case QCOW2_ERR_REFTABLE_SIZE:
		return g.cluster_size &&
		       (!r.rtc || ((u64)r.rtc << r.cb) > QCOW2_MAX_REFTABLE_BYTES);
	case QCOW2_ERR_REFTABLE_OFFSET:
		return g.cluster_size && !fz_table_fits(&g, r.rt_off, (u64)r.rtc << r.cb);
	case QCOW2_ERR_SNAPSHOTS_COUNT:
		return r.nb > QCOW2_MAX_SNAPSHOTS;
	case QCOW2_ERR_SNAPSHOTS_OFFSET:
		return g.cluster_size && r.nb &&
		       !fz_table_fits(&g, r.sn_off, (u64)r.nb * sizeof(struct qcow2_snapshot_hdr));
	default:
		return false;	/* not a reason the header decoder may give */
	}
}

/* Everything qcow2_decode_header() promises when it accepts. */
static void fz_header_accepted(struct fz *fz, const u8 *buf, size_t len, u64 dev,
			       const struct qcow2_geometry *g,
			       const struct qcow2_refusal *why)
{
	struct fz_hdr r;
	u64 l1_bytes, rt_bytes;

	FZ_EXPECT(fz, why->err == QCOW2_OK, "err %d", why->err);
	FZ_EXPECT(fz, len >= QCOW2_HEADER_V2_LEN, "len %zu", len);
	if (len < QCOW2_HEADER_V2_LEN)
		return;
	fz_read_header(buf, &r);
	FZ_EXPECT(fz, r.magic == QCOW2_MAGIC, "magic %#x", r.magic);
	FZ_EXPECT(fz, g->version == r.version, "%u, on disk %u", g->version, r.version);
	FZ_EXPECT(fz, g->version == 2 || g->version == 3, "version %u", g->version);
	FZ_EXPECT(fz, g->cluster_bits == r.cb, "%u, on disk %u", g->cluster_bits, r.cb);
	FZ_EXPECT(fz, g->cluster_bits >= QCOW2_MIN_CLUSTER_BITS &&
		  g->cluster_bits <= QCOW2_MAX_CLUSTER_BITS, "cluster_bits %u", g->cluster_bits);
	if (g->cluster_bits < QCOW2_MIN_CLUSTER_BITS || g->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return;
	FZ_EXPECT(fz, g->cluster_size == BIT_ULL(g->cluster_bits), "%llu", g->cluster_size);
	FZ_EXPECT(fz, g->l2_bits == g->cluster_bits - 3, "l2_bits %u", g->l2_bits);
	FZ_EXPECT(fz, g->dev_size == dev, "%llu, given %llu", g->dev_size, dev);
	FZ_EXPECT(fz, dev >= g->cluster_size, "dev_size %llu", dev);

	if (g->version == 2) {
		FZ_EXPECT(fz, g->header_length == QCOW2_HEADER_V2_LEN, "%u", g->header_length);
		FZ_EXPECT(fz, g->refcount_order == QCOW2_V2_REFCOUNT_ORDER, "%u",
			  g->refcount_order);
		FZ_EXPECT(fz, !g->incompatible_features && !g->compatible_features &&
			  !g->autoclear_features, "%#llx %#llx %#llx", g->incompatible_features,
			  g->compatible_features, g->autoclear_features);
		FZ_EXPECT(fz, g->compression_type == QCOW2_COMPRESSION_ZLIB, "%u",
			  g->compression_type);
	} else {
		FZ_EXPECT(fz, len >= QCOW2_HEADER_V3_LEN, "len %zu", len);
		FZ_EXPECT(fz, g->header_length == r.hl, "%u, on disk %u", g->header_length, r.hl);
		FZ_EXPECT(fz, g->refcount_order == r.order, "%u, on disk %u",
			  g->refcount_order, r.order);
		FZ_EXPECT(fz, g->incompatible_features == r.incompat &&
			  g->compatible_features == r.compat &&
			  g->autoclear_features == r.autoclear, "%#llx %#llx %#llx",
			  g->incompatible_features, g->compatible_features,
			  g->autoclear_features);
		FZ_EXPECT(fz, !(r.incompat & ~QCOW2_INCOMPAT_COMPRESSION), "incompat %#llx",
			  r.incompat);
		FZ_EXPECT(fz, g->compression_type == r.ctype, "%u, on disk %u",
			  g->compression_type, r.ctype);
		FZ_EXPECT(fz, (g->compression_type == QCOW2_COMPRESSION_ZSTD) ==
			  !!(r.incompat & QCOW2_INCOMPAT_COMPRESSION), "type %u, incompat %#llx",
			  g->compression_type, r.incompat);
	}
	FZ_EXPECT(fz, g->header_length >= QCOW2_HEADER_V2_LEN &&
		  g->header_length % 8 == 0 && g->header_length <= g->cluster_size &&
		  g->header_length <= len, "header_length %u, len %zu", g->header_length, len);
	FZ_EXPECT(fz, g->refcount_order <= QCOW2_MAX_REFCOUNT_ORDER, "%u", g->refcount_order);
	FZ_EXPECT(fz, g->compression_type <= QCOW2_COMPRESSION_ZSTD, "%u", g->compression_type);
	FZ_EXPECT(fz, r.crypt == QCOW2_CRYPT_NONE, "crypt_method %u", r.crypt);
	FZ_EXPECT(fz, !r.backing, "backing_file_offset %llu", r.backing);

	FZ_EXPECT(fz, g->size == r.size, "%llu, on disk %llu", g->size, r.size);
	FZ_EXPECT(fz, g->size % SECTOR_SIZE == 0, "size %llu", g->size);
	FZ_EXPECT(fz, qcow2_l1_entries_needed(g->size, g->cluster_bits) ==
		  fz_l1_needed(g->size, g->cluster_bits), "size %llu", g->size);

	l1_bytes = (u64)g->l1_size * sizeof(u64);
	FZ_EXPECT(fz, g->l1_size == r.l1_size, "%u, on disk %u", g->l1_size, r.l1_size);
	FZ_EXPECT(fz, g->l1_table_offset == r.l1_off, "%llu", g->l1_table_offset);
	FZ_EXPECT(fz, l1_bytes <= QCOW2_MAX_L1_BYTES, "l1_size %u", g->l1_size);
	FZ_EXPECT(fz, g->l1_size >= fz_l1_needed(g->size, g->cluster_bits),
		  "l1_size %u, size %llu", g->l1_size, g->size);
	FZ_EXPECT(fz, !g->l1_size || fz_table_fits(g, g->l1_table_offset, l1_bytes),
		  "L1 at %llu, %llu bytes, dev_size %llu", g->l1_table_offset, l1_bytes, dev);

	rt_bytes = (u64)g->refcount_table_clusters << g->cluster_bits;
	FZ_EXPECT(fz, g->refcount_table_clusters == r.rtc && g->refcount_table_offset == r.rt_off,
		  "%u at %llu", g->refcount_table_clusters, g->refcount_table_offset);
	FZ_EXPECT(fz, g->refcount_table_clusters && rt_bytes <= QCOW2_MAX_REFTABLE_BYTES,
		  "refcount_table_clusters %u", g->refcount_table_clusters);
	FZ_EXPECT(fz, fz_table_fits(g, g->refcount_table_offset, rt_bytes),
		  "refcount table at %llu, %llu bytes, dev_size %llu",
		  g->refcount_table_offset, rt_bytes, dev);

	FZ_EXPECT(fz, g->nb_snapshots == r.nb && g->snapshots_offset == r.sn_off,
		  "%u at %llu", g->nb_snapshots, g->snapshots_offset);
	FZ_EXPECT(fz, g->nb_snapshots <= QCOW2_MAX_SNAPSHOTS, "%u", g->nb_snapshots);
	FZ_EXPECT(fz, !g->nb_snapshots ||
		  fz_table_fits(g, g->snapshots_offset,
				(u64)g->nb_snapshots * sizeof(struct qcow2_snapshot_hdr)),
		  "%u snapshots at %llu, dev_size %llu", g->nb_snapshots,
		  g->snapshots_offset, dev);
}

/*
 * A documented limit of header field @f, give or take one: where an
 * off-by-one in a check shows.  0 for the fields without one.
 */
static u64 fz_header_limit(struct fz *fz, const struct fz_field *f)
{
	static const s64 deltas[] = { -1, 0, 1 };
	u32 cb = ilog2(fz->cs);
	const u8 *h = fz->a;
	u64 v;

	switch (f->off) {
	case FZ_OFF(version):
		v = fz_range(fz, 2, 3);
		break;
	case FZ_OFF(cluster_bits):
		v = fz_one_in(fz, 2) ? QCOW2_MIN_CLUSTER_BITS : QCOW2_MAX_CLUSTER_BITS;
		break;
	case FZ_OFF(refcount_order):
		v = QCOW2_MAX_REFCOUNT_ORDER;
		break;
	case FZ_OFF(header_length):
		v = fz_one_in(fz, 2) ? QCOW2_HEADER_V3_LEN : fz->cs;
		v += fz_one_in(fz, 2) ? 0 : fz_range(fz, 0, 1) * 8;
		break;
	case FZ_OFF(compression_type):
		v = QCOW2_COMPRESSION_ZSTD;
		break;
	case FZ_OFF(incompatible_features):
		return BIT_ULL(fz_below(fz, 6));
	case FZ_OFF(l1_size):
		v = fz_one_in(fz, 2) ? QCOW2_MAX_L1_BYTES / sizeof(u64) :
		    fz_l1_needed(get_unaligned_be64(h + FZ_OFF(size)), cb);
		break;
	case FZ_OFF(size):
		return ((u64)get_unaligned_be32(h + FZ_OFF(l1_size)) << (2 * cb - 3)) +
		       SECTOR_SIZE * deltas[fz_below(fz, ARRAY_SIZE(deltas))];
	case FZ_OFF(refcount_table_clusters):
		v = fz_one_in(fz, 2) ? 1 : QCOW2_MAX_REFTABLE_BYTES / fz->cs;
		break;
	case FZ_OFF(nb_snapshots):
		v = QCOW2_MAX_SNAPSHOTS;
		break;
	default:
		return 0;
	}
	return v + deltas[fz_below(fz, ARRAY_SIZE(deltas))];
}

/* Decode @fz->a[0, @len) from an exact-size copy and check the outcome. */
static int fz_decode_header(struct fz *fz, size_t len, u64 dev, struct qcow2_geometry *g)
{
	struct qcow2_refusal why;
	u8 *buf = fz_dup(fz->a, len);
	u64 sectors;
	int r;

	if (!buf) {
		FZ_EXPECT(fz, buf, "no memory for %zu bytes", len);
		return -ENOMEM;
	}
	r = qcow2_decode_header(buf, len, dev, g, &why);
	if (!r) {
		fz_header_accepted(fz, fz->a, len, dev, g, &why);
		/* The dm table length must be exactly the virtual size. */
		sectors = g->size >> SECTOR_SHIFT;
		FZ_EXPECT(fz, !qcow2_check_target_len(g, sectors, &why), "%llu sectors", sectors);
		sectors ^= BIT_ULL(fz_below(fz, 64));
		FZ_EXPECT(fz, qcow2_check_target_len(g, sectors, &why) == -EINVAL &&
			  why.err == QCOW2_ERR_TABLE_LENGTH, "%llu sectors accepted for size %llu",
			  sectors, g->size);
		/* Whatever follows the header is walked without overrunning it. */
		r = qcow2_check_extensions(buf, len, g, &why);
		FZ_EXPECT(fz, !r || (r == -EINVAL && why.err == QCOW2_ERR_EXTENSION),
			  "%d, err %d", r, why.err);
		r = 0;
	} else {
		FZ_EXPECT(fz, r == -EINVAL, "returned %d", r);
		FZ_EXPECT(fz, why.err > QCOW2_OK && why.err < QCOW2_ERR_MAX, "err %d", why.err);
		FZ_EXPECT(fz, strcmp(qcow2_err_str(why.err), "Unknown error"), "err %d", why.err);
		FZ_EXPECT(fz, fz_header_refusal_holds(fz->a, len, dev, why.err),
			  "refused for \"%s\" (value %llu), len %zu, dev_size %llu",
			  qcow2_err_str(why.err), why.value, len, dev);
		if (why.err > QCOW2_OK && why.err < QCOW2_ERR_MAX)
			fz->reasons |= BIT_ULL(why.err);
	}
	kfree(buf);
	return r;
}

static void fz_header(struct fz *fz)
{
	struct qcow2_geometry g;
	const struct fz_field *f;
	size_t len, max_len;
	u32 i, n;
	u64 dev;
	int r;

	fz_make_header(fz, fz->a, &len, &dev);
	/* The seed itself is a valid image. */
	r = fz_decode_header(fz, len, dev, &g);
	FZ_EXPECT(fz, !r, "valid header refused");
	max_len = len + 16;

	if (fz_one_in(fz, 32)) {
		/* Noise behind a magic and a version. */
		fz_bytes(fz, fz->a + 8, len + 8);
	}
	n = fz_one_in(fz, 8) ? fz_range(fz, 4, 12) : fz_range(fz, 1, 3);
	for (i = 0; i < n; i++) {
		switch (fz_below(fz, 10)) {
		case 0 ... 1:
			f = &fz_header_fields[fz_below(fz, ARRAY_SIZE(fz_header_fields))];
			fz_put_be(fz->a + f->off, f->size, fz_interesting(fz, f->size));
			break;
		case 2 ... 3:
			f = &fz_header_fields[fz_below(fz, ARRAY_SIZE(fz_header_fields))];
			fz_put_be(fz->a + f->off, f->size, fz_header_limit(fz, f));
			break;
		case 4 ... 5:
			fz_mutate(fz, fz->a, min_t(size_t, len, sizeof(struct qcow2_header)));
			break;
		case 6:
			switch (fz_below(fz, 4)) {
			case 0:
				len = fz_below(fz, len + 1);
				break;
			case 1:
				len = fz_one_in(fz, 2) ? QCOW2_HEADER_V2_LEN : QCOW2_HEADER_V3_LEN;
				len = min(len - fz_below(fz, 2), max_len);
				break;
			default:
				len = get_unaligned_be32(fz->a + FZ_OFF(header_length));
				len = min(len + fz_below(fz, 3) - 1, max_len);
				break;
			}
			break;
		case 7 ... 8:
			dev = fz_one_in(fz, 2) ? fz_interesting(fz, 8) :
						 dev + (s64)fz_range(fz, 0, 2 * fz->cs) - fz->cs;
			break;
		default:
			put_unaligned_be32(fz_range(fz, QCOW2_MIN_CLUSTER_BITS,
						    QCOW2_MAX_CLUSTER_BITS),
					   fz->a + FZ_OFF(cluster_bits));
			break;
		}
	}
	r = fz_decode_header(fz, len, dev, &g);
	if (r == -ENOMEM)
		return;
	if (!r)
		fz->accepted++;
	else
		fz->refused++;
}

/* --- Header extension area ---------------------------------------------- */

/* The first @len bytes of @buf's extension area, as the format says. */
static void fz_walk(const u8 *buf, size_t len, const struct qcow2_geometry *g,
		    struct fz_walk *w)
{
	u64 end = min_t(u64, len, g->cluster_size), off = g->header_length;
	u32 type, elen;

	w->n = 0;
	while (off < end) {
		w->at = off;
		if (end - off < sizeof(struct qcow2_ext_hdr)) {
			w->how = FZ_WALK_BAD;
			return;
		}
		type = get_unaligned_be32(buf + off);
		elen = get_unaligned_be32(buf + off + 4);
		if (type == QCOW2_EXT_END) {
			w->how = FZ_WALK_END;
			return;
		}
		if (elen > end - off - sizeof(struct qcow2_ext_hdr)) {
			w->how = FZ_WALK_BAD;
			return;
		}
		w->e[w->n].off = off;
		w->e[w->n].type = type;
		w->e[w->n].len = elen;
		w->n++;
		off += sizeof(struct qcow2_ext_hdr) + ALIGN((u64)elen, 8);
	}
	w->at = off;
	w->how = FZ_WALK_RUNOFF;
}

static const u32 fz_ext_types[] = {
	QCOW2_EXT_FEATURE_TABLE, QCOW2_EXT_BACKING_FORMAT, QCOW2_EXT_BITMAPS,
	QCOW2_EXT_DATA_FILE, QCOW2_EXT_DEDUP_TABLE, QCOW2_EXT_CRYPTO,
};

/* A valid dedup table extension for @g, or false if @g has no room for a root. */
static bool fz_make_qdt_info(struct fz *fz, const struct qcow2_geometry *g,
			     struct qdt_info *in)
{
	static const char * const names[] = { "sha256", "blake2b-256", "xxhash64" };
	u32 i, n;

	memset(in, 0, sizeof(*in));
	in->root = fz_cluster(fz, g, 1);
	if (!in->root)
		return false;
	in->flags = fz_u32(fz) & QDT_FLAGS_KNOWN;
	in->entries = fz_one_in(fz, 2) ? fz_u64(fz) : fz_interesting(fz, 8);
	in->generation = fz_one_in(fz, 2) ? fz_u64(fz) : fz_interesting(fz, 8);
	in->key_len = fz_range(fz, 1, QDT_SLOT_SIZE);
	if (fz_one_in(fz, 2)) {
		strscpy(in->hash, names[fz_below(fz, ARRAY_SIZE(names))], sizeof(in->hash));
	} else {
		n = fz_range(fz, 1, QDT_HASH_NAME_LEN - 1);
		for (i = 0; i < n; i++)
			in->hash[i] = fz_range(fz, 1, 255);
	}
	return true;
}

/*
 * An extension area in @buf after @g->header_length random header bytes:
 * up to 6 extensions of known and unknown types, padded with zeros, then
 * (usually) the end marker.  Return: the bytes used.
 */
static size_t fz_make_area(struct fz *fz, u8 *buf, const struct qcow2_geometry *g)
{
	size_t cap = min_t(u64, FZ_SCRATCH, g->cluster_size), off = g->header_length;
	u32 i, n = fz_below(fz, 7), type, elen;
	struct qcow2_feature_name *f;
	struct qdt_info info;

	fz_bytes(fz, buf, off);
	fz->nr_ext = 0;
	for (i = 0; i < n; i++) {
		type = fz_one_in(fz, 3) ? fz_u32(fz) | 1 :
					  fz_ext_types[fz_below(fz, ARRAY_SIZE(fz_ext_types))];
		if (type == QCOW2_EXT_CRYPTO && !fz_one_in(fz, 4))
			type = QCOW2_EXT_BITMAPS;
		elen = fz_one_in(fz, 4) ? fz_below(fz, 400) : fz_below(fz, 40);
		if (type == QCOW2_EXT_FEATURE_TABLE)
			elen = sizeof(*f) * fz_below(fz, 5);
		else if (type == QCOW2_EXT_DEDUP_TABLE && fz_make_qdt_info(fz, g, &info))
			elen = sizeof(struct qdt_ext);
		if (off + 2 * sizeof(struct qcow2_ext_hdr) + ALIGN(elen, 8) > cap)
			break;
		put_unaligned_be32(type, buf + off);
		put_unaligned_be32(elen, buf + off + 4);
		fz_bytes(fz, buf + off + 8, elen);
		memset(buf + off + 8 + elen, 0, ALIGN(elen, 8) - elen);
		if (type == QCOW2_EXT_FEATURE_TABLE) {
			for (f = (void *)(buf + off + 8); (u8 *)f < buf + off + 8 + elen; f++) {
				f->type = fz_below(fz, 3);
				f->bit = fz_one_in(fz, 2) ? QCOW2_AUTOCLEAR_DEDUP_TABLE_BIT :
							    fz_below(fz, 64);
			}
		} else if (elen == sizeof(struct qdt_ext) && type == QCOW2_EXT_DEDUP_TABLE) {
			qdt_encode_ext(&info, (struct qdt_ext *)(buf + off + 8));
		}
		fz->ext_off[fz->nr_ext++] = off;
		off += 8 + ALIGN(elen, 8);
	}
	fz->end_off = 0;
	if (!fz_one_in(fz, 10) && off + sizeof(struct qcow2_ext_hdr) <= cap) {
		memset(buf + off, 0, sizeof(struct qcow2_ext_hdr));
		fz->end_off = off;
		off += sizeof(struct qcow2_ext_hdr);
	}
	return off;
}

/*
 * A geometry and an area to walk: header_length 72 (version 2) or 104 to
 * 1024, then the area; the buffer ends at the area, the cluster or
 * somewhere random, never before the header (qcow2_decode_header() checks).
 */
static size_t fz_area_input(struct fz *fz, struct qcow2_geometry *g, u32 mutations)
{
	u32 i, hl, type_or_len;
	size_t used, len, end, off;

	fz_geometry(fz, g, QCOW2_MAX_CLUSTER_BITS);
	if (fz_one_in(fz, 5)) {
		g->version = 2;
		hl = QCOW2_HEADER_V2_LEN;
		g->refcount_order = QCOW2_V2_REFCOUNT_ORDER;
	} else {
		hl = fz_header_length(fz, g->cluster_size);
	}
	g->header_length = hl;
	used = fz_make_area(fz, fz->a, g);
	switch (fz_below(fz, 4)) {
	case 0:
		len = used;
		break;
	case 1:
		len = min_t(u64, g->cluster_size, FZ_SCRATCH);
		break;
	case 2:
		len = fz_range(fz, hl, FZ_SCRATCH);
		break;
	default:
		len = max_t(size_t, hl, used - fz_below(fz, 16));
		break;
	}
	if (len > used) {
		if (fz_one_in(fz, 2))
			memset(fz->a + used, 0, len - used);
		else
			fz_bytes(fz, fz->a + used, len - used);
	}
	end = min_t(u64, len, g->cluster_size);

	for (i = 0; i < mutations; i++) {
		off = fz->nr_ext ? fz->ext_off[fz_below(fz, fz->nr_ext)] : hl;
		type_or_len = fz_below(fz, 2) * 4;
		switch (fz_below(fz, 6)) {
		case 0:
			if (off + 8 <= len)
				fz_put_be(fz->a + off + type_or_len, 4, fz_interesting(fz, 4));
			break;
		case 1:
			/* An extension that reaches the end of the area, or nearly. */
			if (off + 8 + 8 <= end) {
				put_unaligned_be32(end - off - 8 - fz_below(fz, 9),
						   fz->a + off + 4);
				if (fz_one_in(fz, 2))
					put_unaligned_be32(fz_u32(fz) | 1, fz->a + off);
			}
			break;
		case 2:
			/* The end marker moved up, or replaced by an extension. */
			if (fz_one_in(fz, 2) || !fz->end_off) {
				if (off + 8 <= len)
					put_unaligned_be32(QCOW2_EXT_END, fz->a + off);
			} else if (fz->end_off + 8 <= len) {
				put_unaligned_be32(fz_u32(fz) | 1, fz->a + fz->end_off);
				put_unaligned_be32(fz_one_in(fz, 2) ? fz_below(fz, 16) :
						   end - fz->end_off - 8 - fz_below(fz, 9),
						   fz->a + fz->end_off + 4);
			}
			break;
		case 3:
			len = fz_range(fz, hl, len);
			break;
		default:
			fz_mutate(fz, fz->a + hl, len - hl);
			break;
		}
	}
	return len;
}

static void fz_extensions(struct fz *fz)
{
	struct fz_walk *w = &fz->w1;
	struct qcow2_geometry g;
	struct qcow2_refusal why;
	u32 i, type, doff = 0, dlen = 0;
	int r, expect = 0;
	u64 expect_at = 0;
	size_t len, end;
	u8 *buf;

	len = fz_area_input(fz, &g, fz_below(fz, 4));
	end = min_t(u64, len, g.cluster_size);
	buf = fz_dup(fz->a, len);
	if (!buf) {
		FZ_EXPECT(fz, buf, "no memory for %zu bytes", len);
		return;
	}
	fz_walk(fz->a, len, &g, w);

	/* A crypto header is refused where it is; a bad length where it is. */
	for (i = 0; i < w->n && !expect; i++) {
		if (w->e[i].type == QCOW2_EXT_CRYPTO) {
			expect = -EINVAL;
			expect_at = w->e[i].off;
		}
	}
	if (!expect && w->how == FZ_WALK_BAD) {
		expect = -EINVAL;
		expect_at = w->at;
	}
	why.err = QCOW2_OK;
	r = qcow2_check_extensions(buf, len, &g, &why);
	FZ_EXPECT(fz, r == expect, "returned %d, expected %d (len %zu, header_length %u)",
		  r, expect, len, g.header_length);
	if (r) {
		FZ_EXPECT(fz, why.err == QCOW2_ERR_EXTENSION, "err %d", why.err);
		FZ_EXPECT(fz, why.value == expect_at, "at %llu, expected %llu", why.value,
			  expect_at);
		FZ_EXPECT(fz, why.value >= g.header_length && why.value < end,
			  "at %llu, header_length %u, end %zu", why.value, g.header_length, end);
		fz->refused++;
	} else {
		fz->accepted++;
	}

	/* Look for a type present, the dedup table or a random one. */
	switch (fz_below(fz, 3)) {
	case 0:
		type = w->n ? w->e[fz_below(fz, w->n)].type : QCOW2_EXT_DEDUP_TABLE;
		break;
	case 1:
		type = QCOW2_EXT_DEDUP_TABLE;
		break;
	default:
		type = fz_u32(fz);
		break;
	}
	expect = w->how == FZ_WALK_END ? -ENOENT : -EINVAL;
	for (i = 0; i < w->n; i++) {
		if (w->e[i].type == type) {
			expect = 0;
			break;
		}
	}
	r = qcow2_find_extension(buf, len, &g, type, &doff, &dlen);
	FZ_EXPECT(fz, r == expect, "type %#x: returned %d, expected %d", type, r, expect);
	if (!r && !expect) {
		FZ_EXPECT(fz, doff == w->e[i].off + 8 && dlen == w->e[i].len,
			  "type %#x: data at %u, %u bytes; expected %u, %u", type, doff, dlen,
			  w->e[i].off + 8, w->e[i].len);
		FZ_EXPECT(fz, (u64)doff + dlen <= end, "data at %u, %u bytes, area %zu",
			  doff, dlen, end);
	}
	kfree(buf);
}

/* Does the feature table at @p (@len bytes) name @f's bit? */
static bool fz_named(const u8 *p, u32 len, const struct qcow2_feature_name *f)
{
	const struct qcow2_feature_name *n = (const void *)p;
	u32 i;

	for (i = 0; i < len / sizeof(*n); i++)
		if (n[i].type == f->type && n[i].bit == f->bit)
			return true;
	return false;
}

/* The extension @oe of @old: at @ne of @out, with the same bytes? */
static bool fz_same_ext(const u8 *old, const struct fz_ext *oe, const u8 *out,
			const struct fz_ext *ne)
{
	return oe->type == ne->type && oe->len == ne->len &&
	       !memcmp(old + oe->off + 8, out + ne->off + 8, oe->len);
}

/* The new extension @type with @data at @ne of @out, zero padding? */
static bool fz_new_ext(u32 type, const void *data, u32 dlen, const u8 *out,
		       const struct fz_ext *ne)
{
	return ne->type == type && ne->len == dlen &&
	       !memcmp(out + ne->off + 8, data, dlen) &&
	       !memchr_inv(out + ne->off + 8 + dlen, 0, ALIGN(dlen, 8) - dlen);
}

/*
 * The rewritten area @out, @new_end bytes, against the old one: the header
 * bytes kept, extensions in order with their bytes, @type replaced or
 * removed, @feature named in the feature table, the new extension last.
 */
static void fz_check_rewrite(struct fz *fz, const struct qcow2_geometry *g, const u8 *out,
			     size_t new_end, u32 type, const void *data, u32 dlen,
			     const struct qcow2_feature_name *feat)
{
	struct fz_walk *ow = &fz->w1, *nw = &fz->w2;
	bool named = false, done = false, ok = true;
	const struct fz_ext *oe, *ne;
	u32 i, j = 0, flen;

	FZ_EXPECT(fz, !memcmp(out, fz->a, g->header_length), "header bytes changed");
	fz_walk(out, new_end, g, nw);
	FZ_EXPECT(fz, nw->how == FZ_WALK_END && nw->at + 8 == new_end,
		  "new area does not end with its end marker (%d at %u, new_end %zu)",
		  nw->how, nw->at, new_end);
	for (i = 0; i < ow->n && ok; i++) {
		oe = &ow->e[i];
		ne = &nw->e[j];
		if (oe->type == type) {
			if (data) {
				ok = j < nw->n && fz_new_ext(type, data, dlen, out, ne);
				j++;
			}
			done = true;
		} else if (oe->type == QCOW2_EXT_FEATURE_TABLE && feat &&
			   !fz_named(fz->a + oe->off + 8, oe->len, feat)) {
			flen = rounddown(oe->len, sizeof(*feat));
			ok = j < nw->n && ne->type == oe->type && ne->len == flen + sizeof(*feat) &&
			     !memcmp(fz->a + oe->off + 8, out + ne->off + 8, flen) &&
			     !memcmp(out + ne->off + 8 + flen, feat, sizeof(*feat));
			named = true;
			j++;
		} else {
			named |= oe->type == QCOW2_EXT_FEATURE_TABLE;
			ok = j < nw->n && fz_same_ext(fz->a, oe, out, ne);
			j++;
		}
		FZ_EXPECT(fz, ok, "old extension %u (type %#x at %u) not kept as expected",
			  i, oe->type, oe->off);
	}
	if (ok && feat && !named) {
		ne = &nw->e[j++];
		ok = j <= nw->n && ne->type == QCOW2_EXT_FEATURE_TABLE &&
		     ne->len == sizeof(*feat) && !memcmp(out + ne->off + 8, feat, sizeof(*feat));
		FZ_EXPECT(fz, ok, "no feature table added");
	}
	if (ok && data && !done) {
		ne = &nw->e[j++];
		ok = j <= nw->n && fz_new_ext(type, data, dlen, out, ne);
		FZ_EXPECT(fz, ok, "new extension %#x not appended", type);
	}
	FZ_EXPECT(fz, !ok || j == nw->n, "%u extensions, expected %u", nw->n, j);
}

static void fz_rewrite(struct fz *fz)
{
	static const struct qcow2_feature_name dedup_feature = {
		.type = QCOW2_FEATURE_TYPE_AUTOCLEAR,
		.bit = QCOW2_AUTOCLEAR_DEDUP_TABLE_BIT,
		.name = QCOW2_AUTOCLEAR_DEDUP_TABLE_NAME,
	};
	const struct qcow2_feature_name *feat = NULL;
	struct qcow2_feature_name rnd_feature;
	struct fz_walk *w = &fz->w1;
	struct qcow2_geometry g;
	struct qdt_info info;
	u32 i, type, dlen = 0, flen, doff, found_len;
	size_t len, end, pos, new_end = 0;
	bool named = false, done = false;
	u8 *old, *out, *data = NULL;
	int r, expect;

	len = fz_area_input(fz, &g, fz_one_in(fz, 2) ? 0 : fz_range(fz, 1, 2));
	end = min_t(u64, len, g.cluster_size);
	fz_walk(fz->a, len, &g, w);

	/* The extension to set: the dedup table, one present, or another. */
	type = QCOW2_EXT_DEDUP_TABLE;
	if (fz_one_in(fz, 3))
		type = w->n && fz_one_in(fz, 2) ? w->e[fz_below(fz, w->n)].type : fz_u32(fz);
	if (type == QCOW2_EXT_END || type == QCOW2_EXT_FEATURE_TABLE)
		type = QCOW2_EXT_DEDUP_TABLE;
	switch (fz_below(fz, 5)) {
	case 0:
		break;	/* remove it */
	case 1 ... 2:
		if (fz_make_qdt_info(fz, &g, &info)) {
			dlen = sizeof(struct qdt_ext);
			data = kmalloc(dlen, GFP_KERNEL);
			if (data)
				qdt_encode_ext(&info, (struct qdt_ext *)data);
			break;
		}
		fallthrough;
	default:
		dlen = fz_one_in(fz, 4) ? fz_below(fz, 600) : fz_below(fz, 80);
		data = kmalloc(dlen, GFP_KERNEL);
		if (data)
			fz_bytes(fz, data, dlen);
		break;
	}
	if (fz_one_in(fz, 4)) {
		rnd_feature.type = fz_below(fz, 3);
		rnd_feature.bit = fz_below(fz, 64);
		fz_bytes(fz, rnd_feature.name, sizeof(rnd_feature.name));
		feat = &rnd_feature;
	} else if (!fz_one_in(fz, 4)) {
		feat = &dedup_feature;
	}

	old = fz_dup(fz->a, len);
	out = kmalloc(len, GFP_KERNEL);
	if (!old || !out || (dlen && !data)) {
		FZ_EXPECT(fz, false, "no memory for %zu bytes", len);
		goto out;
	}

	/* The size of the result, if the old area is well formed. */
	pos = g.header_length;
	for (i = 0; i < w->n; i++) {
		const struct fz_ext *e = &w->e[i];

		if (e->type == type) {
			if (data)
				pos += 8 + ALIGN(dlen, 8);
			done = true;
		} else if (e->type == QCOW2_EXT_FEATURE_TABLE && feat &&
			   !fz_named(fz->a + e->off + 8, e->len, feat)) {
			flen = rounddown(e->len, sizeof(*feat));
			pos += 8 + flen + sizeof(*feat);
			named = true;
		} else {
			named |= e->type == QCOW2_EXT_FEATURE_TABLE;
			pos += 8 + ALIGN(e->len, 8);
		}
	}
	if (feat && !named)
		pos += 8 + sizeof(*feat);
	if (data && !done)
		pos += 8 + ALIGN(dlen, 8);
	pos += 8;
	expect = pos <= end ? 0 : -ENOSPC;

	r = qcow2_rewrite_extensions(old, len, &g, type, data, dlen, feat, out, &new_end);
	if (w->how != FZ_WALK_END) {
		FZ_EXPECT(fz, r == -EINVAL || r == -ENOSPC,
			  "malformed area (%d at %u): returned %d", w->how, w->at, r);
	} else {
		FZ_EXPECT(fz, r == expect, "returned %d, expected %d (%zu bytes of %zu)",
			  r, expect, pos, end);
	}
	if (r) {
		fz->refused++;
		goto out;
	}
	fz->accepted++;
	FZ_EXPECT(fz, new_end <= end && new_end == pos, "new_end %zu, expected %zu, area %zu",
		  new_end, pos, end);
	if (new_end > end)
		goto out;
	fz_check_rewrite(fz, &g, out, new_end, type, data, dlen, feat);

	/* What the target reads back: its extension, found where it is. */
	r = qcow2_find_extension(out, len, &g, type, &doff, &found_len);
	if (data) {
		FZ_EXPECT(fz, !r && found_len == dlen && (u64)doff + dlen <= new_end &&
			  !memcmp(out + doff, data, dlen),
			  "type %#x: %d, data at %u, %u bytes", type, r, doff, found_len);
	} else {
		FZ_EXPECT(fz, r == -ENOENT, "type %#x removed, found: %d", type, r);
	}
	if (feat) {
		r = qcow2_find_extension(out, len, &g, QCOW2_EXT_FEATURE_TABLE, &doff, &found_len);
		FZ_EXPECT(fz, !r, "no feature name table: %d", r);
	}
out:
	kfree(data);
	kfree(out);
	kfree(old);
}

/* --- L1 and L2 entries ---------------------------------------------------- */

/* An offset field value: a cluster of the device, or near one, or anything. */
static u64 fz_offset(struct fz *fz, const struct qcow2_geometry *g)
{
	switch (fz_below(fz, 6)) {
	case 0 ... 2:
		return fz_cluster(fz, g, 0);
	case 3:
		return round_down(g->dev_size, g->cluster_size) -
		       fz_below(fz, 2) * g->cluster_size + fz_below(fz, 2) * SECTOR_SIZE;
	case 4:
		return fz_interesting(fz, 8);
	default:
		return fz_u64(fz);
	}
}

static void fz_l1(struct fz *fz)
{
	struct qcow2_geometry g;
	u64 e, off;
	bool copied, ok;
	int r;

	fz_geometry(fz, &g, QCOW2_MAX_CLUSTER_BITS);
	e = fz_offset(fz, &g) & QCOW2_L1E_OFFSET_MASK;
	if (fz_one_in(fz, 2))
		e |= QCOW2_OFLAG_COPIED;
	if (fz_one_in(fz, 4))
		e |= fz_one_in(fz, 2) ? BIT_ULL(fz_below(fz, 64)) & QCOW2_L1E_RESERVED_MASK :
					fz_u64(fz) & QCOW2_L1E_RESERVED_MASK;
	if (fz_one_in(fz, 8))
		e = fz_one_in(fz, 2) ? fz_u64(fz) : fz_interesting(fz, 8);

	off = e & QCOW2_L1E_OFFSET_MASK;
	ok = !(e & QCOW2_L1E_RESERVED_MASK) &&
	     (!off || (!(off & (g.cluster_size - 1)) && off <= g.dev_size &&
		       g.dev_size - off >= g.cluster_size));
	r = qcow2_check_l1_entry(&g, e);
	FZ_EXPECT(fz, r == (ok ? 0 : -EINVAL), "entry %#llx: %d, cluster_bits %u, dev_size %llu",
		  e, r, g.cluster_bits, g.dev_size);
	if (r)
		fz->refused++;
	else
		fz->accepted++;

	/* What the target writes, it accepts back. */
	off = fz_cluster(fz, &g, 0);
	copied = fz_one_in(fz, 2);
	e = qcow2_encode_l1_entry(off, copied);
	FZ_EXPECT(fz, !qcow2_check_l1_entry(&g, e) && (e & QCOW2_L1E_OFFSET_MASK) == off &&
		  !!(e & QCOW2_OFLAG_COPIED) == (copied && off),
		  "encoded %#llx for %llu, copied %d", e, off, copied);
}

/* The compressed descriptor QEMU writes for @clen bytes at @off. */
static u64 fz_compressed_l2e(u32 cb, u64 off, u64 clen)
{
	u32 shift = 62 - (cb - 8);
	u64 nb = ((off + clen - 1) >> 9) - (off >> 9);

	return QCOW2_OFLAG_COMPRESSED | off | nb << shift;
}

static void fz_l2_compressed(struct fz *fz, const struct qcow2_geometry *g, u64 e,
			     enum qcow2_cluster_type t, const struct qcow2_l2e_info *info)
{
	u32 cb = g->cluster_bits, shift = 62 - (cb - 8);
	u64 off = e & (BIT_ULL(shift) - 1);
	u64 nb = ((e >> shift) & (BIT_ULL(cb - 8) - 1)) + 1;
	u64 max_len = BIT_ULL(cb - 8) * QCOW2_COMPRESSED_SECTOR_SIZE, start, len;
	bool bad = (e & QCOW2_OFLAG_COPIED) || !off || off >= g->dev_size;

	FZ_EXPECT(fz, t == (bad ? QCOW2_CLUSTER_INVALID : QCOW2_CLUSTER_COMPRESSED),
		  "compressed entry %#llx: type %d, cluster_bits %u, dev_size %llu",
		  e, t, cb, g->dev_size);
	if (t != QCOW2_CLUSTER_COMPRESSED)
		return;
	FZ_EXPECT(fz, info->host_offset == off && info->host_offset &&
		  info->host_offset < g->dev_size, "entry %#llx: host_offset %llu",
		  e, info->host_offset);
	FZ_EXPECT(fz, info->compressed_len > 0 && info->compressed_len <= max_len &&
		  info->compressed_len == nb * QCOW2_COMPRESSED_SECTOR_SIZE - off % 512,
		  "entry %#llx: compressed_len %llu, max %llu", e, info->compressed_len, max_len);
	FZ_EXPECT(fz, !info->copied && info->raw == e, "entry %#llx", e);

	qcow2_compressed_range(g, e, &start, &len);
	FZ_EXPECT(fz, start % 512 == 0 && start <= off && off - start < 512 &&
		  len % 512 == 0 && len <= max_len && start + len == off + info->compressed_len,
		  "entry %#llx: range %llu + %llu", e, start, len);
}

static void fz_l2(struct fz *fz)
{
	static const enum qcow2_cluster_type kinds[] = {
		QCOW2_CLUSTER_UNALLOCATED, QCOW2_CLUSTER_ZERO_PLAIN,
		QCOW2_CLUSTER_ZERO_ALLOC, QCOW2_CLUSTER_NORMAL,
	};
	enum qcow2_cluster_type t, expect, kind;
	struct qcow2_l2e_info info;
	struct qcow2_geometry g;
	u32 shift;
	u64 e, off, clen;
	bool copied;

	fz_geometry(fz, &g, QCOW2_MAX_CLUSTER_BITS);
	shift = 62 - (g.cluster_bits - 8);
	switch (fz_below(fz, 8)) {
	case 0 ... 3:
		e = fz_offset(fz, &g) & QCOW2_L2E_OFFSET_MASK;
		e |= fz_one_in(fz, 2) ? QCOW2_OFLAG_ZERO : 0;
		e |= fz_one_in(fz, 2) ? QCOW2_OFLAG_COPIED : 0;
		if (fz_one_in(fz, 4))
			e |= BIT_ULL(fz_below(fz, 64)) & QCOW2_L2E_STD_RESERVED_MASK;
		break;
	case 4 ... 5:
		off = fz_one_in(fz, 2) ? fz_range(fz, 0, g.dev_size) : fz_interesting(fz, 8);
		e = QCOW2_OFLAG_COMPRESSED | (off & (BIT_ULL(shift) - 1));
		e |= (fz_one_in(fz, 2) ? fz_u64(fz) : fz_interesting(fz, 8)) << shift &
		     ~(QCOW2_OFLAG_COMPRESSED | QCOW2_OFLAG_COPIED);
		if (fz_one_in(fz, 8))
			e |= QCOW2_OFLAG_COPIED;
		break;
	case 6:
		e = fz_interesting(fz, 8);
		break;
	default:
		e = fz_u64(fz);
		break;
	}

	t = qcow2_decode_l2_entry(&g, e, &info);
	FZ_EXPECT(fz, info.raw == e, "raw %#llx, entry %#llx", info.raw, e);
	if (e & QCOW2_OFLAG_COMPRESSED) {
		fz_l2_compressed(fz, &g, e, t, &info);
	} else {
		off = e & QCOW2_L2E_OFFSET_MASK;
		if ((e & QCOW2_L2E_STD_RESERVED_MASK) ||
		    (off && ((off & (g.cluster_size - 1)) || off > g.dev_size ||
			     g.dev_size - off < g.cluster_size)))
			expect = QCOW2_CLUSTER_INVALID;
		else if (e & QCOW2_OFLAG_ZERO)
			expect = off ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
		else
			expect = off ? QCOW2_CLUSTER_NORMAL : QCOW2_CLUSTER_UNALLOCATED;
		FZ_EXPECT(fz, t == expect, "entry %#llx: type %d, expected %d (cb %u, dev %llu)",
			  e, t, expect, g.cluster_bits, g.dev_size);
		if (t == QCOW2_CLUSTER_NORMAL || t == QCOW2_CLUSTER_ZERO_ALLOC) {
			FZ_EXPECT(fz, info.host_offset == off &&
				  !(info.host_offset & (g.cluster_size - 1)) &&
				  info.host_offset <= g.dev_size - g.cluster_size,
				  "entry %#llx: host_offset %llu", e, info.host_offset);
			FZ_EXPECT(fz, info.copied == !!(e & QCOW2_OFLAG_COPIED), "entry %#llx", e);
		}
	}
	if (t == QCOW2_CLUSTER_INVALID)
		fz->refused++;
	else
		fz->accepted++;

	/* Round trips: what the target writes, and what QEMU compresses. */
	kind = kinds[fz_below(fz, ARRAY_SIZE(kinds))];
	off = kind == QCOW2_CLUSTER_NORMAL || kind == QCOW2_CLUSTER_ZERO_ALLOC ?
	      fz_cluster(fz, &g, 1) : 0;
	copied = fz_one_in(fz, 2);
	if (off || kind == QCOW2_CLUSTER_UNALLOCATED || kind == QCOW2_CLUSTER_ZERO_PLAIN) {
		e = qcow2_encode_l2_entry(kind, off, copied);
		t = qcow2_decode_l2_entry(&g, e, &info);
		FZ_EXPECT(fz, t == kind && info.host_offset == off &&
			  info.copied == (copied && off),
			  "kind %d at %llu, copied %d: encoded %#llx, decoded as %d", kind, off,
			  copied, e, t);
	}
	off = fz_range(fz, 1, min(g.dev_size - 1, BIT_ULL(shift) - 1));
	clen = fz_range(fz, 1, g.cluster_size);
	e = fz_compressed_l2e(g.cluster_bits, off, clen);
	t = qcow2_decode_l2_entry(&g, e, &info);
	FZ_EXPECT(fz, t == QCOW2_CLUSTER_COMPRESSED && info.host_offset == off &&
		  info.compressed_len >= clen && info.compressed_len < clen + 512,
		  "%llu bytes at %llu: type %d, compressed_len %llu", clen, off, t,
		  info.compressed_len);
}

/* --- Refcounts ------------------------------------------------------------ */

static u64 fz_ref_get(const u8 *b, u32 order, u64 i)
{
	u64 bit = i << order, v = 0;
	u32 k;

	if (order < 3)
		return (b[bit / 8] >> (bit % 8)) & (BIT(1U << order) - 1);
	for (k = 0; k < (1U << order) / 8; k++)
		v = v << 8 | b[bit / 8 + k];
	return v;
}

static void fz_refcount(struct fz *fz)
{
	u32 order = fz_below(fz, QCOW2_MAX_REFCOUNT_ORDER + 1);
	size_t bytes = 8U << fz_below(fz, 7), k, lo, hi;
	u64 n = bytes * 8 >> order, max = qcow2_refcount_max(order);
	u64 i, j, v, start, end, r, bit;
	u8 *b, *copy = fz->b, mask;

	FZ_EXPECT(fz, max == (order == 6 ? U64_MAX : BIT_ULL(1U << order) - 1),
		  "order %u: max %llu", order, max);
	b = kmalloc(bytes, GFP_KERNEL);
	if (!b) {
		FZ_EXPECT(fz, b, "no memory");
		return;
	}
	fz_bytes(fz, b, bytes);
	memcpy(copy, b, bytes);

	/* Reads agree with the format's layout. */
	for (k = 0; k < 4; k++) {
		j = fz_below(fz, n);
		FZ_EXPECT(fz, qcow2_refcount_get(b, order, j) == fz_ref_get(b, order, j),
			  "order %u, index %llu: %llu", order, j, qcow2_refcount_get(b, order, j));
	}

	/* A write changes its entry, truncated to the width, and nothing else. */
	i = fz_below(fz, n);
	v = fz_one_in(fz, 2) ? fz_interesting(fz, 8) : fz_u64(fz) & max;
	qcow2_refcount_set(b, order, i, v);
	FZ_EXPECT(fz, qcow2_refcount_get(b, order, i) == (v & max),
		  "order %u, index %llu: set %llu, got %llu", order, i, v,
		  qcow2_refcount_get(b, order, i));
	bit = i << order;
	lo = bit / 8;
	hi = (bit + (1U << order) - 1) / 8;
	mask = order < 3 ? (BIT(1U << order) - 1) << (bit % 8) : 0xff;
	FZ_EXPECT(fz, !memcmp(b, copy, lo) && !memcmp(b + hi + 1, copy + hi + 1, bytes - hi - 1) &&
		  ((b[lo] ^ copy[lo]) & ~mask) == 0,
		  "order %u, index %llu: other entries changed", order, i);
	fz->accepted++;

	/* The free search: the first zero in [start, end), or end. */
	memset(b, 0xff, bytes);
	for (k = fz_below(fz, 4); k > 0; k--)
		qcow2_refcount_set(b, order, fz_below(fz, n), 0);
	start = fz_range(fz, 0, n);
	end = fz_range(fz, start, n);
	r = qcow2_refcount_find_free(b, order, start, end);
	FZ_EXPECT(fz, r >= start && r <= end, "order %u: [%llu, %llu): %llu", order, start, end, r);
	for (j = start; j < r && j < end; j++)
		if (!fz_ref_get(b, order, j))
			break;
	FZ_EXPECT(fz, j == r && (r == end || !fz_ref_get(b, order, r)),
		  "order %u: [%llu, %llu): %llu, first free %llu", order, start, end, r, j);
	kfree(b);
}

/* Clusters a refcount table of @n clusters can describe (no overflow: n <= 2^14). */
static u64 fz_reftable_covers(const struct qcow2_geometry *g, u64 n)
{
	return ((n << g->cluster_bits) / sizeof(u64)) << qcow2_refblock_bits(g);
}

static void fz_reftable(struct fz *fz)
{
	struct qcow2_geometry g;
	u64 clusters, n, old, blk, dev, first = 0, k = 0, want, max_n;
	u32 rb;
	int r;

	fz_geometry(fz, &g, QCOW2_MAX_CLUSTER_BITS);
	rb = qcow2_refblock_bits(&g);
	max_n = QCOW2_MAX_REFTABLE_BYTES >> g.cluster_bits;
	FZ_EXPECT(fz, rb == g.cluster_bits + 3 - g.refcount_order, "%u", rb);

	clusters = fz_one_in(fz, 2) ? fz_interesting(fz, 8) :
				      fz_range(fz, 0, fz_reftable_covers(&g, max_n) + 1);
	n = qcow2_reftable_clusters_for(&g, clusters);
	if (n) {
		FZ_EXPECT(fz, n <= max_n && fz_reftable_covers(&g, n) >= clusters &&
			  (n == 1 || fz_reftable_covers(&g, n - 1) < clusters),
			  "%llu clusters: %llu table clusters (cluster_bits %u, order %u)",
			  clusters, n, g.cluster_bits, g.refcount_order);
	} else {
		FZ_EXPECT(fz, fz_reftable_covers(&g, max_n) < clusters,
			  "%llu clusters refused (cluster_bits %u, order %u)", clusters,
			  g.cluster_bits, g.refcount_order);
	}

	/* Growth: mostly the case the target meets, the next block past the table. */
	dev = g.dev_size >> g.cluster_bits;
	old = fz_one_in(fz, 2) ? fz_range(fz, 0, (dev >> rb) + 1) : fz_interesting(fz, 8);
	blk = fz_one_in(fz, 2) ? old : fz_interesting(fz, 8);
	if (fz_one_in(fz, 4))
		dev = fz_interesting(fz, 8);
	r = qcow2_reftable_growth(&g, old, dev, blk, &first, &k);
	if (r) {
		FZ_EXPECT(fz, r == -ENOSPC, "returned %d", r);
		fz->refused++;
		return;
	}
	fz->accepted++;
	want = max(dev, (blk + 1) << rb);
	FZ_EXPECT(fz, blk >= old && first == old << rb && first >> rb == old,
		  "old %llu, block %llu: first %llu", old, blk, first);
	FZ_EXPECT(fz, k >= 1 && k <= max_n && fz_reftable_covers(&g, k) >= want,
		  "%llu table clusters for %llu", k, want);
	FZ_EXPECT(fz, k + 1 <= BIT_ULL(rb) && first < dev && dev - first >= k + 1,
		  "block and %llu table clusters at %llu, device %llu clusters", k, first, dev);
}

/* --- Dedup table -------------------------------------------------------- */

static bool fz_qdt_offset_ok(const struct qcow2_geometry *g, u64 off)
{
	return off && off < BIT_ULL(56) && !(off & (g->cluster_size - 1)) &&
	       off <= g->dev_size && g->dev_size - off >= g->cluster_size;
}

static void fz_qdt_ext(struct fz *fz)
{
	struct qcow2_geometry g;
	struct qdt_info in, out;
	enum qdt_err why;
	size_t len = sizeof(struct qdt_ext);
	struct qdt_ext *e = (void *)fz->a;
	u32 i, n, flags, key_len;
	u64 off;
	bool ok;
	u8 *buf;
	int r;

	fz_geometry(fz, &g, QCOW2_MAX_CLUSTER_BITS);
	for (i = 0; i < 4; i++) {
		off = i ? fz_offset(fz, &g) : fz_cluster(fz, &g, 1);
		FZ_EXPECT(fz, qdt_offset_valid(&g, off) == fz_qdt_offset_ok(&g, off),
			  "offset %#llx, cluster_bits %u, dev_size %llu", off, g.cluster_bits,
			  g.dev_size);
	}

	memset(fz->a, 0, len + 16);
	ok = fz_make_qdt_info(fz, &g, &in);
	qdt_encode_ext(&in, e);
	if (ok) {
		/* Round trip. */
		buf = fz_dup(fz->a, len);
		if (!buf) {
			FZ_EXPECT(fz, buf, "no memory");
			return;
		}
		r = qdt_decode_ext(buf, len, &g, &out, &why);
		FZ_EXPECT(fz, !r && why == QDT_OK && out.flags == in.flags && out.root == in.root &&
			  out.entries == in.entries && out.generation == in.generation &&
			  out.key_len == in.key_len && !memcmp(out.hash, in.hash, sizeof(in.hash)),
			  "round trip: %d (%s)", r, qdt_err_str(why));
		kfree(buf);
	}

	if (fz_one_in(fz, 4)) {
		len += fz_below(fz, 17);
		fz_bytes(fz, fz->a + sizeof(*e), len - sizeof(*e));
	}
	n = fz_range(fz, 1, fz_one_in(fz, 8) ? 10 : 2);
	for (i = 0; i < n; i++) {
		switch (fz_below(fz, 8)) {
		case 0:
			put_unaligned_be64(fz_offset(fz, &g), &e->root_offset);
			break;
		case 1:
			e->key_len = fz_interesting(fz, 1);
			break;
		case 2:
			put_unaligned_be32(fz_interesting(fz, 4), &e->flags);
			break;
		case 3:
			put_unaligned_be32(fz_one_in(fz, 2) ? QDT_VERSION + 1 :
					   fz_interesting(fz, 4), &e->version);
			break;
		case 4:
			memset(e->hash, fz_one_in(fz, 2) ? 0 : 'a',
			       fz_range(fz, 1, QDT_HASH_NAME_LEN));
			break;
		case 5:
			len = fz_below(fz, len + 1);
			break;
		default:
			fz_mutate(fz, fz->a, len);
			break;
		}
	}

	buf = fz_dup(fz->a, len);
	if (!buf && len) {
		FZ_EXPECT(fz, buf, "no memory");
		return;
	}
	memset(&out, 0xa5, sizeof(out));
	r = qdt_decode_ext(buf, len, &g, &out, &why);
	if (!r) {
		fz->accepted++;
		FZ_EXPECT(fz, why == QDT_OK, "why %d", why);
		FZ_EXPECT(fz, len >= sizeof(*e), "len %zu", len);
		FZ_EXPECT(fz, get_unaligned_be32(&e->version) == QDT_VERSION, "version %u",
			  get_unaligned_be32(&e->version));
		FZ_EXPECT(fz, !(out.flags & ~QDT_FLAGS_KNOWN) &&
			  out.flags == get_unaligned_be32(&e->flags), "flags %#x", out.flags);
		FZ_EXPECT(fz, out.key_len >= 1 && out.key_len <= QDT_SLOT_SIZE &&
			  out.key_len == e->key_len, "key_len %u", out.key_len);
		FZ_EXPECT(fz, out.hash[0] && memchr(out.hash, 0, sizeof(out.hash)) &&
			  !memcmp(out.hash, e->hash, sizeof(out.hash)), "hash %*ph",
			  (int)sizeof(out.hash), out.hash);
		FZ_EXPECT(fz, qdt_offset_valid(&g, out.root) && fz_qdt_offset_ok(&g, out.root) &&
			  out.root == get_unaligned_be64(&e->root_offset),
			  "root %#llx, cluster_bits %u, dev_size %llu", out.root, g.cluster_bits,
			  g.dev_size);
		FZ_EXPECT(fz, out.entries == get_unaligned_be64(&e->entries) &&
			  out.generation == get_unaligned_be64(&e->generation), "%llu %llu",
			  out.entries, out.generation);
	} else {
		fz->refused++;
		flags = len >= sizeof(*e) ? get_unaligned_be32(&e->flags) : 0;
		key_len = len >= sizeof(*e) ? e->key_len : 0;
		switch (why) {
		case QDT_ERR_SHORT:
			ok = len < sizeof(*e);
			break;
		case QDT_ERR_VERSION:
			ok = get_unaligned_be32(&e->version) != QDT_VERSION;
			break;
		case QDT_ERR_FLAGS:
			ok = flags & ~QDT_FLAGS_KNOWN;
			break;
		case QDT_ERR_KEY_LEN:
			ok = !key_len || key_len > QDT_SLOT_SIZE;
			break;
		case QDT_ERR_HASH_NAME:
			ok = !e->hash[0] || !memchr(e->hash, 0, sizeof(e->hash));
			break;
		case QDT_ERR_OFFSET:
			ok = !fz_qdt_offset_ok(&g, get_unaligned_be64(&e->root_offset));
			break;
		default:
			ok = false;
			break;
		}
		FZ_EXPECT(fz, r == -EINVAL && ok, "returned %d for \"%s\" (%d), len %zu", r,
			  qdt_err_str(why), why, len);
		if (why < QDT_ERR_MAX)
			fz->reasons |= BIT_ULL(why);
	}
	kfree(buf);
}

/* A pointer in a root or a directory: valid, near valid, or anything. */
static u64 fz_pointer(struct fz *fz, const struct qcow2_geometry *g)
{
	switch (fz_below(fz, 8)) {
	case 0 ... 3:
		return fz_cluster(fz, g, 1);
	case 4:
		return fz_cluster(fz, g, 0) + SECTOR_SIZE * fz_below(fz, 2);
	case 5:
		return fz_cluster(fz, g, 0) | BIT_ULL(fz_range(fz, 56, 63));
	case 6:
		return fz_interesting(fz, 8);
	default:
		return fz_u64(fz);
	}
}

static void fz_qdt_pointers(struct fz *fz)
{
	struct qcow2_geometry g;
	enum qdt_err why = QDT_OK;
	u64 used, i, n, off, bad = 0;
	int r, expect = 0;
	u32 k;
	u8 *buf;

	fz_geometry(fz, &g, FZ_MAX_TREE_CB);
	n = g.cluster_size / sizeof(u64);
	memset(fz->a, 0, g.cluster_size);
	if (fz_one_in(fz, 16)) {
		fz_bytes(fz, fz->a, g.cluster_size);
	} else {
		for (k = fz_below(fz, 8); k > 0; k--)
			put_unaligned_be64(fz_pointer(fz, &g), fz->a + 8 * fz_below(fz, n));
	}
	switch (fz_below(fz, 4)) {
	case 0:
		used = n;
		break;
	case 1:
		used = fz_interesting(fz, 8);
		break;
	default:
		used = fz_below(fz, n + 2);
		break;
	}

	for (i = 0; i < n && !expect; i++) {
		off = get_unaligned_be64(fz->a + i * 8);
		if (!off)
			continue;
		if (i >= used || !fz_qdt_offset_ok(&g, off)) {
			expect = -EINVAL;
			bad = i;
		}
	}
	buf = fz_dup(fz->a, g.cluster_size);
	if (!buf) {
		FZ_EXPECT(fz, buf, "no memory");
		return;
	}
	r = qdt_check_pointers(&g, buf, used, &why);
	FZ_EXPECT(fz, r == expect, "returned %d, expected %d (entry %llu, used %llu)",
		  r, expect, bad, used);
	if (r && expect) {
		FZ_EXPECT(fz, why == (bad >= used ? QDT_ERR_RANGE : QDT_ERR_OFFSET),
			  "entry %llu (%#llx), used %llu: \"%s\"", bad,
			  get_unaligned_be64(fz->a + bad * 8), used, qdt_err_str(why));
	}
	if (r)
		fz->refused++;
	else
		fz->accepted++;
	kfree(buf);
}

static void fz_qdt_leaf(struct fz *fz)
{
	u32 cb = fz_range(fz, QCOW2_MIN_CLUSTER_BITS, FZ_MAX_TREE_CB), bits, k, slot;
	u64 cs = BIT_ULL(cb), leaves, leaf, dev, host, first;
	enum qdt_err why = QDT_OK;
	struct qdt_shape s;
	int r, expect = 0;
	u8 *buf;

	qdt_shape_init(&s, cb);
	bits = min(cb - 5 + 2 * (cb - 3), 56 - cb);
	FZ_EXPECT(fz, s.slot_bits == cb - 5 && s.ptr_bits == cb - 3 &&
		  s.max_clusters == BIT_ULL(bits) && s.max_clusters << cb <= BIT_ULL(56),
		  "cluster_bits %u: %u %u %llu", cb, s.slot_bits, s.ptr_bits, s.max_clusters);
	FZ_EXPECT(fz, (1U << s.slot_bits) * QDT_SLOT_SIZE == cs &&
		  (1U << s.ptr_bits) * sizeof(u64) == cs, "cluster_bits %u", cb);
	leaves = s.max_clusters >> s.slot_bits;
	fz->cs = BIT_ULL(s.slot_bits);

	switch (fz_below(fz, 4)) {
	case 0:
		leaf = 0;
		break;
	case 1:
		leaf = leaves - 1;
		break;
	default:
		leaf = fz_below(fz, min_t(u64, leaves, U32_MAX));
		break;
	}
	first = leaf << s.slot_bits;
	fz->dev_size = first + fz->cs;
	switch (fz_below(fz, 4)) {
	case 0:
		dev = fz_interesting(fz, 8);
		break;
	case 1:
		dev = fz_range(fz, 0, s.max_clusters);
		break;
	default:
		dev = first + fz_below(fz, (1U << s.slot_bits) + 2);
		break;
	}

	memset(fz->a, 0, cs);
	for (k = fz_below(fz, 5); k > 0; k--) {
		slot = fz_below(fz, 1U << s.slot_bits);
		fz->a[slot * QDT_SLOT_SIZE + fz_below(fz, QDT_SLOT_SIZE)] = fz_range(fz, 1, 255);
	}
	if (fz_one_in(fz, 16))
		fz_bytes(fz, fz->a, cs);
	for (slot = 0; slot < (1U << s.slot_bits) && !expect; slot++) {
		host = first + slot;
		if (memchr_inv(fz->a + slot * QDT_SLOT_SIZE, 0, QDT_SLOT_SIZE) &&
		    (!host || host >= dev))
			expect = -EINVAL;
	}
	buf = fz_dup(fz->a, cs);
	if (!buf) {
		FZ_EXPECT(fz, buf, "no memory");
		return;
	}
	r = qdt_check_leaf(&s, buf, leaf, dev, &why);
	FZ_EXPECT(fz, r == expect && (!r || why == QDT_ERR_RANGE),
		  "leaf %llu, %llu clusters: returned %d (%s), expected %d", leaf, dev, r,
		  qdt_err_str(why), expect);
	if (r)
		fz->refused++;
	else
		fz->accepted++;
	kfree(buf);
}

/* --- Cases ---------------------------------------------------------------- */

struct fz_target {
	const char *name;
	void (*one)(struct fz *fz);
	bool refuses;		/* has inputs it must refuse */
};

static const struct fz_target fz_targets[] = {
	{ "header", fz_header, true },
	{ "extensions", fz_extensions, true },
	{ "rewrite_extensions", fz_rewrite, true },
	{ "l1_entry", fz_l1, true },
	{ "l2_entry", fz_l2, true },
	{ "refcount", fz_refcount, false },
	{ "reftable", fz_reftable, true },
	{ "qdt_ext", fz_qdt_ext, true },
	{ "qdt_pointers", fz_qdt_pointers, true },
	{ "qdt_leaf", fz_qdt_leaf, true },
};

static void fz_target_desc(const struct fz_target *t, char *desc)
{
	strscpy(desc, t->name, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(fz_target, fz_targets, fz_target_desc);

/* SplitMix64: the decoders' streams are unrelated for neighbouring seeds. */
static u64 fz_mix(u64 x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static void fz_run(struct kunit *test, u32 inputs)
{
	const struct fz_target *t = test->param_value;
	struct fz *fz = kunit_kzalloc(test, sizeof(*fz), GFP_KERNEL);
	ktime_t start = ktime_get();
	u32 i;

	KUNIT_ASSERT_NOT_NULL(test, fz);
	fz->a = kunit_kzalloc(test, FZ_SCRATCH + 64, GFP_KERNEL);
	fz->b = kunit_kzalloc(test, FZ_SCRATCH + 64, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, fz->a);
	KUNIT_ASSERT_NOT_NULL(test, fz->b);
	fz->test = test;
	fz->name = t->name;
	prandom_seed_state(&fz->rnd, fz_mix(fuzz_seed ^ fz_mix(t - fz_targets)));
	for (i = 0; i < 8; i++)
		fz_u32(fz);

	for (i = 0; i < inputs && !fz->failed; i++) {
		fz->input = i;
		t->one(fz);
		/* A KASAN report fails the test without an FZ_EXPECT(). */
		if (READ_ONCE(test->status) == KUNIT_FAILURE)
			fz->failed = true;
	}
	kunit_info(test, "%s: %u inputs, %llu accepted, %llu refused, %lld us, seed %llu\n",
		   t->name, i, fz->accepted, fz->refused, ktime_us_delta(ktime_get(), start),
		   fuzz_seed);
	if (fz->reasons)
		kunit_info(test, "%s: %u distinct refusal reasons\n", t->name,
			   (u32)hweight64(fz->reasons));
	if (fz->failed) {
		kunit_info(test, "replay: boot with dm_qcow2dedup_test.fuzz_seed=%llu, see input %u\n",
			   fuzz_seed, fz->input);
		return;
	}
	/* Inputs that reach both outcomes, or the checks above test little. */
	KUNIT_EXPECT_GT(test, fz->accepted, 0ULL);
	if (t->refuses)
		KUNIT_EXPECT_GT(test, fz->refused, 0ULL);
}

static void fuzz_fast(struct kunit *test)
{
	fz_run(test, FZ_FAST_INPUTS);
}

static void fuzz_slow(struct kunit *test)
{
	fz_run(test, FZ_SLOW_INPUTS);
}

static struct kunit_case qcow2_fuzz_cases[] = {
	KUNIT_CASE_PARAM(fuzz_fast, fz_target_gen_params),
	KUNIT_CASE_PARAM_ATTR(fuzz_slow, fz_target_gen_params, { .speed = KUNIT_SPEED_SLOW }),
	{}
};

static struct kunit_suite qcow2_fuzz_suite = {
	.name = "qcow2dedup-fuzz",
	.test_cases = qcow2_fuzz_cases,
};

kunit_test_suite(qcow2_fuzz_suite);
