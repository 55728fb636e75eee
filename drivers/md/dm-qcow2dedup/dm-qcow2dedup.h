/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-qcow2dedup: the target's private state, shared by the dm glue
 * (dm-qcow2dedup-target.c) and the deduplicating write path (dedup-write.c).
 */
#ifndef DM_QCOW2DEDUP_H
#define DM_QCOW2DEDUP_H

#include <crypto/hash.h>
#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/rbtree.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "dedup-index.h"
#include "qcow2-metadata.h"

#define DM_MSG_PREFIX "qcow2dedup"

/* Commit at least this often while something is staged. */
#define COMMIT_PERIOD		HZ
/* Commit when this many entries and decrements are staged. */
#define COMMIT_THRESHOLD	4096
/* Memory for buffered (hashed or partial-cluster) writes in flight. */
#define BUFFERED_BYTES		(32U << 20)

enum qcow2_mode {
	MODE_WRITE,
	MODE_READ_ONLY,
	MODE_FAIL,
};

extern const char * const qcow2dedup_mode_names[];

/* Constructor options (see the admin guide). */
struct qcow2dedup_options {
	bool nodedup;
	bool verify;
	char hash[CRYPTO_MAX_ALG_NAME];
	u64 index_limit_mib;		/* 0: none */
	unsigned int argc;		/* as given, for the table line */
	char **argv;
};

struct qcow2dedup {
	struct dm_target *ti;
	struct dm_dev *dev;
	struct qcow2_metadata *md;
	const struct qcow2_geometry *geo;
	bool writable;			/* the table was loaded read-write */
	enum qcow2_mode mode;		/* READ_ONCE in map(); worker writes */

	struct workqueue_struct *wq;
	struct work_struct worker;
	struct delayed_work waker;	/* commit period */

	spinlock_t lock;		/* protects the four lists below */
	struct bio_list deferred;
	struct bio_list flushes;
	struct list_head completed;	/* ops whose data write is done */
	struct list_head hashed;	/* ops whose digest is ready */

	/* Bios remapped to host clusters, by generation: see io_hold(). */
	spinlock_t io_lock;
	unsigned int io_gen;
	unsigned long io_count[2];
	wait_queue_head_t io_wait;
	struct bio_set bs;
	struct dm_io_client *io;

	/*
	 * Worker-only state: @busy holds the operations in flight by guest
	 * cluster; @commit_waiters the bios that complete after the next
	 * commit; @cbuf/@dbuf the compressed input and the last decompressed
	 * cluster (valid while @dbuf_offset is non-zero).
	 */
	struct rb_root busy;
	struct bio_list commit_waiters;
	unsigned int buffered_ops;
	unsigned int max_buffered_ops;
	bool autoclear_done;
	bool commit_due;
	bool resumed;			/* preresume has run once */
	struct qcow2_decompressor *dc;
	void *cbuf;
	void *dbuf;
	u64 dbuf_offset;

	/*
	 * Deduplication (dedup-write.c).  @index belongs to the worker,
	 * except dedup_host_indexed() in map().  @hash_wq copies and hashes
	 * write payloads, several at a time; @vbuf holds the candidate
	 * cluster read back for "verify".
	 */
	struct qcow2dedup_options opt;
	bool dedup;
	struct crypto_shash *tfm;
	struct workqueue_struct *hash_wq;
	struct dedup_index index;
	bool index_ready;		/* @index initialised */
	void *vbuf;

	atomic64_t clusters_written;
	atomic64_t dedup_hits;
	atomic64_t zero_clusters;
	atomic64_t verify_mismatches;
	atomic64_t reads_deferred;
	atomic64_t reads_compressed;
	atomic64_t clusters_allocated;
	atomic64_t cow_copies;
};

/* Per-bio data. */
struct qcow2_bio {
	int io_idx;
	bool io_held;
	atomic_t remaining;		/* write-zeroes pieces in flight + 1 */
	blk_status_t status;
};

/*
 * A write of one whole cluster to a newly allocated host cluster, or (with
 * dedup) the decision where the new contents of a guest cluster go.
 */
struct qcow2_op {
	struct rb_node node;		/* in @busy */
	struct list_head list;		/* in @completed, @hashed or an entry's waiters */
	struct qcow2dedup *q;
	u64 guest_cluster;
	u64 host_off;
	struct bio *bio;		/* the bio that started it */
	struct bio_list waiters;	/* later bios for the same cluster */
	void *buf;			/* buffered write, or NULL for a clone */
	blk_status_t status;

	/* Dedup: the whole new cluster is in @buf. */
	bool dedup;
	bool whole;			/* @buf is still to be filled from @bio */
	bool zero;			/* all zeros */
	bool in_place;			/* into the guest cluster's own cluster */
	struct dedup_entry *entry;	/* the WRITING entry this write fills */
	struct work_struct hash_work;
	u8 digest[HASH_MAX_DIGESTSIZE];
};

/* dm-qcow2dedup-target.c */
const char *qcow2dedup_dev_name(struct qcow2dedup *q);
void qcow2dedup_wake(struct qcow2dedup *q);
void qcow2dedup_metadata_error(struct qcow2dedup *q, const char *what, int r);
int qcow2dedup_sync_io(struct qcow2dedup *q, blk_opf_t opf, void *buf, u64 off,
		       u64 len);
void qcow2dedup_copy_from_bio(struct qcow2dedup *q, struct bio *bio, void *data);
int qcow2dedup_read_old(struct qcow2dedup *q, enum qcow2_cluster_type type,
			const struct qcow2_l2e_info *info, void *buf);
int qcow2dedup_prepare_write(struct qcow2dedup *q, u64 guest_off);
int qcow2dedup_alloc(struct qcow2dedup *q, u64 *host_off);
blk_status_t qcow2dedup_alloc_error(struct qcow2dedup *q, int r);
int qcow2dedup_stage(struct qcow2dedup *q, u64 guest_off,
		     enum qcow2_cluster_type type, u64 host_off, bool copied);
struct qcow2_op *qcow2dedup_op_new(struct qcow2dedup *q, struct bio *bio, u64 gc);
void qcow2dedup_op_free(struct qcow2_op *op);
bool qcow2dedup_op_less(struct rb_node *a, const struct rb_node *b);
void qcow2dedup_op_release(struct qcow2dedup *q, struct qcow2_op *op,
			   blk_status_t status);
void qcow2dedup_write_buffer(struct qcow2dedup *q, struct qcow2_op *op);

/* dedup-write.c */
int qcow2dedup_dedup_ctr(struct qcow2dedup *q, struct dm_target *ti);
void qcow2dedup_dedup_dtr(struct qcow2dedup *q);
int qcow2dedup_start_hashed(struct qcow2dedup *q, struct bio *bio, u64 gc,
			    u64 in, u64 len, enum qcow2_cluster_type type,
			    const struct qcow2_l2e_info *info, blk_status_t *status);
void qcow2dedup_decide(struct qcow2dedup *q, struct qcow2_op *op);
void qcow2dedup_hashed_done(struct qcow2dedup *q, struct qcow2_op *op);
void qcow2dedup_forget_host(struct qcow2dedup *q, u64 host_off);
void qcow2dedup_drop_ref(struct qcow2dedup *q, u64 old_host, u64 gc);
bool qcow2dedup_survivor(void *ctx, u64 host_cluster, u64 *guest_cluster);
int qcow2dedup_stats(struct qcow2dedup *q, char *result, unsigned int maxlen);

#endif /* DM_QCOW2DEDUP_H */
