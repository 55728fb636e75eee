// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2 metadata: header, L1 and L2 tables, through dm-bufio.
 *
 * The L1 table (at most 32 MiB, usually a few KiB) is held in memory so that
 * map() finds it without I/O.  L2 tables and refcount blocks are read on
 * demand through a dm-bufio client whose block size is min(cluster, 4 KiB),
 * so a lookup in a 2 MiB L2 table reads 4 KiB.  map() uses dm_bufio_get(),
 * which never issues I/O (it takes a per-tree rw_semaphore for reading, as
 * in dm-thin's map).  DM_BUFIO_CLIENT_NO_SLEEP is not an option: that mode
 * does not support writing buffers back (dm_bufio_write_dirty_buffers()
 * sleeps under the client's spinlock, and dm_bufio_forget_buffers() BUGs).
 *
 * Writes.  dm-bufio may write a dirty buffer back at any time, so a buffer
 * only ever holds changes that are safe on disk at once: refcount increments,
 * and new L2 tables or refcount blocks nothing points to yet.  New L1/L2
 * entries are staged in @pending/@pending_l1 (which lookups consult first)
 * and refcount decrements in @decrements.  qcow2_md_commit() then writes, in
 * this order, with a flush after each step:
 *   1. every dirty buffer (refcount increments, new tables; the guest data
 *      of staged entries was written before the entries were staged);
 *   2. the staged L1 and L2 entries;
 *   3. the staged decrements, after the readers that may still use a cluster
 *      whose last reference was dropped have finished.
 */
#include <linux/device-mapper.h>
#include <linux/delay.h>
#include <linux/dm-bufio.h>
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "dm-qcow2dedup-compat.h"
#include "qcow2-metadata-internal.h"

#define DM_MSG_PREFIX "qcow2dedup"

/* xarray values hold 63 bits: COPIED (bit 63) moves to reserved bit 1. */
#define PENDING_COPIED	BIT_ULL(1)

static void *pending_encode(u64 e)
{
	u64 v = e & ~QCOW2_OFLAG_COPIED;

	if (e & QCOW2_OFLAG_COPIED)
		v |= PENDING_COPIED;
	return xa_mk_value(v);
}

static u64 pending_decode(void *p)
{
	u64 v = xa_to_value(p);

	if (v & PENDING_COPIED)
		v = (v & ~PENDING_COPIED) | QCOW2_OFLAG_COPIED;
	return v;
}

/*
 * Memory.  Staging must not fail half-way for want of memory: every slot a
 * staging function will store into is reserved first (xa_reserve()), and a
 * failed reservation returns -ENOMEM with nothing changed, so that the
 * caller can simply try again later.  A store into a reserved slot, or over
 * an existing entry, needs no memory.
 */
#define MD_GFP	(GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN)

static u64 guest_cluster(struct qcow2_metadata *md, u64 guest_off)
{
	return guest_off >> md->geo.cluster_bits;
}

/*
 * Copy @len bytes at device offset @off from the metadata buffers to @to,
 * or, with @to NULL, from @from into them (marked dirty).
 */
static int copy_bytes(struct qcow2_metadata *md, u64 off, void *to,
		      const void *from, size_t len)
{
	u32 bsize = 1U << md->block_bits;

	while (len) {
		struct dm_buffer *b;
		u32 in = off & (bsize - 1);
		size_t n = min_t(size_t, len, bsize - in);
		void *data = dm_bufio_read(md->bufio, off >> md->block_bits, &b);

		if (IS_ERR(data))
			return PTR_ERR(data);
		if (to) {
			memcpy(to, data + in, n);
			to += n;
		} else {
			memcpy(data + in, from, n);
			from += n;
			dm_bufio_mark_buffer_dirty(b);
		}
		dm_bufio_release(b);
		off += n;
		len -= n;
	}
	return 0;
}

/**
 * qcow2_md_read_bytes() - copy @len bytes of metadata at device offset @off.
 * @md: metadata.
 * @off: device byte offset.
 * @buf: destination.
 * @len: bytes; [@off, @off + @len) must lie inside the device.
 *
 * Return: 0 or a negative errno from the read.
 */
int qcow2_md_read_bytes(struct qcow2_metadata *md, u64 off, void *buf,
			size_t len)
{
	if (len)
		dm_bufio_prefetch(md->bufio, off >> md->block_bits,
				  ((off + len - 1) >> md->block_bits) -
				  (off >> md->block_bits) + 1);
	return copy_bytes(md, off, buf, NULL, len);
}

/* Write one big-endian 64-bit metadata word at device offset @pos. */
int qcow2_md_write_be64(struct qcow2_metadata *md, u64 pos, u64 value)
{
	struct dm_buffer *b;
	void *data;

	data = dm_bufio_read(md->bufio, pos >> md->block_bits, &b);
	if (IS_ERR(data))
		return PTR_ERR(data);
	put_unaligned_be64(value, data + (pos & (BIT_ULL(md->block_bits) - 1)));
	dm_bufio_mark_buffer_dirty(b);
	dm_bufio_release(b);
	return 0;
}

/**
 * qcow2_md_new_cluster() - fill the buffers of a new metadata cluster.
 * @md: metadata.
 * @cluster: host cluster index; its refcount is already raised.
 * @copy_from: byte offset of a cluster to copy, or 0 for zeros.
 *
 * The buffers are dirty and may reach the disk at any time: nothing points
 * to the cluster yet.
 */
int qcow2_md_new_cluster(struct qcow2_metadata *md, u64 cluster, u64 copy_from)
{
	u64 nr = md->geo.cluster_size >> md->block_bits, i;
	sector_t dst = (cluster << md->geo.cluster_bits) >> md->block_bits;

	for (i = 0; i < nr; i++) {
		struct dm_buffer *b, *sb;
		void *data = dm_bufio_new(md->bufio, dst + i, &b), *src;

		if (IS_ERR(data))
			return PTR_ERR(data);
		if (copy_from) {
			src = dm_bufio_read(md->bufio, (copy_from >> md->block_bits) + i, &sb);
			if (IS_ERR(src)) {
				dm_bufio_release(b);
				return PTR_ERR(src);
			}
			memcpy(data, src, BIT(md->block_bits));
			dm_bufio_release(sb);
		} else {
			memset(data, 0, BIT(md->block_bits));
		}
		dm_bufio_mark_buffer_dirty(b);
		dm_bufio_release(b);
	}
	return 0;
}

static int load_l1(struct qcow2_metadata *md, struct qcow2_refusal *why)
{
	const struct qcow2_geometry *g = &md->geo;
	u32 i;
	int r;

	if (!g->l1_size)
		return 0;
	md->l1 = kvmalloc_array(g->l1_size, sizeof(u64), GFP_KERNEL);
	if (!md->l1)
		return -ENOMEM;
	r = qcow2_md_read_bytes(md, g->l1_table_offset, md->l1,
				(size_t)g->l1_size * sizeof(u64));
	if (r)
		return r;
	for (i = 0; i < g->l1_size; i++) {
		md->l1[i] = get_unaligned_be64(&md->l1[i]);
		if (qcow2_check_l1_entry(g, md->l1[i])) {
			why->err = QCOW2_ERR_L1_ENTRY;
			why->value = i;
			return -EINVAL;
		}
	}
	return 0;
}

/* Read the first cluster (or what the device has of it) and decode it. */
static int read_header(struct qcow2_metadata *md, sector_t target_len,
		       struct qcow2_refusal *why)
{
	u64 dev_size = bdev_nr_bytes(md->bdev);
	struct qcow2_geometry *g = &md->geo;
	struct dm_buffer *b;
	size_t len;
	void *buf, *sec;
	int r;

	if (dev_size < SECTOR_SIZE) {
		why->err = QCOW2_ERR_SHORT;
		why->value = dev_size;
		return -EINVAL;
	}
	/* Sector 0 holds every field needed to learn the cluster size. */
	sec = dm_bufio_read(md->bufio, 0, &b);
	if (IS_ERR(sec))
		return PTR_ERR(sec);
	r = qcow2_decode_header(sec, SECTOR_SIZE, dev_size, g, why);
	dm_bufio_release(b);
	/*
	 * A header_length beyond sector 0 is only an error if it is beyond the
	 * first cluster too: cluster_bits was validated before header_length,
	 * so decode again from the whole first cluster, extensions included.
	 */
	if (r && why->err != QCOW2_ERR_HEADER_LENGTH)
		return r;
	len = min_t(u64, dev_size, g->cluster_size);
	buf = kvmalloc(len, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	r = qcow2_md_read_bytes(md, 0, buf, len);
	if (!r)
		r = qcow2_decode_header(buf, len, dev_size, g, why);
	if (!r)
		r = qcow2_check_extensions(buf, len, g, why);
	if (!r)
		r = qcow2_check_target_len(g, target_len, why);
	if (r) {
		kvfree(buf);
		return r;
	}
	md->hdr_copy = buf;
	md->hdr_len = len;
	return 0;
}

/* Note the clusters of [@off, @off + @len) as metadata of @md. */
static int meta_add(struct qcow2_metadata *md, u64 off, u64 len, struct qcow2_refusal *why)
{
	u64 c, rc;
	int r;

	if (!len)
		return 0;
	for (c = off >> md->geo.cluster_bits;
	     c <= (off + len - 1) >> md->geo.cluster_bits; c++) {
		r = xa_insert(&md->meta, c, xa_mk_value(1), GFP_KERNEL);
		if (r == -EBUSY) {
			why->err = QCOW2_ERR_META_OVERLAP;
			why->value = c << md->geo.cluster_bits;
			return -EINVAL;
		}
		if (!r)
			r = qcow2_rc_get(md, c, &rc);
		if (r)
			return r;
		if (!rc) {
			why->err = QCOW2_ERR_META_REFCOUNT;
			why->value = c << md->geo.cluster_bits;
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * A writable image's metadata must not overlap and must be counted: a
 * structure with refcount 0 would be handed out by the allocator and
 * overwritten (a crafted image whose refcount table leaves out the header
 * had the header zeroed that way).
 */
static int check_metadata(struct qcow2_metadata *md, struct qcow2_refusal *why)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 i;
	int r;

	r = meta_add(md, 0, g->cluster_size, why);
	if (!r)
		r = meta_add(md, g->l1_table_offset, (u64)g->l1_size * sizeof(u64), why);
	if (!r)
		r = meta_add(md, g->refcount_table_offset,
			     (u64)g->refcount_table_clusters << g->cluster_bits, why);
	if (!r && g->nb_snapshots)
		r = meta_add(md, g->snapshots_offset,
			     (u64)g->nb_snapshots * sizeof(struct qcow2_snapshot_hdr), why);
	for (i = 0; !r && i < md->reftable_entries; i++)
		if (md->reftable[i] & ~(u64)(g->cluster_size - 1))
			r = meta_add(md, md->reftable[i] & ~(u64)(g->cluster_size - 1),
				     g->cluster_size, why);
	for (i = 0; !r && i < g->l1_size; i++) {
		r = meta_add(md, md->l1[i] & QCOW2_L1E_OFFSET_MASK,
			     md->l1[i] & QCOW2_L1E_OFFSET_MASK ? g->cluster_size : 0, why);
		if (!(i & 1023))
			cond_resched();
	}
	return r;
}

/**
 * qcow2_md_meta_note() - cluster @cluster becomes metadata (a new L2
 *	table, refcount block, refcount table or dedup table cluster).
 * @md: metadata.
 * @cluster: host cluster index, not yet counted.
 *
 * Return: 0 or -ENOMEM (nothing changed).
 */
int qcow2_md_meta_note(struct qcow2_metadata *md, u64 cluster)
{
	return xa_err(xa_store(&md->meta, cluster, xa_mk_value(1), MD_GFP));
}

/**
 * qcow2_md_is_meta() - is the cluster metadata?
 * @md: metadata.
 * @cluster: host cluster index.
 *
 * Context: any (RCU).
 */
bool qcow2_md_is_meta(struct qcow2_metadata *md, u64 cluster)
{
	return xa_load(&md->meta, cluster);
}

/* Does the host range of a data entry touch metadata? */
static bool points_at_meta(struct qcow2_metadata *md, enum qcow2_cluster_type type,
			   const struct qcow2_l2e_info *info)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 start, len, c;

	if (xa_empty(&md->meta))
		return false;
	switch (type) {
	case QCOW2_CLUSTER_NORMAL:
	case QCOW2_CLUSTER_ZERO_ALLOC:
		return xa_load(&md->meta, info->host_offset >> g->cluster_bits);
	case QCOW2_CLUSTER_COMPRESSED:
		qcow2_compressed_range(g, info->raw, &start, &len);
		for (c = start >> g->cluster_bits; c <= (start + len - 1) >> g->cluster_bits; c++)
			if (xa_load(&md->meta, c))
				return true;
		return false;
	default:
		return false;
	}
}

static struct dm_bufio_client *new_client(struct block_device *bdev, u32 bits)
{
	return dm_bufio_client_create(bdev, 1U << bits, 1, 0, NULL, NULL, 0);
}

/**
 * qcow2_md_open() - read and validate an image's header and L1 table.
 * @bdev: the device holding the image.
 * @target_len: length of the dm target in sectors.
 * @writable: the image will be written: load the refcounts too.
 * @wait_for_readers: waits until no bio still uses a cluster whose last
 *	reference was staged to drop before the commit that calls it began
 *	(see qcow2_md_commit()).
 * @ctx: argument of @wait_for_readers.
 * @why: on -EINVAL, why the image was refused.
 *
 * Nothing is written to the device.
 * Context: process context, may sleep.
 * Return: the metadata object or an ERR_PTR.
 */
struct qcow2_metadata *qcow2_md_open(struct block_device *bdev,
				     sector_t target_len, bool writable,
				     void (*wait_for_readers)(void *ctx),
				     void *ctx, struct qcow2_refusal *why)
{
	struct qcow2_metadata *md;
	int r;

	why->err = QCOW2_OK;
	md = kzalloc(sizeof(*md), GFP_KERNEL);
	if (!md)
		return ERR_PTR(-ENOMEM);
	md->bdev = bdev;
	md->writable = writable;
	md->wait_for_readers = wait_for_readers;
	md->ctx = ctx;
	xa_init(&md->pending);
	xa_init(&md->pending_l1);
	xa_init(&md->decrements);
	xa_init(&md->unique_next);
	xa_init(&md->unique_ready);
	xa_init(&md->unique_scan);
	xa_init(&md->meta);

	/* A 512-byte client first: the cluster size is not known yet. */
	md->block_bits = SECTOR_SHIFT;
	md->bufio = new_client(bdev, md->block_bits);
	if (IS_ERR(md->bufio)) {
		r = PTR_ERR(md->bufio);
		md->bufio = NULL;
		goto bad;
	}
	r = read_header(md, target_len, why);
	if (r)
		goto bad;

	/* Blocks of min(cluster, 4 KiB); smaller if the device size needs it. */
	md->block_bits = min_t(u32, md->geo.cluster_bits, PAGE_SHIFT);
	while (md->block_bits > SECTOR_SHIFT &&
	       (md->geo.dev_size & (BIT_ULL(md->block_bits) - 1)))
		md->block_bits--;
	if (md->block_bits != SECTOR_SHIFT) {
		dm_bufio_client_destroy(md->bufio);
		md->bufio = new_client(bdev, md->block_bits);
		if (IS_ERR(md->bufio)) {
			r = PTR_ERR(md->bufio);
			md->bufio = NULL;
			goto bad;
		}
	}
	r = load_l1(md, why);
	if (r)
		goto bad;
	if (writable) {
		r = qcow2_rc_load(md);
		if (r == -EUCLEAN) {
			why->err = QCOW2_ERR_REFTABLE_ENTRY;
			why->value = 0;
			r = -EINVAL;
		}
		if (!r)
			r = check_metadata(md, why);
		if (r)
			goto bad;
	}
	return md;
bad:
	qcow2_md_close(md);
	return ERR_PTR(r);
}

/**
 * qcow2_md_close() - free the metadata object; nothing is written.
 * @md: metadata, may be NULL.
 */
void qcow2_md_close(struct qcow2_metadata *md)
{
	if (!md)
		return;
	xa_destroy(&md->pending);
	xa_destroy(&md->pending_l1);
	xa_destroy(&md->decrements);
	xa_destroy(&md->meta);
	qcow2_copied_destroy(md);
	if (md->bufio)
		dm_bufio_client_destroy(md->bufio);
	kvfree(md->reftable);
	kvfree(md->l1);
	kvfree(md->hdr_copy);
	kfree(md);
}

/* Does the table of @n big-endian u64 at @off equal @mem (CPU order)? */
static int table_unchanged(struct qcow2_metadata *md, u64 off, const u64 *mem, u64 n)
{
	const u64 chunk = 512;
	u64 i, done, k;
	__be64 *buf;
	int r = 1;

	buf = kmalloc_array(chunk, sizeof(*buf), GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	for (done = 0; done < n && r == 1; done += k) {
		k = min(chunk, n - done);
		r = qcow2_md_read_bytes(md, off + done * sizeof(u64), buf, k * sizeof(u64));
		if (r)
			break;
		r = 1;
		for (i = 0; i < k && r; i++)
			if (be64_to_cpu(buf[i]) != mem[done + i])
				r = 0;
	}
	kfree(buf);
	return r;
}

/**
 * qcow2_md_unchanged() - after a suspend, is the image still what this
 *	object describes?
 * @md: metadata, with nothing staged (the final commit of the suspend).
 *
 * Another program may have written the image while the device was
 * suspended (qemu-img snapshot, resize, check -r).  The cached L2 tables
 * and refcount blocks are dropped, so they are read again anyway; the
 * header cluster, the L1 table and the refcount table are compared with
 * the object's copies.  QEMU clears the dedup table's autoclear bit when it
 * opens the image read-write, so a QEMU writer always changes the header.
 *
 * Context: preresume, no I/O in flight.
 * Return: 1 unchanged, 0 changed, or a negative errno.
 */
int qcow2_md_unchanged(struct qcow2_metadata *md)
{
	const struct qcow2_geometry *g = &md->geo;
	void *buf;
	int r;

	dm_bufio_forget_buffers(md->bufio, 0, g->dev_size >> md->block_bits);
	if (bdev_nr_bytes(md->bdev) != g->dev_size)
		return 0;
	buf = kvmalloc(md->hdr_len, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	r = qcow2_md_read_bytes(md, 0, buf, md->hdr_len);
	if (!r)
		r = !memcmp(buf, md->hdr_copy, md->hdr_len);
	kvfree(buf);
	if (r == 1 && g->l1_size)
		r = table_unchanged(md, g->l1_table_offset, md->l1, g->l1_size);
	if (r == 1 && md->reftable)
		r = table_unchanged(md, g->refcount_table_offset, md->reftable,
				    md->reftable_entries);
	return r;
}

/**
 * qcow2_md_geometry() - the decoded header.
 * @md: metadata.
 *
 * Context: any.
 */
const struct qcow2_geometry *qcow2_md_geometry(struct qcow2_metadata *md)
{
	return &md->geo;
}

/**
 * qcow2_md_lookup() - find where guest byte @guest_off is stored.
 * @md: metadata.
 * @guest_off: guest byte offset, below the virtual size.
 * @may_block: false in map(): only cached metadata is consulted.
 * @type: the cluster type.
 * @info: the decoded L2 entry.
 * @pending: the entry is staged, not yet on disk.
 *
 * Staged entries come first.  The worker writes a staged entry into its L2
 * buffer before it removes it from @pending, so a lookup that misses the
 * staged entry finds the new one in the buffer.
 *
 * Context: map() if !@may_block (no I/O; may wait briefly for a dm-bufio
 *	tree lock); else the worker, or any process context beside it that
 *	holds off the freeing of clusters from before the lookup to the end
 *	of what it found (the target's reader generations): the worker
 *	changes nothing such a lookup reads before the change is safe to
 *	see, as for map().
 * Return: 0; -EWOULDBLOCK if !@may_block and the L2 block is not cached;
 * -EIO if the L1 index is out of range; a read error.
 */
int qcow2_md_lookup(struct qcow2_metadata *md, u64 guest_off, bool may_block,
		    enum qcow2_cluster_type *type, struct qcow2_l2e_info *info,
		    bool *pending)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 l1_index = qcow2_l1_index(g, guest_off);
	u64 l2_off, pos, l2e;
	struct dm_buffer *b;
	void *data, *p;

	if (l1_index >= g->l1_size)
		return -EIO;
	p = xa_load(&md->pending, guest_cluster(md, guest_off));
	*pending = !!p;
	if (p) {
		/* Staged by the worker: never into metadata. */
		*type = qcow2_decode_l2_entry(g, pending_decode(p), info);
		return 0;
	}
	/* Pairs with the write barrier in apply_pending(). */
	smp_rmb();
	l2_off = READ_ONCE(md->l1[l1_index]) & QCOW2_L1E_OFFSET_MASK;
	if (!l2_off) {
		*type = QCOW2_CLUSTER_UNALLOCATED;
		memset(info, 0, sizeof(*info));
		return 0;
	}
	pos = l2_off + (u64)qcow2_l2_index(g, guest_off) * sizeof(u64);
	if (may_block)
		data = dm_bufio_read(md->bufio, pos >> md->block_bits, &b);
	else
		data = dm_bufio_get(md->bufio, pos >> md->block_bits, &b);
	if (!data)
		return -EWOULDBLOCK;
	if (IS_ERR(data))
		return PTR_ERR(data);
	l2e = get_unaligned_be64(data + (pos & (BIT_ULL(md->block_bits) - 1)));
	dm_bufio_release(b);

	*type = qcow2_decode_l2_entry(g, l2e, info);
	/*
	 * Guest data in a metadata cluster: reading would show metadata,
	 * writing in place would overwrite it, dropping the reference would
	 * free it.  Corrupt, as QEMU's overlap checks say.
	 */
	if (points_at_meta(md, *type, info))
		*type = QCOW2_CLUSTER_INVALID;
	return 0;
}

/**
 * qcow2_md_lookup_block() - qcow2_md_lookup() of guest cluster @gc and of
 *	the following ones whose L2 entries lie in the same metadata block,
 *	with one read of that block: for walks of the whole active L1.
 * @md: metadata.
 * @gc: first guest cluster, inside the virtual disk.
 * @max: clusters wanted, at least one.
 * @types: their types.
 * @infos: their entries.
 * @pending: whether each is staged (as qcow2_md_lookup()'s @pending).
 *
 * Context: the worker (may block).
 * Return: clusters looked up (1..@max), or -EIO (an L1 index out of
 * range) or a read error.
 */
int qcow2_md_lookup_block(struct qcow2_metadata *md, u64 gc, unsigned int max,
			  enum qcow2_cluster_type *types, struct qcow2_l2e_info *infos,
			  bool *pending)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 guest_off = gc << g->cluster_bits, l2_off, pos;
	u64 l1_index = qcow2_l1_index(g, guest_off);
	struct dm_buffer *b = NULL;
	unsigned int i, n;
	void *data = NULL;

	if (l1_index >= g->l1_size)
		return -EIO;
	n = min_t(u64, max, DIV_ROUND_UP(g->size, g->cluster_size) - gc);
	n = min(n, qcow2_l2_block_clusters(g, guest_off, md->block_bits));
	n = max(n, 1U);
	for (i = 0; i < n; i++) {
		void *p = xa_load(&md->pending, gc + i);

		pending[i] = !!p;
		if (p)
			types[i] = qcow2_decode_l2_entry(g, pending_decode(p), &infos[i]);
	}
	/* Pairs with the write barrier in apply_pending(). */
	smp_rmb();
	l2_off = READ_ONCE(md->l1[l1_index]) & QCOW2_L1E_OFFSET_MASK;
	pos = l2_off + (u64)qcow2_l2_index(g, guest_off) * sizeof(u64);
	if (l2_off) {
		data = dm_bufio_read(md->bufio, pos >> md->block_bits, &b);
		if (IS_ERR(data))
			return PTR_ERR(data);
		data += pos & (BIT_ULL(md->block_bits) - 1);
	}
	for (i = 0; i < n; i++) {
		if (pending[i])
			continue;
		if (!data) {
			types[i] = QCOW2_CLUSTER_UNALLOCATED;
			memset(&infos[i], 0, sizeof(infos[i]));
			continue;
		}
		types[i] = qcow2_decode_l2_entry(g, get_unaligned_be64(data + i * sizeof(u64)),
						 &infos[i]);
		/* As qcow2_md_lookup(): guest data in metadata is corrupt. */
		if (points_at_meta(md, types[i], &infos[i]))
			types[i] = QCOW2_CLUSTER_INVALID;
	}
	if (b)
		dm_bufio_release(b);
	return n;
}

/*
 * The clusters after @guest_off's that a run from it may cover: up to
 * @max_clusters - 1, to the end of the guest disk, before the first staged
 * entry, and to the end of the next cluster's L2 metadata block (of its
 * whole L2 table if that is unallocated: *@l2_pos 0).  Sets *@l2_pos to the
 * byte offset of the next cluster's L2 entry.  In qcow2_md_lookup()'s
 * order: staged entries first, then the L1 entry and the L2 block, so that
 * an entry applied meanwhile is seen in the tables.
 */
static unsigned int run_window(struct qcow2_metadata *md, u64 guest_off,
			       unsigned int max_clusters, u64 *l2_pos)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 next = guest_off + g->cluster_size;
	u64 gc = guest_cluster(md, guest_off), l2_off;
	unsigned long idx = gc + 1;
	unsigned int n;

	*l2_pos = 0;
	if (max_clusters <= 1 || next >= g->size || qcow2_l1_index(g, next) >= g->l1_size)
		return 0;
	n = min_t(u64, max_clusters - 1, (g->size - next) >> g->cluster_bits);
	n = min(n, BIT(g->l2_bits) - qcow2_l2_index(g, next));
	if (xa_find(&md->pending, &idx, gc + n, XA_PRESENT))
		n = idx - gc - 1;
	/* Pairs with the write barrier in apply_pending(). */
	smp_rmb();
	l2_off = READ_ONCE(md->l1[qcow2_l1_index(g, next)]) & QCOW2_L1E_OFFSET_MASK;
	if (l2_off) {
		*l2_pos = l2_off + (u64)qcow2_l2_index(g, next) * sizeof(u64);
		n = min(n, qcow2_l2_block_clusters(g, next, md->block_bits));
	}
	return n;
}

/**
 * qcow2_md_normal_run() - how many guest clusters from a standard one have
 *	their data right after its data on the host, in cached metadata.
 * @md: metadata.
 * @guest_off: a guest offset qcow2_md_lookup() found standard.
 * @host_offset: the host offset of its cluster, as that lookup found it.
 * @max_clusters: clusters the caller wants, >= 1.
 * @copied: only clusters with COPIED set (for a write in place).
 *
 * Lets map() send a read, or a write in place, of several clusters to the
 * device as one bio.
 * The run covers only clusters without a staged entry, with an L2 entry
 * in the same cached metadata block as the next cluster's, that
 * qcow2_md_lookup() would call standard at the next host cluster and that
 * is no metadata cluster (see run_window()).
 *
 * Context: any, never blocks (map()).
 * Return: clusters from @guest_off's, 1 to @max_clusters.
 */
unsigned int qcow2_md_normal_run(struct qcow2_metadata *md, u64 guest_off,
				 u64 host_offset, unsigned int max_clusters,
				 bool copied)
{
	const struct qcow2_geometry *g = &md->geo;
	unsigned int n, run;
	unsigned long idx;
	struct dm_buffer *b;
	u64 hc, pos;
	void *data;

	n = run_window(md, guest_off, max_clusters, &pos);
	if (!n || !pos)
		return 1;
	data = dm_bufio_get(md->bufio, pos >> md->block_bits, &b);
	if (IS_ERR_OR_NULL(data))
		return 1;
	run = qcow2_l2_normal_run(g, data + (pos & (BIT_ULL(md->block_bits) - 1)), n,
				  host_offset + g->cluster_size, copied);
	dm_bufio_release(b);
	hc = (host_offset >> g->cluster_bits) + 1;
	idx = hc;
	if (run && !xa_empty(&md->meta) &&
	    xa_find(&md->meta, &idx, hc + run - 1, XA_PRESENT))
		run = idx - hc;
	return 1 + run;
}

/**
 * qcow2_md_zero_run() - how many guest clusters from one that reads as
 *	zeros read as zeros too, in cached metadata.
 * @md: metadata.
 * @guest_off: a guest offset qcow2_md_lookup() found unallocated or zero.
 * @max_clusters: clusters the caller wants, >= 1.
 *
 * Lets a read of a sparse range be answered at once.  The run covers only
 * clusters without a staged entry, in the next cluster's L2 metadata block
 * (cached) or its unallocated L2 table (see run_window()).
 *
 * Context: any, never blocks (map()).
 * Return: clusters from @guest_off's, 1 to @max_clusters.
 */
unsigned int qcow2_md_zero_run(struct qcow2_metadata *md, u64 guest_off,
			       unsigned int max_clusters)
{
	unsigned int n, run;
	struct dm_buffer *b;
	void *data;
	u64 pos;

	n = run_window(md, guest_off, max_clusters, &pos);
	if (!n || !pos)
		return 1 + n;
	data = dm_bufio_get(md->bufio, pos >> md->block_bits, &b);
	if (IS_ERR_OR_NULL(data))
		return 1;
	run = qcow2_l2_zero_run(&md->geo, data + (pos & (BIT_ULL(md->block_bits) - 1)), n);
	dm_bufio_release(b);
	return 1 + run;
}

/**
 * qcow2_md_l2_block_clusters() - guest clusters from @guest_off's to the
 *	last one whose L2 entry is in the same metadata block: what one
 *	metadata read maps.
 * @md: metadata.
 * @guest_off: a guest offset.
 */
unsigned int qcow2_md_l2_block_clusters(struct qcow2_metadata *md, u64 guest_off)
{
	return qcow2_l2_block_clusters(&md->geo, guest_off, md->block_bits);
}

/**
 * qcow2_md_clear_autoclear() - before the first write, clear the autoclear
 *	feature bits: this writer maintains none of the structures they vouch
 *	for (persistent bitmaps), as the qcow2 specification requires.
 * @md: metadata.
 */
int qcow2_md_clear_autoclear(struct qcow2_metadata *md)
{
	__be64 zero = 0;
	int r;

	if (!md->geo.autoclear_features)
		return 0;
	r = qcow2_rc_write_header(md, offsetof(struct qcow2_header, autoclear_features),
				  &zero, sizeof(zero));
	if (!r)
		md->geo.autoclear_features = 0;
	return r;
}

static int stage_decrement(struct qcow2_metadata *md, u64 cluster)
{
	void *old = xa_load(&md->decrements, cluster);
	u64 n = old ? xa_to_value(old) : 0;
	int r;

	r = xa_err(xa_store(&md->decrements, cluster, xa_mk_value(n + 1), MD_GFP));
	if (!r)
		md->nr_decrements++;
	return r;
}

/**
 * qcow2_md_prepare_write() - make the L2 table of @guest_off writable.
 * @md: metadata.
 * @guest_off: a guest byte offset.
 *
 * An L1 entry without a table gets a new zeroed table; a table shared with
 * a snapshot (COPIED clear) is copied, and the copy's refcount is one.  The
 * new L1 entry is staged; the old table's reference is dropped at commit.
 * Data clusters keep their refcounts: QEMU counts a data cluster once per L1
 * table that reaches it, whichever L2 table is on the way.
 *
 * Return: 0; -ENOMEM (nothing changed: try again later); -ENOSPC; an I/O
 * error.
 */
int qcow2_md_prepare_write(struct qcow2_metadata *md, u64 guest_off)
{
	u64 i = qcow2_l1_index(&md->geo, guest_off), l1e, old, c, n;
	int r;

	if (xa_load(&md->pending_l1, i))
		return 0;
	l1e = md->l1[i];
	old = l1e & QCOW2_L1E_OFFSET_MASK;
	if (old && (l1e & QCOW2_OFLAG_COPIED))
		return 0;
	r = xa_reserve(&md->pending_l1, i, MD_GFP);
	if (!r && old)
		r = xa_reserve(&md->decrements, old >> md->geo.cluster_bits, MD_GFP);
	if (!r)
		r = qcow2_rc_alloc(md, &c, true, 1, &n);
	if (r) {
		xa_release(&md->pending_l1, i);
		if (old)
			xa_release(&md->decrements, old >> md->geo.cluster_bits);
		return r;
	}
	r = qcow2_md_new_cluster(md, c, old);
	/*
	 * The old table is no longer the active L1's: its reference goes
	 * (a snapshot may still hold it), and it may be freed.
	 */
	if (!r && old) {
		xa_erase(&md->meta, old >> md->geo.cluster_bits);
		r = stage_decrement(md, old >> md->geo.cluster_bits);
	}
	if (!r)
		r = xa_err(xa_store(&md->pending_l1, i,
				    xa_mk_value((c << md->geo.cluster_bits) | 1),
				    MD_GFP));
	if (!r)
		md->nr_l1_pending++;
	return r;
}

/**
 * qcow2_md_alloc() - allocate data clusters in a row (refcount 0 -> 1).
 * @md: metadata.
 * @max: clusters wanted, >= 1.
 * @host_off: the first one's byte offset.
 * @count: clusters allocated, 1 to @max (see qcow2_rc_alloc()).
 *
 * Return: 0, -ENOSPC, or an I/O error.
 */
int qcow2_md_alloc(struct qcow2_metadata *md, unsigned int max, u64 *host_off,
		   unsigned int *count)
{
	u64 c, n;
	int r = qcow2_rc_alloc(md, &c, false, max, &n);

	if (!r) {
		*host_off = c << md->geo.cluster_bits;
		*count = n;
	}
	return r;
}

/**
 * qcow2_md_alloc_meta() - allocate a cluster for metadata of the caller's
 *	(the dedup table): guest data that points there is corrupt, as for
 *	qcow2's own metadata.
 * @md: metadata.
 * @host_off: its byte offset.
 *
 * Return: 0, -ENOSPC, -ENOMEM (nothing changed) or an I/O error.
 */
int qcow2_md_alloc_meta(struct qcow2_metadata *md, u64 *host_off)
{
	u64 c, n;
	int r = qcow2_rc_alloc(md, &c, true, 1, &n);

	if (!r)
		*host_off = c << md->geo.cluster_bits;
	return r;
}

/**
 * qcow2_md_release() - drop the reference of a cluster that was allocated
 *	but will not be used (its data write failed).
 * @md: metadata.
 * @host_off: the cluster's byte offset.
 */
int qcow2_md_release(struct qcow2_metadata *md, u64 host_off)
{
	return stage_decrement(md, host_off >> md->geo.cluster_bits);
}

/*
 * The host clusters an entry's old mapping holds references on: [*first,
 * *last], or *first > *last for none.  QEMU counts every cluster that the
 * bytes of a compressed cluster touch; a crafted descriptor may run past
 * the device, where no cluster has a refcount: those are not counted.
 */
static void old_clusters(struct qcow2_metadata *md, enum qcow2_cluster_type type,
			 const struct qcow2_l2e_info *info, u64 *first, u64 *last)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 start, len;

	*first = 1;
	*last = 0;
	switch (type) {
	case QCOW2_CLUSTER_NORMAL:
	case QCOW2_CLUSTER_ZERO_ALLOC:
		*first = info->host_offset >> g->cluster_bits;
		*last = *first;
		break;
	case QCOW2_CLUSTER_COMPRESSED:
		qcow2_compressed_range(g, info->raw, &start, &len);
		*first = start >> g->cluster_bits;
		*last = min((start + len - 1) >> g->cluster_bits,
			    (g->dev_size >> g->cluster_bits) - 1);
		if (*last < (start + len - 1) >> g->cluster_bits && !md->warned_compressed) {
			md->warned_compressed = true;
			DMWARN("compressed data at %llu runs past the end of the device",
			       info->host_offset);
		}
		break;
	default:
		break;
	}
}

/* Stage the decrements an entry's old mapping owes (slots reserved). */
static int drop_old(struct qcow2_metadata *md, enum qcow2_cluster_type type,
		    const struct qcow2_l2e_info *info)
{
	u64 c, first, last;
	int r = 0;

	old_clusters(md, type, info, &first, &last);
	for (c = first; c <= last && !r; c++)
		r = stage_decrement(md, c);
	return r;
}

/* Reserve what qcow2_md_stage() of guest cluster @gc will store. */
static int reserve_stage(struct qcow2_metadata *md, u64 gc,
			 enum qcow2_cluster_type type,
			 const struct qcow2_l2e_info *info)
{
	u64 c, first, last;
	int r;

	old_clusters(md, type, info, &first, &last);
	r = xa_reserve(&md->pending, gc, MD_GFP);
	for (c = first; c <= last && !r; c++)
		r = xa_reserve(&md->decrements, c, MD_GFP);
	if (r) {
		xa_release(&md->pending, gc);
		for (c = first; c <= last; c++)
			xa_release(&md->decrements, c);
	}
	return r;
}

/**
 * qcow2_md_stage() - point a guest cluster at new data.
 * @md: metadata.
 * @guest_off: guest byte offset in the cluster.
 * @type: NORMAL (at @host_off, refcount one), ZERO_PLAIN or UNALLOCATED.
 * @host_off: for NORMAL, the cluster, whose data is already on the device.
 * @copied: for NORMAL, the refcount is one (COPIED); else it is shared.
 * @old_host: if not NULL, the host cluster offset of the old mapping if it
 *	was a standard cluster, else 0.
 *
 * The caller has called qcow2_md_prepare_write() for @guest_off.  The old
 * mapping's references are dropped at commit.
 * Return: 0; -ENOMEM (nothing changed: try again later); -EUCLEAN for a
 * corrupt old entry; an I/O error.
 */
int qcow2_md_stage(struct qcow2_metadata *md, u64 guest_off,
		   enum qcow2_cluster_type type, u64 host_off, bool copied,
		   u64 *old_host)
{
	u64 gc = guest_cluster(md, guest_off), entry;
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type old;
	bool pending;
	int r;

	r = qcow2_md_lookup(md, guest_off, true, &old, &info, &pending);
	if (r)
		return r;
	if (old == QCOW2_CLUSTER_INVALID)
		return -EUCLEAN;
	r = reserve_stage(md, gc, old, &info);
	if (r)
		return r;
	entry = qcow2_encode_l2_entry(type, host_off,
				      type == QCOW2_CLUSTER_NORMAL && copied);
	r = xa_err(xa_store(&md->pending, gc, pending_encode(entry), MD_GFP));
	if (r)
		return r;
	if (!pending)
		md->nr_pending++;
	if (old_host)
		*old_host = old == QCOW2_CLUSTER_NORMAL ? info.host_offset : 0;
	return drop_old(md, old, &info);
}

/**
 * qcow2_md_reserve_stage() - make the next qcow2_md_stage() of @guest_off
 *	need no memory, for callers that change other state before it.
 * @md: metadata.
 * @guest_off: a guest byte offset.
 *
 * Valid until the next commit.
 * Return: 0, -ENOMEM (nothing changed), -EUCLEAN or an I/O error.
 */
int qcow2_md_reserve_stage(struct qcow2_metadata *md, u64 guest_off)
{
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type old;
	bool pending;
	int r;

	r = qcow2_md_lookup(md, guest_off, true, &old, &info, &pending);
	if (r)
		return r;
	if (old == QCOW2_CLUSTER_INVALID)
		return -EUCLEAN;
	return reserve_stage(md, guest_cluster(md, guest_off), old, &info);
}

/**
 * qcow2_md_refcount() - the refcount of the cluster at @host_off.
 * @md: metadata (writable).
 * @host_off: a cluster's byte offset.
 * @rc: its refcount.
 */
int qcow2_md_refcount(struct qcow2_metadata *md, u64 host_off, u64 *rc)
{
	return qcow2_rc_get(md, host_off >> md->geo.cluster_bits, rc);
}

/**
 * qcow2_md_share() - one more reference to the data cluster at @host_off.
 * @md: metadata (writable).
 * @host_off: the cluster's byte offset; its refcount is below the maximum.
 *
 * The raised refcount is written in the first step of the next commit,
 * before the L2 entry of the new reference (staged by the caller) in the
 * second: a crash in between leaks the reference, never loses one.
 */
int qcow2_md_share(struct qcow2_metadata *md, u64 host_off)
{
	u64 rc;

	return qcow2_rc_update(md, host_off >> md->geo.cluster_bits, 1, &rc);
}

/**
 * qcow2_md_clear_copied() - clear COPIED in the L2 entry of @guest_off,
 *	whose cluster is about to get a second reference.
 * @md: metadata.
 * @guest_off: a guest byte offset mapped to a standard cluster through a
 *	writable L2 table.
 *
 * A staged entry is changed where it is staged.  An entry on disk is changed
 * in its L2 buffer now, so that it reaches the disk in the first step of the
 * next commit, before the new reference: QEMU must never see COPIED on a
 * cluster that two entries share.  (COPIED clear on a refcount of one, the
 * state of a crash in between, is only a conservative flag.)
 */
int qcow2_md_clear_copied(struct qcow2_metadata *md, u64 guest_off)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 gc = guest_cluster(md, guest_off), l1e, pos, e;
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	bool pending;
	void *p;
	int r;

	p = xa_load(&md->pending, gc);
	if (p) {
		/* Over an entry: no memory needed. */
		e = pending_decode(p) & ~QCOW2_OFLAG_COPIED;
		return xa_err(xa_store(&md->pending, gc, pending_encode(e), MD_GFP));
	}
	r = qcow2_md_lookup(md, guest_off, true, &type, &info, &pending);
	if (r)
		return r;
	l1e = md->l1[qcow2_l1_index(g, guest_off)];
	if (type != QCOW2_CLUSTER_NORMAL || !(l1e & QCOW2_OFLAG_COPIED))
		return -EUCLEAN;
	if (!info.copied)
		return 0;
	pos = (l1e & QCOW2_L1E_OFFSET_MASK) +
	      (u64)qcow2_l2_index(g, guest_off) * sizeof(u64);
	return qcow2_md_write_be64(md, pos, info.raw & ~QCOW2_OFLAG_COPIED);
}

/**
 * qcow2_md_set_copied() - stage COPIED on the L2 entry of @guest_off, the
 *	last reference of its cluster.
 * @md: metadata.
 * @guest_off: a guest byte offset mapped to a standard cluster.
 *
 * The caller makes sure the refcount of one is on disk before the next
 * commit writes this (it is staged, so it follows the commit's first flush).
 * Return: 0, -ENOMEM (nothing changed), -EUCLEAN or an I/O error.
 */
int qcow2_md_set_copied(struct qcow2_metadata *md, u64 guest_off)
{
	u64 gc = guest_cluster(md, guest_off), i = qcow2_l1_index(&md->geo, guest_off);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	bool pending;
	int r;

	/* Only a table of the active L1 alone is written. */
	if (!xa_load(&md->pending_l1, i) && !(md->l1[i] & QCOW2_OFLAG_COPIED))
		return 0;
	r = qcow2_md_lookup(md, guest_off, true, &type, &info, &pending);
	if (r)
		return r;
	if (type != QCOW2_CLUSTER_NORMAL)
		return -EUCLEAN;
	if (info.copied)
		return 0;
	r = xa_err(xa_store(&md->pending, gc,
			    pending_encode(info.raw | QCOW2_OFLAG_COPIED), MD_GFP));
	if (!r && !pending)
		md->nr_pending++;
	return r;
}

/* Step 2 of a commit: write the staged L1 and L2 entries. */
static int apply_pending(struct qcow2_metadata *md)
{
	const struct qcow2_geometry *g = &md->geo;
	unsigned long idx;
	void *p;
	int r;

	xa_for_each(&md->pending_l1, idx, p) {
		u64 e = qcow2_encode_l1_entry(xa_to_value(p) & ~1ULL, true);

		r = qcow2_md_write_be64(md, g->l1_table_offset + idx * sizeof(u64), e);
		if (r)
			return r;
		WRITE_ONCE(md->l1[idx], e);
	}
	xa_for_each(&md->pending, idx, p) {
		u64 guest_off = (u64)idx << g->cluster_bits;
		u64 l1e = md->l1[qcow2_l1_index(g, guest_off)];

		if (!(l1e & QCOW2_OFLAG_COPIED)) {
			DMERR("staged entry for guest cluster %lu has no writable L2 table", idx);
			return -EUCLEAN;
		}
		r = qcow2_md_write_be64(md, (l1e & QCOW2_L1E_OFFSET_MASK) +
			       (u64)qcow2_l2_index(g, guest_off) * sizeof(u64),
			       pending_decode(p));
		if (r)
			return r;
	}
	r = dm_bufio_write_dirty_buffers(md->bufio);
	if (!r)
		r = dm_bufio_issue_flush(md->bufio);
	if (r)
		return r;
	/* The buffers hold the entries: lookups may stop finding them here. */
	smp_wmb();
	xa_destroy(&md->pending_l1);
	xa_destroy(&md->pending);
	md->nr_pending = 0;
	md->nr_l1_pending = 0;
	return 0;
}

/* Step 3: drop the refcounts whose references are gone from the disk. */
static int apply_decrements(struct qcow2_metadata *md)
{
	unsigned long c;
	void *p;
	int r;

	md->wait_for_readers(md->ctx);
	xa_for_each(&md->decrements, c, p) {
		u64 rc;

		/* Metadata is never freed by a data reference (see lookup). */
		if (xa_load(&md->meta, c)) {
			r = qcow2_rc_get(md, c, &rc);
			if (r)
				return r;
			if (rc <= xa_to_value(p)) {
				if (!md->warned_meta) {
					md->warned_meta = true;
					DMWARN("reference into metadata cluster %lu dropped: kept",
					       c);
				}
				continue;
			}
		}
		r = qcow2_rc_update(md, c, -(s64)xa_to_value(p), &rc);
		if (r == -EUCLEAN) {
			/*
			 * The image counted fewer references than its L2
			 * tables hold (or none: no refcount block): corrupt
			 * input, not an I/O error.  Leave the cluster as it
			 * is (at worst a leak) and go on.
			 */
			if (!md->warned_underflow) {
				md->warned_underflow = true;
				DMWARN("refcount of cluster %lu lower than its references: kept",
				       c);
			}
			continue;
		}
		if (r)
			return r;
		if (rc == 1)
			qcow2_copied_note(md, c);
		if (!rc)
			dm_bufio_forget_buffers(md->bufio,
						((u64)c << md->geo.cluster_bits) >> md->block_bits,
						md->geo.cluster_size >> md->block_bits);
	}
	xa_destroy(&md->decrements);
	md->nr_decrements = 0;
	return 0;
}

/**
 * qcow2_md_commit() - write every staged change, in the crash-safe order.
 * @md: metadata.
 * @final: also write the decrements and flush (clean deactivation).
 *
 * When this returns 0, everything staged before the call is on stable
 * storage, and so is guest data written before the call completed.
 * COPIED flags of clusters whose refcount fell to one are written one
 * commit later (qcow2-copied.c); a final commit writes them too.  What
 * the caller wrote into the buffers before the call (the dedup table's
 * clears) is on disk before any refcount falls to zero: the first step
 * writes and flushes every dirty buffer.
 * Return: 0 or an I/O error; after an error the on-disk image is still
 * consistent, but the staged changes are lost.
 */
int qcow2_md_commit(struct qcow2_metadata *md, bool final)
{
	int rounds = 3, tries, r;

	do {
		r = qcow2_copied_restore(md, final);
		if (!r)
			r = dm_bufio_write_dirty_buffers(md->bufio);
		if (!r)
			r = dm_bufio_issue_flush(md->bufio);
		if (!r && (md->nr_pending || md->nr_l1_pending))
			r = apply_pending(md);
		if (!r && md->nr_decrements)
			r = apply_decrements(md);
		if (r)
			return r;
		qcow2_copied_advance(md);
		/*
		 * Refcounts that fell to one: another round makes them
		 * durable (its first step) and then writes the COPIED flags
		 * of their remaining references (its second), so the window
		 * in which a crash leaves such a flag clear is this commit.
		 */
		if (!final && xa_empty(&md->unique_ready)) {
			dm_bufio_write_dirty_buffers_async(md->bufio);
			return 0;
		}
		if (final) {
			r = dm_bufio_write_dirty_buffers(md->bufio);
			if (!r)
				r = dm_bufio_issue_flush(md->bufio);
		}
	} while (!r && --rounds && !xa_empty(&md->unique_ready));
	/*
	 * A clean deactivation leaves every COPIED flag exact: if memory ran
	 * short during its scan, wait a little and scan again.
	 */
	for (tries = 0; !r && final && md->nr_scan && tries < 100; tries++) {
		msleep(20);
		r = qcow2_copied_restore(md, true);
		if (!r && (md->nr_pending || md->nr_l1_pending))
			r = apply_pending(md);
	}
	if (!r && !final)
		dm_bufio_write_dirty_buffers_async(md->bufio);
	return r;
}

/**
 * qcow2_md_dirty() - is anything staged or unwritten?
 * @md: metadata.
 */
bool qcow2_md_dirty(struct qcow2_metadata *md)
{
	return md->nr_pending || md->nr_decrements || md->nr_l1_pending ||
	       !xa_empty(&md->unique_ready) || md->nr_scan;
}

/**
 * qcow2_md_set_callbacks() - tell the metadata who knows about referrers
 *	and operations in flight, for restoring COPIED (qcow2-copied.c).
 * @md: metadata.
 * @survivor: names the one remaining referrer of a host cluster whose
 *	refcount fell to one, or returns false (the L2 tables are scanned).
 * @busy: true while an operation on a guest cluster is in flight.
 *
 * Both are called by the worker inside qcow2_md_commit().  Whatever must
 * reach the buffers before a commit (the dedup table's clears) is written
 * by the caller before it calls qcow2_md_commit().
 */
void qcow2_md_set_callbacks(struct qcow2_metadata *md,
			    bool (*survivor)(void *ctx, u64 host_cluster,
					     u64 *guest_cluster),
			    bool (*busy)(void *ctx, u64 guest_cluster))
{
	md->survivor = survivor;
	md->guest_busy = busy;
}

/**
 * qcow2_md_flush() - write every dirty metadata buffer and flush the device.
 * @md: metadata.
 *
 * Safe at any time: what is dirty outside a commit may reach the disk in
 * any order anyway (dm-bufio writes back under memory pressure).
 */
int qcow2_md_flush(struct qcow2_metadata *md)
{
	int r = dm_bufio_write_dirty_buffers(md->bufio);

	return r ?: dm_bufio_issue_flush(md->bufio);
}

/**
 * qcow2_md_write_bytes() - copy @len bytes into the metadata buffers at
 *	device offset @off; they reach the disk with the next write-back.
 * @md: metadata.
 * @off: device byte offset.
 * @buf: the bytes.
 * @len: count; the range lies inside the device.
 */
int qcow2_md_write_bytes(struct qcow2_metadata *md, u64 off, const void *buf,
			 size_t len)
{
	return copy_bytes(md, off, NULL, buf, len);
}

/**
 * qcow2_md_zero_cluster() - zeros in the buffers of a cluster just allocated.
 * @md: metadata.
 * @host_off: its byte offset.
 */
int qcow2_md_zero_cluster(struct qcow2_metadata *md, u64 host_off)
{
	return qcow2_md_new_cluster(md, host_off >> md->geo.cluster_bits, 0);
}

/**
 * qcow2_md_write_header() - replace the header and extension area.
 * @md: metadata.
 * @buf: the new first @len bytes of the image (qcow2_rewrite_extensions()).
 * @len: bytes, at most one cluster.
 *
 * One write of the area, then a flush.  The fields the target keeps in
 * memory (autoclear_features) are taken from @buf.
 */
int qcow2_md_write_header(struct qcow2_metadata *md, const void *buf, size_t len)
{
	const struct qcow2_header *h = buf;
	int r;

	if (len > md->geo.cluster_size || len < md->geo.header_length)
		return -EINVAL;
	r = qcow2_md_write_bytes(md, 0, buf, len);
	if (!r) {
		memcpy(md->hdr_copy, buf, min(len, md->hdr_len));
		r = qcow2_md_flush(md);
	}
	if (!r && md->geo.version >= 3)
		md->geo.autoclear_features = get_unaligned_be64(&h->autoclear_features);
	return r;
}

/**
 * qcow2_md_l2_present() - does guest cluster @gc have an L2 table (on disk
 *	or staged)?  Lets scans skip unallocated ranges.
 * @md: metadata.
 * @gc: guest cluster index.
 */
bool qcow2_md_l2_present(struct qcow2_metadata *md, u64 gc)
{
	u64 l1_index = gc >> md->geo.l2_bits;

	return l1_index < md->geo.l1_size &&
	       ((READ_ONCE(md->l1[l1_index]) & QCOW2_L1E_OFFSET_MASK) ||
		xa_load(&md->pending_l1, l1_index));
}

/* Is a cluster of the byte range [@off, @off + @len) in @set? */
static bool range_in(struct qcow2_metadata *md, struct xarray *set, u64 off, u64 len)
{
	u64 c;

	if (!len)
		return false;
	for (c = off >> md->geo.cluster_bits;
	     c <= (off + len - 1) >> md->geo.cluster_bits; c++)
		if (xa_load(set, c))
			return true;
	return false;
}

/**
 * qcow2_md_metadata_in() - does @set hold a cluster of qcow2 metadata: the
 *	header, the L1 table, an active L2 table, the refcount table, a
 *	refcount block or the snapshot table?
 * @md: metadata (writable: the refcount table is loaded).
 * @set: host cluster indexes (an xarray of any non-NULL values).
 *
 * For checking what an untrusted structure (the dedup table) points to
 * before anything is written through it.
 */
bool qcow2_md_metadata_in(struct qcow2_metadata *md, struct xarray *set)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 i;

	if (range_in(md, set, 0, g->cluster_size) ||
	    range_in(md, set, g->l1_table_offset, (u64)g->l1_size * sizeof(u64)) ||
	    range_in(md, set, g->refcount_table_offset,
		     (u64)g->refcount_table_clusters << g->cluster_bits) ||
	    (g->nb_snapshots &&
	     range_in(md, set, g->snapshots_offset,
		      (u64)g->nb_snapshots * sizeof(struct qcow2_snapshot_hdr))))
		return true;
	for (i = 0; i < g->l1_size; i++)
		if (range_in(md, set, md->l1[i] & QCOW2_L1E_OFFSET_MASK,
			     md->l1[i] & QCOW2_L1E_OFFSET_MASK ? g->cluster_size : 0))
			return true;
	for (i = 0; i < md->reftable_entries; i++) {
		u64 rb = md->reftable[i] & ~(u64)(g->cluster_size - 1);

		if (rb && range_in(md, set, rb, g->cluster_size))
			return true;
	}
	return false;
}

