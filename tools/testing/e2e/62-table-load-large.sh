#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 62-table-load-large: a rebuild and a table load big enough for the fast
# paths (issue 11): the rebuild's batches in flight together, the load's
# leaves read in runs, and the entries keyed at once (sorted by key and
# appended to the tree: more than the 4096 below which sort() alone does).
# A crafted table with one key in two slots must not steer a write onto
# the wrong cluster.
#
# 64 MiB image, 4 KiB clusters.  D = 40 MiB random (10240 clusters) written
# by qemu-img convert (no table), U = 8 MiB random.
# act 1: the rebuild hashes and indexes all 10240 of D (40 batches of 256);
#   U at 40M (2048 new entries); removal writes the table.  Host: qcheck
#   (the leaks are the table's), content exact.
# act 2: the table loads: table_loaded 12288, nothing dropped, no rebuild;
#   the first 12 MiB of D at 48M: 3072 hits, nothing allocated; the first
#   4 MiB of U at 60M: 1024 more.  Everything reads back; qcheck, content.
# act 3, on act 1's image with the slot of D's second cluster copied over
#   the slot of its first (qdt.py, written from the format, not with the
#   project's tools): one of the two is refused at the load (table_dropped
#   1, table_loaded 12287).  The first 12 MiB of D at 48M: the kept entry
#   of the doubled key is a hint verified before it is shared, so at most
#   one of the two clusters is shared, each write lands on a cluster with
#   its own bytes (3070 or 3071 hits, the rest allocated), and everything
#   reads back; qcheck, content exact.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
QDT="python3 $E2E_DIR/qdt.py"

M=$((1 << 20))
python3 - <<'PY'
import random
r = random.Random(62)
d, u = r.randbytes(40 << 20), r.randbytes(8 << 20)
open("d40.bin", "wb").write(d); open("u8.bin", "wb").write(u)
open("d12.bin", "wb").write(d[:12 << 20]); open("u4.bin", "wb").write(u[:4 << 20])
M = 1 << 20
def disk(name, parts):
    with open(name, "wb") as f:
        f.truncate(64 * M)
        for off, x in parts:
            f.seek(off * M); f.write(x)
disk("d.raw", [(0, d)])
disk("exp1.raw", [(0, d), (40, u)])
disk("exp2.raw", [(0, d), (40, u), (48, d[:12 << 20]), (60, u[:4 << 20])])
disk("exp3.raw", [(0, d), (40, u), (48, d[:12 << 20])])
PY
qemu-img convert -f raw -O qcow2 -o cluster_size=4096 d.raw img.qcow2
# Room for U, the copies, and the table (32 bytes a cluster).
truncate -s 128M img.qcow2
LEN=$(( (64 * M) / 512 ))

inner_prelude >common.sh
cat >>common.sh <<'EOF'
st() { dmsetup message t 0 stats | awk -v k="$1" '$1 == k { print $2 }'; }
EOF

cat >act1.sh <<EOF
. ./common.sh
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
wait_rebuild 1
save t act1r
put u8.bin /dev/mapper/t 40
save t act1
same d40.bin /dev/mapper/t 0; same u8.bin /dev/mapper/t 40
dmsetup remove t || bad remove
echo act1-done
exit \$rc
EOF
log "act 1: rebuild of 10240 clusters, then 2048 new ones"
run_inner act1 -d img.qcow2
for kv in rebuild_runs:1 rebuild_hashed:10240 rebuild_indexed:10240 index_entries:10240; do
	want_stat act1r.stats "${kv%:*}" -eq "${kv#*:}"
done
for kv in index_entries:12288 clusters_allocated:2048 dedup_hits:0; do
	want_stat act1.stats "${kv%:*}" -eq "${kv#*:}"
done
qcheck img.qcow2
qemu-img compare -q -f raw -F qcow2 exp1.raw img.qcow2 || fail "act 1: content differs"
cp img.qcow2 act1.qcow2

cat >act2.sh <<EOF
. ./common.sh
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
dmsetup message t 0 stats >act2-start.stats
put d12.bin /dev/mapper/t 48
save t act2d
put u4.bin /dev/mapper/t 60
save t act2
same d40.bin /dev/mapper/t 0; same u8.bin /dev/mapper/t 40
same d12.bin /dev/mapper/t 48; same u4.bin /dev/mapper/t 60
dmesg | grep 'dedup table loaded' || bad "no 'dedup table loaded' line in the kernel log"
dmsetup remove t || bad remove
echo act2-done
exit \$rc
EOF
log "act 2: load 12288 entries, deduplicate against them"
run_inner act2 -d img.qcow2
for kv in table_loaded:12288 table_dropped:0 index_entries:12288 rebuild_runs:0; do
	want_stat act2-start.stats "${kv%:*}" -eq "${kv#*:}"
done
for kv in dedup_hits:3072 clusters_allocated:0 verify_mismatches:0; do
	want_stat act2d.stats "${kv%:*}" -eq "${kv#*:}"
done
for kv in dedup_hits:4096 clusters_allocated:0 index_entries:12288; do
	want_stat act2.stats "${kv%:*}" -eq "${kv#*:}"
done
agree act2
qcheck img.qcow2
qemu-img compare -q -f raw -F qcow2 exp2.raw img.qcow2 || fail "act 2: content differs"

log "act 3: a crafted table, one key in two slots"
cp act1.qcow2 img.qcow2
# The host clusters of guest clusters 0 and 1 (qemu-img's own map).
read -r h0 h1 < <(qemu-img map --output=json img.qcow2 | python3 -c '
import json, sys
ext = json.load(sys.stdin)
def host(g):
    for e in ext:
        if e["data"] and e["start"] <= g < e["start"] + e["length"]:
            return (e["offset"] + g - e["start"]) >> 12
    sys.exit("guest %d is not mapped" % g)
print(host(0), host(4096))')
log "D's first two clusters are host clusters $h0 and $h1"
$QDT copy-slot img.qcow2 "$h1" "$h0" || fail "act 3: cannot craft the table"
cat >act3.sh <<EOF
. ./common.sh
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
dmsetup message t 0 stats >act3-start.stats
put d12.bin /dev/mapper/t 48
save t act3
same d40.bin /dev/mapper/t 0; same u8.bin /dev/mapper/t 40; same d12.bin /dev/mapper/t 48
dmsetup remove t || bad remove
echo act3-done
exit \$rc
EOF
run_inner act3 -d img.qcow2
for kv in table_loaded:12287 table_dropped:1 rebuild_runs:0; do
	want_stat act3-start.stats "${kv%:*}" -eq "${kv#*:}"
done
hits=$(awk '$1 == "dedup_hits" { print $2 }' act3.stats)
alloc=$(awk '$1 == "clusters_allocated" { print $2 }' act3.stats)
[ "$hits" -ge 3070 ] && [ "$hits" -le 3071 ] ||
	fail "act 3: $hits hits for D's first 3072 clusters, want 3070 or 3071"
[ $((hits + alloc)) -eq 3072 ] || fail "act 3: $hits hits + $alloc allocated is not 3072"
agree act3
qcheck img.qcow2
qemu-img compare -q -f raw -F qcow2 exp3.raw img.qcow2 || fail "act 3: content differs"
