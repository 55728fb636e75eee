/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The readers of host clusters: every bio the target remaps to a host
 * cluster (and every read the target issues itself) holds the current
 * generation from before it looks the cluster up until its end_io.  A
 * commit about to free clusters starts a new generation and waits for the
 * old one to drain, so a freed cluster is never reused while a bio still
 * reads or writes it.
 *
 * Each generation is a percpu_ref: map() and end_io touch a per-CPU
 * counter, never a lock or a cache line shared between CPUs.  Waiting
 * costs an RCU grace period (the switch of the old generation to atomic
 * mode); it happens only in a commit that frees clusters, which starts it
 * (qcow2dedup_readers_retire()) before it writes its metadata and waits
 * after, and in the rebuild's scan.
 *
 * Not SRCU: with srcu_down_read() in map() and srcu_up_read() in end_io
 * (irq context), Tiny SRCU (!SMP kernels, User-Mode Linux) updates its
 * nesting count non-atomically and skips the grace-period wake-up when the
 * last reader leaves from an irq, so synchronize_srcu() could wait forever.
 * percpu_ref's puts are irq-safe on every configuration.
 *
 * Locking: hold and unhold in any context; wait sleeps, and waits are
 * serialised by @wait_lock (the engine calls it from its worker only).
 */
#ifndef DM_QCOW2DEDUP_IO_READERS_H
#define DM_QCOW2DEDUP_IO_READERS_H

#include <linux/completion.h>
#include <linux/mutex.h>
#include <linux/percpu-refcount.h>

struct qcow2dedup_reader_gen {
	struct percpu_ref ref;		/* live while current, killed to drain */
	struct completion drained;	/* completed at its release */
};

struct qcow2dedup_readers {
	struct qcow2dedup_reader_gen gen[2];
	unsigned int cur;		/* gen[cur & 1] is live; waiters write */
	struct mutex wait_lock;		/* one wait at a time; protects @retired */
	bool retired;			/* gen[(cur - 1) & 1] drains, not waited for */
	/* Statistics, under @wait_lock; read anywhere (READ_ONCE). */
	u64 waits;
	u64 wait_ns;			/* their total time */
	u64 wait_ns_max;
};

int qcow2dedup_readers_init(struct qcow2dedup_readers *r);
void qcow2dedup_readers_exit(struct qcow2dedup_readers *r);
int qcow2dedup_readers_hold(struct qcow2dedup_readers *r);
void qcow2dedup_readers_unhold(struct qcow2dedup_readers *r, int idx);
void qcow2dedup_readers_retire(struct qcow2dedup_readers *r);
void qcow2dedup_readers_wait_retired(struct qcow2dedup_readers *r);
void qcow2dedup_readers_end_retire(struct qcow2dedup_readers *r);
void qcow2dedup_readers_wait(struct qcow2dedup_readers *r);

#endif /* DM_QCOW2DEDUP_IO_READERS_H */
