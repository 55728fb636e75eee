#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# 67-read-miss-async: reads whose L2 block is not cached, and reads of
# compressed clusters, are served on the target's read workqueue, several
# at once, and never by the worker (issue 11): a duplicate write with
# verify completes while such reads are still waiting for their metadata,
# and the data read and written are exactly right.
#
# Part 1: a 128 MiB image, 4 KiB clusters (one L2 table, one metadata
# block, per 2 MiB), written by qemu-img: 4 KiB of random data at every
# 2 MiB (64 L2 tables), on dm-delay, activated with sha256 + verify.  After
# the index rebuild, D (4 KiB) is written at 100 MiB and the table flushed;
# a suspend and resume empties the metadata cache, and from there reads are
# 2000 ms late (writes on time).  A read at 100 MiB and D at 100 MiB + 4 KiB
# bring back what the next duplicate needs (its L2 and refcount blocks),
# and a "flush" message writes the table back now.
# Then 16 processes read the first 4 KiB of each of the first 16 L2 tables
# at once (O_DIRECT): none is cached, so each needs a metadata read and a
# data read (two delays).  0.2 s later D is written again at 101 MiB: a hit
# whose compare read takes one delay.
#   - reads_deferred_inflight_max >= 8: the misses waited together (a
#     worker reading each L2 block in turn would show 1);
#   - the duplicate write ended before the first of the reads did (with the
#     reads in the worker it waits behind 16 metadata reads, 32 s);
#   - every read returned its data, the write was one more verified hit,
#     no mismatch.
# Then 16 writes of new data at once into the L2 tables of 32-62 MiB (not
# cached): each goes through the read workqueue for its L2 block
# (writes_cold +16, writes_cold_inflight_max >= 8: a worker reading each
# block in turn would show none) and reads back right.
# Part 2: an 8 MiB image of compressible text converted with qemu-img -c
# (compressed 4 KiB clusters): 8 readers at once over its 8 MiB while 32
# writes of 512 bytes go into compressed clusters and a write-zeroes
# covers the end of one and the start of another.  Reads and the
# read-modify-writes inflate on the read workqueue, each with an inflater
# of the pool's own (issue 11; before, one at a time under one lock, and
# the read-modify-writes in the worker):
#   - rmw_compressed is 34 (the 32 writes and both ends of the
#     write-zeroes were read asynchronously; it was 0 while the worker
#     inflated them itself);
#   - inflaters_busy_max >= 2: two inflates were under way at once;
#   - every reader saw each cluster old or new, the device reads back the
#     expected image, reads_compressed > 0.
# Once with dedup (the writes go through the hash path) and once with
# nodedup (the plain allocating path).
# Part 3: the same image on dm-delay, reads 5000 ms late once the caches
# are warm: a 512-byte write into a compressed cluster (its old contents
# take a late read) and, once its read is out, a whole-cluster write of
# new data: the second write ends at least 2 s before the first (with the
# inflate in the worker it waited for that read, and they ended together),
# and the image is as expected.  (5 s, not 2: under emulation each
# process the poll and the writes start takes a few hundred ms.)
# After each part: qcheck (no leak beyond the dedup table's), qemu-img
# compare with the expected image.
# shellcheck source=tools/testing/e2e/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$WORK"

python3 - <<'PY'
import random
r = random.Random(67)
M, K = 1 << 20, 4096
one = bytearray(128 * M)
for t in range(64):
    one[t * 2 * M:t * 2 * M + K] = r.randbytes(K)
open("base1.raw", "wb").write(one)
for t in range(16):
    open("want%d.bin" % t, "wb").write(one[t * 2 * M:t * 2 * M + K])
d = r.randbytes(K)
open("d.bin", "wb").write(d)
one[100 * M:100 * M + 2 * K] = d + d
one[101 * M:101 * M + K] = d
w = r.randbytes(16 * K)
open("w.bin", "wb").write(w)
for i in range(16):
    o = (16 + i) * 2 * M + M
    one[o:o + K] = w[i * K:(i + 1) * K]
open("exp1.raw", "wb").write(one)
# Part 2: text that deflates well, in 4 KiB clusters.
words = [bytes(r.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9)))
         for _ in range(300)]
text = bytearray()
while len(text) < 8 * M:
    text += b" ".join(r.choice(words) for _ in range(12)) + b"\n"
