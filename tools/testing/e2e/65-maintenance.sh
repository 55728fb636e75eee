#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 65-maintenance: QEMU's maintenance of an active device's image through
# `qcow2dedup snapshot` and `qcow2dedup resize` (issue 12), which suspend,
# run qemu-img on the device the target reads, reload and resume in the
# order the admin guide gives.
#
# img.qcow2: 32 MiB, 64 KiB clusters, activated as vm1 by `qcow2dedup
# activate`.  A (4 MiB random) at 0; snapshot create s1; B (4 MiB) over A;
# snapshot create tmp, list shows both, delete tmp; resize +32M: the device
# is 64 MiB; C (4 MiB) at 40M, in the new part; a resize to 16M (smaller)
# is refused and leaves the device working at 64 MiB; resize and snapshot
# of a device activated --readonly are refused.  Each range reads
# back in UML after each step.  On the host after deactivation: qemu-img
# finds no corruption, the active layer is B at 0 and C at 40M (qemu-img
# compare), snapshot s1 exports as A (qemu-img convert -l), tmp is gone.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
TOOL=$REPO/tools/qcow2dedup/qcow2dedup
[ -x "$TOOL" ] || make -s -C "$REPO" tool >/dev/null || fail "cannot build the qcow2dedup tool"

qemu-img create -q -f qcow2 -o cluster_size=65536 img.qcow2 32M
qemu-img create -q -f qcow2 ro.qcow2 16M
python3 - <<'PY'
import random
M = 1 << 20
r = random.Random(65)
a, b, c = (r.randbytes(4 * M) for _ in range(3))
for n, d in (("a", a), ("b", b), ("c", c)):
    open(n + ".bin", "wb").write(d)
# qemu-img exports a snapshot at the image's current virtual size.
open("s1.raw", "wb").write(a + bytes(60 * M))
open("exp.raw", "wb").write(b + bytes(36 * M) + c + bytes(20 * M))
PY

inner_prelude >common.sh
printf 'T=%q\n' "$TOOL" >>common.sh
cat >act.sh <<'EOF'
. ./common.sh
size() { blockdev --getsize64 /dev/mapper/vm1; }
$T activate img.qcow2 vm1 || bad "activate"
put a.bin /dev/mapper/vm1 0
$T snapshot vm1 create s1 || bad "snapshot create s1"
same a.bin /dev/mapper/vm1 0
put b.bin /dev/mapper/vm1 0
$T snapshot vm1 create tmp || bad "snapshot create tmp"
$T snapshot vm1 list >list.txt || bad "snapshot list"
cat list.txt
grep -q " s1 " list.txt && grep -q " tmp " list.txt || bad "list: $(cat list.txt)"
$T snapshot vm1 delete tmp || bad "snapshot delete tmp"
$T snapshot vm1 list | grep -q " tmp " && bad "tmp still listed"
same b.bin /dev/mapper/vm1 0
$T resize vm1 +32M || bad "resize +32M"
[ "$(size)" = $((64 << 20)) ] || bad "size after resize: $(size)"
put c.bin /dev/mapper/vm1 40
same b.bin /dev/mapper/vm1 0
same c.bin /dev/mapper/vm1 40
$T resize vm1 16M 2>shrink.err && bad "a resize to a smaller size went through"
cat shrink.err
[ "$(size)" = $((64 << 20)) ] || bad "size after the refused resize: $(size)"
dmsetup info vm1 | grep -q "State: *ACTIVE$" || bad "vm1 not active: $(dmsetup info vm1)"
same b.bin /dev/mapper/vm1 0
same c.bin /dev/mapper/vm1 40
dmsetup status vm1
# A read-only device's image is not QEMU's to write.
$T activate --readonly ro.qcow2 ro || bad "activate --readonly"
$T resize ro +1M 2>ro.err && bad "a read-only device resized"
grep -q "refused: the device is not in write mode" ro.err || bad "ro resize: $(cat ro.err)"
$T snapshot ro create x 2>/dev/null && bad "a snapshot of a read-only device"
dmsetup info ro | grep -q "State: *ACTIVE" || bad "ro not active"
$T deactivate ro || bad "deactivate ro"
$T deactivate vm1 || bad "deactivate"
echo act-done
exit $rc
EOF
run_inner act

no_corruption img.qcow2
qemu-img compare -q -f raw -F qcow2 exp.raw img.qcow2 || fail "active layer differs"
qemu-img convert -l snapshot.name=s1 -O raw img.qcow2 s1.out
cmp s1.out s1.raw || fail "snapshot s1 differs"
qemu-img snapshot -l img.qcow2 | grep -q " tmp " && fail "snapshot tmp still in the image"
log "snapshot create/list/delete and resize through the active device: ok"
