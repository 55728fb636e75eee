// SPDX-License-Identifier: GPL-2.0
/*
 * qfuzz-helper: the per-image procedure of `make fuzz`, run inside UML.
 *
 *   qfuzz-helper DISK JOBS LOG
 *
 * DISK is the block device holding the packed slots (/dev/ubda), JOBS a file
 * of lines written by tools/testing/fuzz/run:
 *
 *   IMG NAME SLOT_SECTOR SLOT_SECTORS VIRT_SECTORS CLUSTER_SIZE PHASES OP...
 *
 * PHASES is "ro,rw" (fuzzing) or "rw" (seed generation), plus ",strict"
 * for images that must come through whole, or ",strict=CLASS+CLASS" for
 * some suspect classes only (see suspect()).  OPs, run in order
 * on the read-write activation:
 *   w:OFF:LEN:P  write LEN bytes of pattern P at OFF (O_DIRECT)
 *   d:OFF:LEN    BLKDISCARD          z:OFF:LEN  BLKZEROOUT
 *   f            fsync (a flush)     m          message "stats"
 *   v            read back what the writes left and compare
 *   s            the target must still be in "write" mode
 *   p:SECONDS    pause (tests the runner's hang detection)
 *   an OP ending in "!" must succeed (crafted images, control images)
 *
 * For each image: a dm-linear device over its slot (so I/O outside the slot
 * is refused by the block layer, "attempt to access beyond end of device");
 * the slot is read into memory; qcow2dedup is activated read-only, read in
 * full and removed, and the slot must be byte-identical; then read-write: if
 * refused the slot must be byte-identical, else read in full (it must read
 * as the read-only activation did), the OPs, removal.
 *
 * Everything is done with raw device-mapper ioctls in this one process:
 * an exec costs ~75 ms in UML with KASAN, and dmsetup would cost a dozen per
 * image.  Progress goes to LOG (hostfs writes reach the host file at once,
 * which is what the host's watchdog reads) and a marker per image to
 * /dev/kmsg, so a console report can be attributed to the image that ran.
 * Result lines: BEGIN, RO, RW, OPS, FAIL NAME REASON, END.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
#define READ_MAX_DEFAULT (64ULL << 20)

static int ctl = -1, logfd = -1, kmsg = -1;
static char cur[256];
static int failed;
static unsigned long long read_max = READ_MAX_DEFAULT;
static char *iobuf;

static void out(const char *fmt, ...)
{
	char line[4096];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (write(logfd, line, n) < 0)
		_exit(3);
}

static void fail(const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	out("FAIL %s %s", cur, msg);
	failed = 1;
}

/*
 * What a damaged image can legitimately cause (a cluster its refcounts call
 * free reused, two COPIED entries written through each other, a device
 * that goes read-only on metadata it cannot trust): a failure for strict
 * images (control images, crafted corpus images), else a SUSPECT line the
 * runner counts and samples.
 */
static int strict;
static char strict_classes[128];

