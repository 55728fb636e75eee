// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the deduplication index (dedup-index.c): ordering and
 * lookups, the per-digest lock under interleavings built step by step,
 * the referrer bookkeeping that drives COPIED (1 -> 2 -> 1), the memory
 * limit, the refcount ceiling and zero detection.
 */
#include <kunit/test.h>
#include <kunit/visibility.h>
#include <linux/hash.h>
#include <linux/rbtree.h>
#include <linux/rbtree_augmented.h>
#include <linux/string.h>

#include "dm-qcow2dedup-compat.h"
#include "dedup-index.h"

MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);

/* A digest whose bytes all derive from @n, so order follows the first byte. */
static void digest_of(u8 *d, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < DEDUP_KEY_MAX; i++)
		d[i] = (u8)(n * 37 + i * (n | 1));
}

/* Is @guest the one referrer of host cluster @host? */
static bool sole_referrer(struct dedup_index *idx, u64 host, u64 guest)
{
	struct dedup_entry *e = dedup_find_host(idx, host);

	return e && dedup_entry_state(e) == DEDUP_READY && dedup_nr_refs(e) == 1 &&
	       e->guest == guest;
}

static int index_init(struct kunit *test)
{
	struct dedup_index *idx = kunit_kzalloc(test, sizeof(*idx), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, idx);
	/* The entry cache is the module's, made by its init. */
	dedup_index_init(idx, 32, 0);
	test->priv = idx;
	return 0;
}

static void index_exit(struct kunit *test)
{
	dedup_index_destroy(test->priv);
}

/* Insert out of order; every digest is found, the tree is sorted. */
static void insert_find_order(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	static const unsigned int order[] = { 7, 3, 11, 0, 5, 9, 1, 13, 2 };
	struct dedup_entry *e, *prev = NULL;
	u8 d[DEDUP_KEY_MAX];
	struct rb_node *n;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(order); i++) {
		digest_of(d, order[i]);
		KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 100 + order[i], NULL, &e), 0);
		KUNIT_EXPECT_EQ(test, dedup_entry_state(e), DEDUP_WRITING);
	}
	KUNIT_EXPECT_EQ(test, idx->entries, (u64)ARRAY_SIZE(order));
	for (i = 0; i < ARRAY_SIZE(order); i++) {
		digest_of(d, order[i]);
		e = dedup_find(idx, d);
		KUNIT_ASSERT_NOT_NULL(test, e);
		KUNIT_EXPECT_EQ(test, dedup_entry_host(e), 100ULL + order[i]);
		KUNIT_EXPECT_PTR_EQ(test, dedup_find_host(idx, 100 + order[i]), e);
		KUNIT_EXPECT_TRUE(test, dedup_host_indexed(idx, 100 + order[i]));
	}
	digest_of(d, 4);
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d));
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 104));
	/* A digest differing in its last byte only is another key. */
	digest_of(d, 7);
	d[DEDUP_KEY_MAX - 1] ^= 1;
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d));

	for (n = rb_first(&idx->by_digest); n; n = rb_next(n)) {
		e = rb_entry(n, struct dedup_entry, node);
		if (prev)
			KUNIT_EXPECT_LT(test, memcmp(prev->key, e->key, DEDUP_KEY_MAX), 0);
		prev = e;
	}
	/* The same digest twice is a caller bug, refused. */
	digest_of(d, 5);
	KUNIT_EXPECT_EQ(test, dedup_insert_writing(idx, d, 999, NULL, &e), -EEXIST);
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 999));

	/* Removal: gone from both structures, the others stay. */
	digest_of(d, 11);
	dedup_remove(idx, dedup_find(idx, d));
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d));
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 111));
	digest_of(d, 13);
	KUNIT_EXPECT_NOT_NULL(test, dedup_find(idx, d));
	KUNIT_EXPECT_EQ(test, idx->entries, (u64)ARRAY_SIZE(order) - 1);
}

/* Digests shorter than the key are zero-padded: equal prefixes match. */
static void short_digest(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	u8 d[DEDUP_KEY_MAX], d2[DEDUP_KEY_MAX];
	struct dedup_entry *e;

	dedup_index_destroy(idx);
	dedup_index_init(idx, 8, 0);
	memset(d, 0xab, sizeof(d));
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 1, NULL, &e), 0);
	memset(d2, 0xab, 8);
	memset(d2 + 8, 0x55, sizeof(d2) - 8);	/* beyond the digest: ignored */
	KUNIT_EXPECT_PTR_EQ(test, dedup_find(idx, d2), e);
	d2[7] = 0;
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d2));
}

/*
 * The per-digest lock, step by step as two workers would interleave:
 * A misses and writes; B with the same content finds WRITING and waits;
 * A's write completes; B then shares.
 */
