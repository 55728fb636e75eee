// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: serve the virtual disk of a qcow2 image stored on a block
 * device.
 *
 * This file is the device-mapper glue: the table line and its options, the
 * registry of engines, constructor and destructor, suspend and resume,
 * status and messages, and map()/end_io.  Everything behind it is the
 * engine, in layers that call only downwards:
 *
 *   dm-qcow2dedup-target.c  dm glue (this file)
 *   engine-worker.c         the worker: deferred bios, writes, discards,
 *                           commits and flushes, qcow2dedup_quiesce
 *   engine-read.c           reads map() cannot answer from cached metadata
 *   dedup-write.c           the deduplicating write path, statistics
 *   dedup-rebuild.c         the background rebuild of the index
 *   dedup-table.c           the persisted index; the engine's commit and
 *                           allocation (the table's clears go first)
 *   engine-core.c           operations, buffers, readers, dm-io, modes
 *   qcow2-metadata.c ...    the image's metadata; qcow2-format.c encodings
 *
 * A lower layer learns of an upper one only through completion callbacks
 * it is handed (an operation's @rmw_done, the metadata's survivor and
 * busy callbacks); tools/testing/layers checks the direction of calls.
 *
 * I/O path.  map() never blocks: it looks the first guest cluster of a bio
 * up in cached metadata.  A read of standard clusters whose data lies in a
 * row on the device is remapped there whole (as far as the row goes), and
 * so is a write in place under nodedup (clusters with COPIED set); every
 * other read or write is cut at the end of its first cluster with
 * dm_accept_partial_bio() (dm core maps the rest as a bio of its own), so
 * that from there on a bio touches one guest cluster, but for a write of
 * whole new clusters under nodedup, or of whole clusters whose L2 block is
 * not cached, which the worker takes as one bio (new_run()).
 * Unallocated and zero clusters complete with zeros, and writes to a
 * cluster whose refcount is one (COPIED) go there in place.  No max_io_len: it would also set the
 * queue's chunk_sectors, and the block layer would cut every read at
 * every cluster before it reaches map().  Reads that miss the metadata
 * cache or hit a compressed cluster go to the read workqueue
 * (engine-read.c), and so do writes whose L2 block is not cached, on their
 * way to the worker.  Everything else goes to the deferred list of the
 * single worker (engine-worker.c): writes that allocate or copy a cluster,
 * discards, write-zeroes and flushes.
 */
#include <linux/dm-io.h>
#include <linux/module.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "dm-qcow2dedup.h"

static struct kmem_cache *op_cache;

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

/*
 * map(): how many whole clusters from its first a write the worker gets may
 * keep, @r and @type being what the lookup of the first found.  Under
 * nodedup, a run of clusters with no old contents (unallocated or zero, in
 * cached metadata) goes to the worker as one bio, which gives them host
 * clusters in a row (process_run() in engine-worker.c); so do the clusters
 * of an L2 block that is not cached (-EWOULDBLOCK), whatever they hold:
 * the worker looks at each once the block is read, and writes rows of
 * COPIED ones in place.  (Cut at every cluster instead, each cluster of a
 * cold write reached the worker on its own, in the order the read
 * workqueue finished them: on SMP, a sequential write landed in pieces
 * all over the host.)  One cluster otherwise: with dedup each cluster is
 * hashed on its own, and a FUA write waits for its commit as one cluster.
 */
static unsigned int new_run(struct qcow2dedup *q, struct bio *bio, int r,
			    enum qcow2_cluster_type type)
{
	u64 off = qcow2dedup_guest_offset(bio);
	unsigned int whole = bio->bi_iter.bi_size >> q->geo->cluster_bits;

	if (q->dedup || (bio->bi_opf & REQ_FUA) || whole < 2 ||
	    qcow2_offset_in_cluster(q->geo, off))
		return 1;
	if (r == -EWOULDBLOCK)
		return min(whole, qcow2_md_l2_block_clusters(q->md, off));
	if (r || (type != QCOW2_CLUSTER_UNALLOCATED && type != QCOW2_CLUSTER_ZERO_PLAIN))
		return 1;
	return qcow2_md_zero_run(q->md, off, whole);
}

static int qcow2dedup_map(struct dm_target *ti, struct bio *bio)
{
	struct qcow2dedup_c *c = ti->private;
	struct qcow2dedup *q = c->q;
	enum qcow2_mode mode = READ_ONCE(q->mode);
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type = QCOW2_CLUSTER_INVALID;
	unsigned int keep;
	unsigned long flags;
	bool pending;
	int idx, r;

	qcow2dedup_pb(bio)->io_held = false;
	qcow2dedup_pb(bio)->started = false;
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
		return qcow2dedup_map_read(q, bio);
	case REQ_OP_WRITE:
		break;
	case REQ_OP_DISCARD:
	case REQ_OP_WRITE_ZEROES:
		if (mode != MODE_WRITE || !q->writable)
			return DM_MAPIO_KILL;
		qcow2dedup_defer_bio(q, bio);
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
		qcow2dedup_accept_clusters(q, bio, 1);
	/* Fast path: in place into a cluster whose refcount is one. */
	idx = qcow2dedup_io_hold(q);
	r = qcow2_md_lookup(q->md, qcow2dedup_guest_offset(bio), false, &type, &info, &pending);
	if (!r && READ_ONCE(q->autoclear_done) &&
	    type == QCOW2_CLUSTER_NORMAL && info.copied &&
	    !(pending && (bio->bi_opf & REQ_FUA)) &&
	    may_write_in_place(q, bio, info.host_offset)) {
		/*
		 * nodedup: the clusters after it in a row on the device with
		 * COPIED set, nothing staged, go in place in the same bio.
		 */
		if (!q->dedup && qcow2dedup_bio_clusters(q, bio) > 1) {
			unsigned int run;

			run = qcow2_md_normal_run(q->md, qcow2dedup_guest_offset(bio),
						  info.host_offset,
						  qcow2dedup_bio_clusters(q, bio), true);

			if (run > 1)
				atomic64_inc(&q->write_runs);
			qcow2dedup_accept_clusters(q, bio, run);
		}
		qcow2dedup_remap_held(q, bio, info.host_offset +
			   qcow2_offset_in_cluster(q->geo, qcow2dedup_guest_offset(bio)), idx);
		return DM_MAPIO_REMAPPED;
	}
	/* The run's L2 block looked up under the hold, as the first cluster. */
	keep = new_run(q, bio, r, type);
	qcow2dedup_io_unhold(q, idx);
	qcow2dedup_accept_clusters(q, bio, keep);
	/* Its L2 block first, on the read workqueue: the worker never waits. */
	if (r == -EWOULDBLOCK)
		qcow2dedup_defer_cold_write(q, bio);
	else
		qcow2dedup_defer_bio(q, bio);
	return DM_MAPIO_SUBMITTED;
}

static int qcow2dedup_end_io(struct dm_target *ti, struct bio *bio,
			     blk_status_t *error)
{
	struct qcow2dedup_c *c = ti->private;
	struct qcow2_bio *p = qcow2dedup_pb(bio);

	if (p->io_held) {
		p->io_held = false;
		qcow2dedup_io_unhold(c->q, p->io_idx);
	}
	return DM_ENDIO_DONE;
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
	/* First: its items hand writes to the worker's workqueue. */
	if (q->read_wq)
		destroy_workqueue(q->read_wq);
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
	qcow2_inflaters_exit(&q->inflaters);
	qcow2_md_close(q->md);
	qcow2dedup_readers_exit(&q->readers);
	kfree(q);
}

/*
 * After the dedup table was loaded: an absent or incomplete table is made
 * again by a rebuild, which the worker starts at the first resume.
 */
static void engine_start_rebuild(struct qcow2dedup *q)
{
	bool quiet;

	if (qcow2dedup_table_wants_rebuild(q, &quiet))
		qcow2dedup_rebuild_start(q, quiet);
}

/* Read the image's metadata; *@why names the problem for ti->error. */
static int engine_open_md(struct qcow2dedup *q, struct dm_target *ti,
			  struct qcow2_metadata **mdp, const char **why_str)
{
	struct qcow2_metadata *md;
	struct qcow2_refusal why;
	int r;

	md = qcow2_md_open(q->bdev, ti->len, q->writable, qcow2dedup_md_wait_for_readers, q, &why);
	if (!IS_ERR(md)) {
		qcow2_md_set_callbacks(md, qcow2dedup_survivor, qcow2dedup_md_guest_busy);
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
	if (!q || qcow2dedup_readers_init(&q->readers)) {
		kfree(q);
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
	q->zero_pages.next = &q->zero_pages;
	q->zero_pages.page = ZERO_PAGE(0);
	bio_list_init(&q->barrier_bios);
	INIT_LIST_HEAD(&q->engines_node);
	INIT_WORK(&q->worker, qcow2dedup_do_worker);
	INIT_DELAYED_WORK(&q->waker, qcow2dedup_do_waker);
	INIT_DELAYED_WORK(&q->retry, qcow2dedup_do_retry);
	INIT_DELAYED_WORK(&q->table.flusher, qcow2dedup_table_flusher);
	init_waitqueue_head(&q->table.flush_wait);
	xa_init(&q->table.seen);
	q->busy = RB_ROOT;
	/* Not resumed yet: quiet, and nothing written. */
	q->suspended = true;
	q->quiesced = true;
	q->stopped = true;
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
	if (qcow2_inflaters_init(&q->inflaters, q->geo->compression_type,
				 q->geo->cluster_size,
				 qcow2_inflaters_max(q->geo->compression_type,
						     q->geo->cluster_size,
						     num_online_cpus()))) {
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
	/* Reads that wait for metadata: unbound, several at once. */
	q->read_wq = alloc_workqueue("dm-" DM_MSG_PREFIX "-read",
				     WQ_MEM_RECLAIM | WQ_UNBOUND, 0);
	if (!q->wq || !q->read_wq) {
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
	engine_start_rebuild(q);
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
	lockdep_assert_held(&engines_lock);
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

	lockdep_assert_held(&engines_lock);

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

	lockdep_assert_held(&engines_lock);

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

	lockdep_assert_held(&engines_lock);

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
	qcow2dedup_quiesce(q);
	/* A retired engine wrote its last at its suspend; the image is not its own. */
	if (!q->retired)
		qcow2dedup_final_commit(q);
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

	qcow2dedup_quiesce(q);
	qcow2dedup_final_commit(q);
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
	/* The rebuild's batches point into the index the reload drops. */
	qcow2dedup_rebuild_reset(q);
	r = qcow2dedup_table_reload(q);
	if (r) {
		DMERR("%s: cannot read the dedup table: %d", qcow2dedup_dev_name(q), r);
		return r;
	}
	engine_start_rebuild(q);
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
		qcow2dedup_rebuild_reset(q);
		qcow2dedup_index_forget(q);
		if (q->table.enabled)
			qcow2dedup_rebuild_start(q, true);
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
	qcow2_inflaters_forget(&q->inflaters);
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

