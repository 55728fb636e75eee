// SPDX-License-Identifier: GPL-2.0
/*
 * activate, deactivate, list: an image file or device as a qcow2dedup
 * mapped device in one command, and back.
 *
 * Unlike the rest of the tool these change the system, the way an
 * administrator would by hand, with losetup(8) and dmsetup(8):
 *
 *   activate    refuses what the target would refuse in the header, an
 *               image some process (QEMU) holds a lock on, and an image
 *               already attached or mapped; then, for a regular file, grows
 *               it (sparse) so that the image can allocate every cluster
 *               of its virtual size, attaches a loop device with direct
 *               I/O, and creates the mapped device with a stable dm UUID.
 *               If dmsetup fails (the target refused the image) the loop
 *               device is detached and the file cut back to its size: the
 *               target never writes to an image it refused, so the file
 *               is as it was.
 *   deactivate  removes the mapped device, detaches the loop device and
 *               trims the file to the image's end.
 *   list        the mapped qcow2dedup devices, their images, modes and
 *               savings.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "activate.h"
#include "hash.h"
#include "image.h"
#include "qcow2dedup.h"

#define UUID_PREFIX	"QCOW2DEDUP-"
#define OUT_MAX		65536U

/*
 * QEMU's image locks (block/file-posix.c): one byte per permission from
 * offset 100, and one per shared permission from 200, taken with OFD
 * locks while QEMU (a VM, qemu-io, qemu-img) has the image open.
 */
#define QEMU_LOCK_START	100
#define QEMU_LOCK_LEN	200

/*
 * Run @argv (argv[0] looked up in PATH); its standard output goes into
 * @out (NUL-terminated, at most @len - 1 bytes kept) unless @out is NULL,
 * its standard error to ours.  Returns its exit status, or -1.
 */
static int run(char *const argv[], char *out, size_t len, bool quiet);

int run_cmd(char *const argv[], char *out, size_t len)
{
	return run(argv, out, len, false);
}

/* run_cmd() with the command's standard error discarded. */
int run_cmd_quiet(char *const argv[], char *out, size_t len)
{
	return run(argv, out, len, true);
}

static int run(char *const argv[], char *out, size_t len, bool quiet)
{
	int pipefd[2] = { -1, -1 }, status;
	size_t used = 0;
	pid_t pid;

	if (out && pipe(pipefd)) {
		errmsg("pipe: %s", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		errmsg("fork: %s", strerror(errno));
		return -1;
	}
	if (!pid) {
		sigset_t none;

		/* resize and snapshot block signals around a suspend. */
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (quiet) {
			int null = open("/dev/null", O_WRONLY);

			if (null >= 0)
				dup2(null, STDERR_FILENO);
		}
		if (out) {
			dup2(pipefd[1], STDOUT_FILENO);
			close(pipefd[0]);
			close(pipefd[1]);
		}
		execvp(argv[0], argv);
		fprintf(stderr, "qcow2dedup: cannot run %s: %s\n", argv[0],
			strerror(errno));
		_exit(127);
	}
	if (out) {
		ssize_t n;

		close(pipefd[1]);
		for (;;) {
			char sink[4096];

			if (used < len - 1)
				n = read(pipefd[0], out + used, len - 1 - used);
			else
				n = read(pipefd[0], sink, sizeof(sink));
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break;
			if (used < len - 1)
				used += (size_t)n;
		}
		out[used] = '\0';
		close(pipefd[0]);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * Set the size of file @path through a descriptor opened for writing
 * (UML's hostfs truncates through the inode's first descriptor, and
 * fails with EINVAL when that one is read-only).
 */
int set_file_size(const char *path, uint64_t size)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC), r;

	if (fd < 0)
		return -1;
	r = ftruncate(fd, (off_t)size);
	if (r) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return close(fd);
}

/*
 * The device node of block device @maj:@min ("/dev/" + its kernel name),
 * from sysfs: a loop device's minor is not its number when loop devices
 * have partitions.
 */
int dev_node(unsigned int maj, unsigned int min, char *buf, size_t len)
{
	char path[128], line[256];
	FILE *f;

	*buf = '\0';
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/uevent", maj, min);
	f = fopen(path, "r");
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, "DEVNAME=", 8)) {
			line[strcspn(line, "\n")] = '\0';
			snprintf(buf, len, "/dev/%s", line + 8);
		}
	if (f)
		fclose(f);
	return *buf ? 0 : -1;
}

