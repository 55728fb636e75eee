#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 42-dedup-fio: concurrent writers of identical data.  Writes of the same
# content in flight at the same time must still end as one host cluster
# (the second waits for the first and becomes a hit, it must neither
# allocate a cluster of its own nor share one whose data is not written yet).
#
# 256 MiB disk, 64 KiB clusters, default options; fio with O_DIRECT 64 KiB
# writes (one cluster each):
#   a  4 jobs (numjobs=4, libaio, iodepth 8), each its own 16 MiB of
#      [0, 64M), every block the pattern 0xdeadbeef; fio verifies it.  All
#      1024 clusters have the same content: 1 index entry, shared, 1023 hits,
#      bytes_saved 1023 clusters; on the host all 1024 guest clusters map to
#      one host cluster.
#   b  4 concurrent fio processes (one job each, so the same random seeds)
#      writing the same 8 MiB of random data (refill_buffers, randseed 42,
#      psync) at 128M, 136M, 144M, 152M; the host made the same data with the
#      same fio job into a file.  128 new entries, each shared by 4 writers:
#      384 more hits; the four ranges on the same 128 host clusters.
# Inside UML: fio's verify (a), an O_DIRECT read-back of every range (a, b).
# On the host: qemu-img check clean (refcounts 1024 and 4, COPIED clear),
# the content exact, the map as above and 129 host clusters in all.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

M=$((1 << 20)) CS=65536
NA=1024 NB=128			# clusters of phase a, of one range of phase b
B0=$((128 * M)) BLEN=$((8 * M))
FIO_B=(--rw=write --bs=64k "--size=$BLEN" --ioengine=psync --refill_buffers=1
       --scramble_buffers=0 --randseed=42)

fio --name=gen --filename=gen.bin "${FIO_B[@]}" --output=gen.out || { cat gen.out; fail "fio on the host"; }
python3 - <<'PY' || fail "the expected data could not be made"
import sys
g = open("gen.bin", "rb").read()
if len(g) != 8 << 20 or len({g[i:i + 65536] for i in range(0, len(g), 65536)}) != 128:
    sys.exit("fio's random data: %d bytes, not 128 distinct clusters" % len(g))
open("pat.bin", "wb").write(bytes.fromhex("deadbeef") * (4 << 20))
with open("exp.raw", "wb") as f:
    f.truncate(256 << 20)
    f.write(bytes.fromhex("deadbeef") * (16 << 20))
    for k in range(4):
        f.seek((128 + 8 * k) << 20); f.write(g)
PY
qemu-img create -q -f qcow2 -o cluster_size=64k img.qcow2 256M
truncate -s 128M img.qcow2

inner_prelude >common.sh
cat >fio.sh <<EOF
. ./common.sh
d=/dev/mapper/f
dmsetup create f --table "0 $(sectors img.qcow2) qcow2dedup /dev/ubda" || { echo "FAIL: create"; exit 1; }
fio --name=a --filename=\$d --rw=write --bs=64k --size=16M --numjobs=4 --offset_increment=16M \\
	--direct=1 --ioengine=libaio --iodepth=8 --verify=pattern --verify_pattern=0xdeadbeef \\
	--verify_fatal=1 --verify_state_save=0 --group_reporting --output=a.out ||
	{ cat a.out; bad "phase a: fio failed (or its verify)"; }
save f a
pids=()
for k in 0 1 2 3; do
	fio --name=b\$k --filename=\$d --offset=\$(($B0 + k * $BLEN)) --direct=1 ${FIO_B[*]} --output=b\$k.out &
	pids+=(\$!)
done
for k in 0 1 2 3; do wait \${pids[k]} || { cat b\$k.out; bad "phase b: fio \$k failed"; }; done
save f b
for o in 0 16 32 48; do same pat.bin \$d \$o; done
for k in 0 1 2 3; do same gen.bin \$d \$((128 + 8 * k)); done
dmsetup remove f || bad remove
echo fio-done
exit \$rc
EOF
log "concurrent identical writers in UML"
run_inner fio -m 768M -d img.qcow2

for kv in clusters_written:$NA dedup_hits:$((NA - 1)) index_entries:1 shared_clusters:1 \
	unique_clusters:0 bytes_saved:$(((NA - 1) * CS)) zero_clusters:0; do
	want_stat a.stats "${kv%:*}" -eq "${kv#*:}"
done
hits=$((NA - 1 + 3 * NB))
for kv in clusters_written:$((NA + 4 * NB)) dedup_hits:$hits index_entries:$((1 + NB)) \
	shared_clusters:$((1 + NB)) unique_clusters:0 bytes_saved:$((hits * CS)) zero_clusters:0; do
	want_stat b.stats "${kv%:*}" -eq "${kv#*:}"
done
agree a
agree b
want_stat a.st clusters_allocated -eq 1
want_stat b.st clusters_allocated -eq $((1 + NB))
want_stat b.st mode = write
want_stat b.st used -le $((1 + NB + 16))

check_clean img.qcow2
qemu-img compare -q -f raw -F qcow2 exp.raw img.qcow2 || fail "content differs from the expected disk"
mapq img.qcow2 $CS one:0:$((NA * CS)) same:$BLEN:$B0,$((B0 + BLEN)),$((B0 + 2 * BLEN)),$((B0 + 3 * BLEN)) \
	hosts:$((1 + NB)) nodata:$((64 * M)):$((64 * M)) nodata:$((B0 + 4 * BLEN)):$((96 * M))
log "concurrent identical writes share one host cluster each; image clean"
