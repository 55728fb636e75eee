// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: serve the virtual disk of a qcow2 image stored on a block
 * device.
 *
 * This file is the device-mapper glue: constructor, map, deferred work,
 * modes and status.  The qcow2 metadata lives behind qcow2-metadata.h and
 * the on-disk encoding in qcow2-format.c.
 *
 * I/O path.  map() never blocks: it looks the first guest cluster of a bio
 * up in cached metadata.  A read of standard clusters whose data lies in a
 * row on the device is remapped there whole (as far as the row goes), and
 * so is a write in place under nodedup (clusters with COPIED set); every
 * other read or write is cut at the end of its first cluster with
 * dm_accept_partial_bio() (dm core maps the rest as a bio of its own), so
 * that from there on a bio touches one guest cluster.  Unallocated and zero
 * clusters complete with zeros, and writes to a cluster whose refcount is
 * one (COPIED) go there in place.  No max_io_len: it would also set the
 * queue's chunk_sectors, and the block layer would cut every read at
 * every cluster before it reaches map().  Everything else goes to the deferred list of the single
 * worker: cache misses, compressed clusters, writes that allocate or copy a
 * cluster, discards, write-zeroes and flushes.
 *
 * Allocating writes.  The worker allocates a cluster and writes the whole
 * cluster there (the bio itself when it covers the cluster, else a buffer
 * holding the old contents or zeros with the bio's data on top); once that
 * write has completed, the new L2 entry is staged.  Old contents on the
 * device are read asynchronously (qcow2dedup_read_old_async()): the worker
 * goes on meanwhile and writes the buffer when the read is back.  A guest cluster with such
 * a write in flight is "busy": later bios for it wait on the operation.
 *
 * Durability.  Staged metadata reaches the disk in qcow2_md_commit(), which
 * runs on REQ_PREFLUSH, for REQ_FUA writes, every commit period, when much
 * is staged, and on suspend.  A flush or FUA bio completes only after it.
 *
 * Reuse of freed clusters.  Every bio remapped to a host cluster is counted
 * as a reader from map() to end_io (io_hold()); a commit waits for the
 * readers of clusters it is about to free, so a freed cluster is never
 * reused while a bio still reads or writes it.
 *
 * Modes.  A metadata I/O error switches the target from "write" to
 * "read-only" (writes fail, reads go on from what is in memory; nothing more
 * is written to the metadata), and a second one to "fail" (all I/O fails).
 */
#include <linux/delay.h>
#include <linux/dm-io.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "dm-qcow2dedup.h"
#include "qcow2-decompress.h"

const char * const qcow2dedup_mode_names[] = {
	[MODE_WRITE] = "write",
	[MODE_READ_ONLY] = "read-only",
	[MODE_FAIL] = "fail",
};

static struct kmem_cache *op_cache;

static struct qcow2_bio *pb(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct qcow2_bio));
}

const char *qcow2dedup_dev_name(struct qcow2dedup *q)
{
	return dm_device_name(q->owner);
}

/* map() made the sector a guest sector (qcow2dedup_map()). */
static u64 guest_offset(struct qcow2dedup *q, struct bio *bio)
{
	return (u64)bio->bi_iter.bi_sector << SECTOR_SHIFT;
}

void qcow2dedup_wake(struct qcow2dedup *q)
{
	queue_work(q->wq, &q->worker);
}

static void defer_bio(struct qcow2dedup *q, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&q->lock, flags);
	bio_list_add(&q->deferred, bio);
	spin_unlock_irqrestore(&q->lock, flags);
	qcow2dedup_wake(q);
}

/* A metadata I/O error: write -> read-only -> fail. */
void qcow2dedup_metadata_error(struct qcow2dedup *q, const char *what, int r)
{
	enum qcow2_mode old = q->mode, new = old == MODE_WRITE ? MODE_READ_ONLY : MODE_FAIL;

	if (old == MODE_FAIL)
		return;
	WRITE_ONCE(q->mode, new);
	DMERR("%s: metadata %s failed (%d): switching to %s mode", qcow2dedup_dev_name(q),
	      what, r, qcow2dedup_mode_names[new]);
}

/*
 * The error of a step that may have committed on the way (a table
 * write-back, a table barrier): qcow2dedup_commit() reports its own
 * failure, and reporting it again would turn one I/O error into fail mode.
 * Such steps start only in write mode, so a mode that has left write was
 * switched by this very error.
 */
void qcow2dedup_metadata_error_once(struct qcow2dedup *q, const char *what, int r)
{
	if (READ_ONCE(q->mode) == MODE_WRITE)
		qcow2dedup_metadata_error(q, what, r);
}

/*
 * Readers of host clusters.  Every bio remapped to a host cluster is
 * counted in the current generation from map() (or the worker) until its
 * end_io; a commit about to free clusters starts a new generation and waits
 * for the old one to drain.  Commits are serialised by the worker, so two
 * generations suffice.
 *
 * Not SRCU: with srcu_down_read() in map() and srcu_up_read() in end_io
 * (irq context), Tiny SRCU (!SMP kernels, User-Mode Linux) updates its
 * nesting count non-atomically and skips the grace-period wake-up when the
 * last reader leaves from an irq, so synchronize_srcu() could wait forever.
 */
static void wait_for_readers(void *ctx)
{
	struct qcow2dedup *q = ctx;
	unsigned int idx;

	spin_lock_irq(&q->io_lock);
	idx = q->io_gen++ & 1;
	spin_unlock_irq(&q->io_lock);
	wait_event(q->io_wait, !READ_ONCE(q->io_count[idx]));
}

void qcow2dedup_wait_for_readers(struct qcow2dedup *q)
{
	wait_for_readers(q);
}

static int io_hold(struct qcow2dedup *q)
{
	unsigned long flags;
	int idx;

	spin_lock_irqsave(&q->io_lock, flags);
	idx = q->io_gen & 1;
	q->io_count[idx]++;
	spin_unlock_irqrestore(&q->io_lock, flags);
	return idx;
}

static void io_unhold(struct qcow2dedup *q, int idx)
{
	unsigned long flags;
	bool last;

	spin_lock_irqsave(&q->io_lock, flags);
	last = !--q->io_count[idx];
	spin_unlock_irqrestore(&q->io_lock, flags);
	if (last)
		wake_up(&q->io_wait);
}

/* For a read the target itself issues (a verify read): as map()'s. */
int qcow2dedup_io_hold(struct qcow2dedup *q)
{
	return io_hold(q);
}

void qcow2dedup_io_unhold(struct qcow2dedup *q, int idx)
{
	io_unhold(q, idx);
}

/* Remap @bio to host byte @host_off; it stays counted as a reader until end_io. */
static void remap_held(struct qcow2dedup *q, struct bio *bio, u64 host_off,
		       int io_idx)
{
	pb(bio)->io_idx = io_idx;
	pb(bio)->io_held = true;
	bio_set_dev(bio, q->bdev);
	bio->bi_iter.bi_sector = host_off >> SECTOR_SHIFT;
}

/* Synchronous dm-io of @len bytes of kernel memory at device byte @off. */
int qcow2dedup_sync_io(struct qcow2dedup *q, blk_opf_t opf, void *buf, u64 off,
		       u64 len)
{
	struct dm_io_region region = {
		.bdev = q->bdev,
		.sector = off >> SECTOR_SHIFT,
		.count = len >> SECTOR_SHIFT,
	};
	struct dm_io_request req = {
		.bi_opf = opf,
		.mem.type = is_vmalloc_addr(buf) ? DM_IO_VMA : DM_IO_KMEM,
		.mem.ptr.addr = buf,
		.client = q->io,
	};

	return dm_io(&req, 1, &region, NULL, IOPRIO_DEFAULT);
}

/*
 * Asynchronous dm-io read of @len bytes at device byte @off into kernel
 * memory @buf (not vmalloc); @fn(error, @ctx) at its end, in any context.
 */
void qcow2dedup_async_read(struct qcow2dedup *q, void *buf, u64 off, u64 len,
			   void (*fn)(unsigned long error, void *ctx), void *ctx)
{
	struct dm_io_region region = {
		.bdev = q->bdev,
		.sector = off >> SECTOR_SHIFT,
		.count = len >> SECTOR_SHIFT,
	};
	struct dm_io_request req = {
		.bi_opf = REQ_OP_READ,
		.mem.type = DM_IO_KMEM,
		.mem.ptr.addr = buf,
		.notify.fn = fn,
		.notify.context = ctx,
		.client = q->io,
	};

	/* Asynchronous dm_io() fails only on bad arguments: end it anyway. */
	if (WARN_ON_ONCE(is_vmalloc_addr(buf)) || dm_io(&req, 1, &region, NULL, IOPRIO_DEFAULT))
		fn(1, ctx);
}

/* Decompress the cluster behind @info into @q->dbuf (worker only). */
static int load_compressed(struct qcow2dedup *q,
			   const struct qcow2_l2e_info *info)
{
	u64 start = round_down(info->host_offset, SECTOR_SIZE);
	u64 end = min(info->host_offset + info->compressed_len, q->geo->dev_size);
	int r;

	if (q->dbuf_offset == info->host_offset)
		return 0;
	q->dbuf_offset = 0;
	r = qcow2dedup_sync_io(q, REQ_OP_READ, q->cbuf, start, round_up(end - start, SECTOR_SIZE));
	if (r)
		return r;
	r = qcow2_decompress(q->dc, q->cbuf + (info->host_offset - start),
			     end - info->host_offset, q->dbuf, q->geo->cluster_size);
	if (r) {
		DMERR_LIMIT("%s: corrupt compressed cluster at host offset %llu",
			    qcow2dedup_dev_name(q), info->host_offset);
		return r;
	}
	q->dbuf_offset = info->host_offset;
	return 0;
}

/* Copy the part of cluster @data that @bio covers into @bio. */
static void copy_to_bio(struct qcow2dedup *q, struct bio *bio, const void *data)
{
	u64 off = qcow2_offset_in_cluster(q->geo, guest_offset(q, bio));
	struct bvec_iter iter;
	struct bio_vec bv;

	bio_for_each_segment(bv, bio, iter) {
		memcpy_to_bvec(&bv, data + off);
		off += bv.bv_len;
	}
}

void qcow2dedup_copy_from_bio(struct qcow2dedup *q, struct bio *bio, void *data)
{
	u64 off = qcow2_offset_in_cluster(q->geo, guest_offset(q, bio));
	struct bvec_iter iter;
	struct bio_vec bv;

	bio_for_each_segment(bv, bio, iter) {
		memcpy_from_bvec(data + off, &bv);
		off += bv.bv_len;
	}
}

/*
 * In map(): keep the part of @bio in its first guest cluster, or in its
 * first @clusters clusters; dm core maps the rest as a new bio.
 */
static void accept_clusters(struct qcow2dedup *q, struct bio *bio,
			    unsigned int clusters)
{
	u64 in = ((u64)clusters << q->geo->cluster_bits) -
		 qcow2_offset_in_cluster(q->geo, guest_offset(q, bio));

	if (bio->bi_iter.bi_size > in)
		dm_accept_partial_bio(bio, in >> SECTOR_SHIFT);
}

/* Guest clusters @bio touches. */
static unsigned int bio_clusters(struct qcow2dedup *q, struct bio *bio)
{
	u64 off = guest_offset(q, bio);
	u64 end = off + bio->bi_iter.bi_size;

	return (round_up(end, q->geo->cluster_size) -
		round_down(off, q->geo->cluster_size)) >> q->geo->cluster_bits;
}

