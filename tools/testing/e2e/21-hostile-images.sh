#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 21-hostile-images: crafted images that once crashed the target or steered
# a guest's data onto bytes an attacker chose (issue 9).  Each is made with
# qemu-img/qemu-io and damaged on purpose (qcow2-poke.py, mk-dedup-table.py);
# the target must serve it without a kernel report, keep every guest
# cluster's data, and stay in write mode where the damage is only in
# refcounts.  64 KiB clusters, 64 MiB images.
#
#  lie      a closed, consistent dedup table whose slot for the cluster
#           holding 64 KiB of 0x11 names the digest of 64 KiB of 0x22: a
#           later genuine write of 0x22 must not be mapped onto the 0x11
#           bytes (loaded entries are hints, compared before first use); a
#           write of 0x11 still finds the cluster
#  copied   two L2 entries, both with COPIED, point at one cluster of
#           refcount 2, and the dedup table indexes it: a whole-cluster
#           write to one must not change the other (it oopsed, and wrote
#           into both); copied-rb: the same image without a table, so that
#           the background rebuild indexes it
#  l2leaf   the table's directory names an L2 table as a leaf: the load must
#           refuse it (it zeroed "dropped slots", that is guest L2 entries)
#  dataleaf the same with a guest data cluster as the leaf
#  cmp-end  a compressed cluster whose bytes run past the end of the device,
#           overwritten: the device stays in write mode (the decrement past
#           the end failed the commit and turned it read-only)
#  cmp-bad  a compressed entry whose bytes do not inflate (a cluster of
#           0xff: a deflate block of the reserved type): a partial write
#           into it (its old contents are inflated off the worker, issue
#           11) and a read of it fail with EIO, the kernel log names the
#           cluster, the device stays in write mode and writes elsewhere
#           go on; the target adds no corruption to the image
#  rc0      a data cluster of refcount 0, discarded (nodedup): write mode
#  newl2    a COPIED L2 entry names a free cluster, which the next new L2
#           table takes (nodedup, 2 GiB disk, a write at 1 GiB): a write
#           through the crafted entry must fail, not land in the new table
#           (the metadata set knew only the tables found at activation)
#
# After each activation: the data read in UML equals qemu-img's view, the
# kernel log has the expected warning, and on the host qemu-img check finds
# no corruption that the target added.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
POKE="python3 $REPO/tools/testing/qcow2-poke.py"
MKQDT="python3 $REPO/tools/testing/mk-dedup-table.py"
K=65536

new_image() { # NAME: 64 MiB, 64 KiB clusters
	qemu-img create -q -f qcow2 -o cluster_size=$K "$1" 64M
}

# corruptions IMAGE: qemu-img check's corruption count.
corruptions() {
	qemu-img check --output=json "$1" 2>/dev/null |
		python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("corruptions", 0) + d.get("check-errors", 0))'
}

sha_of() { # BYTE: sha256 of one cluster filled with BYTE
	python3 -c "import hashlib,sys; print(hashlib.sha256(bytes([$1]) * $K).hexdigest())"
}

# ---- lie: a slot naming the digest of other bytes ----
new_image lie.qcow2
qemu-io -c "write -P 0x11 0 64k" lie.qcow2 >/dev/null
$MKQDT lie.qcow2 >/dev/null
H=$($POKE lie.qcow2 data-cluster 0)
$POKE lie.qcow2 slot "$H" "$(sha_of 0x22)"
pad lie.qcow2

# ---- copied: COPIED on both references of a refcount-2 cluster ----
new_image copied.qcow2
qemu-io -c "write -P 0x33 0 64k" -c "write -P 0x44 64k 64k" copied.qcow2 >/dev/null
H0=$($POKE copied.qcow2 data-cluster 0)
H1=$($POKE copied.qcow2 data-cluster 1)
$POKE copied.qcow2 l2 $K "$($POKE copied.qcow2 l2 0)"
$POKE copied.qcow2 refcount "$H0" 2 >/dev/null
$POKE copied.qcow2 refcount "$H1" 0 >/dev/null
[ "$(corruptions copied.qcow2)" -ge 2 ] || fail "copied: qemu-img check should see the two COPIED errors"
cp copied.qcow2 copied-rb.qcow2
$MKQDT copied.qcow2 >/dev/null
pad copied.qcow2
pad copied-rb.qcow2