static void suspect(const char *class, const char *fmt, ...)
{
	char msg[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (strict && (!strict_classes[0] || strstr(strict_classes, class))) {
		out("FAIL %s %s: %s", cur, class, msg);
		failed = 1;
	} else {
		out("SUSPECT %s %s %s: %s", cur, class, class, msg);
	}
}

static void marker(const char *what)
{
	char line[512];
	int n = snprintf(line, sizeof(line), "<5>qfuzz: %s %s\n", what, cur);

	if (kmsg >= 0 && write(kmsg, line, n) < 0)
		kmsg = -1;
}

/* ---- device-mapper ioctls ---- */

static union {
	struct dm_ioctl io;
	char raw[65536];
} dmb;

static void dm_init(const char *name, uint32_t flags)
{
	memset(&dmb.io, 0, sizeof(dmb.io));
	dmb.io.version[0] = DM_VERSION_MAJOR;
	dmb.io.version[1] = 0;
	dmb.io.version[2] = 0;
	dmb.io.data_size = sizeof(dmb);
	dmb.io.data_start = sizeof(struct dm_ioctl);
	dmb.io.flags = flags;
	snprintf(dmb.io.name, sizeof(dmb.io.name), "%s", name);
}

static int dm(unsigned long cmd)
{
	return ioctl(ctl, cmd, &dmb.io) ? -errno : 0;
}

static int dm_remove(const char *name)
{
	int i, r = 0;

	for (i = 0; i < 50; i++) {
		dm_init(name, 0);
		r = dm(DM_DEV_REMOVE);
		if (r != -EBUSY)
			break;
		usleep(100000);
	}
	return r;
}

/* Create @name with one target; its dev_t in @dev.  0, or -errno with
 * *stage = "create", "load" or "resume". */
static int dm_create(const char *name, unsigned long long len, const char *type,
		     const char *params, int ro, dev_t *dev, const char **stage)
{
	struct dm_target_spec *sp;
	int r;

	*stage = "create";
	dm_init(name, 0);
	r = dm(DM_DEV_CREATE);
	if (r)
		return r;
	dm_init(name, ro ? DM_READONLY_FLAG : 0);
	sp = (struct dm_target_spec *)(dmb.raw + sizeof(struct dm_ioctl));
	memset(sp, 0, sizeof(*sp));
	sp->sector_start = 0;
	sp->length = len;
	snprintf(sp->target_type, sizeof(sp->target_type), "%s", type);
	strcpy((char *)(sp + 1), params);
	dmb.io.target_count = 1;
	*stage = "load";
	r = dm(DM_TABLE_LOAD);
	if (!r) {
		dm_init(name, 0);
		*stage = "resume";
		r = dm(DM_DEV_SUSPEND);
	}
	if (r) {
		int r2 = dm_remove(name);

		if (r2)
			fail("remove of %s after a refused %s: %s", name, *stage, strerror(-r2));
		return r;
	}
	/* The kernel's huge_encode_dev() (new_encode_dev()). */
	*dev = makedev((dmb.io.dev & 0xfff00) >> 8,
		       (dmb.io.dev & 0xff) | ((dmb.io.dev >> 12) & 0xfff00));
	return 0;
}

static int dm_message(const char *name, const char *msg, char *outbuf, size_t outlen)
{
	struct dm_target_msg *m;
	int r;

	dm_init(name, 0);
	m = (struct dm_target_msg *)(dmb.raw + sizeof(struct dm_ioctl));
	m->sector = 0;
	strcpy(m->message, msg);
	r = dm(DM_TARGET_MSG);
	if (!r && outbuf) {
		outbuf[0] = 0;
		if (dmb.io.flags & DM_DATA_OUT_FLAG)
			snprintf(outbuf, outlen, "%s", dmb.raw + dmb.io.data_start);
	}
	return r;
}

/* The first word of the target's status line (its mode) into @mode. */
static int dm_mode(const char *name, char *mode, size_t len)
{
	struct dm_target_spec *sp;
	int r;

	dm_init(name, 0);
	r = dm(DM_TABLE_STATUS);
	if (r)
		return r;
	if (!dmb.io.target_count)
		return -ENODATA;
	sp = (struct dm_target_spec *)(dmb.raw + dmb.io.data_start);
	sscanf((char *)(sp + 1), "%31s", mode);
	mode[len - 1] = 0;
	return 0;
}

static int open_dev(dev_t dev, const char *tag, int flags)
{
	char path[64];

	snprintf(path, sizeof(path), "/tmp/qfuzz-%s", tag);
	unlink(path);
	if (mknod(path, S_IFBLK | 0600, dev))
		return -errno;
	return open(path, flags | O_DIRECT | O_CLOEXEC);
}

/* ---- data ---- */

static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Block @i of pattern @p (tools/testing/fuzz/qfuzz.py pattern()). */
static void pattern(unsigned char *b, uint64_t p, uint64_t i, size_t n)
{
	uint64_t base = (p << 40) | (i << 20), w;
	size_t j;

	for (j = 0; j < n; j += 8) {
		w = splitmix(base + j / 8);
		memcpy(b + j, &w, n - j < 8 ? n - j : 8);
	}
}

static uint64_t fasthash(const unsigned char *b, size_t n)
{
	uint64_t h = 0x243f6a8885a308d3ULL, w;
	size_t j;

	for (j = 0; j + 8 <= n; j += 8) {
		memcpy(&w, b + j, 8);
		h = (h ^ w) * 0x100000001b3ULL;
		h ^= h >> 29;
	}
	return h ^ n;
}

static int xpread(int fd, void *b, size_t n, off_t off)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pread(fd, (char *)b + done, n - done, off + done);

		if (r < 0)
			return -errno;
		if (r == 0)
			return -ENODATA;
		done += r;
	}
	return 0;
}

static int xpwrite(int fd, const void *b, size_t n, off_t off)
{
	size_t done = 0;

	while (done < n) {
		ssize_t r = pwrite(fd, (const char *)b + done, n - done, off + done);

		if (r < 0)
			return -errno;
		done += r;
	}
	return 0;
}

