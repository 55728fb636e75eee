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
#include <signal.h>
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
	bool writable;				/* status mode "write" */
};

/* The table of qcow2dedup device @name and the device node it maps. */
static int mapped_get(const char *name, struct mapped *m)
{
	char *argv[] = { "dmsetup", "table", (char *)name, NULL };
	unsigned long long start;
	char target[32], path[128];
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
	if (dev_node(maj, min, m->devnode, sizeof(m->devnode))) {
		errmsg("%s: no device node for %u:%u", name, maj, min);
		return -1;
	}
	{
		char *st[] = { "dmsetup", "status", (char *)name, NULL };
		char status[1024], mode[32];

		m->writable = !run_cmd(st, status, sizeof(status)) &&
			      status_field(status, 0, mode, sizeof(mode)) &&
			      !strcmp(mode, "write");
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

/*
 * SIGINT, SIGTERM and SIGHUP wait while the device is suspended: an
 * interrupted command would leave it so, with its users' I/O hanging.
 * (qemu-img, in the same process group, still gets them and fails; the
 * device is then resumed.)
 */
static void hold_signals(sigset_t *old)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigprocmask(SIG_BLOCK, &set, old);
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
	sigset_t oldmask;
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
	if (!m.writable) {
		errmsg("%s: refused: the device is not in write mode (read-only "
		       "activation, or degraded): its image is not to be written",
		       m.name);
		return EXIT_USAGE;
	}
	hold_signals(&oldmask);
	if (dm("suspend", m.name)) {
		errmsg("%s: dmsetup suspend failed", m.name);
		sigprocmask(SIG_SETMASK, &oldmask, NULL);
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
		sigprocmask(SIG_SETMASK, &oldmask, NULL);
		return EXIT_USAGE;
	}
	sigprocmask(SIG_SETMASK, &oldmask, NULL);
	if (!r)
		printf("%s: snapshot %s %s\n", m.name, argv[3],
		       !strcmp(argv[2], "create") ? "created" : "deleted");
	return r ? EXIT_USAGE : EXIT_OK;
}

/* The image's virtual size as it is now on @devnode, or 0. */
static uint64_t current_vsize(const char *devnode, uint64_t *end)
{
	struct image img;
	uint64_t v = 0;

	if (!image_open(&img, devnode) && !image_end(&img, end))
		v = img.virtual_size;
	image_close(&img);
	return v;
}

/*
 * After the suspend of a resize: the device's table again, with the length
 * the image has now (the old one when qemu-img failed, the new one when it
 * did its part), so the resume never meets a length or device size the
 * table does not match.  Returns 0 when the device is resumed.
 */
static int reload_resume(const struct mapped *m)
{
	char line[TABLE_LINE_MAX + 64];
	uint64_t end, vsize = current_vsize(m->devnode, &end);
	char *reload[] = { "dmsetup", "reload", (char *)m->name, "--table", line, NULL };

	if (vsize && !(vsize % SECTOR_SIZE)) {
		snprintf(line, sizeof(line), "0 %" PRIu64 " qcow2dedup %s",
			 vsize / SECTOR_SIZE, m->args);
		if (run_cmd(reload, NULL, 0))
			errmsg("%s: dmsetup reload failed", m->name);
	}
	if (dm("resume", m->name)) {
		errmsg("%s: dmsetup resume failed: the device is suspended (the "
		       "kernel log says why)", m->name);
		return -1;
	}
	return 0;
}

int cmd_resize(int argc, char **argv)
{
	uint64_t end, vsize;
	sigset_t oldmask;
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
	if (!m.writable) {
		errmsg("%s: refused: the device is not in write mode (read-only "
		       "activation, or degraded): its image is not to be written",
		       m.name);
		return EXIT_USAGE;
	}
	hold_signals(&oldmask);
	if (dm("suspend", m.name)) {
		errmsg("%s: dmsetup suspend failed", m.name);
		sigprocmask(SIG_SETMASK, &oldmask, NULL);
		return EXIT_USAGE;
	}
	/* A file: room for qemu-img's allocations, before it runs. */
	if (*m.file) {
		char *cap[] = { "losetup", "-c", m.devnode, NULL };
		struct stat st;

		vsize = current_vsize(m.devnode, &end);
		if (!vsize || stat(m.file, &st)) {
			errmsg("%s: cannot read the image", m.name);
			goto resume;
		}
		if ((uint64_t)st.st_size < end + 2 * vsize + (16ULL << 20) &&
		    (set_file_size(m.file, end + 2 * vsize + (16ULL << 20)) ||
		     run_cmd(cap, NULL, 0))) {
			errmsg("%s: cannot grow %s", m.name, m.file);
			goto resume;
		}
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
			errmsg("%s: qemu-img resize %s failed; the size is unchanged",
			       m.name, argv[2]);
			goto resume;
		}
	}
	/* Room for the new size's clusters in a file. */
	vsize = current_vsize(m.devnode, &end);
	if (*m.file && vsize) {
		char *cap[] = { "losetup", "-c", m.devnode, NULL };
		struct stat st;
		uint64_t want = end + 2 * vsize + (8ULL << 20);

		if (!stat(m.file, &st) && (uint64_t)st.st_size < want &&
		    (set_file_size(m.file, want) || run_cmd(cap, NULL, 0)))
			errmsg("%s: cannot grow %s for the new size: new clusters "
			       "may run out", m.name, m.file);
	}
	r = EXIT_OK;
resume:
	if (reload_resume(&m))
		r = EXIT_USAGE;
	sigprocmask(SIG_SETMASK, &oldmask, NULL);
	if (r == EXIT_OK)
		printf("%s: %" PRIu64 " bytes\n", m.name, vsize);
	return r;
}
