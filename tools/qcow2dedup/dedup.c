// SPDX-License-Identifier: GPL-2.0
/*
 * Reading the dedup table.  The validity rules are the target's
 * (drivers/md/dm-qcow2dedup/dedup-table-format.c), with the same messages,
 * so "invalid" here means the target would not use the table either.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "dedup.h"
#include "qcow2dedup.h"

static const char * const state_names[] = {
	[QDT_STATE_ABSENT]	= "absent",
	[QDT_STATE_STALE]	= "stale",
	[QDT_STATE_OPEN]	= "open",
	[QDT_STATE_CONSISTENT]	= "consistent",
	[QDT_STATE_INVALID]	= "invalid",
};

const char *qdt_state_name(enum qdt_state state)
{
	return state_names[state];
}

static int invalid(struct dedup_table *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Mark the table invalid with a reason; the walk stops there. */
static int invalid(struct dedup_table *t, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(t->reason, sizeof(t->reason), fmt, ap);
	va_end(ap);
	t->state = QDT_STATE_INVALID;
	return 1;
}

/* Decode struct qdt_ext; the checks of qdt_decode_ext(), in its order. */
static int decode_ext(const struct image *img, struct dedup_table *t)
{
	struct qdt_ext e;

	if (img->qdt_len < sizeof(e))
		return invalid(t, "extension shorter than its structure (%u bytes)",
			       img->qdt_len);
	memcpy(&e, img->qdt, sizeof(e));
	t->version = be32toh(e.version);
	t->flags = be32toh(e.flags);
	t->root = be64toh(e.root_offset);
	t->header_entries = be64toh(e.entries);
	t->generation = be64toh(e.generation);
	t->key_len = e.key_len;
	memcpy(t->hash, e.hash, QDT_HASH_NAME_LEN);
	t->hash[QDT_HASH_NAME_LEN] = 0;
	t->decoded = true;
	if (t->version != QDT_VERSION)
		return invalid(t, "unknown table version %u", t->version);
	if (t->flags & ~QDT_FLAGS_KNOWN)
		return invalid(t, "unknown table flags %#x", t->flags);
	if (!t->key_len || t->key_len > QDT_SLOT_SIZE)
		return invalid(t, "digest length out of range (key_len %u)",
			       t->key_len);
	if (!e.hash[0] || !memchr(e.hash, 0, QDT_HASH_NAME_LEN))
		return invalid(t, "hash name not NUL-terminated or empty");
	return 0;
}

/* qdt_offset_valid(): aligned, inside the device, not the header. */
static const char *bad_offset(const struct image *img, uint64_t off)
{
	if (!off)
		return "zero";
	if (off & ~QDT_OFFSET_MASK)
		return "bits outside the offset field";
	if (off & (img->cluster_size - 1))
		return "not cluster-aligned";
	if (off > img->size - img->cluster_size || img->size < img->cluster_size)
		return "beyond the end of the image";
	return NULL;
}

/* Check and record one table cluster at @off, named by @what. */
static int claim(const struct image *img, struct dedup_table *t, uint64_t off,
		 const char *what, uint64_t idx)
{
	const char *why = bad_offset(img, off);
	uint64_t k = off >> img->cluster_bits;

	if (why)
		return invalid(t, "table cluster offset invalid: %s %llu at %#llx: %s",
			       what, (unsigned long long)idx,
			       (unsigned long long)off, why);
	if ((t->map[k / 8] >> (k % 8)) & 1)
		return invalid(t, "table cluster named twice: %s %llu at %#llx",
			       what, (unsigned long long)idx,
			       (unsigned long long)off);
	t->map[k / 8] |= 1U << (k % 8);
	t->clusters++;
	return 0;
}

static bool slot_empty(const uint8_t *slot)
{
	unsigned int i;

	for (i = 0; i < QDT_SLOT_SIZE; i++)
		if (slot[i])
			return false;
	return true;
}

