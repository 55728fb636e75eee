// SPDX-License-Identifier: GPL-2.0
/* qcow2dedup info: the header, the feature bits and the dedup table. */
#include <inttypes.h>
#include <stdio.h>

#include "dedup.h"
#include "image.h"
#include "json.h"
#include "qcow2dedup.h"

static const char * const feature_types[] = {
	"incompatible", "compatible", "autoclear",
};

static const char *ext_name(uint32_t type)
{
	switch (type) {
	case QCOW2_EXT_BACKING_FORMAT:
		return "backing file format";
	case QCOW2_EXT_FEATURE_TABLE:
		return "feature name table";
	case QCOW2_EXT_CRYPTO:
		return "full disk encryption header";
	case QCOW2_EXT_BITMAPS:
		return "bitmaps";
	case QCOW2_EXT_DATA_FILE:
		return "external data file";
	case QCOW2_EXT_DEDUP_TABLE:
		return "dedup table";
	}
	return NULL;
}

/* "dirty bit", or "incompatible bit 7" when nobody named it. */
static const char *bit_name(const struct image *img, unsigned int type,
			    unsigned int bit, char *buf, size_t len)
{
	const char *n = image_feature_name(img, type, bit);

	if (n && *n)
		return n;
	snprintf(buf, len, "%s bit %u", feature_types[type], bit);
	return buf;
}

static void feature_words(const struct image *img, uint64_t w[3])
{
	w[0] = img->incompat;
	w[1] = img->compat;
	w[2] = img->autoclear;
}

/* "0x1000000000000001 (bitmaps, dedup table)" */
static void print_word(const struct image *img, const char *label,
		       unsigned int type, uint64_t word)
{
	const char *sep = " (";
	unsigned int bit;
	char buf[64];

	printf("%-24s%#" PRIx64, label, word);
	for (bit = 0; bit < 64; bit++) {
		if (!(word >> bit & 1))
			continue;
		printf("%s%s", sep, bit_name(img, type, bit, buf, sizeof(buf)));
		sep = ", ";
	}
	puts(word ? ")" : "");
}

static void print_feature_table(const struct image *img)
{
	unsigned int i;

	if (!img->features)
		return;
	printf("feature name table:     %u entries\n", img->nr_features);
	for (i = 0; i < img->nr_features; i++) {
		const struct qcow2_feature_name *f = &img->features[i];

		printf("    %-12s bit %-2u  %.*s\n",
		       f->type < 3 ? feature_types[f->type] : "unknown type",
		       f->bit, (int)sizeof(f->name), f->name);
	}
}

static void print_exts(const struct image *img)
{
	unsigned int i;

	printf("header extensions:      %s", img->nr_exts ? "" : "none");
	for (i = 0; i < img->nr_exts; i++) {
		const char *n = ext_name(img->exts[i].type);

		if (n)
			printf("%s%s", i ? ", " : "", n);
		else
			printf("%sunknown %#010x", i ? ", " : "", img->exts[i].type);
	}
	putchar('\n');
	if (*img->ext_error)
		printf("header extension area:  malformed: %s\n", img->ext_error);
}

static void print_dedup_table(const struct dedup_table *t)
{
	printf("dedup table:            %s", qdt_state_name(t->state));
	if (t->state == QDT_STATE_INVALID)
		printf(": %s", t->reason);
	else if (t->state == QDT_STATE_ABSENT && t->bit_set)
		printf(" (but the dedup table autoclear bit is set)");
	putchar('\n');
	if (!t->decoded)
		return;
	printf("    hash:               %s (key_len %u)\n", t->hash, t->key_len);
	printf("    generation:         %" PRIu64 "\n", t->generation);
	printf("    flags:              %#x%s\n", t->flags,
	       t->flags & QDT_FLAG_OPEN ? " (open)" : "");
	if (t->state == QDT_STATE_INVALID) {
		printf("    header entries:     %" PRIu64 "\n", t->header_entries);
		return;
	}
	printf("    entries:            %" PRIu64 " (header: %" PRIu64 ")\n",
	       t->entries, t->header_entries);
	printf("    table clusters:     %" PRIu64 " (root at %#" PRIx64 ")\n",
	       t->clusters, t->root);
}

static const char *crypt_name(uint32_t m)
{
	return m == 0 ? "none" : m == 1 ? "aes" : m == 2 ? "luks" : "unknown";
}

static void print_text(const struct image *img, const struct dedup_table *t)
{
	uint64_t w[3];

	feature_words(img, w);
	printf("image:                  %s (%s, %" PRIu64 " bytes)\n", img->path,
	       img->blockdev ? "block device" : "regular file", img->size);
	printf("format:                 qcow2 version %u\n", img->version);
	printf("virtual size:           %" PRIu64 " bytes (%" PRIu64 " sectors)\n",
	       img->virtual_size, img->virtual_size / 512);
	printf("cluster size:           %" PRIu64 "\n", img->cluster_size);
	printf("refcount bits:          %u\n", 1U << img->refcount_order);
	printf("L1 size:                %u\n", img->l1_size);
	printf("snapshots:              %u\n", img->nb_snapshots);
	if (img->backing_offset)
		printf("backing file:           %s%s%s\n", img->backing_file,
		       *img->backing_fmt ? ", format " : "", img->backing_fmt);
	if (*img->data_file)
		printf("data file:              %s\n", img->data_file);
	printf("encryption:             %s\n", crypt_name(img->crypt_method));
	printf("compression type:       %s\n", img->compression_type ? "zstd" : "zlib");
	print_word(img, "incompatible features:", 0, w[0]);
	print_word(img, "compatible features:", 1, w[1]);
	print_word(img, "autoclear features:", 2, w[2]);
	print_exts(img);
	print_feature_table(img);
	print_dedup_table(t);
}

