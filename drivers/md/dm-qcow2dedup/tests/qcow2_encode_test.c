// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for what dm-qcow2dedup writes: refcounts of every width,
 * the free-cluster search, L1/L2 entry encoding and the COPIED rule, and
 * refcount table growth arithmetic (qcow2-format.c).
 */
#include <kunit/test.h>
#include <kunit/visibility.h>
#include <linux/bits.h>

#include "dm-qcow2dedup-compat.h"
#include "qcow2-format.h"

MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);

#define BLOCK 512

/* Every order: set each index to a distinct value, read all back. */
static void refcount_all_orders(struct kunit *test)
{
	u8 *block = kunit_kzalloc(test, BLOCK, GFP_KERNEL);
	u32 order;

	KUNIT_ASSERT_NOT_NULL(test, block);
	for (order = 0; order <= QCOW2_MAX_REFCOUNT_ORDER; order++) {
		u64 n = (BLOCK * 8) >> order, max = qcow2_refcount_max(order), i;

		memset(block, 0, BLOCK);
		for (i = 0; i < n; i++)
			qcow2_refcount_set(block, order, i, (i * 2654435761ULL) & max);
		for (i = 0; i < n; i++)
			KUNIT_EXPECT_EQ(test, qcow2_refcount_get(block, order, i),
					(i * 2654435761ULL) & max);
		/* Neighbours are untouched by a change. */
		qcow2_refcount_set(block, order, 3, 0);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_get(block, order, 2),
				(2 * 2654435761ULL) & max);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_get(block, order, 4),
				(4 * 2654435761ULL) & max);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_get(block, order, 3), 0ULL);
	}
}

/* The ceiling of each width, and the on-disk layout QEMU uses. */
static void refcount_ceiling_and_layout(struct kunit *test)
{
	u8 *block = kunit_kzalloc(test, BLOCK, GFP_KERNEL);
	u32 order;

	KUNIT_ASSERT_NOT_NULL(test, block);
	KUNIT_EXPECT_EQ(test, qcow2_refcount_max(0), 1ULL);
	KUNIT_EXPECT_EQ(test, qcow2_refcount_max(1), 3ULL);
	KUNIT_EXPECT_EQ(test, qcow2_refcount_max(2), 15ULL);
	KUNIT_EXPECT_EQ(test, qcow2_refcount_max(3), 255ULL);
	KUNIT_EXPECT_EQ(test, qcow2_refcount_max(4), 65535ULL);
	KUNIT_EXPECT_EQ(test, qcow2_refcount_max(5), 0xffffffffULL);
	KUNIT_EXPECT_EQ(test, qcow2_refcount_max(6), U64_MAX);
	for (order = 0; order <= QCOW2_MAX_REFCOUNT_ORDER; order++) {
		u64 max = qcow2_refcount_max(order);

		memset(block, 0, BLOCK);
		qcow2_refcount_set(block, order, 1, max);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_get(block, order, 1), max);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_get(block, order, 0), 0ULL);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_get(block, order, 2), 0ULL);
	}
	/* Sub-byte widths are packed LSB first, wider ones big-endian. */
	memset(block, 0, BLOCK);
	qcow2_refcount_set(block, 0, 1, 1);
	KUNIT_EXPECT_EQ(test, block[0], 0x02);
	memset(block, 0, BLOCK);
	qcow2_refcount_set(block, 2, 1, 0xa);
	KUNIT_EXPECT_EQ(test, block[0], 0xa0);
	memset(block, 0, BLOCK);
	qcow2_refcount_set(block, 4, 1, 0x1234);
	KUNIT_EXPECT_EQ(test, block[2], 0x12);
	KUNIT_EXPECT_EQ(test, block[3], 0x34);
	memset(block, 0, BLOCK);
	qcow2_refcount_set(block, 6, 0, 0x0102030405060708ULL);
	KUNIT_EXPECT_EQ(test, block[0], 0x01);
	KUNIT_EXPECT_EQ(test, block[7], 0x08);
}

static void find_free(struct kunit *test)
{
	u8 *block = kunit_kzalloc(test, BLOCK, GFP_KERNEL);
	u32 order;

	KUNIT_ASSERT_NOT_NULL(test, block);
	for (order = 0; order <= QCOW2_MAX_REFCOUNT_ORDER; order++) {
		u64 n = (BLOCK * 8) >> order, i;

		memset(block, 0, BLOCK);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_find_free(block, order, 0, n), 0ULL);
		for (i = 0; i < n; i++)
			qcow2_refcount_set(block, order, i, 1);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_find_free(block, order, 0, n), n);
		qcow2_refcount_set(block, order, n - 1, 0);
		qcow2_refcount_set(block, order, 5, 0);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_find_free(block, order, 0, n), 5ULL);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_find_free(block, order, 6, n), n - 1);
		/* The end bound is respected (the device ends mid-block). */
		KUNIT_EXPECT_EQ(test, qcow2_refcount_find_free(block, order, 6, n - 1), n - 1);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_find_free(block, order, 6, 6), 6ULL);
	}
}