# ---- l2leaf: a leaf pointer naming an L2 table ----
new_image l2leaf.qcow2
# Guest clusters 4..7: L2 entries 4..7, that is slot 1 of the L2 table read
# as a leaf (slot 0, cluster 0, would be refused as out of range anyway).
qemu-io -c "write -P 0x66 256k 256k" l2leaf.qcow2 >/dev/null
$MKQDT l2leaf.qcow2 >/dev/null
$POKE l2leaf.qcow2 leaf-pointer 0 "$($POKE l2leaf.qcow2 l2-table 0)"
pad l2leaf.qcow2

# ---- dataleaf: a leaf pointer naming a guest data cluster ----
new_image dataleaf.qcow2
# Zeros but bytes 32..63: slot 1 of the cluster read as a leaf.
qemu-io -c "write -P 0 0 64k" -c "write -P 0x77 32 32" dataleaf.qcow2 >/dev/null
$MKQDT dataleaf.qcow2 >/dev/null
$POKE dataleaf.qcow2 leaf-pointer 0 $(($($POKE dataleaf.qcow2 data-cluster 0) * K))
pad dataleaf.qcow2

# ---- cmp-end: a compressed cluster running past the end of the device ----
new_image cmp-end.qcow2
qemu-io -c "write -c -P 0x12 0 64k" -c "write -P 0x13 1M 64k" cmp-end.qcow2 >/dev/null
pad cmp-end.qcow2
DEV_END=$(stat -c %s cmp-end.qcow2)
# Compressed descriptor, 64 KiB clusters: offset in bits 0..53, sectors-1 in 54..61.
$POKE cmp-end.qcow2 l2 0 $(( (1 << 62) | (255 << 54) | (DEV_END - 512) ))

# ---- cmp-bad: a compressed cluster that does not inflate ----
new_image cmp-bad.qcow2
qemu-io -c "write -c -P 0x12 0 64k" -c "write -P 0xff 1M 64k" cmp-bad.qcow2 >/dev/null
pad cmp-bad.qcow2
# Guest cluster 0 becomes one sector (sectors - 1 = 0) of 0xff bytes.
$POKE cmp-bad.qcow2 l2 0 $(( (1 << 62) | $($POKE cmp-bad.qcow2 data-cluster 0) * K ))
BAD_CORRUPTIONS=$(corruptions cmp-bad.qcow2 || true)	# check exits non-zero on corruption

# ---- rc0: a referenced data cluster with refcount 0 ----
new_image rc0.qcow2
qemu-io -c "write -P 0x14 0 64k" -c "write -P 0x15 1M 64k" rc0.qcow2 >/dev/null
$POKE rc0.qcow2 refcount "$($POKE rc0.qcow2 data-cluster 0)" 0 >/dev/null
pad rc0.qcow2

# ---- newl2: a COPIED entry naming the cluster the next L2 table takes ----
qemu-img create -q -f qcow2 -o cluster_size=$K newl2.qcow2 2G
qemu-io -c "write -P 0x31 0 64k" newl2.qcow2 >/dev/null
NEXT=$(( ($(stat -c %s newl2.qcow2) + K - 1) / K ))
$POKE newl2.qcow2 l2 $K "$(printf 0x%x $(( (1 << 63) | NEXT * K )))"
pad newl2.qcow2

for i in lie copied copied-rb l2leaf dataleaf cmp-end rc0; do
	qemu-img convert -f qcow2 -O raw "$i.qcow2" "$i.before.raw" 2>/dev/null ||
		truncate -s 64M "$i.before.raw"	# cmp-end: QEMU cannot inflate it either
done
LEN=$(sectors lie.qcow2)

pattern() { python3 -c "import sys; sys.stdout.buffer.write(bytes([$1]) * $K)" >"$2"; }
pattern 0x11 p11.bin; pattern 0x22 p22.bin; pattern 0x33 p33.bin
pattern 0x55 p55.bin; pattern 0x16 p16.bin

