// SPDX-License-Identifier: GPL-2.0
/*
 * BLAKE2b as specified by RFC 7693, written from the RFC.  The digest
 * length is part of the parameter block (h[0] ^= 0x01010000 ^ outlen), so
 * BLAKE2b-256 is not a truncated BLAKE2b-512.
 */
#include <string.h>

#include "blake2b.h"

static const uint64_t blake2b_iv[8] = {
	0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL,
	0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
	0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL,
	0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t sigma[12][16] = {
	{ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
	{ 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3 },
	{ 11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4 },
	{ 7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8 },
	{ 9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13 },
	{ 2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9 },
	{ 12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11 },
	{ 13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10 },
	{ 6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5 },
	{ 10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0 },
	{ 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 },
	{ 14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3 },
};

static inline uint64_t ror64(uint64_t x, unsigned int n)
{
	return (x >> n) | (x << (64 - n));
}

static inline uint64_t load_le64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/* The mixing function G of RFC 7693 section 3.1. */
#define G(a, b, c, d, x, y) do {			\
		v[a] = v[a] + v[b] + (x);		\
		v[d] = ror64(v[d] ^ v[a], 32);		\
		v[c] = v[c] + v[d];			\
		v[b] = ror64(v[b] ^ v[c], 24);		\
		v[a] = v[a] + v[b] + (y);		\
		v[d] = ror64(v[d] ^ v[a], 16);		\
		v[c] = v[c] + v[d];			\
		v[b] = ror64(v[b] ^ v[c], 63);		\
	} while (0)

/* Compression function F (section 3.2); @last marks the final block. */
static void blake2b_compress(struct blake2b_ctx *ctx, int last)
{
	uint64_t v[16], m[16];
	int i;

	for (i = 0; i < 8; i++) {
		v[i] = ctx->h[i];
		v[i + 8] = blake2b_iv[i];
	}
	v[12] ^= ctx->t[0];
	v[13] ^= ctx->t[1];
	if (last)
		v[14] = ~v[14];
	for (i = 0; i < 16; i++)
		m[i] = load_le64(ctx->buf + 8 * i);
	for (i = 0; i < 12; i++) {
		const uint8_t *s = sigma[i];

		G(0, 4, 8, 12, m[s[0]], m[s[1]]);
		G(1, 5, 9, 13, m[s[2]], m[s[3]]);
		G(2, 6, 10, 14, m[s[4]], m[s[5]]);
		G(3, 7, 11, 15, m[s[6]], m[s[7]]);
		G(0, 5, 10, 15, m[s[8]], m[s[9]]);
		G(1, 6, 11, 12, m[s[10]], m[s[11]]);
		G(2, 7, 8, 13, m[s[12]], m[s[13]]);
		G(3, 4, 9, 14, m[s[14]], m[s[15]]);
	}
	for (i = 0; i < 8; i++)
		ctx->h[i] ^= v[i] ^ v[i + 8];
}

void blake2b_init(struct blake2b_ctx *ctx, size_t outlen)
{
	int i;

	memset(ctx, 0, sizeof(*ctx));
	for (i = 0; i < 8; i++)
		ctx->h[i] = blake2b_iv[i];
	/* Parameter block: digest length, no key, fanout 1, depth 1. */
	ctx->h[0] ^= 0x01010000ULL ^ outlen;
	ctx->outlen = outlen;
}

static void blake2b_count(struct blake2b_ctx *ctx, uint64_t n)
{
	ctx->t[0] += n;
	if (ctx->t[0] < n)
		ctx->t[1]++;
}

void blake2b_update(struct blake2b_ctx *ctx, const void *data, size_t len)
{
	const uint8_t *p = data;

	while (len) {
		size_t n;

		/*
		 * A full buffer is compressed only once more input arrives:
		 * the last block must be compressed with the final flag.
		 */
		if (ctx->buflen == BLAKE2B_BLOCK_SIZE) {
			blake2b_count(ctx, BLAKE2B_BLOCK_SIZE);
			blake2b_compress(ctx, 0);
			ctx->buflen = 0;
		}
		n = BLAKE2B_BLOCK_SIZE - ctx->buflen;
		if (n > len)
			n = len;
		memcpy(ctx->buf + ctx->buflen, p, n);
		ctx->buflen += n;
		p += n;
		len -= n;
	}
}

void blake2b_final(struct blake2b_ctx *ctx, uint8_t *out)
{
	size_t i;

	blake2b_count(ctx, ctx->buflen);
	memset(ctx->buf + ctx->buflen, 0, BLAKE2B_BLOCK_SIZE - ctx->buflen);
	blake2b_compress(ctx, 1);
	for (i = 0; i < ctx->outlen; i++)
		out[i] = (uint8_t)(ctx->h[i / 8] >> (8 * (i % 8)));
}
