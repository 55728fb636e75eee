// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: the deduplicating write path.
 *
 * A write that would allocate a cluster, or that covers a whole cluster,
 * becomes an operation with a buffer holding the complete new contents of
 * the guest cluster: the bio's data, on top of the old contents for a
 * partial write (read-modify-write).  That buffer is the stable copy: it is
 * hashed, compared for "verify", and it is what gets written, so a page the
 * submitter changes in flight cannot make the digest lie.
 *
 *   hash_wq (several at a time)	worker (one at a time)
 *   copy the bio, zero test, digest -> decide():
 *					  all zeros: zero entry, no cluster
 *					  digest WRITING: wait on its entry
 *					  digest READY: share the cluster
 *					  (verify: after an async read
 *					  of it, decide() again)
 *					  else: new cluster, indexed WRITING,
 *					        data write; then the mapping
 *
 * Sharing: the refcount is raised and the first referrer's COPIED cleared
 * in the first step of the next commit, the new L2 entry written in the
 * second (qcow2-metadata.c), so no crash leaves a COPIED flag on a cluster
 * two entries share.  Refcounts falling back to one get their COPIED back
 * in a second round of the same commit, once the refcount of one is on
 * disk (qcow2-copied.c), the remaining referrer named by the index
 * (qcow2dedup_survivor()).
 *
 * New contents of a cluster of refcount one go in place when no other
 * cluster has them (write_in_place()), and the cluster is re-indexed under
 * the new digest before the write starts.  Partial writes into a cluster of
 * refcount one go in place too, after unindexing it: they are not hashed.
 *
 * Memory.  Buffers and operations come from the target's mempools; a step
 * that finds memory short changes nothing and returns -ENOMEM, and the
 * operation waits in the worker's queues for qcow2dedup_retry_op()'s
 * retry.  Running out of memory never fails a write nor changes the mode;
 * where the index cannot grow, a cluster is simply not deduplicated.
 */
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "dm-qcow2dedup.h"

static unsigned int cluster_bits(struct qcow2dedup *q)
{
	return q->geo->cluster_bits;
}

/**
 * qcow2dedup_dedup_ctr() - set deduplication up for a new target.
 * @q: target, with its metadata open.
 * @ti: for the error message.
 *
 * The hash must exist as a synchronous shash; a digest shorter than 128
 * bits, or one of a hash with known collisions, is refused unless every
 * match is verified byte for byte (dedup_hash_verdict()).
 */
int qcow2dedup_dedup_ctr(struct qcow2dedup *q, struct dm_target *ti)
{
	enum dedup_hash_verdict verdict;
	unsigned int ds;

	/*
	 * Bounded by default, like dm-vdo's index: a crafted table with every
	 * slot filled must not take the host's memory.
	 */
	dedup_index_init(&q->index, 0, q->opt.index_limit_mib ? q->opt.index_limit_mib << 20 :
			 max_t(u64, INDEX_LIMIT_MIN,
			       ((u64)totalram_pages() << PAGE_SHIFT) / INDEX_RAM_SHARE));
	q->index_ready = true;
	q->tfm = crypto_alloc_shash(q->opt.hash, 0, 0);
	if (IS_ERR(q->tfm)) {
		int r = PTR_ERR(q->tfm);

		q->tfm = NULL;
		ti->error = "Unknown hash algorithm (not an shash this kernel has)";
		DMERR("hash %s: %s (%d)", q->opt.hash, ti->error, r);
		return r == -ENOMEM ? r : -EINVAL;
	}
	/* hmac(), cmac() and the like need a key nobody gives them. */
	if (crypto_shash_get_flags(q->tfm) & CRYPTO_TFM_NEED_KEY) {
		ti->error = "Keyed hash algorithms are not supported";
		DMERR("hash %s: %s", q->opt.hash, ti->error);
		return -EINVAL;
	}
	ds = crypto_shash_digestsize(q->tfm);
	verdict = dedup_hash_verdict(crypto_shash_alg_name(q->tfm), ds, q->opt.verify);
	if (verdict != DEDUP_HASH_OK) {
		ti->error = verdict == DEDUP_HASH_SHORT ?
			    "Hash digest shorter than 128 bits: add verify" :
			    "Hash with known collisions (md4, md5, sha1): add verify";
		DMERR("hash %s (%s, %u-bit digest): %s", q->opt.hash,
		      crypto_shash_alg_name(q->tfm), ds * 8,
		      "too weak to share clusters on; use it with verify");
		return -EINVAL;
	}
	if (ds > HASH_MAX_DIGESTSIZE) {
		ti->error = "Hash digest too long";
		return -EINVAL;
	}
	q->index.key_len = min_t(unsigned int, ds, DEDUP_KEY_MAX);
	q->hash_wq = alloc_workqueue("dm-" DM_MSG_PREFIX "-hash",
				     WQ_UNBOUND | WQ_MEM_RECLAIM, 0);
	if (!q->hash_wq) {
		ti->error = "Cannot allocate hash workqueue";
		return -ENOMEM;
	}
	/* For "verify" and for entries loaded from the table. */
	q->vbuf = kvmalloc(q->geo->cluster_size, GFP_KERNEL);
	if (!q->vbuf) {
		ti->error = "Cannot allocate verify buffer";
		return -ENOMEM;
	}
	q->dedup = q->writable;
	return 0;
}

