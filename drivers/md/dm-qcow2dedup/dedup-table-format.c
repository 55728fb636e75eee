// SPDX-License-Identifier: GPL-2.0
/*
 * Pure encoders and decoders of the dedup table and of the header
 * extension area: see dedup-table-format.h.
 */
#include <kunit/visibility.h>
#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/string.h>

#include "dm-qcow2dedup-compat.h"
#include "dedup-table-format.h"

static const char * const qdt_errors[QDT_ERR_MAX] = {
	[QDT_OK]		= "ok",
	[QDT_ERR_SHORT]		= "extension shorter than its structure",
	[QDT_ERR_VERSION]	= "unknown table version",
	[QDT_ERR_FLAGS]		= "unknown table flags",
	[QDT_ERR_KEY_LEN]	= "digest length out of range",
	[QDT_ERR_HASH_NAME]	= "hash name not NUL-terminated or empty",
	[QDT_ERR_HASH_MISMATCH]	= "table made with another hash",
	[QDT_ERR_OFFSET]	= "table cluster offset invalid",
	[QDT_ERR_DUPLICATE]	= "table cluster named twice",
	[QDT_ERR_RANGE]		= "slot for a cluster beyond the device",
	[QDT_ERR_METADATA]	= "table cluster is qcow2 metadata",
	[QDT_ERR_GUEST_DATA]	= "table cluster is guest data",
	[QDT_ERR_IO]		= "I/O error reading it or an L2 table",
	[QDT_ERR_LIMIT]		= "far more slots than index_limit allows",
};

const char *qdt_err_str(enum qdt_err err)
{
	return err < QDT_ERR_MAX ? qdt_errors[err] : "unknown";
}
EXPORT_SYMBOL_IF_KUNIT(qdt_err_str);

/**
 * qdt_shape_init() - the tree's shape for clusters of 2^@cluster_bits bytes.
 * @s: filled in.
 * @cluster_bits: from the header (9..21).
 *
 * With 4 KiB clusters the tree describes 2^25 clusters (128 GiB), with
 * 64 KiB clusters more than any device; @max_clusters is capped where
 * host offsets (56 bits) end.
 */
void qdt_shape_init(struct qdt_shape *s, u32 cluster_bits)
{
	u32 bits;

	s->slot_bits = cluster_bits - ilog2(QDT_SLOT_SIZE);
	s->ptr_bits = cluster_bits - 3;
	bits = min(s->slot_bits + 2 * s->ptr_bits, 56 - cluster_bits);
	s->max_clusters = 1ULL << bits;
}
EXPORT_SYMBOL_IF_KUNIT(qdt_shape_init);

/**
 * qdt_offset_valid() - may a table cluster live at byte offset @off?
 * @g: geometry.
 * @off: from the extension, the root or a directory.
 *
 * Cluster-aligned, inside the device, not the header cluster, no bit
 * outside the offset field.
 */
bool qdt_offset_valid(const struct qcow2_geometry *g, u64 off)
{
	return off && !(off & ~QDT_OFFSET_MASK) &&
	       !(off & (g->cluster_size - 1)) &&
	       off <= g->dev_size - g->cluster_size;
}
EXPORT_SYMBOL_IF_KUNIT(qdt_offset_valid);

bool qdt_slot_empty(const u8 *slot)
{
	return !memchr_inv(slot, 0, QDT_SLOT_SIZE);
}
EXPORT_SYMBOL_IF_KUNIT(qdt_slot_empty);

static int refuse(enum qdt_err *why, enum qdt_err err)
{
	*why = err;
	return -EINVAL;
}

/**
 * qdt_decode_ext() - decode and check the dedup table header extension.
 * @data: the extension's data.
 * @len: its length from the extension header.
 * @g: geometry.
 * @info: filled on success.
 * @why: the reason on failure.
 *
 * Return: 0, or -EINVAL with @why set.
 */
int qdt_decode_ext(const void *data, u32 len, const struct qcow2_geometry *g,
		   struct qdt_info *info, enum qdt_err *why)
{
	const struct qdt_ext *e = data;

	*why = QDT_OK;
	memset(info, 0, sizeof(*info));
	if (len < sizeof(*e))
		return refuse(why, QDT_ERR_SHORT);
	if (get_unaligned_be32(&e->version) != QDT_VERSION)
		return refuse(why, QDT_ERR_VERSION);
	info->flags = get_unaligned_be32(&e->flags);
	if (info->flags & ~QDT_FLAGS_KNOWN)
		return refuse(why, QDT_ERR_FLAGS);
	info->key_len = e->key_len;
	if (!info->key_len || info->key_len > QDT_SLOT_SIZE)
		return refuse(why, QDT_ERR_KEY_LEN);
	if (!e->hash[0] || !memchr(e->hash, 0, QDT_HASH_NAME_LEN))
		return refuse(why, QDT_ERR_HASH_NAME);
	memcpy(info->hash, e->hash, QDT_HASH_NAME_LEN);
	info->root = get_unaligned_be64(&e->root_offset);
	if (!qdt_offset_valid(g, info->root))
		return refuse(why, QDT_ERR_OFFSET);
	info->entries = get_unaligned_be64(&e->entries);
	info->generation = get_unaligned_be64(&e->generation);
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qdt_decode_ext);

