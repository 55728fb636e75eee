// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the qcow2 on-disk decoders and address arithmetic of
 * dm-qcow2dedup (qcow2-format.c).
 */
#include <kunit/test.h>
#include <kunit/visibility.h>
#include <linux/bits.h>

#include "dm-qcow2dedup-compat.h"
#include "qcow2-format.h"

MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);

#define CB		16
#define CS		BIT_ULL(CB)
#define DEV_SIZE	(16 * CS)
#define HDR_BUF		4096

/*
 * A valid v3 image: 64 KiB clusters, 1 GiB virtual size, refcount table at
 * cluster 1, refcount block at 2, L1 table (2 entries) at cluster 3.
 */
static void make_v3(u8 *buf)
{
	struct qcow2_header *h = (struct qcow2_header *)buf;

	memset(buf, 0, HDR_BUF);
	put_unaligned_be32(QCOW2_MAGIC, &h->magic);
	put_unaligned_be32(3, &h->version);
	put_unaligned_be32(CB, &h->cluster_bits);
	put_unaligned_be64(1ULL << 30, &h->size);
	put_unaligned_be32(2, &h->l1_size);
	put_unaligned_be64(3 * CS, &h->l1_table_offset);
	put_unaligned_be64(CS, &h->refcount_table_offset);
	put_unaligned_be32(1, &h->refcount_table_clusters);
	put_unaligned_be32(4, &h->refcount_order);
	put_unaligned_be32(112, &h->header_length);
}

static void make_v2(u8 *buf)
{
	struct qcow2_header *h = (struct qcow2_header *)buf;

	make_v3(buf);
	put_unaligned_be32(2, &h->version);
	memset(buf + QCOW2_HEADER_V2_LEN, 0, HDR_BUF - QCOW2_HEADER_V2_LEN);
}

static void decode_valid_v3(struct kunit *test)
{
	u8 *buf = kunit_kzalloc(test, HDR_BUF, GFP_KERNEL);
	struct qcow2_geometry g;
	struct qcow2_refusal why;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	make_v3(buf);
	KUNIT_ASSERT_EQ(test, qcow2_decode_header(buf, HDR_BUF, DEV_SIZE, &g, &why), 0);
	KUNIT_EXPECT_EQ(test, why.err, QCOW2_OK);
	KUNIT_EXPECT_EQ(test, g.version, 3U);
	KUNIT_EXPECT_EQ(test, g.cluster_size, CS);
	KUNIT_EXPECT_EQ(test, g.l2_bits, (u32)CB - 3);
	KUNIT_EXPECT_EQ(test, g.size, 1ULL << 30);
	KUNIT_EXPECT_EQ(test, g.l1_size, 2U);
	KUNIT_EXPECT_EQ(test, g.l1_table_offset, 3 * CS);
	KUNIT_EXPECT_EQ(test, g.refcount_order, 4U);
	KUNIT_EXPECT_EQ(test, g.header_length, 112U);
	KUNIT_EXPECT_EQ(test, g.compression_type, QCOW2_COMPRESSION_ZLIB);
	KUNIT_EXPECT_EQ(test, qcow2_check_extensions(buf, HDR_BUF, &g, &why), 0);
	KUNIT_EXPECT_EQ(test, qcow2_check_target_len(&g, (1ULL << 30) >> 9, &why), 0);
}

static void decode_valid_v2(struct kunit *test)
{
	u8 *buf = kunit_kzalloc(test, HDR_BUF, GFP_KERNEL);
	struct qcow2_geometry g;
	struct qcow2_refusal why;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	make_v2(buf);
	/* A v2 header is 72 bytes; the v3 fields must not be read. */
	memset(buf + QCOW2_HEADER_V2_LEN, 0xff, 32);
	buf[QCOW2_HEADER_V2_LEN + 32] = 0;
	KUNIT_ASSERT_EQ(test, qcow2_decode_header(buf, QCOW2_HEADER_V2_LEN,
						  DEV_SIZE, &g, &why), 0);
	KUNIT_EXPECT_EQ(test, g.version, 2U);
	KUNIT_EXPECT_EQ(test, g.refcount_order, 4U);
	KUNIT_EXPECT_EQ(test, g.header_length, QCOW2_HEADER_V2_LEN);
	KUNIT_EXPECT_EQ(test, g.incompatible_features, 0ULL);
}