void qcow2dedup_dedup_dtr(struct qcow2dedup *q)
{
	if (q->hash_wq)
		destroy_workqueue(q->hash_wq);
	if (q->index_ready)
		dedup_index_destroy(&q->index);
	if (q->tfm)
		crypto_free_shash(q->tfm);
	kvfree(q->vbuf);
}

/* hash_wq: fill the buffer from the bio if needed, test for zeros, hash. */
static void hash_work(struct work_struct *ws)
{
	struct qcow2_op *op = container_of(ws, struct qcow2_op, hash_work);
	struct qcow2dedup *q = op->q;
	u64 cs = q->geo->cluster_size;
	unsigned long flags;

	if (op->whole || op->fill) {
		/* On the whole cluster, or on its old contents just read. */
		qcow2dedup_copy_from_bio(q, op->bio, op->buf);
		op->fill = false;
	}
	op->zero = dedup_is_zero(op->buf, cs);
	if (!op->zero && crypto_shash_tfm_digest(q->tfm, op->buf, cs, op->digest))
		op->status = BLK_STS_IOERR;

	/*
	 * Wake under the lock: once the worker can see the op, it may finish
	 * it, and the target may go away with its workqueue.
	 */
	spin_lock_irqsave(&q->lock, flags);
	list_add_tail(&op->list, &q->hashed);
	qcow2dedup_wake(q);
	spin_unlock_irqrestore(&q->lock, flags);
}

/* Any context: the old contents of @op's cluster are read (or not). */
static void old_read_done(struct qcow2_op *op, bool error)
{
	if (!error) {
		queue_work(op->q->hash_wq, &op->hash_work);
		return;
	}
	/* decide() ends it with the error. */
	op->fill = false;
	op->status = BLK_STS_IOERR;
	qcow2dedup_requeue_hashed(op->q, op);
}

/**
 * qcow2dedup_start_hashed() - start a deduplicated write of guest cluster
 *	@gc: [@in, @in + @len) from @bio, the rest from its old mapping
 *	@type/@info.
 * @q: target.
 * @bio: the write.
 * @gc: guest cluster index.
 * @in: offset of the bio in the cluster.
 * @len: its length.
 * @type: the old mapping's type.
 * @info: the old mapping.
 *
 * Return: 0 if started (a failed read of the old contents ends the write
 * later); -EAGAIN if too many buffered writes are in flight or -ENOMEM
 * (try again later).
 */
int qcow2dedup_start_hashed(struct qcow2dedup *q, struct bio *bio, u64 gc,
			    u64 in, u64 len, enum qcow2_cluster_type type,
			    const struct qcow2_l2e_info *info)
{
	u64 cs = q->geo->cluster_size;
	struct qcow2_op *op;

	if (q->buffered_ops >= q->max_buffered_ops)
		return -EAGAIN;
	op = qcow2dedup_op_new(q, bio, gc, true);
	if (!op)
		return -ENOMEM;
	op->dedup = true;
	op->whole = !in && len == cs;
	/* Busy before anything can wait: see start_op() in engine-worker.c. */
	rb_add(&op->node, &q->busy, qcow2dedup_op_less);
	INIT_WORK(&op->hash_work, hash_work);
	if (!op->whole && (type == QCOW2_CLUSTER_NORMAL || type == QCOW2_CLUSTER_COMPRESSED)) {
		/* Read (or inflate) the old contents while the worker goes on; then hash. */
		op->fill = true;
		qcow2dedup_read_old_async(q, op, type, info, old_read_done);
		return 0;
	}
	if (!op->whole) {
		/* The old contents are zeros (unallocated, or a zero cluster). */
		memset(op->buf, 0, cs);
		qcow2dedup_copy_from_bio(q, bio, op->buf);
	}
	queue_work(q->hash_wq, &op->hash_work);
	return 0;
}

/* Writes of the same content parked on writer @op go back to the worker's queue. */
static void requeue_waiters(struct qcow2dedup *q, struct qcow2_op *op)
{
	unsigned long flags;

	if (list_empty(&op->dup_waiters))
		return;
	spin_lock_irqsave(&q->lock, flags);
	list_splice_tail_init(&op->dup_waiters, &q->hashed);
	qcow2dedup_wake(q);
	spin_unlock_irqrestore(&q->lock, flags);
}