struct walk {
	struct image *img;
	struct dedup_table *t;	/* NULL: slots only */
	qdt_slot_fn fn;
	void *priv;
	uint8_t *buf[3];	/* root, directory, leaf */
	unsigned int slot_bits, ptr_bits;
};

static int walk_leaf(struct walk *w, uint64_t leaf)
{
	uint64_t nslots = 1ULL << w->slot_bits, s;
	const uint8_t *b = w->buf[2];
	int r;

	for (s = 0; s < nslots; s++) {
		const uint8_t *slot = b + s * QDT_SLOT_SIZE;

		if (slot_empty(slot))
			continue;
		if (w->t)
			w->t->entries++;
		if (w->fn) {
			r = w->fn((leaf << w->slot_bits) | s, slot, w->priv);
			if (r)
				return r;
		}
	}
	return 0;
}

/* Entries of a root (@level 0) or directory (@level 1) cluster. */
static int walk_ptrs(struct walk *w, int level, uint64_t base)
{
	uint64_t n = 1ULL << w->ptr_bits, i;
	int r;

	for (i = 0; i < n; i++) {
		uint64_t off = get_be64(w->buf[level] + 8 * i);
		uint64_t idx = (base << w->ptr_bits) | i;

		if (!off)
			continue;
		if (w->t) {
			r = claim(w->img, w->t, off, level ? "leaf" : "directory", idx);
			if (r)
				return r;
		}
		r = image_read(w->img, off, w->buf[level + 1], w->img->cluster_size);
		if (r)
			return r;
		r = level ? walk_leaf(w, idx) : walk_ptrs(w, 1, idx);
		if (r)
			return r;
	}
	return 0;
}

static int walk(struct walk *w, uint64_t root)
{
	int i, r = -ENOMEM;

	w->slot_bits = w->img->cluster_bits - 5;	/* 32-byte slots */
	w->ptr_bits = w->img->cluster_bits - 3;		/* 8-byte offsets */
	for (i = 0; i < 3; i++)
		w->buf[i] = malloc(w->img->cluster_size);
	if (w->buf[0] && w->buf[1] && w->buf[2]) {
		r = image_read(w->img, root, w->buf[0], w->img->cluster_size);
		if (!r)
			r = walk_ptrs(w, 0, 0);
	}
	for (i = 0; i < 3; i++)
		free(w->buf[i]);
	return r;
}

/*
 * Decode the extension, check the structure, count slots and table
 * clusters, set the state.  Returns 0, or a negative errno on I/O errors
 * (a damaged table is not an error: its state is "invalid").
 */
int dedup_table_load(struct image *img, struct dedup_table *t)
{
	struct walk w = { .img = img, .t = t };
	int r;

	memset(t, 0, sizeof(*t));
	t->bit_set = img->autoclear & QCOW2_AUTOCLEAR_DEDUP_TABLE;
	if (!img->qdt)
		return 0;
	t->map_bits = img->nb_clusters;
	t->map = calloc(1, t->map_bits / 8 + 1);
	if (!t->map)
		return -ENOMEM;
	if (decode_ext(img, t))
		return 0;
	if (claim(img, t, t->root, "root", 0))
		return 0;
	r = walk(&w, t->root);
	if (r < 0)
		return r;
	if (r > 0)
		return 0;	/* invalid, reason set */
	if (!t->bit_set)
		t->state = QDT_STATE_STALE;
	else if (t->flags & QDT_FLAG_OPEN)
		t->state = QDT_STATE_OPEN;
	else
		t->state = QDT_STATE_CONSISTENT;
	return 0;
}

/* Call @fn for every non-zero slot of a table dedup_table_load() checked. */
int dedup_table_for_each(struct image *img, const struct dedup_table *t,
			 qdt_slot_fn fn, void *priv)
{
	struct walk w = { .img = img, .fn = fn, .priv = priv };

	if (t->state == QDT_STATE_ABSENT || t->state == QDT_STATE_INVALID)
		return 0;
	return walk(&w, t->root);
}

void dedup_table_free(struct dedup_table *t)
{
	free(t->map);
	t->map = NULL;
}
