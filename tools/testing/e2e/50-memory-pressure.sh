#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 50-memory-pressure: running out of memory is a reason to wait, never to
# fail a write or to go read-only.  The kernel's fault injection fails a
# share of the allocations the target's workers make (failslab on the
# target's caches and the xarray nodes, fail_page_alloc on allocations of
# order 2 and up: the cluster buffers), only in kworkers (task-filter), while
# a mixed workload runs:
#   - 16 MiB of unique random data at 0 (dd, O_DIRECT, 64 KiB);
#   - the same 4 MiB written by four writers at once at 32, 40, 48, 56 MiB
#     (duplicates: shares, the per-digest lock);
#   - fio random 4 KiB writes over [64M, 80M) with a fixed seed (partial
#     cluster writes: read-modify-write, in place), the host making the same
#     data with the same job;
#   - a discard of [96M, 100M) after writing it, and a write-zeroes of an
#     unaligned range inside the third duplicate copy.
# Then a burst at 50% under fio (64 KiB writes of unique data, 256 in
# flight, verified by fio): the pools' reserves run dry and staging finds
# no memory for its xarray slots, so the target must wait.
# Every write must succeed; the stats must show that the target waited for
# memory (memory_waits > 0: the injection reached the waiting path) and the
# mode stays write; no kernel report (uml-run).  After the injection: every range reads
# back exactly in UML, and on the host qemu-img check and qcow2dedup check
# are clean (qcheck) and the image holds exactly the expected disk.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
M=$((1 << 20))

FIO_R=(--rw=randwrite --bs=4k --size=16M --offset=64M --io_size=8M --ioengine=psync
       --refill_buffers=1 --scramble_buffers=0 --randseed=50 --norandommap=1
       --randrepeat=1)
python3 - <<'PY'
import random
r = random.Random(50)
open("u.bin", "wb").write(r.randbytes(16 << 20))
open("d.bin", "wb").write(r.randbytes(4 << 20))
PY
# The random 4 KiB writes, made on the host into a file of the same size.
truncate -s 256M fio-host.raw
fio --name=r --filename=fio-host.raw "${FIO_R[@]}" --output=fio-host.out ||
	{ cat fio-host.out; fail "fio on the host"; }

qemu-img create -q -f qcow2 -o cluster_size=65536 img.qcow2 256M
truncate -s 512M img.qcow2
LEN=$(sectors img.qcow2)

{
	inner_prelude
	cat <<EOF
d=/dev/mapper/t
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
dd if=d.bin of=\$d bs=64k seek=$((96 * 16)) oflag=direct status=none || bad "pre-write of the discard range"
sync \$d

F=/sys/kernel/debug/failslab P=/sys/kernel/debug/fail_page_alloc
for c in qcow2_op dedup_entry radix_tree_node; do
	echo 1 >/sys/kernel/slab/\$c/failslab || bad "failslab on \$c"
done
# The filters first, the probability last: user space must never be hit.
echo Y >\$F/cache-filter
echo 2 >\$P/min-order
for x in \$F \$P; do
	echo Y >\$x/task-filter; echo N >\$x/ignore-gfp-wait; echo 0 >\$x/verbose
	echo -1 >\$x/times; echo 1 >\$x/interval
done
for x in \$F \$P; do echo 5 >\$x/probability; done
# Every kworker (new ones too) fails allocations; user space does not.
( while [ ! -e stop ]; do
	for p in \$(pgrep kworker); do echo 1 >/proc/\$p/make-it-fail 2>/dev/null; done
	sleep 0.2
  done ) &
marker=\$!
sleep 0.5

pids=()
dd if=u.bin of=\$d bs=64k oflag=direct status=none & pids+=(\$!)
for o in 32 40 48 56; do dd if=d.bin of=\$d bs=64k seek=\$((o * 16)) oflag=direct status=none & pids+=(\$!); done
fio --name=r --filename=\$d --direct=1 ${FIO_R[*]} --output=fio.out & pids+=(\$!)
for p in \${pids[@]}; do wait \$p || bad "a writer failed (pid \$p)"; done
blkdiscard -o $((96 * M)) -l $((4 * M)) \$d || bad "discard"
blkdiscard -z -o $((48 * M + 12288)) -l $((M + 4096)) \$d || bad "write-zeroes"
sync \$d || bad "flush"
dmsetup message t 0 stats >load.stats
dmsetup status t >load.status

for x in \$F \$P; do echo 50 >\$x/probability; done
fio --name=v --filename=\$d --rw=write --bs=64k --size=16M --offset=128M --numjobs=4 \
	--offset_increment=16M --direct=1 --ioengine=libaio --iodepth=64 --verify=crc32c \
	--verify_fatal=1 --output=burst.out || { cat burst.out; bad "fio under the 50% burst"; }
sync \$d || bad "flush after the burst"
dmsetup message t 0 stats >burst.stats

touch stop
wait \$marker
for x in \$F \$P; do echo 0 >\$x/probability; done
for p in \$(pgrep kworker); do echo 0 >/proc/\$p/make-it-fail 2>/dev/null; done
dmesg | grep -E "qcow2dedup.*(switching to|failed)" && bad "the target reported an error"
save t end
dmsetup remove t || bad "remove"
echo inner-done
exit \$rc
EOF
} >inner.sh
# slab_nomerge: the target's caches stay their own, for the cache filter.
run_inner inner -m 768M -d img.qcow2 --append slab_nomerge

log "host checks"
want_stat load.stats mode = write
want_stat burst.stats memory_waits -gt 0
want_stat end.stats mode = write
grep -E "memory_waits|dedup_hits|clusters_written|index_entries" load.stats burst.stats
python3 - <<'PY' || fail "expected disk"
M = 1 << 20
u, d = open("u.bin", "rb").read(), open("d.bin", "rb").read()
f = open("fio-host.raw", "rb").read()
x = bytearray(256 * M)
x[0:16 * M] = u
for o in (32, 40, 48, 56):
    x[o * M:o * M + len(d)] = d
x[64 * M:80 * M] = f[64 * M:80 * M]
z0 = 48 * M + 12288
x[z0:z0 + M + 4096] = bytes(M + 4096)
open("want.raw", "wb").write(x)
PY
qcheck img.qcow2
# [128M, 192M) holds fio's data, which fio verified; the rest must be exact.
qemu-img convert -q -f qcow2 -O raw img.qcow2 got.raw
python3 - <<'PY' || fail "contents differ from the expected disk"
import sys
M = 1 << 20
w, g = open("want.raw", "rb").read(), open("got.raw", "rb").read()
for a, b in ((0, 128 * M), (192 * M, 256 * M)):
    if w[a:b] != g[a:b]:
        i = next(i for i in range(a, b) if w[i] != g[i])
        sys.exit("first difference at byte %d" % i)
PY
log "allocation failures made the target wait, never fail or go read-only"