/**
 * qcow2dedup_unindex_host() - the cluster at @host_off is about to be
 *	written in place: its digest will be wrong, take it out of the index.
 * @q: target.
 * @host_off: a cluster of refcount one.
 *
 * Nothing to do without dedup.
 * Return: true if the cluster's slot on disk still names contents: the
 * write must wait for a table barrier (qcow2dedup_table_barrier()), while
 * the index entry (live or DEAD) keeps map() away from the cluster.
 */
bool qcow2dedup_unindex_host(struct qcow2dedup *q, u64 host_off)
{
	u64 host = host_off >> cluster_bits(q);
	struct dedup_entry *e;

	if (!q->dedup)
		return false;
	e = dedup_find_host(&q->index, host);
	/* READY or UNKEYED: COPIED clusters are never WRITING. */
	if (e && dedup_entry_state(e) != DEDUP_WRITING)
		dedup_remove(&q->index, e);
	return dedup_host_clearing(&q->index, host);
}

/**
 * qcow2dedup_forget_host() - qcow2dedup_unindex_host(), and the table
 *	barrier at once if the slot needs one (a synchronous write in place).
 * @q: target.
 * @host_off: a cluster of refcount one.
 *
 * Return: 0, or the error of the table update (the write must not go on).
 */
int qcow2dedup_forget_host(struct qcow2dedup *q, u64 host_off)
{
	int r;

	if (!qcow2dedup_unindex_host(q, host_off))
		return 0;
	r = qcow2dedup_table_barrier(q);
	if (r)
		qcow2dedup_metadata_error_once(q, "dedup table update", r);
	return r;
}

/**
 * qcow2dedup_drop_ref() - guest cluster @gc no longer points to @old_host.
 * @q: target.
 * @old_host: host byte offset of the old standard cluster.
 * @gc: guest cluster index.
 *
 * When one referrer remains, qcow2-copied.c asks for it during the commit
 * (qcow2dedup_survivor()), once the refcount of one is on disk.
 */
void qcow2dedup_drop_ref(struct qcow2dedup *q, u64 old_host, u64 gc)
{
	dedup_drop_ref(&q->index, old_host >> cluster_bits(q), gc);
}

/* qcow2-copied.c: the one guest cluster still pointing at @host_cluster. */
bool qcow2dedup_survivor(void *ctx, u64 host_cluster, u64 *guest_cluster)
{
	struct qcow2dedup *q = ctx;
	struct dedup_entry *e;

	if (!q->dedup)
		return false;
	e = dedup_find_host(&q->index, host_cluster);
	if (!e || dedup_entry_state(e) != DEDUP_READY || dedup_nr_refs(e) != 1)
		return false;
	*guest_cluster = e->guest;
	return true;
}

/* Complete a deduplicated write that needs no data write. */
static void finish_mapped_op(struct qcow2dedup *q, struct qcow2_op *op,
			     blk_status_t status)
{
	if (!status)
		atomic64_inc(&q->clusters_written);
	qcow2dedup_op_release(q, op, status);
}

/*
 * The bytes of @e's cluster (@data) are not what its key says: a loaded
 * slot that lied, or a collision of a weak hash.  Give the entry the
 * digest of what the cluster really holds, or drop it.
 */
static void entry_lied(struct qcow2dedup *q, struct dedup_entry *e, const void *data)
{
	u8 digest[HASH_MAX_DIGESTSIZE];
	struct dedup_entry *other;

	if (crypto_shash_tfm_digest(q->tfm, data, q->geo->cluster_size, digest)) {
		dedup_remove(&q->index, e);
		return;
	}
	other = dedup_find(&q->index, digest);
	if (other == e) {
		/* The key is right: a collision ("verify" with a weak hash). */
		dedup_set_unverified(&q->index, e, false);
		return;
	}
	if (!q->table_lie_logged) {
		q->table_lie_logged = true;
		DMWARN("%s: table entry for host cluster %llu does not match the cluster: fixed",
		       qcow2dedup_dev_name(q), dedup_entry_host(e));
	}
	if (other)
		dedup_remove(&q->index, e);
	else
		dedup_rekey(&q->index, e, digest);	/* on -EEXIST, @e is gone */
}

enum share_verdict {
	SHARE_NO,
	SHARE_YES,
	SHARE_WAIT,		/* @op waits for its verify read */
};

/* Any context: @op's verify read is over; back to the worker's decision. */
static void verify_endio(unsigned long error, void *context)
{
	struct qcow2_op *op = context;
	struct qcow2dedup *q = op->q;

	op->verify_err = error;
	op->verify_state = VERIFY_READ;
	qcow2dedup_io_unhold(q, op->verify_io_idx);
	atomic_dec(&q->verify_inflight);
	qcow2dedup_requeue_hashed(q, op);
}

