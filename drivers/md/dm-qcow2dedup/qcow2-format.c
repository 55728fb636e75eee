// SPDX-License-Identifier: GPL-2.0
/*
 * Pure decoders for the qcow2 on-disk format (see qcow2-format.h).
 *
 * The checks follow what QEMU's qcow2 driver refuses on open (block/qcow2.c),
 * plus the target's own limits: no encryption, external data file, extended
 * L2 entries or backing file, and no image that needs repair.
 */
#include <kunit/visibility.h>
#include <linux/align.h>
#include <linux/blk_types.h>
#include <linux/bits.h>
#include <linux/errno.h>
#include <linux/export.h>
#include <linux/kernel.h>
#include <linux/string.h>

#include "dm-qcow2dedup-compat.h"
#include "qcow2-format.h"

/* Not const: ti->error is a plain char pointer. */
static char * const qcow2_err_strs[QCOW2_ERR_MAX] = {
	[QCOW2_OK]			= "no error",
	[QCOW2_ERR_SHORT]		= "Device too small for a qcow2 header",
	[QCOW2_ERR_MAGIC]		= "Not a qcow2 image (bad magic)",
	[QCOW2_ERR_VERSION]		= "Unsupported qcow2 version",
	[QCOW2_ERR_CLUSTER_BITS]	= "Invalid cluster_bits (must be 9..21)",
	[QCOW2_ERR_HEADER_LENGTH]	= "Invalid header_length",
	[QCOW2_ERR_REFCOUNT_ORDER]	= "Invalid refcount_order (must be 0..6)",
	[QCOW2_ERR_ENCRYPTED]		= "Encrypted images are not supported",
	[QCOW2_ERR_DIRTY]		= "Image is dirty: run 'qemu-img check -r all' first",
	[QCOW2_ERR_CORRUPT]		= "Image is marked corrupt: run 'qemu-img check -r all'",
	[QCOW2_ERR_DATA_FILE]		= "External data files are not supported",
	[QCOW2_ERR_EXTL2]		= "Extended L2 entries (subclusters) are not supported",
	[QCOW2_ERR_UNKNOWN_INCOMPAT]	= "Unknown incompatible feature bits",
	[QCOW2_ERR_COMPRESSION_TYPE]	= "Invalid compression type",
	[QCOW2_ERR_BACKING_FILE]	= "Images with a backing file are not supported",
	[QCOW2_ERR_SIZE]		= "Virtual size is not a multiple of 512 bytes",
	[QCOW2_ERR_DEV_TOO_SMALL]	= "Device smaller than one cluster",
	[QCOW2_ERR_L1_TOO_SMALL]	= "l1_size too small for the virtual size",
	[QCOW2_ERR_L1_TOO_LARGE]	= "l1_size too large",
	[QCOW2_ERR_L1_OFFSET]		= "L1 table misaligned or beyond the device",
	[QCOW2_ERR_REFTABLE_OFFSET]	= "Refcount table misaligned or beyond the device",
	[QCOW2_ERR_REFTABLE_SIZE]	= "Refcount table size invalid",
	[QCOW2_ERR_SNAPSHOTS_OFFSET]	= "Snapshot table misaligned or beyond the device",
	[QCOW2_ERR_SNAPSHOTS_COUNT]	= "Too many snapshots",
	[QCOW2_ERR_EXTENSION]		= "Invalid header extension",
	[QCOW2_ERR_L1_ENTRY]		= "Invalid L1 table entry",
	[QCOW2_ERR_TABLE_LENGTH]	= "Target length does not match the image's virtual size",
	[QCOW2_ERR_REFTABLE_ENTRY]	= "Invalid refcount table entry",
	[QCOW2_ERR_META_OVERLAP]	= "Metadata structures overlap",
	[QCOW2_ERR_META_REFCOUNT]	= "Metadata cluster with refcount 0",
};

/**
 * qcow2_err_str() - message for a refusal, suitable for ti->error.
 * @err: the reason.
 *
 * Return: a string with static lifetime.
 */
char *qcow2_err_str(enum qcow2_err err)
{
	if (err < 0 || err >= QCOW2_ERR_MAX || !qcow2_err_strs[err])
		return "Unknown error";
	return qcow2_err_strs[err];
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_err_str);