void qdt_encode_ext(const struct qdt_info *info, struct qdt_ext *ext)
{
	memset(ext, 0, sizeof(*ext));
	put_unaligned_be32(QDT_VERSION, &ext->version);
	put_unaligned_be32(info->flags, &ext->flags);
	put_unaligned_be64(info->root, &ext->root_offset);
	put_unaligned_be64(info->entries, &ext->entries);
	put_unaligned_be64(info->generation, &ext->generation);
	ext->key_len = info->key_len;
	strscpy(ext->hash, info->hash, QDT_HASH_NAME_LEN);
}
EXPORT_SYMBOL_IF_KUNIT(qdt_encode_ext);

/* Walk helper: the extension header at @off, or NULL at the end marker. */
static const struct qcow2_ext_hdr *ext_at(const void *buf, size_t end,
					  size_t off, u32 *type, u32 *elen)
{
	const struct qcow2_ext_hdr *e = buf + off;

	if (end - off < sizeof(*e))
		return ERR_PTR(-EINVAL);
	*type = get_unaligned_be32(&e->type);
	*elen = get_unaligned_be32(&e->len);
	if (*type == QCOW2_EXT_END)
		return NULL;
	if (*elen > end - off - sizeof(*e))
		return ERR_PTR(-EINVAL);
	return e;
}

static size_t ext_span(u32 elen)
{
	return sizeof(struct qcow2_ext_hdr) + ALIGN((size_t)elen, 8);
}

/**
 * qcow2_find_extension() - locate a header extension of type @type.
 * @buf: the image's first cluster, or as much of it as was read.
 * @len: bytes in @buf.
 * @g: geometry (header_length, cluster_size).
 * @type: extension type.
 * @data_off: byte offset of its data in @buf.
 * @data_len: its length.
 *
 * Return: 0, -ENOENT when absent, -EINVAL when the area is malformed.
 */
int qcow2_find_extension(const void *buf, size_t len,
			 const struct qcow2_geometry *g, u32 type,
			 u32 *data_off, u32 *data_len)
{
	size_t end = min_t(u64, len, g->cluster_size), off = g->header_length;

	while (off < end) {
		const struct qcow2_ext_hdr *e;
		u32 t, elen;

		e = ext_at(buf, end, off, &t, &elen);
		if (IS_ERR(e))
			return PTR_ERR(e);
		if (!e)
			return -ENOENT;
		if (t == type) {
			*data_off = off + sizeof(*e);
			*data_len = elen;
			return 0;
		}
		off += ext_span(elen);
	}
	return -EINVAL;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_find_extension);

/* Append bytes at *@pos in @out (capacity @cap); false if they do not fit. */
static bool put(void *out, size_t cap, size_t *pos, const void *src, size_t n)
{
	if (n > cap - *pos)
		return false;
	if (src)
		memcpy(out + *pos, src, n);
	else
		memset(out + *pos, 0, n);
	*pos += n;
	return true;
}

static bool put_ext_hdr(void *out, size_t cap, size_t *pos, u32 type, u32 len)
{
	struct qcow2_ext_hdr h;

	put_unaligned_be32(type, &h.type);
	put_unaligned_be32(len, &h.len);
	return put(out, cap, pos, &h, sizeof(h));
}

/* Does the feature name table @data of @len bytes name @f's bit already? */
static bool feature_named(const void *data, u32 len,
			  const struct qcow2_feature_name *f)
{
	const struct qcow2_feature_name *n = data;
	u32 i;

	for (i = 0; i < len / sizeof(*n); i++)
		if (n[i].type == f->type && n[i].bit == f->bit)
			return true;
	return false;
}

/**
 * qcow2_rewrite_extensions() - the header and extension area with extension
 *	@type set to @data, and @feature in the feature name table.
 * @old: the image's first cluster as read (header and extensions).
 * @len: bytes in @old, and the capacity of @out.
 * @g: geometry (header_length; images with a backing file are refused
 *	earlier, so nothing follows the end marker).
 * @type: the extension to add or replace.
 * @data: its new data, or NULL to remove it.
 * @data_len: bytes of @data.
 * @feature: a feature name table entry to add if missing, or NULL.
 * @out: the new area: the header bytes of @old, then the extensions.
 * @new_end: bytes of @out in use.
 *
 * Other extensions keep their bytes and order; a new extension goes last.
 * Return: 0, -ENOSPC when the result does not fit, -EINVAL for a malformed
 * area.
 */