static void decode_zstd(struct kunit *test)
{
	u8 *buf = kunit_kzalloc(test, HDR_BUF, GFP_KERNEL);
	struct qcow2_header *h = (struct qcow2_header *)buf;
	struct qcow2_geometry g;
	struct qcow2_refusal why;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	make_v3(buf);
	put_unaligned_be64(QCOW2_INCOMPAT_COMPRESSION, &h->incompatible_features);
	h->compression_type = QCOW2_COMPRESSION_ZSTD;
	KUNIT_ASSERT_EQ(test, qcow2_decode_header(buf, HDR_BUF, DEV_SIZE, &g, &why), 0);
	KUNIT_EXPECT_EQ(test, g.compression_type, QCOW2_COMPRESSION_ZSTD);
}

/* One refusal: a change to the valid v3 header and the reason expected. */
struct refusal_case {
	const char *name;
	void (*mutate)(struct qcow2_header *h, u64 *dev_size, size_t *len);
	enum qcow2_err expect;
	u64 value;
};

#define MUT(fn) static void fn(struct qcow2_header *h, u64 *dev, size_t *len)

MUT(m_short) { *len = 64; }

MUT(m_v3_short) { *len = 100; }

MUT(m_magic) { put_unaligned_be32(0x514649fa, &h->magic); }

MUT(m_version1) { put_unaligned_be32(1, &h->version); }

MUT(m_version4) { put_unaligned_be32(4, &h->version); }

MUT(m_cb8) { put_unaligned_be32(8, &h->cluster_bits); }

MUT(m_cb22) { put_unaligned_be32(22, &h->cluster_bits); }

MUT(m_hlen_small) { put_unaligned_be32(96, &h->header_length); }

MUT(m_hlen_unaligned) { put_unaligned_be32(108, &h->header_length); }

MUT(m_hlen_cluster) { put_unaligned_be32(CS + 8, &h->header_length); }

MUT(m_hlen_buf) { put_unaligned_be32(HDR_BUF + 8, &h->header_length); }

/* compression_type (byte 104) is past the buffer: not looked at. */
MUT(m_hlen_cut) { *len = QCOW2_HEADER_V3_LEN; h->compression_type = 2; }

MUT(m_rc_order) { put_unaligned_be32(7, &h->refcount_order); }

MUT(m_crypt) { put_unaligned_be32(2, &h->crypt_method); }

MUT(m_dirty) { put_unaligned_be64(QCOW2_INCOMPAT_DIRTY, &h->incompatible_features); }

MUT(m_corrupt) { put_unaligned_be64(QCOW2_INCOMPAT_CORRUPT, &h->incompatible_features); }

MUT(m_datafile) { put_unaligned_be64(QCOW2_INCOMPAT_DATA_FILE, &h->incompatible_features); }

MUT(m_extl2) { put_unaligned_be64(QCOW2_INCOMPAT_EXTL2, &h->incompatible_features); }

MUT(m_unknown) { put_unaligned_be64(1ULL << 5 | 1ULL << 63, &h->incompatible_features); }

MUT(m_zlib_bit)
{
	put_unaligned_be64(QCOW2_INCOMPAT_COMPRESSION, &h->incompatible_features);
}

MUT(m_zstd_nobit) { h->compression_type = QCOW2_COMPRESSION_ZSTD; }

MUT(m_ctype2)
{
	put_unaligned_be64(QCOW2_INCOMPAT_COMPRESSION, &h->incompatible_features);
	h->compression_type = 2;
}

MUT(m_backing) { put_unaligned_be64(512, &h->backing_file_offset); }

MUT(m_size) { put_unaligned_be64((1ULL << 30) + 100, &h->size); }

MUT(m_dev_small) { *dev = CS - 512; }

MUT(m_l1_small) { put_unaligned_be32(1, &h->l1_size); }

MUT(m_l1_large) { put_unaligned_be32(QCOW2_MAX_L1_BYTES / 8 + 1, &h->l1_size); }

MUT(m_l1_misaligned) { put_unaligned_be64(3 * CS + 512, &h->l1_table_offset); }

MUT(m_l1_beyond) { put_unaligned_be64(DEV_SIZE, &h->l1_table_offset); }

MUT(m_l1_zero) { put_unaligned_be64(0, &h->l1_table_offset); }

MUT(m_l1_straddle) { put_unaligned_be32(3, &h->l1_size); *dev = 3 * CS + 16; }