static void json_features(struct json *j, const struct image *img)
{
	unsigned int type, bit;
	uint64_t w[3];
	char buf[64];

	feature_words(img, w);
	json_arr_begin(j, "features");
	for (type = 0; type < 3; type++)
		for (bit = 0; bit < 64; bit++)
			if (w[type] >> bit & 1)
				json_str(j, NULL, bit_name(img, type, bit, buf, sizeof(buf)));
	json_arr_end(j);
}

static void json_feature_table(struct json *j, const struct image *img)
{
	char name[sizeof(img->features->name) + 1];
	unsigned int i;

	if (!img->features) {
		json_null(j, "feature_name_table");
		return;
	}
	json_arr_begin(j, "feature_name_table");
	for (i = 0; i < img->nr_features; i++) {
		const struct qcow2_feature_name *f = &img->features[i];

		memcpy(name, f->name, sizeof(f->name));
		name[sizeof(f->name)] = 0;
		json_obj_begin(j, NULL);
		json_str(j, "type", f->type < 3 ? feature_types[f->type] : "unknown");
		json_u64(j, "bit", f->bit);
		json_str(j, "name", name);
		json_obj_end(j);
	}
	json_arr_end(j);
}

/* A count the walk produced, or null when the table was not walked. */
static void json_walked(struct json *j, const char *key,
			const struct dedup_table *t, uint64_t v)
{
	if (t->state == QDT_STATE_ABSENT || t->state == QDT_STATE_INVALID)
		json_null(j, key);
	else
		json_u64(j, key, v);
}

static void json_dedup_table(struct json *j, const struct dedup_table *t)
{
	json_obj_begin(j, "dedup_table");
	json_str(j, "state", qdt_state_name(t->state));
	if (t->state == QDT_STATE_INVALID)
		json_str(j, "reason", t->reason);
	json_bool(j, "autoclear_bit", t->bit_set);
	if (t->decoded) {
		json_str(j, "hash", t->hash);
		json_u64(j, "key_len", t->key_len);
		json_u64(j, "generation", t->generation);
		json_u64(j, "flags", t->flags);
		json_u64(j, "header_entries", t->header_entries);
	} else {
		json_null(j, "hash");
		json_null(j, "key_len");
		json_null(j, "generation");
		json_null(j, "flags");
		json_null(j, "header_entries");
	}
	json_walked(j, "entries", t, t->entries);
	json_walked(j, "clusters", t, t->clusters);
	json_obj_end(j);
}

static void print_json(const struct image *img, const struct dedup_table *t)
{
	struct json j;
	unsigned int i;

	json_begin(&j, stdout);
	json_str(&j, "image", img->path);
	json_str(&j, "format", "qcow2");
	json_u64(&j, "version", img->version);
	json_u64(&j, "virtual_size", img->virtual_size);
	json_u64(&j, "cluster_size", img->cluster_size);
	json_u64(&j, "refcount_bits", 1U << img->refcount_order);
	json_u64(&j, "l1_size", img->l1_size);
	json_u64(&j, "snapshots", img->nb_snapshots);
	json_str(&j, "backing_file", img->backing_offset ? img->backing_file : NULL);
	json_str(&j, "backing_format", *img->backing_fmt ? img->backing_fmt : NULL);
	json_str(&j, "data_file", *img->data_file ? img->data_file : NULL);
	json_str(&j, "encryption", crypt_name(img->crypt_method));
	json_str(&j, "compression_type", img->compression_type ? "zstd" : "zlib");
	json_u64(&j, "incompatible_features", img->incompat);
	json_u64(&j, "compatible_features", img->compat);
	json_u64(&j, "autoclear_features", img->autoclear);
	json_features(&j, img);
	json_feature_table(&j, img);
	json_arr_begin(&j, "header_extensions");
	for (i = 0; i < img->nr_exts; i++)
		json_u64(&j, NULL, img->exts[i].type);
	json_arr_end(&j);
	json_dedup_table(&j, t);
	json_end(&j);
}

int cmd_info(int argc, char **argv)
{
	struct dedup_table t;
	const char *path;
	struct image img;
	bool json;
	int r;

	r = parse_image_args(argc, argv, &path, &json);
	if (r)
		return r > 0 ? EXIT_OK : EXIT_USAGE;
	r = image_open(&img, path);
	if (!r)
		r = dedup_table_load(&img, &t);
	if (r) {
		image_close(&img);
		return EXIT_USAGE;
	}
	if (json)
		print_json(&img, &t);
	else
		print_text(&img, &t);
	dedup_table_free(&t);
	image_close(&img);
	return EXIT_OK;
}
