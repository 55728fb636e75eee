// SPDX-License-Identifier: GPL-2.0
/*
 * Reference walk, following QEMU's block/qcow2-refcount.c
 * (calculate_refcounts(), compare_refcounts(), check_oflag_copied()) so
 * that leaks and corruptions come out as `qemu-img check` counts them:
 * one per cluster whose refcount differs, plus one per malformed entry.
 */
#include <errno.h>
#include <stdlib.h>

#include "qcow2dedup.h"
#include "refcheck.h"

/* Subcluster allocation bitmap of extended L2 entries (QEMU's names). */
#define L2_BITMAP_ALL_ALLOC	0x00000000ffffffffULL

/* Bitmap table entries (docs/interop/qcow2.txt, "Bitmaps"). */
#define BME_OFFSET_MASK		0x00fffffffffffe00ULL
#define BME_RESERVED_MASK	0xff000000000001feULL
#define BME_FLAG_ALL_ONES	1ULL
#define BME_DIR_ENTRY_SIZE	24U
#define QCOW2_MAX_BITMAPS	65535U

enum cluster_type {
	CLUSTER_UNALLOCATED,
	CLUSTER_ZERO_PLAIN,
	CLUSTER_ZERO_ALLOC,
	CLUSTER_NORMAL,
	CLUSTER_COMPRESSED,
};

static uint64_t ref_get(const struct refcheck *rc, uint64_t k)
{
	switch (rc->width) {
	case 1:
		return ((uint8_t *)rc->refs)[k];
	case 2:
		return ((uint16_t *)rc->refs)[k];
	case 4:
		return ((uint32_t *)rc->refs)[k];
	default:
		return ((uint64_t *)rc->refs)[k];
	}
}

static void ref_set(struct refcheck *rc, uint64_t k, uint64_t v)
{
	switch (rc->width) {
	case 1:
		((uint8_t *)rc->refs)[k] = (uint8_t)v;
		break;
	case 2:
		((uint16_t *)rc->refs)[k] = (uint16_t)v;
		break;
	case 4:
		((uint32_t *)rc->refs)[k] = (uint32_t)v;
		break;
	default:
		((uint64_t *)rc->refs)[k] = v;
	}
}

/* Grow the counts to @n clusters, as realloc_refcount_array() does. */
static int ref_grow(struct refcheck *rc, uint64_t n)
{
	if (n > rc->alloc) {
		uint64_t want = n + 64;
		void *p = realloc(rc->refs, want * rc->width);

		if (!p)
			return -ENOMEM;
		memset((uint8_t *)p + rc->alloc * rc->width, 0,
		       (want - rc->alloc) * rc->width);
		rc->refs = p;
		rc->alloc = want;
	}
	if (n > rc->size)
		rc->size = n;
	return 0;
}

/*
 * qcow2_inc_refcounts_imrt(): one more reference to every cluster of
 * [@off, @off + @size).  A range ending a cluster or more past the end of
 * the file is a corruption; so is a count reaching the refcount maximum.
 */
static int inc_refs(struct image *img, struct refcheck *rc, uint64_t off,
		    uint64_t size)
{
	uint64_t k, last;
	int r;

	if (!size)
		return 0;
	if (off + size > img->size && off + size - img->size >= img->cluster_size) {
		rc->corruptions++;
		return 0;
	}
	last = (off + size - 1) >> img->cluster_bits;
	for (k = off >> img->cluster_bits; k <= last; k++) {
		uint64_t n;

		if (k >= rc->size) {
			r = ref_grow(rc, k + 1);
			if (r)
				return r;
		}
		n = ref_get(rc, k);
		if (n == img->refcount_max) {
			rc->corruptions++;
			continue;
		}
		ref_set(rc, k, n + 1);
	}
	return 0;
}

/* qcow2_get_cluster_type(). */
static enum cluster_type cluster_type(const struct image *img, uint64_t l2e)
{
	bool extl2 = img->l2_entry_size == 16;

	if (l2e & QCOW2_OFLAG_COMPRESSED)
		return CLUSTER_COMPRESSED;
	if ((l2e & QCOW2_OFLAG_ZERO) && !extl2)
		return l2e & QCOW2_L2E_OFFSET_MASK ? CLUSTER_ZERO_ALLOC :
						     CLUSTER_ZERO_PLAIN;
	if (!(l2e & QCOW2_L2E_OFFSET_MASK))
		return image_has_data_file(img) && (l2e & QCOW2_OFLAG_COPIED) ?
		       CLUSTER_NORMAL : CLUSTER_UNALLOCATED;
	return CLUSTER_NORMAL;
}

