// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: rebuilding the index by hashing the image's clusters, in
 * the background, while I/O goes on.
 *
 * The worker walks the active L1 a batch at a time.  Each cluster of
 * refcount one (COPIED) that is not indexed gets an UNKEYED entry naming
 * its guest cluster; from then on map() leaves it to the worker like any
 * indexed cluster.  wait_for_readers() then drains in-place writes map()
 * sent before the entry existed, so the bytes read next are stable.  A
 * work item on hash_wq reads and hashes the batch; back in the worker, an
 * entry still UNKEYED (nothing wrote, freed or re-keyed the cluster since:
 * all of that goes through the worker and changes or removes the entry)
 * takes its digest and becomes READY, and the next table flush writes it.
 *
 * Clusters shared already (refcount two or more) are left out: the index
 * must name every referrer of what it shares, and a snapshot or an earlier
 * activation may hold references the active L1 does not show.
 */
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "dm-qcow2dedup.h"

/* Guest clusters looked at per worker pass, at most. */
#define REBUILD_SCAN	4096U

static u32 cbits(struct qcow2dedup *q)
{
	return q->geo->cluster_bits;
}

static void rebuild_work(struct work_struct *ws);

int qcow2dedup_rebuild_init(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb;

	rb = kvzalloc(sizeof(*rb), GFP_KERNEL);
	if (!rb)
		return -ENOMEM;
	rb->buf = kvmalloc(q->geo->cluster_size, GFP_KERNEL);
	if (!rb->buf) {
		kvfree(rb);
		return -ENOMEM;
	}
	rb->q = q;
	INIT_WORK(&rb->work, rebuild_work);
	q->rebuild = rb;
	return 0;
}

void qcow2dedup_rebuild_free(struct qcow2dedup *q)
{
	if (!q->rebuild)
		return;
	kvfree(q->rebuild->buf);
	kvfree(q->rebuild);
	q->rebuild = NULL;
}

/* hash_wq: read and hash the batch, then hand it back to the worker. */
static void rebuild_work(struct work_struct *ws)
{
	struct qcow2dedup_rebuild *rb = container_of(ws, struct qcow2dedup_rebuild, work);
	struct qcow2dedup *q = rb->q;
	unsigned int i;

	for (i = 0; i < rb->n; i++) {
		struct qcow2dedup_rebuild_item *it = &rb->item[i];

		it->err = qcow2dedup_sync_io(q, REQ_OP_READ, rb->buf,
					     it->host << cbits(q), q->geo->cluster_size);
		if (it->err)
			continue;
		it->zero = dedup_is_zero(rb->buf, q->geo->cluster_size);
		if (!it->zero)
			it->err = crypto_shash_tfm_digest(q->tfm, rb->buf,
							  q->geo->cluster_size,
							  it->digest);
	}
	spin_lock_irq(&q->lock);
	rb->batch_done = true;
	spin_unlock_irq(&q->lock);
	qcow2dedup_wake(q);
}

/* Worker: the hashed batch; entries still UNKEYED take their digest. */
static void apply_batch(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	unsigned int i;

	for (i = 0; i < rb->n; i++) {
		struct qcow2dedup_rebuild_item *it = &rb->item[i];
		struct dedup_entry *e = dedup_find_host(&q->index, it->host);
		u64 rc;

		/* UNKEYED entries are made by the scan only, one batch at a time. */
		if (e != it->e || e->state != DEDUP_UNKEYED)
			continue;
		rb->hashed++;
		if (it->err || it->zero ||
		    qcow2_md_refcount(q->md, it->host << cbits(q), &rc) || rc != 1 ||
		    dedup_key(&q->index, e, it->digest)) {
			dedup_remove(&q->index, e);
			continue;
		}
		rb->indexed++;
	}
	rb->n = 0;
	rb->batch_out = false;
}

static void rebuild_end(struct qcow2dedup *q, const char *how)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;

	WRITE_ONCE(rb->active, false);
	DMINFO("%s: dedup index rebuild %s: %llu clusters hashed, %llu indexed in %llu ms",
	       qcow2dedup_dev_name(q), how, rb->hashed, rb->indexed,
	       div_u64(ktime_get_ns() - rb->started_ns, NSEC_PER_MSEC));
}

