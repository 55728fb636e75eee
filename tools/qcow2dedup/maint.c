// SPDX-License-Identifier: GPL-2.0
/*
 * resize, snapshot: QEMU's maintenance of an active device's image, in the
 * order the admin guide gives ("Suspend, resume and table reloads"), so
 * that nobody has to get it right by hand:
 *
 *   resize NAME SIZE           suspend; (file: grow it, refresh the loop's
 *                              capacity); qemu-img resize; reload the
 *                              table with the new length; resume
 *   snapshot NAME create TAG   suspend; qemu-img snapshot -c; resume
 *   snapshot NAME delete TAG   suspend; qemu-img snapshot -d; resume
 *   snapshot NAME list         qemu-img snapshot -l (shared, no suspend)
 *
 * qemu-img works on the device the target reads (the loop device for an
 * image file) with O_DIRECT (cache.direct=on), so neither side reads the
 * other's bytes out of a page cache.  When a step after the suspend fails,
 * the device is resumed with the table it had: the target's resume checks
 * the image again, and refuses what it cannot take over (see the guide).
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "activate.h"
#include "image.h"
#include "qcow2dedup.h"

struct mapped {
	char name[256];
	char table[TABLE_LINE_MAX + 64];	/* as dmsetup table prints it */
	unsigned long long len;			/* sectors */
	const char *args;			/* after "qcow2dedup" */
	char devnode[300];			/* /dev/... of major:minor */
	char file[PATH_MAX];			/* a loop device's file, or "" */
};

/* The table of qcow2dedup device @name and the device node it maps. */
static int mapped_get(const char *name, struct mapped *m)
{
	char *argv[] = { "dmsetup", "table", (char *)name, NULL };
	unsigned long long start;
	char target[32], path[128], line[256];
	unsigned int maj, min;
	int off = 0;
	FILE *f;

	snprintf(m->name, sizeof(m->name), "%s", name);
	if (run_cmd(argv, m->table, sizeof(m->table)))
		return -1;
	m->table[strcspn(m->table, "\n")] = '\0';
	if (sscanf(m->table, "%llu %llu %31s %n", &start, &m->len, target, &off) != 3 ||
	    strcmp(target, "qcow2dedup") || start ||
	    sscanf(m->table + off, "%u:%u", &maj, &min) != 2) {
		errmsg("%s: not a qcow2dedup device", name);
		return -1;
	}
	m->args = m->table + off;
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/uevent", maj, min);
	*m->devnode = '\0';
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "DEVNAME=", 8)) {
			line[strcspn(line, "\n")] = '\0';
			snprintf(m->devnode, sizeof(m->devnode), "/dev/%s", line + 8);
		}
	if (f)
		fclose(f);
	if (!*m->devnode) {
		errmsg("%s: no device node for %u:%u", name, maj, min);
		return -1;
	}
	*m->file = '\0';
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/loop/backing_file", maj, min);
	f = fopen(path, "r");
	if (f) {
		if (fgets(m->file, sizeof(m->file), f))
			m->file[strcspn(m->file, "\n")] = '\0';
		fclose(f);
	}
	return 0;
}

static int dm(const char *verb, const char *name)
{
	char *argv[] = { "dmsetup", (char *)verb, (char *)name, NULL };

	return run_cmd(argv, NULL, 0);
}

/* qemu-img @sub ... on @devnode, O_DIRECT; @extra NULL-terminated. */
static int qemu_img(const char *sub, const char *devnode, char *const extra[],
		    bool force_share)
{
	char opts[400];
	char *argv[16] = { "qemu-img", (char *)sub };
	int n = 2, i;

	snprintf(opts, sizeof(opts),
		 "driver=qcow2,file.driver=host_device,file.filename=%s,cache.direct=on",
		 devnode);
	for (i = 0; extra[i] && n < 12; i++)
		argv[n++] = extra[i];
	if (force_share)
		argv[n++] = "-U";
	argv[n++] = "--image-opts";
	argv[n++] = opts;
	argv[n] = NULL;
	return run_cmd(argv, NULL, 0);
}

static bool help_asked(int argc, char **argv)
{
	return argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"));
}