static int refuse(struct qcow2_refusal *why, enum qcow2_err err, u64 value)
{
	why->err = err;
	why->value = value;
	return -EINVAL;
}

/**
 * qcow2_l1_entries_needed() - L1 entries needed to map @size guest bytes.
 * @size: virtual size in bytes.
 * @cluster_bits: log2 of the cluster size, 9..21.
 *
 * Each L1 entry maps 2^(2 * cluster_bits - 3) bytes, at most 2^39, so the
 * result cannot overflow.
 */
u64 qcow2_l1_entries_needed(u64 size, u32 cluster_bits)
{
	u32 shift = cluster_bits + cluster_bits - 3;

	return (size >> shift) + !!(size & (BIT_ULL(shift) - 1));
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_l1_entries_needed);

/* A table of @bytes at cluster-aligned @off, not covering the header, inside the device. */
static bool table_fits(const struct qcow2_geometry *g, u64 off, u64 bytes)
{
	if (!off || (off & (g->cluster_size - 1)))
		return false;
	return off <= g->dev_size && bytes <= g->dev_size - off;
}

static int decode_features(const struct qcow2_header *h, size_t len,
			   struct qcow2_geometry *g, struct qcow2_refusal *why)
{
	const u64 known = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT |
			  QCOW2_INCOMPAT_DATA_FILE | QCOW2_INCOMPAT_COMPRESSION |
			  QCOW2_INCOMPAT_EXTL2;
	u64 incompat;

	g->incompatible_features = get_unaligned_be64(&h->incompatible_features);
	g->compatible_features = get_unaligned_be64(&h->compatible_features);
	g->autoclear_features = get_unaligned_be64(&h->autoclear_features);
	g->refcount_order = get_unaligned_be32(&h->refcount_order);
	g->header_length = get_unaligned_be32(&h->header_length);

	if (g->header_length < QCOW2_HEADER_V3_LEN || g->header_length % 8 ||
	    g->header_length > g->cluster_size)
		return refuse(why, QCOW2_ERR_HEADER_LENGTH, g->header_length);
	if (g->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
		return refuse(why, QCOW2_ERR_REFCOUNT_ORDER, g->refcount_order);

	incompat = g->incompatible_features;
	if (incompat & ~known)
		return refuse(why, QCOW2_ERR_UNKNOWN_INCOMPAT, incompat & ~known);
	if (incompat & QCOW2_INCOMPAT_CORRUPT)
		return refuse(why, QCOW2_ERR_CORRUPT, incompat);
	if (incompat & QCOW2_INCOMPAT_DIRTY)
		return refuse(why, QCOW2_ERR_DIRTY, incompat);
	if (incompat & QCOW2_INCOMPAT_DATA_FILE)
		return refuse(why, QCOW2_ERR_DATA_FILE, incompat);
	if (incompat & QCOW2_INCOMPAT_EXTL2)
		return refuse(why, QCOW2_ERR_EXTL2, incompat);
	/* compression_type may lie beyond @len: the caller reads more. */
	if (g->header_length > len)
		return refuse(why, QCOW2_ERR_HEADER_LENGTH, g->header_length);

	/* As QEMU: zlib must not set the bit, anything else must. */
	g->compression_type = QCOW2_COMPRESSION_ZLIB;
	if (g->header_length >= QCOW2_HEADER_COMPRESSION_LEN)
		g->compression_type = h->compression_type;
	switch (g->compression_type) {
	case QCOW2_COMPRESSION_ZLIB:
		if (incompat & QCOW2_INCOMPAT_COMPRESSION)
			return refuse(why, QCOW2_ERR_COMPRESSION_TYPE, g->compression_type);
		break;
	case QCOW2_COMPRESSION_ZSTD:
		if (!(incompat & QCOW2_INCOMPAT_COMPRESSION))
			return refuse(why, QCOW2_ERR_COMPRESSION_TYPE, g->compression_type);
		break;
	default:
		return refuse(why, QCOW2_ERR_COMPRESSION_TYPE, g->compression_type);
	}
	return 0;
}

static int decode_tables(const struct qcow2_header *h,
			 struct qcow2_geometry *g, struct qcow2_refusal *why)
{
	u64 needed, bytes;