/* Compare reads issued for one operation before the worker reads itself. */
#define VERIFY_ASYNC_TRIES	3

/*
 * Start reading @e's cluster into a buffer of @op's own, so that the worker
 * goes on with other requests meanwhile.  The read counts as a reader of
 * the cluster (qcow2dedup_io_hold()): no commit frees it before the read ends.
 * Return: false if no buffer could be had (verify synchronously).
 */
static bool verify_async(struct qcow2dedup *q, struct qcow2_op *op, struct dedup_entry *e)
{
	unsigned int n;

	if (!op->vbuf)
		op->vbuf = qcow2dedup_vbuf_alloc(q);
	if (!op->vbuf)
		return false;
	op->verify_host = dedup_entry_host(e);
	op->verify_stamp = dedup_host_stamp(&q->index, op->verify_host);
	op->verify_state = VERIFY_READING;
	op->verify_tries++;
	op->verify_io_idx = qcow2dedup_io_hold(q);
	n = atomic_inc_return(&q->verify_inflight);
	if (n > q->verify_inflight_max)
		WRITE_ONCE(q->verify_inflight_max, n);
	atomic64_inc(&q->verify_reads);
	qcow2dedup_async_read(q, op->vbuf, op->verify_host << cluster_bits(q),
			      q->geo->cluster_size, verify_endio, op);
	return true;
}

/*
 * May the cluster of READY entry @e take one more reference for content
 * @op->buf?  Not at the refcount ceiling (unless it is @op's own cluster
 * already, @same); with verify, and for entries loaded from the table
 * (hints, until compared once), only if the bytes on the device are the
 * same: a digest is a hint, the bytes are the truth.
 *
 * The bytes are read asynchronously (SHARE_WAIT: @op comes back through
 * q->hashed and is decided again).  They still describe @e then if the
 * index changed nothing of its host's since (dedup_host_stamp()): @e was
 * neither removed nor re-keyed, so its cluster was neither freed nor
 * rewritten (a cluster is written in place only after its entry is
 * removed or re-keyed).  A
 * read that cannot be trusted (verify_stale) is issued again, up to
 * VERIFY_ASYNC_TRIES reads in all; then, or with no buffer for the read,
 * the worker reads the bytes itself.  On SHARE_NO, @e may be gone.
 */
static enum share_verdict may_share(struct qcow2dedup *q, struct qcow2_op *op,
				    struct dedup_entry *e, bool same)
{
	u64 host_off = dedup_entry_host(e) << cluster_bits(q), rc;
	const void *data = q->vbuf;
	enum share_verdict v;

	/* Decided while its read is out: a bug; the read's end requeues it. */
	if (WARN_ON_ONCE(op->verify_state == VERIFY_READING))
		return SHARE_WAIT;
	if (!same && (qcow2_md_refcount(q->md, host_off, &rc) ||
		      !dedup_below_ceiling(rc, q->geo->refcount_order)))
		return SHARE_NO;
	if (!q->opt.verify && !dedup_entry_unverified(e))
		return SHARE_YES;
	if (op->verify_state == VERIFY_READ && !op->verify_err &&
	    op->verify_host == dedup_entry_host(e) &&
	    op->verify_stamp == dedup_host_stamp(&q->index, op->verify_host)) {
		data = op->vbuf;
	} else {
		if (op->verify_state == VERIFY_READ)
			atomic64_inc(&q->verify_stale);
		op->verify_state = VERIFY_NONE;
		if (op->verify_tries < VERIFY_ASYNC_TRIES && verify_async(q, op, e))
			return SHARE_WAIT;
		/* Nothing writes into @e's cluster meanwhile: the worker is here. */
		if (qcow2dedup_sync_io(q, REQ_OP_READ, q->vbuf, host_off, q->geo->cluster_size))
			return SHARE_NO;
	}
	if (memcmp(data, op->buf, q->geo->cluster_size)) {
		atomic64_inc(&q->verify_mismatches);
		entry_lied(q, e, data);
		v = SHARE_NO;
	} else {
		dedup_set_unverified(&q->index, e, false);
		v = SHARE_YES;
	}
	/* The bytes are used: the buffer goes back before the data write. */
	op->verify_state = VERIFY_NONE;
	if (op->vbuf) {
		qcow2dedup_vbuf_free(q, op->vbuf);
		op->vbuf = NULL;
	}
	return v;
}

/*
 * Map guest cluster @op->guest_cluster to @e's cluster: no data write.
 * Return: 0 (@op released), -ENOMEM (nothing changed: try again later) or
 * -ENOSPC (the index cannot take one more referrer: nothing changed, write
 * the cluster instead).
 */