/*
 * Look up the first guest cluster of read @bio and how many of its clusters
 * one piece can serve: a row of standard clusters on the host, or a run of
 * clusters that read as zeros; one cluster otherwise.  With !@may_block
 * (map()) only cached metadata is used: -EWOULDBLOCK if the first cluster's
 * L2 block is not cached.
 */
static int read_lookup(struct qcow2dedup *q, struct bio *bio, bool may_block,
		       enum qcow2_cluster_type *type, struct qcow2_l2e_info *info,
		       unsigned int *clusters)
{
	u64 off = guest_offset(q, bio);
	unsigned int want = bio_clusters(q, bio);
	bool pending;
	int r;

	*clusters = 1;
	r = qcow2_md_lookup(q->md, off, may_block, type, info, &pending);
	if (r || want == 1)
		return r;
	switch (*type) {
	case QCOW2_CLUSTER_NORMAL:
		*clusters = qcow2_md_normal_run(q->md, off, info->host_offset, want, false);
		if (*clusters > 1)
			atomic64_inc(&q->read_runs);
		break;
	case QCOW2_CLUSTER_UNALLOCATED:
	case QCOW2_CLUSTER_ZERO_PLAIN:
	case QCOW2_CLUSTER_ZERO_ALLOC:
		*clusters = qcow2_md_zero_run(q->md, off, want);
		if (*clusters > 1)
			atomic64_inc(&q->zero_runs);
		break;
	default:
		break;
	}
	return 0;
}

/*
 * Serve read @bio, which covers only what read_lookup() found (@type,
 * @info), from guest offset @off.  Compressed clusters only in the worker.
 * Returns a DM_MAPIO_* code: REMAPPED is for the caller to submit.
 */
static int read_piece(struct qcow2dedup *q, struct bio *bio, u64 off,
		      enum qcow2_cluster_type type, const struct qcow2_l2e_info *info)
{
	switch (type) {
	case QCOW2_CLUSTER_NORMAL:
		bio_set_dev(bio, q->bdev);
		bio->bi_iter.bi_sector = (info->host_offset +
					  qcow2_offset_in_cluster(q->geo, off)) >> SECTOR_SHIFT;
		return DM_MAPIO_REMAPPED;
	case QCOW2_CLUSTER_UNALLOCATED:
	case QCOW2_CLUSTER_ZERO_PLAIN:
	case QCOW2_CLUSTER_ZERO_ALLOC:
		zero_fill_bio(bio);
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	case QCOW2_CLUSTER_COMPRESSED:
		atomic64_inc(&q->reads_compressed);
		if (load_compressed(q, info))
			return DM_MAPIO_KILL;
		copy_to_bio(q, bio, q->dbuf);
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	default:
		DMERR_LIMIT("%s: corrupt L2 entry for guest offset %llu",
			    qcow2dedup_dev_name(q), off);
		return DM_MAPIO_KILL;
	}
}

/*
 * map() a read: cut it to what one piece serves (read_lookup()) and serve
 * that, or defer it to the worker: a compressed cluster alone, a cache miss
 * with the clusters whose L2 entries are in the same block (the worker
 * reads it once for them all, then read_deferred() splits).
 */
static int map_read(struct qcow2dedup *q, struct bio *bio)
{
	u64 off = guest_offset(q, bio);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	unsigned int clusters;
	int idx, r;

	idx = io_hold(q);
	r = read_lookup(q, bio, false, &type, &info, &clusters);
	if (r == -EWOULDBLOCK || (!r && type == QCOW2_CLUSTER_COMPRESSED)) {
		io_unhold(q, idx);
		accept_clusters(q, bio, r ? min(bio_clusters(q, bio),
						qcow2_md_l2_block_clusters(q->md, off)) : 1);
		atomic64_inc(&q->reads_deferred);
		defer_bio(q, bio);
		return DM_MAPIO_SUBMITTED;
	}
	if (r) {
		io_unhold(q, idx);
		DMERR_LIMIT("%s: metadata read failed for guest offset %llu: %d",
			    qcow2dedup_dev_name(q), off, r);
		return DM_MAPIO_KILL;
	}
	accept_clusters(q, bio, clusters);
	r = read_piece(q, bio, off, type, &info);
	if (r == DM_MAPIO_REMAPPED) {
		/* A reader until end_io: see io_hold(). */
		pb(bio)->io_idx = idx;
		pb(bio)->io_held = true;
	} else {
		io_unhold(q, idx);
	}
	return r;
}

/* Finish a bio the worker owns according to a DM_MAPIO_* code. */
static void finish_mapped(struct bio *bio, int r)
{
	if (r == DM_MAPIO_REMAPPED)
		dm_submit_bio_remap(bio, NULL);
	else if (r == DM_MAPIO_KILL)
		bio_io_error(bio);
}

/*
 * The worker's side of a read map() deferred: a compressed cluster, or the
 * clusters of one L2 block that was not cached.  The lookup of the first
 * cluster reads the block; each piece read_lookup() finds (a host row, a
 * zero run, one cluster) is split off, chained to @bio and served; @bio
 * itself serves the last and ends when all pieces have.  One reader hold
 * covers them all, released at @bio's end_io: the worker commits nothing
 * while it maps them.
 */
static void read_deferred(struct qcow2dedup *q, struct bio *bio)
{
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	unsigned int clusters;
	struct bio *piece;
	u64 off;
	int r;

	pb(bio)->io_idx = io_hold(q);
	pb(bio)->io_held = true;
	for (;;) {
		off = guest_offset(q, bio);
		r = read_lookup(q, bio, true, &type, &info, &clusters);
		if (r) {
			DMERR_LIMIT("%s: metadata read failed for guest offset %llu: %d",
				    qcow2dedup_dev_name(q), off, r);
			bio_io_error(bio);
			return;
		}
		if (clusters >= bio_clusters(q, bio))
			break;
		/* Never fails: GFP_NOIO from a pool, and no zone append. */
		piece = bio_split(bio, (((u64)clusters << q->geo->cluster_bits) -
					qcow2_offset_in_cluster(q->geo, off)) >> SECTOR_SHIFT,
				  GFP_NOIO, &q->split_bs);
		bio_chain(piece, bio);
		r = read_piece(q, piece, off, type, &info);
		if (r == DM_MAPIO_REMAPPED)
			submit_bio_noacct(piece);
		else if (r == DM_MAPIO_KILL)
			bio_io_error(piece);
		cond_resched();
	}
	finish_mapped(bio, read_piece(q, bio, off, type, &info));
}

/* Operations in flight, by guest cluster: rb_find()/rb_add() helpers. */
static int op_cmp_key(const void *key, const struct rb_node *node)
{
	u64 gc = *(const u64 *)key;
	u64 other = rb_entry(node, struct qcow2_op, node)->guest_cluster;

	return gc < other ? -1 : gc > other;
}

bool qcow2dedup_op_less(struct rb_node *a, const struct rb_node *b)
{
	return rb_entry(a, struct qcow2_op, node)->guest_cluster <
	       rb_entry(b, struct qcow2_op, node)->guest_cluster;
}

static struct qcow2_op *busy_find(struct qcow2dedup *q, u64 gc)
{
	struct rb_node *n = rb_find(&gc, &q->busy, op_cmp_key);

	return n ? rb_entry(n, struct qcow2_op, node) : NULL;
}

/*
 * qcow2-copied.c: an operation on guest cluster @gc holds a copy of its
 * old contents (or is writing it); COPIED must not come back under it, or
 * a write going in place meanwhile would be lost when the operation ends.
 */
static bool guest_busy(void *ctx, u64 gc)
{
	return busy_find(ctx, gc);
}

bool qcow2dedup_guest_busy(struct qcow2dedup *q, u64 gc)
{
	return busy_find(q, gc);
}

static void op_done(struct qcow2_op *op, blk_status_t status)
{
	struct qcow2dedup *q = op->q;
	unsigned long flags;

	op->status = status;
	/* Wake under the lock, see hash_work(). */
	spin_lock_irqsave(&q->lock, flags);
	list_add_tail(&op->list, &q->completed);
	qcow2dedup_wake(q);
	spin_unlock_irqrestore(&q->lock, flags);
}

/**
 * qcow2dedup_requeue_hashed() - @op, parked while a read of its own went
 *	on, is back for the worker's decision (any context).
 * @q: target.
 * @op: the operation.
 */
void qcow2dedup_requeue_hashed(struct qcow2dedup *q, struct qcow2_op *op)
{
	unsigned long flags;

	/* Wake under the lock, see hash_work(). */
	spin_lock_irqsave(&q->lock, flags);
	list_add_tail(&op->list, &q->hashed);
	qcow2dedup_wake(q);
	spin_unlock_irqrestore(&q->lock, flags);
}

static void clone_endio(struct bio *clone)
{
	struct qcow2_op *op = clone->bi_private;
	blk_status_t status = clone->bi_status;

	bio_put(clone);
	op_done(op, status);
}

static void buffered_endio(unsigned long error, void *context)
{
	op_done(context, error ? BLK_STS_IOERR : BLK_STS_OK);
}

/**
 * qcow2dedup_write_buffer() - write the cluster in @op->buf to
 *	@op->host_off; the op completes through the worker (finish_op()).
 * @q: target.
 * @op: the operation.
 */
void qcow2dedup_write_buffer(struct qcow2dedup *q, struct qcow2_op *op)
{
	struct dm_io_region region = {
		.bdev = q->bdev,
		.sector = op->host_off >> SECTOR_SHIFT,
		.count = q->geo->cluster_size >> SECTOR_SHIFT,
	};
	struct dm_io_request req = {
		.bi_opf = REQ_OP_WRITE,
		.mem.type = is_vmalloc_addr(op->buf) ? DM_IO_VMA : DM_IO_KMEM,
		.mem.ptr.addr = op->buf,
		.notify.fn = buffered_endio,
		.notify.context = op,
		.client = q->io,
	};

	/* Asynchronous dm_io() fails only on bad arguments; never here. */
	dm_io(&req, 1, &region, NULL, IOPRIO_DEFAULT);
}

/* Complete one piece of a bio that may have several (write-zeroes). */
static void piece_done(struct bio *bio, blk_status_t status)
{
	struct qcow2_bio *p = pb(bio);

	if (status)
		p->status = status;
	if (atomic_dec_and_test(&p->remaining)) {
		bio->bi_status = p->status;
		bio_endio(bio);
	}
}

/*
 * Commit the staged metadata.  The dedup table's clears go to the buffers
 * first, so the commit's first flush makes them durable before any
 * refcount falls to zero (dedup-table.c).
 */
int qcow2dedup_commit(struct qcow2dedup *q)
{
	int r = qcow2dedup_table_before_commit(q);

	if (!r)
		r = qcow2_md_commit(q->md, false);

	if (r)
		qcow2dedup_metadata_error(q, "commit", r);
	return r;
}

/*
 * Allocate a cluster (for metadata of the dedup table with @meta); if none
 * is free, commit staged frees and retry once.
 */
static int alloc_cluster(struct qcow2dedup *q, u64 *host_off, bool meta)
{
	int (*alloc)(struct qcow2_metadata *md, u64 *host_off) =
		meta ? qcow2_md_alloc_meta : qcow2_md_alloc;
	int r = alloc(q->md, host_off);

	if (r == -ENOSPC && qcow2_md_dirty(q->md)) {
		r = qcow2dedup_commit(q);
		if (!r)
			r = alloc(q->md, host_off);
	}
	return r;
}