two = bytearray(text[:8 * M])
open("base2.raw", "wb").write(two)
pat = r.randbytes(32 * 512)
open("pat.bin", "wb").write(pat)
for c in range(32):
    # Sector c % 8 of cluster 7 * c + 3.
    o = (7 * c + 3) * K + (c % 8) * 512
    two[o:o + 512] = pat[c * 512:(c + 1) * 512]
# The write-zeroes: the last 3 KiB of cluster 1500, cluster 1501, the
# first 2 KiB of cluster 1502.
two[1500 * K + 1024:1502 * K + 2048] = bytes(2 * K + 1024)
open("exp2.raw", "wb").write(two)
# Part 3, on the image as converted: a whole cluster at 1000 (warm-up),
# 512 bytes at cluster 1200 + 1 KiB (slow), a whole cluster at 1700.
three = bytearray(open("base2.raw", "rb").read())
w3 = r.randbytes(2 * K + 512)
open("w3.bin", "wb").write(w3)
three[1000 * K:1001 * K] = w3[:K]
three[1200 * K + 1024:1200 * K + 1536] = w3[2 * K:]
three[1700 * K:1701 * K] = w3[K:2 * K]
open("exp3.raw", "wb").write(three)
PY

qemu-img convert -q -f raw -O qcow2 -o cluster_size=4096 base1.raw one.qcow2
truncate -s 160M one.qcow2
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096 base2.raw two.qcow2
# QEMU 7.2's map does not say "compressed": the file's size does.
[ "$(stat -c %s two.qcow2)" -lt $((4 << 20)) ] || fail "qemu-img -c compressed nothing"
truncate -s 16M two.qcow2

inner_prelude >common.sh
cat >>common.sh <<'INNER'
DEVS=$((160 * 2048))
# kk BLOCK: 4 KiB block BLOCK of the device holds d.bin.
kk() {
	dd if=/dev/mapper/t bs=4k count=1 skip="$1" iflag=direct status=none | cmp -s - d.bin ||
		bad "D not at 4 KiB block $1"
}
INNER

log "part 1: cache-miss reads wait together; a duplicate write passes them"
cat >act1.sh <<EOF
. ./common.sh
dmsetup create slow --table "0 \$DEVS delay /dev/ubda 0 0 /dev/ubda 0 0" || { echo "FAIL: dm-delay"; exit 1; }
dmsetup create t --table "0 $((128 * 2048)) qcow2dedup /dev/mapper/slow 1 verify" || { echo "FAIL: create"; exit 1; }
wait_rebuild 1
dd if=d.bin of=/dev/mapper/t bs=4k seek=$((100 * 256)) oflag=direct conv=notrunc status=none || bad "write D"
dmsetup message t 0 flush || bad "flush message"
# The rebuild read every L2 table: a suspend forgets the cached metadata
# (the resume compares the image with it).  Reads are slow from here.
dmsetup suspend t || bad suspend
dmsetup load slow --table "0 \$DEVS delay /dev/ubda 0 2000 /dev/ubda 0 0" && dmsetup resume slow ||
	bad "slow reads"
dmsetup resume t || bad resume
dd if=/dev/mapper/t of=/dev/null bs=4k count=1 skip=$((100 * 256)) iflag=direct status=none ||
	bad "warm read"
dd if=d.bin of=/dev/mapper/t bs=4k seek=$((100 * 256 + 1)) oflag=direct conv=notrunc status=none ||
	bad "warm write"
# The table's write-back now, not at its next period in the middle of
# what follows (it reads the header, a slow read in the worker).
dmsetup message t 0 flush || bad "flush message"
save t before
grep -E '^(verify|reads_deferred|dedup_hits|table_(state|barriers))' before.stats | tr '\n' ' '; echo
pids=()
for i in \$(seq 0 15); do
	( dd if=/dev/mapper/t of=got\$i.bin bs=4k count=1 skip=\$((i * 512)) iflag=direct status=none &&
	  date +%s%N >read\$i.end ) &
	pids+=(\$!)
done
sleep 0.2
dd if=d.bin of=/dev/mapper/t bs=4k seek=$((101 * 256)) oflag=direct conv=notrunc status=none ||
	bad "write D again"
