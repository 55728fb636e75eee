// SPDX-License-Identifier: GPL-2.0
/*
 * activate-all, deactivate-all: the devices of /etc/qcow2deduptab, as
 * /etc/crypttab and /etc/integritytab list theirs; what the systemd unit
 * qcow2dedup.service runs at boot and at shutdown.
 *
 * One device per line, fields separated by blanks, '#' starts a comment:
 *
 *   NAME  IMAGE|DEV  [OPTIONS]
 *
 * OPTIONS: "-" or "defaults", or a comma-separated list of readonly,
 * verify, nodedup, hash=ALG, index-limit=MIB, flush-interval=MS (the
 * options of activate).  Each device is activated (or deactivated) by
 * running this tool's activate (deactivate) command, so a tab line means
 * exactly what the command line does; devices that exist already are left
 * alone, and one failing line does not stop the others.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "activate.h"
#include "qcow2dedup.h"

#define TAB_DEFAULT	"/etc/qcow2deduptab"
#define TAB_MAX_LINES	1024U
#define TAB_MAX_ARGS	16U

struct tab_entry {
	char name[256];
	char image[PATH_MAX];
	char opts[512];
	unsigned int line;
};

/*
 * Parse @f into @e (at most TAB_MAX_LINES).  Returns the count of good
 * lines, -1 when the file cannot be read; *@bad is set when a line was
 * skipped (reported).
 */
static int tab_read(const char *path, FILE *f, struct tab_entry *e, bool *bad)
{
	char buf[PATH_MAX + 1024];
	unsigned int lineno = 0;
	int n = 0;

	while (fgets(buf, sizeof(buf), f)) {
		char name[256], image[PATH_MAX], opts[512], extra[2];
		int fields;

		lineno++;
		if (!strchr(buf, '\n') && !feof(f)) {
			errmsg("%s:%u: line too long", path, lineno);
			return -1;
		}
		buf[strcspn(buf, "#\n")] = '\0';
		fields = sscanf(buf, "%255s %4095s %511s %1s", name, image, opts, extra);
		if (fields <= 0)
			continue;
		if (fields < 2 || fields > 3) {
			errmsg("%s:%u: expected NAME IMAGE|DEV [OPTIONS]", path, lineno);
			*bad = true;
			continue;
		}
		if ((unsigned int)n == TAB_MAX_LINES) {
			errmsg("%s: more than %u devices", path, TAB_MAX_LINES);
			return -1;
		}
		snprintf(e[n].name, sizeof(e[n].name), "%s", name);
		snprintf(e[n].image, sizeof(e[n].image), "%s", image);
		snprintf(e[n].opts, sizeof(e[n].opts), "%s", fields == 3 ? opts : "-");
		e[n].line = lineno;
		n++;
	}
	return n;
}

/* Append NUL-terminated @s to @store (at *@used); a pointer to the copy. */
static char *store_str(char *store, size_t len, size_t *used, const char *pfx,
		       const char *s, size_t slen)
{
	char *p = store + *used;
	size_t plen = strlen(pfx);

	if (*used + plen + slen + 1 > len)
		return NULL;
	memcpy(p, pfx, plen);
	memcpy(p + plen, s, slen);
	p[plen + slen] = '\0';
	*used += plen + slen + 1;
	return p;
}

/*
 * The activate arguments of OPTIONS ("verify,hash=sha256" -> "--verify"
 * "--hash" "sha256"), kept in @store, into @argv from index @i.  Returns
 * the new index, or -1 (reported) for an option activate does not have.
 */