/*
 * The dm UUID of an image: a hash of what names it for good: a device
 * mapper device's own UUID (an LV's "LVM-..."), else the canonical path
 * (of a file; of a disk, /dev/sdX, which may change across boots).
 */
int image_uuid(const char *path, char *uuid, size_t len)
{
	const struct hash_alg *sha = hash_find("sha256");
	uint8_t digest[HASH_MAX_DIGEST];
	char real[PATH_MAX];
	struct stat st;
	unsigned int i;

	if (!realpath(path, real) || stat(real, &st)) {
		errmsg("%s: %s", path, strerror(errno));
		return -1;
	}
	if (S_ISBLK(st.st_mode)) {
		char sys[128], dmuuid[256] = "";
		FILE *f;

		snprintf(sys, sizeof(sys), "/sys/dev/block/%u:%u/dm/uuid",
			 major(st.st_rdev), minor(st.st_rdev));
		f = fopen(sys, "r");
		if (f && fgets(dmuuid, sizeof(dmuuid), f)) {
			dmuuid[strcspn(dmuuid, "\n")] = '\0';
			if (*dmuuid)
				snprintf(real, sizeof(real), "dm:%s", dmuuid);
		}
		if (f)
			fclose(f);
	}
	if (!sha || hash_digest(sha, real, strlen(real), digest) ||
	    len < sizeof(UUID_PREFIX) + 32)
		return -1;
	strcpy(uuid, UUID_PREFIX);
	for (i = 0; i < 16; i++)
		sprintf(uuid + strlen(UUID_PREFIX) + 2 * i, "%02x", digest[i]);
	return 0;
}

/*
 * The header checks of the target's constructor (see the admin guide's
 * "Refused images"), made before anything is written.  The others (L1 and
 * refcount structures) are the target's; activate undoes its changes when
 * dmsetup fails.
 */
static const char *refusal(const struct image *img)
{
	if (img->crypt_method)
		return "Encrypted images are not supported";
	if (img->version >= 3) {
		if (img->incompat & QCOW2_INCOMPAT_DIRTY)
			return "Image is dirty: run 'qemu-img check -r all' first";
		if (img->incompat & QCOW2_INCOMPAT_CORRUPT)
			return "Image is marked corrupt: run 'qemu-img check -r all'";
		if (img->incompat & QCOW2_INCOMPAT_DATA_FILE)
			return "External data files are not supported";
		if (img->incompat & QCOW2_INCOMPAT_EXTL2)
			return "Extended L2 entries (subclusters) are not supported";
		if (img->incompat >> 5)
			return "Unknown incompatible feature bits";
	}
	if (img->backing_offset)
		return "Images with a backing file are not supported";
	if (img->virtual_size % SECTOR_SIZE)
		return "Virtual size is not a multiple of 512 bytes";
	return NULL;
}

/* Does another open file description hold a lock in QEMU's lock bytes? */
static bool qemu_locked(int fd)
{
	struct flock fl = {
		.l_type = F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = QEMU_LOCK_START,
		.l_len = QEMU_LOCK_LEN,
	};

	if (fcntl(fd, F_OFD_GETLK, &fl))
		return false;
	return fl.l_type != F_UNLCK;
}

/*
 * The first holder of block device @dev (a dm device's name, or its
 * kernel name) into @who.  Returns true when there is one.
 */
static bool dev_holder(dev_t dev, char *who, size_t len)
{
	char path[PATH_MAX], name[256];
	struct dirent *de;
	bool held = false;
	DIR *dir;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/holders",
		 major(dev), minor(dev));
	dir = opendir(path);
	if (!dir)
		return false;
	while (!held && (de = readdir(dir))) {
		FILE *f;

		if (de->d_name[0] == '.')
			continue;
		held = true;
		snprintf(who, len, "%s", de->d_name);
		snprintf(path, sizeof(path), "/sys/block/%s/dm/name", de->d_name);
		f = fopen(path, "r");
		if (f && fgets(name, sizeof(name), f)) {
			name[strcspn(name, "\n")] = '\0';
			snprintf(who, len, "/dev/mapper/%s", name);
		}
		if (f)
			fclose(f);
	}
	closedir(dir);
	return held;
}

/* The loop devices backed by @file, one per line, into @out. */
static int loops_of(const char *file, char *out, size_t len)
{
	char *argv[] = { "losetup", "--noheadings", "-O", "NAME", "-j",
			 (char *)file, NULL };

	return run_cmd(argv, out, len) ? -1 : 0;
}

