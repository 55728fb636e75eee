#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 55-modes: read-only mode on its own, one error as one step, and leaving it by
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
# B: one I/O error must be one step, write -> read-only, wherever it hits
#    (fail mode needs a second error; this path reported one error twice,
#    found by review: the first write opens the dedup table, whose new root
#    needs a cluster; on a full device allocating commits first, the commit
#    fails and switches to read-only, and the table open reported the same
#    error again: fail).  v3 image, 64 KiB clusters, no table, not grown
#    (the device is full), the COPIED flag of its one data cluster cleared
#    so that the rebuild stages metadata (it restores the flag).
#   1. The rebuild at activation stops at an unreadable second L2 block
#      (dm-error under it), restoring nothing.
#   2. With "lower" suspended, a rebuild message starts a pass that blocks;
#      the first write is queued behind it (inflight 1), and the L2 block
#      the commit rewrites becomes dm-error in lower's next table.
#   3. lower resumes: the write fails, mode read-only, one "switching to
#      read-only mode" line, no "switching to fail mode".
#   4. A reload with lower healthy leaves read-only mode; the data reads.
# On the host: qemu-img check finds no corruption in either image (leaks of
# the lost commits are allowed); qemu-io reads what each step says.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20))
qemu-img create -q -f qcow2 -o cluster_size=4k A.qcow2 64M
truncate -s 128M A.qcow2
qemu-img create -q -f qcow2 -o cluster_size=64k,compat=1.1 B.qcow2 64M
qemu-io -c "write -q -P 0xaa 0 64k" B.qcow2
poke=$REPO/tools/testing/qcow2-poke.py
e=$(python3 "$poke" B.qcow2 l2 0)
python3 "$poke" B.qcow2 l2 0 "$(printf 0x%x $((e & ~(1 << 63))))" >/dev/null
L2_OFF=$(($(python3 "$poke" B.qcow2 l2-table 0)))
head -c 65536 /dev/zero | tr '\0' '\252' >paa.bin
for p in 11 22 44; do head -c $M /dev/zero | tr '\0' "\\$(printf %o 0x$p)" >p$p.bin; done

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

echo "B: one error while the first write opens the table"
n=\$(blockdev --getsz /dev/ubdb)
# lower_err SECTOR: dm-linear over ubdb but 4 KiB of dm-error at SECTOR.
lower_err() {
	printf '0 %d linear /dev/ubdb 0\n%d 8 error\n%d %d linear /dev/ubdb %d\n' \
		\$1 \$1 \$((\$1 + 8)) \$((n - \$1 - 8)) \$((\$1 + 8))
}
tstate() { dmsetup status b | awk '{ print \$NF }'; }
ro0=\$(dmesg | grep -c 'switching to read-only mode')
lower_err $(((L2_OFF + 4096) / 512)) | dmsetup create lowerb || bad "B: lowerb"
dmsetup create b --table "0 $((64 * M / 512)) qcow2dedup /dev/mapper/lowerb" || { echo "FAIL: create b"; exit 1; }
for i in \$(seq 100); do [ "\$(tstate)" != rebuilding ] && break; sleep 0.1; done
want_mode b write "after the first rebuild stopped"
dmsetup suspend lowerb || bad "B: suspend lowerb"
lower_err $((L2_OFF / 512)) | dmsetup load lowerb || bad "B: load lowerb"
dmsetup message b 0 rebuild || bad "B: rebuild message"
for i in \$(seq 100); do [ "\$(tstate)" = rebuilding ] && break; sleep 0.1; done
[ "\$(tstate)" = rebuilding ] || bad "B: the second rebuild did not start"
dd if=/dev/urandom of=/dev/mapper/b bs=64k count=1 seek=100 oflag=direct status=none 2>/dev/null &
wpid=\$!
inf=/sys/dev/block/\$(dmsetup info -c --noheadings -o major,minor --separator : b)/inflight
for i in \$(seq 100); do [ "\$(awk '{ print \$2 }' \$inf)" -ge 1 ] && break; sleep 0.1; done
[ "\$(awk '{ print \$2 }' \$inf)" -ge 1 ] || bad "B: the first write was not queued"
dmsetup resume lowerb || bad "B: resume lowerb"
wait \$wpid && bad "B: the first write succeeded over a failing commit"
want_mode b read-only "after one failed commit during the first write"
[ \$((\$(dmesg | grep -c 'switching to read-only mode') - ro0)) = 1 ] ||
	bad "B: not one 'switching to read-only mode' line"
dmesg | grep 'switching to fail mode' && bad "B: one I/O error switched to fail mode"
below b /dev/ubdb linear /dev/ubdb 0
dmsetup reload b --table "\$(dmsetup table b)" && dmsetup suspend b && dmsetup resume b ||
	bad "B: reload"
want_mode b write "after a reload"
dd if=/dev/mapper/b bs=64k count=1 iflag=direct status=none | cmp -s - paa.bin ||
	bad "B: guest cluster 0 does not read back"
dmsetup remove b && dmsetup remove lowerb || bad "B: remove"
dmesg | grep -E 'qcow2dedup' | tail -n 20
echo modes-done
exit \$rc
EOF
log "read-only mode, one error as one step, leaving by a reload"
run_inner modes -d A.qcow2 -d B.qcow2

no_corruption A.qcow2
no_corruption B.qcow2
qemu-io -f qcow2 -r -c "read -P 0x11 0 2M" -c "read -P 0x22 2M 1M" -c "read -P 0 3M 61M" A.qcow2 >A.qio ||
	fail "A: qemu-io"
qemu-io -f qcow2 -r -c "read -P 0xaa 0 64k" B.qcow2 >B.qio || fail "B: qemu-io"
if grep -q "Pattern verification failed" A.qio B.qio; then
	cat A.qio B.qio
	fail "the images do not hold what the steps wrote"
fi
log "read-only mode wrote nothing and a reload left it; one error is one step; images consistent"