{
	inner_prelude
	cat <<EOF
cl() { dd if=/dev/mapper/t bs=$K skip=\$1 count=1 iflag=direct status=none; }
is() { cl \$1 | cmp -s - \$2 || bad "\$3: guest cluster \$1 is not \$2"; }
klog() { dmesg | grep -q "\$1" || bad "no kernel message '\$1'"; }
mode_is() { dmsetup status t | grep -q "qcow2dedup \$1 " || bad "\$2: mode is not \$1: \$(dmsetup status t)"; }
line() { echo "0 $LEN qcow2dedup \$1\${2:+ \$2}"; }

echo "== lie"
dmesg -C
dmsetup create t --table "\$(line /dev/ubda)" || bad "lie: create"
dd if=p22.bin of=/dev/mapper/t bs=$K seek=16 oflag=direct status=none
is 16 p22.bin lie
is 0 p11.bin lie
dd if=p11.bin of=/dev/mapper/t bs=$K seek=32 oflag=direct status=none
is 32 p11.bin lie
save t lie
dmsetup remove t || bad "lie: remove"
klog "does not match the cluster"

echo "== copied"
for d in ubdb ubdc; do
	dmesg -C
	dmsetup create t --table "\$(line /dev/\$d)" || bad "copied \$d: create"
	[ \$d = ubdc ] && wait_rebuild 1
	dd if=p55.bin of=/dev/mapper/t bs=$K seek=0 oflag=direct status=none
	is 0 p55.bin "copied \$d"
	is 1 p33.bin "copied \$d"
	sync /dev/mapper/t
	mode_is write "copied \$d"
	dmsetup remove t || bad "copied \$d: remove"
	klog "COPIED set on one: corrupt image"
done

for d in ubdd:l2leaf ubde:dataleaf; do
	echo "== \${d#*:}"
	dmesg -C
	dmsetup create t --table "\$(line /dev/\${d%:*})" || bad "\$d: create"
	cmp /dev/mapper/t \${d#*:}.before.raw || bad "\${d#*:}: data differs after the load"
	wait_rebuild 1
	dd if=p16.bin of=/dev/mapper/t bs=$K seek=100 oflag=direct status=none
	sync /dev/mapper/t
	mode_is write "\$d"
	dmsetup remove t || bad "\$d: remove"
done
dmesg | grep -q "table cluster is guest data" || bad "dataleaf: no refusal message"

echo "== cmp-end"
dmesg -C
dmsetup create t --table "\$(line /dev/ubdf)" || bad "cmp-end: create"
dd if=p16.bin of=/dev/mapper/t bs=$K seek=0 oflag=direct status=none
sync /dev/mapper/t
mode_is write cmp-end
dd if=p55.bin of=/dev/mapper/t bs=$K seek=2 oflag=direct status=none || bad "cmp-end: second write"
sync /dev/mapper/t
mode_is write cmp-end
is 0 p16.bin cmp-end
dmsetup remove t || bad "cmp-end: remove"
klog "runs past the end of the device"

echo "== cmp-bad"
dmesg -C
dmsetup create t --table "\$(line /dev/ubdi)" || bad "cmp-bad: create"
dd if=p16.bin of=/dev/mapper/t bs=4096 count=1 seek=1 oflag=direct status=none 2>/dev/null &&
	bad "cmp-bad: a partial write into the corrupt compressed cluster succeeded"
cl 0 >/dev/null 2>&1 && bad "cmp-bad: a read of the corrupt compressed cluster succeeded"
mode_is write cmp-bad
dd if=p55.bin of=/dev/mapper/t bs=$K seek=2 oflag=direct status=none || bad "cmp-bad: a write elsewhere"
sync /dev/mapper/t
is 2 p55.bin cmp-bad
mode_is write cmp-bad
dmsetup message t 0 stats | grep -E '^(rmw_|reads_compressed|inflater)' | tr '\n' ' '; echo
dmsetup remove t || bad "cmp-bad: remove"
klog "corrupt compressed cluster"

echo "== rc0"
dmesg -C
# nodedup: with dedup, the first write's dedup table root would take the
# "free" cluster first (as QEMU's allocator would take it for data).
dmsetup create t --table "\$(line /dev/ubdg "1 nodedup")" || bad "rc0: create"
blkdiscard -o 0 -l $K /dev/mapper/t || bad "rc0: discard"
sync /dev/mapper/t
mode_is write rc0
dd if=p55.bin of=/dev/mapper/t bs=$K seek=3 oflag=direct status=none || bad "rc0: write"
sync /dev/mapper/t
mode_is write rc0
is 3 p55.bin rc0
dmsetup remove t || bad "rc0: remove"
klog "lower than its references"

echo "== newl2"
dmsetup create t --table "0 $((4 << 20)) qcow2dedup /dev/ubdh 1 nodedup" || bad "newl2: create"
dd if=p16.bin of=/dev/mapper/t bs=$K seek=16384 oflag=direct status=none || bad "newl2: write at 1 GiB"
sync /dev/mapper/t
dd if=p55.bin of=/dev/mapper/t bs=$K seek=1 oflag=direct status=none 2>/dev/null &&
	bad "newl2: a write through the entry naming the new L2 table succeeded"
sync /dev/mapper/t
is 16384 p16.bin newl2
dd if=/dev/mapper/t bs=$K count=1 iflag=direct status=none | tr -d '\061' | wc -c | grep -qx 0 || bad "newl2: guest 0"
mode_is write newl2
dmsetup remove t || bad "newl2: remove"
echo inner-done
exit \$rc
EOF
} >inner.sh
run_inner inner -d lie.qcow2 -d copied.qcow2 -d copied-rb.qcow2 -d l2leaf.qcow2 \
	-d dataleaf.qcow2 -d cmp-end.qcow2 -d rc0.qcow2 -d newl2.qcow2 -d cmp-bad.qcow2

log "host checks"
want_stat lie.stats verify_mismatches -ge 1
want_stat lie.stats dedup_hits -eq 1
python3 - <<'PY' || fail "lie: expected contents"
d = bytearray(open("lie.before.raw", "rb").read())
d[16 << 16:17 << 16] = b"\x22" * 65536
d[32 << 16:33 << 16] = b"\x11" * 65536
open("lie.want.raw", "wb").write(d)
PY
qemu-img compare -q -f raw -F qcow2 lie.want.raw lie.qcow2 || fail "lie: contents differ"
mapq lie.qcow2 $K same:$K:0,$((32 * K)) apart:$K:0,$((16 * K))
qcheck lie.qcow2

for i in copied copied-rb; do
	python3 - "$i" <<'PY' || fail "$i: expected contents"
import sys
d = bytearray(open(sys.argv[1] + ".before.raw", "rb").read())
d[0:65536] = b"\x55" * 65536
open(sys.argv[1] + ".want.raw", "wb").write(d)
PY
	qemu-img compare -q -f raw -F qcow2 "$i.want.raw" "$i.qcow2" || fail "$i: contents differ"
	no_corruption "$i.qcow2"
done

for i in l2leaf dataleaf; do
	python3 - "$i" <<'PY' || fail "$i: expected contents"
import sys
d = bytearray(open(sys.argv[1] + ".before.raw", "rb").read())
d[100 << 16:101 << 16] = b"\x16" * 65536
open(sys.argv[1] + ".want.raw", "wb").write(d)
PY
	qemu-img compare -q -f raw -F qcow2 "$i.want.raw" "$i.qcow2" || fail "$i: contents differ"
	no_corruption "$i.qcow2"
done
# The damaged references are gone (overwritten, discarded): what is left
# is at most leaked, nothing corrupt.
no_corruption cmp-end.qcow2
no_corruption rc0.qcow2
[ "$(corruptions cmp-bad.qcow2)" -le "$BAD_CORRUPTIONS" ] ||
	fail "cmp-bad: qemu-img check finds more corruption than before ($BAD_CORRUPTIONS)"
qemu-io -r -c "read -P 0x55 128k 64k" -c "read -P 0xff 1M 64k" cmp-bad.qcow2 >/dev/null ||
	fail "cmp-bad: contents"
qemu-io -r -c "read -P 0x16 0 64k" -c "read -P 0x55 128k 64k" -c "read -P 0x13 1M 64k" \
	cmp-end.qcow2 >/dev/null || fail "cmp-end: contents"
qemu-io -r -c "read -P 0 0 64k" -c "read -P 0x55 192k 64k" -c "read -P 0x15 1M 64k" \
	rc0.qcow2 >/dev/null || fail "rc0: contents"
qemu-io -r -c "read -P 0x31 0 64k" -c "read -P 0x16 1G 64k" newl2.qcow2 >/dev/null ||
	fail "newl2: contents (the new L2 table was written through the crafted entry?)"
log "hostile images: data kept, no crash, write mode kept"
