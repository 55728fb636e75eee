// SPDX-License-Identifier: GPL-2.0
/*
 * The hash bound of the benchmarks: how fast the kernel's crypto_shash
 * digests cluster-sized buffers with each hash the target offers, in the
 * kernel the benchmark boots (tools/testing/bench/suite runs this suite
 * alone, in the benchmark kernel).  Deduplicated writes cannot be faster
 * than this; the suite states dedup throughput as a fraction of it.
 *
 * Marked very slow (a quarter of a second per hash and cluster size, and
 * a measurement): make kunit and make kunit-x86 filter those out.  What it checks is that every
 * hash the target accepts is there and that digesting a cluster in one
 * call gives what init/update/final over its sectors gives (the target
 * hashes whole clusters; the rebuild and the verify path hash the same
 * bytes the same way).
 */
#include <crypto/hash.h>
#include <kunit/test.h>
#include <linux/ktime.h>
#include <linux/math64.h>
#include <linux/random.h>
#include <linux/sizes.h>
#include <linux/vmalloc.h>

#define BOUND_NS	(250 * NSEC_PER_MSEC)

static const char * const bound_hashes[] = {
	"sha256", "blake2b-256", "xxhash64", "sha512",
};

static const unsigned int bound_clusters[] = { 4096, 65536 };

static void hash_bound(struct kunit *test)
{
	u8 one[64], split[64];
	unsigned int h, c, i;
	void *buf;

	/* 1 MiB of random bytes, hashed cluster by cluster. */
	buf = vmalloc(SZ_1M);
	KUNIT_ASSERT_NOT_NULL(test, buf);
	get_random_bytes(buf, SZ_1M);
	for (h = 0; h < ARRAY_SIZE(bound_hashes); h++) {
		struct crypto_shash *tfm = crypto_alloc_shash(bound_hashes[h], 0, 0);
		SHASH_DESC_ON_STACK(desc, tfm);

		if (IS_ERR(tfm)) {
			vfree(buf);
			KUNIT_FAIL(test, "%s: crypto_alloc_shash failed: %ld",
				   bound_hashes[h], PTR_ERR(tfm));
			return;
		}
		desc->tfm = tfm;
		for (c = 0; c < ARRAY_SIZE(bound_clusters); c++) {
			unsigned int cs = bound_clusters[c];
			u64 bytes = 0, t0, ns;

			KUNIT_EXPECT_EQ(test, crypto_shash_digest(desc, buf, cs, one), 0);
			KUNIT_EXPECT_EQ(test, crypto_shash_init(desc), 0);
			for (i = 0; i < cs; i += 512)
				KUNIT_EXPECT_EQ(test, crypto_shash_update(desc, buf + i, 512), 0);
			KUNIT_EXPECT_EQ(test, crypto_shash_final(desc, split), 0);
			KUNIT_EXPECT_MEMEQ(test, one, split, crypto_shash_digestsize(tfm));

			t0 = ktime_get_ns();
			do {
				for (i = 0; i < SZ_1M; i += cs)
					crypto_shash_digest(desc, buf + i, cs, one);
				bytes += SZ_1M;
				cond_resched();
				ns = ktime_get_ns() - t0;
			} while (ns < BOUND_NS);
			kunit_info(test, "hash bound: %s %u %llu MB/s\n", bound_hashes[h], cs,
				   div64_u64(bytes * 1000, ns));
		}
		crypto_free_shash(tfm);
	}
	vfree(buf);
}

static struct kunit_case hash_bound_cases[] = {
	KUNIT_CASE_ATTR(hash_bound, { .speed = KUNIT_SPEED_VERY_SLOW }),
	{}
};

static struct kunit_suite hash_bound_suite = {
	.name = "dm-qcow2dedup-hash-bound",
	.test_cases = hash_bound_cases,
};

kunit_test_suite(hash_bound_suite);
