#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 55-modes: read-only and fail mode each on their own, and leaving them by
# a table reload (admin guide, "Errors and modes").  Each image sits on a
# dm device ("lower", dm-linear over the disk) whose table is swapped for
# dm-flakey to make the device fail.
#
# A: 4 KiB clusters, dedup, flush_interval 100 (the table is written back
#    all the time while the device is writable).
#   1. 2 MiB written (the second MiB a copy of the first: shared), fsync.
#   2. error_writes below; a write and an fsync fail: mode read-only, one
#      "switching to read-only mode" line.
#   3. The cause goes (dm-linear again).  With writes possible below, the
#      target must write nothing: writes (allocating, in place, of shared
#      data), discards, write-zeroes, fsync and the flush message all fail;
#      the dedup table's timer, a suspend/resume with the same table and
#      reads pass; the disk is byte for byte what it was when the cause
#      went.  The mode is still read-only after the suspend/resume.
#   4. A reload of the table leaves the mode ("leaving the error mode"):
#      mode write, a write and an fsync succeed, the data reads back.
# B: 4 KiB clusters, nodedup (no L2 table is read before the guest needs
#    it), 1 MiB of 0x33 at 16 MiB written by qemu-io on the host.
#   1. error_writes below, a write fails: read-only.
#   2. Every I/O fails below (flakey with no feature), a read of 16 MiB
#      needs its L2 table: the second metadata error, mode fail, "switching
#      to fail mode".
#   3. The cause goes: in fail mode reads of data read before fail too; a
#      suspend/resume keeps the mode.
#   4. A reload leaves it: mode write, 16 MiB reads 0x33, a write succeeds.
# On the host: qemu-img check finds no corruption in either image (leaks of
# the lost commits are allowed); qemu-io reads what each step says.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20))
qemu-img create -q -f qcow2 -o cluster_size=4k A.qcow2 64M
qemu-img create -q -f qcow2 -o cluster_size=4k B.qcow2 64M
qemu-io -c "write -P 0x33 16M 1M" B.qcow2 >/dev/null
truncate -s 128M A.qcow2 B.qcow2
for p in 11 22 33 44 55; do head -c $M /dev/zero | tr '\0' "\\$(printf %o 0x$p)" >p$p.bin; done

inner_prelude >common.sh
cat >modes.sh <<EOF
. ./common.sh
# on DISK NAME OPTS...: dm-linear "lower\$NAME" over DISK, target NAME on it.
on() {
	local n; n=\$(blockdev --getsz \$1)
	dmsetup create lower\$2 --table "0 \$n linear \$1 0" || { echo "FAIL: lower\$2"; exit 1; }
	dmsetup create \$2 --table "0 $((64 * M / 512)) qcow2dedup /dev/mapper/lower\$2 \${*:3}" ||
		{ echo "FAIL: create \$2"; exit 1; }
}
# below NAME DISK TABLE...: swap lower\$NAME's table.
below() {
	local n; n=\$(blockdev --getsz \$2)
	dmsetup load lower\$1 --table "0 \$n \${*:3}" && dmsetup resume lower\$1 || bad "lower\$1: \${*:3}"
}
mode() { dmsetup status \$1 | cut -d' ' -f4; }
want_mode() { [ "\$(mode \$1)" = "\$2" ] || bad "\$1: mode \$(mode \$1), want \$2 (\$3)"; }
w() { dd if=\$2 of=/dev/mapper/\$1 bs=1M seek=\$3 oflag=direct conv=notrunc status=none 2>/dev/null; }
r() { dd if=/dev/mapper/\$1 bs=1M skip=\$3 count=1 iflag=direct status=none 2>/dev/null | cmp -s - \$2; }
refused() { "\$@" 2>/dev/null && bad "succeeded in a failing mode: \$*"; true; }
disk_sum() { dd if=\$1 bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1; }

echo "A: read-only mode"
on /dev/ubda a 2 flush_interval 100
dmsetup table a
w a p11.bin 0 && w a p11.bin 1 && sync /dev/mapper/a || bad "A: writes in write mode"
below a /dev/ubda flakey /dev/ubda 0 0 3600 1 error_writes
refused w a p22.bin 2
refused sync /dev/mapper/a
want_mode a read-only "after a failed commit"
# (Kernel lines name the device by major:minor.)
[ "\$(dmesg | grep -c 'metadata .* switching to read-only mode')" = 1 ] ||
	bad "A: not one 'switching to read-only mode' line"