/* The end of the image: past its last cluster with a non-zero refcount. */
int image_end(struct image *img, uint64_t *end)
{
	uint64_t per_block = 1ULL << img->refblock_bits, i, j;

	for (i = img->reftable_size; i-- > 0;) {
		if (!(img->reftable[i] & QCOW2_REFT_OFFSET_MASK))
			continue;
		for (j = per_block; j-- > 0;) {
			uint64_t rc;

			if (image_refcount(img, i * per_block + j, &rc))
				return -1;
			if (rc) {
				*end = (i * per_block + j + 1) * img->cluster_size;
				return 0;
			}
		}
	}
	*end = 0;
	return 0;
}

/*
 * How large the file must look for the target to allocate every cluster
 * of the virtual size once more (copies of clusters shared with
 * snapshots included) with its L2 tables, refcount blocks and dedup
 * table: each of those costs less than a cluster per cluster, so twice
 * the virtual size past the image's end, plus room for the refcount
 * table's growth.  Sparse: the file takes no more space for it.
 */
static uint64_t wanted_size(const struct image *img, uint64_t end)
{
	return align_up(end + 2 * img->virtual_size + (8ULL << 20),
			img->cluster_size);
}

static const char *default_name(const char *path, char *buf, size_t len)
{
	const char *base = strrchr(path, '/');
	char *dot;

	snprintf(buf, len, "%s", base ? base + 1 : path);
	dot = strrchr(buf, '.');
	if (dot && dot != buf && (!strcmp(dot, ".qcow2") || !strcmp(dot, ".img")))
		*dot = '\0';
	return buf;
}

static bool valid_dm_name(const char *name)
{
	return *name && strlen(name) < 128 && !strchr(name, '/') &&
	       strcmp(name, ".") && strcmp(name, "..") &&
	       !strpbrk(name, " \t\n");
}

static int activate_usage(char **argv, const char *why)
{
	if (why)
		errmsg("activate: %s", why);
	usage(stderr, argv[0]);
	return EXIT_USAGE;
}