	g->l1_size = get_unaligned_be32(&h->l1_size);
	g->l1_table_offset = get_unaligned_be64(&h->l1_table_offset);
	g->refcount_table_offset = get_unaligned_be64(&h->refcount_table_offset);
	g->refcount_table_clusters = get_unaligned_be32(&h->refcount_table_clusters);
	g->nb_snapshots = get_unaligned_be32(&h->nb_snapshots);
	g->snapshots_offset = get_unaligned_be64(&h->snapshots_offset);

	if ((u64)g->l1_size * sizeof(u64) > QCOW2_MAX_L1_BYTES)
		return refuse(why, QCOW2_ERR_L1_TOO_LARGE, g->l1_size);
	needed = qcow2_l1_entries_needed(g->size, g->cluster_bits);
	if (g->l1_size < needed)
		return refuse(why, QCOW2_ERR_L1_TOO_SMALL, g->l1_size);
	if (g->l1_size &&
	    !table_fits(g, g->l1_table_offset, (u64)g->l1_size * sizeof(u64)))
		return refuse(why, QCOW2_ERR_L1_OFFSET, g->l1_table_offset);

	bytes = (u64)g->refcount_table_clusters << g->cluster_bits;
	if (!g->refcount_table_clusters || bytes > QCOW2_MAX_REFTABLE_BYTES)
		return refuse(why, QCOW2_ERR_REFTABLE_SIZE, g->refcount_table_clusters);
	if (!table_fits(g, g->refcount_table_offset, bytes))
		return refuse(why, QCOW2_ERR_REFTABLE_OFFSET, g->refcount_table_offset);

	if (g->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
		return refuse(why, QCOW2_ERR_SNAPSHOTS_COUNT, g->nb_snapshots);
	bytes = (u64)g->nb_snapshots * sizeof(struct qcow2_snapshot_hdr);
	if (g->nb_snapshots && !table_fits(g, g->snapshots_offset, bytes))
		return refuse(why, QCOW2_ERR_SNAPSHOTS_OFFSET, g->snapshots_offset);
	return 0;
}

/**
 * qcow2_decode_header() - decode and validate the image header.
 * @buf: the first bytes of the device.
 * @len: bytes in @buf; at least the header (72 or header_length bytes).
 * @dev_size: size of the device in bytes.
 * @g: filled with the decoded geometry on success.
 * @why: filled with the reason on failure.
 *
 * Context: any; pure function.
 * Return: 0, or -EINVAL with @why set.
 */
int qcow2_decode_header(const void *buf, size_t len, u64 dev_size,
			struct qcow2_geometry *g, struct qcow2_refusal *why)
{
	const struct qcow2_header *h = buf;
	u32 crypt;
	int r;

	memset(g, 0, sizeof(*g));
	why->err = QCOW2_OK;
	why->value = 0;
	g->dev_size = dev_size;

	if (len < QCOW2_HEADER_V2_LEN)
		return refuse(why, QCOW2_ERR_SHORT, len);
	if (get_unaligned_be32(&h->magic) != QCOW2_MAGIC)
		return refuse(why, QCOW2_ERR_MAGIC, get_unaligned_be32(&h->magic));
	g->version = get_unaligned_be32(&h->version);
	if (g->version != 2 && g->version != 3)
		return refuse(why, QCOW2_ERR_VERSION, g->version);
	g->cluster_bits = get_unaligned_be32(&h->cluster_bits);
	if (g->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
	    g->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return refuse(why, QCOW2_ERR_CLUSTER_BITS, g->cluster_bits);
	g->cluster_size = BIT_ULL(g->cluster_bits);
	g->l2_bits = g->cluster_bits - 3;
	if (dev_size < g->cluster_size)
		return refuse(why, QCOW2_ERR_DEV_TOO_SMALL, dev_size);

	if (g->version == 2) {
		g->header_length = QCOW2_HEADER_V2_LEN;
		g->refcount_order = QCOW2_V2_REFCOUNT_ORDER;
		g->compression_type = QCOW2_COMPRESSION_ZLIB;
	} else {
		if (len < QCOW2_HEADER_V3_LEN)
			return refuse(why, QCOW2_ERR_SHORT, len);
		r = decode_features(h, len, g, why);
		if (r)
			return r;
	}

	crypt = get_unaligned_be32(&h->crypt_method);
	if (crypt != QCOW2_CRYPT_NONE)
		return refuse(why, QCOW2_ERR_ENCRYPTED, crypt);
	if (get_unaligned_be64(&h->backing_file_offset))
		return refuse(why, QCOW2_ERR_BACKING_FILE,
			      get_unaligned_be64(&h->backing_file_offset));

	g->size = get_unaligned_be64(&h->size);
	if (g->size & (SECTOR_SIZE - 1))
		return refuse(why, QCOW2_ERR_SIZE, g->size);

	return decode_tables(h, g, why);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_decode_header);

/**
 * qcow2_check_extensions() - walk the header extensions after the header.
 * @buf: the image's first cluster (or as much of it as the device holds).
 * @len: bytes in @buf.
 * @g: geometry from qcow2_decode_header().
 * @why: filled with the reason on failure; @why->value is the extension's
 *	byte offset.
 *
 * Unknown extensions are skipped (and kept: the target never rewrites them).
 * Context: any; pure function.
 * Return: 0, or -EINVAL with @why set.
 */
int qcow2_check_extensions(const void *buf, size_t len,
			   const struct qcow2_geometry *g,
			   struct qcow2_refusal *why)
{
	size_t off = g->header_length;
	size_t end = min_t(u64, len, g->cluster_size);

