/* SPDX-License-Identifier: GPL-2.0 */
/*
 * dm-qcow2dedup: the engine's state, shared by the files of the target,
 * and the engine's API by layer (the layers: dm-qcow2dedup-target.c).
 */
#ifndef DM_QCOW2DEDUP_H
#define DM_QCOW2DEDUP_H

#include <crypto/hash.h>
#include <linux/bio.h>
#include <linux/device-mapper.h>
#include <linux/dm-io.h>
#include <linux/mempool.h>
#include <linux/rbtree.h>
#include <linux/sizes.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "dm-qcow2dedup-compat.h"
#include "dedup-index.h"
#include "dedup-table-format.h"
#include "io-inflaters.h"
#include "io-readers.h"
#include "qcow2-metadata.h"

#define DM_MSG_PREFIX "qcow2dedup"

/* Commit at least this often while something is staged. */
#define COMMIT_PERIOD		HZ
/* Commit when this many entries and decrements are staged. */
#define COMMIT_THRESHOLD	4096
/* Memory for buffered (hashed or partial-cluster) writes in flight. */
#define BUFFERED_BYTES		(32U << 20)
/*
 * Cluster buffers kept in reserve per target, so that writes go on when
 * the page allocator has nothing (at least 2: a write-zeroes needs two).
 */
#define RESERVED_BUF_BYTES	(4U << 20)
/* Operations in flight per target (the reserve of the operation pool). */
#define MAX_OPS			512U
/* After a memory shortage, the worker tries again this much later. */
#define MEMORY_RETRY_DELAY	(HZ / 50)
/* Clusters a discard or write-zeroes handles per pass of the worker. */
#define DISCARD_PER_PASS	4096U
/* Default index memory limit: a share of RAM, at least the minimum. */
#define INDEX_RAM_SHARE		16U
#define INDEX_LIMIT_MIN		(16ULL << 20)
/* Default interval of dedup table write-back, in milliseconds. */
#define TABLE_FLUSH_MS		5000U
/* The rebuild reads up to this many bytes per batch, in runs of clusters. */
#define REBUILD_BATCH_BYTES	SZ_1M
#define REBUILD_BATCH		256U

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
	unsigned int flush_interval_ms;
	unsigned int argc;		/* as given, for the table line */
	char **argv;
};

/*
 * The persisted dedup table (dedup-table.c).  Worker-only, like the index,
 * except the counters read by status and stats.
 */
struct qcow2dedup_table {
	bool enabled;			/* this activation maintains the table */
	bool open;			/* the header says OPEN, with our bit */
	bool unclean;			/* loaded from a table a crash left open */
	bool found;			/* the image has a table extension */
	bool incomplete;		/* loaded from a table a rebuild left */
	const char *off_reason;		/* why not enabled: a word, for stats */
	struct qdt_shape shape;
	struct qdt_info info;		/* header extension; info.root 0: none yet */
	u64 nr_leaves;
	u64 nr_dirs;
	u64 *leaves;			/* leaf byte offsets, 0: absent */
	u64 *dirs;			/* directory byte offsets, 0: absent */
	struct xarray seen;		/* load: the tree's host clusters */
	void *hdr;			/* two clusters: header area old, new */
	u64 clusters;			/* root, directories and leaves */
	u64 loaded;			/* entries taken from the table at load */
	u64 dropped;			/* slots the load did not accept */
	u64 flushes;
	u64 flush_ns;			/* total time in table flushes */
	u64 barriers;			/* qcow2dedup_table_barrier() flushes */
	struct delayed_work flusher;
	bool flush_due;
	unsigned long flush_req;	/* "flush" messages asked ... */
	unsigned long flush_done;	/* ... and served, under q->lock */
	wait_queue_head_t flush_wait;
	int flush_err;
};

/*
 * Guest clusters a walk of the active L1 (table load, rebuild scan) looks
 * up at once with qcow2_md_lookup_block(): the L2 entries of one metadata
 * block (min(cluster, page) bytes: 512 with 4 KiB pages, fewer than the
 * 8192 of a 64 KiB page, which then takes several lookups).
 */