static void hash_lock_wait_then_share(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	struct dedup_entry *a, *seen;
	int writer_a;
	u8 d[DEDUP_KEY_MAX];
	u64 first = 0;

	digest_of(d, 1);
	KUNIT_ASSERT_NULL(test, dedup_find(idx, d));		/* A: miss */
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 50, &writer_a, &a), 0);
	seen = dedup_find(idx, d);				/* B */
	KUNIT_ASSERT_PTR_EQ(test, seen, a);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(seen), DEDUP_WRITING);
	/* B waits on A's writer, which the entry names. */
	KUNIT_EXPECT_PTR_EQ(test, dedup_entry_writer(seen), (void *)&writer_a);
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(seen), 0U);
	/* No referrer yet: a drop for the cluster changes nothing. */
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 50, 10), DEDUP_DROP_NONE);
	dedup_write_done(idx, a, 10);				/* A done */
	KUNIT_EXPECT_EQ(test, dedup_entry_state(a), DEDUP_READY);
	KUNIT_EXPECT_NULL(test, dedup_entry_writer(a));
	KUNIT_EXPECT_EQ(test, a->guest, 10ULL);			/* B requeued */
	seen = dedup_find(idx, d);
	KUNIT_ASSERT_PTR_EQ(test, seen, a);
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, seen, 20, &first, GFP_KERNEL), 1);
	KUNIT_EXPECT_EQ(test, first, 10ULL);			/* clear its COPIED */
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(a), 2U);
}

/* A's write fails: B, woken, misses and becomes the writer itself. */
static void hash_lock_writer_fails(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	struct dedup_entry *a, *b;
	int writer_a;
	u8 d[DEDUP_KEY_MAX];

	digest_of(d, 2);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 60, &writer_a, &a), 0);
	KUNIT_EXPECT_PTR_EQ(test, dedup_entry_writer(dedup_find(idx, d)), (void *)&writer_a);
	dedup_remove(idx, a);					/* requeue, forget A */
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d));
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 60));
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 61, NULL, &b), 0);
	KUNIT_EXPECT_EQ(test, dedup_entry_host(b), 61ULL);
	KUNIT_EXPECT_EQ(test, idx->entries, 1ULL);
}

/*
 * An overwrite in place, or a discard, of the only referrer races with a
 * would-be sharer: whichever the worker runs first, the sharer never
 * reaches a cluster whose contents changed or that was freed.
 */
static void overwrite_before_share(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	struct dedup_entry *a;
	u8 d[DEDUP_KEY_MAX];

	digest_of(d, 3);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 70, NULL, &a), 0);
	dedup_write_done(idx, a, 5);
	/* In place: unindexed first, so the sharer misses. */
	dedup_remove(idx, a);
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d));

	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 71, NULL, &a), 0);
	dedup_write_done(idx, a, 6);
	/* Discard of the only referrer: the entry goes at once. */
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 71, 6), DEDUP_DROP_GONE);
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d));
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 71));
	KUNIT_EXPECT_EQ(test, idx->entries, 0ULL);
}

/* COPIED transitions: 1 -> 2 names the first, 2 -> 1 names the survivor. */
static void copied_transitions(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	u64 first = ~0ULL, g;
	struct dedup_entry *e;
	u8 d[DEDUP_KEY_MAX];

	digest_of(d, 4);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 80, NULL, &e), 0);
	dedup_write_done(idx, e, 100);
	KUNIT_EXPECT_TRUE(test, sole_referrer(idx, 80, 100));
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, e, 101, &first, GFP_KERNEL), 1);
	KUNIT_EXPECT_EQ(test, first, 100ULL);
	KUNIT_EXPECT_FALSE(test, sole_referrer(idx, 80, 100));
	KUNIT_EXPECT_EQ(test, idx->shared, 1ULL);
	/* Many referrers: the array grows. */
	for (g = 102; g < 110; g++)
		KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, e, g, &first, GFP_KERNEL), (int)(g - 100));
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(e), 10U);
	KUNIT_EXPECT_EQ(test, idx->extra_refs, 9ULL);
	/* A referrer the index never knew: nothing. */
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 80, 999), DEDUP_DROP_NONE);
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 81, 100), DEDUP_DROP_NONE);
	/* Drop all but 105, in a scattered order. */
	for (g = 100; g < 110; g++) {
		if (g == 105 || g == 107)
			continue;
		KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 80, g),
				DEDUP_DROP_SHARED);
	}
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 80, 107), DEDUP_DROP_UNIQUE);
	KUNIT_EXPECT_EQ(test, e->guest, 105ULL);
	KUNIT_EXPECT_TRUE(test, sole_referrer(idx, 80, 105));
	KUNIT_EXPECT_EQ(test, idx->shared, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->extra_refs, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->array_bytes, 0ULL);
	/* And up again: the survivor is now the first. */
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, e, 200, &first, GFP_KERNEL), 1);
	KUNIT_EXPECT_EQ(test, first, 105ULL);
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 80, 105), DEDUP_DROP_UNIQUE);
	KUNIT_EXPECT_EQ(test, e->guest, 200ULL);
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 80, 200), DEDUP_DROP_GONE);
	KUNIT_EXPECT_EQ(test, idx->entries, 0ULL);
}

