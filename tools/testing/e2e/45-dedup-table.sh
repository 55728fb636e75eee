#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 45-dedup-table: the dedup index survives a deactivation.  The target keeps
# it in the image as the dedup table (header extension 0x71646474, autoclear
# bit 60, clusters of refcount 1 that no qcow2 structure references); a new
# activation loads it and deduplicates against what earlier ones wrote, with
# no rebuild.  A table made with another hash is not used: the index is
# rebuilt from the image and a table of the new hash replaces it.
#
# 256 MiB image, 64 KiB clusters.  D = 8 MiB random, U = 4 MiB random.
# act 1 (no table yet: the index is "rebuilt" from the empty image, one run):
#   D at 0 and 16M, 1 MiB of zeros at 48M, U at 32M.  index_entries 192
#   (128 shared + 64 unique), 128 hits.  Host: `qcow2dedup info` says
#   consistent with 192 entries, hash sha256; the leaked clusters are exactly
#   the table's (qemu-img check, and qdt.py walking the table on its own);
#   qcheck.
# act 2, created with the line `qcow2dedup table /dev/ubda` prints inside
#   UML, as is: the table is loaded (table_loaded = table_entries = 192, no
#   rebuild, state clean in stats and as status field 16); D again at 64M:
#   128 hits, 0 clusters allocated; the "flush" message succeeds and counts
#   a table flush; after a suspend and resume, U at 128M: 64 hits; after a
#   reload (a new table of the same device takes the live engine over:
#   nothing is read again, no rebuild, 192 entries, the counters go on),
#   D at 144M: 128 more hits, nothing allocated; everything reads back.  Host: qcheck, content exact, every
#   copy of D on the host clusters of 0..8M, of U on those of 32M..36M,
#   192 host clusters hold data.
# act 3, `qcow2dedup table /dev/ubda --hash blake2b-256`: the sha256 table
#   is not loaded (table_loaded 0, one rebuild run); once the rebuild is
#   over it has hashed and indexed all 192 data clusters (U's 64 of
#   refcount 1 and D's 128 shared ones, whose refcount is their number of
#   referrers), so U written again at 112M gives 64 hits and D at 96M 128,
#   with no allocation.  Host: info says blake2b-256 consistent with 192
#   entries; no corruption, content exact, every copy of U and of D on the
#   same 192 host clusters.  The old sha256 table's clusters: either freed
#   by the target (then qcheck must pass as is), or left leaked as for a
#   stale table (what the admin guide says of any table not used); then the
#   leaked clusters must be exactly the old table's and the new table's.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
QDT="python3 $E2E_DIR/qdt.py"
TOOL=$REPO/tools/qcow2dedup/qcow2dedup
[ -x "$TOOL" ] || make -s -C "$REPO" tool >/dev/null || fail "cannot build the qcow2dedup tool"

M=$((1 << 20)) CS=65536
python3 - <<'PY'
import random
r = random.Random(45)
d, u = r.randbytes(8 << 20), r.randbytes(4 << 20)
open("d8.bin", "wb").write(d); open("u4.bin", "wb").write(u)
open("zero1m.bin", "wb").write(bytes(1 << 20))
M = 1 << 20
def disk(name, parts):
    with open(name, "wb") as f:
        f.truncate(256 * M)
        for off, x in parts:
            f.seek(off * M); f.write(x)
disk("exp1.raw", [(0, d), (16, d), (32, u)])
disk("exp2.raw", [(0, d), (16, d), (32, u), (64, d), (128, u), (144, d)])
disk("exp3.raw", [(0, d), (16, d), (32, u), (64, d), (128, u), (144, d), (96, d), (112, u)])
PY
qemu-img create -q -f qcow2 -o cluster_size=64k img.qcow2 256M
truncate -s 256M img.qcow2
LEN=$(sectors img.qcow2)

inner_prelude >common.sh
cat >>common.sh <<'EOF'
# stat NAME: one value of the stats message of t
st() { dmsetup message t 0 stats | awk -v k="$1" '$1 == k { print $2 }'; }
EOF
printf 'TOOL=%q\n' "$TOOL" >>common.sh

cat >act1.sh <<EOF
. ./common.sh
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
put d8.bin /dev/mapper/t 0
put d8.bin /dev/mapper/t 16
put zero1m.bin /dev/mapper/t 48
put u4.bin /dev/mapper/t 32
wait_rebuild 1
save t act1
same d8.bin /dev/mapper/t 0; same d8.bin /dev/mapper/t 16; same u4.bin /dev/mapper/t 32
sleep 0.2
dmsetup message t 0 stats >act1-later.stats
dmsetup remove t || bad remove
echo act1-done
exit \$rc
EOF
log "act 1: D twice, U once, zeros"
run_inner act1 -d img.qcow2
for kv in index_entries:192 dedup_hits:128 zero_clusters:16 clusters_allocated:192 \
	shared_clusters:128 unique_clusters:64 rebuild_runs:1 table_loaded:0; do
	want_stat act1.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat act1.stats hash = sha256