	while (off < end) {
		const struct qcow2_ext_hdr *e = buf + off;
		u32 type, elen;

		if (end - off < sizeof(*e))
			return refuse(why, QCOW2_ERR_EXTENSION, off);
		type = get_unaligned_be32(&e->type);
		elen = get_unaligned_be32(&e->len);
		if (type == QCOW2_EXT_END)
			return 0;
		if (elen > end - off - sizeof(*e))
			return refuse(why, QCOW2_ERR_EXTENSION, off);
		/* QEMU refuses a crypto header on an unencrypted image. */
		if (type == QCOW2_EXT_CRYPTO)
			return refuse(why, QCOW2_ERR_EXTENSION, off);
		off += sizeof(*e) + ALIGN((u64)elen, 8);
	}
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_check_extensions);

/**
 * qcow2_check_target_len() - the dm table must cover exactly the virtual disk.
 * @g: geometry.
 * @sectors: target length in 512-byte sectors.
 * @why: filled with the reason on failure.
 *
 * Return: 0, or -EINVAL with @why set.
 */
int qcow2_check_target_len(const struct qcow2_geometry *g, u64 sectors,
			   struct qcow2_refusal *why)
{
	if (sectors != g->size >> SECTOR_SHIFT)
		return refuse(why, QCOW2_ERR_TABLE_LENGTH, sectors);
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_check_target_len);

/**
 * qcow2_check_l1_entry() - is @l1e a usable L1 entry?
 * @g: geometry.
 * @l1e: the entry in CPU order.
 *
 * Return: 0 if the entry is empty or points to a whole cluster inside the
 * device with no reserved bit set, -EINVAL otherwise.
 */
int qcow2_check_l1_entry(const struct qcow2_geometry *g, u64 l1e)
{
	u64 off = l1e & QCOW2_L1E_OFFSET_MASK;

	if (l1e & QCOW2_L1E_RESERVED_MASK)
		return -EINVAL;
	if (!off)
		return 0;
	if (off & (g->cluster_size - 1))
		return -EINVAL;
	if (off > g->dev_size || g->dev_size - off < g->cluster_size)
		return -EINVAL;
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_check_l1_entry);

/**
 * qcow2_decode_l2_entry() - classify an L2 entry.
 * @g: geometry.
 * @l2e: the entry in CPU order.
 * @info: host location of the data, for NORMAL, ZERO_ALLOC and COMPRESSED.
 *
 * A compressed run may extend past the end of the device: QEMU reads past
 * the end of an image file as zeros, and the caller clamps the same way.
 *
 * Context: any; pure function.
 * Return: the cluster type.
 */
enum qcow2_cluster_type qcow2_decode_l2_entry(const struct qcow2_geometry *g,
					      u64 l2e,
					      struct qcow2_l2e_info *info)
{
	u64 off;

	memset(info, 0, sizeof(*info));
	info->raw = l2e;
	info->copied = !!(l2e & QCOW2_OFLAG_COPIED);

