// SPDX-License-Identifier: GPL-2.0
/*
 * Opening a qcow2 image read-only: header, extensions, refcount table,
 * snapshot table.  The checks are the ones QEMU makes before it agrees to
 * open an image, so the tool refuses what `qemu-img check` would refuse.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image.h"
#include "qcow2dedup.h"

/* Reads past the end return zeros, as QEMU's block layer does. */
int image_read(struct image *img, uint64_t off, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = 0;

		if (off < img->size)
			n = pread(img->fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			errmsg("%s: read at %#llx: %s", img->path,
			       (unsigned long long)off, strerror(errno));
			return -EIO;
		}
		if (n == 0) {
			memset(p, 0, len);
			return 0;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int open_fd(struct image *img, const char *path)
{
	struct stat st;
	off_t end;

	img->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (img->fd < 0) {
		errmsg("%s: %s", path, strerror(errno));
		return -errno;
	}
	if (fstat(img->fd, &st) < 0) {
		errmsg("%s: %s", path, strerror(errno));
		return -errno;
	}
	img->blockdev = S_ISBLK(st.st_mode);
	if (!img->blockdev && !S_ISREG(st.st_mode)) {
		errmsg("%s: not a regular file or a block device", path);
		return -EINVAL;
	}
	/*
	 * A device a target has open is written below the page cache: drop
	 * what the cache holds of it, so that reads see the device.
	 */
	if (img->blockdev)
		posix_fadvise(img->fd, 0, 0, POSIX_FADV_DONTNEED);
	/* lseek gives the size of block devices too. */
	end = lseek(img->fd, 0, SEEK_END);
	if (end < 0) {
		errmsg("%s: %s", path, strerror(errno));
		return -errno;
	}
	img->size = (uint64_t)end;
	return 0;
}

static int refuse(const struct image *img, const char *why)
{
	errmsg("%s: not a usable qcow2 image: %s", img->path, why);
	return -EINVAL;
}

/* The fields of struct qcow2_header, version 2 part and version 3 part. */
static void decode_header(struct image *img, const struct qcow2_header *h)
{
	img->version = be32toh(h->version);
	img->backing_offset = be64toh(h->backing_file_offset);
	img->backing_size = be32toh(h->backing_file_size);
	img->cluster_bits = be32toh(h->cluster_bits);
	img->virtual_size = be64toh(h->size);
	img->crypt_method = be32toh(h->crypt_method);
	img->l1_size = be32toh(h->l1_size);
	img->l1_offset = be64toh(h->l1_table_offset);
	img->rt_offset = be64toh(h->refcount_table_offset);
	img->rt_clusters = be32toh(h->refcount_table_clusters);
	img->nb_snapshots = be32toh(h->nb_snapshots);
	img->snapshots_offset = be64toh(h->snapshots_offset);
	if (img->version < 3) {
		img->refcount_order = QCOW2_V2_REFCOUNT_ORDER;
		img->header_length = QCOW2_HEADER_V2_LEN;
		return;
	}
	img->incompat = be64toh(h->incompatible_features);
	img->compat = be64toh(h->compatible_features);
	img->autoclear = be64toh(h->autoclear_features);
	img->refcount_order = be32toh(h->refcount_order);
	img->header_length = be32toh(h->header_length);
	if (img->header_length >= QCOW2_HEADER_COMPRESSION_LEN)
		img->compression_type = h->compression_type;
}

/* The limits of QEMU's qcow2_do_open(), in its order. */
static int check_header(struct image *img)
{
	uint64_t cs;

	if (img->version != 2 && img->version != 3)
		return refuse(img, "unsupported version");
	if (img->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
	    img->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return refuse(img, "cluster size out of range");
	cs = 1ULL << img->cluster_bits;
	img->cluster_size = cs;
	if (img->version == 3 && (img->header_length < QCOW2_HEADER_V3_LEN ||
				  img->header_length > cs))
		return refuse(img, "bad header length");
	if (img->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
		return refuse(img, "refcount width out of range");
	if (img->rt_offset & (cs - 1) || !img->rt_offset)
		return refuse(img, "refcount table not cluster-aligned");
	if ((uint64_t)img->rt_clusters << img->cluster_bits >
	    QCOW2_MAX_REFTABLE_BYTES)
		return refuse(img, "refcount table too large");
	if (img->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
		return refuse(img, "too many snapshots");
	if (img->nb_snapshots && img->snapshots_offset & (cs - 1))
		return refuse(img, "snapshot table not cluster-aligned");
	if ((uint64_t)img->l1_size * 8 > QCOW2_MAX_L1_BYTES)
		return refuse(img, "L1 table too large");
	if (img->l1_size && img->l1_offset & (cs - 1))
		return refuse(img, "L1 table not cluster-aligned");
	if (img->backing_offset &&
	    (img->backing_offset > cs || img->backing_size >= IMAGE_NAME_MAX))
		return refuse(img, "backing file name too long");
	return 0;
}

static void copy_name(char *dst, const uint8_t *src, uint32_t len)
{
	if (len >= IMAGE_NAME_MAX)
		len = IMAGE_NAME_MAX - 1;
	memcpy(dst, src, len);
	dst[len] = 0;
}

/* Remember what the tool uses from one extension. */
static void decode_ext(struct image *img, uint32_t type, const uint8_t *d,
		       uint32_t len)
{
	switch (type) {
	case QCOW2_EXT_BACKING_FORMAT:
		copy_name(img->backing_fmt, d, len);
		break;
	case QCOW2_EXT_DATA_FILE:
		copy_name(img->data_file, d, len);
		break;
	case QCOW2_EXT_FEATURE_TABLE:
		img->features = (const struct qcow2_feature_name *)d;
		img->nr_features = len / sizeof(struct qcow2_feature_name);
		break;
	case QCOW2_EXT_BITMAPS:
		if (len < 24)
			break;
		img->has_bitmaps = true;
		img->nb_bitmaps = get_be32(d);
		img->bitmap_dir_size = get_be64(d + 8);
		img->bitmap_dir_offset = get_be64(d + 16);
		break;
	case QCOW2_EXT_CRYPTO:
		if (len < 16)
			break;
		img->has_crypto = true;
		img->crypto_offset = get_be64(d);
		img->crypto_length = get_be64(d + 8);
		break;
	case QCOW2_EXT_DEDUP_TABLE:
		img->qdt = d;
		img->qdt_len = len;
		break;
	}
}

/*
 * Walk the extensions as qcow2_read_extensions() does: from the end of the
 * header to the backing file name (or the end of the first cluster), up to
 * the end marker.  A malformed area is noted, not fatal: info shows it.
 */
static void read_exts(struct image *img)
{
	uint64_t end = img->backing_offset ? img->backing_offset : img->cluster_size;
	uint64_t off = img->header_length;
	const uint8_t *c = img->first_cluster;

	if (end > img->cluster_size)
		end = img->cluster_size;
	while (off < end) {
		uint32_t type, len;

		if (end - off < sizeof(struct qcow2_ext_hdr)) {
			snprintf(img->ext_error, sizeof(img->ext_error),
				 "extension header at %#llx truncated",
				 (unsigned long long)off);
			return;
		}
		type = get_be32(c + off);
		len = get_be32(c + off + 4);
		off += sizeof(struct qcow2_ext_hdr);
		if (type == QCOW2_EXT_END)
			return;
		if (len > end - off) {
			snprintf(img->ext_error, sizeof(img->ext_error),
				 "extension %#x too large (%u bytes)", type, len);
			return;
		}
		if (img->nr_exts < IMAGE_MAX_EXTS)
			img->exts[img->nr_exts++] = (struct image_ext){
				.type = type, .len = len, .offset = (uint32_t)off };
		decode_ext(img, type, c + off, len);
		off += align_up(len, 8);
	}
}

static int read_first_cluster(struct image *img)
{
	uint8_t name[IMAGE_NAME_MAX];
	int r;

	img->first_cluster = calloc(1, img->cluster_size);
	if (!img->first_cluster)
		return -ENOMEM;
	r = image_read(img, 0, img->first_cluster, img->cluster_size);
	if (r)
		return r;
	read_exts(img);
	if (!img->backing_offset)
		return 0;
	/* check_header() bounded the size below IMAGE_NAME_MAX. */
	r = image_read(img, img->backing_offset, name, img->backing_size);
	if (r)
		return r;
	copy_name(img->backing_file, name, img->backing_size);
	return 0;
}

static int load_reftable(struct image *img)
{
	uint64_t bytes = (uint64_t)img->rt_clusters << img->cluster_bits;
	uint64_t i;
	int r;

	img->reftable_size = bytes / 8;
	img->reftable = malloc(bytes ? bytes : 8);
	img->rb_buf = malloc(img->cluster_size);
	if (!img->reftable || !img->rb_buf)
		return -ENOMEM;
	r = image_read(img, img->rt_offset, img->reftable, bytes);
	if (r)
		return r;
	for (i = 0; i < img->reftable_size; i++)
		img->reftable[i] = be64toh(img->reftable[i]);
	img->rb_offset = 0;
	return 0;
}

int image_open(struct image *img, const char *path)
{
	struct qcow2_header h;
	int r;

	memset(img, 0, sizeof(*img));
	img->fd = -1;
	img->path = path;
	r = open_fd(img, path);
	if (r)
		return r;
	r = image_read(img, 0, &h, sizeof(h));
	if (r)
		return r;
	if (be32toh(h.magic) != QCOW2_MAGIC)
		return refuse(img, "no qcow2 magic");
	decode_header(img, &h);
	r = check_header(img);
	if (r)
		return r;
	r = read_first_cluster(img);
	if (r)
		return r;
	img->nb_clusters = (img->size + img->cluster_size - 1) >> img->cluster_bits;
	img->l2_entry_size = img->incompat & QCOW2_INCOMPAT_EXTL2 ? 16 : 8;
	img->l2_entries = img->cluster_size / img->l2_entry_size;
	img->refblock_bits = img->cluster_bits + 3 - img->refcount_order;
	img->refcount_max = img->refcount_order == 6 ? UINT64_MAX :
			    (1ULL << (1U << img->refcount_order)) - 1;
	return load_reftable(img);
}

void image_close(struct image *img)
{
	if (img->fd >= 0)
		close(img->fd);
	free(img->first_cluster);
	free(img->reftable);
	free(img->rb_buf);
	free(img->snapshots);
	memset(img, 0, sizeof(*img));
	img->fd = -1;
}

/* Refcount @index of a refcount block, for any width (QEMU's layout). */
uint64_t refcount_get(const uint8_t *block, uint32_t order, uint64_t index)
{
	switch (order) {
	case 0:
		return (block[index / 8] >> (index % 8)) & 0x1;
	case 1:
		return (block[index / 4] >> (2 * (index % 4))) & 0x3;
	case 2:
		return (block[index / 2] >> (4 * (index % 2))) & 0xf;
	case 3:
		return block[index];
	case 4:
		return get_be16(block + 2 * index);
	case 5:
		return get_be32(block + 4 * index);
	default:
		return get_be64(block + 8 * index);
	}
}

/*
 * The on-disk refcount of host cluster @cluster, as qcow2_get_refcount()
 * reads it: no table entry or no block means 0; an unaligned block offset
 * is an error (-EINVAL).
 */
int image_refcount(struct image *img, uint64_t cluster, uint64_t *refcount)
{
	uint64_t i = cluster >> img->refblock_bits, off;
	int r;

	*refcount = 0;
	if (i >= img->reftable_size)
		return 0;
	off = img->reftable[i] & QCOW2_REFT_OFFSET_MASK;
	if (!off)
		return 0;
	if (off & (img->cluster_size - 1))
		return -EINVAL;
	if (off != img->rb_offset) {
		r = image_read(img, off, img->rb_buf, img->cluster_size);
		if (r)
			return r;
		img->rb_offset = off;
	}
	*refcount = refcount_get(img->rb_buf, img->refcount_order,
				 cluster & ((1ULL << img->refblock_bits) - 1));
	return 0;
}

/* One entry of the snapshot table at *@off; *@off moves past it. */
static int read_snapshot(struct image *img, uint64_t *off,
			 struct image_snapshot *sn)
{
	struct qcow2_snapshot_hdr h;
	uint32_t extra;
	uint16_t id_len, name_len;
	int r;

	*off = align_up(*off, 8);
	r = image_read(img, *off, &h, sizeof(h));
	if (r)
		return r;
	*off += sizeof(h);
	sn->l1_offset = be64toh(h.l1_table_offset);
	sn->l1_size = be32toh(h.l1_size);
	extra = be32toh(h.extra_data_size);
	id_len = be16toh(h.id_str_size);
	name_len = be16toh(h.name_size);
	*off += extra;
	r = image_read(img, *off, sn->id, id_len < sizeof(sn->id) ?
		       id_len : sizeof(sn->id) - 1);
	if (r)
		return r;
	*off += id_len;
	r = image_read(img, *off, sn->name, name_len < sizeof(sn->name) ?
		       name_len : sizeof(sn->name) - 1);
	*off += name_len;
	return r;
}

/* The snapshot table, and its size in bytes as QEMU computes it. */
int image_load_snapshots(struct image *img)
{
	uint64_t off = img->snapshots_offset;
	uint32_t i;
	int r;

	if (!img->nb_snapshots || img->snapshots)
		return 0;
	img->snapshots = calloc(img->nb_snapshots, sizeof(*img->snapshots));
	if (!img->snapshots)
		return -ENOMEM;
	for (i = 0; i < img->nb_snapshots; i++) {
		r = read_snapshot(img, &off, &img->snapshots[i]);
		if (r)
			return r;
		if (off - img->snapshots_offset > QCOW2_MAX_SNAPSHOTS_BYTES) {
			errmsg("%s: snapshot table too large", img->path);
			return -EFBIG;
		}
	}
	img->snapshots_size = off - img->snapshots_offset;
	return 0;
}

struct known_feature {
	unsigned int type;
	unsigned int bit;
	const char *name;
};

/* QEMU's names for the bits it knows, and ours. */
static const struct known_feature known_features[] = {
	{ 0, 0, "dirty bit" },
	{ 0, 1, "corrupt bit" },
	{ 0, 2, "external data file" },
	{ 0, 3, "compression type" },
	{ 0, 4, "extended L2 entries" },
	{ 1, 0, "lazy refcounts" },
	{ 2, 0, "bitmaps" },
	{ 2, 1, "raw external data" },
	{ QCOW2_FEATURE_TYPE_AUTOCLEAR, QCOW2_AUTOCLEAR_DEDUP_TABLE_BIT,
	  QCOW2_AUTOCLEAR_DEDUP_TABLE_NAME },
};

/* The name of a feature bit: ours, else the image's feature name table. */
const char *image_feature_name(const struct image *img, unsigned int type,
			       unsigned int bit)
{
	static char name[sizeof(((struct qcow2_feature_name *)0)->name) + 1];
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(known_features); i++)
		if (known_features[i].type == type && known_features[i].bit == bit)
			return known_features[i].name;
	for (i = 0; i < img->nr_features; i++) {
		const struct qcow2_feature_name *f = &img->features[i];

		if (f->type == type && f->bit == bit) {
			memcpy(name, f->name, sizeof(f->name));
			name[sizeof(f->name)] = 0;
			return name;
		}
	}
	return NULL;
}
