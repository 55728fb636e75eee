// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: the engine's core services, which every layer above uses
 * and which call nothing above them: operations and their cluster
 * buffers (from mempools), the readers of host clusters, synchronous and
 * asynchronous dm-io, the read of a partial write's old contents, the end
 * of an operation, and the error modes.
 *
 * Reuse of freed clusters.  Every bio remapped to a host cluster is counted
 * as a reader from map() to end_io (qcow2dedup_io_hold()), and so is the
 * worker's write in place of a row (start_in_place() in engine-worker.c)
 * until its clone ends; a commit waits
 * for the readers of clusters it is about to free, so a freed cluster is
 * never reused while a bio still reads or writes it.
 *
 * Modes.  A metadata I/O error switches the target from "write" to
 * "read-only" (writes fail, reads go on from what is in memory; nothing more
 * is written to the metadata), and a second one to "fail" (all I/O fails).
 *
 * Locking: @q->lock protects the lists of work for the worker (deferred
 * bios, flushes, completed and hashed operations); @q->readers takes no
 * lock in its holders (io-readers.h); @q->inflaters hands each caller an
 * inflater of its own (io-inflaters.h).  Everything else here belongs to the
 * worker, but for the completion handlers, which only move an operation to
 * a list under @q->lock and wake the worker.
 */
#include <linux/dm-io.h>
#include <linux/slab.h>

#include "dm-qcow2dedup.h"
#include "qcow2-decompress.h"

const char * const qcow2dedup_mode_names[] = {
	[MODE_WRITE] = "write",
	[MODE_READ_ONLY] = "read-only",
	[MODE_FAIL] = "fail",
};

const char *qcow2dedup_dev_name(struct qcow2dedup *q)
{
	return dm_device_name(q->owner);
}

void qcow2dedup_wake(struct qcow2dedup *q)
{
	queue_work(q->wq, &q->worker);
}

void qcow2dedup_defer_bio(struct qcow2dedup *q, struct bio *bio)
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
 * Readers of host clusters (io-readers.c): every bio remapped to a host
 * cluster holds the current generation from map() (or the worker) until
 * its end_io; a commit about to free clusters waits for the generations
 * taken before it.
 */
void qcow2dedup_md_wait_for_readers(void *ctx)
{
	struct qcow2dedup *q = ctx;

	/* The commit retired the generation before it wrote (if it frees). */
	qcow2dedup_readers_wait_retired(&q->readers);
}

void qcow2dedup_wait_for_readers(struct qcow2dedup *q)
{
	qcow2dedup_readers_wait(&q->readers);
}

int qcow2dedup_io_hold(struct qcow2dedup *q)
{
	return qcow2dedup_readers_hold(&q->readers);
}

void qcow2dedup_io_unhold(struct qcow2dedup *q, int idx)
{
	qcow2dedup_readers_unhold(&q->readers, idx);
}

