// SPDX-License-Identifier: GPL-2.0
/*
 * dm-qcow2dedup: the dedup table, the index persisted inside the image
 * (format: include/uapi/qcow2dedup/dedup-table.h).
 *
 * The rule.  A slot on disk may name digest D for host cluster H only while
 * H durably holds contents of digest D.  Three orderings keep it at every
 * crash point:
 *
 *  - A slot is set only for a READY entry, after a commit: its data write
 *    completed before the commit's flush, so the data is on disk first.
 *    A new leaf is on disk before the directory entry naming it, a new
 *    directory before the root entry (qcow2dedup_table_flush()).
 *  - A slot is zeroed in the buffers at the start of every commit
 *    (qcow2dedup_table_before_commit()), and the commit flushes before it
 *    applies refcount decrements: a cluster is free, and can be reused,
 *    only once its slot is zero on disk.
 *  - Before a cluster with a slot on disk is overwritten in place, its slot
 *    is zeroed and flushed (qcow2dedup_table_barrier()).
 *
 * The header extension carries QDT_FLAG_OPEN while an activation writes; a
 * table loaded with the flag set was left by a crash.  Whatever the flags
 * say, a table read from an image is untrusted input: its entries are hints,
 * compared byte for byte with the new contents before their first share
 * (dedup_entry.unverified), so that neither a device which lost a flush
 * nor a crafted table can make the target share the wrong cluster.  Its
 * tree is checked before anything is written through it: every cluster of
 * it must have a refcount of one and be no qcow2 metadata and no guest data.
 *
 * Nothing is written by the load: the slots it drops are zeroed when the
 * table is opened by the first write, before map() may write in place.
 *
 * All of it runs in the worker (or in the constructor and resume paths,
 * with no I/O in flight), like the index it persists.
 */
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/vmalloc.h>

#include "dm-qcow2dedup.h"

static const struct qcow2_feature_name dedup_feature = {
	.type = QCOW2_FEATURE_TYPE_AUTOCLEAR,
	.bit = QCOW2_AUTOCLEAR_DEDUP_TABLE_BIT,
	.name = QCOW2_AUTOCLEAR_DEDUP_TABLE_NAME,
};

static int write_clears(struct qcow2dedup *q);

/* Allocations of the write-back, on the I/O path: fail rather than wait. */
#define TABLE_GFP	(GFP_NOIO | __GFP_NORETRY | __GFP_NOWARN)

static u32 cbits(struct qcow2dedup *q)
{
	return q->geo->cluster_bits;
}

static void table_off(struct qcow2dedup *q, const char *why)
{
	struct qcow2dedup_table *t = &q->table;

	WRITE_ONCE(t->enabled, false);
	t->off_reason = why;
}

/* The flush timer: ask the worker for a durable table flush. */
void qcow2dedup_table_flusher(struct work_struct *ws)
{
	struct qcow2dedup_table *t = container_of(to_delayed_work(ws),
						  struct qcow2dedup_table, flusher);
	struct qcow2dedup *q = container_of(t, struct qcow2dedup, table);

	WRITE_ONCE(t->flush_due, true);
	qcow2dedup_wake(q);
}

/**
 * qcow2dedup_table_init() - decide whether this activation keeps a table.
 * @q: target with dedup set up.
 *
 * Not kept: read-only tables, nodedup, version 2 images (no autoclear bits
 * to say whether the table is current), images with internal snapshots,
 * devices the tree cannot describe.
 */
int qcow2dedup_table_init(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;
	u64 dev_clusters = q->geo->dev_size >> cbits(q);

	if (!q->dedup) {
		table_off(q, q->writable ? "nodedup" : "read-only");
		return 0;
	}
	if (q->geo->version < 3) {
		table_off(q, "version-2");	/* no autoclear bits */
		return 0;
	}
	/*
	 * QEMU's "qemu-img check -r" opens an image without reading its
	 * snapshot table, then rewrites the header to clear unknown autoclear
	 * bits: with ours set, the header loses its snapshots (QEMU 7.2).
	 */
	if (q->geo->nb_snapshots) {
		table_off(q, "snapshots");
		return 0;
	}
	qdt_shape_init(&t->shape, cbits(q));
	if (dev_clusters > t->shape.max_clusters) {
		table_off(q, "device-too-large");
		return 0;
	}
	t->nr_leaves = DIV_ROUND_UP(dev_clusters, 1ULL << t->shape.slot_bits);
	t->nr_dirs = DIV_ROUND_UP(t->nr_leaves, 1ULL << t->shape.ptr_bits);
	t->leaves = kvcalloc(t->nr_leaves, sizeof(u64), GFP_KERNEL);
	t->dirs = kvcalloc(t->nr_dirs, sizeof(u64), GFP_KERNEL);
	/* The old and the new header area, for write_header(). */
	t->hdr = kvmalloc(2 * q->geo->cluster_size, GFP_KERNEL);
	if (!t->leaves || !t->dirs || !t->hdr)
		return -ENOMEM;
	t->enabled = true;
	return 0;
}

void qcow2dedup_table_free(struct qcow2dedup *q)
{
	kvfree(q->table.leaves);
	kvfree(q->table.dirs);
	kvfree(q->table.hdr);
	xa_destroy(&q->table.seen);
	q->table.leaves = NULL;
	q->table.dirs = NULL;
	q->table.hdr = NULL;
}

