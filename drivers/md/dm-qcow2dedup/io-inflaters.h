/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A pool of inflaters: a decompressor with the buffers to read one
 * compressed cluster into and to inflate it to.  Reads of compressed
 * clusters (on the target's read workqueue) and the read-modify-writes of
 * such clusters each take one for the read and the inflate, so several
 * run at once on as many CPUs, where one decompressor under one lock made
 * them take turns.
 *
 * The pool starts with one inflater, made at construction, and grows on
 * demand up to @max (a bound from the CPUs and a memory budget:
 * qcow2_inflaters_max()).  Growing allocates on the I/O path, without I/O;
 * when memory is short the caller waits for an inflater to come back, as
 * it does at @max, and never fails (and no get tries to grow again before
 * a put).  Inflaters live until the pool's exit.  Waiters are served in
 * the order they came: a put hands its inflater to the oldest waiter
 * (never to @idle while one waits), so a get waits for at most the gets
 * queued before it, each one read and inflate long.  That bound matters:
 * a read-modify-write of a compressed cluster holds a reader generation
 * while it waits, and a commit that frees clusters waits for it.
 *
 * Each inflater remembers the host offset of the cluster its output buffer
 * holds (@cached), and a get for that offset prefers it: a reader that
 * goes through a compressed cluster in pieces inflates it once.  What the
 * image holds at that offset may change only while the device is
 * suspended (QEMU compresses clusters; the target never writes one), and
 * the target's resume forgets every cached cluster (a generation count:
 * an inflater's @cached counts only for the generation it was taken in).
 *
 * Locking: @lock (a spinlock, never held across an allocation, a read or
 * an inflate) protects @idle, @waiters, @nr and the statistics; an
 * inflater a caller holds is the caller's alone.  get sleeps; put in any
 * process context.
 */
#ifndef DM_QCOW2DEDUP_IO_INFLATERS_H
#define DM_QCOW2DEDUP_IO_INFLATERS_H

#include <linux/list.h>
#include <linux/spinlock.h>
#include <linux/types.h>

struct qcow2_decompressor;

struct qcow2_inflater {
	struct list_head node;		/* in the pool's @idle while idle */
	struct qcow2_decompressor *dc;
	void *cbuf;			/* compressed input: two clusters and a sector */
	void *dbuf;			/* output: one cluster */
	u64 cached;			/* host offset whose cluster @dbuf holds; 0: none */
	unsigned int gen;		/* the pool's @gen when taken: @cached is for it */
};

struct qcow2_inflaters {
	spinlock_t lock;		/* @idle, @waiters, @nr, @gen, statistics */
	struct list_head idle;		/* most recently used first; empty while
					 * @waiters is not
					 */
	struct list_head waiters;	/* gets waiting for a put, oldest first */
	u32 compression_type;
	size_t cluster_size;
	unsigned int nr;		/* made, idle or held */
	unsigned int max;
	unsigned int gen;		/* bumped by qcow2_inflaters_forget() */
	bool grow_failed;		/* an allocation failed since the last put */
	/* Statistics, under @lock; read anywhere (READ_ONCE). */
	unsigned int held;
	unsigned int held_max;		/* the most held at once */
	u64 waits;			/* gets that found none idle and had to wait */
	u64 grow_failures;		/* allocations that failed (memory short) */
};

unsigned int qcow2_inflaters_max(u32 compression_type, size_t cluster_size,
				 unsigned int cpus);
int qcow2_inflaters_init(struct qcow2_inflaters *p, u32 compression_type,
			 size_t cluster_size, unsigned int max);
void qcow2_inflaters_exit(struct qcow2_inflaters *p);
struct qcow2_inflater *qcow2_inflater_get(struct qcow2_inflaters *p, u64 host_off);
void qcow2_inflater_put(struct qcow2_inflaters *p, struct qcow2_inflater *inf);
void qcow2_inflaters_forget(struct qcow2_inflaters *p);

#endif /* DM_QCOW2DEDUP_IO_INFLATERS_H */
