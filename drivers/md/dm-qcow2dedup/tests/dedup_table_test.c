// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the dedup table: the tree's shape, the header extension
 * (encode, decode, each way it can be damaged), finding and rewriting the
 * header extension area as QEMU lays it out, and the index's incremental
 * dirty tracking that decides which slots a flush writes or must clear.
 */
#include <kunit/test.h>
#include <kunit/visibility.h>
#include <linux/string.h>

#include "dm-qcow2dedup-compat.h"
#include "dedup-index.h"
#include "dedup-table-format.h"

MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);

#define HDR_LEN		112U	/* header_length of images QEMU creates */
#define AREA		4096U

static void geo_init(struct qcow2_geometry *g, u32 cluster_bits, u64 dev_size)
{
	memset(g, 0, sizeof(*g));
	g->version = 3;
	g->cluster_bits = cluster_bits;
	g->cluster_size = 1ULL << cluster_bits;
	g->header_length = HDR_LEN;
	g->dev_size = dev_size;
}

static void shape_math(struct kunit *test)
{
	struct qdt_shape s;

	qdt_shape_init(&s, 12);		/* 4 KiB: 128 slots, 512 pointers */
	KUNIT_EXPECT_EQ(test, s.slot_bits, 7U);
	KUNIT_EXPECT_EQ(test, s.ptr_bits, 9U);
	KUNIT_EXPECT_EQ(test, s.max_clusters, 1ULL << 25);
	/* Host cluster 70000: leaf 546, slot 112; directory 1, entry 34. */
	KUNIT_EXPECT_EQ(test, qdt_leaf_of(&s, 70000), 546ULL);
	KUNIT_EXPECT_EQ(test, qdt_slot_of(&s, 70000), 112U);
	KUNIT_EXPECT_EQ(test, qdt_dir_of(&s, 546), 1ULL);
	KUNIT_EXPECT_EQ(test, qdt_dir_slot_of(&s, 546), 34U);

	qdt_shape_init(&s, 16);		/* 64 KiB */
	KUNIT_EXPECT_EQ(test, s.slot_bits, 11U);
	KUNIT_EXPECT_EQ(test, s.max_clusters, 1ULL << 37);
	qdt_shape_init(&s, 21);		/* 2 MiB: capped by 56-bit offsets */
	KUNIT_EXPECT_EQ(test, s.max_clusters, 1ULL << 35);
	qdt_shape_init(&s, 9);		/* 512 bytes: 16 slots, 64 pointers */
	KUNIT_EXPECT_EQ(test, s.max_clusters, 1ULL << 16);
}

static void fill_info(struct qdt_info *in)
{
	memset(in, 0, sizeof(*in));
	in->flags = QDT_FLAG_OPEN;
	in->root = 5ULL << 16;
	in->entries = 123456;
	in->generation = 7;
	in->key_len = 32;
	strscpy(in->hash, "sha256", sizeof(in->hash));
}

static void ext_round_trip(struct kunit *test)
{
	struct qcow2_geometry g;
	struct qdt_info in, out;
	struct qdt_ext ext;
	enum qdt_err why;

	KUNIT_EXPECT_EQ(test, sizeof(struct qdt_ext), 72UL);
	geo_init(&g, 16, 1ULL << 30);
	fill_info(&in);
	qdt_encode_ext(&in, &ext);
	/* Big-endian on disk. */
	KUNIT_EXPECT_EQ(test, ((u8 *)&ext)[3], (u8)QDT_VERSION);
	KUNIT_EXPECT_EQ(test, ((u8 *)&ext)[7], (u8)QDT_FLAG_OPEN);
	KUNIT_ASSERT_EQ(test, qdt_decode_ext(&ext, sizeof(ext), &g, &out, &why), 0);
	KUNIT_EXPECT_EQ(test, why, QDT_OK);
	KUNIT_EXPECT_EQ(test, out.flags, in.flags);
	KUNIT_EXPECT_EQ(test, out.root, in.root);
	KUNIT_EXPECT_EQ(test, out.entries, in.entries);
	KUNIT_EXPECT_EQ(test, out.generation, in.generation);
	KUNIT_EXPECT_EQ(test, out.key_len, in.key_len);
	KUNIT_EXPECT_STREQ(test, out.hash, "sha256");
}

