/* SPDX-License-Identifier: GPL-2.0 */
/*
 * BLAKE2b (RFC 7693), unkeyed, with a variable digest length: what the
 * kernel's blake2b-160/256/384/512 shashes compute without a key.
 */
#ifndef QCOW2DEDUP_BLAKE2B_H
#define QCOW2DEDUP_BLAKE2B_H

#include <stddef.h>
#include <stdint.h>

#define BLAKE2B_BLOCK_SIZE	128U
#define BLAKE2B_MAX_DIGEST	64U

struct blake2b_ctx {
	uint64_t h[8];
	uint64_t t[2];
	uint8_t buf[BLAKE2B_BLOCK_SIZE];
	size_t buflen;
	size_t outlen;
};

void blake2b_init(struct blake2b_ctx *ctx, size_t outlen);
void blake2b_update(struct blake2b_ctx *ctx, const void *data, size_t len);
void blake2b_final(struct blake2b_ctx *ctx, uint8_t *out);

#endif /* QCOW2DEDUP_BLAKE2B_H */
