// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: reads.  map() answers a read from cached metadata when it
 * can (qcow2dedup_map_read(): remapped, zeros, or a run of contiguous
 * clusters at once).  The rest (an L2 block to read, a compressed cluster to
 * inflate) is served by a work item of its own on @q->read_wq
 * (read_deferred()), several at once, never by the worker: a read never
 * waits behind a write's metadata work, nor a write behind a read's
 * metadata read.  Compressed clusters are read and inflated there, each
 * with an inflater of its own from the target's pool (io-inflaters.h), so
 * as many at once as the pool has CPUs for; the worker's read-modify-write
 * of such a cluster is one more user of the pool, on the same workqueue.
 *
 * Such a read changes nothing: it looks metadata up exactly as map() does
 * (qcow2_md_lookup() may run beside the worker, which stages an entry
 * before it changes an L2 buffer) but may wait for dm-bufio to read a block.
 * It holds a reader generation (qcow2dedup_io_hold()) from before its
 * lookup to its end_io, so that no cluster it found is freed and reused
 * meanwhile; the worker's commit may wait for it, never the reverse.
 */
#include <linux/dm-io.h>

#include "dm-qcow2dedup.h"

/* Copy the part of cluster @data that @bio covers into @bio. */
static void copy_to_bio(struct qcow2dedup *q, struct bio *bio, const void *data)
{
	u64 off = qcow2_offset_in_cluster(q->geo, qcow2dedup_guest_offset(bio));
	struct bvec_iter iter;
	struct bio_vec bv;

	bio_for_each_segment(bv, bio, iter) {
		memcpy_to_bvec(&bv, data + off);
		off += bv.bv_len;
	}
}

/*
 * In map(): keep the part of @bio in its first guest cluster, or in its
 * first @clusters clusters; dm core maps the rest as a new bio.
 */
void qcow2dedup_accept_clusters(struct qcow2dedup *q, struct bio *bio,
				unsigned int clusters)
{
	u64 in = ((u64)clusters << q->geo->cluster_bits) -
		 qcow2_offset_in_cluster(q->geo, qcow2dedup_guest_offset(bio));

	if (bio->bi_iter.bi_size > in)
		dm_accept_partial_bio(bio, in >> SECTOR_SHIFT);
}

/* Guest clusters @bio touches. */
unsigned int qcow2dedup_bio_clusters(struct qcow2dedup *q, struct bio *bio)
{
	u64 off = qcow2dedup_guest_offset(bio);
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
	u64 off = qcow2dedup_guest_offset(bio);
	unsigned int want = qcow2dedup_bio_clusters(q, bio);
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
 * @info), from guest offset @off.  Compressed clusters only on @q->read_wq
 * (qcow2dedup_map_read() defers them).  Returns a DM_MAPIO_* code:
 * REMAPPED is for the caller to submit.
 */
static int read_piece(struct qcow2dedup *q, struct bio *bio, u64 off,
		      enum qcow2_cluster_type type, const struct qcow2_l2e_info *info)
{
	struct qcow2_inflater *inf;

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
		/* Never in map(): qcow2dedup_map_read() defers these. */
		atomic64_inc(&q->reads_compressed);
		inf = qcow2dedup_inflate(q, info);
		if (!inf)
			return DM_MAPIO_KILL;
		copy_to_bio(q, bio, inf->dbuf);
		qcow2_inflater_put(&q->inflaters, inf);
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	default:
		DMERR_LIMIT("%s: corrupt L2 entry for guest offset %llu",
			    qcow2dedup_dev_name(q), off);
		return DM_MAPIO_KILL;
	}
}

static void read_work(struct work_struct *ws);

/*
 * map() a read: cut it to what one piece serves (read_lookup()) and serve
 * that, or defer it to @q->read_wq: a compressed cluster alone, a cache miss
 * with the clusters whose L2 entries are in the same block (read once for
 * them all, then read_deferred() splits).
 */