/**
 * qcow2_md_frees_unreachable() - will the next commit drop refcounts of
 *	clusters no lookup from now on can reach?
 * @md: metadata.
 *
 * Such a commit waits for readers (the @wait_for_readers of
 * qcow2_md_open()) before the first refcount falls; only the bios that
 * looked up before this call can still use the clusters it frees, so the
 * caller may start that wait now.  Not with a new L1 entry staged: lookups
 * read the L1 table in memory, which the commit updates on its way
 * (apply_pending()), so until then a lookup can still reach the L2 table
 * the entry replaces, whose refcount the commit drops.
 */
bool qcow2_md_frees_unreachable(struct qcow2_metadata *md)
{
	return md->nr_decrements && !md->nr_l1_pending;
}

/**
 * qcow2_md_dev_clusters() - clusters the device holds.
 * @md: metadata.
 */
u64 qcow2_md_dev_clusters(struct qcow2_metadata *md)
{
	return md->geo.dev_size >> md->geo.cluster_bits;
}

unsigned long qcow2_md_nr_pending(struct qcow2_metadata *md)
{
	return md->nr_pending + md->nr_decrements;
}

/**
 * qcow2_md_usage() - clusters in use and clusters the device holds.
 * @md: metadata (writable).
 * @used: clusters with a non-zero refcount.
 * @total: clusters of the device.
 *
 * Context: any; the values may be a moment old.
 */
void qcow2_md_usage(struct qcow2_metadata *md, u64 *used, u64 *total)
{
	*used = READ_ONCE(md->used_clusters);
	*total = md->dev_clusters;
}
