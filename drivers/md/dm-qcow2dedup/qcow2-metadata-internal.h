/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Private to qcow2-metadata.c and qcow2-refcount.c: the metadata object.
 *
 * Locking: the object belongs to the target's single worker, which is the
 * only writer of everything below.  map() reads @l1 (READ_ONCE) and @pending
 * (xarray, RCU) and looks up L2 blocks with dm_bufio_get(); see
 * qcow2_md_lookup() for the ordering that makes this safe.
 */
#ifndef DM_QCOW2DEDUP_METADATA_INTERNAL_H
#define DM_QCOW2DEDUP_METADATA_INTERNAL_H

#include <linux/dm-bufio.h>
#include <linux/xarray.h>

#include "qcow2-metadata.h"

struct qcow2_metadata {
	struct block_device *bdev;
	struct dm_bufio_client *bufio;
	u32 block_bits;			/* log2 of the dm-bufio block size */
	struct qcow2_geometry geo;
	bool writable;

	u64 *l1;			/* committed L1 table, CPU order */
	/* The first cluster as last read or written, for qcow2_md_unchanged(). */
	void *hdr_copy;
	size_t hdr_len;

	/*
	 * Changes not yet on disk, written by qcow2_md_commit():
	 * @pending: guest cluster index -> new L2 entry (encoded with
	 *	pending_encode(): xarray values cannot hold bit 63);
	 * @pending_l1: L1 index -> new L1 entry (a new or copied L2 table);
	 * @decrements: host cluster index -> refcount decrements owed, applied
	 *	only once the references they drop are on disk.
	 */
	struct xarray pending;
	struct xarray pending_l1;
	struct xarray decrements;
	unsigned long nr_pending;
	unsigned long nr_l1_pending;
	unsigned long nr_decrements;
	bool warned_underflow;		/* corrupt refcounts: logged once */
	bool warned_compressed;		/* compressed data past the device: once */

	/*
	 * Host clusters of the metadata found at open (header, L1 table, L2
	 * tables of the active L1, refcount table and blocks, snapshot
	 * table), for the overlap checks QEMU also makes: a data entry that
	 * points there is corrupt, and no refcount decrement may free one.
	 * Written at open and by the worker; map() reads it (RCU).
	 */
	struct xarray meta;
	bool warned_meta;		/* a reference into metadata: logged once */

	/* Refcounts */
	u64 *reftable;			/* refcount block offsets, CPU order */
	u64 reftable_entries;
	u64 dev_clusters;		/* clusters the device holds */
	u64 used_clusters;		/* clusters with a non-zero refcount */
	u64 free_hint;			/* where the allocator looks first */

	/*
	 * COPIED restoration (qcow2-copied.c): clusters whose refcount fell to
	 * one.  @unique_next: in this commit's decrements; @unique_ready: in
	 * an earlier commit's, so the refcount of one is on disk once the next
	 * commit's first flush is done; @unique_scan: those the target could
	 * not name the remaining referrer of, left for a scan of the L2 tables.
	 */
	struct xarray unique_next;
	struct xarray unique_ready;
	struct xarray unique_scan;
	unsigned long nr_scan;		/* in @unique_scan, or 1 for @scan_all */
	bool scan_all;			/* a note was lost: scan every entry */
	unsigned long last_scan;	/* jiffies */

	/* Called between writing references and dropping refcounts. */
	void (*wait_for_readers)(void *ctx);
	/* Names the one guest cluster still pointing at a host cluster. */
	bool (*survivor)(void *ctx, u64 host_cluster, u64 *guest_cluster);
	/* Is an operation on a guest cluster in flight? */
	bool (*guest_busy)(void *ctx, u64 guest_cluster);
	void *ctx;
};

/* qcow2-refcount.c */
int qcow2_rc_load(struct qcow2_metadata *md);
int qcow2_rc_get(struct qcow2_metadata *md, u64 cluster, u64 *rc);
int qcow2_rc_update(struct qcow2_metadata *md, u64 cluster, s64 delta,
		    u64 *new_rc);
int qcow2_rc_alloc(struct qcow2_metadata *md, u64 *cluster, bool meta, u64 max,
		   u64 *count);
int qcow2_rc_write_header(struct qcow2_metadata *md, u32 field_off,
			  const void *val, u32 len);

/* qcow2-metadata.c */
int qcow2_md_new_cluster(struct qcow2_metadata *md, u64 cluster, u64 copy_from);
bool qcow2_md_is_meta(struct qcow2_metadata *md, u64 cluster);
int qcow2_md_meta_note(struct qcow2_metadata *md, u64 cluster);
int qcow2_md_write_be64(struct qcow2_metadata *md, u64 pos, u64 value);

/* qcow2-copied.c */
int qcow2_copied_restore(struct qcow2_metadata *md, bool final);
void qcow2_copied_note(struct qcow2_metadata *md, u64 cluster);
void qcow2_copied_advance(struct qcow2_metadata *md);
void qcow2_copied_destroy(struct qcow2_metadata *md);

#endif /* DM_QCOW2DEDUP_METADATA_INTERNAL_H */