/* Forget the table read from disk: a new one will be made. */
static void table_reset(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;

	memset(t->leaves, 0, t->nr_leaves * sizeof(u64));
	memset(t->dirs, 0, t->nr_dirs * sizeof(u64));
	memset(&t->info, 0, sizeof(t->info));
	t->clusters = 0;
	t->loaded = 0;
	t->unclean = false;
	xa_destroy(&t->seen);
	dedup_index_destroy(&q->index);
}

/* Table clusters the load reads at once: runs of adjacent leaves. */
#define LOAD_RUN_BYTES	SZ_1M

/*
 * Read @n table clusters from @off on, each at a valid offset with a
 * refcount of one, and named by the table once only.
 */
static int read_table_clusters(struct qcow2dedup *q, u64 off, unsigned int n,
			       void *buf, enum qdt_err *why)
{
	unsigned int i;
	u64 rc;
	int r;

	for (i = 0; i < n; i++) {
		u64 c = off + ((u64)i << cbits(q));

		if (!qdt_offset_valid(q->geo, c)) {
			*why = QDT_ERR_OFFSET;
			return -EINVAL;
		}
		r = xa_insert(&q->table.seen, c >> cbits(q), xa_mk_value(1), GFP_KERNEL);
		if (r == -EBUSY) {
			*why = QDT_ERR_DUPLICATE;
			return -EINVAL;
		}
		if (r)
			return r;
		r = qcow2_md_refcount(q->md, c, &rc);
		if (r)
			return r;
		if (rc != 1) {
			*why = QDT_ERR_OFFSET;
			return -EINVAL;
		}
		q->table.clusters++;
	}
	r = qcow2dedup_sync_io(q, REQ_OP_READ, buf, off, (u64)n << cbits(q));
	if (r) {
		/* The table is an index of data that is still there: rebuild it. */
		*why = QDT_ERR_IO;
		return -EINVAL;
	}
	return 0;
}

static int read_table_cluster(struct qcow2dedup *q, u64 off, void *buf,
			      enum qdt_err *why)
{
	return read_table_clusters(q, off, 1, buf, why);
}

/* Turn the slots of leaf @leaf (in @buf) into UNKEYED, persisted entries. */
static int load_leaf(struct qcow2dedup *q, u64 leaf, const u8 *buf,
		     enum qdt_err *why)
{
	struct qcow2dedup_table *t = &q->table;
	u32 s, n = 1U << t->shape.slot_bits;
	int r;

	r = qdt_check_leaf(&t->shape, buf, leaf, q->geo->dev_size >> cbits(q), why);
	if (r)
		return r;
	for (s = 0; s < n; s++) {
		const u8 *slot = buf + (size_t)s * QDT_SLOT_SIZE;
		u64 host = (leaf << t->shape.slot_bits) + s;
		struct dedup_entry *e = NULL;

		if (qdt_slot_empty(slot))
			continue;
		r = dedup_insert_unkeyed(&q->index, host, slot, &e, GFP_KERNEL);
		if (r == -ENOSPC) {
			/*
			 * Over the index limit: the slot must go from the disk.
			 * Recording that costs memory too: a table far larger
			 * than the limit (a crafted one with every slot full)
			 * is not used at all.
			 */
			if (q->index.nr_clears >= q->index.limit_bytes / QDT_CLEAR_COST) {
				*why = QDT_ERR_LIMIT;
				return -EINVAL;
			}
			t->dropped++;
			r = dedup_record_clear(&q->index, host, GFP_KERNEL);
		}
		if (r)
			return r;
	}
	return 0;
}

/* Walk root -> directories -> leaves. */
static int load_tree(struct qcow2dedup *q, void *buf, enum qdt_err *why)
{
	struct qcow2dedup_table *t = &q->table;
	u64 per = 1ULL << t->shape.ptr_bits, d, k;
	unsigned int run_max, n, i;
	void *run_buf;
	__be64 *root;
	int r;

	root = kvmalloc(q->geo->cluster_size, GFP_KERNEL);
	if (!root)
		return -ENOMEM;
	r = read_table_cluster(q, t->info.root, root, why);
	if (!r)
		r = qdt_check_pointers(q->geo, root, t->nr_dirs, why);
	for (d = 0; !r && d < t->nr_dirs; d++) {
		u64 off = be64_to_cpu(root[d]);

		if (!off)
			continue;
		r = read_table_cluster(q, off, buf, why);
		if (!r)
			r = qdt_check_pointers(q->geo, buf, min(per, t->nr_leaves - d * per), why);
		if (r)
			break;
		t->dirs[d] = off;
		for (k = 0; k < per && d * per + k < t->nr_leaves; k++)
			t->leaves[d * per + k] = get_unaligned_be64(buf + k * sizeof(u64));
	}
	/* Leaves the table writer put side by side are read in one I/O. */
	run_max = LOAD_RUN_BYTES >> cbits(q);
	run_buf = run_max > 1 ? kvmalloc(LOAD_RUN_BYTES, GFP_KERNEL | __GFP_NOWARN) : NULL;
	if (!run_buf) {
		run_max = 1;
		run_buf = buf;
	}
	for (k = 0; !r && k < t->nr_leaves; k += n) {
		n = 1;
		if (!t->leaves[k])
			continue;
		while (n < run_max && k + n < t->nr_leaves &&
		       t->leaves[k + n] == t->leaves[k] + ((u64)n << cbits(q)))
			n++;
		r = read_table_clusters(q, t->leaves[k], n, run_buf, why);
		for (i = 0; !r && i < n; i++)
			r = load_leaf(q, k + i, run_buf + ((size_t)i << cbits(q)), why);
		cond_resched();
	}
	if (run_buf != buf)
		kvfree(run_buf);
	/* No table cluster may hold qcow2 metadata (guest data: see below). */
	if (!r && qcow2_md_metadata_in(q->md, &t->seen)) {
		*why = QDT_ERR_METADATA;
		r = -EINVAL;
	}
	kvfree(root);
	return r;
}

