#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 51-badblocks: unreadable sectors (dm-dust) under the image's data, an L2
# table, a refcount block and the dedup table.  Each case activates the
# image on a dust device whose bad block was added before the activation;
# the documented behaviour (admin guide, "Errors and modes"):
#   data     reading the cluster fails with EIO, the rest reads, the mode
#            stays write; overwriting the cluster (dm-dust heals a block on
#            write) makes it readable again with the new data
#   l2       the dedup table cannot count referrers: not used, "I/O error"
#            in the log (the rebuild then stops at the same error); reads of
#            the guest range of that L2 table fail, the rest reads; a write
#            that needs the table switches the target to read-only mode
#            (DMERR), and reads still work
#   refblock the activation is refused ("Cannot read the qcow2 metadata")
#            and the image is left byte-identical
#   leaf     the dedup table is not used ("I/O error reading it"), the
#            index is rebuilt, data and writes are fine
# Host afterwards: qemu-img check finds no corruption, the contents are what
# was written.  64 KiB clusters, 64 MiB image, dust blocks of 512 bytes.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
POKE="python3 $REPO/tools/testing/qcow2-poke.py"
MKQDT="python3 $REPO/tools/testing/mk-dedup-table.py"
K=65536

qemu-img create -q -f qcow2 -o cluster_size=$K base.qcow2 64M
qemu-io -c "write -P 0x21 0 1M" -c "write -P 0x22 1M 1M" base.qcow2 >/dev/null
$MKQDT base.qcow2 >/dev/null
pad base.qcow2
truncate -s 128M base.qcow2
DATA=$(( $($POKE base.qcow2 data-cluster 0) * K ))
L2=$($POKE base.qcow2 l2-table 0)
RB=$($POKE base.qcow2 refblock 0)
LEAF=$($POKE base.qcow2 slot-offset "$($POKE base.qcow2 data-cluster 0)")
LEN=$(sectors base.qcow2)
SECS=$(( $(stat -c %s base.qcow2) / 512 ))
log "data at $DATA, L2 table at $L2, refcount block at $RB, table slot at $LEAF"
for c in data l2 refblock leaf; do cp base.qcow2 $c.qcow2; done
sha256sum refblock.qcow2 >refblock.sum
python3 -c "import sys; sys.stdout.buffer.write(b'\x23' * $K)" >p23.bin

{
	inner_prelude
	cat <<EOF
# dust DEV BYTE_OFFSET: a dust device over DEV, the 512-byte block at BYTE_OFFSET bad.
dust() {
	dmsetup create dust --table "0 $SECS dust \$1 0 512" || bad "dust on \$1"
	dmsetup message dust 0 addbadblock \$((\$2 / 512)) >/dev/null || bad "addbadblock"
	dmsetup message dust 0 enable >/dev/null || bad "dust enable"
}
line="0 $LEN qcow2dedup /dev/mapper/dust"
mode_is() { dmsetup status t | grep -q "qcow2dedup \$1 " || bad "\$2: mode is not \$1: \$(dmsetup status t)"; }
rd() { dd if=/dev/mapper/t of=/dev/null bs=64k skip=\$1 count=1 iflag=direct status=none 2>/dev/null; }
done_case() { dmsetup remove t || bad "\$1: remove"; dmsetup remove dust || bad "\$1: remove dust"; }

echo "== data"
dust /dev/ubda $DATA
dmsetup create t --table "\$line" || bad "data: create"
rd 0 && bad "data: the bad cluster read"
rd 1 || bad "data: a good cluster did not read"
rd 20 || bad "data: a good cluster did not read"
mode_is write data
dd if=p23.bin of=/dev/mapper/t bs=64k seek=0 oflag=direct status=none || bad "data: overwrite"
sync /dev/mapper/t
rd 0 || bad "data: the rewritten cluster does not read"
dd if=/dev/mapper/t bs=64k count=1 iflag=direct status=none | cmp -s - p23.bin || bad "data: new contents"
mode_is write data
done_case data

echo "== l2"
dmesg -C
dust /dev/ubdb $L2
dmsetup create t --table "\$line" || bad "l2: create"
dmesg | grep -q "dedup table not used: I/O error" || bad "l2: no 'not used' message"
rd 0 && bad "l2: a cluster under the unreadable table read"
rd 600 || bad "l2: a cluster without data did not read"
dd if=p23.bin of=/dev/mapper/t bs=64k seek=3 oflag=direct status=none 2>/dev/null && bad "l2: a write under the unreadable table succeeded"
mode_is read-only l2
dmesg | grep -q "switching to read-only mode" || bad "l2: no DMERR line"
rd 600 || bad "l2: reads stopped in read-only mode"
done_case l2

echo "== refblock"
dmesg -C
dust /dev/ubdc $RB
dmsetup create t --table "\$line" 2>/dev/null && { bad "refblock: accepted"; dmsetup remove t; }
dmesg | grep -q "Cannot read the qcow2 metadata" || bad "refblock: no message"
dmsetup remove dust

echo "== leaf"
dmesg -C
dust /dev/ubdd $LEAF
dmsetup create t --table "\$line" || bad "leaf: create"
dmesg | grep -q "dedup table not used: I/O error reading it" || bad "leaf: no message"
wait_rebuild 1
dd if=/dev/mapper/t bs=64k count=16 iflag=direct status=none | tr -d '\041' | wc -c | grep -qx 0 || bad "leaf: data"
dd if=/dev/mapper/t of=/dev/mapper/t bs=64k count=16 seek=32 iflag=direct oflag=direct status=none || bad "leaf: copy"
sync /dev/mapper/t
[ "\$(dmsetup message t 0 stats | awk '\$1 == "dedup_hits" { print \$2 }')" -ge 16 ] || bad "leaf: the rebuilt index found no duplicate"
mode_is write leaf
dmsetup remove t || bad "leaf: remove"
dmsetup remove dust
echo inner-done
exit \$rc
EOF
} >inner.sh
run_inner inner -d data.qcow2 -d l2.qcow2 -d refblock.qcow2 -d leaf.qcow2

log "host checks"
sha256sum -c --quiet refblock.sum || fail "refblock: the refused image changed"
for c in data l2 leaf; do no_corruption $c.qcow2; done
qemu-io -r -c "read -P 0x23 0 64k" -c "read -P 0x21 64k 960k" -c "read -P 0x22 1M 1M" \
	data.qcow2 >/dev/null || fail "data: contents"
qemu-io -r -c "read -P 0x21 0 1M" -c "read -P 0x22 1M 1M" l2.qcow2 >/dev/null || fail "l2: contents"
qemu-io -r -c "read -P 0x21 0 1M" -c "read -P 0x22 1M 1M" -c "read -P 0x21 2M 1M" \
	leaf.qcow2 >/dev/null || fail "leaf: contents"
log "bad blocks: EIO where the data is, read-only where metadata is, a lost table rebuilt"
