#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 39-reload-revalidate: one image, one engine, and what a resume trusts.
#
#  exclusive  a second mapped device on an image one uses read-write is
#             refused (read-write or read-only, either order), with a
#             message naming the device that has it; two read-only devices
#             may share it
#  share      a reload with the same table line takes the live engine over:
#             nothing is read again (table_loaded and the counters go on,
#             no rebuild), and the resume's time is printed
#  change     a reload that changes the options while the device is live is
#             refused ("suspend it first"); suspended, it gets an engine of
#             its own and the data reads back
#  foreign    while the device is suspended, qemu-img makes an internal
#             snapshot (a foreign write: QEMU clears the dedup table's bit):
#             the resume notices, reads the metadata again, and the device
#             goes on with the right data; status and stats run all along
#  resize     suspended, qemu-img grows the image: a plain resume is refused
#             (the length no longer matches), a reload with the new length
#             resumes, and the device has the new size with the data kept
#  grow       suspended, the device under the image grows (dm-linear): a plain
#             resume is refused (buffers were sized for the old device), a
#             reload takes it
#
# Host: qemu-img check finds no corruption (the table of before the
# snapshot is leaked, as the admin guide says of stale tables),
# the snapshot is there, the contents are exact (qemu-img compare).
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
M=$((1 << 20))

qemu-img create -q -f qcow2 -o cluster_size=65536 img.qcow2 128M
truncate -s 512M img.qcow2
LEN=$(sectors img.qcow2)
python3 -c 'import random; open("d.bin","wb").write(random.Random(39).randbytes(8 << 20))'
python3 -c 'import random; open("e.bin","wb").write(random.Random(40).randbytes(4 << 20))'

