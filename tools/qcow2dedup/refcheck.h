/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The reference walk of `qemu-img check`: count the references every host
 * cluster gets from the qcow2 structures, compare them with the refcounts
 * on disk, and count leaks and corruptions the way QEMU counts them.
 */
#ifndef QCOW2DEDUP_REFCHECK_H
#define QCOW2DEDUP_REFCHECK_H

#include <stdint.h>

#include "image.h"

struct refcheck {
	/* In-memory reference counts, refcount-width entries. */
	void *refs;
	unsigned int width;	/* bytes per entry: 1, 2, 4 or 8 */
	uint64_t size;		/* clusters compared (QEMU's nb_clusters) */
	uint64_t alloc;		/* entries allocated */

	/* Dedup table clusters: leaks there are expected (one bit each). */
	const uint8_t *table_map;
	uint64_t table_map_bits;

	uint64_t corruptions;
	uint64_t check_errors;
	uint64_t leaked;
	uint64_t leaked_table;
	uint64_t leaked_other;
};

int refcheck_run(struct image *img, struct refcheck *rc);
uint64_t refcheck_references(const struct refcheck *rc, uint64_t cluster);
void refcheck_free(struct refcheck *rc);

#endif /* QCOW2DEDUP_REFCHECK_H */