/* Is a table cluster also among the host clusters of this L2 entry? */
static bool table_cluster_mapped(struct qcow2dedup *q, enum qcow2_cluster_type type,
				 const struct qcow2_l2e_info *info)
{
	u64 start, len, c;

	switch (type) {
	case QCOW2_CLUSTER_NORMAL:
	case QCOW2_CLUSTER_ZERO_ALLOC:
		return xa_load(&q->table.seen, info->host_offset >> cbits(q));
	case QCOW2_CLUSTER_COMPRESSED:
		qcow2_compressed_range(q->geo, info->raw, &start, &len);
		for (c = start >> cbits(q); c <= (start + len - 1) >> cbits(q); c++)
			if (xa_load(&q->table.seen, c))
				return true;
		return false;
	default:
		return false;
	}
}

/* One guest cluster of the walk: a referrer of the entry of its cluster. */
static int attach_one(struct qcow2dedup *q, u64 gc, enum qcow2_cluster_type type,
		      const struct qcow2_l2e_info *info, enum qdt_err *why)
{
	struct dedup_entry *e;
	u64 first;
	int r;

	if (table_cluster_mapped(q, type, info)) {
		*why = QDT_ERR_GUEST_DATA;
		return -EINVAL;
	}
	if (type != QCOW2_CLUSTER_NORMAL)
		return 0;
	e = dedup_find_host(&q->index, info->host_offset >> cbits(q));
	if (!e)
		return 0;
	if (info->copied)
		dedup_entry_set_copied_ref(e);
	r = dedup_add_ref(&q->index, e, gc, &first, GFP_KERNEL);
	if (r == -ENOSPC) {
		/* Referrers beyond the index limit: not kept. */
		dedup_remove(&q->index, e);
		return 0;
	}
	return r < 0 ? r : 0;
}

/*
 * Count the active L1's references to every loaded cluster, then keep the
 * entries whose refcount is exactly that (no snapshot, no compressed or
 * preallocated-zero reference reaches them, as for clusters this target
 * indexes itself).
 */
static int attach_referrers(struct qcow2dedup *q, enum qdt_err *why)
{
	u64 gcs = DIV_ROUND_UP(q->geo->size, q->geo->cluster_size), gc;
	unsigned long host, nr_keep = 0, cap;
	struct dedup_entry *e, **keep;
	struct qcow2dedup_walk *w;
	unsigned int i, n;
	int r = 0;

	w = kvmalloc(sizeof(*w), GFP_KERNEL);
	if (!w)
		return -ENOMEM;
	for (gc = 0; !r && gc < gcs; gc += n) {
		n = 1;
		if (!qcow2_md_l2_present(q->md, gc)) {
			gc |= (1ULL << q->geo->l2_bits) - 1;
			continue;
		}
		r = qcow2_md_lookup_block(q->md, gc, QCOW2DEDUP_WALK, w->type, w->info, w->pending);
		if (r < 0) {
			/* An unreadable L2 table: the referrers cannot be counted. */
			*why = QDT_ERR_IO;
			r = -EINVAL;
			break;
		}
		n = r;
		r = 0;
		for (i = 0; !r && i < n; i++)
			r = attach_one(q, gc + i, w->type[i], &w->info[i], why);
		cond_resched();
	}
	kvfree(w);
	if (r)
		return r;
	/* The entries to key, at once: dedup_key_many(). */
	cap = q->index.unkeyed;
	keep = kvmalloc_array(max_t(u64, cap, 1), sizeof(*keep), GFP_KERNEL | __GFP_NOWARN);
	xa_for_each(&q->index.by_host, host, e) {
		u32 refs;
		u64 rc;

		r = qcow2_md_refcount(q->md, (u64)host << cbits(q), &rc);
		if (r)
			break;
		refs = dedup_nr_refs(e);
		if (refs >= 2 && dedup_entry_copied_ref(e)) {
			qcow2dedup_shared_copied(q, dedup_entry_host(e), refs);
		} else if (refs && rc == refs) {
			if (keep && nr_keep < cap) {
				keep[nr_keep++] = e;
				continue;
			}
			if (!dedup_key(&q->index, e, NULL)) {
				q->table.loaded++;
				continue;
			}
		}
		q->table.dropped++;
		dedup_remove(&q->index, e);
	}
	if (keep && !r) {
		unsigned long k, nr_refused = dedup_key_many(&q->index, keep, nr_keep);

		/* Refused: the key of another entry (a crafted table). */
		for (k = 0; k < nr_refused; k++)
			dedup_remove(&q->index, keep[k]);
		q->table.dropped += nr_refused;
		q->table.loaded += nr_keep - nr_refused;
	}
	kvfree(keep);
	return r;
}