{
	inner_prelude
	cat <<EOF
line="0 $LEN qcow2dedup /dev/ubda"
stv() { dmsetup message \$1 0 stats | awk -v k=\$2 '\$1 == k { print \$2 }'; }
refused() { # NAME MSG ARGS...: dmsetup create NAME ARGS fails, dmesg has MSG
	local n=\$1 m=\$2
	shift 2
	dmesg -C
	if dmsetup create \$n "\$@" 2>/dev/null; then
		bad "\$n: accepted: \$*"
		dmsetup remove \$n
	fi
	dmesg | grep -q "\$m" || bad "\$n: no kernel message '\$m': \$(dmesg | grep qcow2dedup)"
}

echo "== exclusive"
dmsetup create a --table "\$line" || bad "create a"
put d.bin /dev/mapper/a 0
refused b "already in use by qcow2dedup device a (" --table "\$line"
refused b "already in use by qcow2dedup device a (" --readonly --table "\$line"
dmsetup remove a || bad "remove a"
dmsetup create ra --readonly --table "\$line" || bad "create ra"
dmsetup create rb --readonly --table "\$line" || bad "two read-only devices"
refused w "already in use by qcow2dedup device r" --table "\$line"
same d.bin /dev/mapper/rb 0
dmsetup remove ra; dmsetup remove rb

echo "== share"
dmsetup create a --table "\$line" || bad "create a"
put d.bin /dev/mapper/a 16
sync /dev/mapper/a
loaded=\$(stv a table_loaded) hits=\$(stv a dedup_hits) runs=\$(stv a rebuild_runs)
dmsetup reload a --table "\$line" || bad "reload"
t0=\$(date +%s%N)
dmsetup resume a || bad "resume after reload"
echo "resume after a reload: \$(( (\$(date +%s%N) - t0) / 1000000 )) ms"
[ "\$(stv a table_loaded)" = "\$loaded" ] || bad "share: the table was loaded again"
[ "\$(stv a rebuild_runs)" = "\$runs" ] || bad "share: rebuild_runs \$(stv a rebuild_runs), want \$runs"
put d.bin /dev/mapper/a 32
sync /dev/mapper/a
[ "\$(stv a dedup_hits)" -ge \$((hits + 128)) ] || bad "share: dedup_hits \$(stv a dedup_hits), want at least \$((hits + 128))"

echo "== change"
dmesg -C
dmsetup reload a --table "\$line 2 flush_interval 100" 2>/dev/null && bad "change: a live reload with new options was accepted"
dmesg | grep -q "suspend the device before loading it" || bad "change: no message"
dmsetup suspend a || bad "suspend"
dmsetup reload a --table "\$line 2 flush_interval 100" || bad "change: reload while suspended"
dmsetup resume a || bad "change: resume"
dmsetup table a | grep -q "flush_interval 100" || bad "change: table line"
for o in 0 16 32; do same d.bin /dev/mapper/a \$o; done
put e.bin /dev/mapper/a 48

echo "== foreign"
( while [ ! -e stop ]; do dmsetup status a >/dev/null; dmsetup message a 0 stats >/dev/null; done ) &
hammer=\$!
for i in 1 2; do
	dmsetup suspend a || bad "foreign: suspend \$i"
	blockdev --flushbufs /dev/ubda
	qemu-img snapshot -c snap\$i /dev/ubda || bad "foreign: qemu-img snapshot \$i"
	dmesg -C
	dmsetup resume a || bad "foreign: resume \$i"
	dmesg | grep -q "the image was changed while the device was suspended" || bad "foreign: not noticed (\$i)"
	put e.bin /dev/mapper/a \$((56 + 4 * i))
done
touch stop
wait \$hammer
for o in 0 16 32; do same d.bin /dev/mapper/a \$o; done
for o in 48 60 64; do same e.bin /dev/mapper/a \$o; done
dmsetup status a | grep -q "qcow2dedup write " || bad "foreign: \$(dmsetup status a)"

echo "== revert"
# A table that needs an engine of its own, loaded while suspended, then
# cleared: the old table resumes (its engine retires only when the new
# one goes live).
dmsetup suspend a || bad "revert: suspend"
dmsetup reload a --table "\$line 2 flush_interval 200" || bad "revert: reload"
dmsetup clear a || bad "revert: clear"
dmsetup resume a || bad "revert: the old table did not resume"
same d.bin /dev/mapper/a 0

echo "== resize"
dmsetup suspend a || bad "resize: suspend"
blockdev --flushbufs /dev/ubda
qemu-img resize -f qcow2 /dev/ubda 192M || bad "resize: qemu-img resize"
dmesg -C
dmsetup resume a 2>/dev/null && bad "resize: a resume with the old length was accepted"
dmesg | grep -q "Target length does not match" || bad "resize: no message: \$(dmesg | grep qcow2dedup)"
dmsetup reload a --table "0 $((192 * 2048)) qcow2dedup /dev/ubda" || bad "resize: reload"
dmsetup resume a || bad "resize: resume with the new length"
[ "\$(blockdev --getsz /dev/mapper/a)" = $((192 * 2048)) ] || bad "resize: size \$(blockdev --getsz /dev/mapper/a)"
put e.bin /dev/mapper/a 160
for o in 0 16 32; do same d.bin /dev/mapper/a \$o; done
for o in 48 60 64 160; do same e.bin /dev/mapper/a \$o; done
dmsetup remove a || bad "remove"

echo "== grow"
dmsetup create lin --table "0 $((384 * 2048)) linear /dev/ubda 0" || bad "grow: linear"
g="0 $((192 * 2048)) qcow2dedup /dev/mapper/lin"
dmsetup create g --table "\$g" || bad "grow: create"
put d.bin /dev/mapper/g 176
dmsetup suspend g || bad "grow: suspend"
dmsetup reload lin --table "0 $((512 * 2048)) linear /dev/ubda 0" && dmsetup resume lin || bad "grow: linear reload"
dmesg -C
dmsetup resume g 2>/dev/null && bad "grow: a resume on a grown device was accepted"
dmesg | grep -q "device size changed while suspended" || bad "grow: no message: \$(dmesg | grep qcow2dedup)"
dmsetup reload g --table "\$g" || bad "grow: reload"
dmsetup resume g || bad "grow: resume after the reload"
same d.bin /dev/mapper/g 176
same e.bin /dev/mapper/g 160
dmsetup remove g || bad "grow: remove"
dmsetup remove lin

echo "== v2-stale"
# No dedup table on a v2 image: no bit shows QEMU's writes, so the index
# does not survive a suspend.  Shared X (guest 0 and 64K); QEMU rewrites
# guest 0 while suspended (copy-on-write: X keeps the one reference of
# 64K).  Then x at 128K, discards of 64K and 128K (X is freed), y at 192K
# (which may take X), x at 256K: it must read x, and the image must be
# consistent (an index kept over the suspend still named guest 0 as X's
# referrer, kept X indexed when it was freed, and shared it again).
v2="0 $((64 * 2048)) qcow2dedup /dev/ubdb"
dmsetup create v --table "\$v2" || bad "v2-stale: create"
dd if=x.bin of=/dev/mapper/v bs=64k seek=0 oflag=direct status=none
dd if=x.bin of=/dev/mapper/v bs=64k seek=1 oflag=direct status=none
sync /dev/mapper/v
dmsetup suspend v
blockdev --flushbufs /dev/ubdb
qemu-io -f qcow2 -c "write -P 0x77 0 64k" /dev/ubdb >/dev/null || bad "v2-stale: qemu-io"
dmsetup resume v || bad "v2-stale: resume"
dd if=x.bin of=/dev/mapper/v bs=64k seek=2 oflag=direct status=none
blkdiscard -o 65536 -l 131072 /dev/mapper/v || bad "v2-stale: discard"
sync /dev/mapper/v
dd if=y.bin of=/dev/mapper/v bs=64k seek=3 oflag=direct status=none
dd if=x.bin of=/dev/mapper/v bs=64k seek=4 oflag=direct status=none
sync /dev/mapper/v
dd if=/dev/mapper/v bs=64k skip=4 count=1 iflag=direct status=none | cmp -s - x.bin ||
	bad "v2-stale: guest 256K does not read x"
dmsetup remove v || bad "v2-stale: remove"
echo inner-done
exit \$rc
EOF
} >inner.sh
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=65536 v2.qcow2 64M
truncate -s 128M v2.qcow2
python3 -c 'import random; r = random.Random(41); open("x.bin","wb").write(r.randbytes(65536)); open("y.bin","wb").write(r.randbytes(65536))'
run_inner inner -d img.qcow2 -d v2.qcow2

