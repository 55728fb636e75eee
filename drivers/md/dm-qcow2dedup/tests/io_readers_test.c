// SPDX-License-Identifier: GPL-2.0
/*
 * KUnit tests for the readers of host clusters (io-readers.c): a wait
 * drains exactly the holds taken before it, holds taken during a wait go to
 * the next generation and do not delay it, a wait split around a commit
 * (retire, then wait) drains what was held at the retire, a hold given back from a hard
 * interrupt ends a wait (what Tiny SRCU got wrong), and, with threads on
 * every CPU holding and giving back while waits run, no hold of a drained
 * generation is ever seen after its wait returned.
 *
 * A wait that never returns would leave a thread blocked on the structure,
 * so the waits run in threads with a timeout, and on a timeout the test
 * fails and leaks the structure rather than free it under the thread.
 */
#include <kunit/test.h>
#include <kunit/visibility.h>
#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/hrtimer.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/slab.h>

#include "io-readers.h"

MODULE_IMPORT_NS(EXPORTED_FOR_KUNIT_TESTING);

/* How long a wait that should end may take, and one that should not is watched. */
#define ENDS_WITHIN	(5 * HZ)
#define BLOCKED_FOR	msecs_to_jiffies(100)

struct waiter {
	struct qcow2dedup_readers *r;
	void (*wait)(struct qcow2dedup_readers *r);
	struct completion done;
};

static int waiter_fn(void *data)
{
	struct waiter *w = data;

	w->wait(w->r);
	complete(&w->done);
	return 0;
}

/* @wait in a thread of its own; @w outlives it (leaked on a timeout). */
static struct waiter *start_wait_fn(struct kunit *test, struct qcow2dedup_readers *r,
				    void (*wait)(struct qcow2dedup_readers *r))
{
	struct waiter *w = kzalloc(sizeof(*w), GFP_KERNEL);
	struct task_struct *t;

	KUNIT_ASSERT_NOT_NULL(test, w);
	w->r = r;
	w->wait = wait;
	init_completion(&w->done);
	t = kthread_run(waiter_fn, w, "readers-wait");
	KUNIT_ASSERT_FALSE(test, IS_ERR(t));
	return w;
}

static struct waiter *start_wait(struct kunit *test, struct qcow2dedup_readers *r)
{
	return start_wait_fn(test, r, qcow2dedup_readers_wait);
}

static bool wait_ended(struct waiter *w, unsigned long timeout)
{
	return wait_for_completion_timeout(&w->done, timeout);
}

static struct qcow2dedup_readers *readers_new(struct kunit *test)
{
	struct qcow2dedup_readers *r = kzalloc(sizeof(*r), GFP_KERNEL);

	KUNIT_ASSERT_NOT_NULL(test, r);
	KUNIT_ASSERT_EQ(test, qcow2dedup_readers_init(r), 0);
	return r;
}

static void readers_free(struct qcow2dedup_readers *r)
{
	qcow2dedup_readers_exit(r);
	kfree(r);
}

/* With nothing held a wait returns, and each wait moves holds on a generation. */
static void generations(struct kunit *test)
{
	struct qcow2dedup_readers *r = readers_new(test);
	int a, b;

	a = qcow2dedup_readers_hold(r);
	KUNIT_EXPECT_EQ(test, a, 0);
	qcow2dedup_readers_unhold(r, a);
	qcow2dedup_readers_wait(r);
	b = qcow2dedup_readers_hold(r);
	KUNIT_EXPECT_EQ(test, b, 1);
	qcow2dedup_readers_unhold(r, b);
	qcow2dedup_readers_wait(r);
	qcow2dedup_readers_wait(r);
	KUNIT_EXPECT_EQ(test, qcow2dedup_readers_hold(r), 1);
	qcow2dedup_readers_unhold(r, 1);
	KUNIT_EXPECT_EQ(test, r->waits, 3ULL);
	readers_free(r);
}

/* A wait ends when the holds before it end, not those taken during it. */
static void wait_drains_old_only(struct kunit *test)
{
	struct qcow2dedup_readers *r = readers_new(test);
	unsigned long deadline = jiffies + ENDS_WITHIN;
	struct waiter *w1, *w2;
	int a, b;

	a = qcow2dedup_readers_hold(r);
	w1 = start_wait(test, r);
	KUNIT_EXPECT_FALSE(test, wait_ended(w1, BLOCKED_FOR));
	/* The waiter published the next generation before it blocked. */
	while (!READ_ONCE(r->cur) && time_before(jiffies, deadline))
		usleep_range(1000, 2000);
	b = qcow2dedup_readers_hold(r);
	KUNIT_EXPECT_NE(test, a, b);
	qcow2dedup_readers_unhold(r, a);
	/* @b, taken during the wait, is still held. */
	if (!wait_ended(w1, ENDS_WITHIN)) {
		KUNIT_FAIL(test, "a wait did not end when the hold before it ended");
		return;
	}
	kfree(w1);

	w2 = start_wait(test, r);
	KUNIT_EXPECT_FALSE(test, wait_ended(w2, BLOCKED_FOR));
	qcow2dedup_readers_unhold(r, b);
	if (!wait_ended(w2, ENDS_WITHIN)) {
		KUNIT_FAIL(test, "a wait did not end when the hold before it ended");
		return;
	}
	kfree(w2);
	readers_free(r);
}

/*
 * A split wait (a commit retires the generation before it writes, and waits
 * after): the holds before the retire delay it, those after do not; a full
 * wait afterwards waits for both.
 */