/* Read the first cluster (header and extensions) through the metadata cache. */
static void *read_header_area(struct qcow2dedup *q)
{
	void *buf = kvmalloc(q->geo->cluster_size, GFP_KERNEL);

	if (buf && qcow2_md_read_bytes(q->md, 0, buf, q->geo->cluster_size)) {
		kvfree(buf);
		return ERR_PTR(-EIO);
	}
	return buf ?: ERR_PTR(-ENOMEM);
}

/**
 * qcow2dedup_shared_copied() - the table load or the rebuild found COPIED
 *	on one of several references to a host cluster: the image is corrupt
 *	(QEMU's check reports it); the cluster is not shared.  Logged once.
 * @q: target.
 * @host: host cluster index.
 * @refs: its references in the active L1.
 */
void qcow2dedup_shared_copied(struct qcow2dedup *q, u64 host, u32 refs)
{
	if (q->shared_copied_logged)
		return;
	q->shared_copied_logged = true;
	DMWARN("%s: cluster %llu: %u references, COPIED set on one: corrupt image, not shared",
	       qcow2dedup_dev_name(q), host, refs);
}

/**
 * qcow2dedup_table_load() - fill the index from the image's table.
 * @q: target, before its first resume (no I/O in flight).
 *
 * A table that is absent, stale (the autoclear bit is clear: another
 * program wrote the image), made with another hash, or damaged is not used:
 * the index is rebuilt in the background and a new table replaces it at the
 * first write.  Its clusters are left alone, since a stale table's clusters
 * may have been freed and reused by QEMU: `qemu-img check -r leaks`
 * reclaims them.
 *
 * Return: 0 (the caller starts a rebuild unless q->table.loaded is set by a
 * usable table), or an error that fails the resume (I/O, memory).
 */
int qcow2dedup_table_load(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;
	enum qdt_err why = QDT_OK;
	u32 doff, dlen;
	u64 started;
	void *buf;
	int r;

	if (!t->enabled)
		return 0;
	buf = read_header_area(q);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	r = qcow2_find_extension(buf, q->geo->cluster_size, q->geo,
				 QCOW2_EXT_DEDUP_TABLE, &doff, &dlen);
	if (r == -ENOENT) {
		r = 0;
		goto out;
	}
	if (r) {
		/*
		 * No end marker (a header that fills its cluster, QEMU accepts
		 * that): nowhere to put the table's extension either.
		 */
		DMWARN("%pg: the header extension area is full or malformed: no dedup table",
		       q->bdev);
		table_reset(q);
		table_off(q, "header-area");
		r = 0;
		goto out;
	}
	t->found = true;
	if (!r)
		r = qdt_decode_ext(buf + doff, dlen, q->geo, &t->info, &why);
	if (r)
		goto unusable;
	if (!(q->geo->autoclear_features & QCOW2_AUTOCLEAR_DEDUP_TABLE)) {
		DMINFO("%pg: dedup table is stale (another program wrote the image); rebuilding",
		       q->bdev);
		goto discard;
	}
	if (strcmp(t->info.hash, q->opt.hash) || t->info.key_len != q->index.key_len) {
		why = QDT_ERR_HASH_MISMATCH;
		r = -EINVAL;
		goto unusable;
	}
	t->unclean = t->info.flags & (QDT_FLAG_OPEN | QDT_FLAG_UNVERIFIED);
	t->incomplete = t->info.flags & QDT_FLAG_INCOMPLETE;
	started = ktime_get_ns();
	r = load_tree(q, buf, &why);
	if (!r)
		r = attach_referrers(q, &why);
	if (r)
		goto unusable;
	DMINFO("%pg: dedup table loaded: %llu entries in %llu ms", q->bdev, t->loaded,
	       div_u64(ktime_get_ns() - started, NSEC_PER_MSEC));
	/*
	 * Slots the index did not take are zeroed when the table is opened,
	 * before map() may write into their clusters (qcow2dedup_table_open()).
	 */
	if (t->unclean)
		DMINFO("%pg: dedup table after an unclean shutdown: %llu entries",
		       q->bdev, t->loaded);
	goto out;
unusable:
	if (r != -EINVAL)
		goto out;
	DMWARN("%pg: dedup table not used: %s; rebuilding", q->bdev, qdt_err_str(why));
discard:
	table_reset(q);
	r = 0;
out:
	/* An error half-way leaves nothing loaded. */
	if (r)
		table_reset(q);
	xa_destroy(&t->seen);
	kvfree(buf);
	return r;
}

/**
 * qcow2dedup_table_wants_rebuild() - after qcow2dedup_table_load(): the
 *	table kept is absent or was left incomplete, and the index must be
 *	rebuilt (the caller starts the rebuild: the worker runs it after the
 *	first resume).
 * @q: target.
 * @quiet: set when the image never had a table (no log line at the end).
 */
bool qcow2dedup_table_wants_rebuild(struct qcow2dedup *q, bool *quiet)
{
	struct qcow2dedup_table *t = &q->table;

	*quiet = !t->found;
	return t->enabled && (!t->info.root || t->incomplete);
}

/**
 * qcow2dedup_index_forget() - at a resume: the index cannot be trusted
 *	(see engine_resume_index()); drop it.  The caller has reset the
 *	rebuild (its batches point into the index) and starts it again where
 *	a table is kept.
 * @q: target, quiesced.
 */
void qcow2dedup_index_forget(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;

	if (!t->enabled) {
		dedup_index_destroy(&q->index);
		return;
	}
	table_reset(q);
}