/* Worker: pick the next batch of clusters to hash. */
static int scan_batch(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	u64 stop = min(rb->end_gc, rb->next_gc + REBUILD_SCAN);
	u64 gc;
	int r = 0;

	for (gc = rb->next_gc; gc < stop && rb->n < REBUILD_BATCH; gc++) {
		struct qcow2_l2e_info info;
		enum qcow2_cluster_type type;
		struct dedup_entry *e;
		bool pending;
		u64 host, first;

		if (!qcow2_md_l2_present(q->md, gc)) {
			gc |= (1ULL << q->geo->l2_bits) - 1;
			continue;
		}
		r = qcow2_md_lookup(q->md, gc << cbits(q), true, &type, &info, &pending);
		if (r)
			break;
		if (type != QCOW2_CLUSTER_NORMAL || !info.copied || pending ||
		    qcow2dedup_guest_busy(q, gc))
			continue;
		host = info.host_offset >> cbits(q);
		if (dedup_find_host(&q->index, host))
			continue;
		r = dedup_insert_unkeyed(&q->index, host, NULL, &e);
		if (r)
			break;
		dedup_add_ref(&q->index, e, gc, &first);
		rb->item[rb->n].host = host;
		rb->item[rb->n].e = e;
		rb->n++;
	}
	rb->next_gc = min(gc, rb->end_gc);
	return r;
}

/**
 * qcow2dedup_rebuild_step() - worker: advance the rebuild by one batch.
 * @q: target.
 */
void qcow2dedup_rebuild_step(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	bool done;
	int r;

	if (!rb)
		return;
	if (rb->requested && !rb->active) {
		rb->requested = false;
		rb->next_gc = 0;
		rb->end_gc = DIV_ROUND_UP(q->geo->size, q->geo->cluster_size);
		rb->hashed = 0;
		rb->indexed = 0;
		rb->started_ns = ktime_get_ns();
		rb->runs++;
		WRITE_ONCE(rb->active, true);
	}
	if (!rb->active)
		return;
	if (rb->batch_out) {
		spin_lock_irq(&q->lock);
		done = rb->batch_done;
		rb->batch_done = false;
		spin_unlock_irq(&q->lock);
		if (!done)
			return;
		apply_batch(q);
	}
	if (rb->paused || READ_ONCE(q->mode) != MODE_WRITE)
		return;
	if (rb->next_gc >= rb->end_gc) {
		rebuild_end(q, "done");
		return;
	}
	r = scan_batch(q);
	if (r == -ENOSPC) {
		rebuild_end(q, "stopped at the index memory limit");
		r = 0;
	} else if (r) {
		DMERR_LIMIT("%s: dedup index rebuild stopped: %d", qcow2dedup_dev_name(q), r);
		rebuild_end(q, "failed");
	}
	if (rb->n) {
		/* In-place writes sent before the entries existed end first. */
		qcow2dedup_wait_for_readers(q);
		rb->batch_out = true;
		queue_work(q->hash_wq, &rb->work);
	} else if (rb->active) {
		qcow2dedup_wake(q);
	}
}

/**
 * qcow2dedup_rebuild_start() - hash every unindexed cluster of refcount one
 *	(after a stale table, or on the "rebuild" message).
 * @q: target.
 */
void qcow2dedup_rebuild_start(struct qcow2dedup *q)
{
	if (!q->rebuild)
		return;
	q->rebuild->requested = true;
	qcow2dedup_wake(q);
}

/**
 * qcow2dedup_rebuild_progress() - percent of the guest clusters scanned.
 * @q: target.
 */
unsigned int qcow2dedup_rebuild_progress(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;

	if (!rb || !READ_ONCE(rb->active) || !rb->end_gc)
		return 100;
	return div64_u64(READ_ONCE(rb->next_gc) * 100, rb->end_gc);
}