#define QCOW2DEDUP_WALK	512U
struct qcow2dedup_walk {
	enum qcow2_cluster_type type[QCOW2DEDUP_WALK];
	struct qcow2_l2e_info info[QCOW2DEDUP_WALK];
	bool pending[QCOW2DEDUP_WALK];
};

/* The background rebuild of the index (dedup-rebuild.c). */
struct qcow2dedup_rebuild_item {
	u64 host;
	struct dedup_entry *e;
	int err;
	bool zero;
	u8 digest[HASH_MAX_DIGESTSIZE];
};

enum qcow2dedup_rebuild_phase {
	REBUILD_SCAN,			/* count referrers in the active L1 */
	REBUILD_HASH,			/* read and hash, batches at a time */
};

/*
 * A batch of clusters read and hashed on hash_wq.  With two, one is read
 * while the other is hashed (or, on SMP, both are hashed at once) and the
 * rebuild runs at the pace of the slower of the device and the hash.
 */
#define REBUILD_BATCHES	2
struct qcow2dedup_rebuild_batch {
	struct qcow2dedup_rebuild *rb;
	struct work_struct work;
	bool out;			/* on hash_wq; the worker's */
	bool done;			/* back from hash_wq, under q->lock */
	unsigned int n;
	void *buf;			/* max_items clusters */
	struct qcow2dedup_rebuild_item item[REBUILD_BATCH];
};

struct qcow2dedup_rebuild {
	bool active;
	bool paused;			/* suspended: start no batch */
	bool requested;			/* by the "rebuild" message */
	bool quiet;			/* the image had no table: no log line */
	enum qcow2dedup_rebuild_phase phase;
	u64 next_gc;
	u64 end_gc;
	u64 next_host;			/* REBUILD_HASH cursor */
	u64 candidates;			/* clusters the scan found */
	u64 hashed;
	u64 indexed;
	u64 copied_fixed;		/* COPIED flags the scan restored */
	u64 started_ns;
	u64 ended_ns;			/* 0 while the rebuild runs */
	u64 scan_ns;			/* the scan's share of started_ns..ended_ns */
	u64 runs;
	unsigned int max_items;		/* per batch: REBUILD_BATCH_BYTES of clusters */
	struct qcow2dedup *q;
	struct qcow2dedup_walk walk;	/* the scan's lookups */
	struct qcow2dedup_rebuild_batch batch[REBUILD_BATCHES];
};

/*
 * The engine: one image in service, shared by the tables (targets) of one
 * mapped device (see the registry in dm-qcow2dedup-target.c).
 */
struct qcow2dedup {
	struct list_head engines_node;	/* the registry, under engines_lock */
	struct mapped_device *owner;	/* the dm device whose tables use it */
	struct block_device *bdev;	/* the image's device */
	unsigned int refs;		/* tables using it, under engines_lock */
	bool retired;			/* a newer engine serves the image */
	bool quiesced;			/* written back at a suspend, until resume */
	bool stopped;			/* the worker answers messages only */
	bool reverify;			/* after a resume: entries become hints */
	bool must_reload;		/* a reload at resume failed: do it again */
	void *active;			/* the target last resumed */
	/*
	 * @ctl: preresume (which may replace @md and reload the index) against
	 * status and messages.  Never taken by the worker.
	 */
	struct mutex ctl;
	struct qcow2_metadata *md;
	const struct qcow2_geometry *geo;
	/* Of @geo, fixed for the engine's life (a resume refuses changes). */
	u64 cluster_size;
	u64 size;
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

	/* Bios remapped to host clusters, by generation (io-readers.h). */
	struct qcow2dedup_readers readers;
	struct bio_set bs;
	/* Pieces of deferred reads (engine-read.c): freed at their end_io. */
	struct bio_set split_bs;
	struct dm_io_client *io;
	/* One zero page, endlessly: what write-zeroes writes in place. */
	struct page_list zero_pages;

	/*
	 * Memory of the I/O path: operations and cluster buffers come from
	 * these pools (see qcow2dedup_op_new()); @retry wakes the worker
	 * after a shortage.
	 */
	mempool_t op_pool;
	mempool_t buf_pool;		/* pages of @buf_order, or kmalloc'd */
	int buf_order;			/* -1: clusters smaller than a page */
	unsigned int nr_ops;
	unsigned int max_ops;
	struct delayed_work retry;

