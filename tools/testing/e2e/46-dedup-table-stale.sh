#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 46-dedup-table-stale: a dedup table is not trusted after another program
# wrote the image.  QEMU clears unknown autoclear bits when it opens an
# image read-write, so bit 60 goes; the target must then rebuild its index
# from the clusters' real contents, never from the stale slots: a slot that
# names a cluster QEMU overwrote would make the target share the wrong data.
#
# 256 MiB image, 64 KiB clusters.  A = 4 MiB random (written once: 64
# refcount-1 clusters), B = 4 MiB random (written twice: 64 shared).
# act 1: A at 0, B at 8M and 24M; the table (consistent, 128 entries) is on
#   disk; its clusters are listed by qdt.py (independent of the tool).
# (a) QEMU writes 64 KiB of 0x5a at 1M, in place over A's 17th cluster,
#   and 64 KiB of 0x6b at 8M, a copy-on-write of B's first cluster, which
#   leaves its other reference (24M) at refcount 1 without COPIED: qemu-img
#   check reports exactly that one OFLAG_COPIED error.  qcow2dedup info:
#   stale, autoclear bit clear; qcow2dedup check: exactly one wrong entry
#   (the cluster QEMU overwrote; expected and harmless in a stale table).
#   act 2: rebuild_runs 1, table_loaded 0; after the rebuild, 129 clusters
#   hashed and indexed (A's 64 with QEMU's 0x5a cluster under its new
#   contents, B's 63 still shared, B's first cluster now single, QEMU's
#   0x6b cluster); A again at 64M: 63 hits and 1 cluster allocated (the
#   chunk QEMU replaced has no copy any more); 64 KiB of 0x5a at 80M: 1 hit
#   on QEMU's cluster; B at 96M: 64 hits; the whole device reads exactly
#   the expected disk, in UML and through qemu-img compare.  Host: no
#   corruption (the rebuild set the missing COPIED flag), a consistent
#   table of 130 entries with no wrong or unallocated one, and the leaked
#   clusters are exactly the old table's (nobody reclaims them after a
#   foreign write: they may have been reused, so the target leaves them to
#   `qemu-img check -r leaks`) plus the new table's; qemu-img map shows the
#   sharing described.
# (b) from act 1's image again: `qemu-img check -r leaks` frees the table's
#   clusters (then qemu-img check finds no leak) and the table is stale.
#   act 3: rebuild (128 indexed: A's and B's clusters); A at 64M: 64 hits,
#   nothing allocated; device exact; host: qcheck (only the new table
#   leaked), content exact, 64M..68M on A's host clusters.
# (c) from act 1's image again, stale after a read-write open by QEMU that
#   writes nothing: an activation that only reads rebuilds, and leaves the
#   image unchanged (the table is opened by the first write only, see the
#   admin guide); the same with a "flush" message writes the rebuilt table:
#   consistent, 128 entries, none wrong; leaked: the old table and the new.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
QDT="python3 $E2E_DIR/qdt.py"
TOOL=$REPO/tools/qcow2dedup/qcow2dedup
[ -x "$TOOL" ] || make -s -C "$REPO" tool >/dev/null || fail "cannot build the qcow2dedup tool"

M=$((1 << 20)) CS=65536
python3 - <<'PY'
import random
r = random.Random(46)
a, b = r.randbytes(4 << 20), r.randbytes(4 << 20)
open("a4.bin", "wb").write(a); open("b4.bin", "wb").write(b)
open("p5a.bin", "wb").write(b"\x5a" * 65536)
M = 1 << 20
def disk(name, parts):
    with open(name, "wb") as f:
        f.truncate(256 * M)
        for off, x in parts:
            f.seek(off); f.write(x)
disk("exp1.raw", [(0, a), (8 * M, b), (24 * M, b)])
disk("expa.raw", [(0, a), (8 * M, b), (24 * M, b), (M, b"\x5a" * 65536), (8 * M, b"\x6b" * 65536),
                  (64 * M, a), (80 * M, b"\x5a" * 65536), (96 * M, b)])
disk("expb.raw", [(0, a), (8 * M, b), (24 * M, b), (64 * M, a)])
PY
qemu-img create -q -f qcow2 -o cluster_size=64k img.qcow2 256M
truncate -s 256M img.qcow2

inner_prelude >common.sh
printf 'TOOL=%q\n' "$TOOL" >>common.sh
cat >>common.sh <<'EOF'
# whole EXPECTED_RAW: the device reads exactly EXPECTED_RAW
whole() {
	dd if=/dev/mapper/t bs=1M iflag=direct status=none | cmp - "$1" || bad "the device differs from $1"
}
# activate: create t with the line qcow2dedup table prints, as is
activate() {
	local line
	line=$($TOOL table /dev/ubda) || { echo "FAIL: qcow2dedup table"; exit 1; }
	echo "table line: $line"
	dmsetup create t --table "$line" || { echo "FAIL: create"; exit 1; }
}
EOF

