// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the pool of inflaters (io-inflaters.c): its size policy,
 * the preference for the inflater that holds the wanted cluster already,
 * growth up to its bound and the wait beyond it, waiters served in the
 * order they came, forgetting cached
 * clusters, and threads on every CPU inflating at once, each with an
 * inflater no other thread holds, each getting its own bytes.
 *
 * A get that never returns would hang the run, so gets expected to block
 * run in a thread of their own with a timeout (leaked on a timeout).
 */
#include <kunit/test.h>
#include <kunit/visibility.h>
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/slab.h>

#include "io-inflaters.h"
#include "qcow2-decompress.h"
#include "qcow2-format.h"

MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);

#define CS		4096
#define ENDS_WITHIN	(5 * HZ)
#define BLOCKED_FOR	msecs_to_jiffies(100)

/*
 * 4096 bytes of 'A' + i, compressed as QEMU does (raw deflate, window
 * 2^12): Python's zlib.compressobj(9, zlib.DEFLATED, -12).
 */
static const u8 streams[8][22] = {
	{ 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0x6c, 0xef,
	  0x5f, 0xca, 0x1e, 0x0e, 0x28, 0x00, 0x00, 0x00, 0xe0, 0xdd, 0x00 },
	{ 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0x6e, 0xef,
	  0x1f, 0xca, 0x1e, 0x0e, 0x28, 0x00, 0x00, 0x00, 0xe0, 0xdd, 0x00 },
	{ 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0x70, 0xef,
	  0xdf, 0xc9, 0x1e, 0x0e, 0x28, 0x00, 0x00, 0x00, 0xe0, 0xdd, 0x00 },
	{ 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0x72, 0xef,
	  0x9f, 0xc9, 0x1e, 0x0e, 0x28, 0x00, 0x00, 0x00, 0xe0, 0xdd, 0x00 },
	{ 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0x74, 0xef,
	  0x5f, 0xc9, 0x1e, 0x0e, 0x28, 0x00, 0x00, 0x00, 0xe0, 0xdd, 0x00 },
	{ 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0x76, 0xef,
	  0x1f, 0xc9, 0x1e, 0x0e, 0x28, 0x00, 0x00, 0x00, 0xe0, 0xdd, 0x00 },
	{ 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0x78, 0xef,
	  0xdf, 0xc8, 0x1e, 0x0e, 0x28, 0x00, 0x00, 0x00, 0xe0, 0xdd, 0x00 },
	{ 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00, 0x00, 0xc2, 0xa0, 0x7a, 0xef,
	  0x9f, 0xc8, 0x1e, 0x0e, 0x28, 0x00, 0x00, 0x00, 0xe0, 0xdd, 0x00 },
};

static struct qcow2_inflaters *pool_new(struct kunit *test, unsigned int max)
{
	struct qcow2_inflaters *p = kzalloc(sizeof(*p), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, p);
	KUNIT_ASSERT_EQ(test, qcow2_inflaters_init(p, QCOW2_COMPRESSION_ZLIB, CS, max), 0);
	KUNIT_ASSERT_EQ(test, p->nr, 1U);
	return p;
}

static void pool_free(struct qcow2_inflaters *p)
{
	qcow2_inflaters_exit(p);
	kfree(p);
}

/* Two per CPU, at least one, within the memory budget (32 MiB). */
static void size_policy(struct kunit *test)
{
	KUNIT_EXPECT_EQ(test, qcow2_inflaters_max(QCOW2_COMPRESSION_ZLIB, 65536, 2), 4U);
	KUNIT_EXPECT_EQ(test, qcow2_inflaters_max(QCOW2_COMPRESSION_ZLIB, 65536, 0), 2U);
	KUNIT_EXPECT_EQ(test, qcow2_inflaters_max(QCOW2_COMPRESSION_ZLIB, 4096, 64), 128U);
	/* Three clusters of 2 MiB and a 2 MiB zstd window each: three fit. */
	KUNIT_EXPECT_EQ(test, qcow2_inflaters_max(QCOW2_COMPRESSION_ZSTD, 2 << 20, 64), 3U);
	KUNIT_EXPECT_EQ(test, qcow2_inflaters_max(QCOW2_COMPRESSION_ZLIB, 2 << 20, 64), 5U);
}

