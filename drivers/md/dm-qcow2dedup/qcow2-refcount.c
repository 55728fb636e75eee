// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2 refcounts: the refcount table, refcount blocks and the cluster
 * allocator.
 *
 * The refcount table is held in memory (at most 8 MiB, usually one
 * cluster); refcount blocks are read and modified through dm-bufio.  Raising
 * a refcount is safe to reach the disk at any time (at worst a leak), so
 * increments go straight into dirty dm-bufio buffers; decrements are staged
 * by the caller and applied here only after the references they drop are on
 * disk (see qcow2_md_commit()).
 *
 * New refcount blocks are placed, as QEMU does, in the first cluster of the
 * range they describe, so they describe themselves.  When the table itself is
 * too small, it is replaced by one that covers the whole device, written in
 * the first range the old table cannot describe, and the header is switched
 * to it with one sector write.
 *
 * Context: every function here runs in the target's worker (may sleep) or
 * in the constructor.
 */
#include <linux/device-mapper.h>
#include <linux/dm-bufio.h>
#include <linux/mm.h>
#include <linux/slab.h>

#include "dm-qcow2dedup-compat.h"
#include "qcow2-metadata-internal.h"

#define DM_MSG_PREFIX "qcow2dedup"

/* Reftable entries: bits 9-63 refcount block offset, bits 0-8 reserved. */
#define QCOW2_REFT_OFFSET_MASK	0xfffffffffffffe00ULL

static u32 rb_bits(struct qcow2_metadata *md)
{
	return qcow2_refblock_bits(&md->geo);
}

/* log2 of the refcounts in one dm-bufio block */
static u32 rb_block_bits(struct qcow2_metadata *md)
{
	return md->block_bits + 3 - md->geo.refcount_order;
}

static u64 refblock_of(struct qcow2_metadata *md, u64 cluster)
{
	u64 b = cluster >> rb_bits(md);

	if (b >= md->reftable_entries)
		return 0;
	return md->reftable[b] & QCOW2_REFT_OFFSET_MASK;
}

/* The dm-bufio block holding @cluster's refcount, and the index inside it. */
static sector_t rc_block(struct qcow2_metadata *md, u64 refblock, u64 cluster,
			 u64 *idx)
{
	u64 entry = cluster & (BIT_ULL(rb_bits(md)) - 1);

	*idx = entry & (BIT_ULL(rb_block_bits(md)) - 1);
	return (refblock >> md->block_bits) + (entry >> rb_block_bits(md));
}

/**
 * qcow2_rc_get() - read a cluster's refcount.
 * @md: metadata.
 * @cluster: host cluster index.
 * @rc: the refcount (0 where no refcount block exists).
 *
 * Return: 0 or a read error.
 */
int qcow2_rc_get(struct qcow2_metadata *md, u64 cluster, u64 *rc)
{
	u64 refblock = refblock_of(md, cluster), idx;
	struct dm_buffer *b;
	void *data;

	*rc = 0;
	if (!refblock)
		return 0;
	data = dm_bufio_read(md->bufio, rc_block(md, refblock, cluster, &idx), &b);
	if (IS_ERR(data))
		return PTR_ERR(data);
	*rc = qcow2_refcount_get(data, md->geo.refcount_order, idx);
	dm_bufio_release(b);
	return 0;
}

/* Write a field of the header (sector 0) and make it durable. */
int qcow2_rc_write_header(struct qcow2_metadata *md, u32 field_off,
			  const void *val, u32 len)
{
	struct dm_buffer *b;
	void *data;
	int r;

	data = dm_bufio_read(md->bufio, 0, &b);
	if (IS_ERR(data))
		return PTR_ERR(data);
	memcpy(data + field_off, val, len);
	dm_bufio_mark_buffer_dirty(b);
	dm_bufio_release(b);
	/* What the header is now, for qcow2_md_unchanged(). */
	memcpy(md->hdr_copy + field_off, val, len);
	r = dm_bufio_write_dirty_buffers(md->bufio);
	return r ? r : dm_bufio_issue_flush(md->bufio);
}

/* Write entry @index of the refcount table at @table_off (on disk). */
static int write_reftable_entry(struct qcow2_metadata *md, u64 table_off,
				u64 index, u64 value)
{
	return qcow2_md_write_be64(md, table_off + index * sizeof(u64), value);
}

