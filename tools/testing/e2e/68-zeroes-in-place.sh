#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 68-zeroes-in-place: the partial clusters at the ends of a write-zeroes,
# where the cluster has refcount one (COPIED), are written with zeros in
# place beside the worker, never by it (issue 11; before, the worker
# called blkdev_issue_zeroout() and waited).
#
# Part 1: a 64 MiB image, 64 KiB clusters, 16 MiB of random data written
# by qemu-io (every cluster COPIED), once with nodedup and once with dedup
# (the rebuild indexes every cluster, and a "flush" message puts their
# slots on disk, so each partial piece first zeroes its slot: a table
# barrier).  Four write-zeroes, 512-byte aligned, make 6 partial pieces:
# one inside a cluster, one over a partial, a whole and a partial cluster,
# one across a cluster boundary, one at the end of a cluster.  Inside: the
# device reads back as the host's expected disk (cmp), zeroes_in_place is
# 6; with dedup, table_barriers went up.  Host: qemu-img check, compare,
# and qcow2dedup check (no slot names contents the cluster lost).
# Part 2: nodedup, at once: 128 partial write-zeroes in clusters of
# [0, 8M), each racing a punch of its whole cluster (fallocate -z and -p:
# write-zeroes that frees the cluster; the zero write holds
# a reader generation, so the commit that frees the cluster waits for it),
# while fio writes 4 KiB blocks into [32M, 48M) (new clusters, perhaps the
# freed ones) and verifies them.  [0, 8M) reads as zeros, the rest of the
# image is as it was, fio's data verifies.  (In UML a write ends too soon
# for a reuse to race it; 68 runs on SMP too.)
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"
M=$((1 << 20)) K=65536

# offset:length of each write-zeroes (bytes).
RANGES=("4096:8192" "$((3 * K + 512)):$((2 * K))" "$((10 * K - 1024)):2048"
	"$((20 * K + 61440)):4096")
PIECES=6

python3 -c 'import random; open("r.bin","wb").write(random.Random(68).randbytes(16 << 20))'
for m in nd dd; do
	qemu-img create -q -f qcow2 -o cluster_size=$K $m.qcow2 64M
	qemu-io -f qcow2 -c "write -s r.bin 0 16M" $m.qcow2 >/dev/null
	pad $m.qcow2
done
qemu-img convert -f qcow2 -O raw nd.qcow2 exp.raw
python3 - "${RANGES[@]}" <<'PY'
import sys
with open("exp.raw", "r+b") as f:
    for r in sys.argv[1:]:
        off, n = map(int, r.split(":"))
        f.seek(off)
        f.write(bytes(n))
PY
LEN=$(( (64 * M) / 512 ))

{
	inner_prelude
	cat <<EOF
one() { # MODE DEV OPTS
	dmsetup create t --table "0 $LEN qcow2dedup /dev/\$2\$3" || { bad "\$1: create"; return; }
	if [ "\$1" = dd ]; then
		wait_rebuild 1
		dmsetup message t 0 flush || bad "dd: flush message"
	fi
	save t \$1.before
	for r in ${RANGES[*]}; do
		blkdiscard -z -o \${r%%:*} -l \${r##*:} /dev/mapper/t || bad "\$1: write-zeroes \$r"
	done
	save t \$1.after
	cmp /dev/mapper/t exp.raw || bad "\$1: the device differs from the expected disk"
	dmsetup remove t || bad "\$1: remove"
}
one nd ubda " 1 nodedup"
one dd ubdb ""
echo one-done
exit \$rc
EOF
} >one.sh
log "part 1: write-zeroes over clusters of refcount one, nodedup and dedup"
run_inner one -d nd.qcow2 -d dd.qcow2
for m in nd dd; do
	want_stat $m.after.stats zeroes_in_place -eq $PIECES
	want_stat $m.after.stats mode = write
	qcheck $m.qcow2
	qemu-img compare -q -f raw -F qcow2 exp.raw $m.qcow2 || fail "$m: content differs"
done
b0=$(awk '$1 == "table_barriers" { print $2 }' dd.before.stats)
b1=$(awk '$1 == "table_barriers" { print $2 }' dd.after.stats)
[ "$b1" -gt "$b0" ] || fail "dedup: no table barrier (slots on disk were not zeroed first?): $b0 -> $b1"
log "dedup: table_barriers $b0 -> $b1"
need_tool
tool_check dd.qcow2 || fail "dedup: qcow2dedup check"

log "part 2: zeroing in place while the clusters are discarded and reused"
qemu-img create -q -f qcow2 -o cluster_size=$K two.qcow2 64M
qemu-io -f qcow2 -c "write -s r.bin 0 16M" two.qcow2 >/dev/null
truncate -s 80M two.qcow2	# room for fio's new clusters
inner_prelude >common.sh
cat >two.sh <<EOF
. ./common.sh
d=/dev/mapper/t
dmsetup create t --table "0 $LEN qcow2dedup /dev/ubda 1 nodedup" || { echo "FAIL: create"; exit 1; }
# fio writes and verifies [32M, 48M) meanwhile: its new clusters may be
# the ones the discards free, which must not get zeros meant for the old.
fio --name=f --filename=\$d --rw=randwrite --bs=4k --offset=32M --direct=1 \\
	--ioengine=libaio --iodepth=16 --numjobs=2 --offset_increment=8M --size=8M \\
	--verify=crc32c --verify_fatal=1 --group_reporting --output=fio.out &
fio=\$!
n=0
for i in \$(seq 0 127); do
	# In cluster i of [0, 8M): a partial write-zeroes and a discard of the
	# whole cluster at once (either order leaves zeros).
	off=\$((i * $K + (i * 7 % 100) * 512))
	# (fallocate: blkdiscard opens the device exclusively.)
	fallocate -z -o \$off -l \$(( (i % 13 + 1) * 512 )) \$d || n=\$((n + 1)) &
	fallocate -p -o \$((i * $K)) -l $K \$d || n=\$((n + 1))
	wait \$!
done
wait \$fio || { cat fio.out; bad "fio"; }
[ \$n = 0 ] || bad "\$n write-zeroes or discards failed"
head -c $((8 * M)) /dev/zero >z8m
cmp z8m \$d -n $((8 * M)) || bad "[0, 8M) does not read as zeros"
save t two
dmsetup remove t || bad remove
echo two-done
exit \$rc
EOF
run_inner two -d two.qcow2
want_stat two.stats zeroes_in_place -ge 1
log "part 2: $(awk '$1 ~ /^zeroes_in_place/ { printf "%s %s ", $1, $2 }' two.stats)"
qcheck two.qcow2
qemu-img convert -f qcow2 -O raw two.qcow2 two.raw
cmp -n $((8 * M)) two.raw /dev/zero || fail "part 2: [0, 8M) is not zeros in the image"
cmp -i $((8 * M)):$((8 * M)) -n $((8 * M)) two.raw r.bin ||
	fail "part 2: [8M, 16M) changed"
cmp -i $((16 * M)):0 -n $((16 * M)) two.raw /dev/zero ||
	fail "part 2: [16M, 32M) changed (never written)"
