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
 * A wait that never returns would hang the test run (KUnit cannot stop a
 * thread in an uninterruptible wait), so every wait runs in a thread of
 * its own with a timeout, and on a timeout the case fails and leaks what
 * the thread still uses rather than free it under it.
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

/* @wait in a thread: did it end within ENDS_WITHIN?  (If not, @w is leaked.) */
static bool ends_in_thread(struct kunit *test, struct qcow2dedup_readers *r,
			   void (*wait)(struct qcow2dedup_readers *r))
{
	struct waiter *w = start_wait_fn(test, r, wait);

	if (!wait_ended(w, ENDS_WITHIN))
		return false;
	kfree(w);
	return true;
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
	KUNIT_ASSERT_TRUE(test, ends_in_thread(test, r, qcow2dedup_readers_wait));
	b = qcow2dedup_readers_hold(r);
	KUNIT_EXPECT_EQ(test, b, 1);
	qcow2dedup_readers_unhold(r, b);
	KUNIT_ASSERT_TRUE(test, ends_in_thread(test, r, qcow2dedup_readers_wait));
	KUNIT_ASSERT_TRUE(test, ends_in_thread(test, r, qcow2dedup_readers_wait));
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
	KUNIT_ASSERT_TRUE(test, ends_in_thread(test, r, qcow2dedup_readers_end_retire));

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
	unsigned int waits, seen;	/* the waiter's */
	struct completion done;		/* the waiter's 500 ms are over */
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

/* Waits, whole and split in turn, for 500 ms; each checks its generation. */
static int stress_waiter_fn(void *data)
{
	struct stress *s = data;
	unsigned long end = jiffies + msecs_to_jiffies(500);

	while (time_before(jiffies, end)) {
		unsigned int drained;

		if (s->waits & 1) {
			qcow2dedup_readers_retire(s->r);
			usleep_range(20, 40);	/* a commit's writes */
			qcow2dedup_readers_wait_retired(s->r);
		} else {
			qcow2dedup_readers_wait(s->r);
		}
		drained = (READ_ONCE(s->r->cur) - 1) & 1;
		if (atomic_read(&s->inside[drained]))
			s->seen++;
		s->waits++;
	}
	complete(&s->done);
	return 0;
}

static void stop_holders(struct task_struct **t, unsigned int nr)
{
	while (nr)
		kthread_stop(t[--nr]);
}

static void stress_on_all_cpus(struct kunit *test)
{
	unsigned int nr = min(2 * num_online_cpus(), 16U), i;
	struct task_struct *t[16], *waiter;
	struct stress *s;

	/* Not kunit_kzalloc(): a failed case must not free it under a thread. */
	s = kzalloc(sizeof(*s), GFP_KERNEL);
	KUNIT_ASSERT_NOT_NULL(test, s);
	init_completion(&s->done);
	s->r = readers_new(test);
	for (i = 0; i < nr; i++) {
		t[i] = kthread_run(holder_fn, s, "readers-hold/%u", i);
		if (IS_ERR(t[i])) {
			stop_holders(t, i);
			KUNIT_FAIL(test, "cannot start a holder thread");
			return;
		}
	}
	waiter = kthread_run(stress_waiter_fn, s, "readers-wait");
	if (IS_ERR(waiter)) {
		stop_holders(t, nr);
		KUNIT_FAIL(test, "cannot start the waiter thread");
		return;
	}
	if (!wait_for_completion_timeout(&s->done, 60 * HZ)) {
		stop_holders(t, nr);
		KUNIT_FAIL(test, "a wait did not end with holders coming and going");
		return;
	}
	stop_holders(t, nr);
	kunit_info(test, "%u threads on %u CPUs: %ld holds, %u waits",
		   nr, num_online_cpus(), atomic_long_read(&s->holds), s->waits);
	KUNIT_EXPECT_EQ(test, s->seen, 0U);
	KUNIT_EXPECT_GT(test, s->waits, 1U);
	KUNIT_EXPECT_GT(test, atomic_long_read(&s->holds), 0L);
	readers_free(s->r);
	kfree(s);
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
