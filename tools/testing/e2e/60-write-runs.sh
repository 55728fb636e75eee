#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 60-write-runs: under nodedup, a write over several clusters whose data
# lies in a row on the device, each with COPIED set (refcount one), goes
# there in place as one bio (admin guide, "Implementation notes"; stats
# write_runs); a cluster shared with an internal snapshot never does.
#
# 4 KiB clusters.  QEMU writes 16 MiB (A) in one go, takes an internal
# snapshot (every cluster shared, COPIED clear), then writes B over
# [4M, 6M) (copied on write: new clusters in rows, COPIED set).  Through
# the target with nodedup, 1 MiB O_DIRECT writes of C over [0, 16M): the
# two of [4M, 6M) go in place as rows, every other one is copied on write
# cluster by cluster; then D over the same 16 MiB, all COPIED by now, as
# rows wherever the copies landed in a row; then 12 KiB writes at odd
# offsets (E) over the first MiB.  On the host: the snapshot still reads
# A (qemu-img convert -l), the active image reads D and E exactly (qemu-img
# compare), qemu-img check is clean.
#
# Part 2, a row whose second half is shared: with dedup, 2 MiB of unique
# data U at 0 (one row of 512 clusters, COPIED), then U's second MiB again
# at 8M (shared: those 256 clusters lose COPIED).  Under nodedup, 1 MiB of
# new data at 512K, one bio from the COPIED half into the shared one: only
# its first half may go in place; [8M, 9M) must still read U's second MiB.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
need_tool
cd "$WORK"

M=$((1 << 20))
head -c $((16 * M)) /dev/urandom >A.bin
head -c $((2 * M)) /dev/urandom >B.bin
head -c $((16 * M)) /dev/urandom >C.bin
head -c $((16 * M)) /dev/urandom >D.bin
head -c $((12 * 1024 * 20)) /dev/urandom >E.bin
qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 32M
qemu-io -f qcow2 -c "write -s A.bin 0 16M" img.qcow2 >/dev/null || fail "qemu-io A"
qemu-img snapshot -c s img.qcow2
qemu-io -f qcow2 -c "write -s B.bin 4M 2M" img.qcow2 >/dev/null || fail "qemu-io B"
truncate -s 96M img.qcow2
S=$(sectors img.qcow2)

inner_prelude >common.sh
cat >writes.sh <<EOF
. ./common.sh
d=/dev/mapper/t
st() { dmsetup message t 0 stats | awk -v k=\$1 '\$1 == k { print \$2 }'; }
dmsetup create t --table "0 $S qcow2dedup /dev/ubda 1 nodedup" || { echo "FAIL: create"; exit 1; }
# Read first: an L2 table not cached yet sends a write to the worker
# cluster by cluster (map() never waits for metadata).
dd if=\$d of=/dev/null bs=1M count=16 iflag=direct status=none || bad "read"
put C.bin \$d 0
sync \$d
w1=\$(st write_runs)
echo "write_runs after C: \$w1, allocated \$(st clusters_allocated), cow \$(st cow_copies)"
# The two MiB of [4M, 6M) hold rows of COPIED clusters; nothing else does.
[ "\$w1" -ge 2 ] || bad "write_runs \$w1 after writing over 2 MiB of rows"
[ "\$(st clusters_allocated)" -ge $((14 * 256)) ] || bad "only \$(st clusters_allocated) clusters allocated for 14 MiB shared with the snapshot"
put D.bin \$d 0
sync \$d
w2=\$(st write_runs)
echo "write_runs after D: \$w2"
[ "\$w2" -gt "\$w1" ] || bad "no row written in place over the copies"
# 12 KiB writes 2.5 KiB into a cluster, every 48 KiB of the first MiB.
for i in \$(seq 0 19); do
	dd if=E.bin of=\$d bs=12k skip=\$i seek=\$((i * 48 * 1024 + 2560)) count=1 \
		oflag=direct,seek_bytes conv=notrunc status=none || bad "E write \$i"
