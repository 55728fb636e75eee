// SPDX-License-Identifier: GPL-2.0
/*
 * XXH64 from the xxHash specification (doc/xxhash_spec.md of the xxHash
 * project): four lanes over 32-byte stripes, then the tail, then the
 * avalanche.  Input words are little-endian.
 */
#include "xxhash64.h"

#define P1 11400714785074694791ULL
#define P2 14029467366897019727ULL
#define P3  1609587929392839161ULL
#define P4  9650029242287828579ULL
#define P5  2870177450012600261ULL

static inline uint64_t rotl64(uint64_t x, unsigned int r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t le64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static inline uint32_t le32(const uint8_t *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t round64(uint64_t acc, uint64_t input)
{
	acc += input * P2;
	acc = rotl64(acc, 31);
	return acc * P1;
}

static inline uint64_t merge64(uint64_t acc, uint64_t val)
{
	acc ^= round64(0, val);
	return acc * P1 + P4;
}

/* The four accumulators over every whole 32-byte stripe. */
static uint64_t stripes(const uint8_t **pp, const uint8_t *end, uint64_t seed)
{
	uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
	const uint8_t *p = *pp;
	uint64_t h;

	do {
		v1 = round64(v1, le64(p));
		v2 = round64(v2, le64(p + 8));
		v3 = round64(v3, le64(p + 16));
		v4 = round64(v4, le64(p + 24));
		p += 32;
	} while (end - p >= 32);
	*pp = p;
	h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
	h = merge64(h, v1);
	h = merge64(h, v2);
	h = merge64(h, v3);
	return merge64(h, v4);
}

uint64_t xxh64(const void *data, size_t len, uint64_t seed)
{
	const uint8_t *p = data, *end = p + len;
	uint64_t h;

	if (len >= 32)
		h = stripes(&p, end, seed);
	else
		h = seed + P5;
	h += len;
	for (; end - p >= 8; p += 8) {
		h ^= round64(0, le64(p));
		h = rotl64(h, 27) * P1 + P4;
	}
	if (end - p >= 4) {
		h ^= (uint64_t)le32(p) * P1;
		h = rotl64(h, 23) * P2 + P3;
		p += 4;
	}
	for (; p < end; p++) {
		h ^= *p * P5;
		h = rotl64(h, 11) * P1;
	}
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}
