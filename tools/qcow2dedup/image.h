/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A qcow2 image opened read-only: the decoded header and extensions, the
 * refcount table, and reads that behave like QEMU's (past the end of the
 * file or device they return zeros).
 */
#ifndef QCOW2DEDUP_IMAGE_H
#define QCOW2DEDUP_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <qcow2dedup/dedup-table.h>
#include <qcow2dedup/qcow2.h>

#define IMAGE_MAX_EXTS		64U
#define IMAGE_NAME_MAX		1024U

/* QEMU's limits (block/qcow2.h) for the bitmap directory and snapshots. */
#define QCOW2_MAX_BITMAP_DIR_BYTES	(64U << 20)
#define QCOW2_MAX_SNAPSHOTS_BYTES	(1U << 30)

/* Refcount table entries: bits 9-63 offset, 0-8 reserved. */
#define QCOW2_REFT_OFFSET_MASK		0xfffffffffffffe00ULL
#define QCOW2_REFT_RESERVED_MASK	0x00000000000001ffULL

struct image_ext {
	uint32_t type;
	uint32_t len;
	uint32_t offset;	/* of the data, in the first cluster */
};

struct image_snapshot {
	uint64_t l1_offset;
	uint32_t l1_size;
	char id[64];
	char name[256];
};

struct image {
	int fd;
	const char *path;
	bool blockdev;
	uint64_t size;		/* of the file or the device, bytes */
	uint64_t nb_clusters;	/* size rounded up to clusters */

	/* Header. */
	uint32_t version;
	uint32_t cluster_bits;
	uint64_t cluster_size;
	uint64_t virtual_size;
	uint32_t crypt_method;
	uint32_t l1_size;
	uint64_t l1_offset;
	uint64_t rt_offset;
	uint32_t rt_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompat;
	uint64_t compat;
	uint64_t autoclear;
	uint32_t refcount_order;
	uint32_t header_length;
	uint8_t compression_type;
	uint64_t backing_offset;
	uint32_t backing_size;
	char backing_file[IMAGE_NAME_MAX];

	/* Header extensions, in their on-disk order. */
	struct image_ext exts[IMAGE_MAX_EXTS];
	unsigned int nr_exts;
	char ext_error[128];	/* why the area could not be walked, or "" */
	char backing_fmt[IMAGE_NAME_MAX];
	char data_file[IMAGE_NAME_MAX];
	const struct qcow2_feature_name *features;
	unsigned int nr_features;
	bool has_bitmaps;
	uint32_t nb_bitmaps;
	uint64_t bitmap_dir_size;
	uint64_t bitmap_dir_offset;
	bool has_crypto;
	uint64_t crypto_offset;
	uint64_t crypto_length;
	const uint8_t *qdt;	/* data of the dedup table extension */
	uint32_t qdt_len;

	/* Derived. */
	uint8_t *first_cluster;
	uint32_t l2_entry_size;		/* 8, or 16 with extended L2 */
	uint64_t l2_entries;
	uint32_t refblock_bits;		/* log2(refcounts per block) */
	uint64_t refcount_max;
	uint64_t *reftable;
	uint64_t reftable_size;		/* entries */
	struct image_snapshot *snapshots;
	uint64_t snapshots_size;	/* bytes of the snapshot table */

	/* One refcount block cached for image_refcount(). */
	uint8_t *rb_buf;
	uint64_t rb_offset;
};

int image_open(struct image *img, const char *path);
void image_close(struct image *img);
int image_read(struct image *img, uint64_t off, void *buf, size_t len);
int image_refcount(struct image *img, uint64_t cluster, uint64_t *refcount);
uint64_t refcount_get(const uint8_t *block, uint32_t order, uint64_t index);
int image_load_snapshots(struct image *img);
const char *image_feature_name(const struct image *img, unsigned int type,
			       unsigned int bit);

static inline bool image_has_data_file(const struct image *img)
{
	return img->incompat & QCOW2_INCOMPAT_DATA_FILE;
}

#endif /* QCOW2DEDUP_IMAGE_H */