int cmd_snapshot(int argc, char **argv)
{
	struct mapped m;
	int r;

	if (help_asked(argc, argv)) {
		usage(stdout, argv[0]);
		return EXIT_OK;
	}
	if (argc < 3 || (!strcmp(argv[2], "list") ? argc != 3 :
			 argc != 4 || (strcmp(argv[2], "create") &&
				       strcmp(argv[2], "delete")))) {
		errmsg("snapshot: expected NAME create|delete TAG, or NAME list");
		usage(stderr, argv[0]);
		return EXIT_USAGE;
	}
	if (mapped_get(argv[1], &m))
		return EXIT_USAGE;
	if (!strcmp(argv[2], "list")) {
		char *extra[] = { "-l", NULL };

		return qemu_img("snapshot", m.devnode, extra, true) ? EXIT_USAGE : EXIT_OK;
	}
	if (dm("suspend", m.name)) {
		errmsg("%s: dmsetup suspend failed", m.name);
		return EXIT_USAGE;
	}
	{
		char *extra[] = { !strcmp(argv[2], "create") ? "-c" : "-d", argv[3], NULL };

		r = qemu_img("snapshot", m.devnode, extra, false);
	}
	if (r)
		errmsg("%s: qemu-img snapshot %s %s failed", m.name, argv[2], argv[3]);
	if (dm("resume", m.name)) {
		errmsg("%s: dmsetup resume failed: the device is suspended (the "
		       "kernel log says why)", m.name);
		return EXIT_USAGE;
	}
	if (!r)
		printf("%s: snapshot %s %s\n", m.name, argv[3],
		       !strcmp(argv[2], "create") ? "created" : "deleted");
	return r ? EXIT_USAGE : EXIT_OK;
}

int cmd_resize(int argc, char **argv)
{
	char line[TABLE_LINE_MAX + 64];
	uint64_t end, vsize;
	struct image img;
	struct mapped m;
	int r = EXIT_USAGE;

	if (help_asked(argc, argv)) {
		usage(stdout, argv[0]);
		return EXIT_OK;
	}
	if (argc != 3 || !*argv[2] || argv[2][0] == '-') {
		errmsg("resize: expected NAME SIZE (SIZE as qemu-img takes it: "
		       "bytes, or with K, M, G, T; +SIZE to grow by; never smaller)");
		usage(stderr, argv[0]);
		return EXIT_USAGE;
	}
	if (mapped_get(argv[1], &m))
		return EXIT_USAGE;
	if (dm("suspend", m.name)) {
		errmsg("%s: dmsetup suspend failed", m.name);
		return EXIT_USAGE;
	}
	{
		/* qemu-img refuses to shrink without --shrink: never given. */
		char opts[400];
		char *resize[] = { "qemu-img", "resize", "--image-opts", opts,
				   argv[2], NULL };

		snprintf(opts, sizeof(opts),
			 "driver=qcow2,file.driver=host_device,file.filename=%s,"
			 "cache.direct=on", m.devnode);
		if (run_cmd(resize, NULL, 0)) {
			errmsg("%s: qemu-img resize %s failed; nothing changed",
			       m.name, argv[2]);
			goto resume_old;
		}
	}
	/* The new virtual size, and room for it in a file. */
	if (image_open(&img, m.devnode)) {
		image_close(&img);
		goto resume_old;
	}
	vsize = img.virtual_size;
	if (image_end(&img, &end)) {
		image_close(&img);
		goto resume_old;
	}
	image_close(&img);
	if (*m.file) {
		uint64_t want = end + 2 * vsize + (8ULL << 20);
		char *cap[] = { "losetup", "-c", m.devnode, NULL };
		struct stat st;

		if (stat(m.file, &st) || ((uint64_t)st.st_size < want &&
					  set_file_size(m.file, want)) ||
		    run_cmd(cap, NULL, 0)) {
			errmsg("%s: cannot grow %s for the new size", m.name, m.file);
			goto resume_old;
		}
	}
	if (vsize % SECTOR_SIZE) {
		errmsg("%s: new virtual size %" PRIu64 " is not a multiple of 512",
		       m.name, vsize);
		goto resume_old;
	}
	snprintf(line, sizeof(line), "0 %" PRIu64 " qcow2dedup %s",
		 vsize / SECTOR_SIZE, m.args);
	{
		char *reload[] = { "dmsetup", "reload", m.name, "--table", line, NULL };

		if (run_cmd(reload, NULL, 0)) {
			errmsg("%s: dmsetup reload failed", m.name);
			goto resume_old;
		}
	}
	if (dm("resume", m.name)) {
		errmsg("%s: dmsetup resume failed: the device is suspended (the "
		       "kernel log says why)", m.name);
		return EXIT_USAGE;
	}
	printf("%s: %" PRIu64 " bytes\n", m.name, vsize);
	return EXIT_OK;
resume_old:
	if (dm("resume", m.name))
		errmsg("%s: dmsetup resume failed: the device is suspended (the "
		       "kernel log says why; after a resize, reload with the new "
		       "length)", m.name);
	return r;
}