static int share(struct qcow2dedup *q, struct qcow2_op *op, struct dedup_entry *e)
{
	u64 guest_off = op->guest_cluster << cluster_bits(q), first;
	u64 host_off = dedup_entry_host(e) << cluster_bits(q);
	int n, r;

	r = qcow2dedup_prepare_write(q, guest_off);
	/* Staging after the index changed must not fail for memory. */
	if (!r)
		r = qcow2_md_reserve_stage(q->md, guest_off);
	if (r == -ENOMEM)
		return r;
	if (r) {
		finish_mapped_op(q, op, qcow2dedup_alloc_error(q, r));
		return 0;
	}
	n = dedup_add_ref(&q->index, e, op->guest_cluster, &first,
			  GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN);
	if (n < 0)
		return -ENOSPC;
	r = qcow2_md_share(q->md, host_off);
	if (!r && n == 1)
		r = qcow2_md_clear_copied(q->md, first << cluster_bits(q));
	if (!r)
		r = qcow2dedup_stage(q, guest_off, QCOW2_CLUSTER_NORMAL, host_off, false);
	if (r) {
		qcow2dedup_metadata_error(q, "update", r);
		finish_mapped_op(q, op, BLK_STS_IOERR);
		return 0;
	}
	atomic64_inc(&q->dedup_hits);
	finish_mapped_op(q, op, BLK_STS_OK);
	return 0;
}

/* Write @op->buf to @op->host_off; qcow2dedup_hashed_done() follows. */
static void submit_data(struct qcow2dedup *q, struct qcow2_op *op, bool index)
{
	/* At the memory limit, or out of memory: the cluster stays unindexed. */
	if (index)
		dedup_insert_writing(&q->index, op->digest,
				     op->host_off >> cluster_bits(q), op, &op->entry);
	qcow2dedup_write_buffer(q, op);
}

/*
 * No cluster has this content: write it to a new one.  Return: 0 if the
 * write started, or the error of the allocation (@op is still the caller's).
 */
static int write_new(struct qcow2dedup *q, struct qcow2_op *op, bool index,
		     bool cow)
{
	u64 guest_off = op->guest_cluster << cluster_bits(q);
	int r;

	r = qcow2dedup_prepare_write(q, guest_off);
	if (!r)
		r = qcow2dedup_alloc(q, &op->host_off);
	if (r)
		return r;
	atomic64_inc(&q->clusters_allocated);
	if (cow)
		atomic64_inc(&q->cow_copies);
	submit_data(q, op, index);
	return 0;
}

/*
 * New contents for a cluster of refcount one, written in place as QEMU
 * would.  An indexed cluster is re-keyed under the new digest, its entry
 * never leaving the xarray: no write into it can be in flight, since map()
 * leaves indexed clusters to the worker, which unindexes a cluster before a
 * partial write goes in place.  An unindexed one may have such writes in
 * flight, so it stays unindexed: a digest of it could not be trusted.
 * Its slot in the table on disk goes before the new bytes arrive: writes
 * that need that wait for the one barrier of this pass of the worker
 * (qcow2dedup_barrier_done()), the entry keeping map() away meanwhile.
 *
 * Return: 0 if @op is on its way, or the error of a new cluster's
 * allocation when the cluster cannot be written in place (@op is still
 * the caller's).
 */
static int write_in_place(struct qcow2dedup *q, struct qcow2_op *op,
			  u64 host_off, bool index)
{
	u64 host = host_off >> cluster_bits(q);
	struct dedup_entry *old = dedup_find_host(&q->index, host);

	/*
	 * COPIED on a cluster that other guest clusters reference: a corrupt
	 * image (the load and the rebuild leave such clusters unindexed).
	 * Never in place: the others would change too.
	 */
	if (old && dedup_nr_refs(old) != 1)
		return write_new(q, op, false, true);
	op->host_off = host_off;
	op->in_place = true;
	if (old && index) {
		if (!dedup_rekey_writing(&q->index, old, op->digest, op))
			op->entry = old;
		/* else -EEXIST, a caller bug: the cluster stays unindexed. */
	} else if (old) {
		dedup_remove(&q->index, old);
	}
	if (dedup_host_clearing(&q->index, host)) {
		list_add_tail(&op->list, &q->barrier_wait);
		return 0;
	}
	qcow2dedup_write_buffer(q, op);
	return 0;
}

/*
 * New contents for guest cluster @op->guest_cluster, whose cluster has
 * refcount one.  Indexed: in place, re-indexed.  Not indexed (written
 * before this activation, or by a partial write since): to a new, indexed
 * cluster, the old one freed at the commit, so that identical writes can
 * share it; in place, unindexed, only when the device is full.
 * Return: as write_in_place().
 */