/* Read the slot into @copy; 0 or -errno. */
static int read_slot(int fd, unsigned char *copy, unsigned long long bytes)
{
	unsigned long long off;
	int r;

	for (off = 0; off < bytes; off += CHUNK) {
		size_t n = bytes - off < CHUNK ? bytes - off : CHUNK;

		r = xpread(fd, iobuf, n, off);
		if (r)
			return r;
		memcpy(copy + off, iobuf, n);
	}
	return 0;
}

static unsigned long long piece_off(unsigned long i, unsigned long long bytes, unsigned long npieces)
{
	if (bytes > read_max && i >= npieces / 2)
		return bytes - (unsigned long long)(npieces - i) * 65536;
	return (unsigned long long)i * 65536;
}

/*
 * Read the whole device (the first and last read_max/2 bytes of a larger
 * one) in 64 KiB pieces: a hash per piece, ~0 for a piece that failed.
 * Returns the number of pieces that failed.
 */
static unsigned long read_all(int fd, unsigned long long bytes, uint64_t *sums, unsigned long npieces)
{
	const size_t P = 65536;
	unsigned long i, j, k, bad = 0;

	/* Runs of up to 16 contiguous pieces in one read; piece by piece
	 * when the run fails (a corrupt entry fails only its own clusters). */
	for (i = 0; i < npieces; i = j) {
		unsigned long long off = piece_off(i, bytes, npieces), end;

		for (j = i + 1; j < npieces && j - i < CHUNK / P &&
		     piece_off(j, bytes, npieces) == off + (j - i) * P; j++)
			;
		end = piece_off(j - 1, bytes, npieces) + P;
		if (end > bytes)
			end = bytes;
		if (!xpread(fd, iobuf, end - off, off)) {
			for (k = i; k < j; k++) {
				unsigned long long o = piece_off(k, bytes, npieces);

				sums[k] = fasthash((unsigned char *)iobuf + (o - off),
						   end - o < P ? end - o : P);
			}
			continue;
		}
		for (k = i; k < j; k++) {
			unsigned long long o = piece_off(k, bytes, npieces);
			size_t n = end - o < P ? end - o : P;

			if (xpread(fd, iobuf, n, o)) {
				sums[k] = ~0ULL;
				bad++;
			} else {
				sums[k] = fasthash((unsigned char *)iobuf, n);
			}
		}
	}
	return bad;
}

/* ---- the model of what the ops left ---- */

struct range {
	unsigned long long off, len;
	unsigned char *exp;	/* expected bytes */
	unsigned char *valid;	/* per sector: 1 = expected known */
};

static struct range ranges[64];
static int nranges;

/* Apply an op's effect on [off, off+len) to every range: @data (NULL =
 * zeros), or unknown when !ok. */
static void model(unsigned long long off, unsigned long long len, const unsigned char *data, int ok)
{
	int k;

	for (k = 0; k < nranges; k++) {
		struct range *r = &ranges[k];
		unsigned long long a = off > r->off ? off : r->off;
		unsigned long long b = off + len < r->off + r->len ? off + len : r->off + r->len;
		unsigned long long s;

		if (a >= b)
			continue;
		if (ok) {
			if (data)
				memcpy(r->exp + (a - r->off), data + (a - off), b - a);
			else
				memset(r->exp + (a - r->off), 0, b - a);
		}
		for (s = (a - r->off) / 512; s < (b - r->off + 511) / 512; s++)
			r->valid[s] = ok;
	}
}

static void add_range(unsigned long long off, unsigned long long len)
{
	struct range *r;

	if (nranges == 64)
		return;
	r = &ranges[nranges++];
	r->off = off;
	r->len = len;
	r->exp = calloc(1, len);
	r->valid = calloc(1, len / 512 + 1);
}

static void free_ranges(void)
{
	while (nranges > 0) {
		nranges--;
		free(ranges[nranges].exp);
		free(ranges[nranges].valid);
	}
}

static const char *errname(int r)
{
	static char b[32];

	if (!r)
		return "ok";
	switch (-r) {
	case EIO: return "EIO";
	case EROFS: return "EROFS";
	case ENOSPC: return "ENOSPC";
	case EINVAL: return "EINVAL";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case ENOMEM: return "ENOMEM";
	case EPERM: return "EPERM";
	}
	snprintf(b, sizeof(b), "E%d", -r);
	return b;
}

