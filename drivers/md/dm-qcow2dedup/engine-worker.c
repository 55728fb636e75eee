// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: the worker, the one thread that changes the metadata and
 * the index.  It takes the bios map() deferred, the operations whose data
 * writes (or reads, or hashes) completed, and the flushes; it commits.
 *
 * Allocating writes.  The worker allocates a cluster and writes the whole
 * cluster there (the bio itself when it covers the cluster, else a buffer
 * holding the old contents or zeros with the bio's data on top); once that
 * write has completed, the new L2 entry is staged.  Old contents on the
 * device are read asynchronously (qcow2dedup_read_old_async()): the worker
 * goes on meanwhile and writes the buffer when the read is back.  A guest
 * cluster with such a write in flight is "busy": later bios for it wait on
 * the operation.  With dedup, dedup-write.c decides where a write goes.
 *
 * Durability.  Staged metadata reaches the disk in qcow2_md_commit(), which
 * runs on REQ_PREFLUSH, for REQ_FUA writes, every commit period, when much
 * is staged, and on suspend.  A flush or FUA bio completes only after it.
 */
#include <linux/blkdev.h>
#include <linux/delay.h>
#include <linux/dm-io.h>

#include "dm-qcow2dedup.h"

/* Any context: the old contents of a non-dedup @op are read (or not). */
static void old_read_done(struct qcow2_op *op, bool error)
{
	qcow2dedup_op_done(op, error ? BLK_STS_IOERR : BLK_STS_OK);
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
	bool rmw = !whole && (type == QCOW2_CLUSTER_NORMAL ||
			      type == QCOW2_CLUSTER_COMPRESSED);
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
		/* The old contents are zeros (unallocated, or a zero cluster). */
		memset(op->buf, 0, cs);
		if (!zeroes)
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
		clone->bi_end_io = qcow2dedup_clone_endio;
		clone->bi_private = op;
		submit_bio_noacct(clone);
	} else if (rmw) {
		/*
		 * finish_op() puts the bio's bytes (or zeros) on top and
		 * writes the buffer.
		 */
		op->fill = true;
		if (zeroes) {
			op->zero_in = in;
			op->zero_len = len;
		}
		qcow2dedup_read_old_async(q, op, type, info, old_read_done);
	} else {
		qcow2dedup_write_buffer(q, op);
	}
	return 0;
bad:
	rb_erase(&op->node, &q->busy);
	qcow2dedup_op_free(q, op);
	return r == -ENOMEM ? r : -EIO;
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
			if (op->zero_len)
				memset(op->buf + op->zero_in, 0, op->zero_len);
			else
				qcow2dedup_copy_from_bio(q, op->bio, op->buf);
			qcow2dedup_write_buffer(q, op);
			return;
		}
	}
	if (!status && READ_ONCE(q->mode) != MODE_WRITE)
		status = BLK_STS_IOERR;
	/* Written in place (start_in_place()): no mapping changes. */
	if (op->in_place)
		op->staged = op->clusters;
	/* One cluster after the other: a retry goes on where this stopped. */
	for (; op->staged < op->clusters; op->staged++) {
		u64 delta = (u64)op->staged << q->geo->cluster_bits;

		r = status ? qcow2_md_release(q->md, op->host_off + delta) :
			     qcow2dedup_stage(q, guest_off + delta, QCOW2_CLUSTER_NORMAL,
					      op->host_off + delta, true);
		if (r == -ENOMEM) {
			op->status = status;
			qcow2dedup_retry_op(q, op, &q->completed);
			return;
		}
		if (r && !status) {
			qcow2dedup_metadata_error(q, "update", r);
			status = BLK_STS_IOERR;
		}
	}
	qcow2dedup_op_release(q, op, status);
}

/* The first operation in flight on a guest cluster in [@first, @last]. */
static struct qcow2_op *busy_in_range(struct qcow2dedup *q, u64 first, u64 last)
{
	struct rb_node *n = q->busy.rb_node;
	struct qcow2_op *found = NULL;

	while (n) {
		struct qcow2_op *op = rb_entry(n, struct qcow2_op, node);

		if (op->guest_cluster + op->clusters - 1 < first) {
			n = n->rb_right;
		} else {
			found = op;
			n = n->rb_left;
		}
	}
	return found && found->guest_cluster <= last ? found : NULL;
}

/*
 * Write @n whole guest clusters of run @bio from @op's guest cluster to
 * @op->host_off with one clone of that part of @bio; @op, in @q->busy from
 * here, ends at @endio as a piece of @bio.
 */
static void submit_run_piece(struct qcow2dedup *q, struct bio *bio,
			     struct qcow2_op *op, unsigned int n, bio_end_io_t *endio)
{
	u64 skip = (op->guest_cluster << q->geo->cluster_bits) -
		   qcow2dedup_guest_offset(bio);
	struct bio *clone;

