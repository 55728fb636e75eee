/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The digests the dedup table may be made with, named as the kernel crypto
 * API names them; each computes the same bytes as that kernel shash does
 * over the same input.
 */
#ifndef QCOW2DEDUP_HASH_H
#define QCOW2DEDUP_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define HASH_MAX_DIGEST	64U

struct hash_alg;

const struct hash_alg *hash_find(const char *name);
const char *hash_name(const struct hash_alg *alg);
unsigned int hash_digest_len(const struct hash_alg *alg);
int hash_digest(const struct hash_alg *alg, const void *data, size_t len,
		uint8_t *out);
void hash_print_names(FILE *f);

#endif /* QCOW2DEDUP_HASH_H */
