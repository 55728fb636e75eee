/* SPDX-License-Identifier: GPL-2.0 */
/* XXH64, the 64-bit xxHash, as the kernel's lib/xxhash.c computes it. */
#ifndef QCOW2DEDUP_XXHASH64_H
#define QCOW2DEDUP_XXHASH64_H

#include <stddef.h>
#include <stdint.h>

uint64_t xxh64(const void *data, size_t len, uint64_t seed);

#endif /* QCOW2DEDUP_XXHASH64_H */