int cmd_activate(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "readonly", no_argument, NULL, 'r' },
		{ "hash", required_argument, NULL, 'H' },
		{ "verify", no_argument, NULL, 'v' },
		{ "nodedup", no_argument, NULL, 'n' },
		{ "index-limit", required_argument, NULL, 'i' },
		{ "flush-interval", required_argument, NULL, 'f' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char line[TABLE_LINE_MAX], uuid[64], namebuf[256], who[PATH_MAX];
	char loopdev[OUT_MAX] = "", loops[OUT_MAX], devnum[32];
	uint64_t orig_size = 0, end, want;
	struct table_opts o = { 0 };
	const char *path, *name, *hash, *why, *dev;
	bool readonly = false, grown = false;
	struct image img;
	struct stat st;
	int c, r = EXIT_USAGE;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'r': readonly = true; break;
		case 'H': o.hash = optarg; break;
		case 'v': o.verify = true; break;
		case 'n': o.nodedup = true; break;
		case 'i': o.index_limit = optarg; break;
		case 'f': o.flush_interval = optarg; break;
		case 'h':
			usage(stdout, argv[0]);
			return EXIT_OK;
		default:
			return activate_usage(argv, NULL);
		}
	}
	if (optind != argc - 1 && optind != argc - 2)
		return activate_usage(argv, "expected IMAGE|DEV [NAME]");
	path = argv[optind];
	name = optind == argc - 2 ? argv[optind + 1] :
	       default_name(path, namebuf, sizeof(namebuf));
	if (!valid_dm_name(name)) {
		errmsg("activate: '%s' cannot be a device-mapper name", name);
		return EXIT_USAGE;
	}
	if (check_table_opts(&o))
		return EXIT_USAGE;
	if (image_open(&img, path)) {
		image_close(&img);
		return EXIT_USAGE;
	}
	why = refusal(&img);
	if (why) {
		errmsg("%s: refused: %s", path, why);
		goto out;
	}
	/* One qcow2dedup command at a time on a file (released at close). */
	if (!img.blockdev && flock(img.fd, LOCK_EX | LOCK_NB)) {
		errmsg("%s: refused: another qcow2dedup command is working on it",
		       path);
		goto out;
	}
	if (qemu_locked(img.fd)) {
		errmsg("%s: refused: another process holds QEMU's lock on it "
		       "(a VM, qemu-io or qemu-img has it open)", path);
		goto out;
	}
	if (fstat(img.fd, &st)) {
		errmsg("%s: %s", path, strerror(errno));
		goto out;
	}
	if (img.blockdev && dev_holder(st.st_rdev, who, sizeof(who))) {
		errmsg("%s: refused: in use by %s (already active?)", path, who);
		goto out;
	}
	if (image_uuid(path, uuid, sizeof(uuid)))
		goto out;
	if (!img.blockdev) {
		if (loops_of(path, loops, sizeof(loops))) {
			errmsg("%s: losetup -j failed", path);
			goto out;
		}
		if (*loops) {
			struct stat lst;

			loops[strcspn(loops, "\n")] = '\0';
			if (!stat(loops, &lst) &&
			    dev_holder(lst.st_rdev, who, sizeof(who)))
				errmsg("%s: refused: already active as %s (through %s)",
				       path, who, loops);
			else
				errmsg("%s: refused: attached to %s already; detach it "
				       "(losetup -d %s) or activate that device", path,
				       loops, loops);
			goto out;
		}
	}
	hash = table_hash(&img, &o);

	/* Nothing written so far.  A file grows (sparse) and gets a loop. */
	if (!img.blockdev) {
		char *losetup[] = { "losetup", "--find", "--show", "--direct-io=on",
				    (char *)path, readonly ? "--read-only" : NULL,
				    NULL };

		if (image_end(&img, &end))
			goto out;
		orig_size = img.size;
		want = readonly ? align_up(orig_size > end ? orig_size : end,
					   img.cluster_size) :
				  wanted_size(&img, end > orig_size ? end : orig_size);
		if (want > orig_size) {
			if (set_file_size(path, want)) {
				errmsg("%s: cannot grow to %" PRIu64 " bytes: %s",
				       path, want, strerror(errno));
				goto out;
			}
			grown = true;
		}
		if (run_cmd(losetup, loopdev, sizeof(loopdev)) || !*loopdev) {
			/*
			 * File systems without O_DIRECT (tmpfs, hostfs).  An
			 * older losetup attaches first and fails after.
			 */
			if (*loopdev) {
				char *detach[] = { "losetup", "-d", loopdev, NULL };

				loopdev[strcspn(loopdev, "\n")] = '\0';
				run_cmd(detach, NULL, 0);
			}
			losetup[3] = "--direct-io=off";
			fprintf(stderr, "qcow2dedup: note: %s: no direct I/O on its "
				"file system; the loop device goes through the page "
				"cache\n", path);
			if (run_cmd(losetup, loopdev, sizeof(loopdev)) || !*loopdev) {
				errmsg("%s: losetup failed", path);
				*loopdev = '\0';
				goto undo;
			}
		}
		loopdev[strcspn(loopdev, "\n")] = '\0';
		dev = loopdev;
	} else {
		/* major:minor: a path may hold blanks the table cannot. */
		snprintf(devnum, sizeof(devnum), "%u:%u", major(st.st_rdev),
			 minor(st.st_rdev));
		dev = devnum;
	}
	if (format_table_line(line, sizeof(line), dev, &img, &o, hash)) {
		errmsg("activate: the table line is too long");
		goto undo;
	}
	{
		char *dmsetup[] = { "dmsetup", "create", (char *)name, "--uuid", uuid,
				    "--table", line, readonly ? "--readonly" : NULL,
				    NULL };

		if (run_cmd(dmsetup, NULL, 0)) {
			errmsg("%s: dmsetup create %s failed (the kernel log says "
			       "why); nothing was changed", path, name);
			goto undo;
		}
	}
	printf("%s: /dev/mapper/%s on %s%s\n", path, name, dev,
	       readonly ? ", read-only" : "");
	r = EXIT_OK;
	goto out;
undo:
	if (*loopdev) {
		char *detach[] = { "losetup", "-d", loopdev, NULL };

		run_cmd(detach, NULL, 0);
	}
	/* Cut back only what nothing uses: no loop on it, no device of ours. */
	if (grown) {
		char *info[] = { "dmsetup", "info", "-u", uuid, NULL };
		char out[4096];

		if (loops_of(path, loops, sizeof(loops)) || *loops ||
		    !run_cmd_quiet(info, out, sizeof(out)))
			errmsg("%s: in use after all: left at %" PRIu64 " bytes",
			       path, want);
		else if (set_file_size(path, orig_size))
			errmsg("%s: cannot cut back to %" PRIu64 " bytes: %s", path,
			       orig_size, strerror(errno));
	}
out:
	image_close(&img);
	return r;
}

/*
 * The table of mapped device @name: its device (major:minor) when its
 * target is qcow2dedup.  Returns 0, or -1 (reported).
 */