int qcow2dedup_alloc(struct qcow2dedup *q, u64 *host_off)
{
	return alloc_cluster(q, host_off, false);
}

int qcow2dedup_alloc_meta(struct qcow2dedup *q, u64 *host_off)
{
	return alloc_cluster(q, host_off, true);
}

/* Make the L2 table of @guest_off writable; commit staged frees if full. */
int qcow2dedup_prepare_write(struct qcow2dedup *q, u64 guest_off)
{
	int r = qcow2_md_prepare_write(q->md, guest_off);

	if (r == -ENOSPC && qcow2_md_dirty(q->md)) {
		r = qcow2dedup_commit(q);
		if (!r)
			r = qcow2_md_prepare_write(q->md, guest_off);
	}
	return r;
}

blk_status_t qcow2dedup_alloc_error(struct qcow2dedup *q, int r)
{
	if (r == -ENOSPC) {
		DMERR_LIMIT("%s: no free cluster on the device", qcow2dedup_dev_name(q));
		return BLK_STS_NOSPC;
	}
	if (r == -ENOMEM)
		return BLK_STS_RESOURCE;
	/* A failed commit on the way has already switched the mode. */
	if (READ_ONCE(q->mode) == MODE_WRITE)
		qcow2dedup_metadata_error(q, "allocation", r);
	return BLK_STS_IOERR;
}

/* Fill @buf with the current contents of the cluster described by @type/@info. */
int qcow2dedup_read_old(struct qcow2dedup *q, enum qcow2_cluster_type type,
			const struct qcow2_l2e_info *info, void *buf)
{
	int r;

	switch (type) {
	case QCOW2_CLUSTER_NORMAL:
		return qcow2dedup_sync_io(q, REQ_OP_READ, buf, info->host_offset,
			       q->geo->cluster_size);
	case QCOW2_CLUSTER_COMPRESSED:
		r = load_compressed(q, info);
		if (!r)
			memcpy(buf, q->dbuf, q->geo->cluster_size);
		return r;
	default:
		memset(buf, 0, q->geo->cluster_size);
		return 0;
	}
}

/* Any context: the read of @op's old contents is over. */
static void rmw_endio(unsigned long error, void *context)
{
	struct qcow2_op *op = context;
	struct qcow2dedup *q = op->q;

	io_unhold(q, op->rmw_io_idx);
	atomic_dec(&q->rmw_inflight);
	op->rmw_done(op, error);
}

/**
 * qcow2dedup_read_old_async() - read the old contents of @op's guest
 *	cluster, at host byte @host_off, into @op->buf without waiting.
 * @q: target.
 * @op: a buffered operation in @q->busy, on no list.
 * @host_off: the cluster the guest cluster maps now.
 * @done: called with @op at the end of the read, in any context (so it
 *	may only queue @op for the worker or for hash_wq).
 *
 * The worker goes on with other requests meanwhile.  The cluster cannot
 * change under the read: its guest cluster is busy (no other write or
 * discard of it starts), so its reference stays; the read also counts as
 * a reader (io_hold()), as every bio on the device does.
 */
void qcow2dedup_read_old_async(struct qcow2dedup *q, struct qcow2_op *op, u64 host_off,
			       void (*done)(struct qcow2_op *op, bool error))
{
	unsigned int n = atomic_inc_return(&q->rmw_inflight);

	if (n > q->rmw_inflight_max)
		WRITE_ONCE(q->rmw_inflight_max, n);
	atomic64_inc(&q->rmw_reads);
	op->rmw_done = done;
	op->rmw_io_idx = io_hold(q);
	qcow2dedup_async_read(q, op->buf, host_off, q->geo->cluster_size, rmw_endio, op);
}

/* Any context: the old contents of a non-dedup @op are read (or not). */
static void old_read_done(struct qcow2_op *op, bool error)
{
	op_done(op, error ? BLK_STS_IOERR : BLK_STS_OK);
}

/*
 * Start writing guest cluster @gc (the range [@in, @in + @len) of which
 * comes from @bio, or zeros if @zeroes) to a new host cluster.  The old
 * mapping is @type/@info.  Return: 0 if started; -EAGAIN if too many
 * operations are in flight, -ENOMEM if memory is short (nothing changed:
 * try again later); or -EIO with a block status in @*status.
 */
static int start_op(struct qcow2dedup *q, struct bio *bio, u64 gc, u64 in,
		    u64 len, bool zeroes, enum qcow2_cluster_type type,
		    const struct qcow2_l2e_info *info, blk_status_t *status)
{
	u64 cs = q->geo->cluster_size, guest_off = gc << q->geo->cluster_bits;
	bool whole = !zeroes && !in && len == cs;
	/* Old contents on the device: read them while the worker goes on. */
	bool rmw = !whole && !zeroes && type == QCOW2_CLUSTER_NORMAL;
	struct qcow2_op *op;
	int r;

	if (!whole && q->buffered_ops >= q->max_buffered_ops)
		return -EAGAIN;
	op = qcow2dedup_op_new(q, bio, gc, !whole);
	if (!op)
		return whole ? -EAGAIN : -ENOMEM;
	/*
	 * Busy from now on: a commit on the way (no free cluster) must not
	 * give the old cluster its COPIED back under this operation, or a
	 * partial write sent in place meanwhile would be lost.
	 */
	rb_add(&op->node, &q->busy, qcow2dedup_op_less);
	if (!whole && !rmw) {
		r = qcow2dedup_read_old(q, type, info, op->buf);
		if (r) {
			*status = BLK_STS_IOERR;
			goto bad;
		}
		if (zeroes)
			memset(op->buf + in, 0, len);
		else
			qcow2dedup_copy_from_bio(q, bio, op->buf);
	}

	r = qcow2dedup_prepare_write(q, guest_off);
	if (!r)
		r = qcow2dedup_alloc(q, &op->host_off);
	if (r == -ENOMEM) {
		qcow2dedup_wait_memory(q);
		goto bad;
	}
	if (r) {
		*status = qcow2dedup_alloc_error(q, r);
		goto bad;
	}
	atomic64_inc(&q->clusters_allocated);
	if (type == QCOW2_CLUSTER_NORMAL || type == QCOW2_CLUSTER_COMPRESSED)
		atomic64_inc(&q->cow_copies);

	if (whole) {
		struct bio *clone = bio_alloc_clone(q->bdev, bio, GFP_NOIO, &q->bs);

		clone->bi_opf &= ~(REQ_FUA | REQ_PREFLUSH);
		clone->bi_iter.bi_sector = op->host_off >> SECTOR_SHIFT;
		clone->bi_end_io = clone_endio;
		clone->bi_private = op;
		submit_bio_noacct(clone);
	} else if (rmw) {
		/* finish_op() puts the bio's bytes on top and writes the buffer. */
		op->fill = true;
		qcow2dedup_read_old_async(q, op, info->host_offset, old_read_done);
	} else {
		qcow2dedup_write_buffer(q, op);
	}
	return 0;
bad:
	rb_erase(&op->node, &q->busy);
	qcow2dedup_op_free(q, op);
	return r == -ENOMEM ? r : -EIO;
}

/**
 * qcow2dedup_stage() - stage a new mapping of a guest cluster and tell the
 *	dedup index that the old one is gone.
 * @q: target.
 * @guest_off: guest byte offset in the cluster.
 * @type: as for qcow2_md_stage().
 * @host_off: as for qcow2_md_stage().
 * @copied: as for qcow2_md_stage().
 */
int qcow2dedup_stage(struct qcow2dedup *q, u64 guest_off,
		     enum qcow2_cluster_type type, u64 host_off, bool copied)
{
	u64 old_host;
	int r;

	r = qcow2_md_stage(q->md, guest_off, type, host_off, copied, &old_host);
	if (!r && old_host && q->dedup)
		qcow2dedup_drop_ref(q, old_host, guest_off >> q->geo->cluster_bits);
	return r;
}

/**
 * qcow2dedup_op_release() - the end of an operation: complete its bio with
 *	@status (after the next commit for FUA), let the bios that waited for
 *	its guest cluster go, free it.
 * @q: target.
 * @op: the operation, in @q->busy.
 * @status: the bio's status.
 */
void qcow2dedup_op_release(struct qcow2dedup *q, struct qcow2_op *op,
			   blk_status_t status)
{
	unsigned long flags;

	rb_erase(&op->node, &q->busy);
	if (bio_op(op->bio) == REQ_OP_WRITE_ZEROES) {
		piece_done(op->bio, status);
	} else if (status) {
		op->bio->bi_status = status;
		bio_endio(op->bio);
	} else if (op->bio->bi_opf & REQ_FUA) {
		bio_list_add(&q->commit_waiters, op->bio);
	} else {
		bio_endio(op->bio);
	}

	/* Bios that waited for this cluster go first, in their order. */
	if (!bio_list_empty(&op->waiters)) {
		spin_lock_irqsave(&q->lock, flags);
		bio_list_merge_head(&q->deferred, &op->waiters);
		spin_unlock_irqrestore(&q->lock, flags);
	}
	qcow2dedup_op_free(q, op);
}

/*
 * A cluster buffer: the mempool's own allocation first (no reclaim), then
 * its reserve, then the page allocator with reclaim but no I/O.  Never
 * vmalloc, never a wait for the pool: a NULL means "try again later".
 */
static void *buf_alloc(struct qcow2dedup *q)
{
	struct page *page;

	if (q->buf_order < 0)
		return mempool_alloc(&q->buf_pool, GFP_NOWAIT | __GFP_NOWARN);
	page = mempool_alloc(&q->buf_pool, GFP_NOWAIT | __GFP_NOWARN);
	if (!page)
		page = alloc_pages(GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN, q->buf_order);
	return page ? page_address(page) : NULL;
}

static void buf_free(struct qcow2dedup *q, void *buf)
{
	if (q->buf_order < 0)
		mempool_free(buf, &q->buf_pool);
	else
		mempool_free(virt_to_page(buf), &q->buf_pool);
}

/**
 * qcow2dedup_op_new() - a new operation on guest cluster @gc for @bio.
 * @q: target.
 * @bio: the bio.
 * @gc: guest cluster index.
 * @buffered: with a cluster buffer in @op->buf.
 *
 * Operations in flight are bounded by the size of the operation pool (and
 * buffered ones by max_buffered_ops), so the pool's reserve never runs dry.
 * Return: the operation, not yet in @q->busy, or NULL: too many in flight,
 * or memory short (q->mem_waits counts it and a retry is scheduled).
 */
struct qcow2_op *qcow2dedup_op_new(struct qcow2dedup *q, struct bio *bio, u64 gc,
				   bool buffered)
{
	struct qcow2_op *op;

	if (q->nr_ops >= q->max_ops)
		return NULL;
	op = mempool_alloc(&q->op_pool, GFP_NOWAIT | __GFP_NOWARN);
	if (!op) {
		qcow2dedup_wait_memory(q);
		return NULL;
	}
	memset(op, 0, sizeof(*op));
	if (buffered) {
		op->buf = buf_alloc(q);
		if (!op->buf) {
			mempool_free(op, &q->op_pool);
			qcow2dedup_wait_memory(q);
			return NULL;
		}
		q->buffered_ops++;
	}
	q->nr_ops++;
	op->q = q;
	op->guest_cluster = gc;
	op->bio = bio;
	bio_list_init(&op->waiters);
	INIT_LIST_HEAD(&op->dup_waiters);
	return op;
}

