#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 66-rmw-async: a partial write into a cluster that must be copied (shared
# by dedup or with a snapshot) reads the old contents without stopping the
# worker (issue 11): the reads of one burst are in flight together, and the
# data, the copies and the image are exactly those of a synchronous read;
# a read error fails only that write and leaks nothing.
#
# 64 MiB images, 64 KiB clusters, on dm-delay (reads 100 ms late, writes on
# time), so that one old-contents read is still out when the worker reaches
# the next write.  32 writes of 4 KiB, each into another cluster, are sent
# at once (32 processes, O_DIRECT).
#   Part 1, dedup (sha256): D = 2 MiB random at 0, 8M and 16M (64 hits);
#   the 32 writes go into the 32 clusters of the copy at 8M: rmw_reads 32,
#   rmw_inflight_max > 1 (a worker waiting for each read would show 1), 32
#   new clusters.  Then dm-flakey with error_reads below: one 4 KiB write
#   into the copy at 16M fails with EIO, the mode stays "write"; the same
#   write after the delay device is back succeeds.
#   Part 2, nodedup: E = 4 MiB random written by qemu-img, snapshot s1; the
#   32 writes go into E's first 32 clusters (each a copy-on-write of a
#   cluster the snapshot holds): rmw_reads 32, cow_copies 32,
#   rmw_inflight_max > 1; then the same read-error step for cluster 40.
# Every range reads back inside UML; after removal qcheck (no leak beyond
# the dedup table's), qemu-img compare with the expected image, and the
# snapshot still holds E.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20))
K64=65536
python3 - <<'PY'
import random
r = random.Random(66)
M, C, K = 1 << 20, 65536, 4096
d = r.randbytes(2 * M)
e = r.randbytes(4 * M)
pat = r.randbytes(33 * K)
open("d.bin", "wb").write(d)
open("pat.bin", "wb").write(pat)
def patch(buf, base, c, k, p):
    o = base + c * C + k * K
    buf[o:o + K] = pat[p * K:(p + 1) * K]
# Part 1: D at 0, 8M, 16M; patch c at 8M + c*64K + (c%16)*4K; patch 32 at
# 16M + 5*64K + 4K.
one = bytearray(64 * M)
for base in (0, 8 * M, 16 * M):
    one[base:base + len(d)] = d
for c in range(32):
    patch(one, 8 * M, c, c % 16, c)
patch(one, 16 * M, 5, 1, 32)
open("exp1.raw", "wb").write(one)
open("exp1-8.bin", "wb").write(one[8 * M:10 * M])
open("exp1-16.bin", "wb").write(one[16 * M:18 * M])
# Part 2: E at 0 (the snapshot); patch c at c*64K + (c%16)*4K; patch 32
# at 40*64K + 2*4K.
base = bytearray(64 * M)
base[0:len(e)] = e
open("base2.raw", "wb").write(base)
two = bytearray(base)
for c in range(32):
    patch(two, 0, c, c % 16, c)
patch(two, 0, 40, 2, 32)
open("exp2.raw", "wb").write(two)
open("exp2-0.bin", "wb").write(two[0:4 * M])
PY

qemu-img create -q -f qcow2 -o cluster_size=$K64 one.qcow2 64M
truncate -s 128M one.qcow2
qemu-img convert -q -f raw -O qcow2 -o cluster_size=$K64 base2.raw two.qcow2
qemu-img snapshot -c s1 two.qcow2
truncate -s 128M two.qcow2
LEN=$(((64 * M) / 512))
DEVS=$(((128 * M) / 512))