/* The free clusters a run allocation may take after its first. */
static void free_run(struct kunit *test)
{
	u8 *block = kunit_kzalloc(test, BLOCK, GFP_KERNEL);
	u32 order;

	KUNIT_ASSERT_NOT_NULL(test, block);
	for (order = 0; order <= QCOW2_MAX_REFCOUNT_ORDER; order++) {
		u64 n = (BLOCK * 8) >> order;

		memset(block, 0, BLOCK);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 0, n, n), n);
		/* @max bounds it, and so does @end (the device's end). */
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 3, n, 7), 7ULL);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 3, 5, 7), 2ULL);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 5, 5, 7), 0ULL);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 3, n, 0), 0ULL);
		/* A used cluster ends the run, whatever its refcount. */
		qcow2_refcount_set(block, order, 9, 1);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 3, n, n), 6ULL);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 9, n, n), 0ULL);
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 10, n, 4), 4ULL);
		/* The highest refcount of the width, in the last entry. */
		qcow2_refcount_set(block, order, n - 1, qcow2_refcount_max(order));
		KUNIT_EXPECT_EQ(test, qcow2_refcount_free_run(block, order, 10, n, n), n - 11);
	}
}

static void geometry(struct qcow2_geometry *g, u32 cb, u32 order)
{
	memset(g, 0, sizeof(*g));
	g->cluster_bits = cb;
	g->cluster_size = BIT_ULL(cb);
	g->l2_bits = cb - 3;
	g->refcount_order = order;
	g->dev_size = 1ULL << 40;
}

/* Encoding round-trips through the decoder; COPIED is set exactly when asked. */
static void entry_encoding(struct kunit *test)
{
	struct qcow2_geometry g;
	struct qcow2_l2e_info info;
	u64 e;

	geometry(&g, 16, 4);
	e = qcow2_encode_l2_entry(QCOW2_CLUSTER_NORMAL, 7ULL << 16, true);
	KUNIT_EXPECT_EQ(test, e, (7ULL << 16) | QCOW2_OFLAG_COPIED);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, e, &info), QCOW2_CLUSTER_NORMAL);
	KUNIT_EXPECT_TRUE(test, info.copied);
	KUNIT_EXPECT_EQ(test, info.host_offset, 7ULL << 16);

	/* A shared cluster (refcount > 1) is written without COPIED. */
	e = qcow2_encode_l2_entry(QCOW2_CLUSTER_NORMAL, 7ULL << 16, false);
	KUNIT_EXPECT_EQ(test, e, 7ULL << 16);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, e, &info), QCOW2_CLUSTER_NORMAL);
	KUNIT_EXPECT_FALSE(test, info.copied);

	e = qcow2_encode_l2_entry(QCOW2_CLUSTER_ZERO_PLAIN, 0, true);
	KUNIT_EXPECT_EQ(test, e, QCOW2_OFLAG_ZERO);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, e, &info), QCOW2_CLUSTER_ZERO_PLAIN);
	e = qcow2_encode_l2_entry(QCOW2_CLUSTER_ZERO_ALLOC, 9ULL << 16, true);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, e, &info), QCOW2_CLUSTER_ZERO_ALLOC);
	KUNIT_EXPECT_TRUE(test, info.copied);
	KUNIT_EXPECT_EQ(test, qcow2_encode_l2_entry(QCOW2_CLUSTER_UNALLOCATED, 9ULL << 16, true),
			0ULL);
	/* Reserved bits never come out of the encoder. */
	e = qcow2_encode_l2_entry(QCOW2_CLUSTER_NORMAL, ~0ULL, true);
	KUNIT_EXPECT_EQ(test, e & QCOW2_L2E_STD_RESERVED_MASK, 0ULL);
	KUNIT_EXPECT_EQ(test, e & QCOW2_OFLAG_COMPRESSED, 0ULL);

	KUNIT_EXPECT_EQ(test, qcow2_encode_l1_entry(3ULL << 16, true),
			(3ULL << 16) | QCOW2_OFLAG_COPIED);
	KUNIT_EXPECT_EQ(test, qcow2_encode_l1_entry(3ULL << 16, false), 3ULL << 16);
	KUNIT_EXPECT_EQ(test, qcow2_encode_l1_entry(0, true), 0ULL);
	KUNIT_EXPECT_EQ(test, qcow2_encode_l1_entry(~0ULL, true) & QCOW2_L1E_RESERVED_MASK, 0ULL);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, qcow2_encode_l1_entry(3ULL << 16, true)), 0);
}