/**
 * qcow2dedup_vbuf_alloc() - a cluster buffer for a verify read, never from
 *	the buffer pool's reserve (kept for writes: their progress must not
 *	wait for verifies); freed with the operation that holds it.
 * @q: target.
 *
 * Return: the buffer, or NULL (the caller verifies synchronously).
 */
void *qcow2dedup_vbuf_alloc(struct qcow2dedup *q)
{
	struct page *page;

	if (q->buf_order < 0)
		return kmalloc(q->geo->cluster_size, GFP_NOWAIT | __GFP_NOWARN);
	page = alloc_pages(GFP_NOWAIT | __GFP_NOWARN, q->buf_order);
	return page ? page_address(page) : NULL;
}

void qcow2dedup_vbuf_free(struct qcow2dedup *q, void *buf)
{
	if (q->buf_order < 0)
		kfree(buf);
	else
		__free_pages(virt_to_page(buf), q->buf_order);
}

void qcow2dedup_op_free(struct qcow2dedup *q, struct qcow2_op *op)
{
	if (op->buf) {
		buf_free(q, op->buf);
		q->buffered_ops--;
	}
	if (op->vbuf)
		qcow2dedup_vbuf_free(q, op->vbuf);
	q->nr_ops--;
	mempool_free(op, &q->op_pool);
}

/**
 * qcow2dedup_wait_memory() - memory ran short: wake the worker again in a
 *	moment, whatever else happens meanwhile.
 * @q: target.
 */
void qcow2dedup_wait_memory(struct qcow2dedup *q)
{
	atomic64_inc(&q->mem_waits);
	queue_delayed_work(q->wq, &q->retry, MEMORY_RETRY_DELAY);
}

/**
 * qcow2dedup_retry_op() - worker: @op could not go on for want of memory
 *	and changed nothing: put it back on @list (q->completed or q->hashed)
 *	for a later pass.
 * @q: target.
 * @op: the operation.
 * @list: where the worker will find it again.
 */
void qcow2dedup_retry_op(struct qcow2dedup *q, struct qcow2_op *op,
			 struct list_head *list)
{
	spin_lock_irq(&q->lock);
	list_add_tail(&op->list, list);
	spin_unlock_irq(&q->lock);
	qcow2dedup_wait_memory(q);
}

static void do_retry(struct work_struct *ws)
{
	qcow2dedup_wake(container_of(to_delayed_work(ws), struct qcow2dedup, retry));
}

/* The data write of @op is done: stage the new mapping, then release it. */
static void finish_op(struct qcow2dedup *q, struct qcow2_op *op)
{
	u64 guest_off = op->guest_cluster << q->geo->cluster_bits;
	blk_status_t status = op->status;
	int r;

	if (op->dedup) {
		qcow2dedup_hashed_done(q, op);
		return;
	}
	/* The old contents are read: the bio's bytes on top, then the write. */
	if (op->fill) {
		op->fill = false;
		if (!status && READ_ONCE(q->mode) == MODE_WRITE) {
			qcow2dedup_copy_from_bio(q, op->bio, op->buf);
			qcow2dedup_write_buffer(q, op);
			return;
		}
	}
	if (!status && READ_ONCE(q->mode) != MODE_WRITE)
		status = BLK_STS_IOERR;
	r = status ? qcow2_md_release(q->md, op->host_off) :
		     qcow2dedup_stage(q, guest_off, QCOW2_CLUSTER_NORMAL,
				      op->host_off, true);
	if (r == -ENOMEM) {
		qcow2dedup_retry_op(q, op, &q->completed);
		return;
	}
	if (r && !status) {
		qcow2dedup_metadata_error(q, "update", r);
		status = BLK_STS_IOERR;
	}
	qcow2dedup_op_release(q, op, status);
}

/*
 * First write of this activation: clear the autoclear bits of what this
 * target does not keep; with a dedup table, set its bit and mark it open.
 */
int qcow2dedup_before_first_write(struct qcow2dedup *q)
{
	int r;

	if (q->autoclear_done)
		return 0;
	r = qcow2dedup_table_open(q);
	if (!r && !q->table.open)
		r = qcow2_md_clear_autoclear(q->md);
	if (r == -ENOMEM) {
		qcow2dedup_wait_memory(q);
		return r;
	}
	if (r) {
		/*
		 * Opening the table may have committed on the way (a new
		 * root needs a cluster, allocating may commit): a failed
		 * commit switched the mode already.
		 */
		qcow2dedup_metadata_error_once(q, "header update", r);
		return r;
	}
	WRITE_ONCE(q->autoclear_done, true);
	return 0;
}

/* Worker: a write of one cluster or part of it.  Returns -EAGAIN to retry later. */
/*
 * A write the worker got.  @barrier_done: the table barrier the write
 * waited for has been issued (it goes in place now, see do_worker()).
 */
static int process_write(struct qcow2dedup *q, struct bio *bio, bool barrier_done)
{
	u64 off = guest_offset(q, bio), gc = off >> q->geo->cluster_bits;
	u64 in = qcow2_offset_in_cluster(q->geo, off);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	blk_status_t status = BLK_STS_IOERR;
	struct qcow2_op *op;
	bool pending;
	int idx, r;

	if (READ_ONCE(q->mode) != MODE_WRITE)
		goto fail;
	r = qcow2dedup_before_first_write(q);
	if (r == -ENOMEM)
		return -EAGAIN;
	if (r)
		goto fail;
	op = busy_find(q, gc);
	if (op) {
		bio_list_add(&op->waiters, bio);
		return 0;
	}

	/*
	 * In place, FUA needs the mapping on disk too: commit first (not
	 * while counted as a reader, which a commit may wait for).
	 */
	if ((bio->bi_opf & REQ_FUA) &&
	    !qcow2_md_lookup(q->md, off, true, &type, &info, &pending) &&
	    pending && type == QCOW2_CLUSTER_NORMAL && info.copied) {
		if (qcow2dedup_commit(q))
			goto fail;
	}
	idx = io_hold(q);
	r = qcow2_md_lookup(q->md, off, true, &type, &info, &pending);
	if (!r && type == QCOW2_CLUSTER_NORMAL && info.copied &&
	    (!q->dedup || bio->bi_iter.bi_size < q->geo->cluster_size)) {
		/*
		 * Its digest no longer describes the cluster: unindex it.  If
		 * its slot on disk still names that digest, the write waits
		 * for the pass's table barrier, one for all such writes
		 * (do_worker()).
		 */
		if (qcow2dedup_unindex_host(q, info.host_offset) && !barrier_done) {
			io_unhold(q, idx);
			atomic64_inc(&q->barrier_writes);
			bio_list_add(&q->barrier_bios, bio);
			return 0;
		}
		remap_held(q, bio, info.host_offset + in, idx);
		dm_submit_bio_remap(bio, NULL);
		return 0;
	}
	io_unhold(q, idx);
	if (r) {
		qcow2dedup_metadata_error(q, "read", r);
		goto fail;
	}
	if (type == QCOW2_CLUSTER_INVALID) {
		DMERR_LIMIT("%s: corrupt L2 entry for guest offset %llu",
			    qcow2dedup_dev_name(q), off);
		goto fail;
	}
	if (q->dedup)
		r = qcow2dedup_start_hashed(q, bio, gc, in, bio->bi_iter.bi_size,
					    type, &info, &status);
	else
		r = start_op(q, bio, gc, in, bio->bi_iter.bi_size, false, type,
			     &info, &status);
	if (r == -EAGAIN || r == -ENOMEM)
		return -EAGAIN;
	if (r)
		goto fail;
	return 0;
fail:
	bio->bi_status = status;
	bio_endio(bio);
	return 0;
}

/* The first operation in flight on a guest cluster in [@first, @last]. */
static struct qcow2_op *busy_in_range(struct qcow2dedup *q, u64 first, u64 last)
{
	struct rb_node *n = q->busy.rb_node;
	struct qcow2_op *found = NULL;

	while (n) {
		struct qcow2_op *op = rb_entry(n, struct qcow2_op, node);

		if (op->guest_cluster < first) {
			n = n->rb_right;
		} else {
			found = op;
			n = n->rb_left;
		}
	}
	return found && found->guest_cluster <= last ? found : NULL;
}

/*
 * One cluster's part [@off, @off + @len) of a discard or write-zeroes.
 * Return: 0, -EAGAIN (nothing changed: try again later) or an error with
 * the bio's piece status set.
 */
static int discard_piece(struct qcow2dedup *q, struct bio *bio, u64 off, u64 len,
			 bool zeroes)
{
	u64 cs = q->geo->cluster_size, in = off & (cs - 1);
	enum qcow2_cluster_type type, deallocated;
	struct qcow2_bio *p = pb(bio);
	struct qcow2_l2e_info info;
	blk_status_t status;
	bool pending;
	int r;

	deallocated = zeroes && q->geo->version >= 3 ? QCOW2_CLUSTER_ZERO_PLAIN :
						       QCOW2_CLUSTER_UNALLOCATED;
	r = qcow2_md_lookup(q->md, off, true, &type, &info, &pending);
	if (r) {
		qcow2dedup_metadata_error(q, "read", r);
		p->status = BLK_STS_IOERR;
		return r;
	}
	if (type == QCOW2_CLUSTER_UNALLOCATED || type == QCOW2_CLUSTER_ZERO_PLAIN ||
	    (zeroes && len < cs && type == QCOW2_CLUSTER_ZERO_ALLOC))
		return 0;
	if (type == QCOW2_CLUSTER_INVALID) {
		p->status = BLK_STS_IOERR;
		return 0;
	}
	if (len == cs) {
		r = qcow2dedup_prepare_write(q, off);
		if (!r)
			r = qcow2dedup_stage(q, off, deallocated, 0, false);
		if (r == -ENOMEM) {
			qcow2dedup_wait_memory(q);
			return -EAGAIN;
		}
		if (r)
			p->status = qcow2dedup_alloc_error(q, r);
		return r;
	}
	if (!zeroes)
		return 0;
	if (type == QCOW2_CLUSTER_NORMAL && info.copied) {
		/* Synchronous in place: the worker owns the cluster here. */
		r = qcow2dedup_forget_host(q, info.host_offset);
		if (!r)
			r = blkdev_issue_zeroout(q->bdev,
						 (info.host_offset + in) >> SECTOR_SHIFT,
						 len >> SECTOR_SHIFT, GFP_NOIO,
						 BLKDEV_ZERO_NOUNMAP);
		if (r)
			p->status = BLK_STS_IOERR;
		return 0;
	}
	/* A new cluster with the old contents and zeros: a piece of its own. */
	status = BLK_STS_IOERR;
	atomic_inc(&p->remaining);
	r = start_op(q, bio, off >> q->geo->cluster_bits, in, len, true, type,
		     &info, &status);
	if (r == -EAGAIN || r == -ENOMEM) {
		atomic_dec(&p->remaining);
		return -EAGAIN;
	}
	if (r)
		piece_done(bio, status);
	return 0;
}