inner_prelude >common.sh
cat >>common.sh <<EOF
# The device below the target swapped under it, as 37-ioerror does.
lower() {
	dmsetup load slow --table "0 $DEVS \$*" && dmsetup resume slow || bad "reload below the target: \$*"
}
delayed() { lower delay /dev/ubda 0 100 /dev/ubda 0 0; }
# burst BASE_4K: patch c of pat.bin at BASE_4K + c*16 + c%16 (4 KiB units),
# the 32 at once.
burst() {
	local c pids=()
	for c in \$(seq 0 31); do
		dd if=pat.bin of=/dev/mapper/t bs=4k count=1 skip=\$c seek=\$((\$1 + c * 16 + c % 16)) \\
			oflag=direct conv=notrunc status=none &
		pids+=(\$!)
	done
	for c in "\${pids[@]}"; do wait "\$c" || bad "a patch write failed"; done
}
# erroring SEEK_4K: with read errors below, patch 32 at SEEK_4K fails
# with EIO in mode "write"; with the delay device back it succeeds.  That
# it changed nothing and leaked nothing, qcheck and compare tell.
erroring() {
	lower flakey /dev/ubda 0 0 3600 1 error_reads
	if dd if=pat.bin of=/dev/mapper/t bs=4k count=1 skip=32 seek=\$1 oflag=direct conv=notrunc \\
		status=none 2>err.txt; then
		bad "a write whose old contents cannot be read succeeded"
	fi
	grep -q "Input/output error" err.txt || bad "the failed write: \$(cat err.txt), not EIO"
	[ "\$(dmsetup status t | cut -d' ' -f4)" = write ] || bad "mode after a data read error: \$(dmsetup status t)"
	delayed
	dd if=pat.bin of=/dev/mapper/t bs=4k count=1 skip=32 seek=\$1 oflag=direct conv=notrunc \\
		status=none || bad "the write after the errors failed"
}
EOF

log "part 1: dedup, partial writes into shared clusters"
cat >act1.sh <<EOF
. ./common.sh
dmsetup create slow --table "0 $DEVS delay /dev/ubda 0 100 /dev/ubda 0 0" || { echo "FAIL: dm-delay"; exit 1; }
dmsetup create t --table "0 $LEN qcow2dedup /dev/mapper/slow" || { echo "FAIL: create"; exit 1; }
put d.bin /dev/mapper/t 0; put d.bin /dev/mapper/t 8; put d.bin /dev/mapper/t 16
save t copies
burst $(((8 * M) / 4096))
save t burst
erroring $(((16 * M + 5 * K64 + 4096) / 4096))
save t act
same d.bin /dev/mapper/t 0; same exp1-8.bin /dev/mapper/t 8; same exp1-16.bin /dev/mapper/t 16
dmsetup remove t || bad remove
dmsetup remove slow || bad "remove slow"
echo act1-done
exit \$rc
EOF
run_inner act1 -d one.qcow2
for kv in clusters_allocated:32 dedup_hits:64 rmw_reads:0; do
	want_stat copies.stats "${kv%:*}" -eq "${kv#*:}"
done
for kv in clusters_allocated:64 dedup_hits:64 rmw_reads:32; do
	want_stat burst.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat burst.stats rmw_inflight_max -gt 1
# The failed write's read counts; the retry reads again.
for kv in clusters_allocated:65 rmw_reads:34; do
	want_stat act.stats "${kv%:*}" -eq "${kv#*:}"
done
agree act
log "part 1: $(awk '$1 ~ /^rmw_/ { printf "%s %s ", $1, $2 }' act.stats)"
qcheck one.qcow2
qemu-img compare -q -f raw -F qcow2 exp1.raw one.qcow2 || fail "part 1: content differs"

log "part 2: nodedup, copy-on-write of clusters a snapshot holds"
cat >act2.sh <<EOF
. ./common.sh
dmsetup create slow --table "0 $DEVS delay /dev/ubda 0 100 /dev/ubda 0 0" || { echo "FAIL: dm-delay"; exit 1; }
dmsetup create t --table "0 $LEN qcow2dedup /dev/mapper/slow 1 nodedup" || { echo "FAIL: create"; exit 1; }
burst 0
save t burst2
erroring $(((40 * K64 + 2 * 4096) / 4096))
save t act2
same exp2-0.bin /dev/mapper/t 0
dmsetup remove t || bad remove
dmsetup remove slow || bad "remove slow"
echo act2-done
exit \$rc
EOF
run_inner act2 -d two.qcow2
for kv in clusters_allocated:32 cow_copies:32 rmw_reads:32; do
	want_stat burst2.stats "${kv%:*}" -eq "${kv#*:}"
done
want_stat burst2.stats rmw_inflight_max -gt 1
# nodedup allocates before it reads: the failed write's cluster counts
# (and went back: qcheck finds no leak).
for kv in clusters_allocated:34 cow_copies:34 rmw_reads:34; do
	want_stat act2.stats "${kv%:*}" -eq "${kv#*:}"
done
log "part 2: $(awk '$1 ~ /^rmw_/ { printf "%s %s ", $1, $2 }' act2.stats)"
qcheck two.qcow2
qemu-img compare -q -f raw -F qcow2 exp2.raw two.qcow2 || fail "part 2: content differs"
qemu-img convert -q -l s1 -O raw two.qcow2 s1.raw
cmp -s s1.raw base2.raw || fail "part 2: snapshot s1 changed"
