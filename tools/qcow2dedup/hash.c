// SPDX-License-Identifier: GPL-2.0
/*
 * Digest dispatch.  The SHA family comes from OpenSSL; BLAKE2b and XXH64
 * are computed here because OpenSSL's BLAKE2b has no variable length in
 * older releases and it has no XXH64 at all.
 */
#include <string.h>

#include <openssl/evp.h>

#include "blake2b.h"
#include "hash.h"
#include "qcow2dedup.h"
#include "xxhash64.h"

enum hash_kind { HASH_EVP, HASH_BLAKE2B, HASH_XXH64 };

struct hash_alg {
	const char *name;
	enum hash_kind kind;
	unsigned int len;
	const EVP_MD *(*evp)(void);
};

static const struct hash_alg algs[] = {
	{ "sha1",	 HASH_EVP,     20, EVP_sha1 },
	{ "sha224",	 HASH_EVP,     28, EVP_sha224 },
	{ "sha256",	 HASH_EVP,     32, EVP_sha256 },
	{ "sha384",	 HASH_EVP,     48, EVP_sha384 },
	{ "sha512",	 HASH_EVP,     64, EVP_sha512 },
	{ "sha3-224",	 HASH_EVP,     28, EVP_sha3_224 },
	{ "sha3-256",	 HASH_EVP,     32, EVP_sha3_256 },
	{ "sha3-384",	 HASH_EVP,     48, EVP_sha3_384 },
	{ "sha3-512",	 HASH_EVP,     64, EVP_sha3_512 },
	{ "blake2b-160", HASH_BLAKE2B, 20, NULL },
	{ "blake2b-256", HASH_BLAKE2B, 32, NULL },
	{ "blake2b-384", HASH_BLAKE2B, 48, NULL },
	{ "blake2b-512", HASH_BLAKE2B, 64, NULL },
	{ "xxhash64",	 HASH_XXH64,    8, NULL },
};

/* The crypto API matches algorithm names exactly; so does this. */
const struct hash_alg *hash_find(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(algs); i++)
		if (!strcmp(algs[i].name, name))
			return &algs[i];
	return NULL;
}

const char *hash_name(const struct hash_alg *alg)
{
	return alg->name;
}

unsigned int hash_digest_len(const struct hash_alg *alg)
{
	return alg->len;
}

static int evp_digest(const struct hash_alg *alg, const void *data,
		      size_t len, uint8_t *out)
{
	unsigned int n = 0;

	if (!EVP_Digest(data, len, out, &n, alg->evp(), NULL) || n != alg->len)
		return -1;
	return 0;
}

/* crypto/xxhash_generic.c stores the 64-bit result little-endian. */
static void put_le64(uint8_t *out, uint64_t v)
{
	int i;

	for (i = 0; i < 8; i++)
		out[i] = (uint8_t)(v >> (8 * i));
}

/* Digest of @len bytes at @data into @out (hash_digest_len() bytes). */
int hash_digest(const struct hash_alg *alg, const void *data, size_t len,
		uint8_t *out)
{
	struct blake2b_ctx b;

	switch (alg->kind) {
	case HASH_EVP:
		return evp_digest(alg, data, len, out);
	case HASH_BLAKE2B:
		blake2b_init(&b, alg->len);
		blake2b_update(&b, data, len);
		blake2b_final(&b, out);
		return 0;
	case HASH_XXH64:
		put_le64(out, xxh64(data, len, 0));
		return 0;
	}
	return -1;
}

void hash_print_names(FILE *f)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(algs); i++)
		fprintf(f, "%s%s", i ? " " : "", algs[i].name);
	fputc('\n', f);
}