# The rebuild's time, and its scan's share of it.
want_stat act1.stats rebuild_us -gt 0
want_stat act1.stats rebuild_scan_us -gt 0
rebuild_us=$(awk '$1 == "rebuild_us" { print $2 }' act1.stats)
want_stat act1.stats rebuild_scan_us -le "$rebuild_us"
# A finished rebuild's clock has stopped.
want_stat act1-later.stats rebuild_us -eq "$rebuild_us"
agree act1
"$TOOL" info --json img.qcow2 >info1.json
python3 - info1.json <<'PY' || fail "act 1: qcow2dedup info: see above"
import json, sys
t = json.load(open(sys.argv[1]))["dedup_table"]
print("# after act 1: dedup table %s" % t)
want = {"state": "consistent", "hash": "sha256", "entries": 192, "autoclear_bit": True}
bad = {k: t.get(k) for k in want if t.get(k) != want[k]}
sys.exit("dedup table: %s, want %s" % (bad, {k: want[k] for k in bad}) if bad else 0)
PY
$QDT clusters img.qcow2 >tab1.list
[ "$(wc -l <tab1.list)" -eq "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dedup_table"]["clusters"])' info1.json)" ] ||
	fail "act 1: qdt.py finds $(wc -l <tab1.list) table clusters, qcow2dedup info another number"
$QDT leaks img.qcow2 tab1.list || fail "act 1: leaked clusters are not the table's"
qcheck img.qcow2
qemu-img compare -q -f raw -F qcow2 exp1.raw img.qcow2 || fail "act 1: content differs"
cp img.qcow2 act1.qcow2

cat >act2.sh <<EOF
. ./common.sh
line=\$(\$TOOL table /dev/ubda) || { echo "FAIL: qcow2dedup table"; exit 1; }
echo "table line: \$line"
[ "\$line" = "0 $LEN qcow2dedup /dev/ubda" ] || bad "qcow2dedup table printed '\$line'"
dmsetup create t --table "\$line" || { echo "FAIL: create"; exit 1; }
dmsetup message t 0 stats >act2-start.stats
dmsetup status t >act2-start.status
put d8.bin /dev/mapper/t 64
save t act2
dmsetup message t 0 flush || bad "flush message"
dmsetup message t 0 stats >act2-flushed.stats
dmsetup status t >act2-flushed.status
# A suspend and resume keep the index; so does a reload (a new table of
# the same device shares the engine of the old one).
dmsetup suspend t && dmsetup resume t || bad "suspend/resume"
put u4.bin /dev/mapper/t 128
save t act2s
dmsetup reload t --table "\$line" && dmsetup resume t || bad "reload"
dmsetup message t 0 stats >act2r-start.stats
put d8.bin /dev/mapper/t 144
save t act2r
for o in 0 16 64 144; do same d8.bin /dev/mapper/t \$o; done
for o in 32 128; do same u4.bin /dev/mapper/t \$o; done
same zero1m.bin /dev/mapper/t 48
dmsetup remove t || bad remove
echo act2-done
exit \$rc
EOF
log "act 2: load the table, D again at 64M; suspend/resume, reload"
run_inner act2 -d img.qcow2
for kv in table_loaded:192 table_entries:192 index_entries:192 rebuild_runs:0 table_dropped:0; do
	want_stat act2-start.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat act2-start.stats table_state = clean
want_stat act2-start.stats rebuild_progress -eq 100
want_stat act2-start.stats rebuild_us -eq 0
want_stat act2-start.stats rebuild_scan_us -eq 0
[ "$(awk '{ print $16 }' act2-start.status)" = clean ] || fail "act 2: status field 16 is not 'clean': $(cat act2-start.status)"
for kv in dedup_hits:128 clusters_allocated:0 index_entries:192 rebuild_runs:0; do
	want_stat act2.stats "${kv%:*}" -eq "${kv#*:}"
done
agree act2
flushes=$(awk '$1 == "table_flushes" { print $2 }' act2.stats)
want_stat act2-flushed.stats table_flushes -gt "$flushes"
want_stat act2-flushed.stats table_state = clean
want_stat act2-flushed.stats table_dirty -eq 0
want_stat act2-flushed.stats table_entries -eq 192
[ "$(awk '{ print $16 }' act2-flushed.status)" = clean ] || fail "act 2: status field 16 after flush: $(cat act2-flushed.status)"
for kv in dedup_hits:192 clusters_allocated:0 index_entries:192 rebuild_runs:0; do
	want_stat act2s.stats "${kv%:*}" -eq "${kv#*:}"
done
for kv in table_loaded:192 table_entries:192 index_entries:192 rebuild_runs:0; do
	want_stat act2r-start.stats "${kv%:*}" -eq "${kv#*:}"
done
hits=$(awk '$1 == "dedup_hits" { print $2 }' act2r-start.stats)
for kv in dedup_hits:$((hits + 128)) clusters_allocated:0 index_entries:192 verify_mismatches:0; do
	want_stat act2r.stats "${kv%:*}" -eq "${kv#*:}"
