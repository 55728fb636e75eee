/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The dedup table of an image (include/uapi/qcow2dedup/dedup-table.h):
 * its extension decoded, its state, and a walk over its slots.
 */
#ifndef QCOW2DEDUP_DEDUP_H
#define QCOW2DEDUP_DEDUP_H

#include <stdbool.h>
#include <stdint.h>

#include "image.h"

enum qdt_state {
	QDT_STATE_ABSENT,	/* no extension */
	QDT_STATE_STALE,	/* extension, autoclear bit clear */
	QDT_STATE_OPEN,		/* bit set, QDT_FLAG_OPEN set */
	QDT_STATE_CONSISTENT,	/* bit set, QDT_FLAG_OPEN clear */
	QDT_STATE_INVALID,	/* structure damaged: see reason */
};

struct dedup_table {
	enum qdt_state state;
	bool bit_set;		/* autoclear bit 60 */
	bool decoded;		/* the fields below the reason are valid */
	char reason[192];
	uint32_t version;
	uint32_t flags;
	uint64_t root;
	uint64_t header_entries;
	uint64_t generation;
	unsigned int key_len;
	char hash[QDT_HASH_NAME_LEN + 1];
	uint64_t entries;	/* non-zero slots, counted by the walk */
	uint64_t clusters;	/* root, directories and leaves */
	uint8_t *map;		/* one bit per host cluster: a table cluster */
	uint64_t map_bits;
};

/* Called for every non-zero slot; a non-zero return stops the walk. */
typedef int (*qdt_slot_fn)(uint64_t host_cluster, const uint8_t *slot,
			   void *priv);

int dedup_table_load(struct image *img, struct dedup_table *t);
int dedup_table_for_each(struct image *img, const struct dedup_table *t,
			 qdt_slot_fn fn, void *priv);
void dedup_table_free(struct dedup_table *t);
const char *qdt_state_name(enum qdt_state state);

/* A table dm-qcow2dedup would load: its slots must all be right. */
static inline bool dedup_table_in_use(const struct dedup_table *t)
{
	return t->state == QDT_STATE_CONSISTENT || t->state == QDT_STATE_OPEN;
}

#endif /* QCOW2DEDUP_DEDUP_H */
