/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Pure decoders for the qcow2 on-disk format: they take buffers and numbers
 * and return decoded values or a reason for refusal.  No I/O, no allocation,
 * no locking: callable from any context and unit-tested in isolation.
 */
#ifndef DM_QCOW2DEDUP_FORMAT_H
#define DM_QCOW2DEDUP_FORMAT_H

#include <linux/bits.h>
#include <linux/limits.h>
#include <linux/minmax.h>
#include <linux/types.h>
#include <qcow2dedup/qcow2.h>

/**
 * struct qcow2_geometry - the header fields the target uses, in CPU order,
 * validated against each other and against the device size.
 */
struct qcow2_geometry {
	u32 version;
	u32 cluster_bits;
	u32 l2_bits;		/* log2(L2 entries per table) = cluster_bits - 3 */
	u32 refcount_order;
	u32 header_length;
	u32 l1_size;
	u32 refcount_table_clusters;
	u32 nb_snapshots;
	u32 compression_type;
	u64 cluster_size;
	u64 size;		/* virtual disk size in bytes */
	u64 l1_table_offset;
	u64 refcount_table_offset;
	u64 snapshots_offset;
	u64 incompatible_features;
	u64 compatible_features;
	u64 autoclear_features;
	u64 dev_size;		/* size of the device holding the image */
};

/* Why an image is refused.  qcow2_err_str() gives the message. */
enum qcow2_err {
	QCOW2_OK = 0,
	QCOW2_ERR_SHORT,
	QCOW2_ERR_MAGIC,
	QCOW2_ERR_VERSION,
	QCOW2_ERR_CLUSTER_BITS,
	QCOW2_ERR_HEADER_LENGTH,
	QCOW2_ERR_REFCOUNT_ORDER,
	QCOW2_ERR_ENCRYPTED,
	QCOW2_ERR_DIRTY,
	QCOW2_ERR_CORRUPT,
	QCOW2_ERR_DATA_FILE,
	QCOW2_ERR_EXTL2,
	QCOW2_ERR_UNKNOWN_INCOMPAT,
	QCOW2_ERR_COMPRESSION_TYPE,
	QCOW2_ERR_BACKING_FILE,
	QCOW2_ERR_SIZE,
	QCOW2_ERR_DEV_TOO_SMALL,
	QCOW2_ERR_L1_TOO_SMALL,
	QCOW2_ERR_L1_TOO_LARGE,
	QCOW2_ERR_L1_OFFSET,
	QCOW2_ERR_REFTABLE_OFFSET,
	QCOW2_ERR_REFTABLE_SIZE,
	QCOW2_ERR_SNAPSHOTS_OFFSET,
	QCOW2_ERR_SNAPSHOTS_COUNT,
	QCOW2_ERR_EXTENSION,
	QCOW2_ERR_L1_ENTRY,
	QCOW2_ERR_TABLE_LENGTH,
	QCOW2_ERR_REFTABLE_ENTRY,
	QCOW2_ERR_META_OVERLAP,
	QCOW2_ERR_META_REFCOUNT,
	QCOW2_ERR_MAX
};

/**
 * struct qcow2_refusal - why decoding failed, for ti->error and DMERR.
 * @err: the reason.
 * @value: the offending value (field value, bit mask or entry index).
 */
struct qcow2_refusal {
	enum qcow2_err err;
	u64 value;
};

char *qcow2_err_str(enum qcow2_err err);

int qcow2_decode_header(const void *buf, size_t len, u64 dev_size,
			struct qcow2_geometry *g, struct qcow2_refusal *why);
int qcow2_check_extensions(const void *buf, size_t len,
			   const struct qcow2_geometry *g,
			   struct qcow2_refusal *why);
int qcow2_check_l1_entry(const struct qcow2_geometry *g, u64 l1e);
int qcow2_check_target_len(const struct qcow2_geometry *g, u64 sectors,
			   struct qcow2_refusal *why);

/* Kind of guest cluster an L2 entry describes. */
enum qcow2_cluster_type {
	QCOW2_CLUSTER_UNALLOCATED,
	QCOW2_CLUSTER_ZERO_PLAIN,	/* zero flag, no host cluster */
	QCOW2_CLUSTER_ZERO_ALLOC,	/* zero flag, host cluster kept */
	QCOW2_CLUSTER_NORMAL,
	QCOW2_CLUSTER_COMPRESSED,
	QCOW2_CLUSTER_INVALID,		/* reserved bits, misaligned or beyond the device */
};