static int set_rc(struct qcow2_metadata *md, u64 refblock, u64 cluster,
		  u64 old_expected, u64 value)
{
	struct dm_buffer *b;
	void *data;
	u64 idx, old;

	data = dm_bufio_read(md->bufio, rc_block(md, refblock, cluster, &idx), &b);
	if (IS_ERR(data))
		return PTR_ERR(data);
	old = qcow2_refcount_get(data, md->geo.refcount_order, idx);
	if (old != old_expected) {
		dm_bufio_release(b);
		return -EUCLEAN;
	}
	qcow2_refcount_set(data, md->geo.refcount_order, idx, value);
	dm_bufio_mark_buffer_dirty(b);
	dm_bufio_release(b);
	if (!old && value)
		md->used_clusters++;
	else if (old && !value)
		md->used_clusters--;
	return 0;
}

static int grow_reftable(struct qcow2_metadata *md, u64 block_index);

/*
 * Create the refcount block of range @bi in the first cluster of the range;
 * the range must have none (so every cluster in it is free).
 */
static int create_refblock(struct qcow2_metadata *md, u64 bi)
{
	u64 first = bi << rb_bits(md);
	int r;

	if (bi >= md->reftable_entries) {
		r = grow_reftable(md, bi);
		if (r)
			return r;
		if (md->reftable[bi])	/* the new table's own range */
			return 0;
	}
	if (first >= md->dev_clusters)
		return -ENOSPC;
	/* A range "without" a refcount block that holds metadata: corrupt. */
	if (qcow2_md_is_meta(md, first)) {
		DMERR_LIMIT("metadata cluster %llu is not counted: image corrupt", first);
		return -EUCLEAN;
	}
	r = qcow2_md_meta_note(md, first);
	if (r)
		return r;
	r = qcow2_md_new_cluster(md, first, 0);
	if (r)
		return r;
	md->reftable[bi] = first << md->geo.cluster_bits;
	r = set_rc(md, md->reftable[bi], first, 0, 1);
	/*
	 * The block must be on disk before the table entry that points to it
	 * can be: a table entry to an unwritten block would read as a block
	 * of zero refcounts, itself included.
	 */
	if (!r)
		r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	if (r)
		return r;
	return write_reftable_entry(md, md->geo.refcount_table_offset, bi,
				    md->reftable[bi]);
}

/**
 * qcow2_rc_update() - add @delta to a cluster's refcount.
 * @md: metadata.
 * @cluster: host cluster index.
 * @delta: +1 (or more) to take references, negative to drop them.
 * @new_rc: the refcount after the update, may be NULL.
 *
 * Return: 0; -EUCLEAN if the refcount would leave 0..max (corrupt image or
 * a bug: nothing is changed); a read error.
 */
int qcow2_rc_update(struct qcow2_metadata *md, u64 cluster, s64 delta,
		    u64 *new_rc)
{
	u64 refblock, rc, value;
	int r;

	refblock = refblock_of(md, cluster);
	if (!refblock) {
		if (delta < 0)
			return -EUCLEAN;
		r = create_refblock(md, cluster >> rb_bits(md));
		if (r)
			return r;
		refblock = refblock_of(md, cluster);
	}
	r = qcow2_rc_get(md, cluster, &rc);
	if (r)
		return r;
	/* A lower refcount than references: corrupt input, the caller says so. */
	if (delta < 0 && rc < (u64)-delta)
		return -EUCLEAN;
	if (delta > 0 && rc > qcow2_refcount_max(md->geo.refcount_order) - delta) {
		DMERR_LIMIT("refcount of host cluster %llu is %llu; cannot add %lld",
			    cluster, rc, delta);
		return -EUCLEAN;
	}
	value = rc + delta;
	r = set_rc(md, refblock, cluster, rc, value);
	if (r)
		return r;
	if (!value && cluster < md->free_hint)
		md->free_hint = cluster;
	if (new_rc)
		*new_rc = value;
	return 0;
}

/*
 * Take [@c, @c + @n), free clusters of the dm-bufio block @data of @b (held),
 * the first at @idx: refcount 0 -> 1.  Sets *@n to the clusters taken (the
 * run ends before a metadata cluster: corrupt, refused by the allocation
 * that starts there).
 */
