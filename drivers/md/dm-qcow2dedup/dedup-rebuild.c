// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: rebuilding the index by hashing the image's clusters, in
 * the background, while I/O goes on.  It runs after a stale, damaged or
 * absent table, and on the "rebuild" message.
 *
 * Scan.  The worker walks the active L1, some thousand guest clusters per
 * pass.  Every standard cluster not indexed gets an UNKEYED entry, and
 * each guest cluster pointing to it becomes one of its referrers.  From
 * then on map() leaves the cluster to the worker like any indexed one,
 * and the worker keeps the referrers exact as guest clusters move away.
 * When the walk ends, a commit makes every refcount current, and entries
 * whose refcount is not their number of referrers (a snapshot, or a
 * reference the walk missed) are dropped: the index must name every
 * referrer of what it shares.  A cluster of refcount one whose L2 entry
 * lacks COPIED (QEMU's copy-on-write leaves it so on the other referrer
 * of a cluster the target had shared) gets its flag back on the way.
 *
 * Hash.  qcow2dedup_wait_for_readers() drains in-place writes map() sent
 * before the entries existed, so the bytes read next are stable.  Work items on
 * hash_wq read and hash batches, REBUILD_BATCHES of them out at a time so
 * that reading one overlaps hashing another; back in the worker, an entry still
 * UNKEYED (nothing wrote, freed or re-keyed the cluster since: all of that
 * goes through the worker and changes or removes the entry) takes its
 * digest and becomes READY, and the next table flush writes it.  Content
 * some other entry already has is not merged: the entry is dropped.
 */
#include <linux/slab.h>
#include <linux/vmalloc.h>

#include "dm-qcow2dedup.h"

/* Guest clusters looked at per worker pass, at most. */
#define SCAN_PER_PASS	4096U
/* On the I/O path: a failed allocation makes the scan wait and go on. */
#define REBUILD_GFP	(GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN)

static u32 cbits(struct qcow2dedup *q)
{
	return q->geo->cluster_bits;
}

static void rebuild_work(struct work_struct *ws);

int qcow2dedup_rebuild_init(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb;
	unsigned int i;

	rb = kvzalloc(sizeof(*rb), GFP_KERNEL);
	if (!rb)
		return -ENOMEM;
	rb->q = q;
	q->rebuild = rb;
	rb->max_items = clamp_t(u64, REBUILD_BATCH_BYTES >> cbits(q), 1, REBUILD_BATCH);
	for (i = 0; i < REBUILD_BATCHES; i++) {
		struct qcow2dedup_rebuild_batch *b = &rb->batch[i];

		b->rb = rb;
		INIT_WORK(&b->work, rebuild_work);
		b->buf = kvmalloc((size_t)rb->max_items << cbits(q), GFP_KERNEL);
		if (!b->buf) {
			qcow2dedup_rebuild_free(q);
			return -ENOMEM;
		}
	}
	return 0;
}

void qcow2dedup_rebuild_free(struct qcow2dedup *q)
{
	unsigned int i;

	if (!q->rebuild)
		return;
	for (i = 0; i < REBUILD_BATCHES; i++)
		kvfree(q->rebuild->batch[i].buf);
	kvfree(q->rebuild);
	q->rebuild = NULL;
}

/*
 * Worker: the rebuild is over (done, failed or reset): its time stops, and
 * a rebuild that never reached its hashing spent all of it scanning.
 */
static void stop_clock(struct qcow2dedup_rebuild *rb)
{
	u64 now = ktime_get_ns();

	if (!rb->scan_ns)
		WRITE_ONCE(rb->scan_ns, now - rb->started_ns);
	WRITE_ONCE(rb->ended_ns, now);
}

/* Forget the batches (quiesced: none is out). */
static void drop_batches(struct qcow2dedup_rebuild *rb)
{
	unsigned int i;

	for (i = 0; i < REBUILD_BATCHES; i++) {
		rb->batch[i].out = false;
		rb->batch[i].done = false;
		rb->batch[i].n = 0;
	}
}

/**
 * qcow2dedup_rebuild_reset() - forget a rebuild under way (the index it
 *	worked on is gone).
 * @q: target, quiesced (no batch out).
 */
void qcow2dedup_rebuild_reset(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;

	if (!rb)
		return;
	if (rb->active)
		stop_clock(rb);
	WRITE_ONCE(rb->active, false);
	WRITE_ONCE(rb->requested, false);
	drop_batches(rb);
}

/**
 * qcow2dedup_rebuild_rehash() - at a resume: a batch hashed before the
 *	suspend read bytes of before; hash its clusters again.
 * @q: target, quiesced.
 */
void qcow2dedup_rebuild_rehash(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;

	if (!rb || !rb->active)
		return;
	drop_batches(rb);
	if (rb->phase == REBUILD_HASH)
		rb->next_host = 0;
}