/*
 * An overwrite in place of an indexed cluster re-keys its entry: the host
 * stays indexed throughout (map() must never see it unindexed), the old
 * digest stops matching, the new one is a WRITING lock.
 */
static void rekey_in_place(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	u8 d1[DEDUP_KEY_MAX], d2[DEDUP_KEY_MAX], d3[DEDUP_KEY_MAX];
	struct dedup_entry *e, *other;

	digest_of(d1, 5);
	digest_of(d2, 6);
	digest_of(d3, 7);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d1, 90, NULL, &e), 0);
	dedup_write_done(idx, e, 9);
	KUNIT_ASSERT_EQ(test, dedup_rekey_writing(idx, e, d2, NULL), 0);
	KUNIT_EXPECT_TRUE(test, dedup_host_indexed(idx, 90));
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d1));
	KUNIT_EXPECT_PTR_EQ(test, dedup_find(idx, d2), e);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(e), DEDUP_WRITING);
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(e), 0U);
	dedup_write_done(idx, e, 9);
	KUNIT_EXPECT_TRUE(test, sole_referrer(idx, 90, 9));
	KUNIT_EXPECT_EQ(test, idx->entries, 1ULL);
	/* Re-keying onto a digest another entry has: refused, entry gone. */
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d3, 91, NULL, &other), 0);
	KUNIT_EXPECT_EQ(test, dedup_rekey_writing(idx, e, d3, NULL), -EEXIST);
	KUNIT_EXPECT_FALSE(test, dedup_host_indexed(idx, 90));
	KUNIT_EXPECT_PTR_EQ(test, dedup_find(idx, d3), other);
	KUNIT_EXPECT_EQ(test, idx->entries, 1ULL);
}

/*
 * A cluster with two referrers is never re-keyed for an in-place write:
 * the other guest cluster would see the new contents (a crafted image
 * with COPIED on both reaches this).  Nothing changes.
 */
static void rekey_refuses_shared(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	u8 d1[DEDUP_KEY_MAX], d2[DEDUP_KEY_MAX];
	struct dedup_entry *e;
	u64 first;

	digest_of(d1, 20);
	digest_of(d2, 21);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d1, 95, NULL, &e), 0);
	dedup_write_done(idx, e, 9);
	KUNIT_ASSERT_EQ(test, dedup_add_ref(idx, e, 10, &first, GFP_KERNEL), 1);
	KUNIT_EXPECT_EQ(test, dedup_rekey_writing(idx, e, d2, NULL), -EBUSY);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(e), DEDUP_READY);
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(e), 2U);
	KUNIT_EXPECT_PTR_EQ(test, dedup_find(idx, d1), e);
	KUNIT_EXPECT_NULL(test, dedup_find(idx, d2));
	KUNIT_EXPECT_EQ(test, idx->shared, 1ULL);
	/* Its referrers are still exact: both drops are seen. */
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 95, 10), DEDUP_DROP_UNIQUE);
	KUNIT_EXPECT_EQ(test, dedup_drop_ref(idx, 95, 9), DEDUP_DROP_GONE);

	/* Loaded or rebuilt (UNKEYED) with two referrers: refused too. */
	KUNIT_ASSERT_EQ(test, dedup_insert_unkeyed(idx, 96, NULL, &e, GFP_KERNEL), 0);
	KUNIT_ASSERT_EQ(test, dedup_add_ref(idx, e, 11, &first, GFP_KERNEL), 0);
	KUNIT_ASSERT_EQ(test, dedup_add_ref(idx, e, 12, &first, GFP_KERNEL), 1);
	KUNIT_EXPECT_EQ(test, dedup_rekey_writing(idx, e, d2, NULL), -EBUSY);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(e), DEDUP_UNKEYED);
	/* And with no referrer at all (not a guest cluster's): refused. */
	KUNIT_ASSERT_EQ(test, dedup_insert_unkeyed(idx, 97, NULL, &e, GFP_KERNEL), 0);
	KUNIT_EXPECT_EQ(test, dedup_rekey_writing(idx, e, d2, NULL), -EBUSY);
}

/*
 * A loaded entry whose cluster holds other bytes than its key says gets
 * the key of what it holds, keeping its referrers; onto a digest another
 * entry has, it goes.
 */
