/* SPDX-License-Identifier: GPL-2.0 */
/* Helpers shared by every part of the qcow2dedup tool. */
#ifndef QCOW2DEDUP_H
#define QCOW2DEDUP_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

/* Exit statuses (see the man page). */
#define EXIT_OK		0
#define EXIT_ERRORS	1	/* check found errors */
#define EXIT_USAGE	2	/* usage, I/O error, image refused */

void errmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Big-endian loads from unaligned on-disk bytes. */
static inline uint64_t get_be64(const void *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return be64toh(v);
}

static inline uint32_t get_be32(const void *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return be32toh(v);
}

static inline uint16_t get_be16(const void *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return be16toh(v);
}

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))

static inline uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

#include <stdbool.h>
#include <stdio.h>

/* Command line helpers (qcow2dedup.c). */
void usage(FILE *f, const char *cmd);
int parse_image_args(int argc, char **argv, const char **image, bool *json);

#define SECTOR_SIZE	512U
#define TABLE_LINE_MAX	4352U	/* a path, a hash name and the numbers */

struct image;

/* Optional arguments of the table line (qcow2dedup.c). */
struct table_opts {
	const char *hash;
	bool verify;
	bool nodedup;
	const char *index_limit;
	const char *flush_interval;
};

int check_table_opts(const struct table_opts *o);
const char *table_hash(struct image *img, const struct table_opts *o);
int format_table_line(char *buf, size_t len, const char *dev,
		      const struct image *img, const struct table_opts *o,
		      const char *hash);

/* Commands (argv[0] is the command name). */
int cmd_table(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_hash(int argc, char **argv);
int cmd_activate(int argc, char **argv);
int cmd_deactivate(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_activate_all(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_deactivate_all(int argc, char **argv);

#endif /* QCOW2DEDUP_H */