MUT(m_rt_misaligned) { put_unaligned_be64(CS + 4096, &h->refcount_table_offset); }

MUT(m_rt_beyond)
{
	put_unaligned_be64(DEV_SIZE - CS, &h->refcount_table_offset);
	put_unaligned_be32(2, &h->refcount_table_clusters);
}

MUT(m_rt_empty) { put_unaligned_be32(0, &h->refcount_table_clusters); }

MUT(m_rt_huge) { put_unaligned_be32(129, &h->refcount_table_clusters); }

MUT(m_sn_misaligned)
{
	put_unaligned_be32(1, &h->nb_snapshots);
	put_unaligned_be64(4 * CS + 8, &h->snapshots_offset);
}

MUT(m_sn_beyond)
{
	put_unaligned_be32(1, &h->nb_snapshots);
	put_unaligned_be64(DEV_SIZE, &h->snapshots_offset);
}

MUT(m_sn_count)
{
	put_unaligned_be32(QCOW2_MAX_SNAPSHOTS + 1, &h->nb_snapshots);
	put_unaligned_be64(4 * CS, &h->snapshots_offset);
}

static const struct refusal_case refusal_cases[] = {
	{ "short buffer", m_short, QCOW2_ERR_SHORT, 64 },
	{ "v3 header cut short", m_v3_short, QCOW2_ERR_SHORT, 100 },
	{ "bad magic", m_magic, QCOW2_ERR_MAGIC, 0x514649fa },
	{ "version 1", m_version1, QCOW2_ERR_VERSION, 1 },
	{ "version 4", m_version4, QCOW2_ERR_VERSION, 4 },
	{ "cluster_bits 8", m_cb8, QCOW2_ERR_CLUSTER_BITS, 8 },
	{ "cluster_bits 22", m_cb22, QCOW2_ERR_CLUSTER_BITS, 22 },
	{ "header_length too small", m_hlen_small, QCOW2_ERR_HEADER_LENGTH, 96 },
	{ "header_length not multiple of 8", m_hlen_unaligned, QCOW2_ERR_HEADER_LENGTH, 108 },
	{ "header_length beyond cluster", m_hlen_cluster, QCOW2_ERR_HEADER_LENGTH, CS + 8 },
	{ "header_length beyond buffer", m_hlen_buf, QCOW2_ERR_HEADER_LENGTH, HDR_BUF + 8 },
	{ "buffer ends before compression_type", m_hlen_cut, QCOW2_ERR_HEADER_LENGTH, 112 },
	{ "refcount_order 7", m_rc_order, QCOW2_ERR_REFCOUNT_ORDER, 7 },
	{ "encryption", m_crypt, QCOW2_ERR_ENCRYPTED, 2 },
	{ "dirty bit", m_dirty, QCOW2_ERR_DIRTY, QCOW2_INCOMPAT_DIRTY },
	{ "corrupt bit", m_corrupt, QCOW2_ERR_CORRUPT, QCOW2_INCOMPAT_CORRUPT },
	{ "external data file", m_datafile, QCOW2_ERR_DATA_FILE, QCOW2_INCOMPAT_DATA_FILE },
	{ "extended L2", m_extl2, QCOW2_ERR_EXTL2, QCOW2_INCOMPAT_EXTL2 },
	{ "unknown incompatible bits", m_unknown, QCOW2_ERR_UNKNOWN_INCOMPAT,
	  1ULL << 5 | 1ULL << 63 },
	{ "zlib with compression bit", m_zlib_bit, QCOW2_ERR_COMPRESSION_TYPE, 0 },
	{ "zstd without compression bit", m_zstd_nobit, QCOW2_ERR_COMPRESSION_TYPE, 1 },
	{ "compression type 2", m_ctype2, QCOW2_ERR_COMPRESSION_TYPE, 2 },
	{ "backing file", m_backing, QCOW2_ERR_BACKING_FILE, 512 },
	{ "size not sector multiple", m_size, QCOW2_ERR_SIZE, (1ULL << 30) + 100 },
	{ "device smaller than a cluster", m_dev_small, QCOW2_ERR_DEV_TOO_SMALL, CS - 512 },
	{ "l1_size too small", m_l1_small, QCOW2_ERR_L1_TOO_SMALL, 1 },
	{ "l1_size too large", m_l1_large, QCOW2_ERR_L1_TOO_LARGE, QCOW2_MAX_L1_BYTES / 8 + 1 },
	{ "L1 misaligned", m_l1_misaligned, QCOW2_ERR_L1_OFFSET, 3 * CS + 512 },
	{ "L1 beyond device", m_l1_beyond, QCOW2_ERR_L1_OFFSET, DEV_SIZE },
	{ "L1 at offset 0", m_l1_zero, QCOW2_ERR_L1_OFFSET, 0 },
	{ "L1 straddles device end", m_l1_straddle, QCOW2_ERR_L1_OFFSET, 3 * CS },
	{ "refcount table misaligned", m_rt_misaligned, QCOW2_ERR_REFTABLE_OFFSET, CS + 4096 },
	{ "refcount table beyond device", m_rt_beyond, QCOW2_ERR_REFTABLE_OFFSET, DEV_SIZE - CS },
	{ "refcount table empty", m_rt_empty, QCOW2_ERR_REFTABLE_SIZE, 0 },
	{ "refcount table too large", m_rt_huge, QCOW2_ERR_REFTABLE_SIZE, 129 },
	{ "snapshot table misaligned", m_sn_misaligned, QCOW2_ERR_SNAPSHOTS_OFFSET, 4 * CS + 8 },
	{ "snapshot table beyond device", m_sn_beyond, QCOW2_ERR_SNAPSHOTS_OFFSET, DEV_SIZE },
	{ "too many snapshots", m_sn_count, QCOW2_ERR_SNAPSHOTS_COUNT, QCOW2_MAX_SNAPSHOTS + 1 },
};

