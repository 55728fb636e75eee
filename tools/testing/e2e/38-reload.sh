#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Suspend, resume and table reload while writes are staged and in flight:
# the new table must see everything the old one wrote, nothing is lost, and
# the image is clean (no errors, no leaks) after removal.
source "$(dirname "$0")/lib.sh"
cd "$WORK"

qemu-img create -q -f qcow2 img.qcow2 64M
qemu-io -c "write -P 0x11 0 8M" img.qcow2 >/dev/null
truncate -s 128M img.qcow2
len=$(sectors img.qcow2)
python3 -c 'import random; open("data.bin","wb").write(random.Random(5).randbytes(16 << 20))'

cat >inner.sh <<EOF
set -eux
table="0 $len qcow2dedup /dev/ubda"
dmsetup create r --table "\$table"
# A: staged, not flushed, when the device is suspended and resumed.
dd if=data.bin of=/dev/mapper/r bs=64k count=32 status=none
dmsetup suspend r
dmsetup status r
dmsetup resume r
# B: written through a reloaded table (a new target instance).
dd if=data.bin of=/dev/mapper/r bs=4k skip=512 seek=512 count=512 status=none
dmsetup reload r --table "\$table"
dmsetup resume r
# C: a writer keeps going while the table is reloaded five times.
dd if=data.bin of=/dev/mapper/r bs=64k skip=64 seek=64 count=128 oflag=direct status=none &
for i in 1 2 3 4 5; do
	dmsetup reload r --table "\$table"
	dmsetup resume r
done
wait
dmsetup status r
cmp -n $((12 << 20)) /dev/mapper/r data.bin
dmsetup remove r
EOF
uml -d img.qcow2 -- bash inner.sh
qcheck img.qcow2
python3 - <<'PY'
d = open("data.bin", "rb").read()
exp = bytearray(b"\x11" * (8 << 20) + bytes(56 << 20))
exp[0:12 << 20] = d[0:12 << 20]
open("exp.raw", "wb").write(exp)
PY
qemu-img compare -q img.qcow2 exp.raw || fail "contents differ from the expected data"
log "reload and suspend/resume kept every write"
