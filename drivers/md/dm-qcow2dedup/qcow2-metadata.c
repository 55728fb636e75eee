// SPDX-License-Identifier: GPL-2.0
/*
 * qcow2 metadata access through dm-bufio.
 *
 * The L1 table is small (at most 32 MiB, usually a few KiB) and is read once
 * into memory at open time, so that map() finds it without I/O.  L2 tables
 * are read on demand through a dm-bufio client whose block size is
 * min(cluster size, 4 KiB): a lookup in a 2 MiB L2 table reads 4 KiB, not
 * 2 MiB.  The client is created with DM_BUFIO_CLIENT_NO_SLEEP so that
 * dm_bufio_get() in map() only takes spinlocks and never sleeps.
 */
#include <linux/device-mapper.h>
#include <linux/dm-bufio.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/unaligned.h>

#include "qcow2-metadata.h"

#define DM_MSG_PREFIX "qcow2dedup"

struct qcow2_metadata {
	struct block_device *bdev;
	struct dm_bufio_client *bufio;
	u32 block_bits;
	struct qcow2_geometry geo;
	u64 *l1;			/* CPU order, validated at open */
};

/**
 * qcow2_md_read_bytes() - copy @len bytes at device offset @off into @buf.
 * @md: metadata.
 * @off: device byte offset.
 * @buf: destination.
 * @len: bytes; [@off, @off + @len) must lie inside the device.
 *
 * Context: process context, may sleep (reads through dm-bufio).
 * Return: 0 or a negative errno from the read.
 */
int qcow2_md_read_bytes(struct qcow2_metadata *md, u64 off, void *buf,
			size_t len)
{
	u32 bsize = 1U << md->block_bits;

	if (len)
		dm_bufio_prefetch(md->bufio, off >> md->block_bits,
				  ((off + len - 1) >> md->block_bits) -
				  (off >> md->block_bits) + 1);
	while (len) {
		struct dm_buffer *b;
		u32 in = off & (bsize - 1);
		size_t n = min_t(size_t, len, bsize - in);
		void *data = dm_bufio_read(md->bufio, off >> md->block_bits, &b);

		if (IS_ERR(data))
			return PTR_ERR(data);
		memcpy(buf, data + in, n);
		dm_bufio_release(b);
		buf += n;
		off += n;
		len -= n;
	}
	return 0;
}

static int load_l1(struct qcow2_metadata *md, struct qcow2_refusal *why)
{
	const struct qcow2_geometry *g = &md->geo;
	u32 i;
	int r;

	if (!g->l1_size)
		return 0;
	md->l1 = kvmalloc_array(g->l1_size, sizeof(u64), GFP_KERNEL);
	if (!md->l1)
		return -ENOMEM;
	r = qcow2_md_read_bytes(md, g->l1_table_offset, md->l1,
				(size_t)g->l1_size * sizeof(u64));
	if (r)
		return r;
	for (i = 0; i < g->l1_size; i++) {
		md->l1[i] = get_unaligned_be64(&md->l1[i]);
		if (qcow2_check_l1_entry(g, md->l1[i])) {
			why->err = QCOW2_ERR_L1_ENTRY;
			why->value = i;
			return -EINVAL;
		}
	}
	return 0;
}

/* Read the first cluster (or what the device has of it) and decode it. */
static int read_header(struct qcow2_metadata *md, sector_t target_len,
		       struct qcow2_refusal *why)
{
	u64 dev_size = bdev_nr_bytes(md->bdev);
	struct qcow2_geometry *g = &md->geo;
	struct dm_buffer *b;
	size_t len;
	void *buf, *sec;
	int r;

	if (dev_size < SECTOR_SIZE) {
		why->err = QCOW2_ERR_SHORT;
		why->value = dev_size;
		return -EINVAL;
	}
	/* Sector 0 holds every field needed to learn the cluster size. */
	sec = dm_bufio_read(md->bufio, 0, &b);
	if (IS_ERR(sec))
		return PTR_ERR(sec);
	r = qcow2_decode_header(sec, SECTOR_SIZE, dev_size, g, why);
	dm_bufio_release(b);
	/*
	 * A header_length beyond sector 0 is only an error if it is beyond the
	 * first cluster too: cluster_bits was validated before header_length,
	 * so decode again from the whole first cluster, extensions included.
	 */
	if (r && why->err != QCOW2_ERR_HEADER_LENGTH)
		return r;
	len = min_t(u64, dev_size, g->cluster_size);
	buf = kvmalloc(len, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	r = qcow2_md_read_bytes(md, 0, buf, len);
	if (!r)
		r = qcow2_decode_header(buf, len, dev_size, g, why);
	if (!r)
		r = qcow2_check_extensions(buf, len, g, why);
	if (!r)
		r = qcow2_check_target_len(g, target_len, why);
	kvfree(buf);
	return r;
}

/**
 * qcow2_md_open() - read and validate an image's header and L1 table.
 * @bdev: the device holding the image.
 * @target_len: length of the dm target in sectors.
 * @why: on -EINVAL, why the image was refused.
 *
 * Nothing is written to the device.
 * Context: process context, may sleep.
 * Return: the metadata object or an ERR_PTR.
 */
struct qcow2_metadata *qcow2_md_open(struct block_device *bdev,
				     sector_t target_len,
				     struct qcow2_refusal *why)
{
	struct qcow2_metadata *md;
	int r;