# info_is IMAGE KEY=VALUE...: fields of `qcow2dedup info --json`'s dedup_table
info_is() {
	"$TOOL" info --json "$1" | python3 -c '
import json, sys
t = json.load(sys.stdin)["dedup_table"]
want = dict(a.split("=", 1) for a in sys.argv[1:])
bad = {k: t.get(k) for k in want if str(t.get(k)) != want[k]}
print("# dedup table: %s" % t)
sys.exit("dedup table: %s, want %s" % (bad, {k: want[k] for k in bad}) if bad else 0)' "${@:2}" ||
		fail "$1: qcow2dedup info (see above)"
}
# check_is IMAGE KEY=VALUE...: fields of `qcow2dedup check --json`
check_is() {
	"$TOOL" check --json "$1" >"$1.tool.json" 2>"$1.tool.err" || true
	python3 - "$1.tool.json" "${@:2}" <<'PY' || { cat "$1.tool.err"; fail "$1: qcow2dedup check (see above)"; }
import json, sys
t = json.load(open(sys.argv[1]))
want = dict(a.split("=", 1) for a in sys.argv[2:])
bad = {k: t.get(k) for k in want if str(t.get(k)) != want[k]}
print("# qcow2dedup check: %s" % {k: v for k, v in t.items() if k != "image"})
sys.exit("%s, want %s" % (bad, {k: want[k] for k in bad}) if bad else 0)
PY
}

