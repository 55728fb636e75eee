// SPDX-License-Identifier: GPL-2.0
/* JSON writer: see json.h. */
#include <inttypes.h>

#include "json.h"

static void put_string(FILE *f, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	fputc('"', f);
	for (; *p; p++) {
		switch (*p) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		case '\r':
			fputs("\\r", f);
			break;
		default:
			/*
			 * Control characters must be escaped; bytes >= 0x80
			 * are passed through (names on disk are UTF-8).
			 */
			if (*p < 0x20 || *p == 0x7f)
				fprintf(f, "\\u%04x", *p);
			else
				fputc(*p, f);
		}
	}
	fputc('"', f);
}

/* The separator and key that precede every value. */
static void prefix(struct json *j, const char *key)
{
	if (j->comma[j->depth])
		fputs(", ", j->f);
	j->comma[j->depth] = true;
	if (key) {
		put_string(j->f, key);
		fputs(": ", j->f);
	}
}

static void nest(struct json *j, const char *key, char c)
{
	prefix(j, key);
	fputc(c, j->f);
	if (j->depth < JSON_MAX_DEPTH - 1)
		j->depth++;
	j->comma[j->depth] = false;
}

static void unnest(struct json *j, char c)
{
	if (j->depth > 0)
		j->depth--;
	fputc(c, j->f);
}

void json_begin(struct json *j, FILE *f)
{
	j->f = f;
	j->depth = 0;
	j->comma[0] = false;
	fputc('{', f);
	j->depth = 1;
	j->comma[1] = false;
}

void json_end(struct json *j)
{
	unnest(j, '}');
	fputc('\n', j->f);
}

void json_obj_begin(struct json *j, const char *key)
{
	nest(j, key, '{');
}

void json_obj_end(struct json *j)
{
	unnest(j, '}');
}

void json_arr_begin(struct json *j, const char *key)
{
	nest(j, key, '[');
}

void json_arr_end(struct json *j)
{
	unnest(j, ']');
}

void json_u64(struct json *j, const char *key, uint64_t v)
{
	prefix(j, key);
	fprintf(j->f, "%" PRIu64, v);
}

void json_bool(struct json *j, const char *key, bool v)
{
	prefix(j, key);
	fputs(v ? "true" : "false", j->f);
}

void json_str(struct json *j, const char *key, const char *s)
{
	prefix(j, key);
	if (s)
		put_string(j->f, s);
	else
		fputs("null", j->f);
}

void json_null(struct json *j, const char *key)
{
	prefix(j, key);
	fputs("null", j->f);
}