static int take_run(struct qcow2_metadata *md, struct dm_buffer *b, void *data,
		    u64 idx, u64 c, u64 *n, bool meta)
{
	unsigned long next = c;
	u64 i;
	int r;

	if (qcow2_md_is_meta(md, c)) {
		DMERR_LIMIT("metadata cluster %llu has refcount 0: corrupt", c);
		return -EUCLEAN;
	}
	if (*n > 1 && !xa_empty(&md->meta) &&
	    xa_find(&md->meta, &next, c + *n - 1, XA_PRESENT))
		*n = next - c;
	/* Noted before it is counted: -ENOMEM changes nothing. */
	if (meta) {
		r = qcow2_md_meta_note(md, c);
		if (r)
			return r;
	}
	for (i = 0; i < *n; i++)
		qcow2_refcount_set(data, md->geo.refcount_order, idx + i, 1);
	dm_bufio_mark_buffer_dirty(b);
	md->used_clusters += *n;
	md->free_hint = c + *n;
	return 0;
}

/**
 * qcow2_rc_alloc() - allocate free clusters in a row (refcount 0 -> 1).
 * @md: metadata.
 * @cluster: the first cluster's index.
 * @meta: one cluster that will hold metadata: noted in @md->meta
 *	(qcow2_md_is_meta()).
 * @max: clusters wanted, >= 1 (1 with @meta).
 * @count: clusters allocated, 1 to @max: the free ones after the first
 *	in the same dm-bufio block of refcounts.
 *
 * Scans from a hint that follows the last allocation and is moved back by
 * frees, so freed space is reused first.  A run lets a write of several new
 * clusters go to the device as one bio.
 *
 * Return: 0, -ENOSPC when no cluster of the device is free, or an error.
 */
int qcow2_rc_alloc(struct qcow2_metadata *md, u64 *cluster, bool meta, u64 max,
		   u64 *count)
{
	u64 per_block = BIT_ULL(rb_block_bits(md));
	u64 scanned = 0, c = md->free_hint;
	int r;

	while (scanned < md->dev_clusters) {
		u64 refblock, idx, end, i, n;
		struct dm_buffer *b;
		void *data;

		if (c >= md->dev_clusters)
			c = 0;
		refblock = refblock_of(md, c);
		if (!refblock) {
			/* A range without a refcount block is entirely free. */
			r = create_refblock(md, c >> rb_bits(md));
			if (r)
				return r;
			continue;
		}
		data = dm_bufio_read(md->bufio, rc_block(md, refblock, c, &idx), &b);
		if (IS_ERR(data))
			return PTR_ERR(data);
		end = min(per_block, idx + (md->dev_clusters - c));
		i = qcow2_refcount_find_free(data, md->geo.refcount_order, idx, end);
		scanned += i - idx;
		c += i - idx;
		if (i < end) {
			n = meta ? 1 : 1 + qcow2_refcount_free_run(data, md->geo.refcount_order,
								    i + 1, end, max - 1);
			r = take_run(md, b, data, i, c, &n, meta);
			dm_bufio_release(b);
			if (r)
				return r;
			*cluster = c;
			*count = n;
			return 0;
		}
		dm_bufio_release(b);
	}
	return -ENOSPC;
}

/*
 * Replace the refcount table by one that covers the whole device and
 * @block_index.  The new table and the refcount block describing it go in
 * the first range the old table cannot describe; the header switches to it
 * once both are on disk; the old table's clusters are freed at the next
 * commit.
 */