static int tab_opts(const char *path, const struct tab_entry *e, char **argv,
		    int i, char *store, size_t len)
{
	static const char *const flags[] = { "readonly", "verify", "nodedup" };
	static const char *const valued[] = { "hash", "index-limit", "flush-interval" };
	const char *tok = e->opts;
	size_t used = 0;

	if (!strcmp(e->opts, "-") || !strcmp(e->opts, "defaults"))
		return i;
	while (*tok) {
		size_t tlen = strcspn(tok, ","), nlen;
		const char *eq = memchr(tok, '=', tlen);
		bool known = false;
		unsigned int k;

		nlen = eq ? (size_t)(eq - tok) : tlen;
		for (k = 0; !eq && k < ARRAY_SIZE(flags); k++)
			known |= strlen(flags[k]) == nlen && !strncmp(tok, flags[k], nlen);
		for (k = 0; eq && k < ARRAY_SIZE(valued); k++)
			known |= strlen(valued[k]) == nlen && !strncmp(tok, valued[k], nlen);
		if (!known || (unsigned int)i + 5 >= TAB_MAX_ARGS) {
			errmsg("%s:%u: %s: unknown option '%.*s'", path, e->line,
			       e->name, (int)tlen, tok);
			return -1;
		}
		argv[i] = store_str(store, len, &used, "--", tok, nlen);
		if (!argv[i++])
			return -1;
		if (eq) {
			argv[i] = store_str(store, len, &used, "", eq + 1,
					    tlen - nlen - 1);
			if (!argv[i++])
				return -1;
		}
		tok += tlen;
		tok += *tok == ',';
	}
	return i;
}

static bool dm_exists(const char *name)
{
	char *argv[] = { "dmsetup", "info", (char *)name, NULL };
	char out[4096];

	return !run_cmd_quiet(argv, out, sizeof(out));
}

static int tab_command(int argc, char **argv, bool activate)
{
	static const struct option opts[] = {
		{ "tab", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = TAB_DEFAULT;
	struct tab_entry *e;
	char self[PATH_MAX];
	int c, n, i, failed = 0;
	bool bad = false;
	ssize_t sl;
	FILE *f;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			path = optarg;
			break;
		case 'h':
			usage(stdout, argv[0]);
			return EXIT_OK;
		default:
			usage(stderr, argv[0]);
			return EXIT_USAGE;
		}
	}
	if (optind != argc) {
		usage(stderr, argv[0]);
		return EXIT_USAGE;
	}
	sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (sl <= 0) {
		errmsg("cannot find this program: %s", strerror(errno));
		return EXIT_USAGE;
	}
	self[sl] = '\0';
	f = fopen(path, "r");
	if (!f) {
		if (errno == ENOENT) {
			printf("%s: no such file, no devices\n", path);
			return EXIT_OK;
		}
		errmsg("%s: %s", path, strerror(errno));
		return EXIT_USAGE;
	}
	e = calloc(TAB_MAX_LINES, sizeof(*e));
	if (!e) {
		fclose(f);
		errmsg("out of memory");
		return EXIT_USAGE;
	}
	n = tab_read(path, f, e, &bad);
	fclose(f);
	failed = bad;
	if (n < 0) {
		free(e);
		return EXIT_USAGE;
	}
	/* Deactivation in reverse order: a later line may use an earlier one. */
	for (i = 0; i < n; i++) {
		struct tab_entry *t = &e[activate ? i : n - 1 - i];
		char *args[TAB_MAX_ARGS + 1] = { self };
		char store[2 * sizeof(t->opts)];
		int k = 1;

		if (activate == dm_exists(t->name)) {
			printf("%s: %s already\n", t->name,
			       activate ? "active" : "not active");
			continue;
		}
		args[k++] = activate ? "activate" : "deactivate";
		if (activate) {
			k = tab_opts(path, t, args, k, store, sizeof(store));
			if (k < 0) {
				failed = 1;
				continue;
			}
			/* Names and paths are never options, whatever they hold. */
			args[k++] = "--";
			args[k++] = t->image;
			args[k++] = t->name;
		} else {
			args[k++] = t->name;
		}
		args[k] = NULL;
		if (run_cmd(args, NULL, 0)) {
			errmsg("%s:%u: %s failed", path, t->line, t->name);
			failed = 1;
		}
	}
	free(e);
	return failed ? EXIT_ERRORS : EXIT_OK;
}

int cmd_activate_all(int argc, char **argv)
{
	return tab_command(argc, argv, true);
}

int cmd_deactivate_all(int argc, char **argv)
{
	return tab_command(argc, argv, false);
}