int qcow2_rewrite_extensions(const void *old, size_t len,
			     const struct qcow2_geometry *g, u32 type,
			     const void *data, u32 data_len,
			     const struct qcow2_feature_name *feature,
			     void *out, size_t *new_end)
{
	size_t end = min_t(u64, len, g->cluster_size), off = g->header_length;
	size_t pos = 0;
	bool named = false, done = false;

	if (off > end)
		return -EINVAL;
	put(out, end, &pos, old, off);
	for (;;) {
		const struct qcow2_ext_hdr *e;
		u32 t, elen;

		if (off >= end)
			return -EINVAL;
		e = ext_at(old, end, off, &t, &elen);
		if (IS_ERR(e))
			return PTR_ERR(e);
		if (!e)
			break;
		/* Padding past the area: no end marker follows, and it is not ours to copy. */
		if (ext_span(elen) > end - off)
			return -EINVAL;
		if (t == type) {
			if (data && (!put_ext_hdr(out, end, &pos, type, data_len) ||
				     !put(out, end, &pos, data, data_len) ||
				     !put(out, end, &pos, NULL, ext_span(data_len) -
					  sizeof(*e) - data_len)))
				return -ENOSPC;
			done = true;
		} else if (t == QCOW2_EXT_FEATURE_TABLE && feature &&
			   !feature_named(e + 1, elen, feature)) {
			u32 n = rounddown(elen, sizeof(*feature));

			if (!put_ext_hdr(out, end, &pos, t, n + sizeof(*feature)) ||
			    !put(out, end, &pos, e + 1, n) ||
			    !put(out, end, &pos, feature, sizeof(*feature)))
				return -ENOSPC;
			named = true;
		} else {
			if (t == QCOW2_EXT_FEATURE_TABLE)
				named = true;
			if (!put(out, end, &pos, e, ext_span(elen)))
				return -ENOSPC;
		}
		off += ext_span(elen);
	}
	if (feature && !named &&
	    (!put_ext_hdr(out, end, &pos, QCOW2_EXT_FEATURE_TABLE, sizeof(*feature)) ||
	     !put(out, end, &pos, feature, sizeof(*feature))))
		return -ENOSPC;
	if (data && !done &&
	    (!put_ext_hdr(out, end, &pos, type, data_len) ||
	     !put(out, end, &pos, data, data_len) ||
	     !put(out, end, &pos, NULL, ext_span(data_len) - sizeof(struct qcow2_ext_hdr) -
		  data_len)))
		return -ENOSPC;
	if (!put(out, end, &pos, NULL, sizeof(struct qcow2_ext_hdr)))
		return -ENOSPC;
	*new_end = pos;
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_rewrite_extensions);

/**
 * qdt_check_pointers() - validate a root or directory cluster.
 * @g: geometry.
 * @buf: the cluster (cluster_size / 8 big-endian offsets).
 * @used: entries that may be non-zero (directories or leaves the device
 *	needs below this one); the rest must be zero.
 * @why: the reason on failure.
 *
 * Return: 0, or -EINVAL with @why set (QDT_ERR_OFFSET or QDT_ERR_RANGE).
 */
int qdt_check_pointers(const struct qcow2_geometry *g, const void *buf, u64 used,
		       enum qdt_err *why)
{
	u64 i, n = g->cluster_size / sizeof(u64);

	for (i = 0; i < n; i++) {
		u64 off = get_unaligned_be64(buf + i * sizeof(u64));

		if (!off)
			continue;
		if (i >= used)
			return refuse(why, QDT_ERR_RANGE);
		if (!qdt_offset_valid(g, off))
			return refuse(why, QDT_ERR_OFFSET);
	}
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qdt_check_pointers);

/**
 * qdt_check_leaf() - validate the slots of leaf @leaf.
 * @s: the tree's shape.
 * @buf: the leaf cluster.
 * @leaf: its index.
 * @dev_clusters: clusters the device holds.
 * @why: the reason on failure.
 *
 * A used slot must describe a cluster of the device other than the
 * header's.  Return: 0, or -EINVAL with @why set to QDT_ERR_RANGE.
 */
int qdt_check_leaf(const struct qdt_shape *s, const void *buf, u64 leaf,
		   u64 dev_clusters, enum qdt_err *why)
{
	u32 i, n = 1U << s->slot_bits;

	for (i = 0; i < n; i++) {
		u64 host = (leaf << s->slot_bits) + i;

		if (!qdt_slot_empty(buf + (size_t)i * QDT_SLOT_SIZE) &&
		    (!host || host >= dev_clusters))
			return refuse(why, QDT_ERR_RANGE);
	}
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qdt_check_leaf);