static int write_over_copied(struct qcow2dedup *q, struct qcow2_op *op,
			     u64 host_off, bool index)
{
	int r;

	if (dedup_find_host(&q->index, host_off >> cluster_bits(q)))
		return write_in_place(q, op, host_off, index);
	r = write_new(q, op, index, false);
	if (r == -ENOSPC)
		r = write_in_place(q, op, host_off, false);
	return r;
}

/**
 * qcow2dedup_barrier_done() - worker, after the decisions of a pass: zero
 *	on disk the slots of the clusters about to be rewritten in place, once
 *	for all of them, then start their writes.
 * @q: target.
 */
void qcow2dedup_barrier_done(struct qcow2dedup *q)
{
	struct qcow2_op *op, *tmp;
	LIST_HEAD(ops);
	int r;

	if (list_empty(&q->barrier_wait))
		return;
	list_splice_init(&q->barrier_wait, &ops);
	r = qcow2dedup_table_barrier(q);
	if (r)
		qcow2dedup_metadata_error_once(q, "dedup table update", r);
	list_for_each_entry_safe(op, tmp, &ops, list) {
		list_del_init(&op->list);
		if (r) {
			if (op->entry) {
				requeue_waiters(q, op);
				dedup_remove(&q->index, op->entry);
				op->entry = NULL;
			}
			qcow2dedup_op_release(q, op, BLK_STS_IOERR);
			continue;
		}
		qcow2dedup_write_buffer(q, op);
	}
}

/*
 * All zeros: a zero entry (v3), or unallocated on v2 (no backing file).
 * Return: 0 (@op released) or -ENOMEM.
 */
static int write_zero(struct qcow2dedup *q, struct qcow2_op *op)
{
	u64 guest_off = op->guest_cluster << cluster_bits(q);
	int r;

	r = qcow2dedup_prepare_write(q, guest_off);
	if (!r)
		r = qcow2dedup_stage(q, guest_off, q->geo->version >= 3 ?
				     QCOW2_CLUSTER_ZERO_PLAIN : QCOW2_CLUSTER_UNALLOCATED,
				     0, false);
	if (r == -ENOMEM)
		return r;
	if (r) {
		finish_mapped_op(q, op, qcow2dedup_alloc_error(q, r));
		return 0;
	}
	atomic64_inc(&q->zero_clusters);
	finish_mapped_op(q, op, BLK_STS_OK);
	return 0;
}

/* Where the hashed contents of @op go.  Return: 0 or -ENOMEM. */
static int decide(struct qcow2dedup *q, struct qcow2_op *op)
{
	u64 guest_off = op->guest_cluster << cluster_bits(q);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	enum share_verdict verdict;
	struct dedup_entry *e;
	bool pending, same;
	int r;

	if (op->status || READ_ONCE(q->mode) != MODE_WRITE) {
		qcow2dedup_op_release(q, op, op->status ?: BLK_STS_IOERR);
		return 0;
	}
	r = qcow2_md_lookup(q->md, guest_off, true, &type, &info, &pending);
	if (r) {
		qcow2dedup_metadata_error(q, "read", r);
		qcow2dedup_op_release(q, op, BLK_STS_IOERR);
		return 0;
	}
	if (op->zero)
		return write_zero(q, op);

	e = dedup_find(&q->index, op->digest);
	if (e && dedup_entry_state(e) == DEDUP_WRITING) {
		struct qcow2_op *writer = dedup_entry_writer(e);

		/* The per-digest lock: wait for the first writer. */
		list_add_tail(&op->list, &writer->dup_waiters);
		return 0;
	}
	if (e) {
		same = type == QCOW2_CLUSTER_NORMAL &&
		       info.host_offset >> cluster_bits(q) == dedup_entry_host(e);
		verdict = may_share(q, op, e, same);
		if (verdict == SHARE_WAIT)
			return 0;
		if (verdict == SHARE_YES) {
			if (same) {
				/* The same contents again: nothing changes. */
				atomic64_inc(&q->dedup_hits);
				finish_mapped_op(q, op, BLK_STS_OK);
				return 0;
			}
			r = share(q, op, e);
			if (r != -ENOSPC)
				return r;
		}
		/*
		 * Not shared.  An entry whose bytes lied was given its true
		 * digest or dropped (@e may be gone): then this digest is
		 * free and the new cluster takes it.  Otherwise (a weak
		 * hash's collision, the refcount ceiling) the digest stays
		 * taken and the cluster is written unindexed.
		 */
		e = dedup_find(&q->index, op->digest);
	}
	if (type == QCOW2_CLUSTER_NORMAL && info.copied)
		r = write_over_copied(q, op, info.host_offset, !e);
	else
		/* Replacing a cluster shared with a snapshot, or a compressed one. */
		r = write_new(q, op, !e, (type == QCOW2_CLUSTER_NORMAL && !info.copied) ||
			      type == QCOW2_CLUSTER_COMPRESSED);
	if (r == -ENOMEM)
		return r;
	if (r)
		qcow2dedup_op_release(q, op, qcow2dedup_alloc_error(q, r));
	return 0;
}

