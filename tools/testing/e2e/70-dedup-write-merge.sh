#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 70-dedup-write-merge: a deduplicated write sends each new cluster to the
# device as a bio of its own; consecutive new clusters are adjacent there,
# and the worker plugs each pass (admin guide, "Implementation notes"), so
# the device gets them merged into few requests.
#
# 4 KiB clusters, dedup (sha256): 8 MiB of unique data (2048 clusters) in
# 1 MiB O_DIRECT writes.  The device's own count of completed write
# requests (/sys/block/ubda/stat, field 5) must be at most one per 8
# clusters: without the plug it was about one per cluster (2074; in the
# benchmark kernel 0.57-0.77: the I/O scheduler merged some while the
# device was busy), with it 0.05 (103).  Then
# all of it again (duplicates: no data write) and the host checks: the image
# reads the data (qemu-img compare), qemu-img check and `qcow2dedup check`.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
need_tool
cd "$WORK"

M=$((1 << 20))
head -c $((8 * M)) /dev/urandom >U.bin
qemu-img create -q -f qcow2 -o cluster_size=4k img.qcow2 32M
truncate -s 64M img.qcow2
S=$(sectors img.qcow2)

inner_prelude >common.sh
cat >merge.sh <<EOF
. ./common.sh
d=/dev/mapper/t
# /dev/ubda is a link to the disk under x86-run (make e2e-smp).
blk=\$(basename "\$(readlink -f /dev/ubda)")
writes() { awk '{ print \$5 }' /sys/block/\$blk/stat; }
dmsetup create t --table "0 $S qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
w0=\$(writes)
put U.bin \$d 0
sync \$d
w1=\$(writes)
n=\$((w1 - w0))
echo "write requests on ubda for 2048 new clusters: \$n (merges \$(awk '{ print \$6 }' /sys/block/\$blk/stat))"
[ "\$n" -le 256 ] || bad "\$n write requests for 2048 new clusters: the data writes were not merged"
put U.bin \$d 8
save t merge
same U.bin \$d 0
same U.bin \$d 8
dmsetup remove t || bad remove
echo merge-done
exit \$rc
EOF
out=$(run_inner merge -m 512M -d img.qcow2) || { echo "$out"; exit 1; }
echo "$out"
want_stat merge.stats mode = write
want_stat merge.stats clusters_allocated -ge 2048
want_stat merge.stats dedup_hits -ge 2048
cat U.bin U.bin >expect.raw
truncate -s 32M expect.raw
qemu-img compare -f qcow2 -F raw img.qcow2 expect.raw || fail "the image does not read U twice"
qcheck img.qcow2
tool_check img.qcow2 >/dev/null || fail "qcow2dedup check"
log "2048 new clusters in $(sed -n 's/^write requests on ubda for 2048 new clusters: \([0-9]*\).*/\1/p' <<<"$out") write requests; data and images checked"