/*
 * Worker: discard or write-zeroes, any range.  Whole clusters are
 * deallocated (write-zeroes on v3: the zero flag); the parts of clusters at
 * the ends are left alone by discard and written with zeros by write-zeroes.
 *
 * A long range is done a slice at a time (DISCARD_PER_PASS clusters), the
 * bio going back to the end of the queue in between, and so is one that
 * meets a cluster in flight (parked on it) or that must wait for memory:
 * pb(bio)->next says where it goes on, and every piece before it is done
 * or in flight, counted in pb(bio)->remaining.  The bio completes when the
 * last piece does.
 * Return: 0, or -EAGAIN to be tried again later (the bio is kept).
 */
static int process_discard(struct qcow2dedup *q, struct bio *bio)
{
	bool zeroes = bio_op(bio) == REQ_OP_WRITE_ZEROES;
	u64 cs = q->geo->cluster_size, start = guest_offset(q, bio);
	u64 end = start + bio->bi_iter.bi_size, off;
	unsigned int budget = DISCARD_PER_PASS;
	struct qcow2_bio *p = pb(bio);
	struct qcow2_op *op;
	unsigned long flags;
	int r;

	if (!p->started) {
		if (READ_ONCE(q->mode) != MODE_WRITE) {
			bio_io_error(bio);
			return 0;
		}
		r = qcow2dedup_before_first_write(q);
		if (r == -ENOMEM)
			return -EAGAIN;
		if (r) {
			bio_io_error(bio);
			return 0;
		}
		p->started = true;
		p->next = start;
		p->status = BLK_STS_OK;
		atomic_set(&p->remaining, 1);
	}
	/* Only this slice: a long range must not wait for every writer. */
	op = busy_in_range(q, p->next >> q->geo->cluster_bits,
			   min((end - 1) >> q->geo->cluster_bits,
			       (p->next >> q->geo->cluster_bits) + DISCARD_PER_PASS - 1));
	if (op) {
		bio_list_add(&op->waiters, bio);
		return 0;
	}
	for (off = p->next; off < end && budget; budget--) {
		u64 len = min(cs - (off & (cs - 1)), end - off);

		if (READ_ONCE(q->mode) != MODE_WRITE) {
			p->status = BLK_STS_IOERR;
			off = end;
			break;
		}
		r = discard_piece(q, bio, off, len, zeroes);
		if (r == -EAGAIN) {
			p->next = off;
			return -EAGAIN;
		}
		if (r) {
			off = end;
			break;
		}
		off += len;
		cond_resched();
	}
	p->next = off;
	if (off < end) {
		/* Let other bios go between the slices of a long range. */
		spin_lock_irqsave(&q->lock, flags);
		bio_list_add(&q->deferred, bio);
		spin_unlock_irqrestore(&q->lock, flags);
		qcow2dedup_wake(q);
		return 0;
	}
	piece_done(bio, BLK_STS_OK);
	return 0;
}

static void commit_and_complete(struct qcow2dedup *q, struct bio_list *flushes)
{
	blk_status_t status = BLK_STS_OK;
	struct bio *bio;

	if (READ_ONCE(q->mode) == MODE_WRITE) {
		if (qcow2dedup_commit(q))
			status = BLK_STS_IOERR;
		/* Slots of what the commit made durable: written lazily. */
		else if (qcow2dedup_table_flush(q, false, false))
			qcow2dedup_metadata_error_once(q, "dedup table update", -EIO);
	} else if (qcow2_md_dirty(q->md)) {
		/* Staged changes will never reach the disk now. */
		status = BLK_STS_IOERR;
	} else if (blkdev_issue_flush(q->bdev)) {
		status = BLK_STS_IOERR;
	}
	WRITE_ONCE(q->commit_due, false);
	while ((bio = bio_list_pop(&q->commit_waiters))) {
		bio->bi_status = status;
		bio_endio(bio);
	}
	while ((bio = bio_list_pop(flushes))) {
		bio->bi_status = status;
		bio_endio(bio);
	}
}

static void do_worker(struct work_struct *ws)
{
	struct qcow2dedup *q = container_of(ws, struct qcow2dedup, worker);
	struct bio_list bios = BIO_EMPTY_LIST, flushes = BIO_EMPTY_LIST;
	struct bio_list held = BIO_EMPTY_LIST;
	struct qcow2_op *op, *tmp;
	LIST_HEAD(completed);
	LIST_HEAD(hashed);
	struct bio *bio;

	/*
	 * Suspended and written back (or not resumed yet): no I/O is left,
	 * and a resume may replace the metadata.  Only "flush" messages are
	 * answered (nothing to write).
	 */
	if (READ_ONCE(q->stopped)) {
		qcow2dedup_table_worker(q);
		return;
	}
	/* After a resume: the index is a hint again until compared. */
	if (READ_ONCE(q->reverify)) {
		WRITE_ONCE(q->reverify, false);
		dedup_unverify_all(&q->index);
	}

	spin_lock_irq(&q->lock);
	list_splice_init(&q->completed, &completed);
	spin_unlock_irq(&q->lock);
	list_for_each_entry_safe(op, tmp, &completed, list)
		finish_op(q, op);

	spin_lock_irq(&q->lock);
	list_splice_init(&q->hashed, &hashed);
	spin_unlock_irq(&q->lock);
	list_for_each_entry_safe(op, tmp, &hashed, list) {
		list_del_init(&op->list);
		qcow2dedup_decide(q, op);
	}
	qcow2dedup_barrier_done(q);

	spin_lock_irq(&q->lock);
	bio_list_merge_init(&bios, &q->deferred);
	bio_list_merge_init(&flushes, &q->flushes);
	spin_unlock_irq(&q->lock);

	while ((bio = bio_list_pop(&bios))) {
		int r = 0;

		if (bio_op(bio) == REQ_OP_READ) {
			read_deferred(q, bio);
		} else if (!bio_list_empty(&held)) {
			/* Writes stay in their order behind a held one. */
			bio_list_add(&held, bio);
		} else {
			r = bio_op(bio) == REQ_OP_WRITE ? process_write(q, bio, false) :
							  process_discard(q, bio);
			/*
			 * Throttled, or memory short: keep this write and the
			 * later ones, in order, for a later pass; reads go on.
			 */
			if (r == -EAGAIN)
				bio_list_add(&held, bio);
		}
		cond_resched();
	}
	/*
	 * Writes in place into clusters whose slots on disk still name their
	 * old contents: one table barrier for all of them, then each goes
	 * its way again (now in place).
	 */
	if (!bio_list_empty(&q->barrier_bios)) {
		struct bio_list waited = BIO_EMPTY_LIST;
		int r = qcow2dedup_table_barrier(q);

		if (r)
			qcow2dedup_metadata_error_once(q, "dedup table update", r);
		bio_list_merge_init(&waited, &q->barrier_bios);
		while ((bio = bio_list_pop(&waited))) {
			if (r) {
				bio->bi_status = BLK_STS_IOERR;
				bio_endio(bio);
			} else if (!bio_list_empty(&held) ||
				   process_write(q, bio, true) == -EAGAIN) {
				bio_list_add(&held, bio);
			}
		}
	}
	if (!bio_list_empty(&held)) {
		spin_lock_irq(&q->lock);
		bio_list_merge_head(&q->deferred, &held);
		spin_unlock_irq(&q->lock);
	}

	if (!bio_list_empty(&flushes) || !bio_list_empty(&q->commit_waiters) ||
	    (READ_ONCE(q->commit_due) && qcow2_md_dirty(q->md)) ||
	    qcow2_md_nr_pending(q->md) >= COMMIT_THRESHOLD)
		commit_and_complete(q, &flushes);
	qcow2dedup_table_worker(q);
	qcow2dedup_rebuild_step(q);
}

static void do_waker(struct work_struct *ws)
{
	struct qcow2dedup *q = container_of(to_delayed_work(ws), struct qcow2dedup, waker);

	WRITE_ONCE(q->commit_due, true);
	qcow2dedup_wake(q);
	queue_delayed_work(q->wq, &q->waker, COMMIT_PERIOD);
}

/*
 * map(): may this write go in place into the COPIED cluster at @host_off?
 * With dedup, whole clusters are hashed by the worker, and an indexed
 * cluster must keep the contents its digest names.
 */
static bool may_write_in_place(struct qcow2dedup *q, struct bio *bio, u64 host_off)
{
	if (!q->dedup)
		return true;
	if (bio->bi_iter.bi_size >= q->geo->cluster_size)
		return false;
	/*
	 * The worker indexes a cluster before any L2 entry points to it;
	 * pairs with the release of its xarray stores.
	 */
	smp_rmb();
	return !dedup_host_indexed(&q->index, host_off >> q->geo->cluster_bits);
}

static int qcow2dedup_map(struct dm_target *ti, struct bio *bio)
{
	struct qcow2dedup_c *c = ti->private;
	struct qcow2dedup *q = c->q;
	enum qcow2_mode mode = READ_ONCE(q->mode);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	unsigned long flags;
	bool pending;
	int idx;

	pb(bio)->io_held = false;
	pb(bio)->started = false;
	if (mode == MODE_FAIL)
		return DM_MAPIO_KILL;

	if (bio->bi_opf & REQ_PREFLUSH) {
		if (!q->writable) {
			bio_set_dev(bio, q->bdev);
			return DM_MAPIO_REMAPPED;
		}
		spin_lock_irqsave(&q->lock, flags);
		bio_list_add(&q->flushes, bio);
		spin_unlock_irqrestore(&q->lock, flags);
		qcow2dedup_wake(q);
		return DM_MAPIO_SUBMITTED;
	}
	/*
	 * From here on the bio's sector is a guest sector: the engine does
	 * not know where the target starts in its table.
	 */
	bio->bi_iter.bi_sector = dm_target_offset(ti, bio->bi_iter.bi_sector);

	switch (bio_op(bio)) {
	case REQ_OP_READ:
		return map_read(q, bio);
	case REQ_OP_WRITE:
		break;
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		if (mode != MODE_WRITE || !q->writable)
			return DM_MAPIO_KILL;
		defer_bio(q, bio);
		return DM_MAPIO_SUBMITTED;
	default:
		return DM_MAPIO_KILL;
	}

	if (!q->writable || mode != MODE_WRITE) {
		DMERR_LIMIT("%s: write refused: the target is in %s mode",
			    qcow2dedup_dev_name(q),
			    q->writable ? qcow2dedup_mode_names[mode] : "read-only");
		return DM_MAPIO_KILL;
	}
	/* With dedup, a write in place is decided on its own cluster. */
	if (q->dedup)
		accept_clusters(q, bio, 1);
	/* Fast path: in place into a cluster whose refcount is one. */
	idx = io_hold(q);
	if (READ_ONCE(q->autoclear_done) &&
	    !qcow2_md_lookup(q->md, guest_offset(q, bio), false, &type, &info, &pending) &&
	    type == QCOW2_CLUSTER_NORMAL && info.copied &&
	    !(pending && (bio->bi_opf & REQ_FUA)) &&
	    may_write_in_place(q, bio, info.host_offset)) {
		/*
		 * nodedup: the clusters after it in a row on the device with
		 * COPIED set, nothing staged, go in place in the same bio.
		 */
		if (!q->dedup && bio_clusters(q, bio) > 1) {
			unsigned int run = qcow2_md_normal_run(q->md, guest_offset(q, bio),
							       info.host_offset,
							       bio_clusters(q, bio), true);

			if (run > 1)
				atomic64_inc(&q->write_runs);
			accept_clusters(q, bio, run);
		}
		remap_held(q, bio, info.host_offset +
			   qcow2_offset_in_cluster(q->geo, guest_offset(q, bio)), idx);
		return DM_MAPIO_REMAPPED;
	}
	io_unhold(q, idx);
	accept_clusters(q, bio, 1);
	defer_bio(q, bio);
	return DM_MAPIO_SUBMITTED;
}

