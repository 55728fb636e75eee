// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: serve the virtual disk of a qcow2 image stored on a block
 * device.
 *
 * This file is the device-mapper glue: constructor, map, deferred work,
 * status.  The qcow2 metadata lives behind qcow2-metadata.h and the on-disk
 * decoding in qcow2-format.c.
 *
 * I/O path.  dm splits every bio at cluster boundaries (max_io_len), so a
 * bio touches one guest cluster.  map() looks the cluster up in the cached
 * metadata without I/O: unallocated and zero clusters complete with zeros,
 * standard clusters are remapped to the device.  A bio whose L2 block is not
 * cached, or whose cluster is compressed, goes to the deferred list and is
 * handled by the worker, which may sleep.
 *
 * This version is read-only: writes, discards and write-zeroes fail with an
 * I/O error, and the device is opened read-only, so the image is never
 * written.
 */
#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/workqueue.h>

#include "qcow2-decompress.h"
#include "qcow2-metadata.h"

#define DM_MSG_PREFIX "qcow2dedup"

struct qcow2dedup {
	struct dm_target *ti;
	struct dm_dev *dev;
	struct qcow2_metadata *md;
	const struct qcow2_geometry *geo;

	struct workqueue_struct *wq;
	struct work_struct worker;

	spinlock_t lock;		/* protects @deferred */
	struct bio_list deferred;

	/*
	 * Worker-only state: the single work item serialises all users.
	 * @cbuf holds compressed input (up to two clusters), @dbuf the last
	 * decompressed cluster, valid while @dbuf_offset is non-zero.
	 */
	struct qcow2_decompressor *dc;
	void *cbuf;
	void *dbuf;
	u64 dbuf_offset;

	atomic64_t reads_deferred;
	atomic64_t reads_compressed;
};

static const char *dev_name_of(struct qcow2dedup *q)
{
	return dm_table_device_name(q->ti->table);
}

static void defer_bio(struct qcow2dedup *q, struct bio *bio)
{
	unsigned long flags;

	spin_lock_irqsave(&q->lock, flags);
	bio_list_add(&q->deferred, bio);
	spin_unlock_irqrestore(&q->lock, flags);
	atomic64_inc(&q->reads_deferred);
	queue_work(q->wq, &q->worker);
}

/* Copy the part of cluster @data that @bio covers into @bio and complete it. */
static void complete_from_buffer(struct qcow2dedup *q, struct bio *bio,
				 const void *data)
{
	u64 off = qcow2_offset_in_cluster(q->geo,
			(u64)dm_target_offset(q->ti, bio->bi_iter.bi_sector) << SECTOR_SHIFT);
	struct bvec_iter iter;
	struct bio_vec bv;

	bio_for_each_segment(bv, bio, iter) {
		memcpy_to_bvec(&bv, data + off);
		off += bv.bv_len;
	}
	bio_endio(bio);
}

/* Worker: read and decompress the cluster behind @info. */
static int read_compressed(struct qcow2dedup *q, struct bio *bio,
			   const struct qcow2_l2e_info *info)
{
	u64 len = min(info->compressed_len, q->geo->dev_size - info->host_offset);
	int r;

	atomic64_inc(&q->reads_compressed);
	if (q->dbuf_offset != info->host_offset) {
		q->dbuf_offset = 0;
		r = qcow2_md_read_bytes(q->md, info->host_offset, q->cbuf, len);
		if (r)
			return r;
		r = qcow2_decompress(q->dc, q->cbuf, len, q->dbuf,
				     q->geo->cluster_size);
		if (r) {
			DMERR_LIMIT("%s: corrupt compressed cluster at host offset %llu",
				    dev_name_of(q), info->host_offset);
			return r;
		}
		q->dbuf_offset = info->host_offset;
	}
	complete_from_buffer(q, bio, q->dbuf);
	return 0;
}

/*
 * Map a read.  With !@may_block (map()), only cached metadata is used and
 * work needing I/O is deferred.  Returns a DM_MAPIO_* code.
 */