done
qcheck img.qcow2
$QDT clusters img.qcow2 >tab2.list
$QDT leaks img.qcow2 tab2.list || fail "act 2: leaked clusters are not the table's"
qemu-img compare -q -f raw -F qcow2 exp2.raw img.qcow2 || fail "act 2: content differs"
mapq img.qcow2 $CS same:$((8 * M)):0,$((16 * M)),$((64 * M)),$((144 * M)) \
	same:$((4 * M)):$((32 * M)),$((128 * M)) nodata:$((48 * M)):$M hosts:192
"$TOOL" info --json img.qcow2 | python3 -c '
import json, sys
t = json.load(sys.stdin)["dedup_table"]
sys.exit(0 if t["state"] == "consistent" and t["entries"] == 192 else "after act 2: %s" % t)' ||
	fail "act 2: dedup table not consistent with 192 entries"

cat >act3.sh <<EOF
. ./common.sh
line=\$(\$TOOL table /dev/ubda --hash blake2b-256) || { echo "FAIL: qcow2dedup table"; exit 1; }
echo "table line: \$line"
dmsetup create t --table "\$line" || { echo "FAIL: create"; exit 1; }
dmsetup message t 0 stats >act3-start.stats
wait_rebuild 1
dmsetup message t 0 stats >act3-rebuilt.stats
put u4.bin /dev/mapper/t 112
save t act3u
put d8.bin /dev/mapper/t 96
save t act3
for o in 0 16 64 96 144; do same d8.bin /dev/mapper/t \$o; done
for o in 32 112 128; do same u4.bin /dev/mapper/t \$o; done
dmsetup remove t || bad remove
echo act3-done
exit \$rc
EOF
log "act 3: hash blake2b-256, the sha256 table is not used"
run_inner act3 -d img.qcow2
want_stat act3-start.stats table_loaded -eq 0
want_stat act3-start.stats hash = blake2b-256
for kv in rebuild_runs:1 rebuild_hashed:192 rebuild_indexed:192 index_entries:192 table_loaded:0; do
	want_stat act3-rebuilt.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat act3-rebuilt.stats rebuild_progress -eq 100
want_stat act3-rebuilt.stats rebuild_us -gt 0
for kv in dedup_hits:64 clusters_allocated:0 index_entries:192 rebuild_runs:1; do
	want_stat act3u.stats "${kv%:*}" -eq "${kv#*:}"
done
for kv in dedup_hits:192 clusters_allocated:0 index_entries:192 rebuild_runs:1 verify_mismatches:0; do
	want_stat act3.stats "${kv%:*}" -eq "${kv#*:}"
done
agree act3
qemu-img compare -q -f raw -F qcow2 exp3.raw img.qcow2 || fail "act 3: content differs"
mapq img.qcow2 $CS same:$((4 * M)):$((32 * M)),$((112 * M)),$((128 * M)) \
	same:$((8 * M)):0,$((16 * M)),$((64 * M)),$((96 * M)),$((144 * M)) \
	nodata:$((48 * M)):$M hosts:192
"$TOOL" info --json img.qcow2 >info3.json
python3 - info3.json 192 <<'PY' || fail "act 3: qcow2dedup info: see above"
import json, sys
t = json.load(open(sys.argv[1]))["dedup_table"]
print("# after act 3: dedup table %s" % t)
want = {"state": "consistent", "hash": "blake2b-256", "entries": int(sys.argv[2])}
bad = {k: t.get(k) for k in want if t.get(k) != want[k]}
sys.exit("dedup table: %s, want %s" % (bad, {k: want[k] for k in bad}) if bad else 0)
PY
$QDT clusters img.qcow2 >tab3.list
if sort -n tab2.list tab3.list | uniq -d | grep -q .; then
	fail "act 3: the new table reuses clusters of the old one"
fi
"$TOOL" check --json img.qcow2 >check3.json || true
other=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["leaked_other_clusters"])' check3.json)
if [ "$other" -eq 0 ]; then
	$QDT leaks img.qcow2 tab3.list || fail "act 3: leaked clusters are not the new table's"
	qcheck img.qcow2
	log "act 3: the sha256 table's $(wc -l <tab2.list) clusters were freed"
else
	# The target leaves a table it does not use alone (dedup-table.c,
	# qcow2dedup_table_load()): the old table's clusters stay leaked.
	$QDT leaks img.qcow2 tab2.list tab3.list || fail "act 3: leaked clusters are not old + new table"
	python3 - check3.json "$(wc -l <tab2.list)" <<'PY' || fail "act 3: qcow2dedup check: see above"
import json, sys
t = json.load(open(sys.argv[1]))
print("# qcow2dedup check: %s" % t)
want = {"wrong_entries": 0, "unallocated_entries": 0, "corruptions": 0, "check_errors": 0,
        "leaked_other_clusters": int(sys.argv[2]), "state": "consistent"}
bad = {k: t.get(k) for k in want if t.get(k) != want[k]}
sys.exit("%s, want %s" % (bad, {k: want[k] for k in bad}) if bad else 0)
PY
	log "act 3: NOTE the sha256 table's $other clusters stay leaked (not reclaimed on a hash change)"
fi
log "the dedup table persists across activations and is replaced on a hash change"