static void refusal_desc(const struct refusal_case *c, char *desc)
{
	strscpy(desc, c->name, KUNIT_PARAM_DESC_SIZE);
}

KUNIT_ARRAY_PARAM(refusal, refusal_cases, refusal_desc);

static void decode_refusal(struct kunit *test)
{
	const struct refusal_case *c = test->param_value;
	u8 *buf = kunit_kzalloc(test, HDR_BUF, GFP_KERNEL);
	struct qcow2_geometry g;
	struct qcow2_refusal why;
	u64 dev = DEV_SIZE;
	size_t len = HDR_BUF;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	make_v3(buf);
	c->mutate((struct qcow2_header *)buf, &dev, &len);
	KUNIT_EXPECT_EQ(test, qcow2_decode_header(buf, len, dev, &g, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why.err, c->expect);
	KUNIT_EXPECT_EQ(test, why.value, c->value);
	KUNIT_EXPECT_STRNEQ(test, qcow2_err_str(why.err), "Unknown error");
}

/* Every reason has its own message. */
static void err_strings(struct kunit *test)
{
	int i, j;

	for (i = 1; i < QCOW2_ERR_MAX; i++) {
		KUNIT_EXPECT_STRNEQ(test, qcow2_err_str(i), "Unknown error");
		for (j = 1; j < i; j++)
			KUNIT_EXPECT_STRNEQ(test, qcow2_err_str(i), qcow2_err_str(j));
	}
	KUNIT_EXPECT_STREQ(test, qcow2_err_str(QCOW2_ERR_MAX), "Unknown error");
}

static void table_length(struct kunit *test)
{
	u8 *buf = kunit_kzalloc(test, HDR_BUF, GFP_KERNEL);
	struct qcow2_geometry g;
	struct qcow2_refusal why;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	make_v3(buf);
	KUNIT_ASSERT_EQ(test, qcow2_decode_header(buf, HDR_BUF, DEV_SIZE, &g, &why), 0);
	KUNIT_EXPECT_EQ(test, qcow2_check_target_len(&g, ((1ULL << 30) >> 9) - 1, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why.err, QCOW2_ERR_TABLE_LENGTH);
	KUNIT_EXPECT_EQ(test, qcow2_check_target_len(&g, ((1ULL << 30) >> 9) + 1, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, qcow2_check_target_len(&g, (1ULL << 30) >> 9, &why), 0);
}

static void put_ext(u8 *p, u32 type, u32 len)
{
	put_unaligned_be32(type, p);
	put_unaligned_be32(len, p + 4);
}

static void extensions(struct kunit *test)
{
	u8 *buf = kunit_kzalloc(test, HDR_BUF, GFP_KERNEL);
	struct qcow2_geometry g;
	struct qcow2_refusal why;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	make_v3(buf);
	KUNIT_ASSERT_EQ(test, qcow2_decode_header(buf, HDR_BUF, DEV_SIZE, &g, &why), 0);

	/* Feature name table (3 entries of 48 bytes), an unknown one, end. */
	put_ext(buf + 112, QCOW2_EXT_FEATURE_TABLE, 144);
	put_ext(buf + 112 + 8 + 144, 0x12345678, 5);
	put_ext(buf + 112 + 8 + 144 + 8 + 8, QCOW2_EXT_END, 0);
	KUNIT_EXPECT_EQ(test, qcow2_check_extensions(buf, HDR_BUF, &g, &why), 0);

	/* Length running past the buffer. */
	put_ext(buf + 112 + 8 + 144, 0x12345678, HDR_BUF);
	KUNIT_EXPECT_EQ(test, qcow2_check_extensions(buf, HDR_BUF, &g, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why.err, QCOW2_ERR_EXTENSION);
	KUNIT_EXPECT_EQ(test, why.value, 112ULL + 8 + 144);

	/* A crypto header on an unencrypted image. */
	put_ext(buf + 112 + 8 + 144, QCOW2_EXT_CRYPTO, 16);
	KUNIT_EXPECT_EQ(test, qcow2_check_extensions(buf, HDR_BUF, &g, &why), -EINVAL);

	/* No end marker and fewer than 8 bytes left. */
	memset(buf + 112, 0, HDR_BUF - 112);
	put_ext(buf + 112, 0x12345678, 3968);
	KUNIT_EXPECT_EQ(test, qcow2_check_extensions(buf, HDR_BUF - 4, &g, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why.value, 112ULL + 8 + 3968);
	/* Ending exactly at the end of the cluster without a marker is fine. */
	KUNIT_EXPECT_EQ(test, qcow2_check_extensions(buf, HDR_BUF - 8, &g, &why), 0);
}

static void geometry(struct kunit *test, struct qcow2_geometry *g, u32 cb,
		     u64 dev_size)
{
	memset(g, 0, sizeof(*g));
	g->cluster_bits = cb;
	g->cluster_size = 1ULL << cb;
	g->l2_bits = cb - 3;
	g->dev_size = dev_size;
}

static void l1_entries(struct kunit *test)
{
	struct qcow2_geometry g;

	geometry(test, &g, CB, DEV_SIZE);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, 0), 0);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, 4 * CS), 0);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, 4 * CS | QCOW2_OFLAG_COPIED), 0);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, 4 * CS + 512), -EINVAL);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, 4 * CS | 1), -EINVAL);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, 4 * CS | 1ULL << 62), -EINVAL);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, 4 * CS | 1ULL << 56), -EINVAL);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, DEV_SIZE - CS), 0);
	KUNIT_EXPECT_EQ(test, qcow2_check_l1_entry(&g, DEV_SIZE), -EINVAL);
}