/*
 * hash_wq: read the batch, one I/O per run of adjacent clusters (the batch
 * is in host order), hash it, then hand it back to the worker.
 */
static void rebuild_work(struct work_struct *ws)
{
	struct qcow2dedup_rebuild_batch *b =
		container_of(ws, struct qcow2dedup_rebuild_batch, work);
	struct qcow2dedup *q = b->rb->q;
	u32 cs = q->geo->cluster_size;
	unsigned int i, j, k;

	for (i = 0; i < b->n; i = j) {
		int err;

		for (j = i + 1; j < b->n && b->item[j].host == b->item[j - 1].host + 1; j++)
			;
		err = qcow2dedup_sync_io(q, REQ_OP_READ, b->buf, b->item[i].host << cbits(q),
					 (u64)(j - i) * cs);
		for (k = i; k < j; k++) {
			struct qcow2dedup_rebuild_item *it = &b->item[k];
			void *data = b->buf + (size_t)(k - i) * cs;

			it->err = err;
			if (err)
				continue;
			it->zero = dedup_is_zero(data, cs);
			if (!it->zero)
				it->err = crypto_shash_tfm_digest(q->tfm, data, cs, it->digest);
		}
		cond_resched();
	}
	spin_lock_irq(&q->lock);
	b->done = true;
	spin_unlock_irq(&q->lock);
	qcow2dedup_wake(q);
}

/* An entry whose refcount is its number of referrers (worker). */
static bool refs_exact(struct qcow2dedup *q, struct dedup_entry *e)
{
	u32 refs = dedup_nr_refs(e);
	u64 rc;

	return refs && !qcow2_md_refcount(q->md, dedup_entry_host(e) << cbits(q), &rc) &&
	       rc == refs;
}

/* Worker: a hashed batch; entries still UNKEYED take their digest. */
static void apply_batch(struct qcow2dedup *q, struct qcow2dedup_rebuild_batch *b)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	unsigned int i;

	for (i = 0; i < b->n; i++) {
		struct qcow2dedup_rebuild_item *it = &b->item[i];
		struct dedup_entry *e = dedup_find_host(&q->index, it->host);

		/* UNKEYED entries are made by the scan only, and not reused. */
		if (e != it->e || dedup_entry_state(e) != DEDUP_UNKEYED)
			continue;
		rb->hashed++;
		if (it->err || it->zero || !refs_exact(q, e) ||
		    dedup_key(&q->index, e, it->digest)) {
			dedup_remove(&q->index, e);
			continue;
		}
		rb->indexed++;
	}
	b->n = 0;
	b->out = false;
}

static void rebuild_end(struct qcow2dedup *q, const char *how)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	u64 total_us, scan_us;
	struct dedup_entry *e;
	unsigned long host;

	/* Entries left UNKEYED (a stop half-way) go. */
	xa_for_each(&q->index.by_host, host, e)
		if (dedup_entry_state(e) == DEDUP_UNKEYED)
			dedup_remove(&q->index, e);
	stop_clock(rb);
	WRITE_ONCE(rb->active, false);
	if (READ_ONCE(rb->quiet))
		return;
	total_us = qcow2dedup_rebuild_us(q, &scan_us);
	DMINFO("%s: index rebuild %s, %llu ms (scan %llu): %llu hashed, %llu indexed, %llu COPIED",
	       qcow2dedup_dev_name(q), how, div_u64(total_us, USEC_PER_MSEC),
	       div_u64(scan_us, USEC_PER_MSEC), rb->hashed, rb->indexed, rb->copied_fixed);
}

/* Worker: one guest cluster of the scan, looked up. */
static int scan_one(struct qcow2dedup *q, u64 gc, enum qcow2_cluster_type type,
		    const struct qcow2_l2e_info *info, bool pending)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	struct dedup_entry *e;
	u64 host, first;
	int r;

	if (type != QCOW2_CLUSTER_NORMAL || pending || qcow2dedup_guest_busy(q, gc))
		return 0;
	host = info->host_offset >> cbits(q);
	e = dedup_find_host(&q->index, host);
	if (!e) {
		r = dedup_insert_unkeyed(&q->index, host, NULL, &e, REBUILD_GFP);
		if (r)
			return r;
		rb->candidates++;
	} else if (dedup_entry_state(e) != DEDUP_UNKEYED) {
		return 0;
	}
	if (info->copied)
		dedup_entry_set_copied_ref(e);
	r = dedup_add_ref(&q->index, e, gc, &first, REBUILD_GFP);
	return r < 0 ? r : 0;
}

/*
 * Worker: scan guest clusters @gc.. (before @stop) whose L2 entries share a
 * metadata block; *@at is the next cluster to scan (on an error, the one to
 * scan again).  Return: 0 or a negative error.
 */