date +%s%N >write.end
for p in "\${pids[@]}"; do wait "\$p" || bad "a read failed"; done
first=\$(cat read*.end | sort -n | head -n 1)
echo "duplicate write ended \$(( (first - \$(cat write.end)) / 1000000 )) ms before the first read"
[ "\$(cat write.end)" -lt "\$first" ] || bad "the duplicate write waited for the cache-miss reads"
for i in \$(seq 0 15); do cmp -s got\$i.bin want\$i.bin || bad "read \$i returned other data"; done
save t act
grep -E '^(verify|reads_deferred|dedup_hits|table_(state|barriers))' act.stats | tr '\n' ' '; echo
kk $((100 * 256)); kk $((100 * 256 + 1)); kk $((101 * 256))
# Cold writes: 16 new clusters in the L2 tables of 32-62 MiB, not read
# since the resume, at once.
a=\$(date +%s%N)
pids=()
for i in \$(seq 0 15); do
	dd if=w.bin of=/dev/mapper/t bs=4k count=1 skip=\$i seek=\$(( (16 + i) * 512 + 256 )) \\
		oflag=direct conv=notrunc status=none &
	pids+=(\$!)
done
for p in "\${pids[@]}"; do wait "\$p" || bad "a cold write failed"; done
echo "16 cold writes: \$(( (\$(date +%s%N) - a) / 1000000 )) ms"
save t cold
grep -E '^writes_cold' cold.stats | tr '\n' ' '; echo
for i in \$(seq 0 15); do
	dd if=/dev/mapper/t of=gotw.bin bs=4k count=1 skip=\$(( (16 + i) * 512 + 256 )) iflag=direct status=none
	dd if=w.bin of=wantw.bin bs=4k count=1 skip=\$i status=none
	cmp gotw.bin wantw.bin || bad "cold write \$i reads back wrong"
done
dmsetup remove t || bad remove
dmsetup remove slow || bad "remove slow"
echo act1-done
exit \$rc
EOF
run_inner act1 -d one.qcow2
want_stat act.stats reads_deferred_inflight_max -ge 8
want_stat act.stats reads_deferred -ge 16
# The burst's write is one more verified hit than before it.
for k in dedup_hits verify_reads; do
	want_stat act.stats "$k" -eq $(($(awk -v k="$k" '$1 == k { print $2 }' before.stats) + 1))
done
want_stat act.stats verify_mismatches -eq 0
want_stat cold.stats writes_cold -ge $(($(awk '$1 == "writes_cold" { print $2 }' act.stats) + 16))
want_stat cold.stats writes_cold_inflight_max -ge 8
log "part 1: $(awk '$1 ~ /^reads_deferred/ { printf "%s %s ", $1, $2 }' act.stats)"
qcheck one.qcow2
qemu-img compare -q -f raw -F qcow2 exp1.raw one.qcow2 || fail "part 1: content differs"

for variant in dedup nodedup; do
log "part 2 ($variant): compressed clusters read on the read workqueue beside RMW writes"
table_opts=""
[ "$variant" = nodedup ] && table_opts=" 1 nodedup"
cp two.qcow2 "two-$variant.qcow2"
cat >act2.sh <<EOF
. ./common.sh
dmsetup create t --table "0 $((8 * 2048)) qcow2dedup /dev/ubda$table_opts" || { echo "FAIL: create"; exit 1; }
pids=()
for i in \$(seq 0 7); do
	dd if=/dev/mapper/t of=part\$i.bin bs=64k count=16 skip=\$((i * 16)) iflag=direct status=none &
	pids+=(\$!)
done
for c in \$(seq 0 31); do
	dd if=pat.bin of=/dev/mapper/t bs=512 count=1 skip=\$c seek=\$(( (7 * c + 3) * 8 + c % 8 )) \\
		oflag=direct conv=notrunc status=none &
	pids+=(\$!)
done
blkdiscard -z -o $((1500 * 4096 + 1024)) -l $((2 * 4096 + 1024)) /dev/mapper/t &
pids+=(\$!)
for p in "\${pids[@]}"; do wait "\$p" || bad "a read or write failed"; done
save t act2
dd if=/dev/mapper/t of=all.bin bs=1M iflag=direct status=none || bad "read back"
cmp -s all.bin exp2.raw || bad "the device differs from the expected image"
for i in \$(seq 0 7); do
	# Each reader saw, cluster by cluster, the old or the new contents.
	python3 - "\$i" <<'PY' || bad "reader \$i saw a cluster neither old nor new"
