/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * On-disk format of the dm-qcow2dedup dedup table: the persisted copy of the
 * target's index "content digest -> host cluster", stored inside the qcow2
 * image so that a new activation finds the data earlier ones wrote.
 *
 * Shared by the kernel target and the userspace tool (tools/qcow2dedup).
 * Everything is big-endian.  See Documentation/admin-guide/device-mapper/
 * qcow2dedup.rst, "The dedup table", for the rules that make it crash-safe.
 *
 * Layout.  A header extension of type QCOW2_EXT_DEDUP_TABLE points to a root
 * cluster.  The root holds cluster_size / 8 offsets of directory clusters;
 * each directory cluster holds cluster_size / 8 offsets of leaf clusters;
 * each leaf holds cluster_size / 32 slots.  Slot s of leaf l describes host
 * cluster l * (cluster_size / 32) + s, leaf l being entry l % (cluster_size
 * / 8) of directory l / (cluster_size / 8).  An offset of 0 means "absent";
 * an absent leaf has only empty slots.
 *
 * A slot holds the digest of its host cluster's contents (truncated or
 * zero-padded to QDT_SLOT_SIZE bytes), or zeros when the cluster is not
 * indexed.  The table's own clusters (root, directories, leaves) have a
 * refcount of one and are referenced by no qcow2 structure: qemu-img check
 * reports them as leaked.
 *
 * The autoclear feature bit QCOW2_AUTOCLEAR_DEDUP_TABLE says that no program
 * other than dm-qcow2dedup has written the image since the table was written.
 * QEMU clears unknown autoclear bits whenever it opens an image read-write,
 * so a table found without the bit is stale and is not used.
 */
#ifndef _QCOW2DEDUP_DEDUP_TABLE_H
#define _QCOW2DEDUP_DEDUP_TABLE_H

#include <linux/types.h>

/* Header extension type: "qddt". */
#define QCOW2_EXT_DEDUP_TABLE		0x71646474U

/*
 * Autoclear bit "the dedup table is consistent with this image".  QEMU
 * allocates autoclear bits from bit 0 up; this one is far from them.
 */
#define QCOW2_AUTOCLEAR_DEDUP_TABLE_BIT	60U
#define QCOW2_AUTOCLEAR_DEDUP_TABLE	(1ULL << QCOW2_AUTOCLEAR_DEDUP_TABLE_BIT)
/* Its name in the feature name table (type 2 = autoclear). */
#define QCOW2_AUTOCLEAR_DEDUP_TABLE_NAME	"dedup table"

#define QDT_VERSION			1U

/* The table is open for writing: seen at load, the last writer crashed. */
#define QDT_FLAG_OPEN			(1U << 0)
/*
 * Some entries come from a table a crash left open and were not compared
 * with their cluster since: the next activation compares them before use.
 */
#define QDT_FLAG_UNVERIFIED		(1U << 1)
/*
 * The index was being rebuilt when the table was last written: clusters
 * may be missing from it (those present are right); the next activation
 * loads it and rebuilds too.
 */
#define QDT_FLAG_INCOMPLETE		(1U << 2)
#define QDT_FLAGS_KNOWN			(QDT_FLAG_OPEN | QDT_FLAG_UNVERIFIED | \
					 QDT_FLAG_INCOMPLETE)

#define QDT_SLOT_SIZE			32U
#define QDT_HASH_NAME_LEN		32U

/**
 * struct qdt_ext - data of the QCOW2_EXT_DEDUP_TABLE header extension.
 * @version: QDT_VERSION.
 * @flags: QDT_FLAG_*; unknown flags make the table unusable.
 * @root_offset: byte offset of the root cluster (cluster-aligned).
 * @entries: slots in use when the table was last closed cleanly
 *	(informational; the slots are the truth).
 * @generation: how many activations have opened the table for writing.
 * @key_len: digest bytes a slot holds (1..QDT_SLOT_SIZE); the rest is zero.
 *	The target writes the digest's length, at most 24 (its in-memory key).
 * @reserved: zero.
 * @hash: the kernel crypto API name of the digest ("sha256"), NUL-padded.
 */
struct qdt_ext {
	__be32 version;
	__be32 flags;
	__be64 root_offset;
	__be64 entries;
	__be64 generation;
	__u8 key_len;
	__u8 reserved[7];
	char hash[QDT_HASH_NAME_LEN];
} __attribute__((packed));

/* Offsets in the root and in directories: bits 9-55, cluster-aligned. */
#define QDT_OFFSET_MASK			0x00fffffffffffe00ULL

/** struct qcow2_feature_name - one entry of the feature name table. */
struct qcow2_feature_name {
	__u8 type;			/* 0 incompatible, 1 compatible, 2 autoclear */
	__u8 bit;
	char name[46];
} __attribute__((packed));

#define QCOW2_FEATURE_TYPE_AUTOCLEAR	2U

#endif /* _QCOW2DEDUP_DEDUP_TABLE_H */