static int scan_block(struct qcow2dedup *q, u64 gc, u64 stop, u64 *at)
{
	struct qcow2dedup_walk *w = &q->rebuild->walk;
	int r, n, i;

	*at = gc;
	n = qcow2_md_lookup_block(q->md, gc, min_t(u64, stop - gc, QCOW2DEDUP_WALK),
				  w->type, w->info, w->pending);
	if (n < 0)
		return n;
	for (i = 0; i < n; i++) {
		r = scan_one(q, gc + i, w->type[i], &w->info[i], w->pending[i]);
		if (r) {
			*at = gc + i;
			return r;
		}
	}
	*at = gc + n;
	return 0;
}

/*
 * A cluster of refcount one whose only reference lacks COPIED (QEMU's
 * copy-on-write of the other reference of a cluster the target shared
 * leaves it so): the flag comes back.  Only once the referrers are counted:
 * a corrupt image whose refcount is lower than its references gets none.
 */
static void restore_copied(struct qcow2dedup *q, struct dedup_entry *e)
{
	u64 guest_off = e->guest << cbits(q);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	bool pending;

	if (!qcow2_md_lookup(q->md, guest_off, true, &type, &info, &pending) &&
	    type == QCOW2_CLUSTER_NORMAL && !info.copied &&
	    info.host_offset >> cbits(q) == dedup_entry_host(e) &&
	    !qcow2dedup_guest_busy(q, e->guest) &&
	    !qcow2_md_set_copied(q->md, guest_off))
		q->rebuild->copied_fixed++;
}

/* Worker: the scan is over; keep the entries whose referrers are exact. */
static int scan_end(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	struct dedup_entry *e;
	unsigned long host;
	int r;

	r = qcow2dedup_commit(q);
	if (r)
		return r;
	xa_for_each(&q->index.by_host, host, e) {
		if (!(host & 1023))
			cond_resched();
		if (dedup_entry_state(e) != DEDUP_UNKEYED)
			continue;
		if (dedup_nr_refs(e) >= 2 && dedup_entry_copied_ref(e)) {
			qcow2dedup_shared_copied(q, dedup_entry_host(e), dedup_nr_refs(e));
		} else if (refs_exact(q, e)) {
			if (dedup_nr_refs(e) == 1)
				restore_copied(q, e);
			continue;
		}
		dedup_remove(&q->index, e);
		rb->candidates--;
	}
	/* In-place writes map() sent before the entries existed end here. */
	qcow2dedup_wait_for_readers(q);
	rb->phase = REBUILD_HASH;
	rb->next_host = 0;
	WRITE_ONCE(rb->scan_ns, ktime_get_ns() - rb->started_ns);
	return 0;
}

/* Worker: the next UNKEYED entries, for the hash work. */
static void pick_batch(struct qcow2dedup *q, struct qcow2dedup_rebuild_batch *b)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	struct dedup_entry *e;
	unsigned long host;

	xa_for_each_start(&q->index.by_host, host, e, rb->next_host) {
		if (b->n == rb->max_items)
			break;
		rb->next_host = host + 1;
		if (dedup_entry_state(e) != DEDUP_UNKEYED)
			continue;
		b->item[b->n].host = host;
		b->item[b->n].e = e;
		b->n++;
	}
}

/* Worker: apply the batches back from hash_wq; how many are still out. */
static unsigned int collect_batches(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	unsigned int i, out = 0;

	for (i = 0; i < REBUILD_BATCHES; i++) {
		struct qcow2dedup_rebuild_batch *b = &rb->batch[i];
		bool done;

		if (!b->out)
			continue;
		spin_lock_irq(&q->lock);
		done = b->done;
		b->done = false;
		spin_unlock_irq(&q->lock);
		if (done)
			apply_batch(q, b);
		else
			out++;
	}
	return out;
}

/* Worker: send every idle batch out with the next clusters. */
static void send_batches(struct qcow2dedup *q, unsigned int out)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	unsigned int i;

	for (i = 0; i < REBUILD_BATCHES; i++) {
		struct qcow2dedup_rebuild_batch *b = &rb->batch[i];

		if (b->out)
			continue;
		pick_batch(q, b);
		if (!b->n)
			break;
		b->out = true;
		out++;
		queue_work(q->hash_wq, &b->work);
	}
	if (!out)
		rebuild_end(q, "done");
}

/**
 * qcow2dedup_rebuild_step() - worker: advance the rebuild a little.
 * @q: target.
 */
