// SPDX-License-Identifier: GPL-2.0
/*
 * The pool of inflaters: see io-inflaters.h.
 */
#include <kunit/visibility.h>
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/minmax.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "io-inflaters.h"
#include "qcow2-decompress.h"

/*
 * Memory a pool may grow to.  Each inflater costs three clusters and a
 * workspace (about 40 KiB for deflate, 2.2 MiB for zstd): 64 KiB clusters
 * reach the CPU bound long before this, 2 MiB zstd clusters get three.
 */
#define INFLATERS_BUDGET	(32ULL << 20)

/* A get waiting for a put to hand it an inflater; on its stack. */
struct inflater_waiter {
	struct list_head node;		/* in the pool's @waiters */
	u64 host_off;			/* the cluster it wants */
	struct qcow2_inflater *inf;	/* what the put handed it */
	struct completion handed;
};

static size_t inflater_bytes(u32 compression_type, size_t cluster_size)
{
	return 3 * cluster_size + SECTOR_SIZE + qcow2_decompressor_bytes(compression_type);
}

/**
 * qcow2_inflaters_max() - how many inflaters a pool may have.
 * @compression_type: the image's.
 * @cluster_size: the image's.
 * @cpus: CPUs that may inflate at once.
 *
 * Two per CPU (each is held across the read of its compressed bytes as
 * well as the inflate), at least one, within INFLATERS_BUDGET.
 */
unsigned int qcow2_inflaters_max(u32 compression_type, size_t cluster_size,
				 unsigned int cpus)
{
	u64 fit = div64_u64(INFLATERS_BUDGET, inflater_bytes(compression_type, cluster_size));

	return clamp_t(u64, fit, 1, 2 * max(cpus, 1U));
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_inflaters_max);

static void inflater_free(struct qcow2_inflater *inf)
{
	qcow2_decompressor_destroy(inf->dc);
	kvfree(inf->cbuf);
	kvfree(inf->dbuf);
	kfree(inf);
}

static struct qcow2_inflater *inflater_new(struct qcow2_inflaters *p, gfp_t gfp)
{
	struct qcow2_inflater *inf = kzalloc(sizeof(*inf), gfp);

	if (!inf)
		return NULL;
	inf->dc = qcow2_decompressor_create(p->compression_type, gfp);
	inf->cbuf = kvmalloc(2 * p->cluster_size + SECTOR_SIZE, gfp);
	inf->dbuf = kvmalloc(p->cluster_size, gfp);
	if (!inf->dc || !inf->cbuf || !inf->dbuf) {
		inflater_free(inf);
		return NULL;
	}
	return inf;
}

/**
 * qcow2_inflaters_init() - a pool with its first inflater.
 * @p: the pool.
 * @compression_type: QCOW2_COMPRESSION_*.
 * @cluster_size: bytes one inflater inflates to.
 * @max: the most inflaters (at least one): qcow2_inflaters_max().
 *
 * Context: process context, may sleep (GFP_KERNEL).
 * Return: 0 or -ENOMEM.
 */
int qcow2_inflaters_init(struct qcow2_inflaters *p, u32 compression_type,
			 size_t cluster_size, unsigned int max)
{
	struct qcow2_inflater *inf;

	memset(p, 0, sizeof(*p));
	spin_lock_init(&p->lock);
	INIT_LIST_HEAD(&p->idle);
	INIT_LIST_HEAD(&p->waiters);
	p->compression_type = compression_type;
	p->cluster_size = cluster_size;
	p->max = max(max, 1U);
	inf = inflater_new(p, GFP_KERNEL);
	if (!inf)
		return -ENOMEM;
	list_add(&inf->node, &p->idle);
	p->nr = 1;
	return 0;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_inflaters_init);

/* Context: none held (the owner's teardown, after its last put). */
void qcow2_inflaters_exit(struct qcow2_inflaters *p)
{
	struct qcow2_inflater *inf, *next;

	if (!p->nr)
		return;		/* never initialised, or its init failed */
	WARN_ON_ONCE(p->held || !list_empty(&p->waiters));
	list_for_each_entry_safe(inf, next, &p->idle, node)
		inflater_free(inf);
	INIT_LIST_HEAD(&p->idle);
	p->nr = 0;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_inflaters_exit);

/* An idle inflater, the one holding @host_off's cluster if any. */
static struct qcow2_inflater *take_idle(struct qcow2_inflaters *p, u64 host_off)
{
	struct qcow2_inflater *inf;