	/*
	 * Worker-only state: @busy holds the operations in flight by guest
	 * cluster; @commit_waiters the bios that complete after the next
	 * commit.
	 */
	struct rb_root busy;
	struct bio_list commit_waiters;
	struct list_head barrier_wait;	/* in-place writes after the table barrier */
	struct bio_list barrier_bios;	/* the same, not buffered: qcow2dedup_do_worker() */
	unsigned int buffered_ops;
	unsigned int max_buffered_ops;
	bool autoclear_done;
	bool commit_due;
	bool suspended;			/* presuspend until resume: no timers */

	/*
	 * Reads map() cannot serve from cached metadata run on @read_wq, one
	 * work item per bio (engine-read.c), never in the worker.  Those of
	 * compressed clusters, and the read-modify-writes of such clusters,
	 * each take an inflater of @inflaters (qcow2dedup_inflate()).
	 */
	struct workqueue_struct *read_wq;
	struct qcow2_inflaters inflaters;

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
	bool table_lie_logged;		/* a loaded slot did not match: logged */
	bool shared_copied_logged;	/* COPIED on a shared cluster: logged */
	void *vbuf;			/* synchronous verify reads (worker) */
	struct qcow2dedup_table table;
	struct qcow2dedup_rebuild *rebuild;

	atomic64_t clusters_written;
	atomic64_t dedup_hits;
	atomic64_t zero_clusters;
	atomic64_t verify_mismatches;
	atomic64_t verify_reads;	/* issued while the worker went on */
	atomic64_t verify_stale;	/* of those, not trusted: read again */
	atomic_t verify_inflight;
	unsigned int verify_inflight_max; /* the worker's */
	/* Reads of a partial write's old contents (qcow2dedup_read_old_async()). */
	atomic64_t rmw_reads;
	atomic64_t rmw_compressed;	/* of those, of compressed clusters */
	atomic_t rmw_inflight;
	unsigned int rmw_inflight_max;	/* the worker's */
	atomic64_t mem_waits;
	atomic64_t reads_deferred;	/* to @read_wq */
	atomic_t reads_inflight;	/* of those, being served */
	unsigned int reads_inflight_max;
	atomic64_t writes_cold;		/* to @read_wq for their L2 block first */
	atomic_t writes_cold_inflight;
	unsigned int writes_cold_inflight_max;
	/*
	 * Reads, and nodedup writes in place, that map() sent to the device
	 * as one bio of several clusters.
	 */
	atomic64_t read_runs;
	atomic64_t zero_runs;		/* reads of several clusters answered as zeros */
	atomic64_t barrier_writes;	/* writes in place that waited for a table barrier */
	atomic64_t zeroes_in_place;	/* write-zeroes' partial clusters zeroed in place */
	atomic_t zeroes_in_place_inflight;
	unsigned int zeroes_in_place_inflight_max;
	atomic64_t write_runs;
	atomic64_t alloc_runs;		/* nodedup: new clusters written in a row, one bio */
	atomic64_t reads_compressed;
	atomic64_t clusters_allocated;
	atomic64_t cow_copies;
};

/*
 * One table's target: the device reference and the option words of its
 * table line, and the engine it serves.
 */
struct qcow2dedup_c {
	struct dm_target *ti;
	struct dm_dev *dev;
	struct qcow2dedup_options opt;
	struct qcow2dedup *q;
};

/* Per-bio data. */
struct qcow2_bio {
	struct qcow2dedup *q;		/* for read_work */
	struct work_struct read_work;	/* deferred reads, cold writes: @q->read_wq */
	int io_idx;
	bool io_held;
	bool started;			/* discard, run write: pieces counted from here */
	atomic_t remaining;		/* pieces in flight + 1 (write-zeroes, run write) */
	int zero_idx[2];		/* reader generations of the first and last
					 * clusters' zeroing in place
					 */
	blk_status_t status;
	u64 next;			/* discard, run write: where the next slice starts */
};

/*
 * The worker's state (the metadata, the index, @busy, the table) is
 * changed by the worker alone, or by the control paths while the worker
 * is stopped (the constructor, postsuspend, preresume, the destructor).
 * No lock says so; this does, where lockdep is built in.
 */
