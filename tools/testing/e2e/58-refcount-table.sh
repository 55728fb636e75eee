#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 58-refcount-table: growing the refcount table, and the documented case
# where it cannot grow (admin guide, "Limits").  512-byte clusters with
# 64-bit refcounts: one refcount block covers 64 clusters (32 KiB), the
# initial one-cluster table 2 MiB of the device.
#   grow   the image on a 24 MiB device; 16 MiB of random data: the table
#          grows (refcount_table_clusters > 1), every write succeeds, the
#          image checks clean and holds the data.
#   nogrow the image on a 256 MiB device: the new table and its refcount
#          block do not fit in the 64 clusters one refcount block covers,
#          so the write that needs a refcount block past the old table's
#          reach fails with ENOSPC ("No space left on device"), the kernel
#          says "cannot grow the refcount table", the mode stays write, and
#          the image checks clean with what was written before.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20))
for n in grow nogrow; do
	qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 $n.qcow2 64M
done
truncate -s 24M grow.qcow2
truncate -s 256M nogrow.qcow2
head -c $((16 * M)) /dev/urandom >data.bin
S=$(sectors grow.qcow2)

inner_prelude >common.sh
cat >rt.sh <<EOF
. ./common.sh
mode() { dmsetup status \$1 | cut -d' ' -f4; }
dmsetup create grow --table "0 $S qcow2dedup /dev/ubda" || { echo "FAIL: create grow"; exit 1; }
dd if=data.bin of=/dev/mapper/grow bs=1M oflag=direct status=none || bad "grow: a write failed"
sync /dev/mapper/grow || bad "grow: flush"
dmsetup status grow
dmsetup remove grow || bad "grow: remove"
dmsetup create nogrow --table "0 $S qcow2dedup /dev/ubdb" || { echo "FAIL: create nogrow"; exit 1; }
dd if=data.bin of=/dev/mapper/nogrow bs=1M oflag=direct status=none 2>dd.err && bad "nogrow: 16 MiB written"
cat dd.err
grep -q "No space left on device" dd.err || bad "nogrow: the write did not fail with ENOSPC"
dmesg | grep -q 'cannot grow the refcount table' || bad "nogrow: no 'cannot grow the refcount table' line"
sync /dev/mapper/nogrow || bad "nogrow: flush after ENOSPC"
[ "\$(mode nogrow)" = write ] || bad "nogrow: mode \$(mode nogrow) after ENOSPC"
dmsetup status nogrow
dmsetup remove nogrow || bad "nogrow: remove"
echo rt-done
exit \$rc
EOF
log "refcount table growth, and the device where it cannot grow"
run_inner rt -m 512M -d grow.qcow2 -d nogrow.qcow2

rtc() { python3 -c 'import struct, sys; print(struct.unpack(">I", open(sys.argv[1], "rb").read(60)[56:60])[0])' "$1"; }
[ "$(rtc grow.qcow2)" -gt 1 ] || fail "grow: the refcount table did not grow ($(rtc grow.qcow2) cluster)"
qcheck grow.qcow2
qemu-img convert -O raw grow.qcow2 grow.raw
cmp -n $((16 * M)) grow.raw data.bin || fail "grow: the data"
[ "$(rtc nogrow.qcow2)" = 1 ] || fail "nogrow: the refcount table changed"
qemu-img check nogrow.qcow2 >nogrow.chk 2>&1 || { cat nogrow.chk; fail "nogrow: qemu-img check"; }
qemu-img convert -O raw nogrow.qcow2 nogrow.raw
cmp -n $M nogrow.raw data.bin || fail "nogrow: the first MiB written before the ENOSPC"
log "grow: table of $(rtc grow.qcow2) clusters, clean; nogrow: ENOSPC, clean, data before it intact"