static void rekey_to_true_digest(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	u8 lie[DEDUP_KEY_MAX], truth[DEDUP_KEY_MAX], other_d[DEDUP_KEY_MAX];
	struct dedup_entry *e, *other;
	u64 first;

	digest_of(lie, 30);
	digest_of(truth, 31);
	digest_of(other_d, 32);
	KUNIT_ASSERT_EQ(test, dedup_insert_unkeyed(idx, 120, lie, &e, GFP_KERNEL), 0);
	KUNIT_ASSERT_EQ(test, dedup_add_ref(idx, e, 1, &first, GFP_KERNEL), 0);
	KUNIT_ASSERT_EQ(test, dedup_add_ref(idx, e, 2, &first, GFP_KERNEL), 1);
	KUNIT_ASSERT_EQ(test, dedup_key(idx, e, NULL), 0);
	KUNIT_EXPECT_TRUE(test, dedup_entry_unverified(e));
	KUNIT_ASSERT_EQ(test, dedup_rekey(idx, e, truth), 0);
	KUNIT_EXPECT_NULL(test, dedup_find(idx, lie));
	KUNIT_EXPECT_PTR_EQ(test, dedup_find(idx, truth), e);
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(e), 2U);
	KUNIT_EXPECT_FALSE(test, dedup_entry_unverified(e));
	KUNIT_EXPECT_FALSE(test, dedup_entry_persisted(e));
	/* The lying slot must be zeroed, the true key written. */
	KUNIT_EXPECT_TRUE(test, dedup_host_clearing(idx, 120));
	KUNIT_EXPECT_TRUE(test, xa_get_mark(&idx->by_host, 120, DEDUP_MARK_DIRTY));
	KUNIT_EXPECT_EQ(test, idx->entries, 1ULL);

	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, other_d, 121, NULL, &other), 0);
	KUNIT_EXPECT_EQ(test, dedup_rekey(idx, e, other_d), -EEXIST);
	KUNIT_EXPECT_PTR_EQ(test, dedup_find(idx, other_d), other);
	KUNIT_EXPECT_NULL(test, dedup_find_host(idx, 120));
	KUNIT_EXPECT_EQ(test, idx->entries, 1ULL);
	KUNIT_EXPECT_EQ(test, idx->shared, 0ULL);
	KUNIT_EXPECT_EQ(test, idx->extra_refs, 0ULL);
}

/* Referrer arrays count against the memory limit: beyond it, -ENOSPC. */
static void referrers_bounded(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	struct dedup_entry *e;
	u8 d[DEDUP_KEY_MAX];
	u64 first, g;
	int r = 0;

	dedup_index_destroy(idx);
	dedup_index_init(idx, 32, dedup_entry_bytes() + 64 * sizeof(u64));
	digest_of(d, 40);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 130, NULL, &e), 0);
	dedup_write_done(idx, e, 0);
	for (g = 1; g < 1000 && r >= 0; g++)
		r = dedup_add_ref(idx, e, g, &first, GFP_KERNEL);
	KUNIT_EXPECT_EQ(test, r, -ENOSPC);
	KUNIT_EXPECT_LE(test, dedup_index_bytes(idx), idx->limit_bytes);
	KUNIT_EXPECT_EQ(test, (u64)dedup_nr_refs(e), g - 1);
	KUNIT_EXPECT_EQ(test, idx->extra_refs, (u64)dedup_nr_refs(e) - 1);
}

/*
 * At the memory limit new content is not indexed; existing entries stay,
 * and keep taking referrers: new entries stop at three quarters of it.
 */
static void memory_limit(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	struct dedup_entry *e, *first_e = NULL;
	u8 d[DEDUP_KEY_MAX];
	unsigned int i;
	u64 first;

	dedup_index_destroy(idx);
	dedup_index_init(idx, 32, 4 * dedup_entry_bytes());
	for (i = 0; i < 3; i++) {
		digest_of(d, i);
		KUNIT_EXPECT_EQ(test, dedup_insert_writing(idx, d, i, NULL, &e), 0);
		dedup_write_done(idx, e, 100 + i);
		if (!first_e)
			first_e = e;
	}
	digest_of(d, 3);
	KUNIT_EXPECT_EQ(test, dedup_insert_writing(idx, d, 3, NULL, &e), -ENOSPC);
	KUNIT_EXPECT_EQ(test, idx->entries, 3ULL);
	KUNIT_EXPECT_LE(test, dedup_index_bytes(idx), 3 * (u64)dedup_entry_bytes());
	/* The full index still shares what it has (this failed before). */
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, first_e, 200, &first, GFP_KERNEL), 1);
	KUNIT_EXPECT_EQ(test, first, 100ULL);
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, first_e, 201, &first, GFP_KERNEL), 2);
	KUNIT_EXPECT_LE(test, dedup_index_bytes(idx), idx->limit_bytes);
	digest_of(d, 1);
	KUNIT_EXPECT_NOT_NULL(test, dedup_find(idx, d));
	/* Arrays take room from new entries too: still full after one goes. */
	dedup_remove(idx, dedup_find(idx, d));
	digest_of(d, 3);
	KUNIT_EXPECT_EQ(test, dedup_insert_writing(idx, d, 3, NULL, &e), -ENOSPC);
	/* Room again once the shared entry and its array go. */
	dedup_remove(idx, first_e);
	KUNIT_EXPECT_EQ(test, dedup_insert_writing(idx, d, 3, NULL, &e), 0);
	KUNIT_EXPECT_GE(test, dedup_entry_bytes(), sizeof(struct dedup_entry));
}