static inline void qcow2dedup_assert_worker(struct qcow2dedup *q)
{
	if (IS_ENABLED(CONFIG_LOCKDEP))
		WARN_ON_ONCE(current_work() != &q->worker && !READ_ONCE(q->stopped));
}

static inline struct qcow2_bio *qcow2dedup_pb(struct bio *bio)
{
	return dm_per_bio_data(bio, sizeof(struct qcow2_bio));
}

/* map() made the sector a guest sector (qcow2dedup_map()). */
static inline u64 qcow2dedup_guest_offset(struct bio *bio)
{
	return (u64)bio->bi_iter.bi_sector << SECTOR_SHIFT;
}

/*
 * A write of one cluster (or, under nodedup, of a run of whole clusters) to
 * newly allocated host clusters, or (with dedup) the decision where the new
 * contents of a guest cluster go.
 */
struct qcow2_op {
	struct rb_node node;		/* in @busy */
	struct list_head list;		/* in @completed, @hashed or a writer's @dup_waiters */
	struct list_head dup_waiters;	/* writes of the same content waiting for this one */
	struct qcow2dedup *q;
	u64 guest_cluster;
	u64 host_off;
	/*
	 * Guest clusters [@guest_cluster, + @clusters) go to host clusters in
	 * a row from @host_off; more than one only under nodedup, for a run
	 * of new whole clusters (process_run() in engine-worker.c), whose
	 * mappings are staged one by one (@staged so far), or for a row
	 * written in place (@in_place: nothing staged).
	 */
	u32 clusters;
	u32 staged;
	bool piece;			/* one of several of @bio (qcow2dedup_piece_done()) */
	struct bio *bio;		/* the bio that started it */
	struct bio_list waiters;	/* later bios for the same cluster */
	void *buf;			/* buffered write, or NULL for a clone */
	blk_status_t status;

	/* Dedup: the whole new cluster is in @buf. */
	bool dedup;
	bool whole;			/* @buf is still to be filled from @bio */
	bool zero;			/* all zeros */
	/*
	 * Into the guest cluster's own cluster: with dedup, see
	 * write_in_place(); under nodedup, a row of COPIED clusters
	 * (start_in_place()), then a reader from @io_idx until its write ends.
	 */
	bool in_place;
	int io_idx;
	struct dedup_entry *entry;	/* the WRITING entry this write fills */
	/*
	 * Verify: the bytes of host cluster @verify_host read into @vbuf
	 * while the worker went on (see may_share()), valid while the
	 * index's stamp for that host is still @verify_stamp.  While the read
	 * is out the operation is on no list: verify_endio() requeues it.
	 */
	enum qcow2_verify_state {
		VERIFY_NONE,		/* no read, or its bytes used */
		VERIFY_READING,		/* @vbuf being read */
		VERIFY_READ,		/* @vbuf read (@verify_err) */
	} verify_state;
	u8 verify_tries;		/* reads issued: at most VERIFY_ASYNC_TRIES */
	bool verify_err;
	int verify_io_idx;		/* its reader generation: qcow2dedup_io_hold() */
	void *vbuf;
	u64 verify_host;
	u64 verify_stamp;		/* dedup_host_stamp() when it was issued */
	/*
	 * Read-modify-write: the old contents of a partial write's cluster
	 * are read into @buf while the worker goes on (see
	 * qcow2dedup_read_old_async()); @fill: the bio's bytes still go on
	 * top.  While the read is out the operation is on no list; @rmw_done
	 * takes it back.
	 */
	bool fill;
	u32 zero_in, zero_len;		/* write-zeroes: these bytes go on top, not the bio's */
	int rmw_io_idx;			/* its reader generation: qcow2dedup_io_hold() */
	void (*rmw_done)(struct qcow2_op *op, bool error);
	struct qcow2_l2e_info rmw_old;	/* a compressed cluster to inflate: */
	struct work_struct rmw_work;	/* on @q->read_wq */
	struct work_struct hash_work;
	u8 digest[HASH_MAX_DIGESTSIZE];
};

/*
 * The engine's API, by layer, lowest first.  A file calls only the layers
 * below its own (see dm-qcow2dedup-target.c; tools/testing/layers checks).
 */