	op->clusters = n;
	op->piece = true;
	rb_add(&op->node, &q->busy, qcow2dedup_op_less);
	atomic_inc(&qcow2dedup_pb(bio)->remaining);

	/* Never fails: GFP_NOIO from the target's bioset. */
	clone = bio_alloc_clone(q->bdev, bio, GFP_NOIO, &q->bs);
	bio_trim(clone, skip >> SECTOR_SHIFT,
		 ((u64)n << q->geo->cluster_bits) >> SECTOR_SHIFT);
	clone->bi_opf &= ~(REQ_FUA | REQ_PREFLUSH);
	clone->bi_iter.bi_sector = op->host_off >> SECTOR_SHIFT;
	clone->bi_end_io = endio;
	clone->bi_private = op;
	submit_bio_noacct(clone);
}

/*
 * Start a run of [@gc, + @n) whole guest clusters of run @bio (see
 * process_run()) that do not need their old contents.  Sets *@n to the
 * clusters started: at least one, as many as have free host clusters in a
 * row.  Return: 0, -EAGAIN (nothing started: too many operations in flight
 * or memory short) or an allocation error (its status in @*status).
 */
static int start_run(struct qcow2dedup *q, struct bio *bio, u64 gc,
		     unsigned int *n, blk_status_t *status)
{
	struct qcow2_op *op;
	int r;

	op = qcow2dedup_op_new(q, bio, gc, false);
	if (!op)
		return -EAGAIN;
	r = qcow2dedup_prepare_write(q, gc << q->geo->cluster_bits);
	if (!r)
		r = qcow2dedup_alloc_run(q, *n, &op->host_off, n);
	if (r) {
		qcow2dedup_op_free(q, op);
		if (r == -ENOMEM) {
			qcow2dedup_wait_memory(q);
			return -EAGAIN;
		}
		*status = qcow2dedup_alloc_error(q, r);
		return r;
	}
	atomic64_add(*n, &q->clusters_allocated);
	if (*n > 1)
		atomic64_inc(&q->alloc_runs);
	submit_run_piece(q, bio, op, *n, qcow2dedup_clone_endio);
	return 0;
}

/* The end of start_in_place()'s write, in any context. */
static void in_place_endio(struct bio *clone)
{
	struct qcow2_op *op = clone->bi_private;

	qcow2dedup_io_unhold(op->q, op->io_idx);
	qcow2dedup_clone_endio(clone);
}

/*
 * Start a write in place of [@gc, + @n) whole guest clusters of run @bio
 * (see process_run()), whose data lie in a row from @host_off with COPIED
 * set: what map() does with such a row when their L2 block is cached.  An
 * operation of its own, so that no write or discard of those clusters
 * starts in the worker before it ends (finish_op() stages nothing for it),
 * and a reader until then, as map()'s writes in place are.  The hold comes
 * after the lookup, not before as in map(): only the worker's own commits
 * free clusters, and none runs in between.
 * Return: 0, or -EAGAIN (too many operations in flight or memory short).
 */
static int start_in_place(struct qcow2dedup *q, struct bio *bio, u64 gc,
			  u64 host_off, unsigned int n)
{
	struct qcow2_op *op = qcow2dedup_op_new(q, bio, gc, false);

	if (!op)
		return -EAGAIN;
	op->host_off = host_off;
	op->in_place = true;
	if (n > 1)
		atomic64_inc(&q->write_runs);
	op->io_idx = qcow2dedup_io_hold(q);
	submit_run_piece(q, bio, op, n, in_place_endio);
	return 0;
}

/*
 * Worker: a write of several whole guest clusters under nodedup, which map()
 * let through as one bio because none had old contents to keep (see
 * qcow2dedup_map()), or because their L2 block was not cached (map() could
 * not look; cold_write_work() in engine-read.c read the block since).
 * Clusters without data get host clusters in runs, each written with one
 * clone of its part of @bio (an operation of its own, staged when written);
 * rows of clusters with COPIED set are written in place the same way;
 * so that a sequential write is not cut at every cluster.  What changed
 * since map() looked does not matter: a whole cluster never needs its old
 * contents, and one in flight makes the bio wait for it.
 *
 * As process_discard(), a bio that waits (for an operation in flight, for
 * memory) goes on at qcow2dedup_pb(bio)->next, and completes when its last
 * piece does.
 * Return: 0, or -EAGAIN to be tried again later (the bio is kept).
 */
