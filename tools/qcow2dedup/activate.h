/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers of the commands that act on mapped devices (activate.c,
 * stats.c): running losetup/dmsetup, and reading their answers.
 */
#ifndef QCOW2DEDUP_ACTIVATE_H
#define QCOW2DEDUP_ACTIVATE_H

#include <stddef.h>
#include <stdint.h>

struct image;

int run_cmd(char *const argv[], char *out, size_t len);
int run_cmd_quiet(char *const argv[], char *out, size_t len);
int image_end(struct image *img, uint64_t *end);
int set_file_size(const char *path, uint64_t size);
int dev_node(unsigned int maj, unsigned int min, char *buf, size_t len);
int image_uuid(const char *path, char *uuid, size_t len);
const char *status_field(const char *status, unsigned int n, char *buf,
			 size_t len);
const char *stats_value(const char *stats, const char *key, char *buf,
			size_t len);
void human_size(uint64_t bytes, char *buf, size_t len);

#endif /* QCOW2DEDUP_ACTIVATE_H */
