// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2dedup: userspace companion of the dm-qcow2dedup target.
 *
 *   table   the dmsetup table line for an image
 *   info    header, features and the dedup table's state
 *   check   the dedup table against the data, and qemu-img check's leaks
 *   hash    (debugging aid) a digest of a whole file, as the target makes it
 *
 * The tool only reads: every image is opened O_RDONLY.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dedup.h"
#include "hash.h"
#include "image.h"
#include "qcow2dedup.h"

/* Limits of the target's option parser (dm-qcow2dedup-target.c). */
#define HASH_NAME_MAX		128U	/* CRYPTO_MAX_ALG_NAME */
#define FLUSH_INTERVAL_MAX	3600000ULL

void errmsg(const char *fmt, ...)
{
	va_list ap;

	fputs("qcow2dedup: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *synopsis;
	const char *help;
	bool hidden;
};

static const struct command commands[] = {
	{ "table", cmd_table,
	  "table IMAGE|DEV [--hash ALG] [--verify] [--nodedup]\n"
	  "        [--index-limit MIB] [--flush-interval MS]",
	  "Print the dmsetup table line that activates IMAGE|DEV with the\n"
	  "qcow2dedup target:  0 <virtual size / 512> qcow2dedup DEV [<#args> <args>].\n"
	  "  --hash ALG            digest of the index (target default: sha256); when\n"
	  "                        omitted, a usable dedup table's hash is kept\n"
	  "  --verify              compare contents before sharing a cluster\n"
	  "  --nodedup             plain qcow2, no deduplication\n"
	  "  --index-limit MIB     memory limit of the in-kernel index\n"
	  "  --flush-interval MS   how often the dedup table is written back\n"
	  "                        (1 to 3600000)\n", false },
	{ "info", cmd_info,
	  "info IMAGE|DEV [--json]",
	  "Print the qcow2 header, the feature bits with their names, the feature\n"
	  "name table and the state of the dedup table.\n"
	  "  --json                one JSON object instead of text\n", false },
	{ "check", cmd_check,
	  "check IMAGE|DEV [--json]",
	  "Hash every cluster the dedup table indexes and compare with its slot;\n"
	  "count references as qemu-img check does and split the leaked clusters\n"
	  "into dedup table clusters and others.  Exit status 0: no errors, 1: errors\n"
	  "found, 2: usage or I/O error.\n"
	  "  --json                one JSON object instead of text\n", false },
	{ "activate", cmd_activate,
	  "activate IMAGE|DEV [NAME] [--readonly] [table options]",
	  "Activate IMAGE|DEV as /dev/mapper/NAME (NAME: the file name without\n"
	  ".qcow2 or .img).  Refuses, before changing anything, an image the\n"
	  "target would refuse in its header, one a process holds QEMU's lock\n"
	  "on, and one attached or mapped already.  A regular file is grown\n"
	  "(sparse) so that every cluster of the virtual size can be allocated,\n"
	  "and attached to a loop device with direct I/O.  The device gets the\n"
	  "dm UUID QCOW2DEDUP-<hash of the image's path>.  If the target refuses\n"
	  "the image, the loop device is detached and the file cut back.\n"
	  "  --readonly            a read-only device (and loop device)\n"
	  "  table options         as for 'table': --hash, --verify, --nodedup,\n"
	  "                        --index-limit, --flush-interval\n", false },
	{ "deactivate", cmd_deactivate,
	  "deactivate NAME|IMAGE",
	  "Remove the device activated from IMAGE (or named NAME), detach its\n"
	  "loop device and trim the file back to the image's end.\n", false },
	{ "list", cmd_list,
	  "list",
	  "The mapped qcow2dedup devices: name, mode, bytes saved, image.\n", false },
	{ "stats", cmd_stats,
	  "stats NAME [--json]",
	  "Usage and dedup counters of device NAME: virtual and physical size,\n"
	  "bytes saved, dedup hits, zero clusters, index memory, the dedup\n"
	  "table's state, rebuild progress, mode.\n"
	  "  --json                one JSON object with every status field and\n"
	  "                        every pair of the target's stats message\n", false },
	{ "resize", cmd_resize,
	  "resize NAME SIZE",
	  "Grow the virtual disk of active device NAME to SIZE (as qemu-img takes\n"
	  "it: bytes or with K, M, G, T; +SIZE grows by SIZE): suspend, grow the\n"
	  "file and its loop device, qemu-img resize, reload with the new length,\n"
	  "resume.  On a failure the table is reloaded with the size the image\n"
	  "then has and the device resumed.\n", false },
	{ "snapshot", cmd_snapshot,
	  "snapshot NAME create|delete TAG | snapshot NAME list",
	  "An internal snapshot of the image of active device NAME: suspend,\n"
	  "qemu-img snapshot -c/-d TAG, resume; list runs qemu-img snapshot -l.\n", false },
	{ "activate-all", cmd_activate_all,
	  "activate-all [--tab FILE]",
	  "Activate every device of FILE (/etc/qcow2deduptab) that is not active:\n"
	  "one per line, 'NAME IMAGE|DEV [OPTIONS]', OPTIONS '-' or a comma-\n"
	  "separated list of readonly, verify, nodedup, hash=ALG, index-limit=MIB,\n"
	  "flush-interval=MS; '#' starts a comment.  Exit status 1 when a line\n"
	  "failed (the others are still activated).\n"
	  "  --tab FILE            another file\n", false },
	{ "deactivate-all", cmd_deactivate_all,
	  "deactivate-all [--tab FILE]",
	  "Deactivate the active devices of FILE (/etc/qcow2deduptab), last line\n"
	  "first.\n"
	  "  --tab FILE            another file\n", false },
	{ "hash", cmd_hash,
	  "hash ALG FILE",
	  "Debugging aid: print the digest of the whole of FILE ('-' for standard\n"
	  "input) as the kernel shash ALG computes it, in hex.\n", true },
};

#define NR_COMMANDS (ARRAY_SIZE(commands))

static const struct command *find_command(const char *name)
{
	size_t i;

	for (i = 0; i < NR_COMMANDS; i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

/* Usage of one command, or of the tool when @cmd is NULL. */
void usage(FILE *f, const char *cmd)
{
	const struct command *c = cmd ? find_command(cmd) : NULL;
	size_t i;

	if (c) {
		fprintf(f, "Usage: qcow2dedup %s\n\n%s", c->synopsis, c->help);
		if (!strcmp(c->name, "hash")) {
			fputs("\nDigests this tool knows: ", f);
			hash_print_names(f);
		}
		return;
	}
	fputs("Usage: qcow2dedup COMMAND [ARGS]\n\n"
	      "Userspace companion of the dm-qcow2dedup device-mapper target.\n"
	      "table, info and check only read images (regular files or block\n"
	      "devices); activate and deactivate run losetup and dmsetup.\n\nCommands:\n", f);
	for (i = 0; i < NR_COMMANDS; i++)
		if (!commands[i].hidden)
			fprintf(f, "  qcow2dedup %s\n", commands[i].synopsis);
	fputs("\n'qcow2dedup COMMAND --help' describes a command; see qcow2dedup(8).\n", f);
}

static const struct option image_opts[] = {
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

/*
 * "COMMAND IMAGE [--json]" for info and check.  Returns 0, 1 when --help
 * was printed, -1 on a usage error (already reported).
 */
int parse_image_args(int argc, char **argv, const char **image, bool *json)
{
	int c;

	*json = false;
	while ((c = getopt_long(argc, argv, "jh", image_opts, NULL)) != -1) {
		switch (c) {
		case 'j':
			*json = true;
			break;
		case 'h':
			usage(stdout, argv[0]);
			return 1;
		default:
			usage(stderr, argv[0]);
			return -1;
		}
	}
	if (optind != argc - 1) {
		errmsg("%s: expected one IMAGE or DEV argument", argv[0]);
		usage(stderr, argv[0]);
		return -1;
	}
	*image = argv[optind];
	return 0;
}

/* A decimal number in [@min, @max], as the target's kstrto*() parse it. */
static bool valid_number(const char *s, unsigned long long min,
			 unsigned long long max)
{
	unsigned long long v;
	char *end;

	if (!*s || *s == '-' || *s == '+')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	return !errno && !*end && v >= min && v <= max;
}

static int parse_table_args(int argc, char **argv, struct table_opts *o,
			    const char **image)
{
	static const struct option opts[] = {
		{ "hash", required_argument, NULL, 'H' },
		{ "verify", no_argument, NULL, 'v' },
		{ "nodedup", no_argument, NULL, 'n' },
		{ "index-limit", required_argument, NULL, 'i' },
		{ "flush-interval", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'H':
			o->hash = optarg;
			break;
		case 'v':
			o->verify = true;
			break;
		case 'n':
			o->nodedup = true;
			break;
		case 'i':
			o->index_limit = optarg;
			break;
		case 'f':
			o->flush_interval = optarg;
			break;
		case 'h':
			usage(stdout, argv[0]);
			return 1;
		default:
			usage(stderr, argv[0]);
			return -1;
		}
	}
	if (optind != argc - 1) {
		errmsg("table: expected one IMAGE or DEV argument");
		usage(stderr, argv[0]);
		return -1;
	}
	*image = argv[optind];
	return 0;
}

/* The checks the target's option parser makes, so dmsetup does not fail. */
int check_table_opts(const struct table_opts *o)
{
	if (o->hash && (!*o->hash || strpbrk(o->hash, " \t\n\r\v\f#") ||
			strlen(o->hash) >= HASH_NAME_MAX)) {
		errmsg("table: bad hash name '%s'", o->hash);
		return -1;
	}
	if (o->index_limit && !valid_number(o->index_limit, 1, UINT64_MAX >> 20)) {
		errmsg("table: --index-limit takes a number of MiB, at least 1");
		return -1;
	}
	if (o->flush_interval &&
	    !valid_number(o->flush_interval, 1, FLUSH_INTERVAL_MAX)) {
		errmsg("table: --flush-interval takes milliseconds, 1 to %llu",
		       FLUSH_INTERVAL_MAX);
		return -1;
	}
	if (o->nodedup && (o->verify || o->hash || o->index_limit ||
			   o->flush_interval)) {
		errmsg("table: --nodedup excludes --verify, --hash, --index-limit "
		       "and --flush-interval");
		return -1;
	}
	return 0;
}

/*
 * The hash for the table line: --hash, else a usable dedup table's own
 * digest (the target does not use a table made with another digest).
 */
const char *table_hash(struct image *img, const struct table_opts *o)
{
	static char kept[QDT_HASH_NAME_LEN + 1];
	const char *hash = o->hash;
	struct dedup_table t;

	if (dedup_table_load(img, &t))
		return hash;
	if (t.state == QDT_STATE_OPEN)
		fprintf(stderr, "qcow2dedup: note: the dedup table is marked open: "
			"a target is using the image, or its last writer crashed\n");
	if (dedup_table_in_use(&t) && !o->nodedup) {
		if (hash && strcmp(hash, t.hash))
			fprintf(stderr, "qcow2dedup: note: the dedup table was made with "
				"%s: with hash %s the target will not use it\n",
				t.hash, hash);
		if (!hash && strcmp(t.hash, "sha256")) {
			memcpy(kept, t.hash, sizeof(kept));
			hash = kept;
			fprintf(stderr, "qcow2dedup: note: keeping the dedup table's "
				"hash %s\n", hash);
		}
	}
	dedup_table_free(&t);
	return hash;
}

/* "0 <sectors> qcow2dedup DEV [<#args> <args>]" into @buf (no newline). */
int format_table_line(char *buf, size_t len, const char *dev,
		      const struct image *img, const struct table_opts *o,
		      const char *hash)
{
	const char *words[10];
	size_t used;
	int n = 0, i, r;

	if (o->nodedup)
		words[n++] = "nodedup";
	if (o->verify)
		words[n++] = "verify";
	if (hash) {
		words[n++] = "hash";
		words[n++] = hash;
	}
	if (o->index_limit) {
		words[n++] = "index_limit";
		words[n++] = o->index_limit;
	}
	if (o->flush_interval) {
		words[n++] = "flush_interval";
		words[n++] = o->flush_interval;
	}
	r = snprintf(buf, len, "0 %" PRIu64 " qcow2dedup %s",
		     img->virtual_size / SECTOR_SIZE, dev);
	if (r < 0 || (size_t)r >= len)
		return -1;
	used = (size_t)r;
	if (n) {
		r = snprintf(buf + used, len - used, " %d", n);
		if (r < 0 || (size_t)r >= len - used)
			return -1;
		used += (size_t)r;
	}
	for (i = 0; i < n; i++) {
		r = snprintf(buf + used, len - used, " %s", words[i]);
		if (r < 0 || (size_t)r >= len - used)
			return -1;
		used += (size_t)r;
	}
	return 0;
}

int cmd_table(int argc, char **argv)
{
	struct table_opts o = { 0 };
	const char *image, *hash;
	char line[TABLE_LINE_MAX];
	struct image img;
	int r;

	r = parse_table_args(argc, argv, &o, &image);
	if (r)
		return r > 0 ? EXIT_OK : EXIT_USAGE;
	if (check_table_opts(&o))
		return EXIT_USAGE;
	if (image_open(&img, image)) {
		image_close(&img);
		return EXIT_USAGE;
	}
	if (img.virtual_size % SECTOR_SIZE) {
		errmsg("%s: virtual size %" PRIu64 " is not a multiple of %u bytes",
		       image, img.virtual_size, SECTOR_SIZE);
		image_close(&img);
		return EXIT_USAGE;
	}
	hash = table_hash(&img, &o);
	if (!img.blockdev)
		fprintf(stderr, "qcow2dedup: note: %s is a regular file; dmsetup needs a "
			"block device: losetup --find --show %s\n", image, image);
	r = format_table_line(line, sizeof(line), image, &img, &o, hash);
	image_close(&img);
	if (r) {
		errmsg("table: the table line is too long");
		return EXIT_USAGE;
	}
	puts(line);
	return EXIT_OK;
}

/* The whole of @path ("-": standard input) in a malloc'ed buffer. */
static int slurp(const char *path, uint8_t **data, size_t *len)
{
	int fd = strcmp(path, "-") ? open(path, O_RDONLY | O_CLOEXEC) : 0;
	size_t cap = 1 << 20;
	int err = 0;
	ssize_t n;

	*len = 0;
	*data = NULL;
	if (fd < 0) {
		errmsg("%s: %s", path, strerror(errno));
		return -1;
	}
	do {
		if (!*data || *len == cap) {
			uint8_t *p = realloc(*data, *data ? (cap *= 2) : cap);

			if (!p) {
				err = ENOMEM;
				break;
			}
			*data = p;
		}
		n = read(fd, *data + *len, cap - *len);
		if (n > 0)
			*len += (size_t)n;
		else if (n < 0 && errno != EINTR)
			err = errno;
	} while (n && !err);
	if (fd)
		close(fd);
	if (err) {
		errmsg("%s: %s", path, strerror(err));
		return -1;
	}
	return 0;
}

int cmd_hash(int argc, char **argv)
{
	uint8_t digest[HASH_MAX_DIGEST], *data = NULL;
	const struct hash_alg *alg;
	unsigned int i;
	size_t len;
	int r = EXIT_USAGE;

	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		usage(stdout, "hash");
		return EXIT_OK;
	}
	if (argc != 3) {
		usage(stderr, "hash");
		return EXIT_USAGE;
	}
	alg = hash_find(argv[1]);
	if (!alg) {
		errmsg("hash %s not supported by this tool", argv[1]);
		return EXIT_USAGE;
	}
	if (!slurp(argv[2], &data, &len) && !hash_digest(alg, data, len, digest)) {
		for (i = 0; i < hash_digest_len(alg); i++)
			printf("%02x", digest[i]);
		printf("  %s\n", argv[2]);
		r = EXIT_OK;
	}
	free(data);
	return r;
}

int main(int argc, char **argv)
{
	const struct command *c;

	if (argc < 2) {
		usage(stderr, NULL);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout, NULL);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "help")) {
		if (argc > 2 && !find_command(argv[2])) {
			errmsg("unknown command '%s'", argv[2]);
			return EXIT_USAGE;
		}
		usage(stdout, argc > 2 ? argv[2] : NULL);
		return EXIT_OK;
	}
	c = find_command(argv[1]);
	if (!c) {
		errmsg("unknown command '%s'", argv[1]);
		usage(stderr, NULL);
		return EXIT_USAGE;
	}
	return c->fn(argc - 1, argv + 1);
}