/* Each damaged field is refused, for the right reason. */
static void ext_damaged(struct kunit *test)
{
	struct qcow2_geometry g;
	struct qdt_info in, out;
	struct qdt_ext ext;
	enum qdt_err why;

	geo_init(&g, 16, 1ULL << 30);
	fill_info(&in);
#define EXPECT_REFUSED(mutate, reason, len) do {				\
		qdt_encode_ext(&in, &ext);					\
		mutate;								\
		KUNIT_EXPECT_EQ(test, qdt_decode_ext(&ext, len, &g, &out, &why), -EINVAL); \
		KUNIT_EXPECT_EQ(test, why, reason);				\
	} while (0)
	EXPECT_REFUSED((void)0, QDT_ERR_SHORT, sizeof(ext) - 1);
	EXPECT_REFUSED(put_unaligned_be32(2, &ext.version), QDT_ERR_VERSION, sizeof(ext));
	EXPECT_REFUSED(put_unaligned_be32(1U << 5, &ext.flags), QDT_ERR_FLAGS, sizeof(ext));
	EXPECT_REFUSED(ext.key_len = 0, QDT_ERR_KEY_LEN, sizeof(ext));
	EXPECT_REFUSED(ext.key_len = 33, QDT_ERR_KEY_LEN, sizeof(ext));
	EXPECT_REFUSED(memset(ext.hash, 'a', sizeof(ext.hash)), QDT_ERR_HASH_NAME, sizeof(ext));
	EXPECT_REFUSED(memset(ext.hash, 0, sizeof(ext.hash)), QDT_ERR_HASH_NAME, sizeof(ext));
	EXPECT_REFUSED(put_unaligned_be64(0, &ext.root_offset), QDT_ERR_OFFSET, sizeof(ext));
	/* The header cluster, a misaligned root, one past the device, bit 63. */
	EXPECT_REFUSED(put_unaligned_be64(512, &ext.root_offset), QDT_ERR_OFFSET, sizeof(ext));
	EXPECT_REFUSED(put_unaligned_be64((5ULL << 16) + 4096, &ext.root_offset),
		       QDT_ERR_OFFSET, sizeof(ext));
	EXPECT_REFUSED(put_unaligned_be64(1ULL << 30, &ext.root_offset),
		       QDT_ERR_OFFSET, sizeof(ext));
	EXPECT_REFUSED(put_unaligned_be64((5ULL << 16) | (1ULL << 63), &ext.root_offset),
		       QDT_ERR_OFFSET, sizeof(ext));
#undef EXPECT_REFUSED
	/* The last cluster of the device is a valid place. */
	KUNIT_EXPECT_TRUE(test, qdt_offset_valid(&g, (1ULL << 30) - (1ULL << 16)));
	KUNIT_EXPECT_STREQ(test, qdt_err_str(QDT_ERR_OFFSET), "table cluster offset invalid");
}

/* A header area as qemu-img lays it out: feature name table, then END. */
static u8 *qemu_like_area(struct kunit *test, u32 *end)
{
	u8 *buf = kunit_kzalloc(test, AREA, GFP_KERNEL);
	struct qcow2_feature_name *f;
	u32 off = HDR_LEN;

	KUNIT_ASSERT_NOT_NULL(test, buf);
	memset(buf, 0xaa, HDR_LEN);	/* stands for the header fields */
	put_unaligned_be32(QCOW2_EXT_FEATURE_TABLE, buf + off);
	put_unaligned_be32(2 * sizeof(*f), buf + off + 4);
	f = (void *)(buf + off + 8);
	f[0].type = 0;
	f[0].bit = 0;
	strscpy(f[0].name, "dirty bit", sizeof(f[0].name));
	f[1].type = 2;
	f[1].bit = 0;
	strscpy(f[1].name, "bitmaps", sizeof(f[1].name));
	off += 8 + 2 * sizeof(*f);
	/* An extension this target does not know, 5 bytes padded to 8. */
	put_unaligned_be32(0x12345678, buf + off);
	put_unaligned_be32(5, buf + off + 4);
	memcpy(buf + off + 8, "hello", 5);
	off += 16;
	*end = off + 8;		/* END marker: zeros */
	return buf;
}

static int count_named(const u8 *area, u32 off, u32 len, u8 type, u8 bit)
{
	const struct qcow2_feature_name *f = (const void *)(area + off);
	int n = 0;
	u32 i;

	for (i = 0; i < len / sizeof(*f); i++)
		n += f[i].type == type && f[i].bit == bit;
	return n;
}