/*
 * qcow2_parse_compressed_l2_entry(): the byte range a compressed cluster
 * occupies, which may straddle host clusters.
 */
static void compressed_range(const struct image *img, uint64_t l2e,
			     uint64_t *off, uint64_t *size)
{
	unsigned int shift = 62 - (img->cluster_bits - 8);
	uint64_t sectors;

	*off = l2e & ((1ULL << shift) - 1);
	sectors = ((l2e >> shift) & ((1ULL << (img->cluster_bits - 8)) - 1)) + 1;
	*size = sectors * QCOW2_COMPRESSED_SECTOR_SIZE -
		(*off & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
}

static int check_compressed(struct image *img, struct refcheck *rc,
			    uint64_t l2e, uint64_t bitmap)
{
	uint64_t off, size;

	if (l2e & QCOW2_OFLAG_COPIED)
		rc->corruptions++;	/* never set on compressed clusters */
	if (image_has_data_file(img) || bitmap) {
		rc->corruptions++;
		return 0;
	}
	compressed_range(img, l2e & ~QCOW2_OFLAG_COPIED, &off, &size);
	return inc_refs(img, rc, off, size);
}

/* An allocated cluster: normal, or zero-flagged with an offset. */
static int check_allocated(struct image *img, struct refcheck *rc,
			   uint64_t l2e, uint64_t bitmap)
{
	uint64_t off = l2e & QCOW2_L2E_OFFSET_MASK;

	if ((bitmap >> 32) & bitmap)
		rc->corruptions++;
	if (off & (img->cluster_size - 1))
		rc->corruptions++;
	/* With an external data file, data clusters are not in this file. */
	if (image_has_data_file(img))
		return 0;
	return inc_refs(img, rc, off, img->cluster_size);
}

static uint64_t l2_entry(const struct image *img, const uint8_t *l2,
			 uint64_t i, uint64_t *bitmap)
{
	const uint8_t *e = l2 + i * img->l2_entry_size;

	*bitmap = img->l2_entry_size == 16 ? get_be64(e + 8) : 0;
	return get_be64(e);
}

/* check_refcounts_l2(). */
static int check_l2(struct image *img, struct refcheck *rc, uint64_t l2_off,
		    uint8_t *l2)
{
	uint64_t i;
	int r;

	r = image_read(img, l2_off, l2, img->cluster_size);
	if (r)
		return r;
	for (i = 0; i < img->l2_entries; i++) {
		uint64_t bitmap, l2e = l2_entry(img, l2, i, &bitmap);
		enum cluster_type t = cluster_type(img, l2e);

		if (t != CLUSTER_COMPRESSED && (l2e & QCOW2_L2E_STD_RESERVED_MASK))
			rc->corruptions++;
		r = 0;
		switch (t) {
		case CLUSTER_COMPRESSED:
			r = check_compressed(img, rc, l2e, bitmap);
			break;
		case CLUSTER_ZERO_ALLOC:
		case CLUSTER_NORMAL:
			r = check_allocated(img, rc, l2e, bitmap);
			break;
		case CLUSTER_UNALLOCATED:
			if (bitmap & L2_BITMAP_ALL_ALLOC)
				rc->corruptions++;
			break;
		case CLUSTER_ZERO_PLAIN:
			break;
		}
		if (r)
			return r;
	}
	return 0;
}

/* check_refcounts_l1(): an L1 table, its L2 tables and their clusters. */
static int check_l1(struct image *img, struct refcheck *rc, uint64_t l1_off,
		    uint32_t l1_size)
{
	uint64_t *l1;
	uint8_t *l2;
	uint32_t i;
	int r;

	if (!l1_size)
		return 0;
	r = inc_refs(img, rc, l1_off, (uint64_t)l1_size * 8);
	if (r)
		return r;
	l1 = malloc((size_t)l1_size * 8);
	l2 = malloc(img->cluster_size);
	r = l1 && l2 ? image_read(img, l1_off, l1, (size_t)l1_size * 8) : -ENOMEM;
	for (i = 0; !r && i < l1_size; i++) {
		uint64_t e = be64toh(l1[i]), l2_off = e & QCOW2_L1E_OFFSET_MASK;

		if (!e)
			continue;
		if (e & QCOW2_L1E_RESERVED_MASK)
			rc->corruptions++;
		r = inc_refs(img, rc, l2_off, img->cluster_size);
		if (r)
			break;
		if (l2_off & (img->cluster_size - 1))
			rc->corruptions++;
		r = check_l2(img, rc, l2_off, l2);
	}
	free(l1);
	free(l2);
	return r;
}

static int check_snapshots(struct image *img, struct refcheck *rc)
{
	uint32_t i;
	int r;

	if (image_has_data_file(img) && img->nb_snapshots)
		rc->corruptions++;
	for (i = 0; i < img->nb_snapshots; i++) {
		const struct image_snapshot *sn = &img->snapshots[i];

		if (sn->l1_offset & (img->cluster_size - 1) ||
		    (uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
			rc->corruptions++;
			continue;
		}
		r = check_l1(img, rc, sn->l1_offset, sn->l1_size);
		if (r)
			return r;
	}
	return inc_refs(img, rc, img->snapshots_offset, img->snapshots_size);
}

/* One bitmap's table and the clusters it names. */
static int check_bitmap_table(struct image *img, struct refcheck *rc,
			      uint64_t off, uint32_t size)
{
	uint64_t *t, i;
	int r;

	r = inc_refs(img, rc, off, (uint64_t)size * 8);
	if (r || !size)
		return r;
	if (off & (img->cluster_size - 1)) {
		rc->corruptions++;
		return 0;
	}
	t = malloc((size_t)size * 8);
	if (!t)
		return -ENOMEM;
	r = image_read(img, off, t, (size_t)size * 8);
	for (i = 0; !r && i < size; i++) {
		uint64_t e = be64toh(t[i]), o = e & BME_OFFSET_MASK;

		if ((e & BME_RESERVED_MASK) ||
		    (o && ((e & BME_FLAG_ALL_ONES) || (o & (img->cluster_size - 1))))) {
			rc->corruptions++;
			continue;
		}
		if (o)
			r = inc_refs(img, rc, o, img->cluster_size);
	}
	free(t);
	return r;
}

/*
 * qcow2_check_bitmaps_refcounts().  QEMU ignores the bitmaps extension
 * when the bitmaps autoclear bit is clear, so then its clusters are leaks.
 */
static int check_bitmaps(struct image *img, struct refcheck *rc)
{
	uint64_t dsize = img->bitmap_dir_size, pos = 0;
	uint32_t found = 0;
	uint8_t *dir;
	int r;

	if (!img->has_bitmaps || !(img->autoclear & QCOW2_AUTOCLEAR_BITMAPS) ||
	    !img->nb_bitmaps)
		return 0;
	if (img->nb_bitmaps > QCOW2_MAX_BITMAPS || dsize > QCOW2_MAX_BITMAP_DIR_BYTES ||
	    img->bitmap_dir_offset & (img->cluster_size - 1)) {
		rc->corruptions++;
		return 0;
	}
	r = inc_refs(img, rc, img->bitmap_dir_offset, dsize);
	dir = malloc(dsize ? dsize : 1);
	if (!r)
		r = dir ? image_read(img, img->bitmap_dir_offset, dir, dsize) : -ENOMEM;
	while (!r && pos < dsize) {
		const uint8_t *e = dir + pos;
		uint64_t esize;

		if (dsize - pos < BME_DIR_ENTRY_SIZE)
			break;
		esize = align_up(BME_DIR_ENTRY_SIZE + get_be32(e + 20) +
				 get_be16(e + 18), 8);
		if (esize > dsize - pos || ++found > img->nb_bitmaps)
			break;
		r = check_bitmap_table(img, rc, get_be64(e), get_be32(e + 8));
		pos += esize;
	}
	/* A directory that does not parse exactly is one corruption. */
	if (!r && (pos != dsize || found != img->nb_bitmaps))
		rc->corruptions++;
	free(dir);
	return r;
}

/* check_refblocks(): each refcount block must be referenced exactly once. */
static int check_refblocks(struct image *img, struct refcheck *rc)
{
	uint64_t i;
	int r;

	for (i = 0; i < img->reftable_size; i++) {
		uint64_t e = img->reftable[i], off = e & QCOW2_REFT_OFFSET_MASK;
		uint64_t k = off >> img->cluster_bits;

		if ((e & QCOW2_REFT_RESERVED_MASK) || (off & (img->cluster_size - 1)) ||
		    k >= rc->size) {
			rc->corruptions++;
			continue;
		}
		if (!off)
			continue;
		r = inc_refs(img, rc, off, img->cluster_size);
		if (r)
			return r;
		if (ref_get(rc, k) != 1)
			rc->corruptions++;
	}
	return 0;
}

/* calculate_refcounts(). */
static int count_references(struct image *img, struct refcheck *rc)
{
	int r;

	r = inc_refs(img, rc, 0, img->cluster_size);
	if (!r)
		r = check_l1(img, rc, img->l1_offset, img->l1_size);
	if (!r)
		r = check_snapshots(img, rc);
	if (!r)
		r = inc_refs(img, rc, img->rt_offset, img->reftable_size * 8);
	if (!r && img->crypt_method && img->has_crypto)
		r = inc_refs(img, rc, img->crypto_offset, img->crypto_length);
	if (!r)
		r = check_bitmaps(img, rc);
	if (!r)
		r = check_refblocks(img, rc);
	return r;
}

static bool is_table_cluster(const struct refcheck *rc, uint64_t k)
{
	return rc->table_map && k < rc->table_map_bits &&
	       (rc->table_map[k / 8] >> (k % 8)) & 1;
}

/* compare_refcounts(). */
static void compare(struct image *img, struct refcheck *rc)
{
	uint64_t k;

	for (k = 0; k < rc->size; k++) {
		uint64_t disk, refs = ref_get(rc, k);

		if (image_refcount(img, k, &disk)) {
			rc->check_errors++;
			continue;
		}
		if (disk == refs)
			continue;
		if (disk < refs) {
			rc->corruptions++;
		} else {
			rc->leaked++;
			if (is_table_cluster(rc, k))
				rc->leaked_table++;
			else
				rc->leaked_other++;
		}
	}
}

static bool copied_ok(uint64_t refcount, uint64_t entry)
{
	return (refcount == 1) == !!(entry & QCOW2_OFLAG_COPIED);
}

/* check_oflag_copied() for one active L2 table. */
static void check_copied_l2(struct image *img, struct refcheck *rc,
			    const uint8_t *l2)
{
	uint64_t i, bitmap, refcount;

	for (i = 0; i < img->l2_entries; i++) {
		uint64_t l2e = l2_entry(img, l2, i, &bitmap);
		enum cluster_type t = cluster_type(img, l2e);

		if (t != CLUSTER_NORMAL && t != CLUSTER_ZERO_ALLOC)
			continue;
		refcount = 1;
		if (!image_has_data_file(img) &&
		    image_refcount(img, (l2e & QCOW2_L2E_OFFSET_MASK) >>
				   img->cluster_bits, &refcount))
			continue;
		if (!copied_ok(refcount, l2e))
			rc->corruptions++;
	}
}

/* check_oflag_copied(): COPIED must say "refcount is one", active L1 only. */
static int check_copied(struct image *img, struct refcheck *rc)
{
	uint64_t *l1, refcount;
	uint8_t *l2;
	uint32_t i;
	int r;

	if (!img->l1_size)
		return 0;
	l1 = malloc((size_t)img->l1_size * 8);
	l2 = malloc(img->cluster_size);
	r = l1 && l2 ? image_read(img, img->l1_offset, l1, (size_t)img->l1_size * 8) :
		       -ENOMEM;
	for (i = 0; !r && i < img->l1_size; i++) {
		uint64_t e = be64toh(l1[i]), l2_off = e & QCOW2_L1E_OFFSET_MASK;

		if (!l2_off)
			continue;
		if (!image_refcount(img, l2_off >> img->cluster_bits, &refcount) &&
		    !copied_ok(refcount, e))
			rc->corruptions++;
		r = image_read(img, l2_off, l2, img->cluster_size);
		if (!r)
			check_copied_l2(img, rc, l2);
	}
	free(l1);
	free(l2);
	return r;
}

/*
 * Run the whole walk.  @rc->table_map may name the dedup table's clusters
 * beforehand, to split the leaks.  Returns 0 or a negative errno (I/O).
 */
int refcheck_run(struct image *img, struct refcheck *rc)
{
	int r;

	rc->width = img->refcount_order <= 3 ? 1 : 1U << (img->refcount_order - 3);
	rc->size = 0;
	r = ref_grow(rc, img->nb_clusters);
	if (!r)
		r = image_load_snapshots(img);
	if (!r)
		r = count_references(img, rc);
	if (r)
		return r;
	compare(img, rc);
	return check_copied(img, rc);
}

/* References the qcow2 structures make to @cluster (after refcheck_run()). */
uint64_t refcheck_references(const struct refcheck *rc, uint64_t cluster)
{
	return cluster < rc->size ? ref_get(rc, cluster) : 0;
}

void refcheck_free(struct refcheck *rc)
{
	free(rc->refs);
	rc->refs = NULL;
}
