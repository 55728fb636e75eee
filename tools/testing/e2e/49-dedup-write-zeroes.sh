#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 49-dedup-write-zeroes: write-zeroes and discards over deduplicated data,
# and long ones.
#
# a. 256 MiB disk, 64 KiB clusters: the same 64 MiB of random data at 0, 64M
#    and 128M (all shared).  The device advertises write-zeroes in whole
#    clusters (write_zeroes_max_bytes a multiple of 64 KiB); `blkdiscard -z`
#    of 32 MiB inside the third copy succeeds (it failed with EIO once: a
#    throttled piece was taken for an error) and reads back as zeros, the
#    other copies unchanged; an unaligned write-zeroes inside the second copy
#    too.  Then 200 small unaligned write-zeroes (partial clusters: a copy
#    each) on the first copy while fio writes 4 KiB blocks at iodepth 256 in
#    [192M, 256M), filling the target's buffered writes: every one succeeds
#    and fio verifies its data.
# b. 1 GiB disk, 512-byte clusters (2 Mi clusters), 8 MiB written: a discard
#    of the whole disk, done a slice at a time, succeeds; the disk reads as
#    zeros.
# Host: qcheck, contents as expected (fio's range checked by fio).
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
M=$((1 << 20))

python3 -c 'import random; open("r.bin","wb").write(random.Random(49).randbytes(64 << 20))'
qemu-img create -q -f qcow2 -o cluster_size=65536 a.qcow2 256M
truncate -s 512M a.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 b.qcow2 1G
qemu-io -c "write -P 0x49 0 8M" b.qcow2 >/dev/null
truncate -s 64M b.qcow2
LA=$(sectors a.qcow2) LB=$(sectors b.qcow2)

{
	inner_prelude
	cat <<EOF
d=/dev/mapper/a
dmsetup create a --table "0 $LA qcow2dedup /dev/ubda" || { echo "FAIL: create a"; exit 1; }
for o in 0 64 128; do put r.bin \$d \$o; done
sync \$d
q=/sys/block/\$(dmsetup info -c --noheadings -o blkdevname a)/queue
wz=\$(cat \$q/write_zeroes_max_bytes)
echo "write_zeroes_max_bytes \$wz"
[ "\$wz" -ge 65536 ] && [ \$((wz % 65536)) = 0 ] || bad "write_zeroes_max_bytes \$wz is not whole clusters"
blkdiscard -z -o $((144 * M)) -l $((32 * M)) \$d || bad "write-zeroes of 32 MiB in the third copy"
blkdiscard -z -o $((72 * M + 4096)) -l $((M + 512)) \$d || bad "unaligned write-zeroes in the second copy"
fio --name=f --filename=\$d --rw=randwrite --bs=4k --offset=192M --size=16M \\
	--direct=1 --ioengine=libaio --iodepth=64 --numjobs=4 --offset_increment=16M \\
	--verify=crc32c --verify_fatal=1 --group_reporting --output=fio.out &
fio=\$!
n=0
for i in \$(seq 200); do
	blkdiscard -z -o \$(( (i * 263 % 1000) * 65536 + 512 )) -l 1024 \$d || n=\$((n + 1))
done
wait \$fio || { cat fio.out; bad "fio"; }
[ \$n = 0 ] || bad "\$n small write-zeroes failed"
sync \$d
save a a
dmsetup remove a || bad "remove a"

dmsetup create b --table "0 $LB qcow2dedup /dev/ubdb" || { echo "FAIL: create b"; exit 1; }
t0=\$(date +%s)
blkdiscard /dev/mapper/b || bad "discard of the whole 512-byte-cluster disk"
echo "discard of 2 Mi clusters: \$((\$(date +%s) - t0)) s"
sync /dev/mapper/b
cmp -n $((16 * M)) /dev/mapper/b /dev/zero || bad "b: not zeros after the discard"
dmsetup remove b || bad "remove b"
echo inner-done
exit \$rc
EOF
} >inner.sh
run_inner inner -m 768M -d a.qcow2 -d b.qcow2

log "host checks"
want_stat a.stats mode = write
qcheck a.qcow2
qcheck b.qcow2
qemu-img convert -q -f qcow2 -O raw a.qcow2 a.raw
python3 - <<'PY' || fail "a: contents"
import sys
M = 1 << 20
r, a = open("r.bin", "rb").read(), open("a.raw", "rb").read()
w = bytearray(192 * M)
for o in (0, 64, 128):
    w[o * M:o * M + len(r)] = r
w[144 * M:176 * M] = bytes(32 * M)
z = 72 * M + 4096
w[z:z + M + 512] = bytes(M + 512)
for i in range(1, 201):
    z = (i * 263 % 1000) * 65536 + 512
    w[z:z + 1024] = bytes(1024)
if a[:192 * M] != bytes(w):
    i = next(i for i in range(192 * M) if a[i] != w[i])
    sys.exit("first difference at %d" % i)
PY
qemu-io -r -c "read -P 0 0 1G" b.qcow2 >/dev/null || fail "b: not zeros"
log "write-zeroes over shared data, long discards: done, data exact"
