// SPDX-License-Identifier: GPL-2.0
/*
 * Restoring COPIED when a cluster's refcount falls back to one.
 *
 * qcow2 requires COPIED (bit 63 of an L2 entry) exactly when the cluster's
 * refcount is one; QEMU's check counts any mismatch as corruption, and QEMU
 * writes in place only to COPIED clusters.  Sharing a cluster clears the
 * flag on its first referrer before the second reference is written
 * (qcow2_md_clear_copied()).  The reverse happens here: when a decrement
 * leaves a refcount of one, the remaining reference gets COPIED back.
 *
 * Order.  Setting COPIED before the refcount of one is on disk could let
 * QEMU, after a crash, write in place into a cluster still shared.  So a
 * cluster noted in a commit's decrements (qcow2_copied_note()) is handled
 * in a second round of the same commit, whose first flush makes the
 * refcount durable before its second step writes the flag.  A crash in
 * between leaves COPIED clear on a refcount of one: a flag mismatch that
 * QEMU's check reports and repairs (qemu-img check -r all), with no data
 * at risk.  Clusters left to the L2 scan stay in that state until it runs.
 *
 * Finding the remaining reference.  The target's dedup index knows the
 * referrers of the clusters it shared in this activation (the survivor
 * callback).  For the others (shared in an earlier activation, or a
 * snapshot's cluster whose active reference went) the active L2 tables
 * are scanned: at once while they are few (SCAN_CHEAP), otherwise in
 * batches, when much is waiting or every SCAN_PERIOD; always in a final
 * commit, so a clean deactivation leaves every flag exact.  A cluster
 * whose last reference is a snapshot's is simply not found, which is
 * right: COPIED is only defined for the active L1.
 *
 * Memory.  A note that cannot be recorded for want of memory is not lost:
 * @scan_all makes the next scan look for every cluster of refcount one
 * that the active L1 references exactly once, without COPIED (a corrupt
 * image, whose refcount is lower than its references, gets no flag), and a
 * commit never fails for want of memory.
 */
#include <linux/jiffies.h>

#include "dm-qcow2dedup-compat.h"
#include "qcow2-metadata-internal.h"

#define SCAN_PERIOD	(30 * HZ)
#define SCAN_BATCH	65536
/* A scan of at most this many L2 entries (2 MiB of tables) runs at once. */
#define SCAN_CHEAP	262144

#define COPIED_GFP	(GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN)

/* No memory to note a cluster: the next scan looks at every entry. */
static void scan_everything(struct qcow2_metadata *md)
{
	if (!md->scan_all) {
		md->scan_all = true;
		md->nr_scan++;
	}
}

void qcow2_copied_note(struct qcow2_metadata *md, u64 cluster)
{
	if (xa_is_err(xa_store(&md->unique_next, cluster, xa_mk_value(1), COPIED_GFP)))
		scan_everything(md);
}

/* After a commit round: its notes are handled by the next round. */
void qcow2_copied_advance(struct qcow2_metadata *md)
{
	unsigned long c;
	void *p;

	xa_for_each(&md->unique_next, c, p)
		if (xa_is_err(xa_store(&md->unique_ready, c, p, COPIED_GFP)))
			scan_everything(md);
	xa_destroy(&md->unique_next);
}

void qcow2_copied_destroy(struct qcow2_metadata *md)
{
	xa_destroy(&md->unique_next);
	xa_destroy(&md->unique_ready);
	xa_destroy(&md->unique_scan);
}

/* Stage COPIED on @guest_off if it still maps @host with refcount one. */
static int restore_one(struct qcow2_metadata *md, u64 guest_off, u64 host)
{
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	bool pending;
	u64 rc;
	int r;

	r = qcow2_md_lookup(md, guest_off, true, &type, &info, &pending);
	if (r)
		return r;
	if (type != QCOW2_CLUSTER_NORMAL || info.copied ||
	    info.host_offset >> md->geo.cluster_bits != host)
		return 0;
	if (md->guest_busy && md->guest_busy(md->ctx, guest_off >> md->geo.cluster_bits)) {
		/* Its operation holds the old contents: try after the next commit. */
		qcow2_copied_note(md, host);
		return 0;
	}
	r = qcow2_rc_get(md, host, &rc);
	if (r || rc != 1)
		return r;
	return qcow2_md_set_copied(md, guest_off);
}

/* One L2 table: restore the entries that point into @md->unique_scan. */
static int scan_table(struct qcow2_metadata *md, u64 l1_index, u64 l2_off)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 per_block = BIT_ULL(md->block_bits) / sizeof(u64);
	u64 n = BIT_ULL(g->l2_bits), i, gc0 = l1_index << g->l2_bits;
	int r = 0;

	for (i = 0; i < n && !r; i += per_block) {
		struct dm_buffer *b;
		__be64 *data;
		u64 j;

		data = dm_bufio_read(md->bufio, (l2_off >> md->block_bits) +
				     i / per_block, &b);
		if (IS_ERR(data))
			return PTR_ERR(data);
		for (j = 0; j < per_block && !r; j++) {
			u64 e = be64_to_cpu(data[j]), off = e & QCOW2_L2E_OFFSET_MASK;
			u64 guest_off = (gc0 + i + j) << g->cluster_bits;

			if (!off || (e & QCOW2_OFLAG_COPIED) || (e & QCOW2_OFLAG_COMPRESSED) ||
			    guest_off >= g->size ||
			    !xa_load(&md->unique_scan, off >> g->cluster_bits))
				continue;
			/* restore_one() looks again, staged entries first. */
			dm_bufio_release(b);
			r = restore_one(md, guest_off, off >> g->cluster_bits);
			if (r == -ENOMEM) {
				scan_everything(md);
				r = 0;
			}
			data = dm_bufio_read(md->bufio, (l2_off >> md->block_bits) +
					     i / per_block, &b);
			if (IS_ERR(data))
				return PTR_ERR(data);
		}
		dm_bufio_release(b);
	}
	return r;
}