static int qcow2dedup_end_io(struct dm_target *ti, struct bio *bio,
			     blk_status_t *error)
{
	struct qcow2dedup_c *c = ti->private;
	struct qcow2_bio *p = pb(bio);

	if (p->io_held) {
		p->io_held = false;
		io_unhold(c->q, p->io_idx);
	}
	return DM_ENDIO_DONE;
}

/* Work the worker still holds: bios, or operations not finished. */
static bool engine_busy(struct qcow2dedup *q)
{
	bool busy;

	spin_lock_irq(&q->lock);
	busy = !bio_list_empty(&q->deferred) || !list_empty(&q->completed) ||
	       !list_empty(&q->hashed);
	spin_unlock_irq(&q->lock);
	return busy || READ_ONCE(q->nr_ops);
}

/* Stop the timers and the rebuild's batches, and let the worker settle. */
static void quiesce(struct qcow2dedup *q)
{
	/*
	 * dm drains the I/O of a table before its postsuspend, but not when
	 * it destroys a device that was never suspended: finish what the
	 * worker holds before it stops.
	 */
	while (engine_busy(q)) {
		qcow2dedup_wake(q);
		flush_workqueue(q->wq);
		usleep_range(1000, 2000);
	}
	WRITE_ONCE(q->suspended, true);
	WRITE_ONCE(q->stopped, true);
	cancel_delayed_work_sync(&q->waker);
	cancel_delayed_work_sync(&q->retry);
	cancel_delayed_work_sync(&q->table.flusher);
	if (q->rebuild)
		WRITE_ONCE(q->rebuild->paused, true);
	/*
	 * A pass of the worker that read "paused" before it was set may still
	 * send rebuild batches: let it end first, then no batch can start,
	 * then wait for the batches, then let the worker take them back.
	 */
	flush_workqueue(q->wq);
	if (q->hash_wq)
		flush_workqueue(q->hash_wq);
	flush_workqueue(q->wq);
}

/*
 * Write back everything, the dedup table last and closed; called with no
 * I/O in flight and the worker stopped.  The next write after a resume
 * opens the table again.
 */
static void final_commit(struct qcow2dedup *q)
{
	int r;

	if (!q->writable || READ_ONCE(q->mode) != MODE_WRITE)
		return;
	r = qcow2dedup_table_before_commit(q);
	if (!r)
		r = qcow2_md_commit(q->md, true);
	if (!r)
		r = qcow2dedup_table_close(q);
	/* Closing the table may have committed (and reported) on the way. */
	if (r)
		qcow2dedup_metadata_error_once(q, "commit", r);
	WRITE_ONCE(q->autoclear_done, false);
}

/*
 * The engines.  An engine (struct qcow2dedup) is one image in service: its
 * metadata, index, table, worker and pools.  The tables of one mapped
 * device share it: a reload (lvchange --refresh, a new table line with the
 * same options) takes the live engine over, so that it reads nothing again
 * and the swap freezes I/O no longer than the suspend does.  A table that
 * changes what the engine was built for (the options, the length, the
 * device size, read-only or not) gets an engine of its own, but only while
 * the old one is suspended, which then retires.  Another mapped device
 * cannot use an image that one uses: QEMU's image locks do not see the
 * kernel, so the target keeps two writers apart itself (two read-only
 * devices may share an image).
 *
 * engines_lock protects the list, every engine's @refs, @retired and
 * @quiesced; it is held only briefly (never across the reading of an image).
 */
static DEFINE_MUTEX(engines_lock);
static LIST_HEAD(engines);

static void engine_free(struct qcow2dedup *q)
{
	if (q->wq) {
		cancel_delayed_work_sync(&q->waker);
		cancel_delayed_work_sync(&q->retry);
		cancel_delayed_work_sync(&q->table.flusher);
	}
	qcow2dedup_dedup_dtr(q);
	if (q->wq)
		destroy_workqueue(q->wq);
	qcow2dedup_rebuild_free(q);
	qcow2dedup_table_free(q);
	if (q->io)
		dm_io_client_destroy(q->io);
	bioset_exit(&q->bs);
	bioset_exit(&q->split_bs);
	mempool_exit(&q->buf_pool);
	mempool_exit(&q->op_pool);
	qcow2_decompressor_destroy(q->dc);
	kvfree(q->cbuf);
	kvfree(q->dbuf);
	qcow2_md_close(q->md);
	kfree(q);
}

/* Read the image's metadata; *@why names the problem for ti->error. */
static int engine_open_md(struct qcow2dedup *q, struct dm_target *ti,
			  struct qcow2_metadata **mdp, const char **why_str)
{
	struct qcow2_metadata *md;
	struct qcow2_refusal why;
	int r;

	md = qcow2_md_open(q->bdev, ti->len, q->writable, wait_for_readers, q, &why);
	if (!IS_ERR(md)) {
		qcow2_md_set_callbacks(md, qcow2dedup_survivor, guest_busy);
		*mdp = md;
		return 0;
	}
	r = PTR_ERR(md);
	if (r == -EINVAL) {
		*why_str = qcow2_err_str(why.err);
		DMERR("%pg: %s (value %llu = 0x%llx)", q->bdev, *why_str,
		      why.value, why.value);
	} else {
		*why_str = "Cannot read the qcow2 metadata";
		DMERR("%pg: cannot read the qcow2 metadata: %d", q->bdev, r);
	}
	return r;
}

/*
 * A new engine for the image on @bdev: the metadata is read and the dedup
 * table loaded now, while nothing is frozen (the device is not live, or
 * suspended by its owner for the change).
 */
static int engine_create(struct dm_target *ti, struct block_device *bdev,
			 const struct qcow2dedup_options *opt, bool writable,
			 struct qcow2dedup **qp)
{
	struct qcow2dedup *q;
	const char *why;
	int r;

	q = kzalloc(sizeof(*q), GFP_KERNEL);
	if (!q) {
		ti->error = "Cannot allocate target context";
		return -ENOMEM;
	}
	q->owner = dm_table_get_md(ti->table);
	q->bdev = bdev;
	q->opt = *opt;
	q->opt.argc = 0;
	q->opt.argv = NULL;
	mutex_init(&q->ctl);
	spin_lock_init(&q->lock);
	bio_list_init(&q->deferred);
	bio_list_init(&q->flushes);
	bio_list_init(&q->commit_waiters);
	INIT_LIST_HEAD(&q->completed);
	INIT_LIST_HEAD(&q->hashed);
	INIT_LIST_HEAD(&q->barrier_wait);
	bio_list_init(&q->barrier_bios);
	INIT_LIST_HEAD(&q->engines_node);
	INIT_WORK(&q->worker, do_worker);
	INIT_DELAYED_WORK(&q->waker, do_waker);
	INIT_DELAYED_WORK(&q->retry, do_retry);
	INIT_DELAYED_WORK(&q->table.flusher, qcow2dedup_table_flusher);
	init_waitqueue_head(&q->table.flush_wait);
	xa_init(&q->table.seen);
	q->busy = RB_ROOT;
	/* Not resumed yet: quiet, and nothing written. */
	q->suspended = true;
	q->quiesced = true;
	q->stopped = true;
	spin_lock_init(&q->io_lock);
	init_waitqueue_head(&q->io_wait);
	q->writable = writable;
	q->mode = MODE_WRITE;

	r = engine_open_md(q, ti, &q->md, &why);
	if (r) {
		ti->error = (char *)why;
		goto bad;
	}
	q->geo = qcow2_md_geometry(q->md);
	q->cluster_size = q->geo->cluster_size;
	q->size = q->geo->size;

	r = -ENOMEM;
	q->dc = qcow2_decompressor_create(q->geo->compression_type);
	q->cbuf = kvmalloc(2 * q->geo->cluster_size + SECTOR_SIZE, GFP_KERNEL);
	q->dbuf = kvmalloc(q->geo->cluster_size, GFP_KERNEL);
	if (!q->dc || !q->cbuf || !q->dbuf) {
		ti->error = "Cannot allocate decompression buffers";
		goto bad;
	}
	q->max_buffered_ops = clamp_t(u64, BUFFERED_BYTES >> q->geo->cluster_bits, 4, 256);
	q->max_ops = MAX_OPS;
	r = mempool_init_slab_pool(&q->op_pool, q->max_ops, op_cache);
	if (!r) {
		unsigned int nr = clamp_t(u64, RESERVED_BUF_BYTES >> q->geo->cluster_bits, 2,
					  q->max_buffered_ops);

		q->buf_order = q->geo->cluster_bits >= PAGE_SHIFT ?
			       q->geo->cluster_bits - PAGE_SHIFT : -1;
		r = q->buf_order < 0 ?
		    mempool_init_kmalloc_pool(&q->buf_pool, nr, q->geo->cluster_size) :
		    mempool_init_page_pool(&q->buf_pool, nr, q->buf_order);
	}
	if (r) {
		ti->error = "Cannot allocate the I/O memory pools";
		goto bad;
	}
	r = -ENOMEM;
	if (bioset_init(&q->bs, 64, 0, BIOSET_NEED_BVECS) ||
	    bioset_init(&q->split_bs, BIO_POOL_SIZE, 0, 0)) {
		ti->error = "Cannot allocate bio set";
		goto bad;
	}
	q->io = dm_io_client_create();
	if (IS_ERR(q->io)) {
		r = PTR_ERR(q->io);
		q->io = NULL;
		ti->error = "Cannot create dm-io client";
		goto bad;
	}
	q->wq = alloc_workqueue("dm-" DM_MSG_PREFIX, WQ_MEM_RECLAIM, 0);
	if (!q->wq) {
		ti->error = "Cannot allocate workqueue";
		goto bad;
	}
	if (!q->opt.nodedup) {
		r = qcow2dedup_dedup_ctr(q, ti);
		if (r)
			goto bad;
	}
	r = qcow2dedup_table_init(q);
	if (!r && q->dedup)
		r = qcow2dedup_rebuild_init(q);
	if (r) {
		ti->error = "Cannot allocate the dedup table";
		goto bad;
	}
	r = qcow2dedup_table_load(q);
	if (r) {
		ti->error = "Cannot read the dedup table";
		DMERR("%pg: cannot read the dedup table: %d", q->bdev, r);
		goto bad;
	}
	*qp = q;
	return 0;
bad:
	engine_free(q);
	return r;
}

/* Why a table cannot use engine @q, or NULL if it can. */
static const char *engine_mismatch(struct qcow2dedup *q, const struct qcow2dedup_options *o,
				   struct dm_target *ti, bool writable)
{
	if (q->writable != writable)
		return "read-only or read-write";
	if ((u64)ti->len << SECTOR_SHIFT != q->geo->size)
		return "length";
	if (bdev_nr_bytes(q->bdev) != q->geo->dev_size)
		return "device size";
	if (o->nodedup != q->opt.nodedup || o->verify != q->opt.verify ||
	    strcmp(o->hash, q->opt.hash) || o->index_limit_mib != q->opt.index_limit_mib ||
	    o->flush_interval_ms != q->opt.flush_interval_ms)
		return "options";
	return NULL;
}

/*
 * Another mapped device using the image on @bdev in a way that excludes
 * this table (a writer on either side), or NULL.  Under engines_lock.
 */