static void l2_entries(struct kunit *test)
{
	struct qcow2_geometry g;
	struct qcow2_l2e_info info;

	geometry(test, &g, CB, DEV_SIZE);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 0, &info), QCOW2_CLUSTER_UNALLOCATED);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, QCOW2_OFLAG_ZERO, &info),
			QCOW2_CLUSTER_ZERO_PLAIN);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 5 * CS | QCOW2_OFLAG_ZERO |
						    QCOW2_OFLAG_COPIED, &info),
			QCOW2_CLUSTER_ZERO_ALLOC);
	KUNIT_EXPECT_EQ(test, info.host_offset, 5 * CS);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 5 * CS | QCOW2_OFLAG_COPIED, &info),
			QCOW2_CLUSTER_NORMAL);
	KUNIT_EXPECT_EQ(test, info.host_offset, 5 * CS);
	KUNIT_EXPECT_TRUE(test, info.copied);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 5 * CS, &info), QCOW2_CLUSTER_NORMAL);
	KUNIT_EXPECT_FALSE(test, info.copied);
	/* Reserved bits 1-8 and 56-61. */
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 5 * CS | 2, &info), QCOW2_CLUSTER_INVALID);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 5 * CS | 1ULL << 8, &info),
			QCOW2_CLUSTER_INVALID);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 5 * CS | 1ULL << 56, &info),
			QCOW2_CLUSTER_INVALID);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 5 * CS | 1ULL << 61, &info),
			QCOW2_CLUSTER_INVALID);
	/* Misaligned, beyond the device, straddling its end. */
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, 5 * CS + 512, &info),
			QCOW2_CLUSTER_INVALID);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, DEV_SIZE, &info), QCOW2_CLUSTER_INVALID);
	g.dev_size = DEV_SIZE - 512;
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, DEV_SIZE - CS, &info),
			QCOW2_CLUSTER_INVALID);
	/* The largest offset the format can hold. */
	g.dev_size = 1ULL << 56;
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, (1ULL << 56) - CS, &info),
			QCOW2_CLUSTER_NORMAL);
	KUNIT_EXPECT_EQ(test, info.host_offset, (1ULL << 56) - CS);
}