/*
 * The entry's layout: 64 bytes on 64-bit; the host cluster index and the
 * flags share a word without disturbing each other, at the largest index
 * a qcow2 offset can name; referrer arrays grow in powers of two.
 */
static void entry_layout(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	u64 host = DEDUP_HOST_MASK, first, g;
	struct dedup_entry *e;
	u8 d[DEDUP_KEY_MAX];
	int writer;

	if (IS_ENABLED(CONFIG_64BIT))
		KUNIT_EXPECT_EQ(test, sizeof(struct dedup_entry), 64UL);
	digest_of(d, 50);
	KUNIT_EXPECT_EQ(test, dedup_insert_unkeyed(idx, host + 1, d, &e, GFP_KERNEL), -ENOSPC);
	KUNIT_ASSERT_EQ(test, dedup_insert_unkeyed(idx, host, d, &e, GFP_KERNEL), 0);
	dedup_entry_set_copied_ref(e);
	KUNIT_EXPECT_EQ(test, dedup_entry_host(e), host);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(e), DEDUP_UNKEYED);
	KUNIT_EXPECT_TRUE(test, dedup_entry_persisted(e));
	KUNIT_EXPECT_TRUE(test, dedup_entry_unverified(e));
	KUNIT_EXPECT_TRUE(test, dedup_entry_copied_ref(e));
	KUNIT_EXPECT_PTR_EQ(test, dedup_find_host(idx, host), e);
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, e, 7, &first, GFP_KERNEL), 0);
	KUNIT_ASSERT_EQ(test, dedup_key(idx, e, NULL), 0);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(e), DEDUP_READY);
	KUNIT_EXPECT_EQ(test, dedup_entry_host(e), host);
	/* Referrer arrays: 3, 7, 15 slots (32, 64, 128 bytes). */
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, e, 8, &first, GFP_KERNEL), 1);
	KUNIT_EXPECT_EQ(test, first, 7ULL);
	KUNIT_EXPECT_EQ(test, idx->array_bytes, 32ULL);
	for (g = 9; g < 12; g++)
		KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, e, g, &first, GFP_KERNEL), (int)(g - 7));
	KUNIT_EXPECT_EQ(test, idx->array_bytes, 64ULL);
	for (g = 12; g < 16; g++)
		dedup_add_ref(idx, e, g, &first, GFP_KERNEL);
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(e), 9U);
	KUNIT_EXPECT_EQ(test, idx->array_bytes, 128ULL);
	KUNIT_EXPECT_EQ(test, dedup_entry_host(e), host);
	KUNIT_EXPECT_TRUE(test, dedup_entry_copied_ref(e));
	for (g = 7; g < 15; g++)
		dedup_drop_ref(idx, host, g);
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(e), 1U);
	KUNIT_EXPECT_EQ(test, e->guest, 15ULL);
	KUNIT_EXPECT_EQ(test, idx->array_bytes, 0ULL);
	/* Rewritten in place: WRITING, no referrer, the writer named. */
	digest_of(d, 51);
	KUNIT_ASSERT_EQ(test, dedup_rekey_writing(idx, e, d, &writer), 0);
	KUNIT_EXPECT_PTR_EQ(test, dedup_entry_writer(e), (void *)&writer);
	KUNIT_EXPECT_EQ(test, dedup_nr_refs(e), 0U);
	KUNIT_EXPECT_FALSE(test, dedup_entry_persisted(e));
	KUNIT_EXPECT_FALSE(test, dedup_entry_unverified(e));
	KUNIT_EXPECT_EQ(test, dedup_entry_host(e), host);
	KUNIT_EXPECT_TRUE(test, dedup_host_clearing(idx, host));
	dedup_write_done(idx, e, 16);
	KUNIT_EXPECT_TRUE(test, sole_referrer(idx, host, 16));
}

/* The refcount ceiling of every width: 2^bits - 1 takes no more. */
static void refcount_ceiling(struct kunit *test)
{
	u32 order;

	for (order = 0; order <= 6; order++) {
		u64 max = order == 6 ? U64_MAX : (1ULL << (1U << order)) - 1;

		KUNIT_EXPECT_TRUE(test, dedup_below_ceiling(max - 1, order));
		KUNIT_EXPECT_FALSE(test, dedup_below_ceiling(max, order));
	}
	/* 1-bit refcounts: nothing is ever shared. */
	KUNIT_EXPECT_FALSE(test, dedup_below_ceiling(1, 0));
	KUNIT_EXPECT_TRUE(test, dedup_below_ceiling(1, 4));
}

