#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 53-documented: behaviour the admin guide promises that no other scenario
# drove (issue 10's audit).  One boot, one image per part, 64 KiB clusters:
#
#  msg      messages: an unknown one is refused (-EINVAL) with a kernel line
#           naming it; "rebuild" starts a rebuild (rebuild_runs + 1, it ends,
#           the data is unchanged, the index keeps its entries).
#  ro       a read-only activation: "flush" fails (-EROFS) and the image is
#           byte-identical afterwards (host sha256).
#  rc1      refcount_bits=1: the ceiling is 1, nothing is shared: the same
#           cluster written 3 times is on 3 host clusters, 0 hits.
#  rc2      refcount_bits=2: the ceiling is 3: written 5 times, the first
#           three copies are on one host cluster (2 hits); each later copy
#           "gets a cluster of its own" (the index keeps naming the full
#           cluster): 3 host clusters.
#  long     a digest longer than 256 bits (hash sha512): copies share;
#           the table keeps the first 192 bits (key length 24), which
#           `qcow2dedup check` rehashes and accepts.
#  rtbad    a refcount table entry with reserved bits: the read-write
#           activation is refused ("Invalid refcount table entry"), the
#           image unchanged; a read-only one serves it.
#  bitmap   a persistent bitmap (autoclear bit 0): an activation that only
#           reads leaves the bit; the first write clears it (the target does
#           not maintain bitmaps), and QEMU then ignores the stale bitmap,
#           whose 2 clusters qemu-img check calls leaked (-r leaks frees them).
#  ioerr    one metadata write error, met first by the table's write-back
#           (written data staged, no guest flush, error_writes below, then
#           the "flush" message): read-only mode, one "switching" line,
#           reads go on.  (The write-back reported the failed commit a
#           second time, which turned one error into fail mode, where every
#           read fails: seen as a random failure of 37's part 2.)
#
# Host: qemu-img check/compare/map and `qcow2dedup check` (qcheck) on each.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
K=65536
TOOL=$REPO/tools/qcow2dedup/qcow2dedup
[ -x "$TOOL" ] || make -s -C "$REPO" tool >/dev/null || fail "cannot build the qcow2dedup tool"

python3 - <<'PY'
import random
r = random.Random(53)
open("u1m.bin", "wb").write(r.randbytes(1 << 20))
open("c.bin", "wb").write(r.randbytes(65536))
PY
for i in msg ro long rtbad bitmap ioerr; do
	qemu-img create -q -f qcow2 -o cluster_size=64k $i.qcow2 16M
done
qemu-img create -q -f qcow2 -o cluster_size=64k,refcount_bits=1 rc1.qcow2 16M
qemu-img create -q -f qcow2 -o cluster_size=64k,refcount_bits=2 rc2.qcow2 16M
qemu-io -c "write -P 0x5a 0 1M" ro.qcow2 >/dev/null
qemu-io -c "write -P 0x6b 0 1M" rtbad.qcow2 >/dev/null
qemu-io -c "write -P 0x7c 0 1M" bitmap.qcow2 >/dev/null
qemu-img bitmap --add bitmap.qcow2 b0
# rtbad: refcount table entry 0 gets a reserved bit (bit 0).
python3 - rtbad.qcow2 <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(48); rt = struct.unpack(">Q", f.read(8))[0]
    f.seek(rt); e = struct.unpack(">Q", f.read(8))[0]
    f.seek(rt); f.write(struct.pack(">Q", e | 1))
PY
autoclear() { python3 -c 'import struct, sys; f = open(sys.argv[1], "rb"); f.seek(88); print(struct.unpack(">Q", f.read(8))[0])' "$1"; }
[ $(( $(autoclear bitmap.qcow2) & 1 )) -eq 1 ] || fail "bitmap: qemu-img did not set autoclear bit 0"
qemu-io -c "write -P 0x3e 8M 1M" ioerr.qcow2 >/dev/null
truncate -s 8M ioerr.qcow2	# room for the new writes
for i in msg ro rc1 rc2 long rtbad bitmap ioerr; do pad $i.qcow2; done
sha256sum ro.qcow2 rtbad.qcow2 >before.sum
LEN=$(sectors msg.qcow2)	# all are 16 MiB

inner_prelude >common.sh
cat >inner.sh <<EOF
. ./common.sh
klog() { dmesg | grep -q "\$1" || bad "no kernel message '\$1'"; }
st() { dmsetup message t 0 stats | awk -v k="\$1" '\$1 == k { print \$2 }'; }

