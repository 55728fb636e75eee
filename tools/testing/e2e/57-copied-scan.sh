#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 57-copied-scan: COPIED restored by the batched scan of the active L2
# tables (admin guide, "COPIED"): when a shared cluster the index does not
# name drops to one reference, the remaining reference gets COPIED back by
# a scan of the L2 tables, in the same commit while they hold at most
# 262144 entries, otherwise in batches (at least every 30 seconds while some
# are waiting) and always in the commit of a clean deactivation.
#
# 2 GiB image, 4 KiB clusters, one cluster written by qemu-io every 2 MiB:
# 1024 L2 tables, 524288 entries (the batched case).
#   1. Dedup activation: the same 4 KiB at A and B, other contents at C and
#      D, and at E and F: three shared clusters (refcount 2, COPIED clear
#      on all six entries).
#   2. nodedup activation (no index names the sharing): C is overwritten
#      and synced: the first scan of an activation runs at once, D has
#      COPIED right after the sync (read from the disk under the target).
#      E is overwritten and synced: within 30 s of that scan the next waits,
#      F has COPIED clear after the sync, and back within 45 s (the batch).
#      A is overwritten and the device removed at once: B's entry has
#      COPIED after the removal.
# On the host: qemu-img check finds no error (every flag exact; the dedup
# table's clusters, leaked since the nodedup activation, aside), contents
# as written.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20)) K=4096
A=$((100 * M + 2 * K)) B=$((900 * M + 2 * K)) C=$((300 * M + 2 * K)) D=$((1500 * M + 2 * K))
E=$((500 * M + 2 * K)) F=$((1700 * M + 2 * K))
qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 2G
cmds=()
for i in $(seq 0 1023); do cmds+=(-c "write -q -P $((i % 251 + 1)) $((i * 2 * M)) 4k"); done
qemu-io "${cmds[@]}" img.qcow2
truncate -s 64M img.qcow2
poke=$REPO/tools/testing/qcow2-poke.py
# entry_at GUEST: byte offset of GUEST's L2 entry in the image.
entry_at() {
	local l2
	l2=$(($(python3 "$poke" img.qcow2 l2-table $(($1 / (512 * K))))))
	echo $((l2 + ($1 / K % 512) * 8))
}
EA=$(entry_at $A) EB=$(entry_at $B) EC=$(entry_at $C) ED=$(entry_at $D) EE=$(entry_at $E) EF=$(entry_at $F)
S=$(sectors img.qcow2)
head -c $K /dev/zero | tr '\0' '\132' >x.bin
head -c $K /dev/zero | tr '\0' '\133' >y.bin
head -c $K /dev/zero | tr '\0' '\134' >z.bin
head -c $K /dev/zero | tr '\0' '\135' >v.bin

inner_prelude >common.sh
cat >scan.sh <<EOF
. ./common.sh
w() { dd if=\$1 of=/dev/mapper/t bs=4k seek=\$((\$2 / $K)) oflag=direct conv=notrunc status=none || bad "write \$1 at \$2"; }
# copied OFF: the COPIED bit of the L2 entry at byte OFF of the disk.
copied() {
	dd if=/dev/ubda bs=512 skip=\$((\$1 / 512)) count=1 iflag=direct status=none |
		od -An -tu1 -j \$((\$1 % 512)) -N 1 | awk '{ print (\$1 >= 128) }'
}
up() { cut -d. -f1 /proc/uptime; }
echo "1: sharing (dedup)"
dmsetup create t --table "0 $S qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
w x.bin $A; w x.bin $B; w z.bin $C; w z.bin $D; w v.bin $E; w v.bin $F
save t s1
dmsetup remove t || bad remove
for o in $EA $EB $EC $ED $EE $EF; do [ "\$(copied \$o)" = 0 ] || bad "1: COPIED set at \$o on a shared cluster"; done
echo "2: unsharing with nodedup"
dmsetup create t --table "0 $S qcow2dedup /dev/ubda 1 nodedup" || { echo "FAIL: create nodedup"; exit 1; }
w y.bin $C
sync /dev/mapper/t || bad "sync"
[ "\$(copied $ED)" = 1 ] || bad "2: D's COPIED not set by the first scan"
w y.bin $E
sync /dev/mapper/t || bad "sync"
[ "\$(copied $EF)" = 0 ] || bad "2: F's COPIED set at once: no batch was waited for"
t0=\$(up)
while [ "\$(copied $EF)" = 0 ] && [ \$((\$(up) - t0)) -lt 45 ]; do sleep 0.2; done
echo "F: COPIED back after \$((\$(up) - t0)) s"
[ "\$(copied $EF)" = 1 ] || bad "2: F's COPIED not back within 45 s"
w y.bin $A
dmsetup remove t || bad remove
[ "\$(copied $EB)" = 1 ] || bad "2: B's COPIED not set after a clean removal"
echo scan-done
exit \$rc
EOF
log "COPIED back by the batched L2 scan (524288 L2 entries)"
run_inner scan -m 768M -d img.qcow2
want_stat s1.stats dedup_hits -ge 2
no_corruption img.qcow2
qemu-img check img.qcow2 >check.out 2>&1 || true
grep -q "^ERROR" check.out && { cat check.out; fail "qemu-img check reports errors"; }
qemu-io -f qcow2 -r -c "read -P 0x5b $A 4k" -c "read -P 0x5a $B 4k" -c "read -P 0x5b $C 4k" \
	-c "read -P 0x5c $D 4k" -c "read -P 0x5b $E 4k" -c "read -P 0x5d $F 4k" -c "read -P 1 0 4k" -c "read -P 251 $((250 * 2 * M)) 4k" img.qcow2 >qio.out
grep -q "Pattern verification failed" qio.out && { cat qio.out; fail "contents"; }
log "COPIED exact after the batched scan and after a clean removal"
