/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * On-disk format of qcow2 images, as far as dm-qcow2dedup and its tools use it.
 *
 * Source of truth: QEMU's docs/interop/qcow2.txt.  Everything on disk is
 * big-endian.  This header is shared by the kernel target and the userspace
 * tools, so it only uses types from <linux/types.h>.
 */
#ifndef _QCOW2DEDUP_QCOW2_H
#define _QCOW2DEDUP_QCOW2_H

#include <linux/types.h>

#define QCOW2_MAGIC			0x514649fbU	/* "QFI\xfb" */

#define QCOW2_HEADER_V2_LEN		72U
#define QCOW2_HEADER_V3_LEN		104U
/* v3 headers of this length or more carry compression_type. */
#define QCOW2_HEADER_COMPRESSION_LEN	105U

#define QCOW2_MIN_CLUSTER_BITS		9U
#define QCOW2_MAX_CLUSTER_BITS		21U
#define QCOW2_MAX_REFCOUNT_ORDER	6U
#define QCOW2_V2_REFCOUNT_ORDER		4U

/* Limits QEMU enforces when it opens an image (block/qcow2.h). */
#define QCOW2_MAX_L1_BYTES		(32U << 20)
#define QCOW2_MAX_REFTABLE_BYTES	(8U << 20)
#define QCOW2_MAX_SNAPSHOTS		65536U

/* incompatible_features */
#define QCOW2_INCOMPAT_DIRTY		(1ULL << 0)
#define QCOW2_INCOMPAT_CORRUPT		(1ULL << 1)
#define QCOW2_INCOMPAT_DATA_FILE	(1ULL << 2)
#define QCOW2_INCOMPAT_COMPRESSION	(1ULL << 3)
#define QCOW2_INCOMPAT_EXTL2		(1ULL << 4)

/* compatible_features */
#define QCOW2_COMPAT_LAZY_REFCOUNTS	(1ULL << 0)

/* autoclear_features */
#define QCOW2_AUTOCLEAR_BITMAPS		(1ULL << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW	(1ULL << 1)

/* compression_type */
#define QCOW2_COMPRESSION_ZLIB		0U
#define QCOW2_COMPRESSION_ZSTD		1U

/* crypt_method */
#define QCOW2_CRYPT_NONE		0U

/* Header extension types. */
#define QCOW2_EXT_END			0x00000000U
#define QCOW2_EXT_BACKING_FORMAT	0xe2792acaU
#define QCOW2_EXT_FEATURE_TABLE		0x6803f857U
#define QCOW2_EXT_CRYPTO		0x0537be77U
#define QCOW2_EXT_BITMAPS		0x23852875U
#define QCOW2_EXT_DATA_FILE		0x44415441U

/**
 * struct qcow2_header - the image header at offset 0.
 *
 * Version 2 images end after @snapshots_offset (72 bytes); version 3 images
 * carry the feature words, @refcount_order and @header_length, and may carry
 * @compression_type.
 */
struct qcow2_header {
	__be32 magic;
	__be32 version;
	__be64 backing_file_offset;
	__be32 backing_file_size;
	__be32 cluster_bits;
	__be64 size;
	__be32 crypt_method;
	__be32 l1_size;
	__be64 l1_table_offset;
	__be64 refcount_table_offset;
	__be32 refcount_table_clusters;
	__be32 nb_snapshots;
	__be64 snapshots_offset;
	/* version 3 */
	__be64 incompatible_features;
	__be64 compatible_features;
	__be64 autoclear_features;
	__be32 refcount_order;
	__be32 header_length;
	/* optional, present when header_length > 104 */
	__u8 compression_type;
	__u8 padding[7];
} __attribute__((packed));

/** struct qcow2_ext_hdr - header extension: type, length, data padded to 8. */
struct qcow2_ext_hdr {
	__be32 type;
	__be32 len;
} __attribute__((packed));

/*
 * L1 entry: bits 9-55 L2 table offset, bit 63 "refcount is exactly one";
 * every other bit is reserved and must be zero.
 */
#define QCOW2_L1E_OFFSET_MASK		0x00fffffffffffe00ULL
#define QCOW2_L1E_RESERVED_MASK		0x7f000000000001ffULL

/*
 * L2 entry of a standard cluster: bit 0 reads as zero (v3), bits 9-55 host
 * offset, bit 62 compressed, bit 63 COPIED (refcount is exactly one).
 * Bits 1-8 and 56-61 are reserved.
 */
#define QCOW2_OFLAG_COPIED		(1ULL << 63)
#define QCOW2_OFLAG_COMPRESSED		(1ULL << 62)
#define QCOW2_OFLAG_ZERO		(1ULL << 0)
#define QCOW2_L2E_OFFSET_MASK		0x00fffffffffffe00ULL
#define QCOW2_L2E_STD_RESERVED_MASK	0x3f000000000001feULL

/*
 * Compressed cluster descriptor (bits 0-61 of an L2 entry with bit 62 set):
 * with x = 62 - (cluster_bits - 8), bits 0..x-1 are the host byte offset and
 * bits x..61 the number of additional 512-byte sectors the data spans.
 */
#define QCOW2_COMPRESSED_SECTOR_SIZE	512U

/** struct qcow2_snapshot_hdr - fixed part of one snapshot table entry. */
struct qcow2_snapshot_hdr {
	__be64 l1_table_offset;
	__be32 l1_size;
	__be16 id_str_size;
	__be16 name_size;
	__be32 date_sec;
	__be32 date_nsec;
	__be64 vm_clock_nsec;
	__be32 vm_state_size;
	__be32 extra_data_size;
} __attribute__((packed));

#endif /* _QCOW2DEDUP_QCOW2_H */