static void ext_area_rewrite(struct kunit *test)
{
	static const struct qcow2_feature_name feat = {
		.type = 2, .bit = QCOW2_AUTOCLEAR_DEDUP_TABLE_BIT, .name = "dedup table",
	};
	struct qcow2_geometry g;
	u8 *old, *out, *again;
	struct qdt_info in;
	struct qdt_ext ext;
	u32 end, off, len, foff, flen;
	size_t new_end, end2;

	geo_init(&g, 12, 1ULL << 30);
	old = qemu_like_area(test, &end);
	out = kunit_kzalloc(test, AREA, GFP_KERNEL);
	again = kunit_kzalloc(test, AREA, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, out);
	KUNIT_ASSERT_NOT_NULL(test, again);
	KUNIT_EXPECT_EQ(test, qcow2_find_extension(old, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						   &off, &len), -ENOENT);
	fill_info(&in);
	qdt_encode_ext(&in, &ext);
	KUNIT_ASSERT_EQ(test, qcow2_rewrite_extensions(old, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						       &ext, sizeof(ext), &feat, out,
						       &new_end), 0);
	/* One feature entry (48 bytes) and the extension (8 + 72) more. */
	KUNIT_EXPECT_EQ(test, new_end, (size_t)end + 48 + 80);
	KUNIT_EXPECT_EQ(test, memcmp(out, old, HDR_LEN), 0);
	KUNIT_ASSERT_EQ(test, qcow2_find_extension(out, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						   &off, &len), 0);
	KUNIT_EXPECT_EQ(test, len, (u32)sizeof(ext));
	KUNIT_EXPECT_EQ(test, memcmp(out + off, &ext, sizeof(ext)), 0);
	KUNIT_ASSERT_EQ(test, qcow2_find_extension(out, AREA, &g, QCOW2_EXT_FEATURE_TABLE,
						   &foff, &flen), 0);
	KUNIT_EXPECT_EQ(test, flen, 3U * 48);
	KUNIT_EXPECT_EQ(test, count_named(out, foff, flen, 2, 60), 1);
	KUNIT_EXPECT_EQ(test, count_named(out, foff, flen, 2, 0), 1);
	/* The unknown extension keeps its bytes. */
	KUNIT_ASSERT_EQ(test, qcow2_find_extension(out, AREA, &g, 0x12345678, &off, &len), 0);
	KUNIT_EXPECT_EQ(test, len, 5U);
	KUNIT_EXPECT_EQ(test, memcmp(out + off, "hello", 5), 0);

	/* Rewriting replaces in place: same size, no second feature entry. */
	in.flags = 0;
	in.generation = 8;
	qdt_encode_ext(&in, &ext);
	KUNIT_ASSERT_EQ(test, qcow2_rewrite_extensions(out, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						       &ext, sizeof(ext), &feat, again,
						       &end2), 0);
	KUNIT_EXPECT_EQ(test, end2, new_end);
	KUNIT_ASSERT_EQ(test, qcow2_find_extension(again, AREA, &g, QCOW2_EXT_FEATURE_TABLE,
						   &foff, &flen), 0);
	KUNIT_EXPECT_EQ(test, count_named(again, foff, flen, 2, 60), 1);
	KUNIT_ASSERT_EQ(test, qcow2_find_extension(again, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						   &off, &len), 0);
	KUNIT_EXPECT_EQ(test, get_unaligned_be64(again + off + 24), 8ULL);

	/* No room: refused, nothing claimed. */
	KUNIT_EXPECT_EQ(test, qcow2_rewrite_extensions(old, end + 48, &g, QCOW2_EXT_DEDUP_TABLE,
						       &ext, sizeof(ext), &feat, again,
						       &end2), -ENOSPC);
	/* A length running past the area is malformed. */
	put_unaligned_be32(AREA, old + HDR_LEN + 4);
	KUNIT_EXPECT_EQ(test, qcow2_rewrite_extensions(old, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						       &ext, sizeof(ext), &feat, again,
						       &end2), -EINVAL);
	KUNIT_EXPECT_EQ(test, qcow2_find_extension(old, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						   &off, &len), -EINVAL);
}