/* Encode a compressed descriptor as QEMU does (qcow2_alloc_compressed_cluster_offset). */
static u64 compressed_l2e(u32 cb, u64 off, u64 len)
{
	u32 shift = 62 - (cb - 8);
	u64 nb_csectors = ((off + len - 1) >> 9) - (off >> 9);

	return QCOW2_OFLAG_COMPRESSED | off | nb_csectors << shift;
}

static void compressed_descriptors(struct kunit *test)
{
	struct qcow2_geometry g;
	struct qcow2_l2e_info info;
	u32 cb;

	for (cb = QCOW2_MIN_CLUSTER_BITS; cb <= QCOW2_MAX_CLUSTER_BITS; cb++) {
		u64 cs = 1ULL << cb;
		u64 off = 3 * cs + 1234;	/* compressed data is byte-aligned */
		u64 lens[] = { 1, 100, cs / 2 + 7, cs, 2 * cs - (off & 511) };
		int i;

		geometry(test, &g, cb, 1ULL << 40);
		for (i = 0; i < ARRAY_SIZE(lens); i++) {
			u64 l2e = compressed_l2e(cb, off, lens[i]);

			KUNIT_ASSERT_EQ(test, qcow2_decode_l2_entry(&g, l2e, &info),
					QCOW2_CLUSTER_COMPRESSED);
			KUNIT_EXPECT_EQ(test, info.host_offset, off);
			/* QEMU reads whole sectors: the length, less than one sector more. */
			KUNIT_EXPECT_GE(test, info.compressed_len, lens[i]);
			KUNIT_EXPECT_LT(test, info.compressed_len, lens[i] + 512);
			KUNIT_EXPECT_EQ(test, (info.host_offset + info.compressed_len) % 512, 0ULL);
		}
		/* COPIED must never be set on a compressed cluster. */
		KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, compressed_l2e(cb, off, 10) |
							    QCOW2_OFLAG_COPIED, &info),
				QCOW2_CLUSTER_INVALID);
	}
	/* Compressed data starting beyond the device. */
	geometry(test, &g, CB, DEV_SIZE);
	KUNIT_EXPECT_EQ(test, qcow2_decode_l2_entry(&g, compressed_l2e(CB, DEV_SIZE + 8, 10),
						    &info),
			QCOW2_CLUSTER_INVALID);
}

/*
 * Host runs for one remap of a multi-cluster read: only standard entries,
 * each exactly one cluster after the one before, every decode check held;
 * the entries sit at an odd address, as they may in a metadata buffer.
 */
static void l2_normal_runs(struct kunit *test)
{
	struct qcow2_geometry g;
	u8 buf[8 * sizeof(u64) + 1];
	u8 *l2 = buf + 1;
	int i;

	geometry(test, &g, CB, DEV_SIZE);
	for (i = 0; i < 8; i++)
		put_unaligned_be64((3 + i) * CS | (i & 1 ? QCOW2_OFLAG_COPIED : 0),
				   l2 + i * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 8);
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 5, 3 * CS, false), 5);
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 0, 3 * CS, false), 0);
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2 + 8, 7, 4 * CS, false), 7);
	/* The first entry is not where the run must continue. */
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 2 * CS, false), 0);
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 4 * CS, false), 0);
	/* A gap, a step back, the same cluster twice (a shared one). */
	put_unaligned_be64(9 * CS, l2 + 3 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 3);
	put_unaligned_be64(5 * CS, l2 + 3 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 3);
	put_unaligned_be64(6 * CS, l2 + 3 * sizeof(u64));
	/* Zero (allocated or not), unallocated, compressed, reserved bits. */
	put_unaligned_be64(7 * CS | QCOW2_OFLAG_ZERO, l2 + 4 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 4);
	put_unaligned_be64(0, l2 + 4 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 4);
	put_unaligned_be64(compressed_l2e(CB, 7 * CS, 512), l2 + 4 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 4);
	put_unaligned_be64(7 * CS | 2, l2 + 4 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 4);
	put_unaligned_be64(7 * CS, l2 + 4 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 8);
	/* A run ends where the device does: the last cluster is cut short. */
	g.dev_size = 11 * CS - 512;
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 7);
	g.dev_size = 11 * CS;
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 8);
	/* For a write in place: COPIED on every entry of the run. */
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, true), 0);
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2 + 8, 7, 4 * CS, true), 1);
	for (i = 0; i < 8; i++)
		put_unaligned_be64((3 + i) * CS | QCOW2_OFLAG_COPIED, l2 + i * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, true), 8);
	put_unaligned_be64(9 * CS, l2 + 6 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, true), 6);
	KUNIT_EXPECT_EQ(test, qcow2_l2_normal_run(&g, l2, 8, 3 * CS, false), 8);
}