/* A get prefers the inflater holding the cluster, else the least recently used. */
static void prefers_cached(struct kunit *test)
{
	struct qcow2_inflaters *p = pool_new(test, 3);
	struct qcow2_inflater *a, *b, *c;

	a = qcow2_inflater_get(p, 1 << 20);
	b = qcow2_inflater_get(p, 2 << 20);
	KUNIT_EXPECT_PTR_NE(test, a, b);
	KUNIT_EXPECT_EQ(test, p->nr, 2U);
	KUNIT_EXPECT_EQ(test, a->cached, 0ULL);
	a->cached = 1 << 20;
	b->cached = 2 << 20;
	qcow2_inflater_put(p, a);
	qcow2_inflater_put(p, b);
	KUNIT_EXPECT_PTR_EQ(test, qcow2_inflater_get(p, 1 << 20), a);
	KUNIT_EXPECT_EQ(test, a->cached, 1ULL << 20);
	qcow2_inflater_put(p, a);
	KUNIT_EXPECT_PTR_EQ(test, qcow2_inflater_get(p, 2 << 20), b);
	qcow2_inflater_put(p, b);
	/* Neither holds it: the least recently used (a), its cluster forgotten. */
	c = qcow2_inflater_get(p, 3 << 20);
	KUNIT_EXPECT_PTR_EQ(test, c, a);
	KUNIT_EXPECT_EQ(test, c->cached, 0ULL);
	qcow2_inflater_put(p, c);
	KUNIT_EXPECT_EQ(test, p->nr, 2U);
	KUNIT_EXPECT_EQ(test, p->held, 0U);
	KUNIT_EXPECT_EQ(test, p->held_max, 2U);
	KUNIT_EXPECT_EQ(test, p->waits, 0ULL);
	KUNIT_EXPECT_EQ(test, p->grow_failures, 0ULL);
	pool_free(p);
}

/* After a forget no cached cluster counts, not even a held inflater's. */
static void forget(struct kunit *test)
{
	struct qcow2_inflaters *p = pool_new(test, 2);
	struct qcow2_inflater *a, *b;

	a = qcow2_inflater_get(p, 1 << 20);
	b = qcow2_inflater_get(p, 2 << 20);
	a->cached = 1 << 20;
	qcow2_inflater_put(p, a);
	b->cached = 2 << 20;
	qcow2_inflaters_forget(p);
	qcow2_inflater_put(p, b);
	a = qcow2_inflater_get(p, 1 << 20);
	KUNIT_EXPECT_EQ(test, a->cached, 0ULL);
	b = qcow2_inflater_get(p, 2 << 20);
	KUNIT_EXPECT_EQ(test, b->cached, 0ULL);
	/* Cached again after the forget: it counts. */
	b->cached = 2 << 20;
	qcow2_inflater_put(p, b);
	qcow2_inflater_put(p, a);
	KUNIT_EXPECT_PTR_EQ(test, qcow2_inflater_get(p, 2 << 20), b);
	KUNIT_EXPECT_EQ(test, b->cached, 2ULL << 20);
	qcow2_inflater_put(p, b);
	pool_free(p);
}

struct getter {
	struct qcow2_inflaters *p;
	struct qcow2_inflater *got;
	struct completion done;
};

static int getter_fn(void *data)
{
	struct getter *g = data;

	g->got = qcow2_inflater_get(g->p, 5 << 20);
	complete(&g->done);
	return 0;
}