/* Without a feature name table (hand-made images) one is added. */
static void ext_area_no_feature_table(struct kunit *test)
{
	static const struct qcow2_feature_name feat = { .type = 2, .bit = 60 };
	struct qcow2_geometry g;
	u8 *old, *out;
	u32 off, len;
	size_t end;
	u64 data = 0x0102030405060708ULL;

	geo_init(&g, 12, 1ULL << 30);
	old = kunit_kzalloc(test, AREA, GFP_KERNEL);
	out = kunit_kzalloc(test, AREA, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, old);
	KUNIT_ASSERT_NOT_NULL(test, out);
	KUNIT_ASSERT_EQ(test, qcow2_rewrite_extensions(old, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						       &data, sizeof(data), &feat, out,
						       &end), 0);
	KUNIT_EXPECT_EQ(test, end, (size_t)HDR_LEN + 56 + 16 + 8);
	KUNIT_ASSERT_EQ(test, qcow2_find_extension(out, AREA, &g, QCOW2_EXT_FEATURE_TABLE,
						   &off, &len), 0);
	KUNIT_EXPECT_EQ(test, count_named(out, off, len, 2, 60), 1);
	KUNIT_ASSERT_EQ(test, qcow2_find_extension(out, AREA, &g, QCOW2_EXT_DEDUP_TABLE,
						   &off, &len), 0);
	KUNIT_EXPECT_EQ(test, memcmp(out + off, &data, sizeof(data)), 0);
}

/*
 * The last extension's padding runs past the area (no room for an end
 * marker) after an extension that the rewrite shrinks: refused, without
 * reading past the area (the buffer has its exact size, for KASAN).
 */
static void ext_area_padding_past_end(struct kunit *test)
{
	static const struct qcow2_feature_name feat = { .type = 2, .bit = 60 };
	const u32 end = HDR_LEN + 88 + 8 + 29;
	struct qcow2_geometry g;
	struct qcow2_refusal why;
	struct qdt_info in;
	struct qdt_ext ext;
	u8 *old, *out;
	size_t new_end;

	geo_init(&g, 12, 1ULL << 30);
	old = kunit_kzalloc(test, end, GFP_KERNEL);
	out = kunit_kzalloc(test, end, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, old);
	KUNIT_ASSERT_NOT_NULL(test, out);
	/* A dedup table extension of 80 bytes, then 29 bytes padded to 32. */
	put_unaligned_be32(QCOW2_EXT_DEDUP_TABLE, old + HDR_LEN);
	put_unaligned_be32(80, old + HDR_LEN + 4);
	put_unaligned_be32(0x12345678, old + HDR_LEN + 88);
	put_unaligned_be32(29, old + HDR_LEN + 92);
	/* As QEMU, the walk accepts an area that ends without a marker. */
	KUNIT_EXPECT_EQ(test, qcow2_check_extensions(old, end, &g, &why), 0);
	fill_info(&in);
	qdt_encode_ext(&in, &ext);
	KUNIT_EXPECT_EQ(test, qcow2_rewrite_extensions(old, end, &g, QCOW2_EXT_DEDUP_TABLE,
						       &ext, sizeof(ext), &feat, out,
						       &new_end), -EINVAL);
}