static void retire_then_wait(struct kunit *test)
{
	struct qcow2dedup_readers *r = readers_new(test);
	struct waiter *w;
	int a, b;

	a = qcow2dedup_readers_hold(r);
	qcow2dedup_readers_retire(r);
	qcow2dedup_readers_retire(r);	/* pending: does nothing */
	b = qcow2dedup_readers_hold(r);
	KUNIT_EXPECT_NE(test, a, b);
	w = start_wait_fn(test, r, qcow2dedup_readers_wait_retired);
	KUNIT_EXPECT_FALSE(test, wait_ended(w, BLOCKED_FOR));
	qcow2dedup_readers_unhold(r, a);
	if (!wait_ended(w, ENDS_WITHIN)) {
		KUNIT_FAIL(test, "a wait did not end when the holds before the retire ended");
		return;
	}
	kfree(w);
	/* Nothing pending: ends at once, although @b is held. */
	qcow2dedup_readers_end_retire(r);

	/* A retire nobody waited for, then a full wait: @b still delays it. */
	qcow2dedup_readers_retire(r);
	w = start_wait(test, r);
	KUNIT_EXPECT_FALSE(test, wait_ended(w, BLOCKED_FOR));
	qcow2dedup_readers_unhold(r, b);
	if (!wait_ended(w, ENDS_WITHIN)) {
		KUNIT_FAIL(test, "a full wait did not end when every hold before it ended");
		return;
	}
	kfree(w);
	KUNIT_EXPECT_EQ(test, r->waits, 3ULL);
	readers_free(r);
}

struct irq_unhold {
	struct hrtimer timer;
	struct qcow2dedup_readers *r;
	int idx;
};

static enum hrtimer_restart unhold_in_irq(struct hrtimer *t)
{
	struct irq_unhold *u = container_of(t, struct irq_unhold, timer);

	qcow2dedup_readers_unhold(u->r, u->idx);
	return HRTIMER_NORESTART;
}

/* end_io gives holds back in interrupt context: that must end a wait. */
static void unhold_from_hardirq(struct kunit *test)
{
	struct qcow2dedup_readers *r = readers_new(test);
	struct irq_unhold *u = kzalloc(sizeof(*u), GFP_KERNEL);
	struct waiter *w;

	KUNIT_ASSERT_NOT_NULL(test, u);
	u->r = r;
	u->idx = qcow2dedup_readers_hold(r);
	w = start_wait(test, r);
	hrtimer_init(&u->timer, CLOCK_MONOTONIC, HRTIMER_MODE_REL_HARD);
	u->timer.function = unhold_in_irq;
	hrtimer_start(&u->timer, ms_to_ktime(50), HRTIMER_MODE_REL_HARD);
	if (!wait_ended(w, ENDS_WITHIN)) {
		hrtimer_cancel(&u->timer);
		KUNIT_FAIL(test, "a hold given back in a hard interrupt did not end the wait");
		return;
	}
	hrtimer_cancel(&u->timer);
	kfree(u);
	kfree(w);
	readers_free(r);
}

/*
 * Threads hold and give back as fast as they can; each counts its hold in
 * @inside[generation] while it has it.  When a wait returns (whole or
 * split, in turn), nobody may be inside the generation it drained.
 */
struct stress {
	struct qcow2dedup_readers *r;
	atomic_t inside[2];
	atomic_long_t holds;
};

static int holder_fn(void *data)
{
	struct stress *s = data;
	unsigned int n = 0;

	while (!kthread_should_stop()) {
		int idx = qcow2dedup_readers_hold(s->r);

		atomic_inc(&s->inside[idx]);
		if (++n % 16 == 0)
			udelay(5);
		atomic_dec(&s->inside[idx]);
		qcow2dedup_readers_unhold(s->r, idx);
		atomic_long_inc(&s->holds);
		if (n % 256 == 0)
			cond_resched();
	}
	return 0;
}

static void stress_on_all_cpus(struct kunit *test)
{
	unsigned int nr = min(2 * num_online_cpus(), 16U), i, waits = 0, seen = 0;
	struct task_struct *t[16];
	unsigned long end;
	struct stress *s;

	s = kunit_kzalloc(test, sizeof(*s), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, s);
	s->r = readers_new(test);
	for (i = 0; i < nr; i++) {
		t[i] = kthread_run(holder_fn, s, "readers-hold/%u", i);
		KUNIT_ASSERT_FALSE(test, IS_ERR(t[i]));
	}
	end = jiffies + msecs_to_jiffies(500);
	while (time_before(jiffies, end)) {
		unsigned int drained;

		if (waits & 1) {
			qcow2dedup_readers_retire(s->r);
			usleep_range(20, 40);	/* a commit's writes */
			qcow2dedup_readers_wait_retired(s->r);
		} else {
			qcow2dedup_readers_wait(s->r);
		}
		drained = (READ_ONCE(s->r->cur) - 1) & 1;
		if (atomic_read(&s->inside[drained]))
			seen++;
		waits++;
	}
	for (i = 0; i < nr; i++)
		kthread_stop(t[i]);
	kunit_info(test, "%u threads on %u CPUs: %ld holds, %u waits",
		   nr, num_online_cpus(), atomic_long_read(&s->holds), waits);
	KUNIT_EXPECT_EQ(test, seen, 0U);
	KUNIT_EXPECT_GT(test, waits, 1U);
	KUNIT_EXPECT_GT(test, atomic_long_read(&s->holds), 0L);
	readers_free(s->r);
}

static struct kunit_case io_readers_cases[] = {
	KUNIT_CASE(generations),
	KUNIT_CASE(wait_drains_old_only),
	KUNIT_CASE(retire_then_wait),
	KUNIT_CASE(unhold_from_hardirq),
	KUNIT_CASE(stress_on_all_cpus),
	{}
};

static struct kunit_suite io_readers_suite = {
	.name = "qcow2dedup-io-readers",
	.test_cases = io_readers_cases,
};

kunit_test_suite(io_readers_suite);