static void run_ops(int fd, unsigned long long cs, unsigned long long bytes, char **ops, int nops,
		    const char *dmname)
{
	char summary[2048] = "", stats[8192];
	size_t sl = 0;
	int i, r;

	for (i = 0; i < nops; i++) {
		unsigned long long off = 0, len = 0, p = 0;
		char kind = ops[i][0];
		int must = ops[i][strlen(ops[i]) - 1] == '!';

		if (kind == 'w' || kind == 'd' || kind == 'z') {
			if (sscanf(ops[i] + 2, "%llu:%llu:%llu", &off, &len, &p) < 2 ||
			    off % 512 || len % 512 || !len || off + len > bytes) {
				fail("bad op %s", ops[i]);
				continue;
			}
		}
		out("STEP %s op %s", cur, ops[i]);
		r = 0;
		if (kind == 'w') {
			unsigned char *b;
			unsigned long long j;

			if (posix_memalign((void **)&b, 4096, len))
				abort();
			for (j = 0; j < len; j += cs)
				pattern(b + j, p, j / cs, len - j < cs ? len - j : cs);
			add_range(off, len);
			r = xpwrite(fd, b, len, off);
			model(off, len, b, !r);
			free(b);
		} else if (kind == 'd' || kind == 'z') {
			uint64_t rg[2] = { off, len };

			if (kind == 'z')
				add_range(off, len);
			r = ioctl(fd, kind == 'd' ? BLKDISCARD : BLKZEROOUT, rg) ? -errno : 0;
			model(off, len, NULL, kind == 'z' && !r);
		} else if (kind == 'f') {
			r = fsync(fd) ? -errno : 0;
		} else if (kind == 'p') {
			sleep(atoi(ops[i] + 2));	/* the runner's own test of its watchdog */
		} else if (kind == 'm') {
			r = dm_message(dmname, "stats", stats, sizeof(stats));
		} else if (kind == 's') {
			char mode[32] = "?";

			r = dm_mode(dmname, mode, sizeof(mode));
			if (!r && strcmp(mode, "write")) {
				/* dm-linear over a file never fails an I/O: only
				 * what the target made of the image can do this. */
				suspect("mode", "the target is in %s mode after the ops (no I/O error happened)", mode);
				r = -EROFS;
			}
		} else if (kind == 'v') {
			int k;

			for (k = 0; k < nranges; k++) {
				struct range *g = &ranges[k];
				unsigned char *b;
				unsigned long long s;

				if (posix_memalign((void **)&b, 4096, g->len))
					abort();
				if (xpread(fd, b, g->len, g->off)) {
					free(b);
					continue;	/* a read error is not a lie */
				}
				for (s = 0; s < g->len / 512; s++) {
					if (g->valid[s] && memcmp(b + 512 * s, g->exp + 512 * s, 512)) {
						suspect("data", "the %llu bytes at %llu read back wrong at sector %llu (what a completed write left)",
						     g->len, g->off, (g->off >> 9) + s);
						r = -EILSEQ;
						break;
					}
				}
				free(b);
			}
		}
		if (must && r && r != -EILSEQ)
			suspect("op", "%s failed with %s (it must succeed)", ops[i], errname(r));
		sl += snprintf(summary + sl, sizeof(summary) - sl, "%s%c:%s",
			       sl ? " " : "", kind, r == -EILSEQ ? "MISMATCH" : errname(r));
		if (sl >= sizeof(summary))
			sl = sizeof(summary) - 1;
	}
	out("OPS %s %s", cur, summary);
}

/*
 * After the read-write activation: activated read-only again, the image
 * must read as at first wherever no op wrote, discarded or zeroed (op
 * ranges rounded out to whole clusters).
 */