/* Which hashes may share clusters on a digest match alone. */
static void hash_verdict(struct kunit *test)
{
	static const char * const strong[] = { "sha256", "blake2b-256", "sha512",
					       "sha3-256", "blake2b-160", "rmd160" };
	static const char * const broken[] = { "md4", "md5", "sha1" };
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(strong); i++) {
		KUNIT_EXPECT_EQ(test, dedup_hash_verdict(strong[i], 20, false), DEDUP_HASH_OK);
		/* The name alone never admits a short digest. */
		KUNIT_EXPECT_EQ(test, dedup_hash_verdict(strong[i], 15, false), DEDUP_HASH_SHORT);
	}
	for (i = 0; i < ARRAY_SIZE(broken); i++) {
		KUNIT_EXPECT_EQ(test, dedup_hash_verdict(broken[i], 20, false), DEDUP_HASH_BROKEN);
		KUNIT_EXPECT_EQ(test, dedup_hash_verdict(broken[i], 20, true), DEDUP_HASH_OK);
	}
	KUNIT_EXPECT_EQ(test, dedup_hash_verdict("xxhash64", 8, false), DEDUP_HASH_SHORT);
	KUNIT_EXPECT_EQ(test, dedup_hash_verdict("xxhash64", 8, true), DEDUP_HASH_OK);
	KUNIT_EXPECT_EQ(test, dedup_hash_verdict("crc32c", 4, true), DEDUP_HASH_OK);
	/* Exact names: neither a longer name nor a prefix of one is md5. */
	KUNIT_EXPECT_EQ(test, dedup_hash_verdict("md5x", 16, false), DEDUP_HASH_OK);
	KUNIT_EXPECT_EQ(test, dedup_hash_verdict("md", 16, false), DEDUP_HASH_OK);
}

static void zero_detection(struct kunit *test)
{
	size_t len = 65536, pos;
	u8 *buf = kunit_kzalloc(test, len, GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, buf);
	KUNIT_EXPECT_TRUE(test, dedup_is_zero(buf, len));
	for (pos = 0; pos < len; pos += 4093) {
		buf[pos] = 1;
		KUNIT_EXPECT_FALSE(test, dedup_is_zero(buf, len));
		buf[pos] = 0;
	}
	buf[len - 1] = 0x80;
	KUNIT_EXPECT_FALSE(test, dedup_is_zero(buf, len));
	KUNIT_EXPECT_TRUE(test, dedup_is_zero(buf, len - 1));
}

/*
 * A key for entry @i of key_many(): pseudo-random, except that every
 * 16th shares one 8-byte prefix (a run the radix sort leaves to sort())
 * and every 50th repeats the key of entry i - 25 (a crafted table).
 */
static void many_key(u8 *key, unsigned int i)
{
	unsigned int b;
	u32 x;

	if (i % 50 == 49)
		i -= 25;
	x = i * 2654435761U + 12345;
	for (b = 0; b < DEDUP_KEY_MAX; b++) {
		x = x * 1103515245U + 12345;
		key[b] = x >> 16;
	}
	if (i % 16 == 3)
		memset(key, 0xa5, 8);
}

/* Red-black rules: no red node with a red child, one black height. */
static int rb_black_height(struct kunit *test, struct rb_node *n)
{
	int l, r;

	if (!n)
		return 1;
	if (rb_is_red(n)) {
		KUNIT_EXPECT_TRUE(test, !n->rb_left || rb_is_black(n->rb_left));
		KUNIT_EXPECT_TRUE(test, !n->rb_right || rb_is_black(n->rb_right));
	}
	l = rb_black_height(test, n->rb_left);
	r = rb_black_height(test, n->rb_right);
	KUNIT_EXPECT_EQ(test, l, r);
	return l + rb_is_black(n);
}

/*
 * dedup_key_many(): keying a loaded table at once (sorted and appended into
 * an empty tree, below and above the radix sort's threshold) and one at a
 * time (into a tree that has entries) gives a valid red-black tree in key
 * order with every key once, and refuses exactly the repeated keys.
 */