echo "== msg"
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda" || bad "msg: create"
put u1m.bin /dev/mapper/t 0
put u1m.bin /dev/mapper/t 4
sync /dev/mapper/t
dmesg -C
dmsetup message t 0 frobnicate 2>/dev/null && bad "msg: an unknown message was accepted"
klog 'unknown message "frobnicate"'
runs=\$(st rebuild_runs) entries=\$(st index_entries)
dmsetup message t 0 rebuild || bad "msg: rebuild message"
for i in \$(seq 300); do
	[ "\$(st rebuild_runs)" -gt "\$runs" ] && [ "\$(st rebuild_progress)" = 100 ] &&
		[ "\$(st table_state)" != rebuilding ] && break
	sleep 0.1
done
[ "\$(st rebuild_runs)" -eq \$((runs + 1)) ] || bad "msg: rebuild_runs \$(st rebuild_runs), want \$((runs + 1))"
[ "\$(st rebuild_progress)" = 100 ] || bad "msg: the rebuild did not end"
[ "\$(st index_entries)" -eq "\$entries" ] || bad "msg: index_entries \$(st index_entries) after the rebuild, want \$entries"
same u1m.bin /dev/mapper/t 0
same u1m.bin /dev/mapper/t 4
put u1m.bin /dev/mapper/t 8
save t msg
dmsetup remove t || bad "msg: remove"

echo "== ro"
dmsetup create --readonly t --table "0 $LEN qcow2dedup /dev/ubdb" || bad "ro: create"
dd if=/dev/mapper/t bs=1M count=2 iflag=direct status=none >/dev/null || bad "ro: read"
dmsetup message t 0 flush 2>ro.err && bad "ro: flush accepted on a read-only table"
cat ro.err
dmsetup remove t || bad "ro: remove"