import sys
i, K = int(sys.argv[1]), 4096
got = open("part%d.bin" % i, "rb").read()
old = open("base2.raw", "rb").read()[i << 20:(i + 1) << 20]
new = open("exp2.raw", "rb").read()[i << 20:(i + 1) << 20]
sys.exit(any(got[o:o + K] not in (old[o:o + K], new[o:o + K]) for o in range(0, 1 << 20, K)))
PY
done
dmsetup remove t || bad remove
echo act2-done
exit \$rc
EOF
run_inner act2 -d "two-$variant.qcow2"
want_stat act2.stats reads_compressed -gt 0
want_stat act2.stats rmw_compressed -eq 34
want_stat act2.stats inflaters_busy_max -ge 2
log "part 2 ($variant): $(awk '$1 ~ /^(reads_(compressed|deferred)|rmw_|inflater)/ { printf "%s %s ", $1, $2 }' act2.stats)"
qcheck "two-$variant.qcow2"
qemu-img compare -q -f raw -F qcow2 exp2.raw "two-$variant.qcow2" ||
	fail "part 2 ($variant): content differs"
done

log "part 3: a write waits for no read-modify-write of a compressed cluster"
cp two.qcow2 three.qcow2
cat >act3.sh <<EOF
. ./common.sh
DEVS=\$((16 * 2048))
dmsetup create slow --table "0 \$DEVS delay /dev/ubda 0 0 /dev/ubda 0 0" || { echo "FAIL: dm-delay"; exit 1; }
dmsetup create t --table "0 $((8 * 2048)) qcow2dedup /dev/mapper/slow 2 flush_interval 3600000" ||
	{ echo "FAIL: create"; exit 1; }
wait_rebuild 1
dmsetup suspend t || bad suspend
dmsetup load slow --table "0 \$DEVS delay /dev/ubda 0 5000 /dev/ubda 0 0" && dmsetup resume slow ||
	bad "slow reads"
dmsetup resume t || bad resume
# Warm: the four L2 tables, the refcount block (an allocation), the table.
for i in 0 1 2 3; do
	dd if=/dev/mapper/t of=/dev/null bs=4k count=1 skip=\$((i * 512 + 7)) iflag=direct status=none &
done
wait
dd if=w3.bin of=/dev/mapper/t bs=4k count=1 seek=1000 oflag=direct conv=notrunc status=none ||
	bad "warm-up write"
dmsetup message t 0 flush || bad "flush message"
save t before
a0=\$(date +%s%N)
( dd if=w3.bin of=/dev/mapper/t bs=512 count=1 skip=16 seek=\$((1200 * 8 + 2)) oflag=direct \\
	conv=notrunc status=none && date +%s%N >rmw.end ) &
pa=\$!
# Until its read is out (not a fixed sleep: a late start would test nothing).
for i in \$(seq 200); do
	n=\$(dmsetup message t 0 stats | awk '\$1 == "rmw_reads" { print \$2 }')
	[ "\${n:-0}" -ge 1 ] && break
	sleep 0.01
done
[ "\${n:-0}" -ge 1 ] || bad "the read-modify-write's read never started"
b0=\$(date +%s%N)
dd if=w3.bin of=/dev/mapper/t bs=4k count=1 skip=1 seek=1700 oflag=direct conv=notrunc status=none ||
	bad "whole write"
b1=\$(date +%s%N)
wait \$pa || bad "rmw write"
a1=\$(cat rmw.end)
echo "read-modify-write \$(( (a1 - a0) / 1000000 )) ms, whole write \$(( (b1 - b0) / 1000000 )) ms, ended \$(( (a1 - b1) / 1000000 )) ms before it"
[ \$((a1 - b1)) -ge 2000000000 ] || bad "the whole-cluster write waited for the compressed cluster's read"
save t act3
# (No read-back here: 2048 compressed clusters at 5 s a read.  The host
# compares the image.)
dmsetup remove t || bad remove
dmsetup remove slow || bad "remove slow"
echo act3-done
exit \$rc
EOF
run_inner act3 -d three.qcow2
want_stat act3.stats rmw_compressed -eq 1
log "part 3: $(awk '$1 ~ /^(rmw_|inflater)/ { printf "%s %s ", $1, $2 }' act3.stats)"
qcheck three.qcow2
qemu-img compare -q -f raw -F qcow2 exp3.raw three.qcow2 || fail "part 3: content differs"