/* The pool grows to its bound; a get beyond waits for the next put. */
static void waits_at_max(struct kunit *test)
{
	struct qcow2_inflaters *p = pool_new(test, 2);
	struct qcow2_inflater *a, *b;
	struct task_struct *t;
	struct getter *g;
	int i;

	a = qcow2_inflater_get(p, 1 << 20);
	b = qcow2_inflater_get(p, 2 << 20);
	KUNIT_EXPECT_EQ(test, p->nr, 2U);
	g = kzalloc(sizeof(*g), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, g);
	g->p = p;
	init_completion(&g->done);
	t = kthread_run(getter_fn, g, "inflaters-get");
	KUNIT_ASSERT_FALSE(test, IS_ERR(t));
	KUNIT_EXPECT_FALSE(test, wait_for_completion_timeout(&g->done, BLOCKED_FOR));
	/* The getter may start late under emulation: until it waits. */
	for (i = 0; i < 250 && !READ_ONCE(p->waits); i++)
		msleep(20);
	KUNIT_EXPECT_EQ(test, READ_ONCE(p->waits), 1ULL);
	KUNIT_EXPECT_FALSE(test, completion_done(&g->done));
	KUNIT_EXPECT_EQ(test, p->nr, 2U);
	qcow2_inflater_put(p, b);
	if (!wait_for_completion_timeout(&g->done, ENDS_WITHIN)) {
		KUNIT_FAIL(test, "a get did not end after a put");
		return;		/* @g, @p leaked: the thread may still use them */
	}
	KUNIT_EXPECT_PTR_EQ(test, g->got, b);
	KUNIT_EXPECT_EQ(test, p->waits, 1ULL);
	KUNIT_EXPECT_EQ(test, p->held_max, 2U);
	qcow2_inflater_put(p, g->got);
	qcow2_inflater_put(p, a);
	kfree(g);
	pool_free(p);
}

static struct getter *getter_start(struct kunit *test, struct qcow2_inflaters *p)
{
	struct getter *g = kunit_kzalloc(test, sizeof(*g), GFP_KERNEL);
	struct task_struct *t;

	KUNIT_ASSERT_NOT_NULL(test, g);
	g->p = p;
	init_completion(&g->done);
	t = kthread_run(getter_fn, g, "inflaters-get");
	KUNIT_ASSERT_FALSE(test, IS_ERR(t));
	return g;
}

/* Until @p has had @waits waits (the thread may start late under emulation). */
static bool waits_reach(struct qcow2_inflaters *p, u64 waits)
{
	int i;

	for (i = 0; i < 500 && READ_ONCE(p->waits) < waits; i++)
		msleep(20);
	return READ_ONCE(p->waits) == waits;
}

/*
 * Waiters are served in the order they came, each by a put handing the
 * inflater over: it never goes idle meanwhile, where a get that came later
 * could take it first.
 */
static void served_in_order(struct kunit *test)
{
	struct qcow2_inflaters *p = pool_new(test, 1);
	struct getter *g[3];
	struct qcow2_inflater *a;
	int i;

	a = qcow2_inflater_get(p, 1 << 20);
	for (i = 0; i < 3; i++) {
		g[i] = getter_start(test, p);
		/* One at a time, so that the order they wait in is known. */
		KUNIT_ASSERT_TRUE(test, waits_reach(p, i + 1));
	}
	a->cached = 5 << 20;	/* what the getters want: it stays cached */
	for (i = 0; i < 3; i++) {
		qcow2_inflater_put(p, a);
		/* Handed over at once: still held, nothing idle to take. */
		KUNIT_EXPECT_EQ(test, p->held, 1U);
		KUNIT_EXPECT_TRUE(test, list_empty(&p->idle));
		if (!wait_for_completion_timeout(&g[i]->done, ENDS_WITHIN)) {
			KUNIT_FAIL(test, "getter %d did not get the inflater put back", i);
			return;		/* leaked: the threads may still use them */
		}
		KUNIT_EXPECT_PTR_EQ(test, g[i]->got, a);
		KUNIT_EXPECT_EQ(test, a->cached, i ? 0ULL : 5ULL << 20);
		/* The later ones still wait: this one went first. */
		if (i < 2)
			KUNIT_EXPECT_FALSE(test, completion_done(&g[i + 1]->done));
		a->cached = 7 << 20;	/* not what the next getter wants */
	}
	qcow2_inflater_put(p, a);
	KUNIT_EXPECT_EQ(test, p->held, 0U);
	KUNIT_EXPECT_EQ(test, p->waits, 3ULL);
	KUNIT_EXPECT_PTR_EQ(test, qcow2_inflater_get(p, 7 << 20), a);
	KUNIT_EXPECT_EQ(test, a->cached, 7ULL << 20);
	qcow2_inflater_put(p, a);
	pool_free(p);
}