/**
 * qcow2dedup_table_reload() - the metadata was read again at a resume
 *	(another program wrote the image): forget the index and the state of
 *	the table, and load the table again.  The caller has reset the
 *	rebuild, and starts it when qcow2dedup_table_wants_rebuild() says.
 * @q: target, quiesced.
 */
int qcow2dedup_table_reload(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;

	if (!q->dedup)
		return 0;
	if (t->enabled)
		table_reset(q);
	else
		dedup_index_destroy(&q->index);
	t->open = false;
	t->found = false;
	t->incomplete = false;
	t->dropped = 0;
	/* A snapshot made meanwhile: see qcow2dedup_table_init(). */
	if (t->enabled && q->geo->nb_snapshots)
		table_off(q, "snapshots");
	return qcow2dedup_table_load(q);
}

/* Write the header with our extension (@flags) and our autoclear bit. */
static int write_header(struct qcow2dedup *q, u32 flags, bool bit)
{
	struct qcow2dedup_table *t = &q->table;
	void *old = t->hdr, *out = t->hdr + q->geo->cluster_size;
	struct qcow2_header *h;
	struct qdt_ext ext;
	size_t end;
	int r;

	/* Buffers of the constructor: the header is written on the I/O path. */
	r = qcow2_md_read_bytes(q->md, 0, old, q->geo->cluster_size);
	if (r)
		return r;
	memset(out, 0, q->geo->cluster_size);
	t->info.flags = flags;
	t->info.entries = READ_ONCE(q->index.entries);
	qdt_encode_ext(&t->info, &ext);
	r = qcow2_rewrite_extensions(old, q->geo->cluster_size, q->geo,
				     QCOW2_EXT_DEDUP_TABLE, &ext, sizeof(ext),
				     &dedup_feature, out, &end);
	if (!r) {
		/* Other autoclear bits vouch for what this target does not keep. */
		h = out;
		put_unaligned_be64(bit ? QCOW2_AUTOCLEAR_DEDUP_TABLE : 0,
				   &h->autoclear_features);
		r = qcow2_md_write_header(q->md, out, end);
	}
	return r;
}

/*
 * The flags the header gets: entries not compared since an unclean
 * shutdown stay suspect next time; a table written during a rebuild is
 * incomplete, and the next activation rebuilds too.
 */
static u32 table_flags(struct qcow2dedup *q, bool open)
{
	struct qcow2dedup_rebuild *rb = q->rebuild;
	u32 f = open ? QDT_FLAG_OPEN : 0;

	if (READ_ONCE(q->index.unverified))
		f |= QDT_FLAG_UNVERIFIED;
	if (rb && (READ_ONCE(rb->active) || READ_ONCE(rb->requested)))
		f |= QDT_FLAG_INCOMPLETE;
	return f;
}

/* Stop keeping the table; the bit goes so that nobody trusts it. */
static int table_fail(struct qcow2dedup *q, const char *why, int err)
{
	int r = 0;

	DMERR("%s: dedup table abandoned: %s (%d)", qcow2dedup_dev_name(q), why, err);
	if (q->table.open)
		r = qcow2_md_clear_autoclear(q->md);
	q->table.open = false;
	table_off(q, "error");
	return r;
}

/**
 * qcow2dedup_table_open() - before the first write of an activation: make
 *	the root if there is none, and mark the table open in the header.
 * @q: target (worker).
 *
 * Return: 0 (also when the table had to be given up), or an I/O error.
 */
int qcow2dedup_table_open(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;
	int r;

	if (!t->enabled || t->open)
		return 0;
	if (!t->info.root) {
		u64 root;

		r = qcow2dedup_alloc_meta(q, &root);
		if (r == -ENOSPC)
			return table_fail(q, "no free cluster for the table root", r) ?: 0;
		if (!r)
			r = qcow2_md_zero_cluster(q->md, root);
		/* The root is zero and counted on disk before the header names it. */
		if (!r)
			r = qcow2_md_flush(q->md);
		if (r)
			return r;
		t->info.root = root;
		t->info.key_len = q->index.key_len;
		strscpy(t->info.hash, q->opt.hash, sizeof(t->info.hash));
		t->clusters = 1;
	}
	t->info.generation++;
	r = write_header(q, table_flags(q, true), true);
	if (r == -ENOSPC || r == -EINVAL)
		return table_fail(q, "no room for the header extension", r);
	if (r)
		return r;
	t->open = true;
	/*
	 * Slots the load dropped go before any write can reach their
	 * clusters: the caller enables map()'s in-place writes after this.
	 */
	return qcow2dedup_table_barrier(q);
}

/* Zero the slot of host cluster @host in its leaf's buffer. */
static int zero_slot(struct qcow2dedup *q, u64 host)
{
	struct qcow2dedup_table *t = &q->table;
	static const u8 zeros[QDT_SLOT_SIZE];
	u64 leaf = qdt_leaf_of(&t->shape, host);

	if (leaf >= t->nr_leaves || !t->leaves[leaf])
		return 0;
	return qcow2_md_write_bytes(q->md, t->leaves[leaf] +
				    (u64)qdt_slot_of(&t->shape, host) * QDT_SLOT_SIZE,
				    zeros, QDT_SLOT_SIZE);
}

/*
 * Put the recorded clears in the buffers: slots of entries marked
 * DEDUP_MARK_CLEAR, and slots the load dropped.  Only once the table is
 * open: an activation that never writes changes nothing, and nothing can
 * free or overwrite a cluster before the first write opens the table.
 */