static int process_run(struct qcow2dedup *q, struct bio *bio)
{
	u32 cb = q->geo->cluster_bits;
	u64 start = qcow2dedup_guest_offset(bio) >> cb;
	u64 end = start + (bio->bi_iter.bi_size >> cb);
	struct qcow2_bio *p = qcow2dedup_pb(bio);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	blk_status_t status;
	struct qcow2_op *op;
	bool pending, cow, in_place;
	unsigned int n;
	u64 gc;
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
		p->q = q;
		p->next = start << cb;
		p->status = BLK_STS_OK;
		atomic_set(&p->remaining, 1);
	}
	op = busy_in_range(q, p->next >> cb, end - 1);
	if (op) {
		bio_list_add(&op->waiters, bio);
		return 0;
	}
	for (gc = p->next >> cb; gc < end; gc += n) {
		/* One L2 table: qcow2dedup_prepare_write() made it writable. */
		unsigned int max = min_t(u64, end - gc,
					 BIT(q->geo->l2_bits) - qcow2_l2_index(q->geo, gc << cb));

		if (READ_ONCE(q->mode) != MODE_WRITE) {
			p->status = BLK_STS_IOERR;
			break;
		}
		/*
		 * A run of clusters without old data, or a row of clusters
		 * with COPIED set written in place.  Any other cluster with
		 * data (shared, compressed) gets a new cluster of its own,
		 * counted as a copy as elsewhere.
		 */
		cow = false;
		in_place = false;
		for (n = 0, r = 0; n < max; n++) {
			r = qcow2_md_lookup(q->md, (gc + n) << cb, true, &type, &info, &pending);
			if (r || type == QCOW2_CLUSTER_INVALID)
				break;
			if (type == QCOW2_CLUSTER_NORMAL || type == QCOW2_CLUSTER_COMPRESSED) {
				in_place = !n && type == QCOW2_CLUSTER_NORMAL && info.copied;
				cow = !n && !in_place;
				n += !n;
				break;
			}
		}
		if (in_place) {
			n = qcow2_md_normal_run(q->md, gc << cb, info.host_offset, max, true);
			if (start_in_place(q, bio, gc, info.host_offset, n)) {
				p->next = gc << cb;
				return -EAGAIN;
			}
			cond_resched();
			continue;
		}
		if (!n && r) {
			qcow2dedup_metadata_error(q, "read", r);
			p->status = BLK_STS_IOERR;
			break;
		}
		if (!n) {
			/* Refused, as a write of that cluster alone would be. */
			DMERR_LIMIT("%s: corrupt L2 entry for guest offset %llu",
				    qcow2dedup_dev_name(q), gc << cb);
			p->status = BLK_STS_IOERR;
			n = 1;
			continue;
		}
		status = BLK_STS_IOERR;
		r = start_run(q, bio, gc, &n, &status);
		if (r == -EAGAIN) {
			p->next = gc << cb;
			return -EAGAIN;
		}
		if (r) {
			p->status = status;
			break;
		}
		if (cow)
			atomic64_inc(&q->cow_copies);
		cond_resched();
	}
	p->next = end << cb;
	qcow2dedup_piece_done(bio, BLK_STS_OK);
	return 0;
}

/* Worker: a write of one cluster or part of it.  Returns -EAGAIN to retry later. */
/*
 * A write the worker got.  @barrier_done: the table barrier the write
 * waited for has been issued (it goes in place now, see qcow2dedup_do_worker()).
 */
static int process_write(struct qcow2dedup *q, struct bio *bio, bool barrier_done)
{
	u64 off = qcow2dedup_guest_offset(bio), gc = off >> q->geo->cluster_bits;
	u64 in = qcow2_offset_in_cluster(q->geo, off);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	blk_status_t status = BLK_STS_IOERR;
	struct qcow2_op *op;
	bool pending;
	int idx, r;

	/*
	 * Whole clusters let through together by map(): without old contents,
	 * or (cold: their L2 block was not cached) holding anything.
	 */
	if (qcow2dedup_bio_clusters(q, bio) > 1)
		return process_run(q, bio);
	if (READ_ONCE(q->mode) != MODE_WRITE)
		goto fail;
	r = qcow2dedup_before_first_write(q);
	if (r == -ENOMEM)
		return -EAGAIN;
	if (r)
		goto fail;
	op = qcow2dedup_busy_find(q, gc);
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
	idx = qcow2dedup_io_hold(q);
	r = qcow2_md_lookup(q->md, off, true, &type, &info, &pending);
	if (!r && type == QCOW2_CLUSTER_NORMAL && info.copied &&
	    (!q->dedup || bio->bi_iter.bi_size < q->geo->cluster_size)) {
		/*
		 * Its digest no longer describes the cluster: unindex it.  If
		 * its slot on disk still names that digest, the write waits
		 * for the pass's table barrier, one for all such writes
		 * (qcow2dedup_do_worker()).
		 */
		if (qcow2dedup_unindex_host(q, info.host_offset) && !barrier_done) {
			qcow2dedup_io_unhold(q, idx);
			atomic64_inc(&q->barrier_writes);
			bio_list_add(&q->barrier_bios, bio);
			return 0;
		}
		qcow2dedup_remap_held(q, bio, info.host_offset + in, idx);
		dm_submit_bio_remap(bio, NULL);
		return 0;
	}
	qcow2dedup_io_unhold(q, idx);
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
					    type, &info);
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
	struct qcow2_bio *p = qcow2dedup_pb(bio);
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
		/*
		 * In place, beside the worker.  (Its table barrier, when the
		 * slot is on disk, is still the worker's: a rare case, after
		 * a reactivation.)
		 */
		r = qcow2dedup_forget_host(q, info.host_offset);
		if (r) {
			p->status = BLK_STS_IOERR;
			return 0;
		}
		atomic_inc(&p->remaining);
		qcow2dedup_zero_in_place(q, bio, off != qcow2dedup_guest_offset(bio),
					 info.host_offset + in, len);
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
		qcow2dedup_piece_done(bio, status);
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
 * qcow2dedup_pb(bio)->next says where it goes on, and every piece before it is done
 * or in flight, counted in qcow2dedup_pb(bio)->remaining.  The bio completes when the
 * last piece does.
 * Return: 0, or -EAGAIN to be tried again later (the bio is kept).
 */