static void key_many(struct kunit *test)
{
	static const unsigned int sizes[] = { 1, 200, 5000, 5000 };
	struct dedup_index *idx = test->priv;
	unsigned int s, i;

	for (s = 0; s < ARRAY_SIZE(sizes); s++) {
		unsigned int n = sizes[s], dups = 0, nodes = 0;
		bool prefilled = s == 3;
		struct dedup_entry **es, *e, *prev = NULL;
		unsigned long refused;
		u8 key[DEDUP_KEY_MAX];
		struct rb_node *node;
		u64 host = 1;

		es = kunit_kcalloc(test, n, sizeof(*es), GFP_KERNEL);
		KUNIT_ASSERT_NOT_NULL(test, es);
		if (prefilled) {
			/* A key no other entry has: the one-at-a-time path. */
			memset(key, 0xff, sizeof(key));
			KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, key, 0, NULL, &e), 0);
		}
		for (i = 0; i < n; i++) {
			many_key(key, i);
			dups += i % 50 == 49;
			KUNIT_ASSERT_EQ(test, dedup_insert_unkeyed(idx, host++, key, &es[i],
								   GFP_KERNEL), 0);
		}
		refused = dedup_key_many(idx, es, n);
		KUNIT_EXPECT_EQ(test, refused, (unsigned long)dups);
		for (i = 0; i < refused; i++) {
			KUNIT_EXPECT_EQ(test, dedup_entry_state(es[i]), DEDUP_UNKEYED);
			KUNIT_EXPECT_TRUE(test, RB_EMPTY_NODE(&es[i]->node));
			/* Its key is in the tree: the entry that took it. */
			e = dedup_find(idx, es[i]->key);
			KUNIT_ASSERT_NOT_NULL(test, e);
			KUNIT_EXPECT_PTR_NE(test, e, es[i]);
			dedup_remove(idx, es[i]);
		}
		for (node = rb_first(&idx->by_digest); node; node = rb_next(node)) {
			e = rb_entry(node, struct dedup_entry, node);
			if (prev)
				KUNIT_EXPECT_LT(test, memcmp(prev->key, e->key, DEDUP_KEY_MAX), 0);
			KUNIT_EXPECT_PTR_EQ(test, dedup_find(idx, e->key), e);
			KUNIT_EXPECT_NE(test, dedup_entry_state(e), DEDUP_UNKEYED);
			prev = e;
			nodes++;
		}
		KUNIT_EXPECT_EQ(test, nodes, n - dups + prefilled);
		KUNIT_EXPECT_EQ(test, idx->entries, (u64)(n - dups + prefilled));
		KUNIT_EXPECT_EQ(test, idx->unkeyed, 0ULL);
		rb_black_height(test, idx->by_digest.rb_node);
		dedup_index_destroy(idx);
	}
}

/* dedup_sort_refs() against sort(): shared prefixes, both paths. */
static void sort_refs(struct kunit *test)
{
	static const unsigned int sizes[] = { 0, 1, 3000, 9000 };
	unsigned int s, i;

	for (s = 0; s < ARRAY_SIZE(sizes); s++) {
		unsigned int n = sizes[s];
		struct dedup_sort_ref *a, *tmp;
		struct dedup_entry *es;
		u32 *count;

		a = kunit_kcalloc(test, n + 1, sizeof(*a), GFP_KERNEL);
		tmp = kunit_kcalloc(test, n + 1, sizeof(*tmp), GFP_KERNEL);
		es = kunit_kcalloc(test, n + 1, sizeof(*es), GFP_KERNEL);
		count = kunit_kcalloc(test, 1 << 16, sizeof(u32), GFP_KERNEL);
		KUNIT_ASSERT_TRUE(test, a && tmp && es && count);
		for (i = 0; i < n; i++) {
			many_key(es[i].key, i);
			/* Half the keys share their first 8 bytes with others. */
			if (i & 1)
				memset(es[i].key, i % 7, 8);
			a[i].prefix = get_unaligned_be64(es[i].key);
			a[i].e = &es[i];
		}
		dedup_sort_refs(a, tmp, count, n);
		for (i = 1; i < n; i++) {
			KUNIT_EXPECT_LE(test, a[i - 1].prefix, a[i].prefix);
			KUNIT_EXPECT_LE(test, memcmp(a[i - 1].e->key, a[i].e->key,
						     DEDUP_KEY_MAX), 0);
			KUNIT_EXPECT_EQ(test, a[i].prefix, get_unaligned_be64(a[i].e->key));
		}
		/* A permutation: every entry once. */
		for (i = 0; i < n; i++)
			a[i].e->host_flags = 0;
		for (i = 0; i < n; i++)
			a[i].e->host_flags++;
		for (i = 0; i < n; i++)
			KUNIT_EXPECT_EQ(test, es[i].host_flags, 1ULL);
	}
}

/*
 * idx->changes, which an asynchronous verify read compares: it moves when
 * an entry loses its key or its memory (remove, re-key, a DEAD entry
 * freed, destroy), and only then, so that a read of a stable index stays
 * usable.
 */