static int write_clears(struct qcow2dedup *q)
{
	struct dedup_index *idx = &q->index;
	bool enabled = q->table.enabled;
	struct dedup_entry *e;
	unsigned long host;
	void *p;
	int r;

	if (enabled && !q->table.open)
		return 0;
	xa_for_each_marked(&idx->by_host, host, e, DEDUP_MARK_CLEAR) {
		if (enabled) {
			r = zero_slot(q, host);
			if (r)
				return r;
		}
		dedup_clear_done(idx, e);
		if (!(host & 4095))
			cond_resched();
	}
	xa_for_each(&idx->clears, host, p) {
		if (enabled) {
			r = zero_slot(q, host);
			if (r)
				return r;
		}
		xa_erase(&idx->clears, host);
		WRITE_ONCE(idx->nr_clears, idx->nr_clears - 1);
		if (!(host & 4095))
			cond_resched();
	}
	return 0;
}

/**
 * qcow2dedup_table_rebuilding() - a rebuild starts while the table is open:
 *	mark it incomplete on disk, so that a crash before the rebuild ends
 *	makes the next activation rebuild too.
 * @q: target (worker).
 */
int qcow2dedup_table_rebuilding(struct qcow2dedup *q)
{
	if (!q->table.enabled || !q->table.open ||
	    (q->table.info.flags & QDT_FLAG_INCOMPLETE))
		return 0;
	return write_header(q, table_flags(q, true), true);
}

/**
 * qcow2dedup_table_before_commit() - first step of every commit: slots of
 *	clusters that left the index go to the buffers, which the commit
 *	flushes before it lets any refcount fall to zero.
 * @q: target (worker, or no I/O in flight).
 */
int qcow2dedup_table_before_commit(struct qcow2dedup *q)
{
	if (!q->index_ready)
		return 0;
	return write_clears(q);
}

/**
 * qcow2dedup_table_barrier() - an indexed cluster with a slot on disk is
 *	about to be written in place: zero the slot on disk first.
 * @q: target (worker).
 */
int qcow2dedup_table_barrier(struct qcow2dedup *q)
{
	int r;

	qcow2dedup_assert_worker(q);
	if (!q->index.nr_clears)
		return 0;
	WRITE_ONCE(q->table.barriers, q->table.barriers + 1);
	r = write_clears(q);
	return r ?: qcow2_md_flush(q->md);
}

/* Make leaf @leaf exist: a zeroed cluster; its directory entry comes later. */
static int new_leaf(struct qcow2dedup *q, u64 leaf, struct xarray *fresh)
{
	struct qcow2dedup_table *t = &q->table;
	u64 dir = qdt_dir_of(&t->shape, leaf), off;
	int r;

	/*
	 * Leaves are noted at index leaf + nr_dirs, directories below it; a
	 * cluster is made only once it can be noted, or it would never be
	 * linked in.
	 */
	r = xa_reserve(fresh, t->nr_dirs + leaf, TABLE_GFP);
	if (!r && !t->dirs[dir])
		r = xa_reserve(fresh, dir, TABLE_GFP);
	if (r)
		return r;
	if (!t->dirs[dir]) {
		r = qcow2dedup_alloc_meta(q, &off);
		if (!r)
			r = qcow2_md_zero_cluster(q->md, off);
		if (r)
			return r;
		t->dirs[dir] = off;
		t->clusters++;
		xa_store(fresh, dir, xa_mk_value(1), TABLE_GFP);
		xa_set_mark(fresh, dir, XA_MARK_1);
	}
	r = qcow2dedup_alloc_meta(q, &off);
	if (!r)
		r = qcow2_md_zero_cluster(q->md, off);
	if (r)
		return r;
	t->leaves[leaf] = off;
	t->clusters++;
	return xa_err(xa_store(fresh, t->nr_dirs + leaf, xa_mk_value(1), TABLE_GFP));
}

/* Link the leaves and directories made by this flush, leaves first. */
static int link_fresh(struct qcow2dedup *q, struct xarray *fresh)
{
	struct qcow2dedup_table *t = &q->table;
	unsigned long i;
	__be64 v;
	void *p;
	int r;

	r = qcow2_md_flush(q->md);
	xa_for_each_start(fresh, i, p, t->nr_dirs) {
		u64 leaf = i - t->nr_dirs, dir = qdt_dir_of(&t->shape, leaf);

		if (r)
			return r;
		v = cpu_to_be64(t->leaves[leaf]);
		r = qcow2_md_write_bytes(q->md, t->dirs[dir] +
					 (u64)qdt_dir_slot_of(&t->shape, leaf) * sizeof(v),
					 &v, sizeof(v));
	}
	if (!r)
		r = qcow2_md_flush(q->md);
	xa_for_each_marked(fresh, i, p, XA_MARK_1) {
		if (r)
			return r;
		v = cpu_to_be64(t->dirs[i]);
		r = qcow2_md_write_bytes(q->md, t->info.root + i * sizeof(v),
					 &v, sizeof(v));
	}
	return r;
}

/**
 * qcow2dedup_table_flush() - write the slots of READY entries not yet in
 *	the table.
 * @q: target (worker), right after a successful commit: every READY
 *	entry's data and mapping are on disk.
 * @durable: flush the device at the end (timer, message, suspend); without
 *	it (after a guest flush) the slots reach the disk with the next
 *	commit, and entries that need a new leaf wait for a durable flush.
 * @open: open the table (write the header) if no write of this
 *	activation has: only for the "flush" message.
 *
 * Return: 0 or an I/O error.
 */
