// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2dedup check: every non-zero slot of the dedup table must hold the
 * digest of the cluster it names, and that cluster must be allocated; the
 * table's own clusters are the only leaks a clean image has.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "dedup.h"
#include "hash.h"
#include "image.h"
#include "json.h"
#include "qcow2dedup.h"
#include "refcheck.h"

#define MAX_REPORTED	20U	/* wrong or unallocated slots listed in text */

struct bad_slot {
	const char *what;
	uint64_t host;
};

struct slot_check {
	struct image *img;
	const struct hash_alg *alg;
	unsigned int key_len;
	uint8_t *buf;
	uint64_t checked;
	uint64_t wrong;
	uint64_t unallocated;
	struct bad_slot bad[MAX_REPORTED];	/* the first ones, for the text */
	unsigned int nr_bad;
};

/* What the target stores: the digest cut or zero-padded to key_len. */
static void expected_slot(const struct slot_check *sc, const uint8_t *digest,
			  uint8_t *slot)
{
	unsigned int n = hash_digest_len(sc->alg);

	memset(slot, 0, QDT_SLOT_SIZE);
	memcpy(slot, digest, n < sc->key_len ? n : sc->key_len);
}

static void report(struct slot_check *sc, const char *what, uint64_t host)
{
	if (sc->nr_bad < MAX_REPORTED)
		sc->bad[sc->nr_bad++] = (struct bad_slot){ what, host };
}

static int check_slot(uint64_t host, const uint8_t *slot, void *priv)
{
	uint8_t digest[HASH_MAX_DIGEST], want[QDT_SLOT_SIZE];
	struct slot_check *sc = priv;
	struct image *img = sc->img;
	uint64_t refcount = 0;
	int r;

	/* Past the device, or a cluster nothing allocated: nothing to hash. */
	if (host >= img->nb_clusters || image_refcount(img, host, &refcount) ||
	    !refcount) {
		sc->unallocated++;
		report(sc, "unallocated", host);
		return 0;
	}
	r = image_read(img, host << img->cluster_bits, sc->buf, img->cluster_size);
	if (r)
		return r;
	if (hash_digest(sc->alg, sc->buf, img->cluster_size, digest)) {
		errmsg("%s: hashing failed", hash_name(sc->alg));
		return -EIO;
	}
	sc->checked++;
	expected_slot(sc, digest, want);
	if (memcmp(want, slot, QDT_SLOT_SIZE)) {
		sc->wrong++;
		report(sc, "wrong", host);
	}
	return 0;
}

struct check_result {
	const struct dedup_table *t;
	const struct slot_check *sc;
	const struct refcheck *rc;
	uint64_t bad_table_clusters;
	bool failed;
};

/*
 * A table cluster must have a refcount of exactly one and no qcow2
 * reference: with 0, QEMU or the target could allocate it for data; a
 * reference means two structures share the cluster.
 */
static int count_bad_table_clusters(struct image *img, const struct dedup_table *t,
				    const struct refcheck *rc, uint64_t *bad)
{
	uint64_t k, refcount;
	int r;

	*bad = 0;
	for (k = 0; t->map && k < t->map_bits; k++) {
		if (!((t->map[k / 8] >> (k % 8)) & 1))
			continue;
		r = image_refcount(img, k, &refcount);
		if (r == -EIO)
			return r;
		if (r || refcount != 1 || refcheck_references(rc, k))
			(*bad)++;
	}
	return 0;
}

/* Exit status 1 conditions (see the man page). */
static bool check_failed(const struct check_result *cr)
{
	const struct dedup_table *t = cr->t;

	if (cr->rc->corruptions || cr->rc->check_errors)
		return true;
	if (t->state == QDT_STATE_INVALID)
		return t->bit_set;	/* the target would try to load it */
	if (dedup_table_in_use(t))
		return cr->sc->wrong || cr->sc->unallocated || cr->bad_table_clusters;
	return false;
}