below a /dev/ubda linear /dev/ubda 0
before=\$(disk_sum /dev/ubda)
refused w a p22.bin 2
refused w a p44.bin 0
refused w a p11.bin 3
refused dd if=p22.bin of=/dev/mapper/a bs=4k count=1 seek=1 oflag=direct conv=notrunc status=none
refused blkdiscard -o 0 -l $M /dev/mapper/a
refused blkdiscard -z -o $M -l $M /dev/mapper/a
refused sync /dev/mapper/a
refused dmsetup message a 0 flush
sleep 0.5	# five table flush intervals
dmsetup suspend a && dmsetup resume a || bad "A: suspend/resume in read-only mode"
want_mode a read-only "after a suspend/resume with the same table"
r a p11.bin 0 && r a p11.bin 1 || bad "A: reads in read-only mode"
refused w a p22.bin 2
[ "\$(disk_sum /dev/ubda)" = "\$before" ] || bad "A: read-only mode wrote to the disk"
echo "A: leaving read-only mode"
dmsetup reload a --table "\$(dmsetup table a)" && dmsetup suspend a && dmsetup resume a ||
	bad "A: reload"
want_mode a write "after a reload"
[ "\$(dmesg | grep -c 'leaving the error mode')" = 1 ] || bad "A: no 'leaving the error mode' line"
w a p22.bin 2 && sync /dev/mapper/a || bad "A: a write after leaving read-only mode"
r a p11.bin 0 && r a p11.bin 1 && r a p22.bin 2 || bad "A: reads after leaving read-only mode"
dmsetup remove a && dmsetup remove lowera || bad "A: remove"

echo "B: fail mode"
on /dev/ubdb b 1 nodedup
w b p44.bin 0 && sync /dev/mapper/b && r b p44.bin 0 || bad "B: write mode"
below b /dev/ubdb flakey /dev/ubdb 0 0 3600 1 error_writes
refused w b p55.bin 1
refused sync /dev/mapper/b
want_mode b read-only "after a failed commit"
below b /dev/ubdb flakey /dev/ubdb 0 0 3600
dd if=/dev/mapper/b bs=1M skip=16 count=1 iflag=direct status=none >/dev/null 2>&1 &&
	bad "B: a read of an uncached L2 table's range succeeded with every I/O failing"
want_mode b fail "after a metadata read error in read-only mode"
[ "\$(dmesg | grep -c 'metadata .* switching to fail mode')" = 1 ] ||
	bad "B: not one 'switching to fail mode' line"
below b /dev/ubdb linear /dev/ubdb 0
refused r b p44.bin 0
refused w b p55.bin 1
dmsetup suspend b && dmsetup resume b || bad "B: suspend/resume in fail mode"
want_mode b fail "after a suspend/resume with the same table"
refused r b p44.bin 0
echo "B: leaving fail mode"
dmsetup reload b --table "\$(dmsetup table b)" && dmsetup suspend b && dmsetup resume b ||
	bad "B: reload"
want_mode b write "after a reload"
r b p33.bin 16 || bad "B: 16M does not read 0x33 after leaving fail mode"
r b p44.bin 0 || bad "B: 0 does not read what was written before"
w b p55.bin 1 && sync /dev/mapper/b && r b p55.bin 1 || bad "B: a write after leaving fail mode"
dmsetup remove b && dmsetup remove lowerb || bad "B: remove"
dmesg | grep -E 'qcow2dedup' | tail -n 20
echo modes-done
exit \$rc
EOF
log "read-only and fail mode, and leaving them by a reload"
run_inner modes -d A.qcow2 -d B.qcow2

no_corruption A.qcow2
no_corruption B.qcow2
qemu-io -f qcow2 -r -c "read -P 0x11 0 2M" -c "read -P 0x22 2M 1M" -c "read -P 0 3M 61M" A.qcow2 >A.qio ||
	fail "A: qemu-io"
qemu-io -f qcow2 -r -c "read -P 0x44 0 1M" -c "read -P 0x55 1M 1M" -c "read -P 0x33 16M 1M" \
	-c "read -P 0 2M 14M" B.qcow2 >B.qio || fail "B: qemu-io"
if grep -q "Pattern verification failed" A.qio B.qio; then
	cat A.qio B.qio
	fail "the images do not hold what the steps wrote"
fi
log "read-only mode wrote nothing, fail mode failed every I/O, a reload left both; images consistent"