static int qcow2dedup_dev(const char *name, unsigned int *maj, unsigned int *min)
{
	char *argv[] = { "dmsetup", "table", (char *)name, NULL };
	char out[TABLE_LINE_MAX + 64], target[32];
	unsigned long long start, len;

	if (run_cmd(argv, out, sizeof(out)))
		return -1;
	if (sscanf(out, "%llu %llu %31s %u:%u", &start, &len, target, maj, min) != 5 ||
	    strcmp(target, "qcow2dedup")) {
		errmsg("%s: not a qcow2dedup device", name);
		return -1;
	}
	return 0;
}

/* The file behind loop device @maj:@min into @file, or "" if it is none. */
static void loop_backing_file(unsigned int maj, unsigned int min, char *file,
			      size_t len)
{
	char path[128];
	FILE *f;

	*file = '\0';
	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/loop/backing_file",
		 maj, min);
	f = fopen(path, "r");
	if (!f)
		return;
	if (fgets(file, (int)len, f))
		file[strcspn(file, "\n")] = '\0';
	fclose(f);
}

/*
 * Cut an image file back to its end, as QEMU leaves it: only the file the
 * loop device had (@ino on @fsdev), only when nothing has it attached any
 * more, nobody holds QEMU's lock on it, and no other qcow2dedup command
 * works on it.
 */
static int trim_image(const char *file, unsigned long long ino,
		      unsigned int fsmaj, unsigned int fsmin)
{
	char loops[OUT_MAX];
	struct image img;
	uint64_t end, size;
	struct stat st;
	int r = -1;

	if (image_open(&img, file))
		goto out;
	if (flock(img.fd, LOCK_EX | LOCK_NB) || fstat(img.fd, &st) ||
	    st.st_ino != ino || major(st.st_dev) != fsmaj ||
	    minor(st.st_dev) != fsmin || qemu_locked(img.fd) ||
	    loops_of(file, loops, sizeof(loops)) || *loops) {
		errmsg("%s: in use, or not the file the loop device had: not "
		       "trimmed", file);
		goto out;
	}
	size = img.size;
	if (image_end(&img, &end))
		goto out;
	r = 0;
	if (end && end < size) {
		r = set_file_size(file, end);
		if (r)
			errmsg("%s: cannot trim to %" PRIu64 " bytes: %s", file,
			       end, strerror(errno));
		else
			printf("%s: trimmed to %" PRIu64 " bytes\n", file, end);
	}
out:
	image_close(&img);
	return r;
}

/* The name of the device with dm UUID @uuid into @name, or -1. */
static int dm_name_of_uuid(const char *uuid, char *name, size_t len)
{
	char *info[] = { "dmsetup", "info", "-c", "--noheadings", "-o", "name",
			 "-u", (char *)uuid, NULL };

	if (run_cmd_quiet(info, name, len) || !*name)
		return -1;
	name[strcspn(name, "\n")] = '\0';
	return 0;
}

int cmd_deactivate(int argc, char **argv)
{
	char uuid[64], dmuuid[128], name[256], file[PATH_MAX], loopdev[300];
	char back[128];
	unsigned long long ino = 0;
	unsigned int maj, min, fsmaj = 0, fsmin = 0;
	const char *arg;
	struct stat st;

	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		usage(stdout, argv[0]);
		return EXIT_OK;
	}
	if (argc != 2) {
		errmsg("deactivate: expected one NAME or IMAGE");
		usage(stderr, argv[0]);
		return EXIT_USAGE;
	}
	/*
	 * A device name (or /dev/mapper/NAME); else an image file or device:
	 * its device by the UUID activate gave it.
	 */
	arg = strncmp(argv[1], "/dev/mapper/", 12) ? argv[1] : argv[1] + 12;
	snprintf(name, sizeof(name), "%s", arg);
	if (arg == argv[1] && !strchr(arg, '/')) {
		char *info[] = { "dmsetup", "info", (char *)arg, NULL };
		char out[4096];

		if (!run_cmd_quiet(info, out, sizeof(out)))
			goto named;
	}
	if (arg == argv[1] && !stat(arg, &st)) {
		if (image_uuid(arg, uuid, sizeof(uuid)))
			return EXIT_USAGE;
		if (dm_name_of_uuid(uuid, name, sizeof(name))) {
			errmsg("%s: no device activated from it (dm UUID %s)",
			       arg, uuid);
			return EXIT_USAGE;
		}
	}
