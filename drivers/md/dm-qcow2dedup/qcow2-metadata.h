/* SPDX-License-Identifier: GPL-2.0 */
/*
 * qcow2 metadata access: header, L1 table and L2 tables of one image, read
 * through a dm-bufio client that serves as the metadata cache.
 *
 * The object is opaque to the target glue.  Every function documents the
 * context it may be called from.
 */
#ifndef DM_QCOW2DEDUP_METADATA_H
#define DM_QCOW2DEDUP_METADATA_H

#include <linux/blkdev.h>
#include "qcow2-format.h"

struct qcow2_metadata;

struct qcow2_metadata *qcow2_md_open(struct block_device *bdev,
				     sector_t target_len,
				     struct qcow2_refusal *why);
void qcow2_md_close(struct qcow2_metadata *md);
const struct qcow2_geometry *qcow2_md_geometry(struct qcow2_metadata *md);

int qcow2_md_lookup(struct qcow2_metadata *md, u64 guest_off, bool may_block,
		    enum qcow2_cluster_type *type,
		    struct qcow2_l2e_info *info);
int qcow2_md_read_bytes(struct qcow2_metadata *md, u64 off, void *buf,
			size_t len);

#endif /* DM_QCOW2DEDUP_METADATA_H */