static struct qcow2dedup *engine_conflict(struct block_device *bdev,
					  struct mapped_device *owner, bool writable)
{
	struct qcow2dedup *q;

	list_for_each_entry(q, &engines, engines_node)
		if (q->bdev == bdev && q->owner != owner && !q->retired &&
		    (writable || q->writable))
			return q;
	return NULL;
}

/*
 * The engine of this mapped device for @bdev: the live one, else the
 * newest (a table loaded but not resumed yet).  Under engines_lock.
 */
static struct qcow2dedup *engine_own(struct block_device *bdev,
				     struct mapped_device *owner)
{
	struct qcow2dedup *q, *newest = NULL;

	list_for_each_entry(q, &engines, engines_node) {
		if (q->bdev != bdev || q->owner != owner || q->retired)
			continue;
		if (!q->quiesced)
			return q;
		if (!newest)
			newest = q;
	}
	return newest;
}

static int engine_refuse_conflict(struct dm_target *ti, struct qcow2dedup *other,
				  struct block_device *bdev)
{
	char name[DM_NAME_LEN] = "";

	dm_copy_name_and_uuid(other->owner, name, NULL);
	ti->error = "Device already in use by another qcow2dedup device";
	DMERR("%pg: already in use by qcow2dedup device %s (%s, %s): refused", bdev, name,
	      dm_device_name(other->owner), other->writable ? "read-write" : "read-only");
	return -EBUSY;
}

/* Find or make the engine of target @c. */
static int engine_get(struct qcow2dedup_c *c, const struct qcow2dedup_options *o,
		      bool writable)
{
	struct dm_target *ti = c->ti;
	struct mapped_device *owner = dm_table_get_md(ti->table);
	struct block_device *bdev = c->dev->bdev;
	struct qcow2dedup *q, *old, *other;
	const char *why;
	int r;

	mutex_lock(&engines_lock);
	other = engine_conflict(bdev, owner, writable);
	if (other) {
		r = engine_refuse_conflict(ti, other, bdev);
		mutex_unlock(&engines_lock);
		return r;
	}
	old = engine_own(bdev, owner);
	if (old) {
		why = engine_mismatch(old, o, ti, writable);
		if (!why) {
			old->refs++;
			c->q = old;
			mutex_unlock(&engines_lock);
			return 0;
		}
		if (!old->quiesced) {
			mutex_unlock(&engines_lock);
			ti->error = "Cannot change the table of an active device: suspend it first";
			DMERR("%s: new table changes the %s: suspend the device before loading it",
			      dm_device_name(owner), why);
			return -EBUSY;
		}
	}
	mutex_unlock(&engines_lock);

	r = engine_create(ti, bdev, o, writable, &q);
	if (r)
		return r;

	mutex_lock(&engines_lock);
	other = engine_conflict(bdev, owner, writable);
	if (other || (old && (engine_own(bdev, owner) != old || !old->quiesced)) ||
	    (!old && engine_own(bdev, owner))) {
		/* Another table came first, or the device was resumed: try again. */
		r = other ? engine_refuse_conflict(ti, other, bdev) : -EBUSY;
		if (!other)
			ti->error = "The device changed while the table was loaded";
		mutex_unlock(&engines_lock);
		engine_free(q);
		return r;
	}
	/* The old engine retires when this one goes live (its preresume). */
	q->refs = 1;
	list_add(&q->engines_node, &engines);
	mutex_unlock(&engines_lock);
	c->q = q;
	return 0;
}

/* The last table of @q went: write everything back and free it. */
static void engine_put(struct qcow2dedup *q)
{
	bool last;

	mutex_lock(&engines_lock);
	last = !--q->refs;
	if (last)
		list_del(&q->engines_node);
	mutex_unlock(&engines_lock);
	if (!last)
		return;
	quiesce(q);
	/* A retired engine wrote its last at its suspend; the image is not its own. */
	if (!q->retired)
		final_commit(q);
	engine_free(q);
}

static void target_free(struct qcow2dedup_c *c)
{
	/* A later table allocated at the same address is not this one. */
	if (c->q && c->q->active == c)
		c->q->active = NULL;
	if (c->q)
		engine_put(c->q);
	if (c->dev)
		dm_put_device(c->ti, c->dev);
	while (c->opt.argc)
		kfree(c->opt.argv[--c->opt.argc]);
	kfree(c->opt.argv);
	kfree(c);
}

/*
 * Optional arguments (see the admin guide):
 *   nodedup | verify | hash <alg> | index_limit <MiB> | flush_interval <ms>
 * They are kept as given, for the table line.
 */
static int parse_options(struct dm_target *ti, struct dm_arg_set *as,
			 struct qcow2dedup_options *o)
{
	static const struct dm_arg _args[] = {
		{0, 8, "Invalid number of optional arguments"},
	};
	bool hash = false, interval = false;
	unsigned int argc, i;
	const char *arg;
	int r;

	strscpy(o->hash, "sha256", sizeof(o->hash));
	o->flush_interval_ms = TABLE_FLUSH_MS;
	if (!as->argc)
		return 0;
	r = dm_read_arg_group(_args, as, &argc, &ti->error);
	if (r)
		return r;
	o->argv = kcalloc(argc, sizeof(char *), GFP_KERNEL);
	if (!o->argv) {
		ti->error = "Cannot allocate optional arguments";
		return -ENOMEM;
	}
	for (i = 0; i < argc; i++) {
		o->argv[i] = kstrdup(as->argv[i], GFP_KERNEL);
		if (!o->argv[i]) {
			ti->error = "Cannot allocate optional arguments";
			return -ENOMEM;
		}
		o->argc++;
	}
	for (i = 0; i < argc; i++) {
		arg = dm_shift_arg(as);
		if (!strcasecmp(arg, "nodedup")) {
			o->nodedup = true;
		} else if (!strcasecmp(arg, "verify")) {
			o->verify = true;
		} else if (!strcasecmp(arg, "hash") && i + 1 < argc) {
			arg = dm_shift_arg(as);
			i++;
			/* The dedup table stores the name, NUL-terminated. */
			if (strlen(arg) >= QDT_HASH_NAME_LEN ||
			    strscpy(o->hash, arg, sizeof(o->hash)) < 0) {
				ti->error = "Hash algorithm name too long (at most 31 characters)";
				return -EINVAL;
			}
			hash = true;
		} else if (!strcasecmp(arg, "index_limit") && i + 1 < argc) {
			arg = dm_shift_arg(as);
			i++;
			if (kstrtou64(arg, 10, &o->index_limit_mib) || !o->index_limit_mib ||
			    o->index_limit_mib > (U64_MAX >> 20)) {
				ti->error = "Invalid index_limit (MiB, at least 1)";
				return -EINVAL;
			}
		} else if (!strcasecmp(arg, "flush_interval") && i + 1 < argc) {
			arg = dm_shift_arg(as);
			i++;
			if (kstrtouint(arg, 10, &o->flush_interval_ms) ||
			    !o->flush_interval_ms || o->flush_interval_ms > 3600000) {
				ti->error = "Invalid flush_interval (milliseconds, 1 to 3600000)";
				return -EINVAL;
			}
			interval = true;
		} else {
			ti->error = "Unknown or incomplete optional argument";
			return -EINVAL;
		}
	}
	if (as->argc) {
		ti->error = "Unexpected extra arguments";
		return -EINVAL;
	}
	if (o->nodedup && (o->verify || hash || o->index_limit_mib || interval)) {
		ti->error = "nodedup excludes verify, hash, index_limit and flush_interval";
		return -EINVAL;
	}
	return 0;
}

/*
 * Construct a mapping:
 *   <dev> [<#opt_args> <opt_args>...]
 */
static int qcow2dedup_ctr(struct dm_target *ti, unsigned int argc, char **argv)
{
	struct dm_arg_set as = { .argc = argc, .argv = argv };
	struct qcow2dedup_c *c;
	struct qcow2dedup *q;
	const char *path;
	bool writable;
	int r;

	if (argc < 1) {
		ti->error = "Missing device argument";
		return -EINVAL;
	}
	c = kzalloc(sizeof(*c), GFP_KERNEL);
	if (!c) {
		ti->error = "Cannot allocate target context";
		return -ENOMEM;
	}
	c->ti = ti;
	path = dm_shift_arg(&as);
	r = parse_options(ti, &as, &c->opt);
	if (r)
		goto bad;
	writable = dm_table_get_mode(ti->table) & BLK_OPEN_WRITE;
	r = dm_get_device(ti, path, dm_table_get_mode(ti->table), &c->dev);
	if (r) {
		ti->error = "Device lookup failed";
		goto bad;
	}
	r = engine_get(c, &c->opt, writable);
	if (r)
		goto bad;
	q = c->q;

	ti->num_flush_bios = 1;
	ti->flush_supported = true;
	ti->per_io_data_size = sizeof(struct qcow2_bio);
	if (q->writable) {
		ti->num_discard_bios = 1;
		ti->discards_supported = true;
		ti->num_write_zeroes_bios = 1;
	}
	ti->private = c;
	return 0;
bad:
	target_free(c);
	return r;
}

static void qcow2dedup_dtr(struct dm_target *ti)
{
	target_free(ti->private);
}

static void qcow2dedup_presuspend(struct dm_target *ti)
{
	struct qcow2dedup *q = ((struct qcow2dedup_c *)ti->private)->q;

	WRITE_ONCE(q->suspended, true);
	cancel_delayed_work_sync(&q->waker);
	cancel_delayed_work_sync(&q->table.flusher);
	if (q->rebuild)
		WRITE_ONCE(q->rebuild->paused, true);
}

static void qcow2dedup_postsuspend(struct dm_target *ti)
{
	struct qcow2dedup *q = ((struct qcow2dedup_c *)ti->private)->q;

	quiesce(q);
	final_commit(q);
	mutex_lock(&engines_lock);
	WRITE_ONCE(q->quiesced, true);
	mutex_unlock(&engines_lock);
}

/*
 * The image changed while the device was suspended, or the table was
 * reloaded to leave read-only or fail mode: read the metadata again and
 * load the dedup table again.  The buffers stay, so the geometry they were
 * sized for must not have changed.  Under q->ctl, with the worker idle.
 */
static int engine_reload(struct qcow2dedup *q, struct dm_target *ti)
{
	const struct qcow2_geometry *g, *old = q->geo;
	struct qcow2_metadata *md;
	const char *why = NULL;
	int r;

	r = engine_open_md(q, ti, &md, &why);
	if (r) {
		DMERR("%s: resume refused: %s", qcow2dedup_dev_name(q), why);
		return r;
	}
	g = qcow2_md_geometry(md);
	if (g->cluster_bits != old->cluster_bits)
		why = "cluster size";
	else if (g->dev_size != old->dev_size)
		why = "device size";
	else if (g->version != old->version)
		why = "qcow2 version";
	else if (g->compression_type != old->compression_type)
		why = "compression type";
	if (why) {
		DMERR("%s: resume refused: the image's %s changed while suspended: reload",
		      qcow2dedup_dev_name(q), why);
		qcow2_md_close(md);
		return -EINVAL;
	}
	/* engine_mismatch() reads the geometry under engines_lock. */
	mutex_lock(&engines_lock);
	swap(q->md, md);
	q->geo = g;
	mutex_unlock(&engines_lock);
	qcow2_md_close(md);
	WRITE_ONCE(q->autoclear_done, false);
	r = qcow2dedup_table_reload(q);
	if (r) {
		DMERR("%s: cannot read the dedup table: %d", qcow2dedup_dev_name(q), r);
		return r;
	}
	WRITE_ONCE(q->mode, MODE_WRITE);
	return 0;
}