static void print_text(const struct image *img, const struct check_result *cr)
{
	const struct dedup_table *t = cr->t;
	const struct slot_check *sc = cr->sc;
	const struct refcheck *rc = cr->rc;
	unsigned int i;

	printf("image:                  %s\n", img->path);
	printf("dedup table:            %s", qdt_state_name(t->state));
	if (t->state == QDT_STATE_INVALID)
		printf(": %s", t->reason);
	if (t->decoded && t->state != QDT_STATE_INVALID)
		printf(" (hash %s, key_len %u, generation %" PRIu64 ")", t->hash,
		       t->key_len, t->generation);
	putchar('\n');
	if (t->state == QDT_STATE_STALE && sc->wrong)
		puts("    (stale: the target does not use this table; wrong entries are expected)");
	printf("entries:                %" PRIu64 "\n", t->entries);
	printf("checked:                %" PRIu64 "\n", sc->checked);
	printf("wrong entries:          %" PRIu64 "\n", sc->wrong);
	printf("unallocated entries:    %" PRIu64 "\n", sc->unallocated);
	printf("table clusters:         %" PRIu64 "\n", t->clusters);
	if (cr->bad_table_clusters)
		printf("bad table clusters:     %" PRIu64
		       " (refcount not 1, or referenced by qcow2 structures)\n",
		       cr->bad_table_clusters);
	printf("leaked clusters:        %" PRIu64 " (dedup table: %" PRIu64
	       ", other: %" PRIu64 ")\n", rc->leaked, rc->leaked_table, rc->leaked_other);
	printf("corruptions:            %" PRIu64 "\n", rc->corruptions);
	for (i = 0; i < sc->nr_bad; i++)
		printf("%s entry: host cluster %" PRIu64 " (offset %#" PRIx64 ")\n",
		       sc->bad[i].what, sc->bad[i].host,
		       sc->bad[i].host << img->cluster_bits);
	if (sc->wrong + sc->unallocated > sc->nr_bad)
		printf("(%" PRIu64 " more)\n", sc->wrong + sc->unallocated - sc->nr_bad);
	if (rc->check_errors)
		printf("check errors:           %" PRIu64 " (refcounts that could not be read)\n",
		       rc->check_errors);
	puts(cr->failed ? "Errors found." : "No errors found.");
}

static void print_json(const struct image *img, const struct check_result *cr)
{
	const struct dedup_table *t = cr->t;
	const struct slot_check *sc = cr->sc;
	const struct refcheck *rc = cr->rc;
	struct json j;

	json_begin(&j, stdout);
	json_str(&j, "image", img->path);
	json_str(&j, "state", qdt_state_name(t->state));
	if (t->state == QDT_STATE_INVALID)
		json_str(&j, "reason", t->reason);
	json_str(&j, "hash", t->decoded ? t->hash : NULL);
	json_u64(&j, "entries", t->entries);
	json_u64(&j, "checked", sc->checked);
	json_u64(&j, "wrong_entries", sc->wrong);
	json_u64(&j, "unallocated_entries", sc->unallocated);
	json_u64(&j, "table_clusters", t->clusters);
	json_u64(&j, "bad_table_clusters", cr->bad_table_clusters);
	json_u64(&j, "leaked_clusters", rc->leaked);
	json_u64(&j, "leaked_table_clusters", rc->leaked_table);
	json_u64(&j, "leaked_other_clusters", rc->leaked_other);
	json_u64(&j, "corruptions", rc->corruptions);
	json_u64(&j, "check_errors", rc->check_errors);
	json_bool(&j, "errors", cr->failed);
	json_end(&j);
}

/* Hash every indexed cluster of a table that was walked without damage. */
static int check_slots(struct image *img, const struct dedup_table *t,
		       struct slot_check *sc)
{
	int r;

	if (t->state == QDT_STATE_ABSENT || t->state == QDT_STATE_INVALID)
		return 0;
	sc->key_len = t->key_len;
	sc->buf = malloc(img->cluster_size);
	if (!sc->buf)
		return -ENOMEM;
	r = dedup_table_for_each(img, t, check_slot, sc);
	free(sc->buf);
	return r;
}

static int run_check(struct image *img, bool json)
{
	struct slot_check sc = { .img = img };
	struct refcheck rc = { 0 };
	struct check_result cr = { .sc = &sc, .rc = &rc };
	struct dedup_table t;
	int r;

	r = dedup_table_load(img, &t);
	if (r)
		return EXIT_USAGE;
	cr.t = &t;
	if (t.state != QDT_STATE_ABSENT && t.state != QDT_STATE_INVALID) {
		sc.alg = hash_find(t.hash);
		if (!sc.alg) {
			errmsg("cannot check: hash %s not supported by this tool", t.hash);
			dedup_table_free(&t);
			return EXIT_USAGE;
		}
	}
	if (t.state == QDT_STATE_OPEN)
		fprintf(stderr, "qcow2dedup: note: the dedup table is open: if a target "
			"is using the image, results may be inconsistent\n");
	r = check_slots(img, &t, &sc);
	rc.table_map = t.map;
	rc.table_map_bits = t.map_bits;
	if (!r)
		r = refcheck_run(img, &rc);
	if (!r)
		r = count_bad_table_clusters(img, &t, &rc, &cr.bad_table_clusters);
	if (!r) {
		cr.failed = check_failed(&cr);
		if (json)
			print_json(img, &cr);
		else
			print_text(img, &cr);
	}
	refcheck_free(&rc);
	dedup_table_free(&t);
	if (r)
		return EXIT_USAGE;
	return cr.failed ? EXIT_ERRORS : EXIT_OK;
}

int cmd_check(int argc, char **argv)
{
	struct image img;
	const char *path;
	bool json;
	int r;

	r = parse_image_args(argc, argv, &path, &json);
	if (r)
		return r > 0 ? EXIT_OK : EXIT_USAGE;
	if (image_open(&img, path)) {
		image_close(&img);
		return EXIT_USAGE;
	}
	r = run_check(&img, json);
	image_close(&img);
	return r;
}