	lockdep_assert_held(&p->lock);
	if (list_empty(&p->idle))
		return NULL;
	list_for_each_entry(inf, &p->idle, node)
		if (inf->cached == host_off && inf->gen == p->gen)
			goto take;
	/* The least recently used: its cluster is the least likely wanted. */
	inf = list_last_entry(&p->idle, struct qcow2_inflater, node);
	inf->cached = 0;
take:
	inf->gen = p->gen;
	list_del(&inf->node);
	p->held++;
	p->held_max = max(p->held_max, p->held);
	return inf;
}

/*
 * Another inflater, allocated as the I/O path may: no I/O in reclaim (the
 * device it would write to may be this one), no warning.  (Not
 * __GFP_NORETRY: kvmalloc() does not support it.)  A failure is no error:
 * the caller waits for an inflater to come back.
 */
static struct qcow2_inflater *grow(struct qcow2_inflaters *p)
{
	unsigned int noio = memalloc_noio_save();
	struct qcow2_inflater *inf;

	inf = inflater_new(p, GFP_KERNEL | __GFP_NOWARN);
	memalloc_noio_restore(noio);
	return inf;
}

/* Queue @w for the next put.  Context: @p->lock held. */
static void wait_in_line(struct qcow2_inflaters *p, struct inflater_waiter *w,
			 u64 host_off)
{
	lockdep_assert_held(&p->lock);
	w->host_off = host_off;
	w->inf = NULL;
	init_completion(&w->handed);
	list_add_tail(&w->node, &p->waiters);
	p->waits++;
}

/**
 * qcow2_inflater_get() - an inflater of the caller's own.
 * @p: the pool.
 * @host_off: the compressed cluster's host offset: an inflater whose
 *	output holds it already is preferred (see @cached).
 *
 * An idle one, else a new one below @max, else (or when memory is short)
 * the one the next put hands over, after the gets that waited before.
 * Never fails.
 *
 * Context: process context; sleeps.
 */
struct qcow2_inflater *qcow2_inflater_get(struct qcow2_inflaters *p, u64 host_off)
{
	struct inflater_waiter w;
	struct qcow2_inflater *inf;
	bool may_grow = false;

	might_sleep();
	spin_lock(&p->lock);
	inf = take_idle(p, host_off);
	if (!inf) {
		/* After a failed allocation, none until an inflater comes back. */
		may_grow = p->nr < p->max && !p->grow_failed;
		if (may_grow) {
			/* Counted now, so that racing gets stay within @max. */
			p->nr++;
			p->held++;
			p->held_max = max(p->held_max, p->held);
		} else {
			wait_in_line(p, &w, host_off);
		}
	}
	spin_unlock(&p->lock);
	if (inf)
		return inf;
	if (may_grow) {
		inf = grow(p);
		if (inf) {
			inf->gen = READ_ONCE(p->gen);
			return inf;
		}
		spin_lock(&p->lock);
		p->nr--;
		p->held--;
		p->grow_failures++;
		p->grow_failed = true;
		/* One may have come back meanwhile, with nobody waiting for it. */
		inf = take_idle(p, host_off);
		if (!inf)
			wait_in_line(p, &w, host_off);
		spin_unlock(&p->lock);
		if (inf)
			return inf;
	}
	/*
	 * @nr >= 1 and none idle: all are held, by callers that give them
	 * back after their read and inflate, and each put serves a waiter.
	 */
	wait_for_completion(&w.handed);
	return w.inf;
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_inflater_get);

/**
 * qcow2_inflater_put() - give back an inflater qcow2_inflater_get() gave.
 * @p: the pool.
 * @inf: the inflater; its @cached says what its output holds (0: nothing
 *	usable, e.g. after a failed read or inflate).
 *
 * The oldest waiting get gets it, else it goes idle.
 *
 * Context: process context.
 */
void qcow2_inflater_put(struct qcow2_inflaters *p, struct qcow2_inflater *inf)
{
	struct inflater_waiter *w;

	spin_lock(&p->lock);
	p->grow_failed = false;
	w = list_first_entry_or_null(&p->waiters, struct inflater_waiter, node);
	if (!w) {
		list_add(&inf->node, &p->idle);
		p->held--;
		spin_unlock(&p->lock);
		return;
	}
	/* Handed over still held; what it caches counts if the waiter wants it. */
	list_del(&w->node);
	if (inf->cached != w->host_off || inf->gen != p->gen)
		inf->cached = 0;
	inf->gen = p->gen;
	w->inf = inf;
	/* @w lives on the waiter's stack until it sees this; the last use. */
	complete(&w->handed);
	spin_unlock(&p->lock);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_inflater_put);

/*
 * Forget what every inflater's output holds: the image may have changed
 * (the target's resume).  Held ones too: their @gen is older once back.
 */
void qcow2_inflaters_forget(struct qcow2_inflaters *p)
{
	spin_lock(&p->lock);
	p->gen++;
	spin_unlock(&p->lock);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_inflaters_forget);
