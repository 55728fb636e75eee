// SPDX-License-Identifier: GPL-2.0
/*
 * The readers of host clusters, by generation: see io-readers.h.
 *
 * The protocol.  A holder reads @cur and takes a reference on that
 * generation with percpu_ref_tryget_live().  A waiter makes the other
 * generation live again (it drained at the previous wait), publishes it in
 * @cur, and only then kills the old one and waits for its release.  A
 * holder whose tryget fails has seen the kill, so it sees the new @cur on
 * its next read (the barriers pair below); a holder whose tryget succeeds
 * is counted in the generation the waiter drains.  Either way no bio that
 * looked a cluster up before the wait began is still running when it ends.
 *
 * A wait can be split: qcow2dedup_readers_retire() does the first half
 * (from then on holds go to the next generation), and
 * qcow2dedup_readers_wait_retired() the second, so that the grace period
 * of the kill overlaps the caller's own I/O.
 */
#include <kunit/visibility.h>
#include <linux/ktime.h>
#include <linux/lockdep.h>
#include <linux/rcupdate.h>

#include "io-readers.h"

static void gen_release(struct percpu_ref *ref)
{
	struct qcow2dedup_reader_gen *g = container_of(ref, struct qcow2dedup_reader_gen, ref);

	complete(&g->drained);
}

/*
 * gen[0] starts live, gen[1] drained: dead at zero, as a waiter leaves the
 * generation it waited for.
 */
int qcow2dedup_readers_init(struct qcow2dedup_readers *r)
{
	int err;

	memset(r, 0, sizeof(*r));
	mutex_init(&r->wait_lock);
	init_completion(&r->gen[0].drained);
	init_completion(&r->gen[1].drained);
	err = percpu_ref_init(&r->gen[0].ref, gen_release, PERCPU_REF_ALLOW_REINIT, GFP_KERNEL);
	if (err)
		return err;
	err = percpu_ref_init(&r->gen[1].ref, gen_release, PERCPU_REF_INIT_DEAD, GFP_KERNEL);
	if (err) {
		percpu_ref_exit(&r->gen[0].ref);
		return err;
	}
	/* PERCPU_REF_INIT_DEAD starts it at zero, as a drained generation. */
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2dedup_readers_init);

/* No holder is left, and no waiter runs. */
void qcow2dedup_readers_exit(struct qcow2dedup_readers *r)
{
	percpu_ref_exit(&r->gen[0].ref);
	percpu_ref_exit(&r->gen[1].ref);
	mutex_destroy(&r->wait_lock);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2dedup_readers_exit);

/*
 * Any context.  Returns the generation to give back to unhold.
 *
 * The read of @cur and the get are one RCU read-side section: a waiter's
 * kill drains the generation only after a grace period, so a holder that
 * read an old @cur and still got that generation is counted in the drain
 * (and cannot have got it after a later waiter made it live again, which
 * would leave its loads unordered against that waiter's changes).
 */
int qcow2dedup_readers_hold(struct qcow2dedup_readers *r)
{
	unsigned int idx;
	bool held;

	for (;;) {
		rcu_read_lock();
		/* Pairs with the waiter's store: the generation is live again. */
		idx = smp_load_acquire(&r->cur) & 1;
		held = percpu_ref_tryget_live_rcu(&r->gen[idx].ref);
		rcu_read_unlock();
		if (held)
			return idx;
		/*
		 * Killed: a waiter published the next generation before the
		 * kill; read @cur after the dead flag (pairs with its smp_mb()).
		 */
		smp_rmb();
	}
}
EXPORT_SYMBOL_IF_KUNIT(qcow2dedup_readers_hold);

/* Any context, irqs included. */
void qcow2dedup_readers_unhold(struct qcow2dedup_readers *r, int idx)
{
	percpu_ref_put(&r->gen[idx].ref);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2dedup_readers_unhold);

/* Start draining the current generation; new holds go to the other one. */
static void retire_locked(struct qcow2dedup_readers *r)
{
	unsigned int old = r->cur & 1, new = old ^ 1;

	lockdep_assert_held(&r->wait_lock);
	/* Drained at the previous wait (or at init): dead and at zero. */
	reinit_completion(&r->gen[new].drained);
	percpu_ref_reinit(&r->gen[new].ref);
	/* Holders that read the new @cur find its generation live. */
	smp_store_release(&r->cur, r->cur + 1);
	/* @cur before the dead flag: pairs with smp_rmb() in hold. */
	smp_mb();
	percpu_ref_kill(&r->gen[old].ref);
	r->retired = true;
}

static void wait_retired_locked(struct qcow2dedup_readers *r)
{
	u64 start = ktime_get_ns(), ns;

	lockdep_assert_held(&r->wait_lock);
	wait_for_completion(&r->gen[(r->cur - 1) & 1].drained);
	r->retired = false;
	ns = ktime_get_ns() - start;
	WRITE_ONCE(r->waits, r->waits + 1);
	WRITE_ONCE(r->wait_ns, r->wait_ns + ns);
	if (ns > r->wait_ns_max)
		WRITE_ONCE(r->wait_ns_max, ns);
}

/*
 * Holds taken from now on go to the next generation, and the current one
 * starts to drain: the RCU grace period of the switch runs while the caller
 * goes on (a commit writes its metadata meanwhile).  A second call before
 * qcow2dedup_readers_wait_retired() does nothing.
 */
void qcow2dedup_readers_retire(struct qcow2dedup_readers *r)
{
	mutex_lock(&r->wait_lock);
	if (!r->retired)
		retire_locked(r);
	mutex_unlock(&r->wait_lock);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2dedup_readers_retire);

/*
 * Sleeps until every hold taken before the last qcow2dedup_readers_retire()
 * is given back; without one pending, before this call.
 */
void qcow2dedup_readers_wait_retired(struct qcow2dedup_readers *r)
{
	mutex_lock(&r->wait_lock);
	if (!r->retired)
		retire_locked(r);
	wait_retired_locked(r);
	mutex_unlock(&r->wait_lock);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2dedup_readers_wait_retired);

/* Ends a retire nobody waited for (its caller failed before its wait). */
void qcow2dedup_readers_end_retire(struct qcow2dedup_readers *r)
{
	mutex_lock(&r->wait_lock);
	if (r->retired)
		wait_retired_locked(r);
	mutex_unlock(&r->wait_lock);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2dedup_readers_end_retire);

/* Sleeps until every hold taken before the call is given back. */
void qcow2dedup_readers_wait(struct qcow2dedup_readers *r)
{
	mutex_lock(&r->wait_lock);
	if (r->retired)
		wait_retired_locked(r);
	retire_locked(r);
	wait_retired_locked(r);
	mutex_unlock(&r->wait_lock);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2dedup_readers_wait);