/* Damaged roots, directories and leaves are refused, for the right reason. */
static void tree_damaged(struct kunit *test)
{
	struct qcow2_geometry g;
	struct qdt_shape sh;
	enum qdt_err why;
	u8 *buf;

	geo_init(&g, 12, 1ULL << 30);	/* 262144 clusters */
	qdt_shape_init(&sh, 12);
	buf = kunit_kzalloc(test, 4096, GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, buf);

	/* Directory: 4 leaves in use, entries 0 and 3 set. */
	put_unaligned_be64(8ULL << 12, buf);
	put_unaligned_be64(9ULL << 12, buf + 3 * 8);
	KUNIT_EXPECT_EQ(test, qdt_check_pointers(&g, buf, 4, &why), 0);
	/* An entry past what the device needs. */
	KUNIT_EXPECT_EQ(test, qdt_check_pointers(&g, buf, 3, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why, QDT_ERR_RANGE);
	/* Misaligned, beyond the device, the header cluster. */
	put_unaligned_be64((9ULL << 12) + 512, buf + 3 * 8);
	KUNIT_EXPECT_EQ(test, qdt_check_pointers(&g, buf, 4, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why, QDT_ERR_OFFSET);
	put_unaligned_be64(1ULL << 30, buf + 3 * 8);
	KUNIT_EXPECT_EQ(test, qdt_check_pointers(&g, buf, 4, &why), -EINVAL);
	put_unaligned_be64(0, buf + 3 * 8);
	put_unaligned_be64(0, buf);
	KUNIT_EXPECT_EQ(test, qdt_check_pointers(&g, buf, 4, &why), 0);

	/* Leaf 2 describes clusters 256..383. */
	memset(buf, 0, 4096);
	buf[5 * QDT_SLOT_SIZE] = 1;
	KUNIT_EXPECT_EQ(test, qdt_check_leaf(&sh, buf, 2, 262144, &why), 0);
	/* Its slot 5 (cluster 261) beyond a device of 261 clusters. */
	KUNIT_EXPECT_EQ(test, qdt_check_leaf(&sh, buf, 2, 261, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, why, QDT_ERR_RANGE);
	KUNIT_EXPECT_EQ(test, qdt_check_leaf(&sh, buf, 2, 262, &why), 0);
	/* Slot 0 of leaf 0 is the header cluster: never indexed. */
	memset(buf, 0, 4096);
	buf[QDT_SLOT_SIZE - 1] = 1;
	KUNIT_EXPECT_EQ(test, qdt_check_leaf(&sh, buf, 0, 262144, &why), -EINVAL);
	KUNIT_EXPECT_EQ(test, qdt_check_leaf(&sh, buf, 1, 262144, &why), 0);
}

static void slot_empty(struct kunit *test)
{
	u8 slot[QDT_SLOT_SIZE] = {};

	KUNIT_EXPECT_TRUE(test, qdt_slot_empty(slot));
	slot[QDT_SLOT_SIZE - 1] = 1;
	KUNIT_EXPECT_FALSE(test, qdt_slot_empty(slot));
}

static void key_of(u8 *d, unsigned int n)
{
	memset(d, 0, DEDUP_KEY_MAX);
	d[0] = n;
	d[DEDUP_KEY_MAX - 1] = n ^ 0x5a;
}

/*
 * Which slots a flush writes (READY, not persisted: marked dirty) and which
 * it must zero (persisted, then removed or re-keyed), step by step.
 */
static void dirty_tracking(struct kunit *test)
{
	struct dedup_index *idx = kunit_kzalloc(test, sizeof(*idx), GFP_KERNEL);
	struct dedup_entry *a, *b, *c;
	u8 d[DEDUP_KEY_MAX];
	u64 first;

	KUNIT_ASSERT_NOT_NULL(test, idx);
	dedup_index_init(idx, 32, 0);

	/* A new cluster: WRITING is not dirty, READY is. */
	key_of(d, 1);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 10, NULL, &a), 0);
	KUNIT_EXPECT_EQ(test, idx->dirty, 0ULL);
	dedup_write_done(idx, a, 100);
	KUNIT_EXPECT_EQ(test, idx->dirty, 1ULL);
	KUNIT_EXPECT_TRUE(test, xa_get_mark(&idx->by_host, 10, DEDUP_MARK_DIRTY));
	/* Sharing it changes no slot. */
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, a, 101, &first, GFP_KERNEL), 1);
	KUNIT_EXPECT_EQ(test, idx->dirty, 1ULL);
	/* The flush wrote it. */
	dedup_set_persisted(idx, a);
	KUNIT_EXPECT_EQ(test, idx->dirty, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->persisted, 1ULL);
	KUNIT_EXPECT_FALSE(test, xa_get_mark(&idx->by_host, 10, DEDUP_MARK_DIRTY));

	/*
	 * Unshared and gone: its slot must be zeroed, once.  Until then the
	 * entry stays DEAD: found by no lookup, but map() keeps away.
	 */
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 10, 101), DEDUP_DROP_UNIQUE);
	KUNIT_EXPECT_EQ(test, idx->nr_clears, 0ULL);
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 10, 100), DEDUP_DROP_GONE);
	KUNIT_EXPECT_EQ(test, idx->nr_clears, 1ULL);
	KUNIT_EXPECT_TRUE(test, dedup_host_clearing(idx, 10));
	KUNIT_EXPECT_TRUE(test, dedup_host_indexed(idx, 10));
	KUNIT_EXPECT_NULL(test, dedup_find_host(idx, 10));
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d));
	KUNIT_EXPECT_EQ(test, idx->persisted, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->entries, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->dead, 1ULL);
	/* A drop for a DEAD cluster changes nothing. */
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 10, 100), DEDUP_DROP_NONE);
	/* The table zeroed the slot: the entry goes for good. */
	dedup_clear_done(idx, xa_load(&idx->by_host, 10));
	KUNIT_EXPECT_EQ(test, idx->nr_clears, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->dead, 0ULL);
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 10));
	KUNIT_EXPECT_FALSE(test, dedup_host_clearing(idx, 10));
	/* A slot the load dropped, without an entry: recorded once. */
	KUNIT_EXPECT_EQ(test, dedup_record_clear(idx, 11, GFP_KERNEL), 0);
	KUNIT_EXPECT_EQ(test, dedup_record_clear(idx, 11, GFP_KERNEL), 0);
	KUNIT_EXPECT_EQ(test, idx->nr_clears, 1ULL);
	KUNIT_EXPECT_TRUE(test, dedup_host_clearing(idx, 11));
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 11));

	/* A never-persisted entry removed: nothing to clear. */
	key_of(d, 2);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 20, NULL, &b), 0);
	dedup_write_done(idx, b, 200);
	dedup_remove(idx, b);
	KUNIT_EXPECT_EQ(test, idx->nr_clears, 1ULL);
	KUNIT_EXPECT_EQ(test, idx->dirty, 0ULL);

	/* Loaded from the table: persisted, keyed without becoming dirty. */
	key_of(d, 3);
	KUNIT_ASSERT_EQ(test, dedup_insert_unkeyed(idx, 30, d, &c, GFP_KERNEL), 0);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(c), DEDUP_UNKEYED);
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d));
	KUNIT_EXPECT_TRUE(test, dedup_host_indexed(idx, 30));
	/* A slot read from an image is a hint until its cluster is compared. */
	KUNIT_EXPECT_TRUE(test, dedup_entry_unverified(c));
	KUNIT_EXPECT_EQ(test, idx->unverified, 1ULL);
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, c, 300, &first, GFP_KERNEL), 0);
	KUNIT_ASSERT_EQ(test, dedup_key(idx, c, NULL), 0);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(c), DEDUP_READY);
	KUNIT_EXPECT_PTR_EQ(test, dedup_find(idx, d), c);
	KUNIT_EXPECT_EQ(test, idx->dirty, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->persisted, 1ULL);
	dedup_set_unverified(idx, c, true);
	KUNIT_EXPECT_EQ(test, idx->unverified, 1ULL);
	/* Overwritten in place: the old slot goes, the new key is dirty later. */
	key_of(d, 4);
	KUNIT_ASSERT_EQ(test, dedup_rekey_writing(idx, c, d, NULL), 0);
	KUNIT_EXPECT_EQ(test, idx->nr_clears, 2ULL);
	KUNIT_EXPECT_TRUE(test, dedup_host_clearing(idx, 30));
	KUNIT_EXPECT_PTR_EQ(test, dedup_find_host(idx, 30), c);
	KUNIT_EXPECT_FALSE(test, dedup_entry_persisted(c));
	KUNIT_EXPECT_FALSE(test, dedup_entry_unverified(c));
	KUNIT_EXPECT_EQ(test, idx->unverified, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->dirty, 0ULL);
	dedup_write_done(idx, c, 300);
	KUNIT_EXPECT_EQ(test, idx->dirty, 1ULL);

	/* A rebuilt cluster whose digest another entry has stays unkeyed. */
	KUNIT_ASSERT_EQ(test, dedup_insert_unkeyed(idx, 40, NULL, &b, GFP_KERNEL), 0);
	KUNIT_EXPECT_FALSE(test, dedup_entry_persisted(b));
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, b, 400, &first, GFP_KERNEL), 0);
	KUNIT_EXPECT_EQ(test, dedup_key(idx, b, d), -EEXIST);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(b), DEDUP_UNKEYED);
	KUNIT_EXPECT_EQ(test, idx->unkeyed, 1ULL);
	/* Its guest cluster rewritten meanwhile: the entry goes. */
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 40, 400), DEDUP_DROP_GONE);
	KUNIT_EXPECT_EQ(test, idx->unkeyed, 0ULL);
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 40));
	KUNIT_EXPECT_EQ(test, idx->entries, 1ULL);
	dedup_index_destroy(idx);
}

static struct kunit_case dedup_table_cases[] = {
	KUNIT_CASE(shape_math),
	KUNIT_CASE(ext_round_trip),
	KUNIT_CASE(ext_damaged),
	KUNIT_CASE(ext_area_rewrite),
	KUNIT_CASE(ext_area_no_feature_table),
	KUNIT_CASE(ext_area_padding_past_end),
	KUNIT_CASE(tree_damaged),
	KUNIT_CASE(slot_empty),
	KUNIT_CASE(dirty_tracking),
	{}
};

static struct kunit_suite dedup_table_suite = {
	.name = "dm-qcow2dedup-table",
	.test_cases = dedup_table_cases,
};

kunit_test_suite(dedup_table_suite);
