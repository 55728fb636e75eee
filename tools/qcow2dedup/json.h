/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A minimal JSON writer: one object printed on one line, commas and string
 * escapes handled here so the commands only name keys and values.  A NULL
 * key means "array element".
 */
#ifndef QCOW2DEDUP_JSON_H
#define QCOW2DEDUP_JSON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define JSON_MAX_DEPTH	8

struct json {
	FILE *f;
	int depth;
	bool comma[JSON_MAX_DEPTH];
};

void json_begin(struct json *j, FILE *f);
void json_end(struct json *j);
void json_obj_begin(struct json *j, const char *key);
void json_obj_end(struct json *j);
void json_arr_begin(struct json *j, const char *key);
void json_arr_end(struct json *j);
void json_u64(struct json *j, const char *key, uint64_t v);
void json_bool(struct json *j, const char *key, bool v);
void json_str(struct json *j, const char *key, const char *s);
void json_null(struct json *j, const char *key);

#endif /* QCOW2DEDUP_JSON_H */