static int grow_reftable(struct qcow2_metadata *md, u64 block_index)
{
	struct qcow2_geometry *g = &md->geo;
	u64 old_entries = md->reftable_entries, old_off = g->refcount_table_offset;
	u32 old_clusters = g->refcount_table_clusters;
	u64 k, entries, first, i;
	struct {
		__be64 off;
		__be32 clusters;
	} __packed hdr;
	u64 *table, *old_table = md->reftable;
	int r;

	r = qcow2_reftable_growth(g, old_entries, md->dev_clusters, block_index,
				  &first, &k);
	if (r) {
		DMERR_LIMIT("cannot grow the refcount table for refcount block %llu",
			    block_index);
		return r;
	}
	entries = k << (g->cluster_bits - 3);
	table = kvcalloc(entries, sizeof(u64), GFP_NOIO);
	if (!table)
		return -ENOMEM;
	for (i = 0; i <= k && !r; i++)
		r = qcow2_md_meta_note(md, first + i);
	if (r) {
		while (i--)
			xa_erase(&md->meta, first + i);
		goto bad;
	}
	memcpy(table, old_table, old_entries * sizeof(u64));
	table[old_entries] = first << g->cluster_bits;

	/* The new refcount block counts itself and the new table. */
	r = qcow2_md_new_cluster(md, first, 0);
	if (r)
		goto bad;
	md->reftable = table;
	md->reftable_entries = entries;
	for (i = 0; i <= k && !r; i++)
		r = set_rc(md, table[old_entries], first + i, 0, 1);
	if (r)
		goto restore;

	/* Write the table into its clusters; they hold nothing yet. */
	for (i = 0; i < k && !r; i++)
		r = qcow2_md_new_cluster(md, first + 1 + i, 0);
	for (i = 0; i < entries && !r; i++)
		if (table[i])
			r = write_reftable_entry(md, (first + 1) << g->cluster_bits,
						 i, table[i]);
	if (!r)
		r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	if (r)
		goto restore;

	/* Offset and size are adjacent in sector 0: the switch is atomic. */
	put_unaligned_be64((first + 1) << g->cluster_bits, &hdr.off);
	put_unaligned_be32(k, &hdr.clusters);
	r = qcow2_rc_write_header(md, offsetof(struct qcow2_header, refcount_table_offset),
				  &hdr, sizeof(hdr));
	if (r)
		goto restore;
	g->refcount_table_offset = (first + 1) << g->cluster_bits;
	g->refcount_table_clusters = k;
	kvfree(old_table);

	DMINFO("refcount table grown to %llu clusters at host cluster %llu",
	       k, first + 1);
	dm_bufio_forget_buffers(md->bufio, old_off >> md->block_bits,
				((u64)old_clusters << g->cluster_bits) >> md->block_bits);
	/* The old table is free once the header switch is on disk: it is. */
	for (i = 0; i < old_clusters && !r; i++) {
		xa_erase(&md->meta, (old_off >> g->cluster_bits) + i);
		r = qcow2_rc_update(md, (old_off >> g->cluster_bits) + i, -1, NULL);
	}
	return r;
restore:
	md->reftable = old_table;
	md->reftable_entries = old_entries;
bad:
	kvfree(table);
	return r;
}

/**
 * qcow2_rc_load() - read the refcount table and count used clusters.
 * @md: metadata with a decoded header.
 *
 * Context: constructor.
 * Return: 0, -EINVAL for a corrupt refcount table entry, or a read error.
 */
int qcow2_rc_load(struct qcow2_metadata *md)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 bytes = (u64)g->refcount_table_clusters << g->cluster_bits;
	u64 i, c;
	int r;

	md->dev_clusters = g->dev_size >> g->cluster_bits;
	md->reftable_entries = bytes / sizeof(u64);
	md->reftable = kvmalloc(bytes, GFP_KERNEL);
	if (!md->reftable)
		return -ENOMEM;
	r = qcow2_md_read_bytes(md, g->refcount_table_offset, md->reftable, bytes);
	if (r)
		return r;
	for (i = 0; i < md->reftable_entries; i++) {
		u64 off;

		md->reftable[i] = get_unaligned_be64(&md->reftable[i]);
		off = md->reftable[i] & QCOW2_REFT_OFFSET_MASK;
		if ((md->reftable[i] & ~QCOW2_REFT_OFFSET_MASK) ||
		    (off & (g->cluster_size - 1)) || off > g->dev_size ||
		    g->dev_size - off < g->cluster_size)
			return -EUCLEAN;
	}

	/* Count used clusters, a refcount block at a time. */
	for (i = 0; i < md->reftable_entries; i++) {
		u64 first = i << rb_bits(md), n, rb = md->reftable[i];

		if (!rb || first >= md->dev_clusters)
			continue;
		n = min(BIT_ULL(rb_bits(md)), md->dev_clusters - first);
		dm_bufio_prefetch(md->bufio, rb >> md->block_bits,
				  g->cluster_size >> md->block_bits);
		for (c = 0; c < n; ) {
			u64 idx, end;
			struct dm_buffer *b;
			void *data = dm_bufio_read(md->bufio,
						   rc_block(md, rb, first + c, &idx), &b);

			if (IS_ERR(data))
				return PTR_ERR(data);
			end = min(BIT_ULL(rb_block_bits(md)), idx + (n - c));
			for (; idx < end; idx++, c++)
				if (qcow2_refcount_get(data, g->refcount_order, idx))
					md->used_clusters++;
			dm_bufio_release(b);
		}
	}
	return 0;
}
