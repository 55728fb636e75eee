// SPDX-License-Identifier: GPL-2.0
/*
 * Decompression of qcow2 compressed clusters.
 *
 * QEMU stores a compressed cluster as a raw deflate stream (no zlib header,
 * window bits 12) or as zstd frames, followed by padding up to a sector
 * boundary.  Both decoders therefore stop as soon as the output cluster is
 * full and ignore trailing input, exactly as QEMU's decoders do.
 *
 * A decompressor holds the workspace of one stream; its user serialises
 * calls (io-inflaters.c hands each to one caller at a time).
 */
#include <kunit/visibility.h>
#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/slab.h>
#include <linux/vmalloc.h>
#include <linux/zlib.h>
#include <linux/zstd.h>

#include "qcow2-decompress.h"
#include "qcow2-format.h"

/*
 * QEMU compresses one cluster (at most 2 MiB) per zstd stream without a
 * pledged size, so the frame's window is at most the larger of the cluster
 * and zstd's default for unknown sizes at its default level (2^21).
 */
#define QCOW2_ZSTD_MAX_WINDOW	BIT(QCOW2_MAX_CLUSTER_BITS)

struct qcow2_decompressor {
	u32 type;
	void *workspace;
	z_stream zs;
	zstd_dstream *zds;
};

static size_t workspace_bytes(u32 compression_type)
{
	if (compression_type == QCOW2_COMPRESSION_ZSTD)
		return zstd_dstream_workspace_bound(QCOW2_ZSTD_MAX_WINDOW);
	return zlib_inflate_workspacesize();
}

/* The memory one decompressor takes (its workspace): for sizing pools. */
size_t qcow2_decompressor_bytes(u32 compression_type)
{
	return sizeof(struct qcow2_decompressor) + workspace_bytes(compression_type);
}

/* @gfp: GFP_KERNEL, or with __GFP_NORETRY on the I/O path (in a noio scope). */
struct qcow2_decompressor *qcow2_decompressor_create(u32 compression_type, gfp_t gfp)
{
	struct qcow2_decompressor *d = kzalloc(sizeof(*d), gfp);
	size_t ws;

	if (!d)
		return NULL;
	d->type = compression_type;
	ws = workspace_bytes(compression_type);
	d->workspace = kvzalloc(ws, gfp);
	if (!d->workspace)
		goto bad;
	if (compression_type == QCOW2_COMPRESSION_ZSTD) {
		d->zds = zstd_init_dstream(QCOW2_ZSTD_MAX_WINDOW, d->workspace, ws);
		if (!d->zds)
			goto bad;
	} else {
		d->zs.workspace = d->workspace;
	}
	return d;
bad:
	qcow2_decompressor_destroy(d);
	return NULL;
}

void qcow2_decompressor_destroy(struct qcow2_decompressor *d)
{
	if (!d)
		return;
	kvfree(d->workspace);
	kfree(d);
}

static int inflate_raw(struct qcow2_decompressor *d, const void *src,
		       size_t src_len, void *dst, size_t dst_len)
{
	z_stream *zs = &d->zs;
	int ret;

	if (zlib_inflateInit2(zs, -12) != Z_OK)
		return -EIO;
	zs->next_in = src;
	zs->avail_in = src_len;
	zs->next_out = dst;
	zs->avail_out = dst_len;
	ret = zlib_inflate(zs, Z_FINISH);
	zlib_inflateEnd(zs);
	/* As QEMU: a full output cluster is success, even without stream end. */
	if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && !zs->avail_out)
		return 0;
	return -EIO;
}

static int unzstd(struct qcow2_decompressor *d, const void *src,
		  size_t src_len, void *dst, size_t dst_len)
{
	zstd_in_buffer in = { .src = src, .size = src_len, .pos = 0 };
	zstd_out_buffer out = { .dst = dst, .size = dst_len, .pos = 0 };
	size_t ret;

	ret = zstd_reset_dstream(d->zds);
	if (zstd_is_error(ret))
		return -EIO;
	while (out.pos < out.size) {
		size_t last_in = in.pos, last_out = out.pos;

		ret = zstd_decompress_stream(d->zds, &out, &in);
		if (zstd_is_error(ret))
			return -EIO;
		/* Input exhausted, or a frame ended, before the cluster was full. */
		if (in.pos == last_in && out.pos == last_out)
			return -EIO;
	}
	return 0;
}

/**
 * qcow2_decompress() - decompress one cluster.
 * @d: decompressor.
 * @src: compressed bytes, possibly followed by padding.
 * @src_len: bytes at @src.
 * @dst: output buffer.
 * @dst_len: the cluster size: exactly this many bytes must be produced.
 *
 * Context: process context; calls on one @d must be serialised.
 * Return: 0, or -EIO on corrupt data.
 */
int qcow2_decompress(struct qcow2_decompressor *d, const void *src,
		     size_t src_len, void *dst, size_t dst_len)
{
	if (d->type == QCOW2_COMPRESSION_ZSTD)
		return unzstd(d, src, src_len, dst, dst_len);
	return inflate_raw(d, src, src_len, dst, dst_len);
}
EXPORT_SYMBOL_IF_KUNIT(qcow2_decompress);