struct stress {
	struct qcow2_inflaters *p;
	atomic_t running;
	atomic_long_t inflates;
	atomic_t wrong;			/* bytes not the thread's, or a shared inflater */
	struct completion done;
	unsigned long until;
};

struct stress_thread {
	struct stress *s;
	unsigned int id;
};

static int stress_fn(void *data)
{
	struct stress_thread *st = data;
	struct stress *s = st->s;
	u64 mine = (u64)(st->id + 1) << 20;
	u8 want = 'A' + st->id % 8;
	unsigned int n = 0;

	/* 300 ms, and at least 20 each however late the thread starts. */
	while (time_before(jiffies, s->until) || n++ < 20) {
		struct qcow2_inflater *inf = qcow2_inflater_get(s->p, mine);
		const u8 *d = inf->dbuf;
		unsigned int i;

		/* Another holder would overwrite this, or we its. */
		inf->cached = mine;
		memset(inf->dbuf, 0, CS);
		if (qcow2_decompress(inf->dc, streams[st->id % 8], sizeof(streams[0]),
				     inf->dbuf, CS))
			atomic_inc(&s->wrong);
		cond_resched();
		for (i = 0; i < CS; i++)
			if (d[i] != want)
				break;
		if (i < CS || inf->cached != mine)
			atomic_inc(&s->wrong);
		qcow2_inflater_put(s->p, inf);
		atomic_long_inc(&s->inflates);
	}
	if (atomic_dec_and_test(&s->running))
		complete(&s->done);
	kfree(st);
	return 0;
}

/*
 * Threads (three per CPU, more than the pool holds) inflate their own
 * stream for 300 ms: every output is the thread's, no inflater is held
 * twice, the pool stays within its bound and is used in full.
 */
static void stress_on_all_cpus(struct kunit *test)
{
	unsigned int nr = 3 * num_online_cpus(), max = 2 * num_online_cpus(), i;
	struct stress *s = kzalloc(sizeof(*s), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, s);
	s->p = pool_new(test, max);
	atomic_set(&s->running, nr);
	init_completion(&s->done);
	s->until = jiffies + msecs_to_jiffies(300);
	for (i = 0; i < nr; i++) {
		struct stress_thread *st = kzalloc(sizeof(*st), GFP_KERNEL);
		struct task_struct *t;

		KUNIT_ASSERT_NOT_NULL(test, st);
		st->s = s;
		st->id = i;
		t = kthread_create(stress_fn, st, "inflaters-%u", i);
		KUNIT_ASSERT_FALSE(test, IS_ERR(t));
		kthread_bind(t, i % num_online_cpus());
		wake_up_process(t);
	}
	if (!wait_for_completion_timeout(&s->done, 60 * HZ)) {
		KUNIT_FAIL(test, "the threads did not end");
		return;		/* leaked: threads may still use them */
	}
	kunit_info(test, "%u threads on %u CPUs: %ld inflates, %u inflaters (max %u), %llu waits",
		   nr, num_online_cpus(), atomic_long_read(&s->inflates), s->p->nr, max,
		   s->p->waits);
	KUNIT_EXPECT_EQ(test, atomic_read(&s->wrong), 0);
	KUNIT_EXPECT_GE(test, atomic_long_read(&s->inflates), 20L * nr);
	KUNIT_EXPECT_LE(test, s->p->nr, max);
	KUNIT_EXPECT_LE(test, s->p->held_max, max);
	KUNIT_EXPECT_EQ(test, s->p->held, 0U);
	KUNIT_EXPECT_EQ(test, s->p->grow_failures, 0ULL);
	pool_free(s->p);
	kfree(s);
}

static struct kunit_case io_inflaters_cases[] = {
	KUNIT_CASE(size_policy),
	KUNIT_CASE(prefers_cached),
	KUNIT_CASE(forget),
	KUNIT_CASE(waits_at_max),
	KUNIT_CASE(served_in_order),
	KUNIT_CASE(stress_on_all_cpus),
	{}
};

static struct kunit_suite io_inflaters_suite = {
	.name = "qcow2dedup-io-inflaters",
	.test_cases = io_inflaters_cases,
};

kunit_test_suite(io_inflaters_suite);