static void reopen(const char *params, unsigned long long vsecs, unsigned long long bytes,
		   unsigned long long cs, const uint64_t *ro_sums, uint64_t *sums,
		   unsigned long npieces, char **ops, int nops)
{
	const char *stage;
	unsigned long i;
	dev_t dev;
	int fd, r, k;

	out("STEP %s reopen", cur);
	r = dm_create("qfr", vsecs, "qcow2dedup", params, 1, &dev, &stage);
	if (r) {
		suspect("after-rw", "the image is refused read-only now (%s: %s), it was accepted before",
			stage, errname(r));
		return;
	}
	fd = open_dev(dev, "qfr", O_RDONLY);
	if (fd >= 0) {
		read_all(fd, bytes, sums, npieces);
		close(fd);
	}
	for (i = 0; fd >= 0 && i < npieces; i++) {
		unsigned long long a = piece_off(i, bytes, npieces), b = a + 65536;
		int touched = 0;

		if (sums[i] == ro_sums[i] || sums[i] == ~0ULL || ro_sums[i] == ~0ULL)
			continue;
		for (k = 0; k < nops && !touched; k++) {
			unsigned long long off, len;

			if (strchr("wdz", ops[k][0]) &&
			    sscanf(ops[k] + 2, "%llu:%llu", &off, &len) == 2) {
				unsigned long long lo = off / cs * cs, hi = (off + len + cs - 1) / cs * cs;

				touched = lo < b && a < hi;
			}
		}
		if (!touched) {
			suspect("after-rw", "the 64 KiB at %llu read differently after the read-write activation, though no op touched them",
				a);
			break;
		}
	}
	r = dm_remove("qfr");
	if (r)
		fail("after-rw: remove failed: %s", strerror(-r));
}

static void do_image(int disk_major, int disk_minor, char *line)
{
	char *tok[128], *save = NULL, *t;
	int n = 0;
	unsigned long long slot_sec, slot_secs, vsecs, cs, slot_bytes, bytes;
	char params[256], lin[64], qd[64];
	const char *stage;
	dev_t ldev, qdev;
	unsigned char *copy = NULL;
	uint64_t *ro_sums = NULL, *rw_sums = NULL;
	unsigned long npieces;
	int lfd = -1, fd, r, ro_ok = 0, do_ro;
	struct timespec t0, t1;

	clock_gettime(CLOCK_MONOTONIC, &t0);

	for (t = strtok_r(line, " \n", &save); t && n < 128; t = strtok_r(NULL, " \n", &save))
		tok[n++] = t;
	if (n < 7 || strcmp(tok[0], "IMG"))
		return;
	snprintf(cur, sizeof(cur), "%s", tok[1]);
	slot_sec = strtoull(tok[2], NULL, 0);
	slot_secs = strtoull(tok[3], NULL, 0);
	vsecs = strtoull(tok[4], NULL, 0);
	cs = strtoull(tok[5], NULL, 0);
	do_ro = strstr(tok[6], "ro") != NULL;
	strict = strstr(tok[6], "strict") != NULL;
	strict_classes[0] = 0;
	if (strstr(tok[6], "strict="))
		snprintf(strict_classes, sizeof(strict_classes), "%s", strstr(tok[6], "strict=") + 7);
	slot_bytes = slot_secs * 512;
	bytes = vsecs * 512;
	failed = 0;
	out("BEGIN %s", cur);
	marker("begin");

	snprintf(lin, sizeof(lin), "qfl-%d", getpid());
	snprintf(qd, sizeof(qd), "qfd-%d", getpid());
	snprintf(params, sizeof(params), "%d:%d %llu", disk_major, disk_minor, slot_sec);
	r = dm_create(lin, slot_secs, "linear", params, 0, &ldev, &stage);
	if (r) {
		fail("cannot create the linear device (%s: %s)", stage, strerror(-r));
		goto end;
	}
	lfd = open_dev(ldev, "lin", O_RDONLY);
	copy = malloc(slot_bytes);
	if (lfd < 0 || !copy || read_slot(lfd, copy, slot_bytes)) {
		fail("cannot read the slot");
		goto out_lin;
	}
	snprintf(params, sizeof(params), "%u:%u", major(ldev), minor(ldev));
	npieces = (bytes > read_max ? read_max : bytes + 65535) / 65536;
	ro_sums = calloc(npieces + 1, 8);
	rw_sums = calloc(npieces + 1, 8);

	if (do_ro) {
		out("STEP %s ro-create", cur);
		r = dm_create(qd, vsecs, "qcow2dedup", params, 1, &qdev, &stage);
		if (r) {
			out("RO %s refused:%s:%s", cur, stage, errname(r));
		} else {
			ro_ok = 1;
			fd = open_dev(qdev, "qd", O_RDONLY);
			if (fd < 0)
				fail("cannot open the read-only device: %s", strerror(errno));
			out("STEP %s ro-read", cur);
			out("RO %s accepted %lu/%lu-bad-pieces", cur,
			    fd < 0 ? npieces : read_all(fd, bytes, ro_sums, npieces), npieces);
			if (fd >= 0)
				close(fd);
			out("STEP %s ro-remove", cur);
			r = dm_remove(qd);
			if (r) {
				fail("read-only: remove failed: %s", strerror(-r));
				goto out_lin;
			}
		}
		out("STEP %s ro-check", cur);
		{
			unsigned long long off;

			for (off = 0; off < slot_bytes; off += CHUNK) {
				size_t k = slot_bytes - off < CHUNK ? slot_bytes - off : CHUNK;

				if (xpread(lfd, iobuf, k, off) || memcmp(iobuf, copy + off, k)) {
					fail("%s activation changed the image (first difference in the MiB at %llu)",
					     ro_ok ? "the read-only" : "a refused read-only", off);
					goto out_lin;
				}
			}
		}
	}

	out("STEP %s rw-create", cur);
	r = dm_create(qd, vsecs, "qcow2dedup", params, 0, &qdev, &stage);
	if (r) {
		unsigned long long off;

		out("RW %s refused:%s:%s", cur, stage, errname(r));
		for (off = 0; off < slot_bytes; off += CHUNK) {
			size_t k = slot_bytes - off < CHUNK ? slot_bytes - off : CHUNK;

			if (xpread(lfd, iobuf, k, off) || memcmp(iobuf, copy + off, k)) {
				fail("a refused read-write activation changed the image (MiB at %llu)", off);
				break;
			}
		}
		goto out_lin;
	}
	fd = open_dev(qdev, "qd", O_RDWR);
	if (fd < 0) {
		fail("cannot open the read-write device: %s", strerror(errno));
	} else {
		unsigned long bad = 0, i, diff = 0;

		if (do_ro) {
			out("STEP %s rw-read", cur);
			bad = read_all(fd, bytes, rw_sums, npieces);
			for (i = 0; i < npieces; i++)
				if (ro_ok && rw_sums[i] != ro_sums[i] && rw_sums[i] != ~0ULL &&
				    ro_sums[i] != ~0ULL && !diff++)
					fail("content: the read-write activation reads the 64 KiB at %llu differently from the read-only one",
					     piece_off(i, bytes, npieces));
		}
		out("RW %s accepted %lu/%lu-bad-pieces", cur, bad, npieces);
		run_ops(fd, cs, bytes, tok + 7, n - 7, qd);
		free_ranges();
		close(fd);
	}
	out("STEP %s rw-remove", cur);
	r = dm_remove(qd);
	if (r) {
		fail("read-write: remove failed: %s", strerror(-r));
		goto out_lin;
	}
	if (ro_ok)
		reopen(params, vsecs, bytes, cs, ro_sums, rw_sums, npieces, tok + 7, n - 7);

out_lin:
	if (lfd >= 0)
		close(lfd);
	r = dm_remove(lin);
	if (r)
		fail("linear: remove failed: %s", strerror(-r));
end:
	free(copy);
	free(ro_sums);
	free(rw_sums);
	marker("end");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	out("END %s %s %ld ms", cur, failed ? "FAIL" : "ok",
	    (long)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000));
}