/*
 * Zero runs: unallocated and plain zero entries in a row; a zero entry
 * with a cluster, a standard, compressed or corrupt one ends the run.
 */
static void l2_zero_runs(struct kunit *test)
{
	struct qcow2_geometry g;
	u8 buf[8 * sizeof(u64) + 1];
	u8 *l2 = buf + 1;
	int i;

	geometry(test, &g, CB, DEV_SIZE);
	for (i = 0; i < 8; i++)
		put_unaligned_be64(i & 1 ? QCOW2_OFLAG_ZERO : 0, l2 + i * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 8), 8);
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 3), 3);
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 0), 0);
	put_unaligned_be64(3 * CS | QCOW2_OFLAG_ZERO, l2 + 5 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 8), 5);
	put_unaligned_be64(3 * CS, l2 + 5 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 8), 5);
	put_unaligned_be64(compressed_l2e(CB, 7 * CS, 512), l2 + 5 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 8), 5);
	/* Reserved bits, or an offset in a zero entry without the flag's cluster. */
	put_unaligned_be64(2, l2 + 5 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 8), 5);
	put_unaligned_be64(QCOW2_OFLAG_ZERO | 512, l2 + 5 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 8), 5);
	put_unaligned_be64(0, l2 + 5 * sizeof(u64));
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2, 8), 8);
	KUNIT_EXPECT_EQ(test, qcow2_l2_zero_run(&g, l2 + 8, 7), 7);
}

/* Clusters to the end of an L2 metadata block, for every cluster size. */
static void l2_block_clusters(struct kunit *test)
{
	struct qcow2_geometry g;
	u32 cb;

	for (cb = QCOW2_MIN_CLUSTER_BITS; cb <= QCOW2_MAX_CLUSTER_BITS; cb++) {
		u64 cs = 1ULL << cb;
		/* 4 KiB blocks (512 entries), smaller ones for small clusters. */
		u32 per = (cb < 12 ? cs : 4096) / 8;

		geometry(test, &g, cb, DEV_SIZE);
		KUNIT_EXPECT_EQ(test, qcow2_l2_block_clusters(&g, 0, 12), per);
		KUNIT_EXPECT_EQ(test, qcow2_l2_block_clusters(&g, cs - 1, 12), per);
		KUNIT_EXPECT_EQ(test, qcow2_l2_block_clusters(&g, cs, 12), per - 1);
		KUNIT_EXPECT_EQ(test, qcow2_l2_block_clusters(&g, (per - 1) * cs, 12), 1U);
		KUNIT_EXPECT_EQ(test, qcow2_l2_block_clusters(&g, per * cs + cs - 1, 12), per);
		/* The next L2 table starts a block too. */
		KUNIT_EXPECT_EQ(test, qcow2_l2_block_clusters(&g, cs * (cs / 8), 12), per);
		/* 512-byte blocks: 64 entries. */
		KUNIT_EXPECT_EQ(test, qcow2_l2_block_clusters(&g, 3 * cs, 9), 61U);
	}
}