	why->err = QCOW2_OK;
	md = kzalloc(sizeof(*md), GFP_KERNEL);
	if (!md)
		return ERR_PTR(-ENOMEM);
	md->bdev = bdev;

	/* A 512-byte client first: the cluster size is not known yet. */
	md->block_bits = SECTOR_SHIFT;
	md->bufio = dm_bufio_client_create(bdev, SECTOR_SIZE, 1, 0, NULL, NULL,
					   DM_BUFIO_CLIENT_NO_SLEEP);
	if (IS_ERR(md->bufio)) {
		r = PTR_ERR(md->bufio);
		md->bufio = NULL;
		goto bad;
	}
	r = read_header(md, target_len, why);
	if (r)
		goto bad;

	/* Blocks of min(cluster, 4 KiB); 512 when the device size needs it. */
	md->block_bits = min_t(u32, md->geo.cluster_bits, PAGE_SHIFT);
	while (md->block_bits > SECTOR_SHIFT &&
	       (md->geo.dev_size & (BIT_ULL(md->block_bits) - 1)))
		md->block_bits--;
	if (md->block_bits != SECTOR_SHIFT) {
		dm_bufio_client_destroy(md->bufio);
		md->bufio = dm_bufio_client_create(bdev, 1U << md->block_bits,
						   1, 0, NULL, NULL,
						   DM_BUFIO_CLIENT_NO_SLEEP);
		if (IS_ERR(md->bufio)) {
			r = PTR_ERR(md->bufio);
			md->bufio = NULL;
			goto bad;
		}
	}
	r = load_l1(md, why);
	if (r)
		goto bad;
	return md;
bad:
	qcow2_md_close(md);
	return ERR_PTR(r);
}

/**
 * qcow2_md_close() - free the metadata object.
 * @md: metadata, may be NULL.
 *
 * Context: process context, may sleep.
 */
void qcow2_md_close(struct qcow2_metadata *md)
{
	if (!md)
		return;
	if (md->bufio)
		dm_bufio_client_destroy(md->bufio);
	kvfree(md->l1);
	kfree(md);
}

/**
 * qcow2_md_geometry() - the decoded header.
 * @md: metadata.
 *
 * Context: any.
 */
const struct qcow2_geometry *qcow2_md_geometry(struct qcow2_metadata *md)
{
	return &md->geo;
}

/**
 * qcow2_md_lookup() - find where guest byte @guest_off is stored.
 * @md: metadata.
 * @guest_off: guest byte offset, below the virtual size.
 * @may_block: false in map(): only the cache is consulted.
 * @type: the cluster type.
 * @info: the decoded L2 entry.
 *
 * Context: any if !@may_block (spinlocks only); process context otherwise.
 * Return: 0; -EWOULDBLOCK if !@may_block and the L2 block is not cached;
 * -EIO on a corrupt L1 entry or a read error.
 */
int qcow2_md_lookup(struct qcow2_metadata *md, u64 guest_off, bool may_block,
		    enum qcow2_cluster_type *type, struct qcow2_l2e_info *info)
{
	const struct qcow2_geometry *g = &md->geo;
	u64 l1_index = qcow2_l1_index(g, guest_off);
	u64 l2_off, pos;
	struct dm_buffer *b;
	__be64 *data;
	u64 l2e;

	if (l1_index >= g->l1_size)
		return -EIO;
	l2_off = md->l1[l1_index] & QCOW2_L1E_OFFSET_MASK;
	if (!l2_off) {
		*type = QCOW2_CLUSTER_UNALLOCATED;
		memset(info, 0, sizeof(*info));
		return 0;
	}
	pos = l2_off + (u64)qcow2_l2_index(g, guest_off) * sizeof(u64);
	if (may_block)
		data = dm_bufio_read(md->bufio, pos >> md->block_bits, &b);
	else
		data = dm_bufio_get(md->bufio, pos >> md->block_bits, &b);
	if (!data)
		return -EWOULDBLOCK;
	if (IS_ERR(data))
		return PTR_ERR(data);
	l2e = get_unaligned_be64((void *)data +
				 (pos & (BIT_ULL(md->block_bits) - 1)));
	dm_bufio_release(b);

	*type = qcow2_decode_l2_entry(g, l2e, info);
	return 0;
}