log "host checks"
qemu-img snapshot -l img.qcow2 | grep -q snap2 || fail "the snapshots are gone"
# Leaks: the dedup table's clusters of before the snapshot, which QEMU's
# write made stale (left to qemu-img check -r leaks, see the admin guide).
no_corruption img.qcow2
python3 - <<'PY'
d, e = open("d.bin", "rb").read(), open("e.bin", "rb").read()
M = 1 << 20
x = bytearray(192 * M)
for o in (0, 16, 32, 176):
    x[o * M:o * M + len(d)] = d
for o in (48, 60, 64, 160):
    x[o * M:o * M + len(e)] = e
open("want.raw", "wb").write(x)
PY
qemu-img compare -q -f raw -F qcow2 want.raw img.qcow2 || fail "contents differ"
qemu-img check v2.qcow2 || fail "v2-stale: qemu-img check"
qemu-io -r -c "read -P 0x77 0 64k" -c "read -P 0 64k 128k" v2.qcow2 >/dev/null || fail "v2-stale: contents"
qemu-img convert -q -f qcow2 -O raw v2.qcow2 v2.raw
cmp -n 65536 -i 196608:0 v2.raw y.bin || fail "v2-stale: contents at 192K"
cmp -n 65536 -i 262144:0 v2.raw x.bin || fail "v2-stale: contents at 256K"
log "one engine per image; a resume re-reads what another program changed"
