/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Pure encoders and decoders of the dedup table's on-disk format
 * (include/uapi/qcow2dedup/dedup-table.h) and of the header extension area
 * that points to it.  No I/O, no allocation, no locking; unit-tested.
 */
#ifndef DM_QCOW2DEDUP_DEDUP_TABLE_FORMAT_H
#define DM_QCOW2DEDUP_DEDUP_TABLE_FORMAT_H

#include <linux/types.h>
#include <qcow2dedup/dedup-table.h>

#include "qcow2-format.h"

/* Why a table is not used; qdt_err_str() gives the message. */
enum qdt_err {
	QDT_OK = 0,
	QDT_ERR_SHORT,
	QDT_ERR_VERSION,
	QDT_ERR_FLAGS,
	QDT_ERR_KEY_LEN,
	QDT_ERR_HASH_NAME,
	QDT_ERR_HASH_MISMATCH,
	QDT_ERR_OFFSET,
	QDT_ERR_DUPLICATE,
	QDT_ERR_RANGE,
	QDT_ERR_METADATA,
	QDT_ERR_GUEST_DATA,
	QDT_ERR_IO,
	QDT_ERR_LIMIT,
	QDT_ERR_MAX
};

const char *qdt_err_str(enum qdt_err err);

/* Index memory a slot the load drops costs until it is zeroed (bytes). */
#define QDT_CLEAR_COST	64U

/**
 * struct qdt_info - the header extension, decoded.
 * @flags: QDT_FLAG_*.
 * @root: byte offset of the root cluster.
 * @entries: slots in use at the last clean close.
 * @generation: activations that opened the table for writing.
 * @key_len: digest bytes per slot.
 * @hash: crypto API name of the digest, NUL-terminated.
 */
struct qdt_info {
	u32 flags;
	u64 root;
	u64 entries;
	u64 generation;
	u32 key_len;
	char hash[QDT_HASH_NAME_LEN];
};

/*
 * Shape of the tree for a cluster size: a leaf holds 2^slot_bits slots, a
 * root or directory 2^ptr_bits offsets.  Host cluster h lives in leaf
 * h >> slot_bits, which is entry (leaf & ptr_mask) of directory
 * leaf >> ptr_bits.
 */
struct qdt_shape {
	u32 slot_bits;
	u32 ptr_bits;
	u64 max_clusters;	/* host clusters the tree can describe */
};

void qdt_shape_init(struct qdt_shape *s, u32 cluster_bits);

static inline u64 qdt_leaf_of(const struct qdt_shape *s, u64 host)
{
	return host >> s->slot_bits;
}

static inline u32 qdt_slot_of(const struct qdt_shape *s, u64 host)
{
	return host & ((1U << s->slot_bits) - 1);
}

static inline u64 qdt_dir_of(const struct qdt_shape *s, u64 leaf)
{
	return leaf >> s->ptr_bits;
}

static inline u32 qdt_dir_slot_of(const struct qdt_shape *s, u64 leaf)
{
	return leaf & ((1U << s->ptr_bits) - 1);
}

int qdt_decode_ext(const void *data, u32 len, const struct qcow2_geometry *g,
		   struct qdt_info *info, enum qdt_err *why);
void qdt_encode_ext(const struct qdt_info *info, struct qdt_ext *ext);
bool qdt_offset_valid(const struct qcow2_geometry *g, u64 off);
bool qdt_slot_empty(const u8 *slot);
int qdt_check_pointers(const struct qcow2_geometry *g, const void *buf, u64 used,
		       enum qdt_err *why);
int qdt_check_leaf(const struct qdt_shape *s, const void *buf, u64 leaf,
		   u64 dev_clusters, enum qdt_err *why);

int qcow2_find_extension(const void *buf, size_t len,
			 const struct qcow2_geometry *g, u32 type,
			 u32 *data_off, u32 *data_len);
int qcow2_rewrite_extensions(const void *old, size_t len,
			     const struct qcow2_geometry *g, u32 type,
			     const void *data, u32 data_len,
			     const struct qcow2_feature_name *feature,
			     void *out, size_t *new_end);

#endif /* DM_QCOW2DEDUP_DEDUP_TABLE_FORMAT_H */