/**
 * qcow2dedup_decide() - worker: where the hashed contents of @op go.
 * @q: target.
 * @op: an operation whose digest (or zero test) is ready.
 *
 * Memory short: nothing changed, @op waits for the retry.
 */
void qcow2dedup_decide(struct qcow2dedup *q, struct qcow2_op *op)
{
	qcow2dedup_assert_worker(q);
	if (decide(q, op) == -ENOMEM)
		qcow2dedup_retry_op(q, op, &q->hashed);
}

/**
 * qcow2dedup_hashed_done() - worker: the data write of @op completed.
 * @q: target.
 * @op: the operation.
 */
void qcow2dedup_hashed_done(struct qcow2dedup *q, struct qcow2_op *op)
{
	u64 guest_off = op->guest_cluster << cluster_bits(q);
	blk_status_t status = op->status;
	struct dedup_entry *e = op->entry;
	int r;

	if (!status && READ_ONCE(q->mode) != MODE_WRITE)
		status = BLK_STS_IOERR;
	if (status) {
		/* A cluster written in place stays mapped: keep it. */
		if (!op->in_place && qcow2_md_release(q->md, op->host_off) == -ENOMEM) {
			qcow2dedup_retry_op(q, op, &q->completed);
			return;
		}
		if (e) {
			requeue_waiters(q, op);
			dedup_remove(&q->index, e);
		}
		qcow2dedup_op_release(q, op, status);
		return;
	}
	r = op->in_place ? 0 : qcow2dedup_stage(q, guest_off, QCOW2_CLUSTER_NORMAL,
						op->host_off, true);
	if (r == -ENOMEM) {
		qcow2dedup_retry_op(q, op, &q->completed);
		return;
	}
	if (r) {
		qcow2dedup_metadata_error(q, "update", r);
		status = BLK_STS_IOERR;
	}
	if (e) {
		if (!r)
			dedup_write_done(&q->index, e, op->guest_cluster);
		requeue_waiters(q, op);
		if (r)
			dedup_remove(&q->index, e);
	}
	finish_mapped_op(q, op, status);
}

/**
 * qcow2dedup_stats() - the "stats" message: one "name value" per line.
 * @q: target.
 * @result: the message result buffer.
 * @maxlen: its size.
 *
 * Return: 1 (the result is used).
 */