done
sync \$d
save t final
dmsetup remove t || bad remove
echo writes-done
exit \$rc
EOF
run_inner writes -m 512M -d img.qcow2
want_stat final.stats mode = write
# Expected active contents: D, with E's pieces on top.
python3 - <<'PY'
d = bytearray(open("D.bin", "rb").read())
e = open("E.bin", "rb").read()
for i in range(20):
    off = i * 48 * 1024 + 2560
    d[off:off + 12288] = e[i * 12288:(i + 1) * 12288]
d += bytes(16 << 20)
open("expect.raw", "wb").write(d)
PY
qemu-img compare -f qcow2 -F raw img.qcow2 expect.raw || fail "the active image does not read D and E"
qemu-img convert -O raw -l snapshot.name=s img.qcow2 snap.raw
cmp -n $((16 * M)) snap.raw A.bin || fail "the snapshot no longer reads A: a row was written in place over shared clusters"
cmp -n $((16 * M)) <(tail -c +$((16 * M + 1)) snap.raw) /dev/zero || fail "the snapshot's second half is not zero"
qemu-img check -q img.qcow2 || fail "qemu-img check"
log "writes in place as rows: $(awk '$1 == "write_runs" { print $2 }' final.stats); snapshot intact, active image exact"

# ---- part 2 ----
head -c $((2 * M)) /dev/urandom >U.bin
tail -c $((M)) U.bin >U2.bin
head -c $((M)) /dev/urandom >W.bin
qemu-img create -q -f qcow2 -o cluster_size=4k half.qcow2 32M
truncate -s 96M half.qcow2
cat >half1.sh <<EOF
. ./common.sh
dmsetup create t --table "0 $S qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
put U.bin /dev/mapper/t 0
sync /dev/mapper/t
put U2.bin /dev/mapper/t 8
save t half1
dmsetup remove t || bad remove
echo half1-done
exit \$rc
EOF
run_inner half1 -m 512M -d half.qcow2
want_stat half1.stats dedup_hits -ge 256
qcheck half.qcow2
# The precondition: guest [0, 2M) is one row on the host, [8M, 9M) names
# its second half.
qemu-img map --output=json half.qcow2 >half.map
python3 - half.map <<'PY' || fail "the dedup writes did not leave the layout this part needs"
import json, sys
m = {e["start"]: e for e in json.load(open(sys.argv[1])) if e["data"] and "offset" in e}
a, b = m[0], m[8 << 20]
assert a["length"] >= 2 << 20, a
assert b["length"] >= 1 << 20 and b["offset"] == a["offset"] + (1 << 20), (a, b)
PY
cat >half2.sh <<EOF
. ./common.sh
d=/dev/mapper/t
dmsetup create t --table "0 $S qcow2dedup /dev/ubda 1 nodedup" || { echo "FAIL: create"; exit 1; }
dd if=\$d of=/dev/null bs=1M count=16 iflag=direct status=none || bad "read"
# The first write of an activation goes to the worker (it clears the
# autoclear bits, the dedup table's among them, first): one elsewhere.
dd if=W.bin of=\$d bs=4k count=1 seek=$((20 * 256)) oflag=direct conv=notrunc status=none || bad "first write"
sync \$d
dd if=W.bin of=\$d bs=1M seek=$((512 * 1024)) oflag=direct,seek_bytes conv=notrunc status=none || bad "W"
sync \$d
save t half2
dmsetup remove t || bad remove
echo half2-done
exit \$rc
EOF
run_inner half2 -m 512M -d half.qcow2
want_stat half2.stats write_runs -ge 1
qemu-img convert -O raw half.qcow2 half.raw
# (cmp FILE1 FILE2 SKIP1 SKIP2: no pipe, so no SIGPIPE under pipefail.)
cmp -n $((M)) half.raw U2.bin $((8 * M)) 0 ||
	fail "[8M, 9M) no longer reads U's second MiB: a write in place went into shared clusters"
cmp -n $((M)) half.raw W.bin $((512 * 1024)) 0 || fail "W does not read back"
cmp -n $((512 * 1024)) half.raw U.bin || fail "[0, 512K) changed"
cmp -n $((512 * 1024)) half.raw U.bin $((1536 * 1024)) $((1536 * 1024)) || fail "[1.5M, 2M) changed"
qcheck half.qcow2
log "a row half shared: the write in place stopped where sharing starts"