/* Remap @bio to host byte @host_off; it stays counted as a reader until end_io. */
void qcow2dedup_remap_held(struct qcow2dedup *q, struct bio *bio, u64 host_off,
			   int io_idx)
{
	qcow2dedup_pb(bio)->io_idx = io_idx;
	qcow2dedup_pb(bio)->io_held = true;
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

/* The end of qcow2dedup_zero_in_place()'s write: in any context. */
static void zeroed_in_place(struct bio *bio, bool last, unsigned long error)
{
	struct qcow2_bio *p = qcow2dedup_pb(bio);
	struct qcow2dedup *q = p->q;

	atomic_dec(&q->zeroes_in_place_inflight);
	qcow2dedup_io_unhold(q, p->zero_idx[last]);
	qcow2dedup_piece_done(bio, error ? BLK_STS_IOERR : BLK_STS_OK);
}

static void first_zeroed(unsigned long error, void *ctx)
{
	zeroed_in_place(ctx, false, error);
}

static void last_zeroed(unsigned long error, void *ctx)
{
	zeroed_in_place(ctx, true, error);
}

/**
 * qcow2dedup_zero_in_place() - write zeros over part of a cluster of
 *	refcount one, beside the worker: a piece of write-zeroes @bio.
 * @q: target (worker).
 * @bio: the write-zeroes; @remaining counts this piece already, @q is set.
 * @last: the piece is in @bio's last cluster, not its first (only those
 *	two can be partial).
 * @host_off: device byte where the zeros go.
 * @len: bytes (sectors), within the cluster.
 *
 * The cluster is unindexed (qcow2dedup_forget_host()).  The write counts
 * as a reader (qcow2dedup_io_hold()) like a remapped bio, so a commit that
 * frees the cluster (a discard of its guest cluster that came next) waits
 * for it before the cluster can be reused.  Zeros are written, not
 * offloaded (REQ_OP_WRITE_ZEROES may be unsupported): a partial cluster
 * is at most 2 MiB.
 */
void qcow2dedup_zero_in_place(struct qcow2dedup *q, struct bio *bio, bool last,
			      u64 host_off, u64 len)
{
	struct qcow2_bio *p = qcow2dedup_pb(bio);
	struct dm_io_region region = {
		.bdev = q->bdev,
		.sector = host_off >> SECTOR_SHIFT,
		.count = len >> SECTOR_SHIFT,
	};
	struct dm_io_request req = {
		.bi_opf = REQ_OP_WRITE,
		.mem.type = DM_IO_PAGE_LIST,
		.mem.ptr.pl = &q->zero_pages,
		.notify.fn = last ? last_zeroed : first_zeroed,
		.notify.context = bio,
		.client = q->io,
	};
	unsigned int n = atomic_inc_return(&q->zeroes_in_place_inflight);

	qcow2dedup_assert_worker(q);
	if (n > q->zeroes_in_place_inflight_max)
		WRITE_ONCE(q->zeroes_in_place_inflight_max, n);
	atomic64_inc(&q->zeroes_in_place);
	p->zero_idx[last] = qcow2dedup_io_hold(q);
	/* Asynchronous dm_io() fails only on bad arguments: end it anyway. */
	if (dm_io(&req, 1, &region, NULL, IOPRIO_DEFAULT))
		req.notify.fn(1, bio);
}

/**
 * qcow2dedup_inflate() - read and inflate the compressed cluster behind
 *	@info, beside any other such read.
 * @q: target.
 * @info: a compressed L2 entry (checked by the decoder: its bytes lie
 *	within the device's clusters, below 2 clusters plus a sector).
 *
 * Context: process context (@q->read_wq); sleeps for the read, and for an
 * inflater when all are taken.
 * Return: an inflater whose @dbuf holds the cluster (give it back with
 * qcow2_inflater_put()), or NULL: a read error or corrupt data (logged).
 */
struct qcow2_inflater *qcow2dedup_inflate(struct qcow2dedup *q,
					  const struct qcow2_l2e_info *info)
{
	u64 start = round_down(info->host_offset, SECTOR_SIZE);
	u64 end = min(info->host_offset + info->compressed_len, q->geo->dev_size);
	struct qcow2_inflater *inf;
	int r;

	inf = qcow2_inflater_get(&q->inflaters, info->host_offset);
	if (inf->cached == info->host_offset)
		return inf;
	r = qcow2dedup_sync_io(q, REQ_OP_READ, inf->cbuf, start,
			       round_up(end - start, SECTOR_SIZE));
	if (!r) {
		r = qcow2_decompress(inf->dc, inf->cbuf + (info->host_offset - start),
				     end - info->host_offset, inf->dbuf,
				     q->geo->cluster_size);
		if (r)
			DMERR_LIMIT("%s: corrupt compressed cluster at host offset %llu",
				    qcow2dedup_dev_name(q), info->host_offset);
	}
	if (r) {
		qcow2_inflater_put(&q->inflaters, inf);
		return NULL;
	}
	inf->cached = info->host_offset;
	return inf;
}

void qcow2dedup_copy_from_bio(struct qcow2dedup *q, struct bio *bio, void *data)
{
	u64 off = qcow2_offset_in_cluster(q->geo, qcow2dedup_guest_offset(bio));
	struct bvec_iter iter;
	struct bio_vec bv;

	bio_for_each_segment(bv, bio, iter) {
		memcpy_from_bvec(data + off, &bv);
		off += bv.bv_len;
	}
}

/*
 * Operations in flight, by guest cluster: rb_find()/rb_add() helpers.  An
 * operation covers [@guest_cluster, + @clusters); those of the tree never
 * overlap, so their starts and ends are in the same order.
 */
static int op_cmp_key(const void *key, const struct rb_node *node)
{
	u64 gc = *(const u64 *)key;
	const struct qcow2_op *op = rb_entry(node, struct qcow2_op, node);

	if (gc < op->guest_cluster)
		return -1;
	return gc - op->guest_cluster >= op->clusters;
}

bool qcow2dedup_op_less(struct rb_node *a, const struct rb_node *b)
{
	return rb_entry(a, struct qcow2_op, node)->guest_cluster <
	       rb_entry(b, struct qcow2_op, node)->guest_cluster;
}

struct qcow2_op *qcow2dedup_busy_find(struct qcow2dedup *q, u64 gc)
{
	struct rb_node *n = rb_find(&gc, &q->busy, op_cmp_key);

	return n ? rb_entry(n, struct qcow2_op, node) : NULL;
}

/*
 * qcow2-copied.c: an operation on guest cluster @gc holds a copy of its
 * old contents (or is writing it); COPIED must not come back under it, or
 * a write going in place meanwhile would be lost when the operation ends.
 */
bool qcow2dedup_md_guest_busy(void *ctx, u64 gc)
{
	return qcow2dedup_busy_find(ctx, gc);
}

bool qcow2dedup_guest_busy(struct qcow2dedup *q, u64 gc)
{
	return qcow2dedup_busy_find(q, gc);
}

void qcow2dedup_op_done(struct qcow2_op *op, blk_status_t status)
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

void qcow2dedup_clone_endio(struct bio *clone)
{
	struct qcow2_op *op = clone->bi_private;
	blk_status_t status = clone->bi_status;

	bio_put(clone);
	qcow2dedup_op_done(op, status);
}

static void buffered_endio(unsigned long error, void *context)
{
	qcow2dedup_op_done(context, error ? BLK_STS_IOERR : BLK_STS_OK);
}

/**
 * qcow2dedup_write_buffer() - write the cluster in @op->buf to
 *	@op->host_off; the op completes through the worker (finish_op() in engine-worker.c).
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

/* Complete one piece of a bio that may have several (write-zeroes, run write). */
void qcow2dedup_piece_done(struct bio *bio, blk_status_t status)
{
	struct qcow2_bio *p = qcow2dedup_pb(bio);

	if (status)
		p->status = status;
	if (atomic_dec_and_test(&p->remaining)) {
		bio->bi_status = p->status;
		bio_endio(bio);
	}
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

/* Any context: the read of @op's old contents is over. */
static void rmw_endio(unsigned long error, void *context)
{
	struct qcow2_op *op = context;
	struct qcow2dedup *q = op->q;

	qcow2dedup_io_unhold(q, op->rmw_io_idx);
	atomic_dec(&q->rmw_inflight);
	op->rmw_done(op, error);
}

/* @q->read_wq: inflate the old contents of @op's compressed cluster. */
static void rmw_inflate_work(struct work_struct *ws)
{
	struct qcow2_op *op = container_of(ws, struct qcow2_op, rmw_work);
	struct qcow2dedup *q = op->q;
	struct qcow2_inflater *inf = qcow2dedup_inflate(q, &op->rmw_old);

	if (inf) {
		memcpy(op->buf, inf->dbuf, q->geo->cluster_size);
		qcow2_inflater_put(&q->inflaters, inf);
	}
	rmw_endio(!inf, op);
}

/**
 * qcow2dedup_read_old_async() - read the old contents of @op's guest
 *	cluster into @op->buf without waiting.
 * @q: target.
 * @op: a buffered operation in @q->busy, on no list.
 * @type: the guest cluster's mapping now: QCOW2_CLUSTER_NORMAL (read with
 *	dm-io) or QCOW2_CLUSTER_COMPRESSED (read and inflated on
 *	@q->read_wq, beside the reads of compressed clusters).
 * @info: where it is.
 * @done: called with @op at the end of the read, in any context (so it
 *	may only queue @op for the worker or for hash_wq).
 *
 * The worker goes on with other requests meanwhile.  The cluster cannot
 * change under the read: its guest cluster is busy (no other write or
 * discard of it starts), so its reference stays; the read also counts as
 * a reader (qcow2dedup_io_hold()), as every bio on the device does.  On a
 * consistent image that reference alone keeps the cluster; the hold is
 * for an image whose refcount is below its references (another guest
 * cluster's rewrite can take it to zero, and the cluster be reused under
 * the read): then a freeing commit waits for the read, which moves the
 * guest cluster off with its true old bytes.  A compressed cluster's read
 * may first wait for an inflater; the pool serves waiters in order, so
 * that commit waits for at most the reads queued before this one.
 */
void qcow2dedup_read_old_async(struct qcow2dedup *q, struct qcow2_op *op,
			       enum qcow2_cluster_type type,
			       const struct qcow2_l2e_info *info,
			       void (*done)(struct qcow2_op *op, bool error))
{
	unsigned int n = atomic_inc_return(&q->rmw_inflight);

	if (n > q->rmw_inflight_max)
		WRITE_ONCE(q->rmw_inflight_max, n);
	atomic64_inc(&q->rmw_reads);
	op->rmw_done = done;
	op->rmw_io_idx = qcow2dedup_io_hold(q);
	if (type == QCOW2_CLUSTER_COMPRESSED) {
		atomic64_inc(&q->rmw_compressed);
		op->rmw_old = *info;
		INIT_WORK(&op->rmw_work, rmw_inflate_work);
		queue_work(q->read_wq, &op->rmw_work);
		return;
	}
	qcow2dedup_async_read(q, op->buf, info->host_offset, q->geo->cluster_size,
			      rmw_endio, op);
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

	qcow2dedup_assert_worker(q);

	rb_erase(&op->node, &q->busy);
	if (op->piece) {
		qcow2dedup_piece_done(op->bio, status);
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
	op->clusters = 1;
	op->piece = bio_op(bio) == REQ_OP_WRITE_ZEROES;
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

void qcow2dedup_do_retry(struct work_struct *ws)
{
	qcow2dedup_wake(container_of(to_delayed_work(ws), struct qcow2dedup, retry));
}