static int map_read(struct qcow2dedup *q, struct bio *bio, bool may_block)
{
	u64 off = (u64)dm_target_offset(q->ti, bio->bi_iter.bi_sector) << SECTOR_SHIFT;
	struct qcow2_l2e_info info;
	enum qcow2_cluster_type type;
	int r;

	r = qcow2_md_lookup(q->md, off, may_block, &type, &info);
	if (r == -EWOULDBLOCK) {
		defer_bio(q, bio);
		return DM_MAPIO_SUBMITTED;
	}
	if (r) {
		DMERR_LIMIT("%s: metadata read failed for guest offset %llu: %d",
			    dev_name_of(q), off, r);
		return DM_MAPIO_KILL;
	}

	switch (type) {
	case QCOW2_CLUSTER_UNALLOCATED:
	case QCOW2_CLUSTER_ZERO_PLAIN:
	case QCOW2_CLUSTER_ZERO_ALLOC:
		zero_fill_bio(bio);
		bio_endio(bio);
		return DM_MAPIO_SUBMITTED;
	case QCOW2_CLUSTER_NORMAL:
		bio_set_dev(bio, q->dev->bdev);
		bio->bi_iter.bi_sector = (info.host_offset +
			qcow2_offset_in_cluster(q->geo, off)) >> SECTOR_SHIFT;
		return DM_MAPIO_REMAPPED;
	case QCOW2_CLUSTER_COMPRESSED:
		if (!may_block) {
			defer_bio(q, bio);
			return DM_MAPIO_SUBMITTED;
		}
		if (read_compressed(q, bio, &info))
			return DM_MAPIO_KILL;
		return DM_MAPIO_SUBMITTED;
	case QCOW2_CLUSTER_INVALID:
	default:
		DMERR_LIMIT("%s: corrupt L2 entry for guest offset %llu",
			    dev_name_of(q), off);
		return DM_MAPIO_KILL;
	}
}

static void do_worker(struct work_struct *ws)
{
	struct qcow2dedup *q = container_of(ws, struct qcow2dedup, worker);
	struct bio_list bios = BIO_EMPTY_LIST;
	struct bio *bio;

	spin_lock_irq(&q->lock);
	bio_list_merge_init(&bios, &q->deferred);
	spin_unlock_irq(&q->lock);

	while ((bio = bio_list_pop(&bios))) {
		switch (map_read(q, bio, true)) {
		case DM_MAPIO_REMAPPED:
			dm_submit_bio_remap(bio, NULL);
			break;
		case DM_MAPIO_KILL:
			bio_io_error(bio);
			break;
		default:
			break;
		}
		cond_resched();
	}
}

static int qcow2dedup_map(struct dm_target *ti, struct bio *bio)
{
	struct qcow2dedup *q = ti->private;

	if (bio->bi_opf & REQ_PREFLUSH) {
		if (bio_op(bio) == REQ_OP_WRITE && !bio_sectors(bio)) {
			bio_set_dev(bio, q->dev->bdev);
			return DM_MAPIO_REMAPPED;
		}
	}
	if (bio_op(bio) != REQ_OP_READ) {
		DMERR_LIMIT("%s: %s refused: this version of the target is read-only",
			    dev_name_of(q), blk_op_str(bio_op(bio)));
		return DM_MAPIO_KILL;
	}
	return map_read(q, bio, false);
}

static void qcow2dedup_free(struct qcow2dedup *q)
{
	if (q->wq)
		destroy_workqueue(q->wq);
	qcow2_decompressor_destroy(q->dc);
	kvfree(q->cbuf);
	kvfree(q->dbuf);
	qcow2_md_close(q->md);
	if (q->dev)
		dm_put_device(q->ti, q->dev);
	kfree(q);
}

