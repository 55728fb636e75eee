// SPDX-License-Identifier: GPL-2.0
/*
 * stats: a mapped device's usage and dedup counters for people (text, in
 * the spirit of vdostats) and for monitoring (--json), from the target's
 * status line and its "stats" message (see the admin guide, Status).
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sysmacros.h>

#include "activate.h"
#include "json.h"
#include "qcow2dedup.h"

#define OUT_MAX		65536U
#define VALUE_MAX	128U

/* The status line's fields after "<start> <len> qcow2dedup", in order. */
static const char *const status_names[] = {
	"mode", "qcow2_version", "cluster_size", "used/total", "staged",
	"clusters_allocated", "cow_copies", "reads_deferred", "reads_compressed",
	"dedup_hits", "zero_clusters", "index_entries", "table_state",
};

/*
 * The value of line "@key value" of a stats answer, copied into @buf
 * (@len bytes), or NULL when there is none.
 */
const char *stats_value(const char *stats, const char *key, char *buf,
			size_t len)
{
	size_t klen = strlen(key);
	const char *p = stats;

	while (p && *p) {
		if (!strncmp(p, key, klen) && p[klen] == ' ') {
			size_t w = strcspn(p + klen + 1, "\n");

			if (w >= len)
				return NULL;
			memcpy(buf, p + klen + 1, w);
			buf[w] = '\0';
			return buf;
		}
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return NULL;
}

/* 1536 -> "1.5 KiB", binary units as lsblk prints them. */
void human_size(uint64_t bytes, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
	double v = (double)bytes;
	unsigned int u = 0;

	while (v >= 1024 && u < ARRAY_SIZE(unit) - 1) {
		v /= 1024;
		u++;
	}
	if (!u)
		snprintf(buf, len, "%" PRIu64 " B", bytes);
	else
		snprintf(buf, len, "%.1f %s", v, unit[u]);
}

static uint64_t num(const char *s)
{
	return s ? strtoull(s, NULL, 10) : 0;
}

static bool numeric(const char *s)
{
	return *s && strspn(s, "0123456789") == strlen(s);
}

struct usage_numbers {
	uint64_t virtual_size, cluster_size, used, total, saved;
	unsigned int saving_pct;	/* of the logical data: used + saved */
	bool refcounts;			/* used/total known (read-write) */
};

/* Value of @key, "0" when the target does not report it. */
#define STAT(key, buf) (stats_value(stats, key, buf, sizeof(buf)) ?: "0")

static void print_text(const char *name, const char *image, const char *status,
		       const char *stats, const struct usage_numbers *u)
{
	char a[32], b[32], f[VALUE_MAX], g[VALUE_MAX];
	const char *v;

	printf("%-17s /dev/mapper/%s\n", "Device", name);
	printf("%-17s %s\n", "Image", image);
	printf("%-17s %s\n", "Mode", status_field(status, 0, f, sizeof(f)) ?: "?");
	human_size(u->virtual_size, a, sizeof(a));
	printf("%-17s %s\n", "Virtual size", a);
	human_size(u->cluster_size, a, sizeof(a));
	printf("%-17s %s\n", "Cluster size", a);
	if (u->refcounts) {
		human_size(u->used * u->cluster_size, a, sizeof(a));
		human_size(u->total * u->cluster_size, b, sizeof(b));
		printf("%-17s %s of %s (%" PRIu64 " of %" PRIu64 " clusters)\n",
		       "Physical used", a, b, u->used, u->total);
	} else {
		printf("%-17s - (read-only: refcounts not loaded)\n", "Physical used");
	}
	human_size(u->saved, a, sizeof(a));
	printf("%-17s %s (%u%%)\n", "Saved by dedup", a, u->saving_pct);
	printf("%-17s %s of %s clusters written\n", "Dedup hits",
	       STAT("dedup_hits", f), STAT("clusters_written", g));
	printf("%-17s %s\n", "Zero clusters", STAT("zero_clusters", f));
	human_size(num(STAT("index_bytes", f)), a, sizeof(a));
	human_size(num(STAT("index_limit_bytes", f)), b, sizeof(b));
	printf("%-17s %s entries, %s of %s\n", "Index",
	       STAT("index_entries", f), a, b);
	v = STAT("table_state", g);
	if (!strcmp(v, "off"))
		printf("%-17s off (%s)\n", "Dedup table", STAT("table_off", f));
	else
		printf("%-17s %s, %s entries in %s clusters\n", "Dedup table", v,
		       STAT("table_entries", f), STAT("table_clusters", a));
	v = STAT("rebuild_progress", f);
	if (strcmp(v, "100"))
		printf("%-17s %s%% done\n", "Rebuild", v);
	else if (!num(STAT("rebuild_runs", f)))
		printf("%-17s none since activation\n", "Rebuild");
	else
		printf("%-17s none running (%s since activation, the last took %.1f s)\n",
		       "Rebuild", STAT("rebuild_runs", f),
		       num(STAT("rebuild_us", g)) / 1e6);
}

static void print_json(const char *name, const char *image, const char *status,
		       const char *stats, const struct usage_numbers *u)
{
	char f[VALUE_MAX], line[VALUE_MAX * 2];
	const char *p;
	struct json j;
	unsigned int i;

	json_begin(&j, stdout);
	json_str(&j, "name", name);
	json_str(&j, "image", image);
	json_str(&j, "mode", status_field(status, 0, f, sizeof(f)) ?: "?");
	json_u64(&j, "virtual_size", u->virtual_size);
	json_u64(&j, "cluster_size", u->cluster_size);
	if (u->refcounts) {
		json_u64(&j, "used_bytes", u->used * u->cluster_size);
		json_u64(&j, "total_bytes", u->total * u->cluster_size);
	} else {
		json_null(&j, "used_bytes");
		json_null(&j, "total_bytes");
	}
	json_u64(&j, "bytes_saved", u->saved);
	json_u64(&j, "saving_percent", u->saving_pct);
	json_obj_begin(&j, "status");
	for (i = 0; i < ARRAY_SIZE(status_names); i++) {
		if (!status_field(status, i, f, sizeof(f)))
			continue;
		if (numeric(f))
			json_u64(&j, status_names[i], strtoull(f, NULL, 10));
		else
			json_str(&j, status_names[i], f);
	}
	json_obj_end(&j);
	/* Every pair of the stats message, as the target named it. */
	json_obj_begin(&j, "stats");
	for (p = stats; p && *p;) {
		size_t w = strcspn(p, "\n");
		char *sp;

		if (w && w < sizeof(line)) {
			memcpy(line, p, w);
			line[w] = '\0';
			sp = strchr(line, ' ');
			if (sp) {
				*sp++ = '\0';
				if (numeric(sp))
					json_u64(&j, line, strtoull(sp, NULL, 10));
				else
					json_str(&j, line, sp);
			}
		}
		p += w;
		p += *p == '\n';
	}
	json_obj_end(&j);
	json_end(&j);
}

int cmd_stats(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char status[1024], stats[OUT_MAX], table[TABLE_LINE_MAX + 64];
	char image[4096], f[VALUE_MAX], target[32], path[128];
	unsigned long long start, len;
	struct usage_numbers u = { 0 };
	unsigned int maj, min;
	const char *name;
	bool json = false;
	FILE *bf;
	int c;

	while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = true;
			break;
		case 'h':
			usage(stdout, argv[0]);
			return EXIT_OK;
		default:
			usage(stderr, argv[0]);
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		errmsg("stats: expected one NAME");
		usage(stderr, argv[0]);
		return EXIT_USAGE;
	}
	name = argv[optind];
	if (!strncmp(name, "/dev/mapper/", 12))
		name += 12;
	{
		char *t[] = { "dmsetup", "table", (char *)name, NULL };
		char *s[] = { "dmsetup", "status", (char *)name, NULL };
		char *m[] = { "dmsetup", "message", (char *)name, "0", "stats", NULL };

		if (run_cmd(t, table, sizeof(table)))
			return EXIT_USAGE;
		if (sscanf(table, "%llu %llu %31s %u:%u", &start, &len, target,
			   &maj, &min) != 5 || strcmp(target, "qcow2dedup")) {
			errmsg("%s: not a qcow2dedup device", name);
			return EXIT_USAGE;
		}
		if (run_cmd(s, status, sizeof(status)) ||
		    run_cmd(m, stats, sizeof(stats)))
			return EXIT_USAGE;
	}
	snprintf(image, sizeof(image), "%u:%u", maj, min);
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/loop/backing_file", maj, min);
	bf = fopen(path, "r");
	if (bf) {
		char file[3900];

		char node[64];

		if (fgets(file, sizeof(file), bf) &&
		    !dev_node(maj, min, node, sizeof(node))) {
			file[strcspn(file, "\n")] = '\0';
			snprintf(image, sizeof(image), "%s (on %s)", file, node);
		}
		fclose(bf);
	}
	u.virtual_size = len * SECTOR_SIZE;
	u.cluster_size = num(status_field(status, 2, f, sizeof(f)));
	if (status_field(status, 3, f, sizeof(f)) &&
	    sscanf(f, "%" SCNu64 "/%" SCNu64, &u.used, &u.total) == 2)
		u.refcounts = true;
	u.saved = num(stats_value(stats, "bytes_saved", f, sizeof(f)));
	if (u.refcounts && u.used * u.cluster_size + u.saved)
		u.saving_pct = (unsigned int)(u.saved * 100 /
					      (u.used * u.cluster_size + u.saved));
	if (json)
		print_json(name, image, status, stats, &u);
	else
		print_text(name, image, status, stats, &u);
	return EXIT_OK;
}