static int process_discard(struct qcow2dedup *q, struct bio *bio)
{
	bool zeroes = bio_op(bio) == REQ_OP_WRITE_ZEROES;
	u64 cs = q->geo->cluster_size, start = qcow2dedup_guest_offset(bio);
	u64 end = start + bio->bi_iter.bi_size, off;
	unsigned int budget = DISCARD_PER_PASS;
	struct qcow2_bio *p = qcow2dedup_pb(bio);
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
		p->q = q;	/* for its pieces' ends (qcow2dedup_zero_in_place()) */
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
	qcow2dedup_piece_done(bio, BLK_STS_OK);
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

void qcow2dedup_do_worker(struct work_struct *ws)
{
	struct qcow2dedup *q = container_of(ws, struct qcow2dedup, worker);
	struct bio_list bios = BIO_EMPTY_LIST, flushes = BIO_EMPTY_LIST;
	struct bio_list held = BIO_EMPTY_LIST;
	struct qcow2_op *op, *tmp;
	struct blk_plug plug;
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

	/*
	 * One plug for the pass, as dm-thin's deferred bios: a deduplicated
	 * write sends each new cluster as a bio of its own, and consecutive
	 * new clusters are adjacent on the device (the allocator's hint), so
	 * the device gets them merged.  Sleeping (a synchronous metadata
	 * read) sends what the plug holds first.
	 */
	blk_start_plug(&plug);
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

		/* Only writes, discards and write-zeroes: reads go to read_wq. */
		if (!bio_list_empty(&held)) {
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
	blk_finish_plug(&plug);

	if (!bio_list_empty(&flushes) || !bio_list_empty(&q->commit_waiters) ||
	    (READ_ONCE(q->commit_due) && qcow2_md_dirty(q->md)) ||
	    qcow2_md_nr_pending(q->md) >= COMMIT_THRESHOLD)
		commit_and_complete(q, &flushes);
	qcow2dedup_table_worker(q);
	qcow2dedup_rebuild_step(q);
}

void qcow2dedup_do_waker(struct work_struct *ws)
{
	struct qcow2dedup *q = container_of(to_delayed_work(ws), struct qcow2dedup, waker);

	WRITE_ONCE(q->commit_due, true);
	qcow2dedup_wake(q);
	queue_delayed_work(q->wq, &q->waker, COMMIT_PERIOD);
}

/* Work the worker still holds: bios, or operations not finished. */
static bool engine_busy(struct qcow2dedup *q)
{
	bool busy;

	spin_lock_irq(&q->lock);
	busy = !bio_list_empty(&q->deferred) || !list_empty(&q->completed) ||
	       !list_empty(&q->hashed);
	spin_unlock_irq(&q->lock);
	/* Zero writes in place hold no op, but end in @q (a dtr unsuspended). */
	return busy || READ_ONCE(q->nr_ops) || atomic_read(&q->zeroes_in_place_inflight);
}

/* Stop the timers and the rebuild's batches, and let the worker settle. */
void qcow2dedup_quiesce(struct qcow2dedup *q)
{
	/*
	 * dm drains the I/O of a table before its postsuspend, but not when
	 * it destroys a device that was never suspended: finish what the
	 * worker holds before it stops.  Deferred reads need no worker.
	 */
	flush_workqueue(q->read_wq);
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
void qcow2dedup_final_commit(struct qcow2dedup *q)
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
