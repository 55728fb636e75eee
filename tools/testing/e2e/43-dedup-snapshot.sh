#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 43-dedup-snapshot: dedup next to an internal snapshot.  Clusters the
# snapshot shares with the active layer have refcount 2; a write there must
# copy on write (or point the guest cluster at an indexed cluster) and drop
# the old refcount to 1 without ever touching the snapshot's data, and the
# deduplicated clusters must carry exact refcounts next to the snapshot's.
#
# 64 MiB disk, 64 KiB clusters: 0x11 in [0, 8M), 0x22 in [16M, 24M), made by
# qemu-io, then `qemu-img snapshot -c s1` and a raw export of s1.  Through
# the target (default options, O_DIRECT 1 MiB writes), the same random
# 4 MiB at:
#   0        over the snapshot's data (whole clusters)
#   6M       half over it, half unallocated (across its end at 8M)
#   32M, 48M unallocated
#   16M+4.5K unaligned, inside the 0x22 range: both end clusters partial,
#            shared with the snapshot, so copied on write
# and 1 MiB of 0x11 at 40M (the snapshot's content, 16 identical clusters).
# Inside UML: an O_DIRECT read-back of the whole disk.  Stats: at least
# 192 + 15 hits, the 4 MiB's 64 clusters and the 0x11 cluster shared, at
# least 2 copies on write, 130 clusters allocated.  On the host: qemu-img check clean, the active
# layer as expected, the four aligned copies on the same 64 host clusters
# and [40M, 41M) on one; on a copy, after `qemu-img snapshot -a s1`, the
# disk equal to the export of s1 and qemu-img check clean again.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20)) K=1024 CS=65536
U=$((16 * M + 4 * K + 512))	# the unaligned copy
qemu-img create -q -f qcow2 -o cluster_size=64k img.qcow2 64M
qemu-io -c "write -P 0x11 0 8M" -c "write -P 0x22 16M 8M" img.qcow2 >/dev/null
qemu-img snapshot -c s1 img.qcow2
qemu-img convert -O raw img.qcow2 snap.raw
qemu-img check -q img.qcow2 || fail "the image is invalid before the test"
truncate -s 64M img.qcow2

python3 - $U <<'PY'
import random, sys
M = 1 << 20
r = random.Random(43).randbytes(4 * M)
open("r.bin", "wb").write(r)
open("p11.bin", "wb").write(b"\x11" * M)
exp = bytearray(open("snap.raw", "rb").read())
for off in (0, 6 * M, 32 * M, 48 * M, int(sys.argv[1])):
    exp[off:off + len(r)] = r
exp[40 * M:41 * M] = b"\x11" * M
open("exp.raw", "wb").write(exp)
PY

inner_prelude >common.sh
cat >snap.sh <<EOF
. ./common.sh
d=/dev/mapper/s
dmsetup create s --table "0 $(sectors img.qcow2) qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
for o in 0 6 32 48; do put r.bin \$d \$o; done
dd if=r.bin of=\$d bs=1M seek=$U oflag=direct,seek_bytes conv=notrunc status=none || bad "unaligned write"
put p11.bin \$d 40
save s s
dd if=\$d bs=1M iflag=direct status=none | cmp - exp.raw || bad "O_DIRECT read-back differs"
dmsetup remove s || bad remove
echo snap-done
exit \$rc
EOF
log "duplicate writes over and beside snapshot data in UML"
run_inner snap -d img.qcow2

agree s
want_stat s.st mode = write
want_stat s.stats dedup_hits -ge $((3 * 64 + 15))
want_stat s.stats shared_clusters -ge 65
want_stat s.stats bytes_saved -ge $(((3 * 64 + 15) * CS))
want_stat s.stats zero_clusters -eq 0
want_stat s.st cow_copies -ge 2
want_stat s.st clusters_allocated -eq $((64 + 65 + 1))	# the 4 MiB, its unaligned copy, 0x11

check_clean img.qcow2
qemu-img compare -q -f raw -F qcow2 exp.raw img.qcow2 || fail "the active layer differs from the expected disk"
mapq img.qcow2 $CS same:$((4 * M)):0,$((6 * M)),$((32 * M)),$((48 * M)) one:$((40 * M)):$M
qemu-img snapshot -l img.qcow2 | grep -qw s1 || fail "snapshot s1 is gone"
cp --sparse=always img.qcow2 reverted.qcow2
qemu-img snapshot -a s1 reverted.qcow2
qemu-img compare -q -f raw -F qcow2 snap.raw reverted.qcow2 || fail "the snapshot's view changed"
check_clean reverted.qcow2
log "dedup beside a snapshot: shared, copied on write, snapshot intact, images clean"
