/* SPDX-License-Identifier: GPL-2.0 */
/*
 * qcow2 metadata of one image: header, L1 and L2 tables, refcounts, read and
 * written through a dm-bufio client that serves as the metadata cache.
 *
 * The object is opaque to the target glue.  Except where a function says
 * otherwise, it belongs to the target's single worker (or the constructor
 * and destructor): calls are serialised by the caller and may sleep.
 *
 * Ordering on disk (qcow2_md_commit()): refcount increments, new tables and
 * guest data are on disk before any L1/L2 entry that points to them, and
 * refcount decrements follow the removal of the references they drop.  At
 * every point a crash leaves an image that qemu-img check finds free of
 * corruption (leaks at most).
 */
#ifndef DM_QCOW2DEDUP_METADATA_H
#define DM_QCOW2DEDUP_METADATA_H

#include <linux/blkdev.h>
#include <linux/xarray.h>

#include "qcow2-format.h"

struct qcow2_metadata;

struct qcow2_metadata *qcow2_md_open(struct block_device *bdev,
				     sector_t target_len, bool writable,
				     void (*wait_for_readers)(void *ctx),
				     void *ctx, struct qcow2_refusal *why);
void qcow2_md_close(struct qcow2_metadata *md);
int qcow2_md_unchanged(struct qcow2_metadata *md);
const struct qcow2_geometry *qcow2_md_geometry(struct qcow2_metadata *md);

int qcow2_md_lookup(struct qcow2_metadata *md, u64 guest_off, bool may_block,
		    enum qcow2_cluster_type *type,
		    struct qcow2_l2e_info *info, bool *pending);
int qcow2_md_lookup_block(struct qcow2_metadata *md, u64 gc, unsigned int max,
			  enum qcow2_cluster_type *types, struct qcow2_l2e_info *infos,
			  bool *pending);
unsigned int qcow2_md_normal_run(struct qcow2_metadata *md, u64 guest_off,
				 u64 host_offset, unsigned int max_clusters,
				 bool copied);
unsigned int qcow2_md_zero_run(struct qcow2_metadata *md, u64 guest_off,
			       unsigned int max_clusters);
unsigned int qcow2_md_l2_block_clusters(struct qcow2_metadata *md, u64 guest_off);
int qcow2_md_read_bytes(struct qcow2_metadata *md, u64 off, void *buf,
			size_t len);

int qcow2_md_clear_autoclear(struct qcow2_metadata *md);
int qcow2_md_prepare_write(struct qcow2_metadata *md, u64 guest_off);
int qcow2_md_alloc(struct qcow2_metadata *md, unsigned int max, u64 *host_off,
		   unsigned int *count);
int qcow2_md_alloc_meta(struct qcow2_metadata *md, u64 *host_off);
int qcow2_md_release(struct qcow2_metadata *md, u64 host_off);
int qcow2_md_stage(struct qcow2_metadata *md, u64 guest_off,
		   enum qcow2_cluster_type type, u64 host_off, bool copied,
		   u64 *old_host);
int qcow2_md_reserve_stage(struct qcow2_metadata *md, u64 guest_off);
int qcow2_md_refcount(struct qcow2_metadata *md, u64 host_off, u64 *rc);
int qcow2_md_share(struct qcow2_metadata *md, u64 host_off);
int qcow2_md_clear_copied(struct qcow2_metadata *md, u64 guest_off);
int qcow2_md_set_copied(struct qcow2_metadata *md, u64 guest_off);
int qcow2_md_commit(struct qcow2_metadata *md, bool final);
bool qcow2_md_dirty(struct qcow2_metadata *md);
bool qcow2_md_frees_unreachable(struct qcow2_metadata *md);
void qcow2_md_set_callbacks(struct qcow2_metadata *md,
			    bool (*survivor)(void *ctx, u64 host_cluster,
					     u64 *guest_cluster),
			    bool (*busy)(void *ctx, u64 guest_cluster));
int qcow2_md_flush(struct qcow2_metadata *md);
int qcow2_md_write_bytes(struct qcow2_metadata *md, u64 off, const void *buf,
			 size_t len);
int qcow2_md_zero_cluster(struct qcow2_metadata *md, u64 host_off);
int qcow2_md_write_header(struct qcow2_metadata *md, const void *buf, size_t len);
bool qcow2_md_l2_present(struct qcow2_metadata *md, u64 gc);
bool qcow2_md_metadata_in(struct qcow2_metadata *md, struct xarray *set);
u64 qcow2_md_dev_clusters(struct qcow2_metadata *md);
unsigned long qcow2_md_nr_pending(struct qcow2_metadata *md);
void qcow2_md_usage(struct qcow2_metadata *md, u64 *used, u64 *total);

#endif /* DM_QCOW2DEDUP_METADATA_H */