for d in rc1:ubdc:3 rc2:ubdd:5; do
	n=\${d%%:*} dev=\$(echo \$d | cut -d: -f2) copies=\${d##*:}
	echo "== \$n"
	dmsetup create t --table "0 $LEN qcow2dedup /dev/\$dev" || bad "\$n: create"
	for i in \$(seq 0 \$((copies - 1))); do
		dd if=c.bin of=/dev/mapper/t bs=$K seek=\$i oflag=direct status=none || bad "\$n: write \$i"
	done
	for i in \$(seq 0 \$((copies - 1))); do
		dd if=/dev/mapper/t bs=$K skip=\$i count=1 iflag=direct status=none | cmp -s - c.bin || bad "\$n: copy \$i"
	done
	save t \$n
	dmsetup remove t || bad "\$n: remove"
done

echo "== long"
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubde 2 hash sha512" || bad "long: create"
put u1m.bin /dev/mapper/t 0
put u1m.bin /dev/mapper/t 2
same u1m.bin /dev/mapper/t 2
save t long
dmsetup remove t || bad "long: remove"

echo "== rtbad"
dmesg -C
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubdf" 2>/dev/null && { bad "rtbad: read-write activation accepted"; dmsetup remove t; }
klog "Invalid refcount table entry"
dmsetup create --readonly t --table "0 $LEN qcow2dedup /dev/ubdf" || bad "rtbad: read-only activation refused"
dd if=/dev/mapper/t bs=1M count=1 iflag=direct status=none | tr -d '\153' | wc -c | grep -qx 0 || bad "rtbad: read"
dmsetup remove t || bad "rtbad: remove"

echo "== bitmap"
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubdg" || bad "bitmap: create"
dd if=/dev/mapper/t bs=1M count=1 iflag=direct status=none >/dev/null
dmsetup remove t || bad "bitmap: remove (read only)"
python3 -c 'import struct; f = open("/dev/ubdg", "rb"); f.seek(88); print(struct.unpack(">Q", f.read(8))[0])' >bitmap.after-read
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubdg" || bad "bitmap: create 2"
dd if=c.bin of=/dev/mapper/t bs=$K seek=32 oflag=direct status=none || bad "bitmap: write"
dmsetup remove t || bad "bitmap: remove"
echo "== ioerr"
n=\$(blockdev --getsz /dev/ubdh)
dmsetup create lower --table "0 \$n linear /dev/ubdh 0" || bad "ioerr: lower"
dmsetup create t --table "0 $LEN qcow2dedup /dev/mapper/lower 2 flush_interval 3600000" || bad "ioerr: create"
put u1m.bin /dev/mapper/t 0
dmesg -C
dmsetup load lower --table "0 \$n flakey /dev/ubdh 0 0 3600 1 error_writes" && dmsetup resume lower ||
	bad "ioerr: error_writes"
# The write-back (the "flush" message's path) commits the staged writes first.
dmsetup message t 0 flush 2>/dev/null && bad "ioerr: flush succeeded over error_writes"
mode=\$(dmsetup status t | cut -d' ' -f4)
echo "ioerr: mode \$mode"
dmesg | grep 'switching to'
[ "\$mode" = read-only ] || bad "ioerr: mode \$mode after one write error, want read-only"
[ "\$(dmesg | grep -c 'switching to')" -eq 1 ] || bad "ioerr: not exactly one mode switch"
dd if=/dev/mapper/t bs=1M skip=8 count=1 iflag=direct status=none | tr -d '\076' | wc -c | grep -qx 0 ||
	bad "ioerr: reads fail or differ in read-only mode"
dmsetup remove t || bad "ioerr: remove"
dmsetup remove lower || bad "ioerr: remove lower"
echo inner-done
exit \$rc
EOF
run_inner inner -d msg.qcow2 -d ro.qcow2 -d rc1.qcow2 -d rc2.qcow2 -d long.qcow2 \
	-d rtbad.qcow2 -d bitmap.qcow2 -d ioerr.qcow2

log "host checks"
sha256sum -c --quiet before.sum || fail "ro/rtbad: a refused or read-only activation changed the image"
grep -q "Read-only file system" ro.err || fail "ro: the flush did not fail with EROFS: $(cat ro.err)"
want_stat msg.stats rebuild_runs -ge 2
python3 - <<'PY' || fail "msg: expected disk"
import random
r = random.Random(53)
u = r.randbytes(1 << 20)
with open("msg.exp.raw", "wb") as f:
    f.truncate(16 << 20)
    for m in (0, 4, 8):
        f.seek(m << 20); f.write(u)
PY
qemu-img compare -q -f raw -F qcow2 msg.exp.raw msg.qcow2 || fail "msg: content"
mapq msg.qcow2 $K same:$((1 << 20)):0,$((4 << 20)),$((8 << 20))
qcheck msg.qcow2

want_stat rc1.stats dedup_hits -eq 0
mapq rc1.qcow2 $K apart:$K:0,$K,$((2 * K)) hosts:3
qcheck rc1.qcow2
want_stat rc2.stats dedup_hits -eq 2
mapq rc2.qcow2 $K same:$K:0,$K,$((2 * K)) apart:$K:0,$((3 * K)),$((4 * K)) hosts:3
qcheck rc2.qcow2
for i in rc1 rc2; do
	python3 -c 'import sys; d = open("c.bin", "rb").read(); n = int(sys.argv[2])
with open(sys.argv[1], "wb") as f:
    f.truncate(16 << 20); f.write(d * n)' $i.exp.raw "$([ $i = rc1 ] && echo 3 || echo 5)"
	qemu-img compare -q -f raw -F qcow2 $i.exp.raw $i.qcow2 || fail "$i: content"
done

want_stat long.stats hash = sha512
want_stat long.stats dedup_hits -eq 16
"$TOOL" info --json long.qcow2 | python3 -c '
import json, sys
t = json.load(sys.stdin)["dedup_table"]
assert t.get("hash") == "sha512" and t.get("key_len") == 24, t' || fail "long: the table is not sha512 cut to 24-byte keys"
mapq long.qcow2 $K same:$((1 << 20)):0,$((2 << 20))
qcheck long.qcow2

[ $(( $(cat bitmap.after-read) & 1 )) -eq 1 ] || fail "bitmap: an activation that only read cleared autoclear bit 0"
[ $(( $(autoclear bitmap.qcow2) & 1 )) -eq 0 ] || fail "bitmap: the first write did not clear autoclear bit 0"
# QEMU now ignores the bitmaps extension: the bitmap directory and the
# bitmap's table are leaked clusters besides the dedup table's (2 here).
no_corruption bitmap.qcow2
"$TOOL" check --json bitmap.qcow2 >bitmap.check.json 2>/dev/null || true
python3 -c '
import json, sys
j = json.load(open("bitmap.check.json"))
sys.exit(0 if j["leaked_other_clusters"] == 2 and j["wrong_entries"] == 0 else 1)' ||
	{ cat bitmap.check.json; fail "bitmap: leaks other than the table and the stale bitmap's 2 clusters"; }
qemu-img check -q -r leaks bitmap.qcow2 >/dev/null 2>&1 || true
qemu-img check -q bitmap.qcow2 || fail "bitmap: not clean after qemu-img check -r leaks"
qemu-io -r -c "read -P 0x7c 0 1M" bitmap.qcow2 >/dev/null || fail "bitmap: content"
no_corruption ioerr.qcow2
qemu-io -r -c "read -P 0x3e 8M 1M" ioerr.qcow2 >/dev/null || fail "ioerr: content"
log "documented behaviour: messages, read-only flush, refcount ceilings 1 and 3, 512-bit digests cut to 256 bits, a bad refcount table entry, bitmap autoclear, one I/O error means read-only mode"