void qcow2dedup_rebuild_step(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	unsigned int out;
	int r = 0;

	/* Suspended (or not resumed yet): the image is not ours to write. */
	if (!rb || READ_ONCE(q->suspended))
		return;
	if (READ_ONCE(rb->requested) && !rb->active) {
		WRITE_ONCE(rb->requested, false);
		rb->phase = REBUILD_SCAN;
		rb->next_gc = 0;
		rb->end_gc = DIV_ROUND_UP(q->geo->size, q->geo->cluster_size);
		rb->candidates = 0;
		rb->hashed = 0;
		rb->indexed = 0;
		rb->copied_fixed = 0;
		WRITE_ONCE(rb->started_ns, ktime_get_ns());
		WRITE_ONCE(rb->ended_ns, 0);
		WRITE_ONCE(rb->scan_ns, 0);
		rb->runs++;
		WRITE_ONCE(rb->active, true);
		r = qcow2dedup_table_rebuilding(q);
		if (r) {
			qcow2dedup_metadata_error_once(q, "dedup table header", r);
			rebuild_end(q, "failed");
			return;
		}
	}
	if (!rb->active)
		return;
	out = collect_batches(q);
	if (READ_ONCE(rb->paused) || READ_ONCE(q->mode) != MODE_WRITE)
		return;

	if (rb->phase == REBUILD_SCAN) {
		u64 stop = min(rb->end_gc, rb->next_gc + SCAN_PER_PASS);
		u64 gc;

		for (gc = rb->next_gc; gc < stop;) {
			if (!qcow2_md_l2_present(q->md, gc)) {
				gc = (gc | ((1ULL << q->geo->l2_bits) - 1)) + 1;
				continue;
			}
			r = scan_block(q, gc, stop, &gc);
			if (r)
				break;
		}
		WRITE_ONCE(rb->next_gc, min(gc, rb->end_gc));
		if (r == -ENOMEM) {
			/* Memory short: this cluster again, a moment later. */
			qcow2dedup_wait_memory(q);
			return;
		}
		if (r == -ENOSPC) {
			/* At the index memory limit: hash what was found. */
			WRITE_ONCE(rb->next_gc, rb->end_gc);
			r = 0;
		}
		if (!r && rb->next_gc >= rb->end_gc)
			r = scan_end(q);
	} else {
		send_batches(q, out);
		return;
	}
	if (r) {
		DMERR_LIMIT("%s: dedup index rebuild stopped: %d", qcow2dedup_dev_name(q), r);
		rebuild_end(q, "failed");
		return;
	}
	/* More to scan: come back after the I/O queued meanwhile. */
	qcow2dedup_wake(q);
}

/**
 * qcow2dedup_rebuild_start() - rebuild the index (after a stale, damaged or
 *	absent table, or on the "rebuild" message).
 * @q: target.
 * @quiet: no log line at the end (an image that never had a table).
 */
void qcow2dedup_rebuild_start(struct qcow2dedup *q, bool quiet)
{
	if (!q->rebuild)
		return;
	WRITE_ONCE(q->rebuild->quiet, quiet);
	WRITE_ONCE(q->rebuild->requested, true);
	qcow2dedup_wake(q);
}

/**
 * qcow2dedup_rebuild_progress() - percent done: the scan is the first half,
 *	hashing the second.
 * @q: target.
 */
unsigned int qcow2dedup_rebuild_progress(struct qcow2dedup *q)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	u64 c;

	if (!rb || !READ_ONCE(rb->active) || !rb->end_gc)
		return 100;
	if (READ_ONCE(rb->phase) == REBUILD_SCAN)
		return div64_u64(READ_ONCE(rb->next_gc) * 50, rb->end_gc);
	c = READ_ONCE(rb->candidates);
	return 50 + (c ? div64_u64(min(READ_ONCE(rb->hashed), c) * 49, c) : 49);
}

/**
 * qcow2dedup_rebuild_us() - how long the last rebuild took, wall clock,
 *	suspensions included (so far, while it runs).
 * @q: target; any context.
 * @scan_us: the share of its scan of the L2 tables (0 until the scan is over; all
 *	of it for a rebuild stopped while scanning).
 *
 * Return: microseconds; 0 when no rebuild ran since activation.  The fields
 * are read once each, without the worker's exclusion: a rebuild starting
 * meanwhile can mix two runs, and @scan_us is capped so that it never
 * exceeds the total.
 */
u64 qcow2dedup_rebuild_us(struct qcow2dedup *q, u64 *scan_us)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	u64 start, end, scan, total;

	*scan_us = 0;
	if (!rb)
		return 0;
	/* A start not yet seen (or none): nothing to report. */
	start = READ_ONCE(rb->started_ns);
	if (!start)
		return 0;
	scan = READ_ONCE(rb->scan_ns);
	end = READ_ONCE(rb->ended_ns) ?: ktime_get_ns();
	total = end > start ? div_u64(end - start, NSEC_PER_USEC) : 0;
	*scan_us = min(div_u64(scan, NSEC_PER_USEC), total);
	return total;
}