int qcow2dedup_table_flush(struct qcow2dedup *q, bool durable, bool open)
{
	struct qcow2dedup_table *t = &q->table;
	struct dedup_index *idx = &q->index;
	u8 slot[QDT_SLOT_SIZE] = {};
	struct xarray fresh;
	struct dedup_entry *e;
	unsigned long host;
	u64 start = ktime_get_ns();
	bool any = false;
	int r = 0;

	qcow2dedup_assert_worker(q);
	if (!t->enabled || (!idx->dirty && !idx->nr_clears && !durable))
		return 0;
	/* An activation that never wrote leaves the image untouched. */
	if (!t->open && !open) {
		return 0;
	} else if (!t->open) {
		r = qcow2dedup_before_first_write(q);
		if (r || !t->enabled)
			return r;
	}
	xa_init(&fresh);
	r = write_clears(q);
	xa_for_each_marked(&idx->by_host, host, e, DEDUP_MARK_DIRTY) {
		u64 leaf = qdt_leaf_of(&t->shape, host);

		if (r || !t->enabled)
			break;
		/* The shape covers the device (qcow2dedup_table_init()). */
		if (dedup_entry_state(e) != DEDUP_READY || WARN_ON_ONCE(leaf >= t->nr_leaves))
			continue;
		if (!t->leaves[leaf]) {
			if (!durable)
				continue;
			r = new_leaf(q, leaf, &fresh);
			if (r == -ENOSPC || r == -ENOMEM) {
				/* Stays dirty; a later flush may find room. */
				r = 0;
				break;
			}
			if (r)
				break;
		}
		/* The key, zero-padded to the slot (key_len <= DEDUP_KEY_MAX). */
		memcpy(slot, e->key, DEDUP_KEY_MAX);
		r = qcow2_md_write_bytes(q->md, t->leaves[leaf] +
					 (u64)qdt_slot_of(&t->shape, host) * QDT_SLOT_SIZE,
					 slot, QDT_SLOT_SIZE);
		if (!r)
			dedup_set_persisted(idx, e);
		any = true;
	}
	if (!r && !xa_empty(&fresh))
		r = link_fresh(q, &fresh);
	xa_destroy(&fresh);
	if (!r && durable)
		r = qcow2_md_flush(q->md);
	if (any || durable) {
		t->flushes++;
		t->flush_ns += ktime_get_ns() - start;
	}
	return r;
}

/**
 * qcow2dedup_table_close() - clean end of an activation (suspend, removal):
 *	every slot written, the table marked closed.
 * @q: target, with no I/O in flight and the final commit done.
 */
int qcow2dedup_table_close(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;
	int r;

	if (!t->enabled || !t->open)
		return 0;
	r = qcow2dedup_table_flush(q, true, false);
	if (!r && t->enabled)
		r = write_header(q, table_flags(q, false), true);
	if (!r)
		t->open = false;
	return r;
}

/**
 * qcow2dedup_table_schedule() - (re)arm the flush timer.
 * @q: target.
 */
void qcow2dedup_table_schedule(struct qcow2dedup *q)
{
	if (q->table.enabled && !READ_ONCE(q->suspended))
		mod_delayed_work(q->wq, &q->table.flusher,
				 msecs_to_jiffies(q->opt.flush_interval_ms));
}

/**
 * qcow2dedup_table_worker() - worker: serve the timer and "flush" messages.
 * @q: target.
 */
void qcow2dedup_table_worker(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;
	unsigned long req;
	int r = 0;

	spin_lock_irq(&q->lock);
	req = t->flush_req;
	spin_unlock_irq(&q->lock);
	if (!READ_ONCE(t->flush_due) && req == t->flush_done)
		return;
	WRITE_ONCE(t->flush_due, false);
	if (READ_ONCE(q->mode) != MODE_WRITE) {
		r = -EIO;
	} else if (READ_ONCE(q->stopped)) {
		/* The suspend wrote everything back; the image is not ours now. */
		r = 0;
	} else if (READ_ONCE(q->suspended)) {
		/* Suspending: the write-back is under way, not done. */
		r = -EBUSY;
	} else if (req != t->flush_done ||
		   (t->enabled && t->open && qcow2dedup_table_dirty(q))) {
		r = qcow2dedup_commit(q);
		if (!r)
			r = qcow2dedup_table_flush(q, true, req != t->flush_done);
		/* Memory short: the message fails, the mode stays. */
		if (r && r != -ENOMEM)
			qcow2dedup_metadata_error_once(q, "dedup table flush", r);
	}
	spin_lock_irq(&q->lock);
	t->flush_err = r;
	t->flush_done = req;
	spin_unlock_irq(&q->lock);
	wake_up_all(&t->flush_wait);
	qcow2dedup_table_schedule(q);
}

static bool flush_served(struct qcow2dedup *q, unsigned long req, int *err)
{
	bool done;

	spin_lock_irq(&q->lock);
	done = (long)(q->table.flush_done - req) >= 0;
	*err = q->table.flush_err;
	spin_unlock_irq(&q->lock);
	return done;
}

/**
 * qcow2dedup_table_message_flush() - the "flush" message: commit and write
 *	the table, and wait for it.
 * @q: target.
 */
