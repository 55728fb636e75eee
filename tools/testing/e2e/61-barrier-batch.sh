#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 61-barrier-batch: partial writes into clusters whose slots are in the
# dedup table on disk wait for their slots to be zeroed there (admin
# guide, "The dedup table": a barrier, a flush), and the writes of one
# worker pass share one barrier (stats barrier_writes, table_barriers).
#
# 64 KiB clusters.  Activation 1 (dedup, sha256) writes 32 MiB of unique
# data (512 clusters, all indexed) and is removed cleanly: the table on
# disk names all 512.  Activation 2 loads it, then fio writes 4 KiB into
# each of the 512 clusters (rw=write:60k, iodepth 32): every one is a
# partial write into an indexed cluster with a slot on disk, so every one
# waits for a barrier; the barriers must be far fewer than the writes (one
# per write without batching).  On the host: fio verifies the 4 KiB pieces
# on a raw copy, the 60 KiB after each still hold activation 1's data,
# qemu-img check is clean (table aside) and qcow2dedup check finds no
# slot naming wrong contents.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
need_tool
cd "$WORK"

M=$((1 << 20))
head -c $((32 * M)) /dev/urandom >A.bin
qemu-img create -q -f qcow2 img.qcow2 64M
truncate -s 160M img.qcow2
S=$(sectors img.qcow2)
FIO_P=(--name=p --rw=write:60k --bs=4k --size=32M --verify=crc32c --randseed=61)

inner_prelude >common.sh
cat >first.sh <<EOF
. ./common.sh
dmsetup create t --table "0 $S qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
put A.bin /dev/mapper/t 0
save t first
dmsetup remove t || bad remove
echo first-done
exit \$rc
EOF
run_inner first -m 512M -d img.qcow2
want_stat first.stats unique_clusters -eq 512
ts=$(tool_check img.qcow2) || fail "qcow2dedup check after activation 1"
[ "$ts" = "consistent 512" ] || fail "the table after a clean removal: $ts, not consistent 512"

cat >second.sh <<EOF
. ./common.sh
d=/dev/mapper/t
st() { dmsetup message t 0 stats | awk -v k=\$1 '\$1 == k { print \$2 }'; }
dmsetup create t --table "0 $S qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
[ "\$(st table_loaded)" = 512 ] || bad "table_loaded \$(st table_loaded), not 512"
b0=\$(st table_barriers)
fio ${FIO_P[*]} --filename=\$d --direct=1 --ioengine=libaio --iodepth=32 --do_verify=0 \
	--output=p.out || { cat p.out; bad "fio"; }
sync \$d
w=\$(st barrier_writes) b=\$((\$(st table_barriers) - b0))
echo "barrier_writes \$w, table_barriers \$b"
[ "\$w" -ge 512 ] || bad "barrier_writes \$w: 512 partial writes into clusters with slots on disk"
[ "\$((b * 2))" -le "\$w" ] || bad "\$b table barriers for \$w writes that waited: not shared (UML: 111 for 512 when written)"
save t second
dmsetup remove t || bad remove
echo second-done
exit \$rc
EOF
run_inner second -m 512M -d img.qcow2
want_stat second.stats mode = write
qcheck img.qcow2
tool_check img.qcow2 >/dev/null || fail "qcow2dedup check after the partial writes"
qemu-img convert -O raw img.qcow2 p.raw
fio "${FIO_P[@]}" --filename=p.raw --verify_only --output=p.host.out ||
	{ cat p.host.out; fail "fio does not verify the 4 KiB writes on the image"; }
python3 - p.raw A.bin <<'PY' || fail "the rest of a cluster lost activation 1's data"
import sys
raw, a = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
cs = 64 << 10
for c in range(512):
    lo, hi = c * cs + 4096, (c + 1) * cs
    if raw[lo:hi] != a[lo:hi]:
        sys.exit("cluster %d: bytes [4K, 64K) differ" % c)
PY
log "512 partial writes into clusters with slots on disk: $(awk '$1 == "barrier_writes" || $1 == "table_barriers" { printf "%s %s ", $1, $2 }' second.stats)"