int main(int argc, char **argv)
{
	struct stat st;
	char *line = NULL;
	size_t cap = 0;
	FILE *jobs;

	if (argc != 4) {
		fprintf(stderr, "usage: qfuzz-helper DISK JOBS LOG\n");
		return 2;
	}
	if (getenv("FUZZ_READ_MAX"))
		read_max = strtoull(getenv("FUZZ_READ_MAX"), NULL, 0) & ~65535ULL;
	if (read_max < 65536 * 2)
		read_max = 65536 * 2;
	if (stat(argv[1], &st) || !S_ISBLK(st.st_mode)) {
		perror(argv[1]);
		return 2;
	}
	jobs = fopen(argv[2], "r");
	logfd = open(argv[3], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		mkdir("/dev/mapper", 0755);
		mknod("/dev/mapper/control", S_IFCHR | 0600, makedev(10, 236));
		ctl = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
	}
	kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	{
		/* The markers must not be rate-limited away. */
		int fd = open("/proc/sys/kernel/printk_devkmsg", O_WRONLY | O_CLOEXEC);

		if (fd >= 0) {
			if (write(fd, "on\n", 3) < 0)
				perror("printk_devkmsg");
			close(fd);
		}
	}
	if (!jobs || logfd < 0 || ctl < 0) {
		perror("qfuzz-helper: jobs, log or /dev/mapper/control");
		return 2;
	}
	if (posix_memalign((void **)&iobuf, 4096, CHUNK))
		return 2;
	out("HELPER start");
	while (getline(&line, &cap, jobs) > 0)
		do_image(major(st.st_rdev), minor(st.st_rdev), line);
	out("HELPER done");
	return 0;
}