/*
 * The index after a suspend with the image unchanged as far as the header,
 * L1 and refcount table show.  A QEMU writer would have cleared the dedup
 * table's autoclear bit; when the bit is not set on disk (no table, or one
 * this activation never opened), writes to L2 tables and data would go
 * unseen, and the index's digests and referrers could be stale: it goes,
 * and a rebuild makes it again where there is a table.  Otherwise a rebuild
 * batch hashed before the suspend is hashed again (the bytes it read are
 * from before), and every entry is a hint until compared (in the worker).
 */
static void engine_resume_index(struct qcow2dedup *q)
{
	if (!q->dedup)
		return;
	if (!q->table.enabled ||
	    !(q->geo->autoclear_features & QCOW2_AUTOCLEAR_DEDUP_TABLE)) {
		qcow2dedup_index_forget(q);
		return;
	}
	qcow2dedup_rebuild_rehash(q);
	WRITE_ONCE(q->reverify, true);
}

/* @q goes live: older engines of the same device and image retire. */
static void engine_retire_others(struct qcow2dedup *q)
{
	struct qcow2dedup *o;

	mutex_lock(&engines_lock);
	list_for_each_entry(o, &engines, engines_node)
		if (o != q && o->bdev == q->bdev && o->owner == q->owner)
			o->retired = true;
	mutex_unlock(&engines_lock);
}

/*
 * Before every resume: the engine's metadata is kept over a suspend, a
 * reload of the same table included, unless another program wrote the
 * image meanwhile (qcow2_md_unchanged()) or a new table should leave a
 * read-only or fail mode.  The index's entries are compared with their
 * clusters again before their next share (the worker marks them): what a
 * suspend lets happen to the image is not trusted either.
 */
static int qcow2dedup_preresume(struct dm_target *ti)
{
	struct qcow2dedup_c *c = ti->private;
	struct qcow2dedup *q = c->q;
	unsigned int noio;
	int r;

	bool error_mode, reload;

	mutex_lock(&q->ctl);
	if (READ_ONCE(q->retired)) {
		DMERR("%s: resume refused: a newer table replaced this one; load it again",
		      qcow2dedup_dev_name(q));
		r = -EBUSY;
		goto out;
	}
	/* A worker pass under way sees the engine stopped and ends. */
	flush_workqueue(q->wq);
	noio = memalloc_noio_save();
	error_mode = READ_ONCE(q->mode) != MODE_WRITE;
	/*
	 * A reload that failed half-way is done again.  In read-only or fail
	 * mode nothing is read again (nothing is written either) but for a
	 * new table, which is how one leaves that mode.
	 */
	reload = q->must_reload || (error_mode && q->active != c);
	r = 0;
	if (!reload && !error_mode) {
		r = qcow2_md_unchanged(q->md);
		reload = !r;
		r = r < 0 ? r : 0;
	}
	if (!r && reload) {
		DMINFO("%s: %s: reading the metadata again", qcow2dedup_dev_name(q),
		       error_mode ? "leaving the error mode" :
		       "the image was changed while the device was suspended");
		r = engine_reload(q, ti);
		q->must_reload = !!r;
	} else if (!r && !error_mode) {
		engine_resume_index(q);
	}
	memalloc_noio_restore(noio);
	q->dbuf_offset = 0;
	if (!r)
		engine_retire_others(q);
out:
	mutex_unlock(&q->ctl);
	return r;
}

static void qcow2dedup_resume(struct dm_target *ti)
{
	struct qcow2dedup_c *c = ti->private;
	struct qcow2dedup *q = c->q;

	q->active = c;
	mutex_lock(&engines_lock);
	WRITE_ONCE(q->quiesced, false);
	mutex_unlock(&engines_lock);
	WRITE_ONCE(q->stopped, false);
	if (!q->writable)
		return;
	WRITE_ONCE(q->suspended, false);
	queue_delayed_work(q->wq, &q->waker, COMMIT_PERIOD);
	qcow2dedup_table_schedule(q);
	if (q->rebuild)
		WRITE_ONCE(q->rebuild->paused, false);
	qcow2dedup_wake(q);
}

/*
 * Status:
 *   INFO:  <mode> <qcow2_version> <cluster_size> <used_clusters>/<device_clusters>
 *	    <staged> <clusters_allocated> <cow_copies> <reads_deferred>
 *	    <reads_compressed> <dedup_hits> <zero_clusters> <index_entries>
 *	    <table_state>
 *   TABLE: <dev> [<#opt_args> <opt_args>...], as given
 *
 * Under q->ctl: a resume may replace the metadata.
 */
static void qcow2dedup_status(struct dm_target *ti, status_type_t type,
			      unsigned int status_flags, char *result,
			      unsigned int maxlen)
{
	struct qcow2dedup_c *c = ti->private;
	struct qcow2dedup *q = c->q;
	const char *mode = q->writable ? qcow2dedup_mode_names[READ_ONCE(q->mode)] : "read-only";
	unsigned int sz = 0;
	u64 used = 0, total = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		mutex_lock(&q->ctl);
		if (q->writable)
			qcow2_md_usage(q->md, &used, &total);
		DMEMIT("%s %u %llu ", mode, q->geo->version, q->geo->cluster_size);
		if (q->writable)
			DMEMIT("%llu/%llu %lu ", used, total,
			       qcow2_md_nr_pending(q->md));
		else
			DMEMIT("-/- 0 ");
		DMEMIT("%lld %lld %lld %lld %lld %lld %llu %s",
		       (long long)atomic64_read(&q->clusters_allocated),
		       (long long)atomic64_read(&q->cow_copies),
		       (long long)atomic64_read(&q->reads_deferred),
		       (long long)atomic64_read(&q->reads_compressed),
		       (long long)atomic64_read(&q->dedup_hits),
		       (long long)atomic64_read(&q->zero_clusters),
		       READ_ONCE(q->index.entries), qcow2dedup_table_state(q));
		mutex_unlock(&q->ctl);
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s", c->dev->name);
		if (c->opt.argc) {
			unsigned int i;

			DMEMIT(" %u", c->opt.argc);
			for (i = 0; i < c->opt.argc; i++)
				DMEMIT(" %s", c->opt.argv[i]);
		}
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",dev=%s,mode=%s;", c->dev->name, mode);
		break;
	}
}

/*
 * Messages:
 *   stats	one "name value" line per counter
 *   flush	commit and write the dedup table back; returns when on disk
 *   rebuild	hash the clusters the index does not know, in the background
 */
static int qcow2dedup_message(struct dm_target *ti, unsigned int argc,
			      char **argv, char *result, unsigned int maxlen)
{
	struct qcow2dedup *q = ((struct qcow2dedup_c *)ti->private)->q;
	bool flush;
	int r;

	if (argc == 1 && !strcasecmp(argv[0], "stats")) {
		mutex_lock(&q->ctl);
		r = qcow2dedup_stats(q, result, maxlen);
		mutex_unlock(&q->ctl);
		return r;
	}
	if (argc != 1 || (strcasecmp(argv[0], "flush") && strcasecmp(argv[0], "rebuild"))) {
		DMERR("%s: unknown message \"%s\" (known: stats, flush, rebuild)",
		      qcow2dedup_dev_name(q), argc ? argv[0] : "");
		return -EINVAL;
	}
	flush = !strcasecmp(argv[0], "flush");
	mutex_lock(&q->ctl);
	if (!q->writable || READ_ONCE(q->mode) != MODE_WRITE) {
		DMERR("%s: %s refused: the target is in %s mode",
		      qcow2dedup_dev_name(q), argv[0], q->writable ?
		      qcow2dedup_mode_names[READ_ONCE(q->mode)] : "read-only");
		r = -EROFS;
	} else if (!flush && !q->rebuild) {
		DMERR("%s: rebuild refused: deduplication is off", qcow2dedup_dev_name(q));
		r = -EINVAL;
	} else {
		if (!flush)
			qcow2dedup_rebuild_start(q, false);
		r = 0;
	}
	mutex_unlock(&q->ctl);
	/* Not under q->ctl: the flush waits for the worker. */
	if (!r && flush)
		r = qcow2dedup_table_message_flush(q);
	return r;
}

static int qcow2dedup_iterate_devices(struct dm_target *ti,
				      iterate_devices_callout_fn fn, void *data)
{
	struct qcow2dedup_c *c = ti->private;

	return fn(ti, c->dev, 0, bdev_nr_sectors(c->dev->bdev), data);
}

static void qcow2dedup_io_hints(struct dm_target *ti,
				struct queue_limits *limits)
{
	struct qcow2dedup *q = ((struct qcow2dedup_c *)ti->private)->q;
	u64 cs = q->cluster_size;

	limits->io_opt = cs;
	/*
	 * 4 KiB physical blocks where clusters and the disk size allow; the
	 * logical block size stays 512 bytes, as QEMU presents the disk.
	 */
	if (cs >= 4096 && !(q->size & 4095)) {
		limits->physical_block_size = 4096;
		limits->io_min = 4096;
	}
	if (q->writable) {
		limits->discard_granularity = cs;
		limits->max_hw_discard_sectors = UINT_MAX >> SECTOR_SHIFT;
		/*
		 * Write-zeroes is done here, in whole clusters where it can
		 * (zero entries), whatever <dev> takes: a multiple of the
		 * cluster size, so that long ones are not cut into pieces
		 * smaller than a cluster.
		 */
		limits->max_write_zeroes_sectors =
			round_down(UINT_MAX >> SECTOR_SHIFT, cs >> SECTOR_SHIFT);
	}
}

static struct target_type qcow2dedup_target = {
	.name = "qcow2dedup",
	.version = {1, 3, 0},
	.module = THIS_MODULE,
	.ctr = qcow2dedup_ctr,
	.dtr = qcow2dedup_dtr,
	.map = qcow2dedup_map,
	.end_io = qcow2dedup_end_io,
	.presuspend = qcow2dedup_presuspend,
	.postsuspend = qcow2dedup_postsuspend,
	.presuspend_undo = qcow2dedup_resume,
	.preresume = qcow2dedup_preresume,
	.resume = qcow2dedup_resume,
	.status = qcow2dedup_status,
	.message = qcow2dedup_message,
	.iterate_devices = qcow2dedup_iterate_devices,
	.io_hints = qcow2dedup_io_hints,
};

static int __init dm_qcow2dedup_init(void)
{
	int r;

	op_cache = KMEM_CACHE(qcow2_op, 0);
	if (!op_cache)
		return -ENOMEM;
	r = dedup_cache_create();
	if (r)
		goto bad_op;
	r = dm_register_target(&qcow2dedup_target);
	if (r)
		goto bad_dedup;
	return 0;
bad_dedup:
	dedup_cache_destroy();
bad_op:
	kmem_cache_destroy(op_cache);
	return r;
}

static void __exit dm_qcow2dedup_exit(void)
{
	dm_unregister_target(&qcow2dedup_target);
	dedup_cache_destroy();
	kmem_cache_destroy(op_cache);
}

module_init(dm_qcow2dedup_init);
module_exit(dm_qcow2dedup_exit);

MODULE_DESCRIPTION(DM_NAME " qcow2 image target with inline deduplication");
MODULE_AUTHOR("dm-qcow2dedup developers");
MODULE_LICENSE("GPL");
