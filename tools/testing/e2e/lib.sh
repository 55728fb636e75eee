# SPDX-License-Identifier: GPL-2.0
# Shared helpers for the end-to-end scenarios; sourced by each scenario.
#
# A scenario is an executable tools/testing/e2e/NN-name.sh run on the host.
# It prepares images with QEMU's tools, drives the target inside UML through
# tools/testing/uml-run and checks the result with tools nobody here wrote
# (qemu-img, qemu-io, cmp, fsck).  Exit 0 = pass, anything else = fail.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export E2E_DIR	# for the scenarios' Python helpers (copied_window.py)
REPO=$(cd "$E2E_DIR/../../.." && pwd)
# The runner of the inner commands: uml-run, or RUNNER (x86-run, a name in
# tools/testing, or a path), which takes the same options (make e2e-smp).
case ${RUNNER:-uml-run} in
*/*) UML_RUN=$RUNNER ;;
*) UML_RUN=$REPO/tools/testing/${RUNNER:-uml-run} ;;
esac
CACHE=${QCOW2DEDUP_CACHE:-/var/tmp/qcow2dedup}
mkdir -p "$CACHE/e2e"
# Work directory of this scenario: visible inside UML through hostfs.
WORK=$(mktemp -d "$CACHE/e2e/$(basename "$0" .sh).XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log() { printf '# %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# pad IMAGE: round a qcow2 file up to a whole number of 64 KiB blocks, as it
# would be on a logical volume; a block device cannot end mid-cluster.
pad() { truncate -s %2097152 "$1"; }

# sectors IMAGE: virtual size in 512-byte sectors, from qemu-img.
sectors() {
	qemu-img info --output=json "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] // 512)'
}

# uml [uml-run options] -- CMD...: run in UML, with the scenario's output.
uml() { "$UML_RUN" "$@"; }

# ---- Helpers of the dedup scenarios (40-43) ----

# qcheck IMAGE: qemu-img check clean except for the dedup table's clusters,
# which it calls leaked, and no wrong table entry: see tools/testing/qcheck.
qcheck() { "$REPO/tools/testing/qcheck" "$1" || fail "$1: qemu-img check (see above)"; }

# no_corruption IMAGE: qemu-img check finds no corruption and no check
# error; leaks are allowed (the caller says why there are some).
no_corruption() {
	qemu-img check --output=json "$1" >"$1.check.json" 2>/dev/null || true
	python3 - "$1.check.json" <<'PY' || { qemu-img check "$1"; fail "$1: qemu-img check finds corruption"; }
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(1 if d.get("corruptions", 0) or d.get("check-errors", 0) else 0)
PY
}

# check_clean IMAGE: qcheck, the name the dedup scenarios use.
check_clean() { qcheck "$1"; }

# want_stat FILE NAME OP VALUE: the line "NAME v" of FILE (a saved
# `dmsetup message DEV 0 stats`, or status_named's output) satisfies
# [ v OP VALUE ]; fails the scenario naming FILE, NAME and v otherwise.
want_stat() {
	local v
	v=$(awk -v k="$2" '$1 == k { print $2; exit }' "$1")
	[ -n "$v" ] || fail "$1: no '$2' value"
	test "$v" "$3" "$4" || fail "$1: $2 is $v, want $3 $4"
}

# status_named STATUS_FILE: a saved `dmsetup status` line as "name value"
# lines (fields 1..12 after "qcow2dedup", used/total split), for want_stat.
status_named() {
	awk '{ split($7, u, "/"); print "mode", $4; print "version", $5
	       print "cluster_size", $6; print "used", u[1]; print "total", u[2]
	       print "staged", $8; print "clusters_allocated", $9; print "cow_copies", $10
	       print "reads_deferred", $11; print "reads_compressed", $12
	       print "dedup_hits", $13; print "zero_clusters", $14; print "index_entries", $15 }' "$1"
}

# mapq IMAGE CLUSTER_SIZE QUERY...: assertions on where `qemu-img map` puts
# each guest cluster (offsets and lengths in bytes, cluster-aligned):
#   same:LEN:OFF1,OFF2,...  every cluster of [OFFk, OFFk+LEN) has data, at
#                           the host cluster of its peer in [OFF1, OFF1+LEN)
#   apart:LEN:OFF1,OFF2,... every cluster has data; the ranges share none
#   hosts:N                 exactly N distinct host clusters hold guest data
#   one:OFF:LEN             every cluster of the range has data, all on
#                           one host cluster
#   data:OFF:LEN            every cluster of the range has data
#   nodata:OFF:LEN          no cluster of the range has data
#   once:OFF:LEN            every cluster has data, at a host cluster that no
#                           other guest cluster maps (refcount 1 when the
#                           image is clean and has no snapshot)
# Fails the scenario at the first query that does not hold.
mapq() {
	qemu-img map --output=json "$1" >"$1.map.json" || fail "$1: qemu-img map"
	python3 - "$1.map.json" "${@:2}" <<'PY' || fail "$1: qemu-img map: see above"
import collections, json, sys
cs, g2h = int(sys.argv[2]), {}
for x in json.load(open(sys.argv[1])):
    if x["data"] and "offset" in x:
        for o in range(0, x["length"], cs):
            g2h[x["start"] + o] = x["offset"] + o
refs = collections.Counter(g2h.values())
def no(msg):
    sys.exit("map: " + msg)
def need(off, n):
    for g in range(off, off + n, cs):
        if g not in g2h:
            no("guest cluster at %d has no data" % g)
for q in sys.argv[3:]:
    k, *a = q.split(":")
    if k in ("same", "apart"):
        n, offs = int(a[0]), [int(o) for o in a[1].split(",")]
        for o in offs:
            need(o, n)
        for i in range(0, n, cs):
            h = [g2h[o + i] for o in offs]
            if k == "same" and len(set(h)) != 1:
                no("clusters %s map to host %s, not one" % ([o + i for o in offs], h))
        if k == "apart":
            s = [{g2h[o + i] for i in range(0, n, cs)} for o in offs]
            if len(set().union(*s)) != sum(map(len, s)):
                no("ranges at %s share host clusters" % offs)
    elif k == "hosts":
        if len(refs) != int(a[0]):
            no("%d distinct host clusters hold data, want %s" % (len(refs), a[0]))
    elif k == "one":
        need(int(a[0]), int(a[1]))
        h = {g2h[g] for g in range(int(a[0]), int(a[0]) + int(a[1]), cs)}
        if len(h) != 1:
            no("[%s, +%s) is on %d host clusters, not one" % (a[0], a[1], len(h)))
    elif k == "data":
        need(int(a[0]), int(a[1]))
    elif k == "nodata":
        d = [g for g in range(int(a[0]), int(a[0]) + int(a[1]), cs) if g in g2h]
        if d:
            no("%d clusters of [%s, +%s) have data, first %d" % (len(d), a[0], a[1], d[0]))
    elif k == "once":
        need(int(a[0]), int(a[1]))
        for g in range(int(a[0]), int(a[0]) + int(a[1]), cs):
            if refs[g2h[g]] != 1:
                no("host %d of guest %d is mapped %d times" % (g2h[g], g, refs[g2h[g]]))
    else:
        no("bad query " + q)
print("# %s: map as expected (%d guest clusters with data on %d host clusters)"
      % (sys.argv[1][:-9], len(g2h), len(refs)))
PY
}

# ---- Helpers of the crash scenarios (47, 54) ----

# The userspace tool, built on demand.
TOOL=$REPO/tools/qcow2dedup/qcow2dedup
# later_start DELAY CUT_AT: the crash scenarios' next estimate of the time
# from the runner's start to the workload's, after a cut at CUT_AT seconds
# found no workload started.  The boot took longer than CUT_AT (a loaded
# host boots slowly): aim past it at once, not one second later per miss,
# or every round of a busy CI machine cuts before the workload (30 s cap).
later_start() {
	python3 -c 'import sys; print("%.2f" % min(30.0, max(float(sys.argv[1]) + 1.0, float(sys.argv[2]) + 0.5)))' "$1" "$2"
}

need_tool() {
	[ -x "$TOOL" ] || make -s -C "$REPO" tool >/dev/null || fail "cannot build the qcow2dedup tool"
}

# copied_only IMAGE: qemu-img check finds no corruption other than the COPIED
# mismatches a crash may leave (copied_window.py); prints "LEAKS COPIED".
copied_only() {
	local out
	out=$(qemu-img check --output=json "$1" 2>"$1.qerr") || true
	python3 -c '
import json, sys
try:
    j = json.loads(sys.argv[1])
except ValueError:
    sys.exit("qemu-img check output is not JSON: " + sys.argv[1])
sys.path.insert(0, sys.argv[4])
import copied_window
copied, wrong = copied_window.classify(open(sys.argv[2]).read(),
                                       copied_window.cluster_bits(sys.argv[3]))
bad = j.get("corruptions", 0) + j.get("check-errors", 0) - copied
print(j.get("leaks", 0), copied)
sys.exit(1 if bad else 0)' "$out" "$1.qerr" "$1" "$E2E_DIR" || { echo "$out" >&2; grep -v '^Leaked' "$1.qerr" >&2; return 1; }
}

# tool_check IMAGE (need_tool first): qcow2dedup check --json; prints "STATE ENTRIES";
# fails if a slot names wrong contents or a free cluster (stale excepted).
tool_check() {
	"$TOOL" check --json "$1" >"$1.tool.json" 2>"$1.tool.err" || true
	python3 -c '
import json, sys
try:
    t = json.load(open(sys.argv[1]))
except ValueError:
    sys.exit("qcow2dedup check produced no report")
if t["state"] == "invalid":
    sys.exit("dedup table invalid: %s" % t.get("reason"))
if t["state"] != "stale" and (t["wrong_entries"] or t["unallocated_entries"]):
    sys.exit("dedup table %s: %d wrong entries, %d naming free clusters (of %d)" % (
        t["state"], t["wrong_entries"], t["unallocated_entries"], t["entries"]))
print(t["state"], t["entries"])' "$1.tool.json" || { cat "$1.tool.err" >&2; "$TOOL" check "$1" >&2 || true; return 1; }
}

# run_inner TAG UML_ARGS... [-- ARGS...]: run `bash TAG.sh ARGS` (in the
# current directory) in UML and print its output; fails unless it exits 0
# and printed "TAG-done".
run_inner() {
	local tag=$1 out opts=()
	shift
	while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
	[ $# -gt 0 ] && shift
	out=$(uml "${opts[@]}" -- bash "$tag.sh" "$@" 2>&1) || { echo "$out"; fail "$tag: UML run failed"; }
	echo "$out"
	grep -q "^$tag-done\$" <<<"$out" || fail "$tag: the inner script did not finish"
}

# inner_prelude: helpers for an inner script (source the file it goes to):
#   bad MSG             report a failure, the script exits 1 at its end
#   put FILE DEV MIB    write FILE at MIB MiB of DEV (O_DIRECT, 1 MiB blocks)
#   same FILE DEV MIB   DEV holds FILE at MIB MiB (O_DIRECT read)
#   save NAME TAG       flush mapped device NAME; its stats, status and
#                       table into TAG.stats, TAG.status, TAG.table
#   wait_rebuild RUNS   until device t has done RUNS dedup index rebuilds,
#                       none runs and its table state is not "rebuilding"
#                       (60 s at most)
inner_prelude() {
	cat <<'EOF'
set -u
rc=0
wait_rebuild() {
	local i s
	for i in $(seq 600); do
		s=$(dmsetup message t 0 stats)
		if [ "$(awk '$1 == "rebuild_runs" { print $2 }' <<<"$s")" -ge "$1" ] &&
		   [ "$(awk '$1 == "rebuild_progress" { print $2 }' <<<"$s")" = 100 ] &&
		   [ "$(awk '$1 == "table_state" { print $2 }' <<<"$s")" != rebuilding ]; then
			echo "rebuild over after $((i / 10)).$((i % 10)) s"
			return 0
		fi
		sleep 0.1
	done
	bad "the rebuild did not end within 60 s: $(echo "$s" | grep -E '^(rebuild|table_state)' | tr '\n' ' ')"
}
bad() { echo "FAIL: $*"; rc=1; }
put() { dd if="$1" of="$2" bs=1M seek="$3" oflag=direct conv=notrunc status=none || bad "writing $1 at ${3}M of $2"; }
same() {
	dd if="$2" bs=1M skip="$3" count=$(($(stat -c %s "$1") >> 20)) iflag=direct status=none |
		cmp - "$1" || bad "$2 at ${3}M differs from $1"
}
save() {
	sync "/dev/mapper/$1" || bad "$1: flush"
	dmsetup message "$1" 0 stats >"$2.stats" || bad "$1: stats message"
	dmsetup status "$1" >"$2.status" || bad "$1: status"
	dmsetup table "$1" >"$2.table" || bad "$1: table"
	echo "$2: $(cat "$2.status")"
}
EOF
}

# agree TAG: the counters shown by both TAG.stats and TAG.status are equal;
# leaves the named status in TAG.st.
agree() {
	local k v
	status_named "$1.status" >"$1.st"
	for k in clusters_allocated cow_copies dedup_hits zero_clusters index_entries; do
		v=$(awk -v k="$k" '$1 == k { print $2; exit }' "$1.stats")
		[ -n "$v" ] || fail "$1.stats: no '$k' value"
		want_stat "$1.st" "$k" -eq "$v"
	done
}

# host_tree DIR: copy about 100 MiB of real files (Python's and Perl's
# libraries, on any Debian 12 with the packages of tools/testing/deps) into
# DIR, one subdirectory per source, so the host cannot change them under a
# test.  Prints the bytes copied; fails under 50 MiB.
host_tree() {
	local dir=$1 total=0 d
	mkdir -p "$dir"
	for d in /usr/lib/python3.[0-9]* /usr/share/perl /usr/lib/x86_64-linux-gnu/perl /usr/share/perl5; do
		[ -d "$d" ] || continue
		[ "$total" -lt $((100 << 20)) ] || break
		cp -a "$d" "$dir/$(echo "${d#/}" | tr / _)"
		total=$(du -sb "$dir" | cut -f1)
	done
	[ "$total" -ge $((50 << 20)) ] || fail "source tree too small ($total bytes)"
	echo "$total"
}