/**
 * struct qcow2_l2e_info - decoded L2 entry.
 * @host_offset: host byte offset of the data (cluster-aligned unless
 *	compressed).
 * @compressed_len: bytes of compressed data starting at @host_offset, as
 *	QEMU reads them (a whole number of sectors minus the in-sector start).
 * @copied: COPIED flag.
 * @raw: the entry itself.
 */
struct qcow2_l2e_info {
	u64 raw;
	u64 host_offset;
	u64 compressed_len;
	bool copied;
};

enum qcow2_cluster_type qcow2_decode_l2_entry(const struct qcow2_geometry *g,
					      u64 l2e,
					      struct qcow2_l2e_info *info);
unsigned int qcow2_l2_normal_run(const struct qcow2_geometry *g,
				 const void *l2, unsigned int n,
				 u64 host_offset, bool copied);
unsigned int qcow2_l2_zero_run(const struct qcow2_geometry *g,
			       const void *l2, unsigned int n);

/* Guest address arithmetic; @guest_off < g->size is the caller's duty. */
static inline u64 qcow2_offset_in_cluster(const struct qcow2_geometry *g,
					  u64 off)
{
	return off & (g->cluster_size - 1);
}

static inline u64 qcow2_l1_index(const struct qcow2_geometry *g, u64 guest_off)
{
	return guest_off >> (g->cluster_bits + g->l2_bits);
}

static inline u32 qcow2_l2_index(const struct qcow2_geometry *g, u64 guest_off)
{
	return (guest_off >> g->cluster_bits) & ((1U << g->l2_bits) - 1);
}

/*
 * Guest clusters from @guest_off's to the last one whose L2 entry lies in
 * the same metadata block of 2^@block_bits bytes: one block read maps them
 * all.  L2 tables are cluster-aligned and a block is at most a cluster.
 */
static inline u32 qcow2_l2_block_clusters(const struct qcow2_geometry *g,
					  u64 guest_off, u32 block_bits)
{
	u32 per_block = BIT(min(block_bits, g->cluster_bits)) / sizeof(u64);

	return per_block - (qcow2_l2_index(g, guest_off) & (per_block - 1));
}

u64 qcow2_l1_entries_needed(u64 size, u32 cluster_bits);

/* Encoding of entries the target writes. */
u64 qcow2_encode_l2_entry(enum qcow2_cluster_type type, u64 host_offset,
			  bool copied);
u64 qcow2_encode_l1_entry(u64 l2_offset, bool copied);
void qcow2_compressed_range(const struct qcow2_geometry *g, u64 l2e,
			    u64 *start, u64 *len);

/*
 * Refcounts: 2^refcount_order bits each, packed in refcount blocks of one
 * cluster.  Entries narrower than a byte are packed LSB first; 16, 32 and 64
 * bit entries are big-endian.
 */
static inline u64 qcow2_refcount_max(u32 refcount_order)
{
	return refcount_order == 6 ? U64_MAX : BIT_ULL(1U << refcount_order) - 1;
}

/* log2 of the number of refcounts in one refcount block */
static inline u32 qcow2_refblock_bits(const struct qcow2_geometry *g)
{
	return g->cluster_bits + 3 - g->refcount_order;
}

u64 qcow2_refcount_get(const void *block, u32 refcount_order, u64 index);
void qcow2_refcount_set(void *block, u32 refcount_order, u64 index, u64 value);
u64 qcow2_refcount_find_free(const void *block, u32 refcount_order, u64 start,
			     u64 end);
u64 qcow2_refcount_free_run(const void *block, u32 refcount_order, u64 start,
			    u64 end, u64 max);
u64 qcow2_reftable_clusters_for(const struct qcow2_geometry *g, u64 clusters);
int qcow2_reftable_growth(const struct qcow2_geometry *g, u64 old_entries,
			  u64 dev_clusters, u64 block_index, u64 *first,
			  u64 *clusters);

#endif /* DM_QCOW2DEDUP_FORMAT_H */