static int parse_options(struct dm_target *ti, struct dm_arg_set *as)
{
	static const struct dm_arg _args[] = {
		{0, 0, "Invalid number of optional arguments (this version takes none)"},
	};
	unsigned int argc;
	int r;

	if (!as->argc)
		return 0;
	r = dm_read_arg_group(_args, as, &argc, &ti->error);
	if (r)
		return r;
	if (as->argc) {
		ti->error = "Unexpected extra arguments";
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
	struct qcow2_refusal why;
	struct qcow2dedup *q;
	const char *path;
	int r;

	if (argc < 1) {
		ti->error = "Missing device argument";
		return -EINVAL;
	}
	q = kzalloc(sizeof(*q), GFP_KERNEL);
	if (!q) {
		ti->error = "Cannot allocate target context";
		return -ENOMEM;
	}
	q->ti = ti;
	spin_lock_init(&q->lock);
	bio_list_init(&q->deferred);
	INIT_WORK(&q->worker, do_worker);
	atomic64_set(&q->reads_deferred, 0);
	atomic64_set(&q->reads_compressed, 0);

	path = dm_shift_arg(&as);
	r = parse_options(ti, &as);
	if (r)
		goto bad;

	/* Read-only open: this version never writes to the image. */
	r = dm_get_device(ti, path, BLK_OPEN_READ, &q->dev);
	if (r) {
		ti->error = "Device lookup failed";
		goto bad;
	}

	q->md = qcow2_md_open(q->dev->bdev, ti->len, &why);
	if (IS_ERR(q->md)) {
		r = PTR_ERR(q->md);
		q->md = NULL;
		if (r == -EINVAL) {
			ti->error = qcow2_err_str(why.err);
			DMERR("%pg: %s (value %llu = 0x%llx)", q->dev->bdev,
			      ti->error, why.value, why.value);
		} else {
			ti->error = "Cannot read the qcow2 metadata";
			DMERR("%pg: cannot read the qcow2 metadata: %d",
			      q->dev->bdev, r);
		}
		goto bad;
	}
	q->geo = qcow2_md_geometry(q->md);

	r = dm_set_target_max_io_len(ti, q->geo->cluster_size >> SECTOR_SHIFT);
	if (r) {
		ti->error = "Cannot set the cluster size as maximum I/O length";
		goto bad;
	}

	r = -ENOMEM;
	q->dc = qcow2_decompressor_create(q->geo->compression_type);
	q->cbuf = kvmalloc(2 * q->geo->cluster_size, GFP_KERNEL);
	q->dbuf = kvmalloc(q->geo->cluster_size, GFP_KERNEL);
	if (!q->dc || !q->cbuf || !q->dbuf) {
		ti->error = "Cannot allocate decompression buffers";
		goto bad;
	}
	q->wq = alloc_workqueue("dm-" DM_MSG_PREFIX, WQ_MEM_RECLAIM, 0);
	if (!q->wq) {
		ti->error = "Cannot allocate workqueue";
		goto bad;
	}

	ti->num_flush_bios = 1;
	ti->private = q;
	return 0;
bad:
	qcow2dedup_free(q);
	return r;
}

static void qcow2dedup_dtr(struct dm_target *ti)
{
	qcow2dedup_free(ti->private);
}

static void qcow2dedup_postsuspend(struct dm_target *ti)
{
	struct qcow2dedup *q = ti->private;

	flush_workqueue(q->wq);
}

/*
 * Status:
 *   INFO:  <mode> <qcow2_version> <cluster_size> <reads_deferred> <reads_compressed>
 *   TABLE: <dev>
 */
static void qcow2dedup_status(struct dm_target *ti, status_type_t type,
			      unsigned int status_flags, char *result,
			      unsigned int maxlen)
{
	struct qcow2dedup *q = ti->private;
	unsigned int sz = 0;

	switch (type) {
	case STATUSTYPE_INFO:
		DMEMIT("read-only %u %llu %lld %lld", q->geo->version,
		       q->geo->cluster_size,
		       (long long)atomic64_read(&q->reads_deferred),
		       (long long)atomic64_read(&q->reads_compressed));
		break;
	case STATUSTYPE_TABLE:
		DMEMIT("%s", q->dev->name);
		break;
	case STATUSTYPE_IMA:
		DMEMIT_TARGET_NAME_VERSION(ti->type);
		DMEMIT(",dev=%s,mode=read-only;", q->dev->name);
		break;
	}
}

static int qcow2dedup_iterate_devices(struct dm_target *ti,
				      iterate_devices_callout_fn fn, void *data)
{
	struct qcow2dedup *q = ti->private;

	return fn(ti, q->dev, 0, bdev_nr_sectors(q->dev->bdev), data);
}

static void qcow2dedup_io_hints(struct dm_target *ti,
				struct queue_limits *limits)
{
	struct qcow2dedup *q = ti->private;

	limits->io_opt = q->geo->cluster_size;
}

static struct target_type qcow2dedup_target = {
	.name = "qcow2dedup",
	.version = {1, 0, 0},
	.module = THIS_MODULE,
	.ctr = qcow2dedup_ctr,
	.dtr = qcow2dedup_dtr,
	.map = qcow2dedup_map,
	.postsuspend = qcow2dedup_postsuspend,
	.status = qcow2dedup_status,
	.iterate_devices = qcow2dedup_iterate_devices,
	.io_hints = qcow2dedup_io_hints,
};
module_dm(qcow2dedup);

MODULE_DESCRIPTION(DM_NAME " qcow2 image target with inline deduplication");
MODULE_AUTHOR("dm-qcow2dedup developers");
MODULE_LICENSE("GPL");