int qcow2dedup_stats(struct qcow2dedup *q, char *result, unsigned int maxlen)
{
	const struct dedup_index *idx = &q->index;
	u64 entries = READ_ONCE(idx->entries), shared = READ_ONCE(idx->shared);
	u64 rebuild_us, rebuild_scan_us;
	unsigned int sz = 0;

	DMEMIT("clusters_written %lld\n", (long long)atomic64_read(&q->clusters_written));
	DMEMIT("dedup_hits %lld\n", (long long)atomic64_read(&q->dedup_hits));
	DMEMIT("zero_clusters %lld\n", (long long)atomic64_read(&q->zero_clusters));
	DMEMIT("unique_clusters %llu\n", entries - shared);
	DMEMIT("shared_clusters %llu\n", shared);
	DMEMIT("bytes_saved %llu\n", READ_ONCE(idx->extra_refs) << cluster_bits(q));
	DMEMIT("cow_copies %lld\n", (long long)atomic64_read(&q->cow_copies));
	DMEMIT("clusters_allocated %lld\n", (long long)atomic64_read(&q->clusters_allocated));
	DMEMIT("index_entries %llu\n", entries);
	DMEMIT("index_bytes %llu\n", dedup_index_bytes(idx));
	DMEMIT("index_entry_bytes %zu\n", dedup_entry_bytes());
	DMEMIT("index_limit_bytes %llu\n", idx->limit_bytes);
	DMEMIT("verify_mismatches %lld\n", (long long)atomic64_read(&q->verify_mismatches));
	DMEMIT("verify_reads %lld\n", (long long)atomic64_read(&q->verify_reads));
	DMEMIT("verify_stale %lld\n", (long long)atomic64_read(&q->verify_stale));
	DMEMIT("verify_inflight_max %u\n", READ_ONCE(q->verify_inflight_max));
	DMEMIT("rmw_reads %lld\n", (long long)atomic64_read(&q->rmw_reads));
	DMEMIT("rmw_inflight_max %u\n", READ_ONCE(q->rmw_inflight_max));
	DMEMIT("rmw_compressed %lld\n", (long long)atomic64_read(&q->rmw_compressed));
	DMEMIT("reader_waits %llu\n", READ_ONCE(q->readers.waits));
	DMEMIT("reader_wait_us %llu\n", div_u64(READ_ONCE(q->readers.wait_ns), NSEC_PER_USEC));
	DMEMIT("reader_wait_us_max %llu\n",
	       div_u64(READ_ONCE(q->readers.wait_ns_max), NSEC_PER_USEC));
	DMEMIT("memory_waits %lld\n", (long long)atomic64_read(&q->mem_waits));
	DMEMIT("read_runs %lld\n", (long long)atomic64_read(&q->read_runs));
	DMEMIT("zero_runs %lld\n", (long long)atomic64_read(&q->zero_runs));
	DMEMIT("barrier_writes %lld\n", (long long)atomic64_read(&q->barrier_writes));
	DMEMIT("zeroes_in_place %lld\n", (long long)atomic64_read(&q->zeroes_in_place));
	DMEMIT("zeroes_in_place_inflight_max %u\n", READ_ONCE(q->zeroes_in_place_inflight_max));
	DMEMIT("table_barriers %llu\n", READ_ONCE(q->table.barriers));
	DMEMIT("reads_deferred %lld\n", (long long)atomic64_read(&q->reads_deferred));
	DMEMIT("reads_deferred_inflight_max %u\n", READ_ONCE(q->reads_inflight_max));
	DMEMIT("reads_compressed %lld\n", (long long)atomic64_read(&q->reads_compressed));
	DMEMIT("inflaters %u\n", READ_ONCE(q->inflaters.nr));
	DMEMIT("inflaters_max %u\n", q->inflaters.max);
	DMEMIT("inflaters_busy_max %u\n", READ_ONCE(q->inflaters.held_max));
	DMEMIT("inflater_waits %llu\n", READ_ONCE(q->inflaters.waits));
	DMEMIT("writes_cold %lld\n", (long long)atomic64_read(&q->writes_cold));
	DMEMIT("writes_cold_inflight_max %u\n", READ_ONCE(q->writes_cold_inflight_max));
	DMEMIT("write_runs %lld\n", (long long)atomic64_read(&q->write_runs));
	DMEMIT("alloc_runs %lld\n", (long long)atomic64_read(&q->alloc_runs));
	DMEMIT("hash %s\n", q->dedup ? q->opt.hash : "none");
	DMEMIT("table_state %s\n", qcow2dedup_table_state(q));
	DMEMIT("table_off %s\n", q->table.enabled ? "-" : q->table.off_reason ?: "-");
	DMEMIT("table_entries %llu\n", READ_ONCE(idx->persisted));
	DMEMIT("table_dirty %llu\n", qcow2dedup_table_dirty(q));
	DMEMIT("table_loaded %llu\n", READ_ONCE(q->table.loaded));
	DMEMIT("table_dropped %llu\n", READ_ONCE(q->table.dropped));
	DMEMIT("table_clusters %llu\n", READ_ONCE(q->table.clusters));
	DMEMIT("table_flushes %llu\n", READ_ONCE(q->table.flushes));
	DMEMIT("table_flush_us %llu\n", div_u64(READ_ONCE(q->table.flush_ns), NSEC_PER_USEC));
	DMEMIT("rebuild_progress %u\n", qcow2dedup_rebuild_progress(q));
	DMEMIT("rebuild_hashed %llu\n", q->rebuild ? READ_ONCE(q->rebuild->hashed) : 0);
	DMEMIT("rebuild_indexed %llu\n", q->rebuild ? READ_ONCE(q->rebuild->indexed) : 0);
	DMEMIT("rebuild_copied %llu\n", q->rebuild ? READ_ONCE(q->rebuild->copied_fixed) : 0);
	DMEMIT("rebuild_runs %llu\n", q->rebuild ? READ_ONCE(q->rebuild->runs) : 0);
	rebuild_us = qcow2dedup_rebuild_us(q, &rebuild_scan_us);
	DMEMIT("rebuild_us %llu\n", rebuild_us);
	DMEMIT("rebuild_scan_us %llu\n", rebuild_scan_us);
	DMEMIT("mode %s\n", q->writable ? qcow2dedup_mode_names[READ_ONCE(q->mode)] :
		"read-only");
	return 1;
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

	qcow2dedup_assert_worker(q);
	r = qcow2_md_stage(q->md, guest_off, type, host_off, copied, &old_host);
	if (!r && old_host && q->dedup)
		qcow2dedup_drop_ref(q, old_host, guest_off >> q->geo->cluster_bits);
	return r;
}