int qcow2dedup_table_message_flush(struct qcow2dedup *q)
{
	struct qcow2dedup_table *t = &q->table;
	unsigned long req;
	int r;

	spin_lock_irq(&q->lock);
	req = ++t->flush_req;
	spin_unlock_irq(&q->lock);
	qcow2dedup_wake(q);
	/* A signal ends the wait; the flush itself still happens. */
	if (wait_event_interruptible(t->flush_wait, flush_served(q, req, &r)))
		return -EINTR;
	return r;
}

/**
 * qcow2dedup_table_dirty() - slots to write or to clear.
 * @q: target.
 */
u64 qcow2dedup_table_dirty(struct qcow2dedup *q)
{
	if (!READ_ONCE(q->table.enabled))
		return 0;
	return READ_ONCE(q->index.dirty) + READ_ONCE(q->index.nr_clears);
}

/**
 * qcow2dedup_table_state() - "off", "rebuilding", "dirty" or "clean".
 * @q: target.
 */
const char *qcow2dedup_table_state(struct qcow2dedup *q)
{
	if (!q->dedup || !READ_ONCE(q->table.enabled))
		return "off";
	if (q->rebuild && READ_ONCE(q->rebuild->active))
		return "rebuilding";
	return qcow2dedup_table_dirty(q) ? "dirty" : "clean";
}

/*
 * The engine's commit and allocation.  They live here, under the table,
 * because every commit must write the table's clears first (see
 * qcow2dedup_table_before_commit()), and the table itself allocates and
 * commits.
 */

/*
 * Commit the staged metadata.  The dedup table's clears go to the buffers
 * first, so the commit's first flush makes them durable before any
 * refcount falls to zero (dedup-table.c).
 */
int qcow2dedup_commit(struct qcow2dedup *q)
{
	bool frees = false;
	int r;

	qcow2dedup_assert_worker(q);
	r = qcow2dedup_table_before_commit(q);
	if (r)
		goto out;
	/*
	 * A commit that frees clusters waits until no bio that looked up
	 * before it uses them: when nothing after this point can reach them,
	 * start that wait's grace period now, while the commit writes.
	 */
	frees = qcow2_md_frees_unreachable(q->md);
	if (frees)
		qcow2dedup_readers_retire(&q->readers);
	r = qcow2_md_commit(q->md, false);
out:
	if (r)
		qcow2dedup_metadata_error(q, "commit", r);
	/* After a failure before its wait: no later wait may inherit it. */
	if (frees)
		qcow2dedup_readers_end_retire(&q->readers);
	return r;
}

/*
 * Allocate a cluster for metadata of the dedup table (@meta), or up to @max
 * data clusters in a row; if none is free, commit staged frees and retry
 * once.
 */
static int alloc_clusters(struct qcow2dedup *q, bool meta, unsigned int max,
			  u64 *host_off, unsigned int *count)
{
	bool committed = false;
	int r;

	qcow2dedup_assert_worker(q);
	for (;;) {
		*count = 1;
		r = meta ? qcow2_md_alloc_meta(q->md, host_off) :
			   qcow2_md_alloc(q->md, max, host_off, count);
		if (r != -ENOSPC || committed || !qcow2_md_dirty(q->md))
			return r;
		r = qcow2dedup_commit(q);
		if (r)
			return r;
		committed = true;
	}
}

int qcow2dedup_alloc(struct qcow2dedup *q, u64 *host_off)
{
	unsigned int count;

	return alloc_clusters(q, false, 1, host_off, &count);
}

/**
 * qcow2dedup_alloc_run() - allocate up to @max data clusters in a row.
 * @q: target.
 * @max: clusters wanted, >= 1.
 * @host_off: the first one's byte offset.
 * @count: clusters allocated (1 to @max).
 *
 * Return: as qcow2dedup_alloc().
 */
int qcow2dedup_alloc_run(struct qcow2dedup *q, unsigned int max, u64 *host_off,
			 unsigned int *count)
{
	return alloc_clusters(q, false, max, host_off, count);
}

int qcow2dedup_alloc_meta(struct qcow2dedup *q, u64 *host_off)
{
	unsigned int count;

	return alloc_clusters(q, true, 1, host_off, &count);
}

/* Make the L2 table of @guest_off writable; commit staged frees if full. */
int qcow2dedup_prepare_write(struct qcow2dedup *q, u64 guest_off)
{
	int r = qcow2_md_prepare_write(q->md, guest_off);

	if (r == -ENOSPC && qcow2_md_dirty(q->md)) {
		r = qcow2dedup_commit(q);
		if (!r)
			r = qcow2_md_prepare_write(q->md, guest_off);
	}
	return r;
}

/*
 * First write of this activation: clear the autoclear bits of what this
 * target does not keep; with a dedup table, set its bit and mark it open.
 */
int qcow2dedup_before_first_write(struct qcow2dedup *q)
{
	int r;

	if (q->autoclear_done)
		return 0;
	r = qcow2dedup_table_open(q);
	if (!r && !q->table.open)
		r = qcow2_md_clear_autoclear(q->md);
	if (r == -ENOMEM) {
		qcow2dedup_wait_memory(q);
		return r;
	}
	if (r) {
		/*
		 * Opening the table may have committed on the way (a new
		 * root needs a cluster, allocating may commit): a failed
		 * commit switched the mode already.
		 */
		qcow2dedup_metadata_error_once(q, "header update", r);
		return r;
	}
	WRITE_ONCE(q->autoclear_done, true);
	return 0;
}