/*
 * For @scan_all: the clusters of refcount one that one entry of the active
 * L1, without COPIED, references, and no other entry: into @unique_scan.
 * Two passes over the active L1 (candidates, then their references); a
 * candidate that cannot be noted for want of memory keeps its flag clear.
 */
static int find_unique(struct qcow2_metadata *md)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 gcs = DIV_ROUND_UP(g->size, g->cluster_size), gc, rc;
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	struct xarray count;
	int pass, r = 0;
	unsigned long c;
	bool pending;
	void *p;

	xa_init(&count);
	for (pass = 0; pass < 2 && !r; pass++) {
		for (gc = 0; gc < gcs && !r; gc++) {
			if (!qcow2_md_l2_present(md, gc)) {
				gc |= (1ULL << g->l2_bits) - 1;
				continue;
			}
			if (!(gc & 4095))
				cond_resched();
			r = qcow2_md_lookup(md, gc << g->cluster_bits, true, &type, &info,
					    &pending);
			if (r || type != QCOW2_CLUSTER_NORMAL)
				continue;
			c = info.host_offset >> g->cluster_bits;
			p = xa_load(&count, c);
			if (pass == 1) {
				/* Over an entry: no memory needed. */
				if (p)
					xa_store(&count, c, xa_mk_value(xa_to_value(p) + 1),
						 COPIED_GFP);
				continue;
			}
			if (info.copied || p)
				continue;
			r = qcow2_rc_get(md, c, &rc);
			if (!r && rc == 1)
				xa_store(&count, c, xa_mk_value(0), COPIED_GFP);
		}
	}
	xa_for_each(&count, c, p)
		if (!r && xa_to_value(p) == 1 &&
		    !xa_is_err(xa_store(&md->unique_scan, c, xa_mk_value(1), COPIED_GFP)))
			md->nr_scan++;
	xa_destroy(&count);
	return r;
}

/*
 * Scan the active L2 tables.  Staged entries that point into the set are
 * handled by restore_one() through the lookup of each candidate; staged
 * entries over an entry that did not point there need no flag: what the
 * worker staged for a cluster it shares is already exact.
 */
static int scan_tables(struct qcow2_metadata *md)
{
	const struct qcow2_geometry *g = &md->geo;
	unsigned long i;
	int r = 0;

	if (md->scan_all) {
		md->scan_all = false;
		r = find_unique(md);
	}
	md->nr_scan = 0;
	for (i = 0; i < g->l1_size && !r; i++) {
		void *p = xa_load(&md->pending_l1, i);
		u64 l1e = md->l1[i], l2;

		if (p)
			l2 = xa_to_value(p) & ~1ULL;
		else if (l1e & QCOW2_OFLAG_COPIED)
			l2 = l1e & QCOW2_L1E_OFFSET_MASK;
		else
			continue;	/* none, or shared with a snapshot */
		if (l2)
			r = scan_table(md, i, l2);
		cond_resched();
	}
	xa_destroy(&md->unique_scan);
	if (md->scan_all)
		md->nr_scan = 1;
	md->last_scan = jiffies;
	return r;
}

/* Few L2 tables: scanning them costs less than keeping flags wrong. */
static bool scan_is_cheap(struct qcow2_metadata *md)
{
	u64 tables = 0, i;

	for (i = 0; i < md->geo.l1_size; i++)
		tables += !!(md->l1[i] & QCOW2_L1E_OFFSET_MASK);
	return (tables << md->geo.l2_bits) <= SCAN_CHEAP;
}

/**
 * qcow2_copied_restore() - at the start of a commit, stage COPIED for the
 *	clusters whose refcount fell to one in an earlier commit.
 * @md: metadata.
 * @final: a clean deactivation: scan for the rest now.
 */
int qcow2_copied_restore(struct qcow2_metadata *md, bool final)
{
	unsigned long c;
	u64 gc;
	void *p;
	int r = 0;

	xa_for_each(&md->unique_ready, c, p) {
		if (md->survivor && md->survivor(md->ctx, c, &gc)) {
			r = restore_one(md, gc << md->geo.cluster_bits, c);
		} else if (!md->scan_all && !xa_load(&md->unique_scan, c)) {
			r = xa_err(xa_store(&md->unique_scan, c, xa_mk_value(1), COPIED_GFP));
			if (!r)
				md->nr_scan++;
		}
		if (r == -ENOMEM) {
			scan_everything(md);
			r = 0;
		}
		if (r)
			break;
	}
	xa_destroy(&md->unique_ready);
	if (r || !md->nr_scan)
		return r;
	if (final || md->nr_scan >= SCAN_BATCH || scan_is_cheap(md) ||
	    time_after(jiffies, md->last_scan + SCAN_PERIOD))
		r = scan_tables(md);
	return r;
}