cat >act1.sh <<EOF
. ./common.sh
activate
put a4.bin /dev/mapper/t 0
put b4.bin /dev/mapper/t 8
put b4.bin /dev/mapper/t 24
save t act1
whole exp1.raw
dmsetup remove t || bad remove
echo act1-done
exit \$rc
EOF
log "act 1: A once, B twice"
run_inner act1 -d img.qcow2
want_stat act1.stats index_entries -eq 128
want_stat act1.stats dedup_hits -eq 64
info_is img.qcow2 state=consistent entries=128 autoclear_bit=True hash=sha256
$QDT clusters img.qcow2 >tab1.list
$QDT leaks img.qcow2 tab1.list || fail "act 1: leaked clusters are not the table's"
qcheck img.qcow2
qemu-img compare -q -f raw -F qcow2 exp1.raw img.qcow2 || fail "act 1: content differs"
cp img.qcow2 imgb.qcow2
cp img.qcow2 imgc.qcow2
mapq img.qcow2 $CS once:0:$((4 * M)) same:$((4 * M)):$((8 * M)),$((24 * M))
host17=$(qemu-img map --output=json img.qcow2 | python3 -c '
import json, sys
for x in json.load(sys.stdin):
    if x["data"] and x["start"] <= 1048576 < x["start"] + x["length"]:
        print((x["offset"] + 1048576 - x["start"]) // 65536)')

# ---- (a) QEMU writes in place ----
log "(a) QEMU writes 64 KiB of 0x5a at 1M and 64 KiB of 0x6b at 8M"
qemu-io -c 'write -P 0x5a 1M 64k' -c 'write -P 0x6b 8M 64k' img.qcow2 >/dev/null || fail "qemu-io write"
qemu-img check img.qcow2 >qemu.check 2>&1 || true
if [ "$(grep -c '^ERROR OFLAG_COPIED data cluster' qemu.check)" -ne 1 ] || [ "$(grep -c '^ERROR' qemu.check)" -ne 1 ]; then
	cat qemu.check
	fail "(a): after QEMU's copy-on-write, want exactly one OFLAG_COPIED error"
fi
mapq img.qcow2 $CS once:0:$((4 * M))
qemu-img map --output=json img.qcow2 | python3 -c '
import json, sys
for x in json.load(sys.stdin):
    if x["data"] and x["start"] <= 1048576 < x["start"] + x["length"]:
        sys.exit(0 if (x["offset"] + 1048576 - x["start"]) // 65536 == int(sys.argv[1]) else
                 "QEMU did not write in place")' "$host17" || fail "(a): QEMU moved the cluster at 1M"
info_is img.qcow2 state=stale autoclear_bit=False entries=128
check_is img.qcow2 state=stale wrong_entries=1 unallocated_entries=0 \
	leaked_table_clusters="$(wc -l <tab1.list)" leaked_other_clusters=0

cat >act2.sh <<EOF
. ./common.sh
activate
dmsetup message t 0 stats >act2-start.stats
wait_rebuild 1
dmsetup message t 0 stats >act2-rebuilt.stats
put a4.bin /dev/mapper/t 64
save t act2a
# bs=64k: with bs=1M, dd would write the short last block without O_DIRECT
dd if=p5a.bin of=/dev/mapper/t bs=64k seek=$((80 * 16)) oflag=direct conv=notrunc status=none || bad "writing 0x5a at 80M"
save t act2p
put b4.bin /dev/mapper/t 96
save t act2
whole expa.raw
dmsetup remove t || bad remove
echo act2-done
exit \$rc
EOF
log "(a) act 2: the stale table is not used"
run_inner act2 -d img.qcow2
want_stat act2-start.stats table_loaded -eq 0
want_stat act2-start.stats rebuild_runs -eq 1
for kv in rebuild_runs:1 rebuild_hashed:129 rebuild_indexed:129 index_entries:129 table_loaded:0; do
	want_stat act2-rebuilt.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat act2a.stats dedup_hits -eq 63
want_stat act2a.stats clusters_allocated -eq 1
want_stat act2p.stats dedup_hits -eq 64
want_stat act2.stats dedup_hits -eq 128
want_stat act2.stats clusters_allocated -eq 1
want_stat act2.stats index_entries -eq 130
want_stat act2.stats verify_mismatches -eq 0
agree act2
qemu-img compare -q -f raw -F qcow2 expa.raw img.qcow2 || fail "(a): content differs"
mapq img.qcow2 $CS same:$M:0,$((64 * M)) same:$((3 * M - CS)):$((M + CS)),$((65 * M + CS)) \
	apart:$CS:$M,$((65 * M)) same:$CS:$M,$((80 * M)) apart:$CS:$((8 * M)),$((24 * M)) \
	same:$CS:$((24 * M)),$((96 * M)) same:$((4 * M - CS)):$((8 * M + CS)),$((24 * M + CS)),$((96 * M + CS)) hosts:130
$QDT clusters img.qcow2 >tab2.list
if sort -n tab1.list tab2.list | uniq -d | grep -q .; then
	fail "(a): the new table uses clusters of the stale one"
fi
$QDT leaks img.qcow2 tab1.list tab2.list || fail "(a): the leaked clusters are not the old table's and the new table's"
info_is img.qcow2 state=consistent autoclear_bit=True entries=130
check_is img.qcow2 state=consistent wrong_entries=0 unallocated_entries=0 corruptions=0 check_errors=0 \
	leaked_table_clusters="$(wc -l <tab2.list)" leaked_other_clusters="$(wc -l <tab1.list)"
log "(a): the stale table's $(wc -l <tab1.list) clusters stay leaked next to the new table's $(wc -l <tab2.list), as documented"

# ---- (b) qemu-img check -r leaks between activations ----
log "(b) qemu-img check -r leaks frees the table's clusters"
qemu-img check -q -r leaks imgb.qcow2 >/dev/null 2>&1 || true
qemu-img check imgb.qcow2 >imgb.check 2>&1 || { cat imgb.check; fail "(b): qemu-img check after -r leaks"; }
grep -qi leak imgb.check && { cat imgb.check; fail "(b): leaks after qemu-img check -r leaks"; }
info_is imgb.qcow2 state=stale autoclear_bit=False
qemu-img compare -q -f raw -F qcow2 exp1.raw imgb.qcow2 || fail "(b): content changed by the repair"
cat >act3.sh <<EOF
. ./common.sh
activate
dmsetup message t 0 stats >act3-start.stats
wait_rebuild 1
dmsetup message t 0 stats >act3-rebuilt.stats
put a4.bin /dev/mapper/t 64
save t act3
whole expb.raw
dmsetup remove t || bad remove
echo act3-done
exit \$rc
EOF
log "(b) act 3: rebuild after the repair"
run_inner act3 -d imgb.qcow2
want_stat act3-start.stats table_loaded -eq 0
for kv in rebuild_runs:1 rebuild_hashed:128 rebuild_indexed:128 index_entries:128; do
	want_stat act3-rebuilt.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat act3.stats dedup_hits -eq 64
want_stat act3.stats clusters_allocated -eq 0
want_stat act3.stats index_entries -eq 128
agree act3
$QDT clusters imgb.qcow2 >tab3.list
$QDT leaks imgb.qcow2 tab3.list || fail "(b): the leaked clusters are not the new table's"
qcheck imgb.qcow2
info_is imgb.qcow2 state=consistent autoclear_bit=True entries=128
qemu-img compare -q -f raw -F qcow2 expb.raw imgb.qcow2 || fail "(b): content differs"
mapq imgb.qcow2 $CS same:$((4 * M)):0,$((64 * M)) same:$((4 * M)):$((8 * M)),$((24 * M)) hosts:128

# ---- (c) stale without a write; an activation that only reads ----
log "(c) QEMU opens the image read-write and only reads"
qemu-io -c 'read 0 64k' imgc.qcow2 >/dev/null || fail "qemu-io read"
info_is imgc.qcow2 state=stale autoclear_bit=False entries=128
sha256sum <imgc.qcow2 >imgc.sum
cat >act4.sh <<EOF
. ./common.sh
activate
wait_rebuild 1
dmsetup message t 0 stats >act4.stats
whole exp1.raw
dmsetup remove t || bad remove
echo act4-done
exit \$rc
EOF
run_inner act4 -d imgc.qcow2
for kv in rebuild_runs:1 rebuild_indexed:128 index_entries:128 table_entries:0 table_loaded:0; do
	want_stat act4.stats "${kv%:*}" -eq "${kv#*:}"
done
sha256sum <imgc.qcow2 | cmp -s - imgc.sum || fail "(c): an activation that only read changed the image"
info_is imgc.qcow2 state=stale autoclear_bit=False
sed -e 's/^dmsetup remove t/dmsetup message t 0 flush || bad "flush message"\ndmsetup message t 0 stats >act5.stats\n&/' \
	-e 's/act4/act5/g' act4.sh >act5.sh
run_inner act5 -d imgc.qcow2
want_stat act5.stats table_entries -eq 128
want_stat act5.stats table_state = clean
$QDT clusters imgc.qcow2 >tab5.list
$QDT leaks imgc.qcow2 tab1.list tab5.list || fail "(c): the leaked clusters are not the old table's and the new table's"
info_is imgc.qcow2 state=consistent autoclear_bit=True entries=128
check_is imgc.qcow2 state=consistent wrong_entries=0 unallocated_entries=0 corruptions=0 check_errors=0 \
	leaked_table_clusters="$(wc -l <tab5.list)" leaked_other_clusters="$(wc -l <tab1.list)"
qemu-img compare -q -f raw -F qcow2 exp1.raw imgc.qcow2 || fail "(c): content differs"
# (d) A rebuild cut short: an image of 96 MiB of random data in 4 KiB
# clusters, written by qemu-img (no table).  act 6 writes one block at once
# (the table is opened while the rebuild of 24576 clusters runs) and is
# removed before the rebuild ends: the table on disk must say INCOMPLETE.
# act 7 loads it and rebuilds the rest: every data cluster ends up indexed.
log "(d) an interrupted rebuild"
head -c $((96 << 20)) /dev/urandom >r96.raw
qemu-img convert -f raw -O qcow2 -o cluster_size=4k r96.raw imgd.qcow2
qemu-img resize -q imgd.qcow2 128M
truncate -s 256M imgd.qcow2
cat >act6.sh <<EOF
. ./common.sh
activate
dd if=/dev/urandom of=/dev/mapper/t bs=4k seek=30000 count=1 oflag=direct status=none || bad write
dmsetup message t 0 stats >act6.stats
dmsetup remove t || bad remove
echo act6-done
exit \$rc
EOF
run_inner act6 -d imgd.qcow2
want_stat act6.stats table_state = rebuilding
"$TOOL" info --json imgd.qcow2 | python3 -c '
import json, sys
t = json.load(sys.stdin)["dedup_table"]
print("# after the interrupted rebuild: %s" % t)
sys.exit(0 if t["state"] == "consistent" and t["flags"] & 4 else 1)' ||
	fail "(d): the table written during a rebuild is not marked INCOMPLETE"
cat >act7.sh <<EOF
. ./common.sh
activate
wait_rebuild 1
dmsetup message t 0 stats >act7.stats
dmsetup message t 0 flush || bad flush
dmsetup remove t || bad remove
echo act7-done
exit \$rc
EOF
run_inner act7 -d imgd.qcow2
want_stat act7.stats rebuild_runs -eq 1
want_stat act7.stats index_entries -eq 24577
"$TOOL" info --json imgd.qcow2 | python3 -c '
import json, sys
t = json.load(sys.stdin)["dedup_table"]
print("# after the second rebuild: %s" % t)
sys.exit(0 if t["state"] == "consistent" and not t["flags"] & 4 and t["entries"] == 24577 else 1)' ||
	fail "(d): the table after the completed rebuild is not complete"
qcheck imgd.qcow2

log "a stale dedup table is never used; the rebuilt index and table are right"