static void address_arithmetic(struct kunit *test)
{
	struct qcow2_geometry g;
	u32 cb;

	for (cb = QCOW2_MIN_CLUSTER_BITS; cb <= QCOW2_MAX_CLUSTER_BITS; cb++) {
		u64 cs = 1ULL << cb, per_l1 = cs * (cs / 8);
		u64 near = (1ULL << 56) + 3 * cs + 17;

		geometry(test, &g, cb, DEV_SIZE);
		KUNIT_EXPECT_EQ(test, qcow2_l1_entries_needed(0, cb), 0ULL);
		KUNIT_EXPECT_EQ(test, qcow2_l1_entries_needed(512, cb), 1ULL);
		KUNIT_EXPECT_EQ(test, qcow2_l1_entries_needed(per_l1, cb), 1ULL);
		KUNIT_EXPECT_EQ(test, qcow2_l1_entries_needed(per_l1 + 512, cb), 2ULL);
		/* The largest size a header can state must not overflow. */
		KUNIT_EXPECT_EQ(test, qcow2_l1_entries_needed(U64_MAX & ~511ULL, cb),
				(U64_MAX >> (2 * cb - 3)) + 1);

		KUNIT_EXPECT_EQ(test, qcow2_offset_in_cluster(&g, cs - 1), cs - 1);
		KUNIT_EXPECT_EQ(test, qcow2_offset_in_cluster(&g, cs), 0ULL);
		KUNIT_EXPECT_EQ(test, qcow2_l2_index(&g, cs * 5 + 1), 5U);
		KUNIT_EXPECT_EQ(test, qcow2_l2_index(&g, per_l1 - 1), (u32)(cs / 8 - 1));
		KUNIT_EXPECT_EQ(test, qcow2_l2_index(&g, per_l1), 0U);
		KUNIT_EXPECT_EQ(test, qcow2_l1_index(&g, per_l1 - 1), 0ULL);
		KUNIT_EXPECT_EQ(test, qcow2_l1_index(&g, per_l1), 1ULL);
		/* Offsets near 2^56 split back into the same address. */
		KUNIT_EXPECT_EQ(test, qcow2_l1_index(&g, near) * per_l1 +
				(u64)qcow2_l2_index(&g, near) * cs +
				qcow2_offset_in_cluster(&g, near), near);
	}
}

/* l1_size at exactly the bound is accepted; one more is refused. */
static void l1_size_bound(struct kunit *test)
{
	u8 *buf = kunit_kzalloc(test, HDR_BUF, GFP_KERNEL);
	struct qcow2_header *h = (struct qcow2_header *)buf;
	u32 max = QCOW2_MAX_L1_BYTES / 8;
	u64 dev = 3 * CS + QCOW2_MAX_L1_BYTES;
	struct qcow2_geometry g;
	struct qcow2_refusal why;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	make_v3(buf);
	/* The largest virtual size that l1_size can map at 64 KiB clusters. */
	put_unaligned_be64((u64)max << (2 * CB - 3), &h->size);
	put_unaligned_be32(max, &h->l1_size);
	KUNIT_EXPECT_EQ(test, qcow2_decode_header(buf, HDR_BUF, dev, &g, &why), 0);
	put_unaligned_be64(((u64)max << (2 * CB - 3)) + 512, &h->size);
	KUNIT_EXPECT_EQ(test, qcow2_decode_header(buf, HDR_BUF, dev, &g, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why.err, QCOW2_ERR_L1_TOO_SMALL);
	put_unaligned_be32(max + 1, &h->l1_size);
	KUNIT_EXPECT_EQ(test, qcow2_decode_header(buf, HDR_BUF, dev, &g, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why.err, QCOW2_ERR_L1_TOO_LARGE);
}

static struct kunit_case qcow2_format_cases[] = {
	KUNIT_CASE(decode_valid_v3),
	KUNIT_CASE(decode_valid_v2),
	KUNIT_CASE(decode_zstd),
	KUNIT_CASE_PARAM(decode_refusal, refusal_gen_params),
	KUNIT_CASE(err_strings),
	KUNIT_CASE(table_length),
	KUNIT_CASE(extensions),
	KUNIT_CASE(l1_entries),
	KUNIT_CASE(l2_entries),
	KUNIT_CASE(compressed_descriptors),
	KUNIT_CASE(l2_normal_runs),
	KUNIT_CASE(l2_zero_runs),
	KUNIT_CASE(l2_block_clusters),
	KUNIT_CASE(address_arithmetic),
	KUNIT_CASE(l1_size_bound),
	{}
};

static struct kunit_suite qcow2_format_suite = {
	.name = "dm-qcow2dedup-format",
	.test_cases = qcow2_format_cases,
};

kunit_test_suite(qcow2_format_suite);

MODULE_DESCRIPTION("KUnit tests for dm-qcow2dedup");
MODULE_LICENSE("GPL");