/* engine-core.c: operations, buffers, readers, dm-io, modes. */
const char *qcow2dedup_dev_name(struct qcow2dedup *q);
void qcow2dedup_wake(struct qcow2dedup *q);
void qcow2dedup_defer_bio(struct qcow2dedup *q, struct bio *bio);
void qcow2dedup_metadata_error(struct qcow2dedup *q, const char *what, int r);
void qcow2dedup_metadata_error_once(struct qcow2dedup *q, const char *what, int r);
void qcow2dedup_md_wait_for_readers(void *ctx);
void qcow2dedup_wait_for_readers(struct qcow2dedup *q);
int qcow2dedup_io_hold(struct qcow2dedup *q);
void qcow2dedup_io_unhold(struct qcow2dedup *q, int idx);
void qcow2dedup_remap_held(struct qcow2dedup *q, struct bio *bio, u64 host_off,
			   int idx);
int qcow2dedup_sync_io(struct qcow2dedup *q, blk_opf_t opf, void *buf, u64 off,
		       u64 len);
void qcow2dedup_async_read(struct qcow2dedup *q, void *buf, u64 off, u64 len,
			   void (*fn)(unsigned long error, void *ctx), void *ctx);
void qcow2dedup_zero_in_place(struct qcow2dedup *q, struct bio *bio, bool last,
			      u64 host_off, u64 len);
struct qcow2_inflater *qcow2dedup_inflate(struct qcow2dedup *q,
					  const struct qcow2_l2e_info *info);
void qcow2dedup_copy_from_bio(struct qcow2dedup *q, struct bio *bio, void *data);
bool qcow2dedup_op_less(struct rb_node *a, const struct rb_node *b);
struct qcow2_op *qcow2dedup_busy_find(struct qcow2dedup *q, u64 gc);
bool qcow2dedup_md_guest_busy(void *ctx, u64 gc);
bool qcow2dedup_guest_busy(struct qcow2dedup *q, u64 gc);
void qcow2dedup_op_done(struct qcow2_op *op, blk_status_t status);
void qcow2dedup_requeue_hashed(struct qcow2dedup *q, struct qcow2_op *op);
void qcow2dedup_clone_endio(struct bio *clone);
void qcow2dedup_write_buffer(struct qcow2dedup *q, struct qcow2_op *op);
void qcow2dedup_piece_done(struct bio *bio, blk_status_t status);
blk_status_t qcow2dedup_alloc_error(struct qcow2dedup *q, int r);
void qcow2dedup_read_old_async(struct qcow2dedup *q, struct qcow2_op *op,
			       enum qcow2_cluster_type type,
			       const struct qcow2_l2e_info *info,
			       void (*done)(struct qcow2_op *op, bool error));
void qcow2dedup_op_release(struct qcow2dedup *q, struct qcow2_op *op,
			   blk_status_t status);
struct qcow2_op *qcow2dedup_op_new(struct qcow2dedup *q, struct bio *bio, u64 gc,
				   bool buffered);
void *qcow2dedup_vbuf_alloc(struct qcow2dedup *q);
void qcow2dedup_vbuf_free(struct qcow2dedup *q, void *buf);
void qcow2dedup_op_free(struct qcow2dedup *q, struct qcow2_op *op);
void qcow2dedup_wait_memory(struct qcow2dedup *q);
void qcow2dedup_retry_op(struct qcow2dedup *q, struct qcow2_op *op,
			 struct list_head *list);
void qcow2dedup_do_retry(struct work_struct *ws);