named:
	if (qcow2dedup_dev(name, &maj, &min))
		return EXIT_USAGE;
	loop_backing_file(maj, min, file, sizeof(file));
	*dmuuid = '\0';
	if (*file) {
		char *info[] = { "dmsetup", "info", "-c", "--noheadings", "-o", "uuid",
				 name, NULL };
		char *bk[] = { "losetup", "--noheadings", "-O", "BACK-INO,BACK-MAJ:MIN",
			       loopdev, NULL };

		if (run_cmd(info, dmuuid, sizeof(dmuuid)))
			*dmuuid = '\0';
		dmuuid[strcspn(dmuuid, "\n")] = '\0';
		/* Only a loop activate attached: its UUID names the file. */
		if (image_uuid(file, uuid, sizeof(uuid)) || strcmp(uuid, dmuuid) ||
		    dev_node(maj, min, loopdev, sizeof(loopdev)) ||
		    run_cmd(bk, back, sizeof(back)) ||
		    sscanf(back, " %llu %u:%u", &ino, &fsmaj, &fsmin) != 3)
			*file = '\0';
	}
	{
		char *remove[] = { "dmsetup", "remove", name, NULL };

		if (run_cmd(remove, NULL, 0)) {
			errmsg("%s: dmsetup remove failed (in use?)", name);
			return EXIT_USAGE;
		}
	}
	printf("%s: removed\n", name);
	if (!*file)
		return EXIT_OK;
	/* The loop device activate attached: detach it, trim the file. */
	{
		char *detach[] = { "losetup", "-d", loopdev, NULL };

		if (run_cmd(detach, NULL, 0)) {
			errmsg("%s: losetup -d failed", loopdev);
			return EXIT_USAGE;
		}
	}
	printf("%s: detached from %s\n", loopdev, file);
	return trim_image(file, ino, fsmaj, fsmin) ? EXIT_USAGE : EXIT_OK;
}

/* Field @n (0-based) of a dmsetup status line after "<start> <len> <target>". */
const char *status_field(const char *status, unsigned int n, char *buf, size_t len)
{
	const char *p = status;
	unsigned int i;
	size_t w;

	for (i = 0; i < n + 3; i++) {
		p += strspn(p, " ");
		p += strcspn(p, " \n");
	}
	p += strspn(p, " ");
	w = strcspn(p, " \n");
	if (!w || w >= len)
		return NULL;
	memcpy(buf, p, w);
	buf[w] = '\0';
	return buf;
}

int cmd_list(int argc, char **argv)
{
	char *table[] = { "dmsetup", "table", "--target", "qcow2dedup", NULL };
	char out[OUT_MAX], *line, *save;
	bool header = false;

	if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
		usage(stdout, argv[0]);
		return EXIT_OK;
	}
	if (argc != 1) {
		usage(stderr, argv[0]);
		return EXIT_USAGE;
	}
	if (run_cmd(table, out, sizeof(out)))
		return EXIT_USAGE;
	for (line = strtok_r(out, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		char name[256], file[PATH_MAX], status[1024], mode[32], saved[32];
		char value[64];
		char stats[OUT_MAX], *colon = strchr(line, ':');
		char *st[] = { "dmsetup", "status", name, NULL };
		char *msg[] = { "dmsetup", "message", name, "0", "stats", NULL };
		unsigned int maj, min;
		const char *bytes;

		if (!colon || (size_t)(colon - line) >= sizeof(name) ||
		    sscanf(colon + 1, " %*u %*u qcow2dedup %u:%u", &maj, &min) != 2)
			continue;
		memcpy(name, line, (size_t)(colon - line));
		name[colon - line] = '\0';
		loop_backing_file(maj, min, file, sizeof(file));
		if (!*file)
			snprintf(file, sizeof(file), "%u:%u", maj, min);
		if (run_cmd(st, status, sizeof(status)) ||
		    !status_field(status, 0, mode, sizeof(mode)))
			snprintf(mode, sizeof(mode), "?");
		bytes = NULL;
		if (!run_cmd(msg, stats, sizeof(stats)))
			bytes = stats_value(stats, "bytes_saved", value,
					    sizeof(value));
		human_size(bytes ? strtoull(bytes, NULL, 10) : 0, saved, sizeof(saved));
		if (!header) {
			printf("%-20s %-10s %10s  %s\n", "NAME", "MODE", "SAVED", "IMAGE");
			header = true;
		}
		printf("%-20s %-10s %10s  %s\n", name, mode, bytes ? saved : "-", file);
	}
	return EXIT_OK;
}