int qcow2dedup_map_read(struct qcow2dedup *q, struct bio *bio)
{
	u64 off = qcow2dedup_guest_offset(bio);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	unsigned int clusters;
	int idx, r;

	idx = qcow2dedup_io_hold(q);
	r = read_lookup(q, bio, false, &type, &info, &clusters);
	if (r == -EWOULDBLOCK || (!r && type == QCOW2_CLUSTER_COMPRESSED)) {
		qcow2dedup_io_unhold(q, idx);
		qcow2dedup_accept_clusters(q, bio,
					   r ? min(qcow2dedup_bio_clusters(q, bio),
						   qcow2_md_l2_block_clusters(q->md, off)) : 1);
		atomic64_inc(&q->reads_deferred);
		qcow2dedup_pb(bio)->q = q;
		INIT_WORK(&qcow2dedup_pb(bio)->read_work, read_work);
		queue_work(q->read_wq, &qcow2dedup_pb(bio)->read_work);
		return DM_MAPIO_SUBMITTED;
	}
	if (r) {
		qcow2dedup_io_unhold(q, idx);
		DMERR_LIMIT("%s: metadata read failed for guest offset %llu: %d",
			    qcow2dedup_dev_name(q), off, r);
		return DM_MAPIO_KILL;
	}
	qcow2dedup_accept_clusters(q, bio, clusters);
	r = read_piece(q, bio, off, type, &info);
	if (r == DM_MAPIO_REMAPPED) {
		/* A reader until end_io: see qcow2dedup_io_hold(). */
		qcow2dedup_pb(bio)->io_idx = idx;
		qcow2dedup_pb(bio)->io_held = true;
	} else {
		qcow2dedup_io_unhold(q, idx);
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
 * A read map() deferred: a compressed cluster, or the clusters of one L2
 * block that was not cached.  The lookup of the first
 * cluster reads the block; each piece read_lookup() finds (a host row, a
 * zero run, one cluster) is split off, chained to @bio and served; @bio
 * itself serves the last and ends when all pieces have.  One reader hold
 * covers them all, released at @bio's end_io.
 */
static void read_deferred(struct qcow2dedup *q, struct bio *bio)
{
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	unsigned int clusters;
	struct bio *piece;
	u64 off;
	int r;

	qcow2dedup_pb(bio)->io_idx = qcow2dedup_io_hold(q);
	qcow2dedup_pb(bio)->io_held = true;
	for (;;) {
		off = qcow2dedup_guest_offset(bio);
		r = read_lookup(q, bio, true, &type, &info, &clusters);
		if (r) {
			DMERR_LIMIT("%s: metadata read failed for guest offset %llu: %d",
				    qcow2dedup_dev_name(q), off, r);
			bio_io_error(bio);
			return;
		}
		if (clusters >= qcow2dedup_bio_clusters(q, bio))
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

/* A statistic: the most work items of one kind at once. */
static void inflight_enter(atomic_t *inflight, unsigned int *max_seen)
{
	unsigned int n = atomic_inc_return(inflight);
	unsigned int max = READ_ONCE(*max_seen);

	while (n > max) {
		unsigned int seen = cmpxchg(max_seen, max, n);

		if (seen == max)
			break;
		max = seen;
	}
}

/* @q->read_wq: serve one deferred read. */
static void read_work(struct work_struct *ws)
{
	struct qcow2_bio *p = container_of(ws, struct qcow2_bio, read_work);
	struct bio *bio = dm_bio_from_per_bio_data(p, sizeof(*p));
	struct qcow2dedup *q = p->q;

	inflight_enter(&q->reads_inflight, &q->reads_inflight_max);
	read_deferred(q, bio);
	atomic_dec(&q->reads_inflight);
}

/*
 * @q->read_wq: bring the L2 block of a write map() could not look up into
 * the cache, then give the write to the worker, which finds it there (but
 * for an eviction meanwhile: then it reads the block itself).  What the
 * lookup found is not used: the worker looks up again.  A reader hold
 * across the lookup, as for a read: the L2 table it reads is not freed
 * and reused meanwhile.
 */
static void cold_write_work(struct work_struct *ws)
{
	struct qcow2_bio *p = container_of(ws, struct qcow2_bio, read_work);
	struct bio *bio = dm_bio_from_per_bio_data(p, sizeof(*p));
	struct qcow2dedup *q = p->q;
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	bool pending;
	int idx;

	inflight_enter(&q->writes_cold_inflight, &q->writes_cold_inflight_max);
	idx = qcow2dedup_io_hold(q);
	qcow2_md_lookup(q->md, qcow2dedup_guest_offset(bio), true, &type, &info, &pending);
	qcow2dedup_io_unhold(q, idx);
	atomic_dec(&q->writes_cold_inflight);
	qcow2dedup_defer_bio(q, bio);
}

/**
 * qcow2dedup_defer_cold_write() - map(): a write whose L2 block is not
 *	cached goes to the worker through @q->read_wq (cold_write_work()),
 *	so that the worker never waits for that read and the blocks of many
 *	such writes are read at once.
 * @q: target.
 * @bio: the write, cut to its first cluster (under nodedup: to the whole
 *	clusters of that L2 block it covers, see process_run()).
 */
void qcow2dedup_defer_cold_write(struct qcow2dedup *q, struct bio *bio)
{
	struct qcow2_bio *p = qcow2dedup_pb(bio);

	atomic64_inc(&q->writes_cold);
	p->q = q;
	INIT_WORK(&p->read_work, cold_write_work);
	queue_work(q->read_wq, &p->read_work);
}