/* dedup-table.c: the persisted index; the engine's commit and allocation. */
int qcow2dedup_table_init(struct qcow2dedup *q);
void qcow2dedup_table_flusher(struct work_struct *ws);
void qcow2dedup_table_free(struct qcow2dedup *q);
int qcow2dedup_table_load(struct qcow2dedup *q);
int qcow2dedup_table_reload(struct qcow2dedup *q);
bool qcow2dedup_table_wants_rebuild(struct qcow2dedup *q, bool *quiet);
void qcow2dedup_index_forget(struct qcow2dedup *q);
int qcow2dedup_table_open(struct qcow2dedup *q);
int qcow2dedup_table_rebuilding(struct qcow2dedup *q);
int qcow2dedup_table_before_commit(struct qcow2dedup *q);
int qcow2dedup_table_barrier(struct qcow2dedup *q);
int qcow2dedup_table_flush(struct qcow2dedup *q, bool durable, bool open);
int qcow2dedup_table_close(struct qcow2dedup *q);
void qcow2dedup_table_schedule(struct qcow2dedup *q);
int qcow2dedup_table_message_flush(struct qcow2dedup *q);
void qcow2dedup_table_worker(struct qcow2dedup *q);
const char *qcow2dedup_table_state(struct qcow2dedup *q);
u64 qcow2dedup_table_dirty(struct qcow2dedup *q);
void qcow2dedup_shared_copied(struct qcow2dedup *q, u64 host, u32 refs);
int qcow2dedup_commit(struct qcow2dedup *q);
int qcow2dedup_alloc(struct qcow2dedup *q, u64 *host_off);
int qcow2dedup_alloc_run(struct qcow2dedup *q, unsigned int max, u64 *host_off,
			 unsigned int *count);
int qcow2dedup_alloc_meta(struct qcow2dedup *q, u64 *host_off);
int qcow2dedup_prepare_write(struct qcow2dedup *q, u64 guest_off);
int qcow2dedup_before_first_write(struct qcow2dedup *q);

/* dedup-rebuild.c */
int qcow2dedup_rebuild_init(struct qcow2dedup *q);
void qcow2dedup_rebuild_free(struct qcow2dedup *q);
void qcow2dedup_rebuild_reset(struct qcow2dedup *q);
void qcow2dedup_rebuild_rehash(struct qcow2dedup *q);
void qcow2dedup_rebuild_start(struct qcow2dedup *q, bool quiet);
void qcow2dedup_rebuild_step(struct qcow2dedup *q);
unsigned int qcow2dedup_rebuild_progress(struct qcow2dedup *q);
u64 qcow2dedup_rebuild_us(struct qcow2dedup *q, u64 *scan_us);

/* dedup-write.c */
int qcow2dedup_dedup_ctr(struct qcow2dedup *q, struct dm_target *ti);
void qcow2dedup_dedup_dtr(struct qcow2dedup *q);
int qcow2dedup_start_hashed(struct qcow2dedup *q, struct bio *bio, u64 gc,
			    u64 in, u64 len, enum qcow2_cluster_type type,
			    const struct qcow2_l2e_info *info);
void qcow2dedup_decide(struct qcow2dedup *q, struct qcow2_op *op);
void qcow2dedup_barrier_done(struct qcow2dedup *q);
void qcow2dedup_hashed_done(struct qcow2dedup *q, struct qcow2_op *op);
bool qcow2dedup_unindex_host(struct qcow2dedup *q, u64 host_off);
int qcow2dedup_forget_host(struct qcow2dedup *q, u64 host_off);
void qcow2dedup_drop_ref(struct qcow2dedup *q, u64 old_host, u64 gc);
bool qcow2dedup_survivor(void *ctx, u64 host_cluster, u64 *guest_cluster);
int qcow2dedup_stats(struct qcow2dedup *q, char *result, unsigned int maxlen);
int qcow2dedup_stage(struct qcow2dedup *q, u64 guest_off,
		     enum qcow2_cluster_type type, u64 host_off, bool copied);

/* engine-read.c: map()'s reads, and the reads it defers to @read_wq. */
void qcow2dedup_accept_clusters(struct qcow2dedup *q, struct bio *bio,
				unsigned int clusters);
unsigned int qcow2dedup_bio_clusters(struct qcow2dedup *q, struct bio *bio);
int qcow2dedup_map_read(struct qcow2dedup *q, struct bio *bio);
void qcow2dedup_defer_cold_write(struct qcow2dedup *q, struct bio *bio);

/* engine-worker.c */
void qcow2dedup_do_worker(struct work_struct *ws);
void qcow2dedup_do_waker(struct work_struct *ws);
void qcow2dedup_quiesce(struct qcow2dedup *q);
void qcow2dedup_final_commit(struct qcow2dedup *q);

#endif /* DM_QCOW2DEDUP_H */
