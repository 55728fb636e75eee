/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Decompression of qcow2 compressed clusters: raw deflate (zlib, window
 * 2^12) or zstd, as QEMU writes them (block/qcow2-threads.c).
 */
#ifndef DM_QCOW2DEDUP_DECOMPRESS_H
#define DM_QCOW2DEDUP_DECOMPRESS_H

#include <linux/gfp.h>
#include <linux/types.h>

struct qcow2_decompressor;

struct qcow2_decompressor *qcow2_decompressor_create(u32 compression_type, gfp_t gfp);
size_t qcow2_decompressor_bytes(u32 compression_type);
void qcow2_decompressor_destroy(struct qcow2_decompressor *d);
int qcow2_decompress(struct qcow2_decompressor *d, const void *src,
		     size_t src_len, void *dst, size_t dst_len);

#endif /* DM_QCOW2DEDUP_DECOMPRESS_H */