	if (l2e & QCOW2_OFLAG_COMPRESSED) {
		u32 shift = 62 - (g->cluster_bits - 8);
		u64 nb_sectors = ((l2e >> shift) &
				  (BIT_ULL(g->cluster_bits - 8) - 1)) + 1;

		off = l2e & (BIT_ULL(shift) - 1);
		info->host_offset = off;
		info->compressed_len = nb_sectors * QCOW2_COMPRESSED_SECTOR_SIZE -
				       (off & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
		if (info->copied || !off || off >= g->dev_size)
			return QCOW2_CLUSTER_INVALID;
		return QCOW2_CLUSTER_COMPRESSED;
	}

	if (l2e & QCOW2_L2E_STD_RESERVED_MASK)
		return QCOW2_CLUSTER_INVALID;
	off = l2e & QCOW2_L2E_OFFSET_MASK;
	info->host_offset = off;
	if (off && ((off & (g->cluster_size - 1)) || off > g->dev_size ||
		    g->dev_size - off < g->cluster_size))
		return QCOW2_CLUSTER_INVALID;
	if (l2e & QCOW2_OFLAG_ZERO)
		return off ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_ZERO_PLAIN;
	return off ? QCOW2_CLUSTER_NORMAL : QCOW2_CLUSTER_UNALLOCATED;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_decode_l2_entry);

/**
 * qcow2_l2_normal_run() - how many L2 entries in a row map standard
 *	clusters that lie one after the other on the host.
 * @g: geometry.
 * @l2: big-endian L2 entries, as in a metadata buffer (any alignment).
 * @n: entries at @l2.
 * @host_offset: where the data of the entry at @l2 must lie.
 * @copied: count only entries with COPIED set (refcount one: a write may
 *	go there in place).
 *
 * A read (or, with @copied, a write in place) of several guest clusters
 * goes to the device as one bio when their data is contiguous there; every
 * entry is decoded with all the checks of qcow2_decode_l2_entry(), so a
 * run never covers an entry the single-cluster path would refuse.
 *
 * Context: any; pure function.
 * Return: the entries, from the first, whose data is at @host_offset plus
 * their index in clusters (0 to @n).
 */
unsigned int qcow2_l2_normal_run(const struct qcow2_geometry *g,
				 const void *l2, unsigned int n,
				 u64 host_offset, bool copied)
{
	struct qcow2_l2e_info info;
	unsigned int i;

	for (i = 0; i < n; i++) {
		u64 l2e = get_unaligned_be64(l2 + (size_t)i * sizeof(u64));

		if (qcow2_decode_l2_entry(g, l2e, &info) != QCOW2_CLUSTER_NORMAL ||
		    info.host_offset != host_offset + ((u64)i << g->cluster_bits) ||
		    (copied && !info.copied))
			break;
	}
	return i;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_l2_normal_run);

/**
 * qcow2_l2_zero_run() - how many L2 entries in a row read as zeros and
 *	name no host cluster (unallocated, or zero without a preallocated
 *	cluster: one with a cluster goes the single-cluster path, which
 *	refuses a cluster that is metadata).
 * @g: geometry.
 * @l2: big-endian L2 entries, as in a metadata buffer (any alignment).
 * @n: entries at @l2.
 *
 * A read of several such guest clusters is answered at once; decoded with
 * every check of qcow2_decode_l2_entry(), so a corrupt entry ends the run
 * and gets the single-cluster path's refusal.
 *
 * Context: any; pure function.
 * Return: the entries, from the first, that read as zeros (0 to @n).
 */
unsigned int qcow2_l2_zero_run(const struct qcow2_geometry *g,
			       const void *l2, unsigned int n)
{
	struct qcow2_l2e_info info;
	unsigned int i;

	for (i = 0; i < n; i++) {
		switch (qcow2_decode_l2_entry(g, get_unaligned_be64(l2 + (size_t)i * sizeof(u64)),
					      &info)) {
		case QCOW2_CLUSTER_UNALLOCATED:
		case QCOW2_CLUSTER_ZERO_PLAIN:
			continue;
		default:
			return i;
		}
	}
	return i;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_l2_zero_run);

/**
 * qcow2_encode_l2_entry() - the L2 entry for a standard or zero cluster.
 * @type: QCOW2_CLUSTER_NORMAL, ZERO_PLAIN, ZERO_ALLOC or UNALLOCATED.
 * @host_offset: cluster-aligned host offset (0 for ZERO_PLAIN/UNALLOCATED).
 * @copied: refcount of @host_offset is exactly one.
 *
 * Return: the entry in CPU order; reserved bits are always zero.
 */
u64 qcow2_encode_l2_entry(enum qcow2_cluster_type type, u64 host_offset,
			  bool copied)
{
	u64 e = host_offset & QCOW2_L2E_OFFSET_MASK;

	switch (type) {
	case QCOW2_CLUSTER_ZERO_PLAIN:
		return QCOW2_OFLAG_ZERO;
	case QCOW2_CLUSTER_ZERO_ALLOC:
		e |= QCOW2_OFLAG_ZERO;
		break;
	case QCOW2_CLUSTER_NORMAL:
		break;
	default:
		return 0;
	}
	return copied ? e | QCOW2_OFLAG_COPIED : e;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_encode_l2_entry);

/**
 * qcow2_encode_l1_entry() - the L1 entry for an L2 table.
 * @l2_offset: cluster-aligned offset of the table, 0 for none.
 * @copied: refcount of the table is exactly one.
 */
u64 qcow2_encode_l1_entry(u64 l2_offset, bool copied)
{
	u64 e = l2_offset & QCOW2_L1E_OFFSET_MASK;

	return e && copied ? e | QCOW2_OFLAG_COPIED : e;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_encode_l1_entry);

/**
 * qcow2_compressed_range() - host bytes whose clusters a compressed cluster
 *	holds a reference on.
 * @g: geometry.
 * @l2e: a compressed L2 entry.
 * @start: first byte, sector-aligned, as QEMU frees it.
 * @len: bytes.
 *
 * QEMU raises the refcount of every host cluster these bytes touch when it
 * writes a compressed cluster, and lowers them when it frees one.
 */
void qcow2_compressed_range(const struct qcow2_geometry *g, u64 l2e,
			    u64 *start, u64 *len)
{
	u32 shift = 62 - (g->cluster_bits - 8);
	u64 nb_sectors = ((l2e >> shift) & (BIT_ULL(g->cluster_bits - 8) - 1)) + 1;

	*start = (l2e & (BIT_ULL(shift) - 1)) & ~(u64)(QCOW2_COMPRESSED_SECTOR_SIZE - 1);
	*len = nb_sectors * QCOW2_COMPRESSED_SECTOR_SIZE;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_compressed_range);

/**
 * qcow2_refcount_get() - read refcount @index of a refcount block.
 * @block: the refcount block, or the part of it that holds @index
 *	(entries never straddle 512-byte boundaries).
 * @refcount_order: log2 of the refcount width in bits, 0..6.
 * @index: index of the entry within @block.
 *
 * Context: any; pure function.
 */
u64 qcow2_refcount_get(const void *block, u32 refcount_order, u64 index)
{
	const u8 *b = block;
	u32 width = 1U << refcount_order;

	switch (refcount_order) {
	case 0:
	case 1:
	case 2:
		return (b[(index << refcount_order) / 8] >>
			((index << refcount_order) % 8)) & (BIT(width) - 1);
	case 3:
		return b[index];
	case 4:
		return get_unaligned_be16(b + index * 2);
	case 5:
		return get_unaligned_be32(b + index * 4);
	default:
		return get_unaligned_be64(b + index * 8);
	}
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_refcount_get);

/**
 * qcow2_refcount_set() - write refcount @index of a refcount block.
 * @block: as for qcow2_refcount_get().
 * @refcount_order: log2 of the refcount width in bits, 0..6.
 * @index: index of the entry within @block.
 * @value: the new refcount; the caller keeps it within
 *	qcow2_refcount_max(@refcount_order).
 *
 * Context: any; pure function.
 */
void qcow2_refcount_set(void *block, u32 refcount_order, u64 index, u64 value)
{
	u8 *b = block;
	u32 width = 1U << refcount_order, shift;
	u8 mask;

	switch (refcount_order) {
	case 0:
	case 1:
	case 2:
		shift = (index << refcount_order) % 8;
		mask = (BIT(width) - 1) << shift;
		b += (index << refcount_order) / 8;
		*b = (*b & ~mask) | ((value << shift) & mask);
		break;
	case 3:
		b[index] = value;
		break;
	case 4:
		put_unaligned_be16(value, b + index * 2);
		break;
	case 5:
		put_unaligned_be32(value, b + index * 4);
		break;
	default:
		put_unaligned_be64(value, b + index * 8);
		break;
	}
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_refcount_set);

/**
 * qcow2_reftable_clusters_for() - refcount table size, in clusters, that
 *	describes @clusters host clusters.
 * @g: geometry (cluster size and refcount width).
 * @clusters: number of host clusters to cover.
 *
 * Return: the number of clusters; 0 if more than QEMU's 8 MiB limit.
 */
u64 qcow2_reftable_clusters_for(const struct qcow2_geometry *g, u64 clusters)
{
	u32 rb_bits = qcow2_refblock_bits(g);
	u64 blocks = (clusters >> rb_bits) + !!(clusters & (BIT_ULL(rb_bits) - 1));
	u64 bytes = blocks * sizeof(u64);
	u64 n = (bytes >> g->cluster_bits) + !!(bytes & (g->cluster_size - 1));

	if (!n)
		n = 1;
	if (n << g->cluster_bits > QCOW2_MAX_REFTABLE_BYTES)
		return 0;
	return n;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_reftable_clusters_for);

/**
 * qcow2_refcount_find_free() - first zero refcount in [@start, @end).
 * @block: as for qcow2_refcount_get().
 * @refcount_order: log2 of the refcount width in bits, 0..6.
 * @start: first index to look at.
 * @end: index after the last one.
 *
 * Return: the index, or @end if every refcount in the range is non-zero.
 */
u64 qcow2_refcount_find_free(const void *block, u32 refcount_order, u64 start,
			     u64 end)
{
	for (; start < end; start++)
		if (!qcow2_refcount_get(block, refcount_order, start))
			break;
	return start;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_refcount_find_free);

/**
 * qcow2_refcount_free_run() - how many refcounts from @start on are zero:
 *	the free clusters a run allocation can take after a first one.
 * @block: as for qcow2_refcount_get().
 * @refcount_order: log2 of the refcount width in bits, 0..6.
 * @start: first index to look at.
 * @end: index after the last one that may be taken.
 * @max: refcounts wanted at most.
 *
 * Return: 0 to min(@max, @end - @start).
 */
u64 qcow2_refcount_free_run(const void *block, u32 refcount_order, u64 start,
			    u64 end, u64 max)
{
	u64 i;

	for (i = start; i < end && i - start < max; i++)
		if (qcow2_refcount_get(block, refcount_order, i))
			break;
	return i - start;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_refcount_free_run);

/**
 * qcow2_reftable_growth() - where and how big a grown refcount table goes.
 * @g: geometry.
 * @old_entries: entries of the current table.
 * @dev_clusters: clusters the device holds.
 * @block_index: the refcount block index the current table cannot hold.
 * @first: the first cluster of the first range the old table cannot
 *	describe: the new refcount block goes there, the table right after.
 * @clusters: size of the new table in clusters; it covers the device.
 *
 * The new refcount block must describe itself and the whole new table, so
 * all of them must fit in its range, and in the device.
 *
 * Return: 0, or -ENOSPC if the table cannot grow that way.
 */
int qcow2_reftable_growth(const struct qcow2_geometry *g, u64 old_entries,
			  u64 dev_clusters, u64 block_index, u64 *first,
			  u64 *clusters)
{
	u32 rb_bits = qcow2_refblock_bits(g);
	u64 want, k;

	if (block_index < old_entries || block_index >= BIT_ULL(63 - rb_bits))
		return -ENOSPC;
	want = max(dev_clusters, (block_index + 1) << rb_bits);
	k = qcow2_reftable_clusters_for(g, want);
	if (!k || old_entries >= BIT_ULL(63 - rb_bits))
		return -ENOSPC;
	*first = old_entries << rb_bits;
	*clusters = k;
	if (k + 1 > BIT_ULL(rb_bits) || *first >= dev_clusters ||
	    dev_clusters - *first < k + 1)
		return -ENOSPC;
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_reftable_growth);