/* The host clusters a compressed cluster holds references on. */
static void compressed_range(struct kunit *test)
{
	struct qcow2_geometry g;
	u64 start, len, l2e;

	geometry(&g, 16, 4);
	/* 1000 bytes at 0x30123: sectors 0x30000..0x30400, 3 sectors. */
	l2e = QCOW2_OFLAG_COMPRESSED | 0x30123 | (2ULL << (62 - 8));
	qcow2_compressed_range(&g, l2e, &start, &len);
	KUNIT_EXPECT_EQ(test, start, 0x30000ULL);
	KUNIT_EXPECT_EQ(test, len, 3 * 512ULL);
}

static void reftable_arithmetic(struct kunit *test)
{
	struct qcow2_geometry g;
	u64 first, k;

	/* 64 KiB clusters, 16-bit refcounts: a block covers 32768 clusters (2 GiB). */
	geometry(&g, 16, 4);
	KUNIT_EXPECT_EQ(test, qcow2_reftable_clusters_for(&g, 1), 1ULL);
	KUNIT_EXPECT_EQ(test, qcow2_reftable_clusters_for(&g, 8192ULL * 32768), 1ULL);
	KUNIT_EXPECT_EQ(test, qcow2_reftable_clusters_for(&g, 8192ULL * 32768 + 1), 2ULL);
	/* 8 MiB of table is QEMU's limit: 128 clusters; beyond it, refuse. */
	KUNIT_EXPECT_EQ(test, qcow2_reftable_clusters_for(&g, 128ULL * 8192 * 32768), 128ULL);
	KUNIT_EXPECT_EQ(test, qcow2_reftable_clusters_for(&g, 128ULL * 8192 * 32768 + 1), 0ULL);

	/* 512-byte clusters, 16-bit: a block covers 256 clusters, a table cluster 64 blocks. */
	geometry(&g, 9, 4);
	KUNIT_EXPECT_EQ(test, qcow2_reftable_growth(&g, 64, 65536, 64, &first, &k), 0);
	KUNIT_EXPECT_EQ(test, first, 64ULL * 256);
	KUNIT_EXPECT_EQ(test, k, 4ULL);	/* 65536 clusters: 256 blocks: 4 clusters */
	/* The growth must cover a block index beyond the device too. */
	KUNIT_EXPECT_EQ(test, qcow2_reftable_growth(&g, 64, 65536, 1000, &first, &k), 0);
	KUNIT_EXPECT_EQ(test, k, 16ULL);
	/* Not needed, or no room left in the device. */
	KUNIT_EXPECT_EQ(test, qcow2_reftable_growth(&g, 64, 65536, 10, &first, &k), -ENOSPC);
	KUNIT_EXPECT_EQ(test, qcow2_reftable_growth(&g, 64, 64 * 256 + 2, 64, &first, &k),
			-ENOSPC);
	/* A table larger than one block's range cannot describe itself. */
	geometry(&g, 9, 6);	/* 64 refcounts a block */
	KUNIT_EXPECT_EQ(test, qcow2_reftable_growth(&g, 64, 64ULL * 64 * 64, 64, &first, &k),
			-ENOSPC);
	KUNIT_EXPECT_EQ(test, qcow2_reftable_growth(&g, 64, 64ULL * 64 * 8, 64, &first, &k), 0);
	KUNIT_EXPECT_EQ(test, k, 8ULL);
	/* Huge block indexes do not overflow. */
	KUNIT_EXPECT_EQ(test, qcow2_reftable_growth(&g, 64, 1ULL << 40, U64_MAX >> 1, &first, &k),
			-ENOSPC);
}

static struct kunit_case qcow2_encode_cases[] = {
	KUNIT_CASE(refcount_all_orders),
	KUNIT_CASE(refcount_ceiling_and_layout),
	KUNIT_CASE(find_free),
	KUNIT_CASE(free_run),
	KUNIT_CASE(entry_encoding),
	KUNIT_CASE(compressed_range),
	KUNIT_CASE(reftable_arithmetic),
	{}
};

static struct kunit_suite qcow2_encode_suite = {
	.name = "dm-qcow2dedup-encode",
	.test_cases = qcow2_encode_cases,
};

kunit_test_suite(qcow2_encode_suite);