static void changes_count(struct kunit *test)
{
	struct dedup_index *idx = test->priv;
	struct dedup_entry *a, *b;
	u64 sa, sb, other, first;
	u8 d[DEDUP_KEY_MAX];
	int writer;

	/* Host 12 shares no stamp bucket with hosts 10 and 11. */
	KUNIT_ASSERT_NE(test, hash_64(12, DEDUP_STAMP_BITS), hash_64(10, DEDUP_STAMP_BITS));
	KUNIT_ASSERT_NE(test, hash_64(12, DEDUP_STAMP_BITS), hash_64(11, DEDUP_STAMP_BITS));
	other = dedup_host_stamp(idx, 12);
	digest_of(d, 1);
	sa = dedup_host_stamp(idx, 10);
	sb = dedup_host_stamp(idx, 11);
	KUNIT_ASSERT_EQ(test, dedup_insert_writing(idx, d, 10, &writer, &a), 0);
	dedup_write_done(idx, a, 100);
	digest_of(d, 2);
	KUNIT_ASSERT_EQ(test, dedup_insert_unkeyed(idx, 11, d, &b, GFP_KERNEL), 0);
	KUNIT_ASSERT_EQ(test, dedup_add_ref(idx, b, 101, &first, GFP_KERNEL), 0);
	KUNIT_ASSERT_EQ(test, dedup_key(idx, b, NULL), 0);
	KUNIT_EXPECT_EQ(test, dedup_add_ref(idx, b, 102, &first, GFP_KERNEL), 1);
	dedup_set_unverified(idx, b, false);
	KUNIT_EXPECT_EQ(test, dedup_host_stamp(idx, 10), sa);
	KUNIT_EXPECT_EQ(test, dedup_host_stamp(idx, 11), sb);

	/* Re-keyed (a slot that lied): its key changed. */
	digest_of(d, 3);
	KUNIT_ASSERT_EQ(test, dedup_rekey(idx, b, d), 0);
	KUNIT_EXPECT_NE(test, dedup_host_stamp(idx, 11), sb);
	sb = dedup_host_stamp(idx, 11);
	/* Rewritten in place: a new key. */
	digest_of(d, 4);
	KUNIT_ASSERT_EQ(test, dedup_rekey_writing(idx, a, d, &writer), 0);
	KUNIT_EXPECT_NE(test, dedup_host_stamp(idx, 10), sa);
	sa = dedup_host_stamp(idx, 10);
	dedup_write_done(idx, a, 100);
	KUNIT_EXPECT_EQ(test, dedup_host_stamp(idx, 10), sa);
	/* Removed with no slot on disk: freed at once. */
	dedup_remove(idx, a);
	KUNIT_EXPECT_NE(test, dedup_host_stamp(idx, 10), sa);
	/* Removed, its slot still to zero: DEAD until it is, then freed. */
	KUNIT_EXPECT_TRUE(test, dedup_host_clearing(idx, 11));
	dedup_remove(idx, b);
	KUNIT_EXPECT_NE(test, dedup_host_stamp(idx, 11), sb);
	sb = dedup_host_stamp(idx, 11);
	KUNIT_EXPECT_EQ(test, dedup_entry_state(b), DEDUP_DEAD);
	dedup_clear_done(idx, b);
	KUNIT_EXPECT_NE(test, dedup_host_stamp(idx, 11), sb);
	/* None of it was host 12's. */
	KUNIT_EXPECT_EQ(test, dedup_host_stamp(idx, 12), other);
	/* Emptying the index changes every host's stamp. */
	sa = dedup_host_stamp(idx, 10);
	dedup_index_destroy(idx);
	KUNIT_EXPECT_NE(test, dedup_host_stamp(idx, 10), sa);
	KUNIT_EXPECT_NE(test, dedup_host_stamp(idx, 12), other);
}

static struct kunit_case dedup_index_cases[] = {
	KUNIT_CASE(insert_find_order),
	KUNIT_CASE(short_digest),
	KUNIT_CASE(hash_lock_wait_then_share),
	KUNIT_CASE(hash_lock_writer_fails),
	KUNIT_CASE(overwrite_before_share),
	KUNIT_CASE(copied_transitions),
	KUNIT_CASE(rekey_in_place),
	KUNIT_CASE(rekey_refuses_shared),
	KUNIT_CASE(rekey_to_true_digest),
	KUNIT_CASE(referrers_bounded),
	KUNIT_CASE(memory_limit),
	KUNIT_CASE(refcount_ceiling),
	KUNIT_CASE(hash_verdict),
	KUNIT_CASE(zero_detection),
	KUNIT_CASE(entry_layout),
	KUNIT_CASE(key_many),
	KUNIT_CASE(sort_refs),
	KUNIT_CASE(changes_count),
	{}
};

static struct kunit_suite dedup_index_suite = {
	.name = "dm-qcow2dedup-index",
	.init = index_init,
	.exit = index_exit,
	.test_cases = dedup_index_cases,
};

kunit_test_suite(dedup_index_suite);
